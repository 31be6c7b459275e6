//! Appending rows to a catalog, for tables that grow while they are served (the DIA tables
//! of an alert stream).
//!
//! An appended catalog's partitions are directories of files (`hats_npix_suffix = /`, as
//! HATS allows): each append publishes a new version of the catalog in which every
//! partition that receives rows gets one more file holding only those rows (sorted by
//! `_healpix_29`), and every stored file is a hard link to the previous version's. An
//! append thus costs the rows it adds, not the partitions it touches. Readers keep the
//! version they opened (the previous version stays for [`crate::SUPERSEDED_KEPT`]), so
//! they never see a half-written state.
//!
//! A partition is merged into one file when an append would take it past `max_rows` (it is
//! then split into its four children, as HATS' adaptive tiling does) or past `max_files`
//! files, and when a row replaces a stored one ([`Keep::Last`]). Partitions of many
//! files are merged in the background by [`crate::compact`], which appends go on beside.
//!
//! Rows may carry a key (a source or object id): a row whose key is already stored is
//! dropped ([`Keep::First`], for sources repeated in later alerts' histories) or replaces
//! the stored one ([`Keep::Last`], for an object's summary, whose position may move a
//! little between alerts: the stored row is looked for within `max_shift_arcsec`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array, new_null_array,
};
use arrow::compute::{concat_batches, filter_record_batch, sort_to_indices, take_record_batch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, SchemaRef};
use meridian_sky::{Circle, Region, SkyPoint, healpix};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder,
};
use parquet::file::properties::WriterProperties;

use crate::ingest::{HPX_COLUMN, hpx_field, set_provenance};
use crate::layout::{Pixel, sky_fraction, write_partition_info};
use crate::properties::Properties;
use crate::write::{
    PAGE_ROWS, PartitionWriter, ROW_GROUP_ROWS, write_common_metadata, writer_properties,
};
use crate::{Catalog, Error, Result, Store, coverage_order};

/// Which row a key keeps when it comes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The stored row (the first seen); later ones are dropped.
    First,
    /// The newest row; it replaces the stored one.
    Last,
}

/// How rows are appended to a catalog.
#[derive(Debug, Clone)]
pub struct AppendSpec {
    /// Right ascension column (degrees).
    pub ra: String,
    /// Declination column (degrees).
    pub dec: String,
    /// Column identifying a row (an integer), if rows repeat across appends.
    pub key: Option<String>,
    /// Which row of a repeated key is kept.
    pub keep: Keep,
    /// HEALPix order of new partitions.
    pub order: u8,
    /// Rows above which a partition is split into its children.
    pub max_rows: usize,
    /// Files of a partition at which an append merges them into one (a bound that holds
    /// without any compaction).
    pub max_files: usize,
    /// Files of a partition from which [`Store::compact`] merges them (reported by
    /// [`Appended::to_compact`]).
    pub compact_files: usize,
    /// With [`Keep::Last`]: how far (arcseconds) a row's position may have moved since its
    /// stored row.
    pub max_shift_arcsec: f64,
    /// Title of a new catalog (`obs_title`).
    pub title: Option<String>,
}

