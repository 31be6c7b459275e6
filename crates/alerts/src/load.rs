//! Alerts into the alert database: the tables they carry appended to catalogs of the
//! store, HEALPix-partitioned (so position queries prune) and served over TAP as they
//! grow.
//!
//! | alerts | table | one row per | a repeated row |
//! |---|---|---|---|
//! | Rubin | `dia_source` | `diaSourceId` | is kept once |
//! | Rubin | `dia_forced_source` | `diaForcedSourceId` | is kept once |
//! | Rubin | `dia_object` | `diaObjectId` | replaces the stored one (the newest summary) |
//! | Rubin | `dia_cutout` | `diaSourceId` | is kept once |
//! | ZTF | `ztf_candidate` | `candid` | is kept once |
//! | ZTF | `ztf_upper_limit` | `upperLimitId` | is kept once |
//! | ZTF | `ztf_cutout` | `candid` | is kept once |
//!
//! A row without a valid position (a NaN or missing coordinate) is not stored: it is
//! counted and logged with its table and id.

use std::path::PathBuf;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Float64Type};
use meridian_catalog::Store;
use meridian_catalog::append::{AppendSpec, Appended, Keep};

use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::dia::{self, Kind};
use crate::{Error, Result, avro};

/// How one table of the alerts is stored.
#[derive(Debug, Clone, Copy)]
pub struct TableSpec {
    /// The table's name in [`dia::split`].
    pub split: &'static str,
    /// The catalog it is appended to.
    pub catalog: &'static str,
    /// The column identifying a row.
    pub key: &'static str,
    /// Which row of a repeated key is kept.
    pub keep: Keep,
    /// What the catalog holds (its `obs_title`).
    pub title: &'static str,
}

const RUBIN: [TableSpec; 4] = [
    TableSpec {
        split: "DiaSource",
        catalog: "dia_source",
        key: "diaSourceId",
        keep: Keep::First,
        title: "Rubin DIA sources from alerts",
    },
    TableSpec {
        split: "DiaForcedSource",
        catalog: "dia_forced_source",
        key: "diaForcedSourceId",
        keep: Keep::First,
        title: "Rubin DIA forced photometry from alerts",
    },
    TableSpec {
        split: "DiaObject",
        catalog: "dia_object",
        key: "diaObjectId",
        keep: Keep::Last,
        title: "Rubin DIA objects from alerts (each object's newest summary)",
    },
    TableSpec {
        split: "Cutout",
        catalog: "dia_cutout",
        key: "diaSourceId",
        keep: Keep::First,
        title: "Rubin alert cutouts (science, template, difference FITS) by diaSourceId",
    },
];

const ZTF: [TableSpec; 3] = [
    TableSpec {
        split: "ZtfCandidate",
        catalog: "ztf_candidate",
        key: "candid",
        keep: Keep::First,
        title: "ZTF alert candidates",
    },
    TableSpec {
        split: "ZtfUpperLimit",
        catalog: "ztf_upper_limit",
        key: "upperLimitId",
        keep: Keep::First,
        title: "ZTF upper limits from alerts' histories",
    },
    TableSpec {
        split: "Cutout",
        catalog: "ztf_cutout",
        key: "candid",
        keep: Keep::First,
        title: "ZTF alert stamps (science, template, difference) by candid",
    },
];

/// The tables alerts of `kind` are stored in.
pub fn tables(kind: Kind) -> &'static [TableSpec] {
    match kind {
        Kind::Rubin => &RUBIN,
        Kind::Ztf => &ZTF,
    }
}

/// What storing alerts did to one table.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The catalog.
    pub catalog: &'static str,
    /// The append.
    pub appended: Appended,
    /// Rows not stored for want of a valid position.
    pub rejected: usize,
}

