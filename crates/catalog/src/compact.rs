//! Compaction of appended catalogs: a partition that appends left in many files is merged
//! into one (split into its children above `max_rows`), in the background of the appends.
//!
//! The merge is read and written outside the catalog's writer lock, from the version
//! current when it starts; only the publication takes the lock, and it keeps whatever
//! appends added meanwhile: a merged partition keeps its newer files next to the merged
//! one, and a partition that appends rewrote meanwhile is left for the next compaction.
//! Readers see the old version or the new one, never a mix (as with appends).

use std::collections::{BTreeMap, HashSet};

use crate::append::{
    APPEND_SEQ, AppendSpec, StoredPartition, finish_version, link_file, split, write_file,
};
use crate::ingest::HPX_COLUMN;
use crate::layout::Pixel;
use crate::write::{PAGE_ROWS, ROW_GROUP_ROWS, writer_properties};
use crate::{Catalog, Error, Result, Store};

/// What a compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Partitions merged and published.
    pub partitions: usize,
    /// Files they held (replaced by the merged ones).
    pub files_merged: usize,
    /// Files written.
    pub files_written: usize,
    /// Rows rewritten.
    pub rows: u64,
    /// Partitions merged but not published: appends rewrote them meanwhile.
    pub skipped: usize,
}

/// One partition merged in staging.
struct Merged {
    pixel: Pixel,
    /// Rows merged.
    rows: u64,
    /// The files merged (paths relative to the catalog, the same in every version).
    from: Vec<String>,
    /// The merged files, by partition (the partition itself, or its children).
    to: Vec<(Pixel, String)>,
}

impl Store {
    /// Merges the files of each partition of appended catalog `name` that holds at least
    /// `spec.compact_files` of them, largest file counts first, up to about `max_rows`
    /// rows in all; publishes a new version if any was merged. Appends may run meanwhile.
    pub fn compact(&self, name: &str, spec: &AppendSpec, max_rows: usize) -> Result<Compacted> {
        let Some(dir) = self.current_version(name)? else {
            return Ok(Compacted::default());
        };
        let c = Catalog::open(&dir)?;
        let seq = c
            .properties()
            .get(APPEND_SEQ)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
        let mut candidates: Vec<(Pixel, StoredPartition)> = Vec::new();
        for p in c.partitions() {
            if c.partition_files(p).len() >= spec.compact_files.max(2) {
                candidates.push((*p, StoredPartition::new(&c, &dir, p)?));
            }
        }
        if candidates.is_empty() {
            return Ok(Compacted::default());
        }
        candidates.sort_by_key(|(_, s)| std::cmp::Reverse(s.files.len()));
        let schema = c.schema();
        let props = writer_properties(
            ROW_GROUP_ROWS,
            PAGE_ROWS,
            HPX_COLUMN,
            [c.ra_column(), c.dec_column()],
            &schema,
        );
        let staging = self.begin_staging(name)?;
        let out = staging.path().to_path_buf();
        let mut merged: Vec<Merged> = Vec::new();
        let mut rows_read = 0usize;
        for (pixel, s) in candidates {
            if rows_read > 0 && rows_read + s.rows > max_rows {
                break;
            }
            rows_read += s.rows;
            let rows = s.read(&schema, name)?;
            let mut to = Vec::new();
            for (p, part) in split(pixel, &rows, spec.max_rows)? {
                let rel = format!("{}/part-{seq:010}c.parquet", p.relative_dir());
                write_file(&out, &rel, p, &part, &schema, &props)?;
                to.push((p, rel));
            }
            merged.push(Merged {
                pixel,
                rows: s.rows as u64,
                from: s.files,
                to,
            });
        }

        // Published under the writer's lock, onto the version current now.
        let _lock = self.lock(name)?;
        let Some(now_dir) = self.current_version(name)? else {
            return Ok(Compacted::default());
        };
        let now = Catalog::open(&now_dir)?;
        let now_pixels: HashSet<Pixel> = now.partitions().iter().copied().collect();
        let mut done = Compacted::default();
        let mut files: BTreeMap<Pixel, Vec<String>> = BTreeMap::new();
        let mut replaced: HashSet<Pixel> = HashSet::new();
        for m in &merged {
            let current = if now_pixels.contains(&m.pixel) {
                now.partition_files(&m.pixel)
            } else {
                Vec::new()
            };
            let current_set: HashSet<&String> = current.iter().collect();
            let intact = m.from.iter().all(|f| current_set.contains(f));
            let split = m.to.len() != 1 || m.to[0].0 != m.pixel;
            // Rows appended since go to the partition, which a split would remove.
            if !intact || (split && current.len() != m.from.len()) {
                done.skipped += 1;
                for (_, rel) in &m.to {
                    let _ = std::fs::remove_file(out.join(rel));
                }
                continue;
            }
            replaced.insert(m.pixel);
            let from: HashSet<&String> = m.from.iter().collect();
            for (p, rel) in &m.to {
                files.entry(*p).or_default().push(rel.clone());
            }
            // Files appended meanwhile stay, after the merged one.
            let entry = files.entry(m.pixel).or_default();
            for f in current.iter().filter(|f| !from.contains(f)) {
                entry.push(link_file(&now_dir, f, &m.pixel, &out)?);
            }
            done.partitions += 1;
            done.files_merged += m.from.len();
            done.files_written += m.to.len();
            done.rows += m.rows;
        }
        if done.partitions == 0 {
            tracing::info!(catalog = name, skipped = done.skipped, "nothing compacted");
            return Ok(done);
        }
        for p in now.partitions().iter().filter(|p| !replaced.contains(p)) {
            let entry = files.entry(*p).or_default();
            for f in now.partition_files(p) {
                entry.push(link_file(&now_dir, &f, p, &out)?);
            }
        }
        let mut hats = now.properties().clone();
        let now_schema = now.schema();
        if now_schema.fields().len() < schema.fields().len() {
            return Err(Error::Invalid(format!(
                "catalog '{name}' lost columns while it was compacted"
            )));
        }
        let props = writer_properties(
            ROW_GROUP_ROWS,
            PAGE_ROWS,
            HPX_COLUMN,
            [now.ra_column(), now.dec_column()],
            &now_schema,
        );
        finish_version(&out, &now_schema, &props, &files, &mut hats, spec.order)?;
        self.publish_keeping_old(staging)?;
        tracing::info!(
            catalog = name,
            partitions = done.partitions,
            files_merged = done.files_merged,
            files_written = done.files_written,
            skipped = done.skipped,
            "partitions compacted"
        );
        Ok(done)
    }
}