impl AppendSpec {
    /// Rows placed by `ra`/`dec` columns of these names, without keys, new partitions at
    /// order 5 (about 3.4 square degrees, a few per Rubin visit), split above 200,000 rows.
    pub fn new(ra: &str, dec: &str) -> Self {
        Self {
            ra: ra.into(),
            dec: dec.into(),
            key: None,
            keep: Keep::First,
            order: 5,
            max_rows: 200_000,
            max_files: 32,
            compact_files: 8,
            max_shift_arcsec: 10.0,
            title: None,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    /// Rows given.
    pub rows_in: usize,
    /// Rows stored (new keys, and with [`Keep::Last`] the replacing rows).
    pub rows_added: usize,
    /// Stored rows replaced by newer ones ([`Keep::Last`]).
    pub rows_replaced: usize,
    /// Partitions that received rows (the others are shared with the previous version).
    pub partitions_written: usize,
    /// Files written (a file of new rows per partition that received some; a merged file
    /// per partition rewritten).
    pub files_written: usize,
    /// Partitions of the new version.
    pub partitions: usize,
    /// Rows of the new version.
    pub total_rows: u64,
    /// Partitions of the new version holding at least `compact_files` files.
    pub to_compact: usize,
}

impl Store {
    /// Appends `rows` (of `schema`, without `_healpix_29`) to catalog `name`, creating it if
    /// absent (with no rows, an empty catalog with this schema). One append at a time per
    /// catalog, across processes. A catalog served in place (not written by Meridian) is
    /// refused, and so is a row without a valid position or a column the catalog lacks:
    /// nothing is published then.
    pub fn append(
        &self,
        name: &str,
        schema: &SchemaRef,
        rows: &[RecordBatch],
        spec: &AppendSpec,
    ) -> Result<Appended> {
        healpix::check_order(spec.order)?;
        if spec.max_rows == 0 {
            return Err(Error::Invalid("max_rows must be at least 1".into()));
        }
        let _lock = self.lock(name)?;
        let current = match self.current_version(name)? {
            Some(dir) => {
                let c = Catalog::open(&dir)?;
                if c.local_dir() != Some(dir.as_path()) {
                    return Err(Error::Invalid(format!(
                        "catalog '{name}' was ingested (a collection, with its margin): rows \
                         are appended only to catalogs that appends created"
                    )));
                }
                Some((c, dir))
            }
            None if self.location(name).is_ok() => {
                return Err(Error::Invalid(format!(
                    "catalog '{name}' is served in place from elsewhere: rows can only be \
                     appended to catalogs Meridian writes"
                )));
            }
            None => None,
        };
        let table_schema = match &current {
            Some((c, _)) => widened(&c.schema(), schema),
            None => with_healpix(schema),
        };
        let mut input = Vec::with_capacity(rows.len());
        for b in rows.iter().filter(|b| b.num_rows() > 0) {
            input.push(align(b, &table_schema, name)?);
        }
        let new = concat_batches(&table_schema, &input)?;
        let rows_in = new.num_rows();
        if rows_in == 0
            && let Some((c, _)) = &current
        {
            return Ok(Appended {
                partitions: c.partitions().len(),
                total_rows: c.total_rows()?,
                ..Appended::default()
            });
        }
        let new = locate(&new, spec, name)?;
        let new = match (&spec.key, spec.keep) {
            (Some(k), keep) => unique(&new, k, keep == Keep::Last)?,
            (None, _) => new,
        };
        let hpx = hpx_values(&new)?;

        let existing: Vec<Pixel> = current
            .as_ref()
            .map(|(c, _)| c.partitions().to_vec())
            .unwrap_or_default();
        let layout = Layout::new(existing.clone());
        let stored_pixels: HashSet<Pixel> = existing.iter().copied().collect();
        let mut assigned: BTreeMap<Pixel, Vec<u32>> = BTreeMap::new();
        for (i, h) in hpx.iter().enumerate() {
            assigned
                .entry(layout.assign(*h, spec.order))
                .or_default()
                .push(i as u32);
        }
        // With Keep::Last, a stored row of a key may sit in a neighbouring partition.
        let mut touched: BTreeSet<Pixel> = assigned.keys().copied().collect();
        let new_keys: HashSet<i64> = match &spec.key {
            Some(k) if spec.keep == Keep::Last => {
                for p in neighbourhood(&new, &hpx, spec, name, &layout)? {
                    touched.insert(p);
                }
                keys(&new, k)?.iter().flatten().collect()
            }
            _ => HashSet::new(),
        };
        let seq = current
            .as_ref()
            .and_then(|(c, _)| c.properties().get(APPEND_SEQ)?.parse::<u64>().ok())
            .unwrap_or(0)
            + 1;

        let staging = self.begin_staging(name)?;
        let dir = staging.path().to_path_buf();
        let props = writer_properties(
            ROW_GROUP_ROWS,
            PAGE_ROWS,
            HPX_COLUMN,
            [&spec.ra, &spec.dec],
            &table_schema,
        );
        // The files of each partition of the new version.
        let mut outputs: BTreeMap<Pixel, Vec<String>> = BTreeMap::new();
        let mut replaced = 0usize;
        let mut added = 0usize;
        let mut rewritten: HashSet<Pixel> = HashSet::new();
        let mut files_written = 0usize;
        for pixel in &touched {
            let stored = match &current {
                Some((c, old)) if stored_pixels.contains(pixel) => {
                    StoredPartition::new(c, old, pixel)?
                }
                _ => StoredPartition::default(),
            };
            let mut incoming = match assigned.get(pixel) {
                Some(idx) => take_record_batch(&new, &UInt32Array::from(idx.clone()))?,
                None => RecordBatch::new_empty(table_schema.clone()),
            };
            // Stored rows that newer rows of their key replace, by file.
            let mut dropped = 0usize;
            if let Some(k) = &spec.key {
                let stored_keys = stored.keys(k)?;
                match spec.keep {
                    Keep::First => {
                        let old: HashSet<i64> = stored_keys.iter().flatten().copied().collect();
                        let keep: BooleanArray = keys(&incoming, k)?
                            .iter()
                            .map(|v| Some(v.is_some_and(|v| !old.contains(&v))))
                            .collect();
                        incoming = filter_record_batch(&incoming, &keep)?;
                    }
                    Keep::Last => {
                        dropped = stored_keys
                            .iter()
                            .flatten()
                            .filter(|v| new_keys.contains(v))
                            .count();
                    }
                }
            }
            if incoming.num_rows() == 0 && dropped == 0 {
                // Nothing new for this partition (or a neighbour searched for replaced
                // rows, holding none): its files are shared with the previous version.
                continue;
            }
            added += incoming.num_rows();
            replaced += dropped;
            rewritten.insert(*pixel);
            let rows_after = stored.rows + incoming.num_rows() - dropped;
            if dropped > 0 || rows_after > spec.max_rows || stored.files.len() + 1 > spec.max_files
            {
                // Replaced rows, a partition outgrowing `max_rows` (split into its
                // children) or one of too many files: merged into one file per partition.
                let mut rows = stored.read(&table_schema, name)?;
                if dropped > 0 {
                    let k = spec.key.as_deref().expect("rows are dropped by key");
                    let keep: BooleanArray = keys(&rows, k)?
                        .iter()
                        .map(|v| Some(!v.is_some_and(|v| new_keys.contains(&v))))
                        .collect();
                    rows = filter_record_batch(&rows, &keep)?;
                }
                let merged = concat_batches(&table_schema, &[rows, incoming])?;
                for (p, rows) in split(*pixel, &merged, spec.max_rows)? {
                    let rel = file_name(&p, seq);
                    write_file(&dir, &rel, p, &rows, &table_schema, &props)?;
                    files_written += 1;
                    outputs.entry(p).or_default().push(rel);
                }
            } else {
                // Only the new rows are written, as one more file of the partition.
                let files = outputs.entry(*pixel).or_default();
                for f in &stored.files {
                    files.push(link_file(&stored.dir, f, pixel, &dir)?);
                }
                let rel = file_name(pixel, seq);
                let sorted = sort_by_hpx(&incoming)?;
                write_file(&dir, &rel, *pixel, &sorted, &table_schema, &props)?;
                files_written += 1;
                files.push(rel);
            }
        }
        // Every other partition's files are shared with the previous version.
        if let Some((c, old_dir)) = &current {
            for p in existing.iter().filter(|p| !rewritten.contains(p)) {
                let files = outputs.entry(*p).or_default();
                for f in c.partition_files(p) {
                    files.push(link_file(old_dir, &f, p, &dir)?);
                }
            }
        }
        let old_rows = match &current {
            Some((c, _)) => c.total_rows()?,
            None => 0,
        };
        let total_rows = old_rows + added as u64 - replaced as u64;
        let mut hats = match &current {
            Some((c, _)) => c.properties().clone(),
            None => new_properties(name, spec),
        };
        hats.set("hats_nrows", total_rows);
        hats.set(APPEND_SEQ, seq);
        let pixels = finish_version(&dir, &table_schema, &props, &outputs, &mut hats, spec.order)?;
        self.publish_keeping_old(staging)?;
        let to_compact = outputs
            .values()
            .filter(|f| f.len() >= spec.compact_files)
            .count();
        tracing::info!(
            catalog = name,
            rows_in,
            rows_added = added,
            rows_replaced = replaced,
            partitions_written = rewritten.len(),
            files_written,
            partitions = pixels,
            to_compact,
            total_rows,
            "rows appended"
        );
        Ok(Appended {
            rows_in,
            rows_added: added,
            rows_replaced: replaced,
            partitions_written: rewritten.len(),
            files_written,
            partitions: pixels,
            total_rows,
            to_compact,
        })
    }
}

/// Property holding the number of the last append (it names the files the append wrote).
pub(crate) const APPEND_SEQ: &str = "meridian_append_seq";

/// A stored partition: its version's directory, its files (relative to it) and rows.
#[derive(Default)]
pub(crate) struct StoredPartition {
    dir: std::path::PathBuf,
    pub(crate) files: Vec<String>,
    pub(crate) rows: usize,
}

impl StoredPartition {
    /// Partition `pixel` of catalog `c`, whose version directory is `dir` (row counts from
    /// the files' footers).
    pub(crate) fn new(c: &Catalog, dir: &Path, pixel: &Pixel) -> Result<Self> {
        let files = c.partition_files(pixel);
        let mut rows = 0;
        for f in &files {
            let path = dir.join(f);
            let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
            let meta = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new())
                .map_err(|e| Error::parquet(path.display().to_string(), e))?;
            rows += meta.metadata().file_metadata().num_rows() as usize;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            files,
            rows,
        })
    }