/// Stores a batch of alerts of one kind: each of their tables is appended to its catalog
/// (see the module's table), one new version each.
pub fn store_alerts(store: &Store, alerts: &[RecordBatch]) -> Result<Vec<Stored>> {
    let mut kind = None;
    let mut parts: Vec<Vec<RecordBatch>> = Vec::new();
    for batch in alerts.iter().filter(|b| b.num_rows() > 0) {
        let split = dia::split(batch)?;
        if let Some(k) = kind.filter(|k| *k != split.kind) {
            return Err(Error::Shape(format!(
                "{:?} alerts with {k:?} alerts: store one survey's alerts at a time",
                split.kind
            )));
        }
        kind = Some(split.kind);
        let specs = tables(split.kind);
        parts.resize_with(specs.len(), Vec::new);
        for (spec, part) in specs.iter().zip(parts.iter_mut()) {
            if let Some(rows) = split.get(spec.split) {
                part.push(rows.clone());
            }
        }
    }
    let Some(kind) = kind else {
        return Ok(Vec::new());
    };
    // The tables are separate catalogs, each with its own lock: appended side by side.
    let results: Vec<Result<Option<Stored>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = tables(kind)
            .iter()
            .zip(parts)
            .map(|(spec, rows)| scope.spawn(move || store_table(store, spec, rows)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(Error::Invalid("a table's append panicked".into())))
            })
            .collect()
    });
    let mut stored = Vec::new();
    for r in results {
        stored.extend(r?);
    }
    Ok(stored)
}

/// How rows of a table are appended to its catalog.
fn append_spec(spec: &TableSpec) -> AppendSpec {
    let mut append = AppendSpec::new("ra", "dec");
    append.key = Some(spec.key.into());
    append.keep = spec.keep;
    append.title = Some(spec.title.into());
    append
}

/// Rows a compaction merges at most before it publishes (the rest waits for the next).
const COMPACT_ROWS: usize = 2_000_000;

/// Merges the files that appends leave in the DIA tables' partitions, in a thread of its
/// own while alerts are stored: a table whose append reported partitions of many files
/// ([`Appended::to_compact`]) is compacted after it. A compaction that fails is logged and
/// retried after the table's next append; the stream goes on either way.
pub struct Compactor {
    tx: Option<std::sync::mpsc::Sender<&'static str>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Compactor {
    /// Starts the compacting thread.
    pub fn start(store: &Store) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<&'static str>();
        let store = store.clone();
        let thread = std::thread::Builder::new()
            .name("compactor".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Requests that queued up meanwhile are one.
                    let mut names = std::collections::BTreeSet::from([first]);
                    names.extend(rx.try_iter());
                    for name in names {
                        let Some(spec) = RUBIN.iter().chain(ZTF.iter()).find(|t| t.catalog == name)
                        else {
                            continue;
                        };
                        if let Err(e) = store.compact(name, &append_spec(spec), COMPACT_ROWS) {
                            tracing::warn!(catalog = name, error = %e, "compaction failed");
                        }
                    }
                }
            })
            .expect("a thread can be started");
        Self {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    /// Asks for the tables of `stored` that have partitions to compact to be compacted.
    pub fn after(&self, stored: &[Stored]) {
        for s in stored.iter().filter(|s| s.appended.to_compact > 0) {
            if let Some(tx) = &self.tx {
                let _ = tx.send(s.catalog);
            }
        }
    }
}