    /// The key column of every stored row (only that column is read).
    fn keys(&self, key: &str) -> Result<Vec<Option<i64>>> {
        let mut out = Vec::with_capacity(self.rows);
        for f in &self.files {
            for b in read_parquet(&self.dir.join(f), Some(key))? {
                out.extend(keys(&b, key)?.iter());
            }
        }
        Ok(out)
    }

    /// Every stored row, with the table's columns.
    pub(crate) fn read(&self, schema: &SchemaRef, table: &str) -> Result<RecordBatch> {
        let mut batches = Vec::new();
        for f in &self.files {
            for b in read_parquet(&self.dir.join(f), None)? {
                batches.push(align(&b, schema, table)?);
            }
        }
        Ok(concat_batches(schema, &batches)?)
    }
}

/// The rows of a Parquet file (only `column`, when given).
fn read_parquet(path: &Path, column: Option<&str>) -> Result<Vec<RecordBatch>> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut builder =
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| Error::parquet(&name, e))?;
    if let Some(c) = column {
        let schema = builder.parquet_schema();
        let leaf = (0..schema.num_columns())
            .find(|&i| schema.column(i).name() == c)
            .ok_or_else(|| Error::Invalid(format!("{name}: no column '{c}'")))?;
        let mask = ProjectionMask::leaves(schema, [leaf]);
        builder = builder.with_projection(mask);
    }
    let reader = builder
        .with_batch_size(65_536)
        .build()
        .map_err(|e| Error::parquet(&name, e))?;
    reader
        .map(|b| b.map_err(|e| Error::Invalid(format!("{name}: {e}"))))
        .collect()
}

/// The file of partition `pixel` that append number `seq` writes, relative to the
/// catalog: `dataset/Norder=K/Dir=D/Npix=N/part-SEQ.parquet` (names sort by age).
pub(crate) fn file_name(pixel: &Pixel, seq: u64) -> String {
    format!("{}/part-{seq:010}.parquet", pixel.relative_dir())
}

/// Writes `rows` (sorted by `_healpix_29`) as file `rel` of catalog directory `dir`.
pub(crate) fn write_file(
    dir: &Path,
    rel: &str,
    pixel: Pixel,
    rows: &RecordBatch,
    schema: &SchemaRef,
    props: &Arc<WriterProperties>,
) -> Result<()> {
    let mut w = PartitionWriter::create_at(dir.join(rel), pixel, schema, props)?;
    w.write(rows)?;
    w.close()?;
    Ok(())
}

/// Links stored file `rel` of the version in `from` into partition `pixel` of the new
/// version in `to`, returning its path there. A partition stored as one file (a catalog
/// written before partitions were directories) becomes the first file of its directory.
pub(crate) fn link_file(from: &Path, rel: &str, pixel: &Pixel, to: &Path) -> Result<String> {
    let name = if rel == pixel.relative_path() {
        "part-0000000000.parquet".to_string()
    } else {
        rel.rsplit('/').next().unwrap_or(rel).to_string()
    };
    let target = format!("{}/{name}", pixel.relative_dir());
    let (src, dst) = (from.join(rel), to.join(&target));
    let parent = dst.parent().expect("partition file has a parent");
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    std::fs::hard_link(&src, &dst).map_err(|e| Error::io(&dst, e))?;
    Ok(target)
}