impl Drop for Compactor {
    /// Waits for the compaction under way (each merges at most 2,000,000 rows).
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Appends the rows of one DIA table (none: nothing to do).
fn store_table(store: &Store, spec: &TableSpec, rows: Vec<RecordBatch>) -> Result<Option<Stored>> {
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let schema = first.schema();
    let rows = arrow::compute::concat_batches(&schema, &rows)?;
    let (rows, rejected) = with_positions(&rows, spec)?;
    let appended = store.append(spec.catalog, &schema, &[rows], &append_spec(spec))?;
    Ok(Some(Stored {
        catalog: spec.catalog,
        appended,
        rejected,
    }))
}

/// Reads Avro alert files whole (nothing is stored unless every file reads) and stores
/// them, one survey's per call; an alert without a valid position goes to `dead` instead,
/// with its file and index.
pub fn load_files(store: &Store, files: &[PathBuf], dead: &DeadLetters) -> Result<Loaded> {
    let mut alerts = Vec::new();
    let mut letters = Vec::new();
    for f in files {
        let (_, batches) = avro::read_file(f)?;
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        tracing::info!(file = %f.display(), alerts = n, "read alerts");
        let mut index = 0i64;
        for b in batches {
            let n = b.num_rows() as i64;
            let offsets: Vec<i64> = (index..index + n).collect();
            index += n;
            let source = f.display().to_string();
            alerts.push(screen(
                &b,
                &offsets,
                |offset, reason| DeadLetter {
                    source: source.clone(),
                    partition: None,
                    offset,
                    reason,
                    payload: Vec::new(),
                },
                &mut letters,
            )?);
        }
    }
    dead.add(&letters)?;
    let tables = store_alerts(store, &alerts)?;
    // Compacted before returning (the compactor waits for its work when dropped).
    Compactor::start(store).after(&tables);
    Ok(Loaded {
        tables,
        dead_letters: letters.len(),
    })
}

/// What loading alert files did.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Each table's append.
    pub tables: Vec<Stored>,
    /// Alerts sent to the dead-letter table.
    pub dead_letters: usize,
}

/// The alerts of `alerts` with a valid position; each other one becomes a dead letter
/// (`letter(offset, reason)`, with `offsets[i]` the offset of alert `i`).
pub fn screen(
    alerts: &RecordBatch,
    offsets: &[i64],
    letter: impl Fn(i64, String) -> DeadLetter,
    letters: &mut Vec<DeadLetter>,
) -> Result<RecordBatch> {
    let bad = dia::bad_positions(alerts)?;
    if bad.iter().all(Option::is_none) {
        return Ok(alerts.clone());
    }
    let keep: BooleanArray = bad.iter().map(|b| Some(b.is_none())).collect();
    for (i, reason) in bad.into_iter().enumerate() {
        if let Some(reason) = reason {
            letters.push(letter(offsets[i], reason));
        }
    }
    Ok(filter_record_batch(alerts, &keep)?)
}

/// The rows of `rows` with a valid position, and how many were left out (each logged).
fn with_positions(rows: &RecordBatch, spec: &TableSpec) -> Result<(RecordBatch, usize)> {
    let coordinate = |name: &str| -> Result<arrow::array::ArrayRef> {
        let c = rows
            .column_by_name(name)
            .ok_or_else(|| Error::Shape(format!("{} rows have no '{name}' column", spec.split)))?;
        Ok(arrow::compute::cast(c, &DataType::Float64)?)
    };
    let (ra, dec) = (coordinate("ra")?, coordinate("dec")?);
    let (ra, dec) = (
        ra.as_primitive::<Float64Type>(),
        dec.as_primitive::<Float64Type>(),
    );
    let ids = rows
        .column_by_name(spec.key)
        .map(|k| arrow::compute::cast(k, &DataType::Utf8))
        .transpose()?;
    let keep: BooleanArray = (0..rows.num_rows())
        .map(|i| {
            let ok = ra.is_valid(i)
                && dec.is_valid(i)
                && ra.value(i).is_finite()
                && (-90.0..=90.0).contains(&dec.value(i));
            if !ok {
                let id = ids
                    .as_ref()
                    .filter(|k| k.is_valid(i))
                    .map(|k| k.as_string::<i32>().value(i).to_string())
                    .unwrap_or_else(|| "none".into());
                tracing::warn!(
                    table = spec.catalog,
                    id = %id,
                    ra = ?ra.is_valid(i).then(|| ra.value(i)),
                    dec = ?dec.is_valid(i).then(|| dec.value(i)),
                    "row without a valid position not stored"
                );
            }
            Some(ok)
        })
        .collect();
    let rejected = keep.false_count();
    Ok((filter_record_batch(rows, &keep)?, rejected))
}