/// Writes the summary files of a new version in `dir` whose partitions hold `files`:
/// `_common_metadata`, `partition_info.csv` and the properties (with `hats_order`, the
/// sky fraction and size; `hats_nrows` is the caller's). Returns the partitions' count.
pub(crate) fn finish_version(
    dir: &Path,
    schema: &SchemaRef,
    props: &Arc<WriterProperties>,
    files: &BTreeMap<Pixel, Vec<String>>,
    hats: &mut Properties,
    base_order: u8,
) -> Result<usize> {
    let mut pixels: Vec<Pixel> = files
        .iter()
        .filter(|(_, f)| !f.is_empty())
        .map(|(p, _)| *p)
        .collect();
    pixels.sort_by_key(|p| p.hpx29_range().start);
    write_common_metadata(dir, schema, props)?;
    write_partition_info(dir, &pixels)?;
    hats.set("hats_npix_suffix", "/");
    hats.set(
        "hats_order",
        pixels.iter().map(|p| p.order).max().unwrap_or(base_order),
    );
    hats.set("moc_sky_fraction", format!("{:.5}", sky_fraction(&pixels)));
    let bytes: u64 = files
        .values()
        .flatten()
        .map(|f| std::fs::metadata(dir.join(f)).map_or(0, |m| m.len()))
        .sum();
    hats.set("hats_estsize", bytes / 1024);
    set_provenance(hats);
    hats.write(&dir.join("hats.properties"), "HATS catalog")?;
    hats.write(&dir.join("properties"), "HATS catalog")?;
    Ok(pixels.len())
}

/// `rows` sorted by `_healpix_29`.
fn sort_by_hpx(rows: &RecordBatch) -> Result<RecordBatch> {
    let hpx = rows
        .column_by_name(HPX_COLUMN)
        .ok_or_else(|| Error::Invalid(format!("no {HPX_COLUMN} column")))?;
    let order = sort_to_indices(hpx, None, None)?;
    Ok(take_record_batch(rows, &order)?)
}

/// The properties of a new appendable catalog.
fn new_properties(name: &str, spec: &AppendSpec) -> Properties {
    let mut hats = Properties::default();
    hats.set("obs_collection", name);
    hats.set("dataproduct_type", "object");
    hats.set("hats_col_ra", &spec.ra);
    hats.set("hats_col_dec", &spec.dec);
    hats.set("hats_col_healpix", HPX_COLUMN);
    hats.set("hats_col_healpix_order", 29);
    hats.set("hats_npix_suffix", ".parquet");
    hats.set("hats_max_rows", spec.max_rows);
    if let Some(t) = &spec.title {
        hats.set("obs_title", t);
    }
    hats
}

/// `schema` with `_healpix_29` first and every other field nullable.
fn with_healpix(schema: &SchemaRef) -> SchemaRef {
    let mut fields = vec![Arc::new(hpx_field())];
    fields.extend(
        schema
            .fields()
            .iter()
            .filter(|f| f.name() != HPX_COLUMN)
            .map(|f| Arc::new(f.as_ref().clone().with_nullable(true))),
    );
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The table's schema `table` with the columns of `rows` it lacks added at its end
/// (nullable): alerts of a newer schema version bring new fields. Rows of the partitions
/// written before read them as null.
fn widened(table: &SchemaRef, rows: &SchemaRef) -> SchemaRef {
    let extra: Vec<_> = rows
        .fields()
        .iter()
        .filter(|f| f.name() != HPX_COLUMN && table.field_with_name(f.name()).is_err())
        .map(|f| Arc::new(f.as_ref().clone().with_nullable(true)))
        .collect();
    if extra.is_empty() {
        return table.clone();
    }
    tracing::info!(
        columns = ?extra.iter().map(|f| f.name().as_str()).collect::<Vec<_>>(),
        "new columns added to the catalog"
    );
    let mut fields: Vec<_> = table.fields().iter().cloned().collect();
    fields.extend(extra);
    Arc::new(Schema::new_with_metadata(fields, table.metadata().clone()))
}

/// `batch` with the columns of the table's `schema` (cast where the type differs, null
/// where the batch lacks them; `_healpix_29` is computed later). A column the table lacks
/// is refused (see [`widened`]).
fn align(batch: &RecordBatch, schema: &SchemaRef, table: &str) -> Result<RecordBatch> {
    for f in batch.schema().fields() {
        if f.name() != HPX_COLUMN && schema.field_with_name(f.name()).is_err() {
            return Err(Error::Invalid(format!(
                "catalog '{table}' has no column '{}' (its columns are those of its first \
                 rows)",
                f.name()
            )));
        }
    }
    let n = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|f| -> Result<ArrayRef> {
            if f.name() == HPX_COLUMN && batch.column_by_name(HPX_COLUMN).is_none() {
                return Ok(Arc::new(Int64Array::from(vec![0i64; n])));
            }
            Ok(match batch.column_by_name(f.name()) {
                Some(c) if c.data_type() == f.data_type() => c.clone(),
                // A value that does not convert is an error, never a silent null.
                Some(c) => arrow::compute::cast_with_options(
                    c,
                    f.data_type(),
                    &arrow::compute::CastOptions {
                        safe: false,
                        ..Default::default()
                    },
                )
                .map_err(|e| {
                    Error::Invalid(format!(
                        "catalog '{table}', column '{}': {} values cannot be stored as {}: {e}",
                        f.name(),
                        c.data_type(),
                        f.data_type()
                    ))
                })?,
                None => new_null_array(f.data_type(), n),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// The position columns `spec.ra` and `spec.dec` of `batch` (rows for catalog `table`), as
/// doubles.
fn positions(batch: &RecordBatch, spec: &AppendSpec, table: &str) -> Result<(ArrayRef, ArrayRef)> {
    let col = |name: &str| -> Result<ArrayRef> {
        let c = batch.column_by_name(name).ok_or_else(|| {
            Error::Invalid(format!("catalog '{table}' has no position column '{name}'"))
        })?;
        Ok(arrow::compute::cast(c, &DataType::Float64)?)
    };
    Ok((col(&spec.ra)?, col(&spec.dec)?))
}

/// `batch` with `_healpix_29` computed from its positions; a row without a valid position
/// is refused with its index and values.
fn locate(batch: &RecordBatch, spec: &AppendSpec, table: &str) -> Result<RecordBatch> {
    let (ra, dec) = positions(batch, spec, table)?;
    let (ra, dec) = (
        ra.as_primitive::<Float64Type>(),
        dec.as_primitive::<Float64Type>(),
    );
    let mut hpx = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let (r, d) = (
            ra.is_valid(i).then(|| ra.value(i)),
            dec.is_valid(i).then(|| dec.value(i)),
        );
        match (r, d) {
            (Some(r), Some(d)) if r.is_finite() && d.is_finite() && (-90.0..=90.0).contains(&d) => {
                hpx.push(healpix::hpx29_deg(r.rem_euclid(360.0), d) as i64)
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "catalog '{table}', row {} of the rows appended: ({}, {}) = ({r:?}, {d:?}) \
                     is not a position",
                    i + 1,
                    spec.ra,
                    spec.dec
                )));
            }
        }
    }
    let i = batch
        .schema()
        .index_of(HPX_COLUMN)
        .map_err(|e| Error::Invalid(e.to_string()))?;
    let mut columns = batch.columns().to_vec();
    columns[i] = Arc::new(Int64Array::from(hpx));
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

fn hpx_values(batch: &RecordBatch) -> Result<Vec<u64>> {
    let c = batch
        .column_by_name(HPX_COLUMN)
        .ok_or_else(|| Error::Invalid(format!("no {HPX_COLUMN} column")))?;
    Ok(c.as_primitive::<Int64Type>()
        .values()
        .iter()
        .map(|&h| h as u64)
        .collect())
}

/// The key column as integers (null where absent).
fn keys(batch: &RecordBatch, key: &str) -> Result<Int64Array> {
    let c = batch
        .column_by_name(key)
        .ok_or_else(|| Error::Invalid(format!("no key column '{key}'")))?;
    let c = arrow::compute::cast(c, &DataType::Int64).map_err(|e| {
        Error::Invalid(format!(
            "key column '{key}' ({}) is not an integer: {e}",
            c.data_type()
        ))
    })?;
    Ok(c.as_primitive::<Int64Type>().clone())
}

/// The rows of `batch` with the first (or, with `last`, the last) row of each key; rows
/// without a key are dropped.
fn unique(batch: &RecordBatch, key: &str, last: bool) -> Result<RecordBatch> {
    let k = keys(batch, key)?;
    let mut seen = HashSet::with_capacity(k.len());
    let mut keep = vec![false; k.len()];
    let order: Box<dyn Iterator<Item = usize>> = if last {
        Box::new((0..k.len()).rev())
    } else {
        Box::new(0..k.len())
    };
    for i in order {
        if k.is_valid(i) && seen.insert(k.value(i)) {
            keep[i] = true;
        }
    }
    Ok(filter_record_batch(batch, &BooleanArray::from(keep))?)
}

/// The stored partitions within `max_shift_arcsec` of the rows of `batch` (whose order-29
/// cells are `hpx`).
///
/// At the order where a cone of that radius lies within its centre's cell and the cell's
/// neighbours, the partitions are those of the nine cells around each row's cell: a
/// superset of the exact answer by at most a cell of about the radius, found once per
/// occupied cell with no trigonometry. Radii too large for any order take each row's cone.
fn neighbourhood(
    batch: &RecordBatch,
    hpx: &[u64],
    spec: &AppendSpec,
    table: &str,
    layout: &Layout,
) -> Result<Vec<Pixel>> {
    let mut out = BTreeSet::new();
    if let Some(order) = healpix::neighbourhood_order(spec.max_shift_arcsec / 3600.0) {
        let shift = 2 * u32::from(healpix::MAX_ORDER - order);
        let mut cells: Vec<u64> = hpx.iter().map(|h| h >> shift).collect();
        cells.sort_unstable();
        cells.dedup();
        let mut around = Vec::with_capacity(9);
        for cell in cells {
            around.clear();
            around.push(cell);
            around.extend(healpix::neighbours(order, cell));
            for c in &around {
                out.extend(layout.overlapping(&(c << shift..(c + 1) << shift)));
            }
        }
        return Ok(out.into_iter().collect());
    }
    let (ra, dec) = positions(batch, spec, table)?;
    let (ra, dec) = (
        ra.as_primitive::<Float64Type>(),
        dec.as_primitive::<Float64Type>(),
    );
    for i in 0..batch.num_rows() {
        let centre = SkyPoint::new(ra.value(i).rem_euclid(360.0), dec.value(i))?;
        let region = Region::Circle(Circle::new(centre, spec.max_shift_arcsec / 3600.0)?);
        for r in region.hpx29_ranges(coverage_order(&region))? {
            out.extend(layout.overlapping(&r));
        }
    }
    Ok(out.into_iter().collect())
}

/// The rows of `pixel` sorted by `_healpix_29`, as partitions of at most `max_rows` rows
/// (a partition above it is split into its non-empty children, down to order 29).
pub(crate) fn split(
    pixel: Pixel,
    rows: &RecordBatch,
    max_rows: usize,
) -> Result<Vec<(Pixel, RecordBatch)>> {
    let sorted = sort_by_hpx(rows)?;
    let mut out = Vec::new();
    split_sorted(pixel, sorted, max_rows, &mut out)?;
    Ok(out)
}

fn split_sorted(
    pixel: Pixel,
    rows: RecordBatch,
    max_rows: usize,
    out: &mut Vec<(Pixel, RecordBatch)>,
) -> Result<()> {
    if rows.num_rows() <= max_rows || pixel.order >= 29 {
        out.push((pixel, rows));
        return Ok(());
    }
    let hpx = hpx_values(&rows)?;
    let mut start = 0;
    for child in 0..4 {
        let c = Pixel::new(pixel.order + 1, pixel.pix * 4 + child)?;
        let end = c.hpx29_range().end;
        let n = hpx[start..].partition_point(|&h| h < end);
        if n > 0 {
            split_sorted(c, rows.slice(start, n), max_rows, out)?;
        }
        start += n;
    }
    Ok(())
}

/// The partitions of a catalog, for placing new rows.
struct Layout {
    /// Sorted by the start of their `_healpix_29` range (partitions are disjoint).
    pixels: Vec<Pixel>,
}

impl Layout {
    fn new(mut pixels: Vec<Pixel>) -> Self {
        pixels.sort_by_key(|p| p.hpx29_range().start);
        Self { pixels }
    }

    /// The partitions overlapping an order-29 range.
    fn overlapping(&self, r: &std::ops::Range<u64>) -> Vec<Pixel> {
        let end = self
            .pixels
            .partition_point(|p| p.hpx29_range().start < r.end);
        self.pixels[..end]
            .iter()
            .rev()
            .take_while(|p| p.hpx29_range().end > r.start)
            .copied()
            .collect()
    }

    /// The partition a row at `hpx29` goes to: the stored one containing it, else the
    /// cell of order `base` containing it, or, where stored partitions lie inside that
    /// cell (it was split), the largest cell around the row that holds none of them.
    fn assign(&self, hpx29: u64, base: u8) -> Pixel {
        if let Some(p) = self.overlapping(&(hpx29..hpx29 + 1)).first() {
            return *p;
        }
        for order in base..=29 {
            let pix = hpx29 >> (2 * (29 - order as u32));
            let cell = Pixel { order, pix };
            if self.overlapping(&cell.hpx29_range()).is_empty() {
                return cell;
            }
        }
        unreachable!("an order-29 cell holding no partition is free")
    }
}
