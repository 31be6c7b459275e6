//! Streaming ingest into the HATS layout.
//!
//! 1. **Map**: a reader thread parses the input into Arrow batches; the ingest thread checks
//!    positions, computes `_healpix_29`, counts rows per cell of the histogram order, sorts
//!    each batch by `_healpix_29` and spills it, bucketed by a coarse HEALPix cell, to Arrow
//!    IPC files. Memory is bounded by the spill buffer budget, whatever the input size.
//! 2. **Partition**: the histogram gives adaptive partitions (the `hats-import` rule).
//! 3. **Reduce**: buckets are sorted and cut into partition files in parallel; a bucket larger
//!    than the per-thread memory budget is split again into finer buckets first.
//! 4. **Margin**: a margin cache catalog is built from the written partitions.
//! 5. **Publish**: summary files and properties are written and the collection is published
//!    atomically.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use meridian_formats::{BadRows, ByteCounter, ColumnMeta, ReadOptions};
use meridian_sky::healpix;
use rayon::prelude::*;

use crate::layout::{Pixel, write_partition_info};
use crate::partitioning::Histogram;
use crate::properties::Properties;
use crate::store::Store;
use crate::write::{PartitionWriter, Written, write_summary_files, writer_properties};
use crate::{Error, Result};

/// Name of the spatial index column.
pub const HPX_COLUMN: &str = "_healpix_29";

/// Ingest settings. Defaults follow `hats-import`.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// RA column; found among common names when `None`.
    pub ra_column: Option<String>,
    /// Dec column; found among common names when `None`.
    pub dec_column: Option<String>,
    /// Maximum rows per partition.
    pub partition_rows: u64,
    /// Lowest partition order.
    pub min_order: u8,
    /// Highest partition order (the histogram order).
    pub max_order: u8,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Rows per Parquet data page: the unit a small cone decodes, through the page index.
    pub page_rows: usize,
    /// Margin cache width in arcseconds; 0 for none.
    pub margin_arcsec: f64,
    /// Reader settings (schema file, skipping bad rows).
    pub read: ReadOptions,
    /// Memory for spill buffers and for sorting buckets, in bytes.
    pub memory_budget_bytes: u64,
    /// Worker threads for the reduce and margin stages (0: all cores).
    pub threads: usize,
    /// Catalog title for `obs_title`.
    pub title: Option<String>,
    /// More `hats.properties` entries (a derived table's inputs, say), written with the
    /// catalog so that they are published with it.
    pub properties: Vec<(String, String)>,
    /// Whether the version this ingest replaces stays readable, for the queries that
    /// opened it, for [`crate::SUPERSEDED_KEPT`] (else it is removed at once).
    pub keep_superseded: bool,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            ra_column: None,
            dec_column: None,
            partition_rows: 1_000_000,
            min_order: 0,
            max_order: 10,
            row_group_rows: crate::write::ROW_GROUP_ROWS,
            page_rows: crate::write::PAGE_ROWS,
            margin_arcsec: 10.0,
            read: ReadOptions::default(),
            memory_budget_bytes: 1 << 30,
            threads: 0,
            title: None,
            properties: Vec::new(),
            keep_superseded: false,
        }
    }
}

/// Ingest stages, for progress display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading and spilling the input.
    Reading,
    /// Writing partition files.
    Writing,
    /// Building the margin cache.
    Margin,
    /// Publishing.
    Publishing,
}

/// A progress report.
#[derive(Debug, Clone)]
pub struct IngestProgress {
    /// Current stage.
    pub stage: Stage,
    /// Rows read so far (Reading) or rows written (Writing).
    pub rows: u64,
    /// Input bytes read so far and in total (Reading).
    pub bytes: (u64, u64),
    /// Units done and in total (partitions in Writing and Margin).
    pub units: (u64, u64),
}

/// The outcome of an ingest.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// Catalog name.
    pub name: String,
    /// Published path.
    pub path: PathBuf,
    /// Rows ingested.
    pub rows: u64,
    /// Rows skipped (with `skip_bad_rows`).
    pub bad_rows: BadRows,
    /// Number of partitions.
    pub partitions: usize,
    /// Highest partition order.
    pub max_order: u8,
    /// Rows in the margin cache.
    pub margin_rows: u64,
    /// Wall time.
    pub elapsed: Duration,
}

const RA_NAMES: &[&str] = &[
    "ra", "ra_deg", "raj2000", "_raj2000", "ra_icrs", "radeg", "alpha", "ra2000",
];
const DEC_NAMES: &[&str] = &[
    "dec", "dec_deg", "dej2000", "_dej2000", "decj2000", "dec_icrs", "dedeg", "delta", "de2000",
    "decl",
];

fn find_column(
    schema: &Schema,
    given: Option<&str>,
    names: &[&str],
    what: &str,
    file: &Path,
) -> Result<usize> {
    let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let found = match given {
        Some(g) => cols
            .iter()
            .position(|c| *c == g)
            .or_else(|| cols.iter().position(|c| c.eq_ignore_ascii_case(g))),
        None => names
            .iter()
            .find_map(|n| cols.iter().position(|c| c.eq_ignore_ascii_case(n))),
    };
    let idx = found.ok_or_else(|| {
        let asked = match given {
            Some(g) => format!("the {what} column '{g}'"),
            None => format!("a {what} column (looked for {})", names.join(", ")),
        };
        Error::Invalid(format!(
            "{}: missing position column: no {asked}; the columns are: {}",
            file.display(),
            cols.join(", ")
        ))
    })?;
    let t = schema.field(idx).data_type();
    if !(t.is_floating() || t.is_integer() || *t == DataType::Utf8) {
        return Err(Error::Invalid(format!(
            "{}: {what} column '{}' has type {t}, not a number",
            file.display(),
            cols[idx]
        )));
    }
    Ok(idx)
}

fn raise_open_file_limit() {
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Ingests `inputs` (same columns in each) as catalog `name` of `store`.
pub fn ingest(
    store: &Store,
    name: &str,
    inputs: &[PathBuf],
    opts: &IngestOptions,
    progress: &(dyn Fn(&IngestProgress) + Sync),
) -> Result<IngestReport> {
    if inputs.is_empty() {
        return Err(Error::Invalid("no input files given".into()));
    }
    run(store, name, Source::Files(inputs), opts, progress)
}

/// Ingests rows computed in this process (a cross-match's, say) as catalog `name` of
/// `store`, without writing them to a file first. `schema` is the batches' (their fields'
/// metadata, units and UCDs, go to the catalog); `label` names the source in error
/// messages, as a file name would. Reading options (`opts.read`) do not apply.
pub fn ingest_batches(
    store: &Store,
    name: &str,
    schema: SchemaRef,
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    label: &str,
    opts: &IngestOptions,
    progress: &(dyn Fn(&IngestProgress) + Sync),
) -> Result<IngestReport> {
    let source = Source::Batches {
        schema,
        batches,
        label: PathBuf::from(label),
    };
    run(store, name, source, opts, progress)
}

/// Where an ingest's rows come from.
enum Source<'a> {
    Files(&'a [PathBuf]),
    Batches {
        schema: SchemaRef,
        batches: &'a mut dyn Iterator<Item = Result<RecordBatch>>,
        label: PathBuf,
    },
}

fn run(
    store: &Store,
    name: &str,
    source: Source<'_>,
    opts: &IngestOptions,
    progress: &(dyn Fn(&IngestProgress) + Sync),
) -> Result<IngestReport> {
    let start = Instant::now();
    if opts.max_order > 19 || opts.min_order > opts.max_order {
        return Err(Error::Invalid(format!(
            "partition orders must satisfy min_order <= max_order <= 19 (got {}..{})",
            opts.min_order, opts.max_order
        )));
    }
    if opts.partition_rows == 0 {
        return Err(Error::Invalid("partition_rows must be at least 1".into()));
    }
    if !(opts.margin_arcsec >= 0.0 && opts.margin_arcsec <= 3600.0) {
        return Err(Error::Invalid(format!(
            "margin of {} arcsec is outside [0, 3600]",
            opts.margin_arcsec
        )));
    }
    raise_open_file_limit();
    let staging = store.begin_staging(name)?;
    let main_dir = staging.path().join(name);
    let spill_dir = staging.path().join(".spill");
    for d in [&main_dir, &spill_dir] {
        std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(opts.threads)
        .build()
        .map_err(|e| Error::Invalid(format!("cannot start worker threads: {e}")))?;
    let threads = pool.current_num_threads().max(1) as u64;

    // 1. Map and spill.
    let mapped = match source {
        Source::Files(inputs) => map_inputs(inputs, opts, &spill_dir, progress)?,
        Source::Batches {
            schema,
            batches,
            label,
        } => map_batches(&schema, batches, &label, opts, &spill_dir, progress)?,
    };
    let schema = mapped.schema.clone();
    tracing::info!(
        stage = "map",
        rows = mapped.rows,
        seconds = start.elapsed().as_secs_f64(),
        "input read and spilled"
    );
    let ra_name = schema.field(mapped.ra_idx).name().clone();
    let dec_name = schema.field(mapped.dec_idx).name().clone();

    // 2. Partition.
    let parts = mapped
        .histogram
        .partitions(opts.partition_rows, opts.min_order);
    let pixels: Vec<Pixel> = parts.iter().map(|p| p.0).collect();
    for (p, rows) in &parts {
        if *rows > opts.partition_rows {
            tracing::warn!(partition = %p, rows, "partition exceeds the row threshold at the highest order");
        }
    }

    // 3. Reduce, finding margin rows on the way.
    let props = writer_properties(
        opts.row_group_rows,
        opts.page_rows,
        HPX_COLUMN,
        [&ra_name, &dec_name],
        &schema,
    );
    let margin = if opts.margin_arcsec > 0.0 {
        Some(crate::margin::MarginBuilder::new(
            Arc::new(pixels.clone()),
            opts.margin_arcsec,
            schema.clone(),
            mapped.ra_idx,
            mapped.dec_idx,
            &spill_dir,
            mapped.spill_order,
            opts.memory_budget_bytes / 16,
        )?)
    } else {
        None
    };
    let per_thread_budget = (opts.memory_budget_bytes / threads).max(16 << 20);
    let units = work_units(&mapped.buckets, mapped.spill_order, &pixels);
    let done = AtomicUsize::new(0);
    let rows_written = AtomicU64::new(0);
    let n_units = units.len() as u64;
    let mut written: Vec<Written> = pool
        .install(|| {
            units
                .par_iter()
                .map(|unit| {
                    let ctx = ReduceCtx {
                        dir: &main_dir,
                        schema: &schema,
                        props: &props,
                        pixels: &pixels,
                        budget: per_thread_budget,
                        spill_dir: &spill_dir,
                        margin: margin.as_ref(),
                    };
                    let out = reduce_unit(&ctx, unit)?;
                    rows_written
                        .fetch_add(out.iter().map(|w| w.rows).sum::<u64>(), Ordering::Relaxed);
                    let d = done.fetch_add(1, Ordering::Relaxed) as u64 + 1;
                    progress(&IngestProgress {
                        stage: Stage::Writing,
                        rows: rows_written.load(Ordering::Relaxed),
                        bytes: (0, 0),
                        units: (d, n_units),
                    });
                    Ok(out)
                })
                .collect::<Result<Vec<_>>>()
        })?
        .into_iter()
        .flatten()
        .collect();
    written.sort_by_key(|w| w.pixel.hpx29_range().start);
    let total_rows: u64 = written.iter().map(|w| w.rows).sum();
    debug_assert_eq!(total_rows, mapped.rows);

    tracing::info!(
        stage = "reduce",
        partitions = written.len(),
        seconds = start.elapsed().as_secs_f64(),
        "partitions written"
    );
    write_summary_files(&main_dir, &schema, &props, &written)?;
    write_partition_info(&main_dir, &pixels)?;
    let max_order = pixels.iter().map(|p| p.order).max().unwrap_or(0);
    let mut hats = Properties::default();
    hats.set("obs_collection", name);
    hats.set("dataproduct_type", "object");
    hats.set("hats_nrows", total_rows);
    hats.set("hats_col_ra", &ra_name);
    hats.set("hats_col_dec", &dec_name);
    hats.set("hats_col_healpix", HPX_COLUMN);
    hats.set("hats_col_healpix_order", 29);
    hats.set("hats_npix_suffix", ".parquet");
    hats.set("hats_max_rows", opts.partition_rows);
    hats.set("hats_order", max_order);
    hats.set(
        "moc_sky_fraction",
        format!("{:.5}", crate::layout::sky_fraction(&pixels)),
    );
    let estsize_kb: u64 = written
        .iter()
        .map(|w| file_size(&w.pixel.path_in(&main_dir)))
        .sum::<u64>()
        / 1024;
    hats.set("hats_estsize", estsize_kb);
    if let Some(t) = &opts.title {
        hats.set("obs_title", t);
    }
    for (k, v) in &opts.properties {
        hats.set(k, v);
    }
    set_provenance(&mut hats);
    hats.write(&main_dir.join("hats.properties"), "HATS catalog")?;
    hats.write(&main_dir.join("properties"), "HATS catalog")?;

    // 4. Margin.
    let mut collection = Properties::default();
    collection.set("obs_collection", name);
    collection.set("hats_primary_table_url", name);
    let mut margin_rows = 0;
    if let Some(margin) = margin {
        let margin_name = format!("{name}_{}arcs", format_arcsec(opts.margin_arcsec));
        let margin_dir = staging.path().join(&margin_name);
        let spec = crate::margin::MarginSpec {
            name: &margin_name,
            primary: name,
            ra: &ra_name,
            dec: &dec_name,
            props: &props,
        };
        progress(&IngestProgress {
            stage: Stage::Margin,
            rows: 0,
            bytes: (0, 0),
            units: (0, 1),
        });
        margin_rows = pool.install(|| margin.finish(&margin_dir, &spec))?;
        collection.set("all_margins", &margin_name);
        collection.set("default_margin", &margin_name);
    }
    tracing::info!(
        stage = "margin",
        rows = margin_rows,
        seconds = start.elapsed().as_secs_f64(),
        "margin cache written"
    );
    let _ = std::fs::remove_dir_all(&spill_dir);
    set_provenance(&mut collection);
    collection.write(
        &staging.path().join("collection.properties"),
        "HATS Collection",
    )?;

    // 5. Publish.
    progress(&IngestProgress {
        stage: Stage::Publishing,
        rows: total_rows,
        bytes: (0, 0),
        units: (0, 0),
    });
    let path = if opts.keep_superseded {
        store.publish_keeping_old(staging)?
    } else {
        store.publish(staging)?
    };
    Ok(IngestReport {
        name: name.to_string(),
        path,
        rows: total_rows,
        bad_rows: mapped.bad,
        partitions: pixels.len(),
        max_order,
        margin_rows,
        elapsed: start.elapsed(),
    })
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// "10" for 10.0, "1.5" for 1.5: the margin catalog suffix.
fn format_arcsec(a: f64) -> String {
    if a.fract() == 0.0 {
        format!("{}", a as u64)
    } else {
        format!("{a}").replace('.', "p")
    }
}

/// The `_healpix_29` column of a catalog Meridian writes (first, never null).
pub(crate) fn hpx_field() -> Field {
    Field::new(HPX_COLUMN, DataType::Int64, false).with_metadata(
        ColumnMeta {
            ucd: Some("pos.healpix".into()),
            description: Some("HEALPix NESTED index of the position at order 29".into()),
            ..Default::default()
        }
        .to_map(),
    )
}

pub(crate) fn set_provenance(p: &mut Properties) {
    p.set(
        "hats_builder",
        format!("meridian v{}", env!("CARGO_PKG_VERSION")),
    );
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // HATS writes e.g. 2024-01-01T00:00UTC.
    p.set("hats_creation_date", format!("{}UTC", &now[..16]));
    p.set("hats_version", "v1.0");
}

struct Mapped {
    schema: SchemaRef,
    ra_idx: usize,
    dec_idx: usize,
    histogram: Histogram,
    buckets: BTreeMap<u64, PathBuf>,
    spill_order: u8,
    rows: u64,
    bad: BadRows,
}

/// The map stage's state: rows located, counted and spilled as they come.
struct Mapper {
    schema: SchemaRef,
    kept: Vec<usize>,
    ra_in: usize,
    dec_in: usize,
    spill: Spill,
    spill_order: u8,
    histogram: Histogram,
    bad: BadRows,
    rows: u64,
    skip_bad_rows: bool,
    last_report: Instant,
}

impl Mapper {
    /// For input rows of `in_schema` with positions in columns `ra_in` and `dec_in`.
    fn new(
        in_schema: &Schema,
        ra_in: usize,
        dec_in: usize,
        opts: &IngestOptions,
        spill_dir: &Path,
    ) -> Self {
        let mut fields: Vec<Arc<Field>> = vec![Arc::new(hpx_field())];
        // An input that already carries `_healpix_29` (a HATS catalog's rows, re-ingested)
        // gets it recomputed rather than twice.
        let kept: Vec<usize> = (0..in_schema.fields().len())
            .filter(|&i| in_schema.field(i).name() != HPX_COLUMN)
            .collect();
        fields.extend(kept.iter().map(|&i| in_schema.fields()[i].clone()));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let spill_order = opts.max_order.min(3);
        Self {
            spill: Spill::new(
                spill_dir.to_path_buf(),
                spill_order,
                schema.clone(),
                opts.memory_budget_bytes / 4,
            ),
            schema,
            kept,
            ra_in,
            dec_in,
            spill_order,
            histogram: Histogram::new(opts.max_order),
            bad: BadRows::default(),
            rows: 0,
            skip_bad_rows: opts.read.skip_bad_rows,
            last_report: Instant::now(),
        }
    }

    /// Reports the rows mapped and `bytes` (read, in all) of the input: at most every
    /// 200 ms, unless `last` (the input's end).
    fn report(
        &mut self,
        progress: &(dyn Fn(&IngestProgress) + Sync),
        bytes: (u64, u64),
        last: bool,
    ) {
        if last || self.last_report.elapsed() > Duration::from_millis(200) {
            self.last_report = Instant::now();
            progress(&IngestProgress {
                stage: Stage::Reading,
                rows: self.rows,
                bytes,
                units: (0, 0),
            });
        }
    }

    /// Takes a batch of input rows, the first being row `first_row` (from 0) of `file`.
    fn push(&mut self, batch: &RecordBatch, file: &Path, first_row: u64) -> Result<()> {
        let (batch, hpx) = locate(
            batch,
            self.ra_in,
            self.dec_in,
            file,
            first_row,
            self.skip_bad_rows,
            &mut self.bad,
        )?;
        if batch.num_rows() == 0 {
            return Ok(());
        }
        for h in hpx.values() {
            self.histogram.add_hpx29(*h as u64);
        }
        let mut cols: Vec<ArrayRef> = vec![Arc::new(hpx)];
        cols.extend(self.kept.iter().map(|&i| batch.column(i).clone()));
        let full = RecordBatch::try_new(self.schema.clone(), cols)?;
        self.rows += full.num_rows() as u64;
        self.spill.push(full)
    }

    fn finish(self) -> Result<Mapped> {
        Ok(Mapped {
            schema: self.schema,
            ra_idx: self.ra_in + 1,
            dec_idx: self.dec_in + 1,
            histogram: self.histogram,
            buckets: self.spill.finish()?,
            spill_order: self.spill_order,
            rows: self.rows,
            bad: self.bad,
        })
    }
}

/// The position columns of `schema` (of `file`), which must hold numbers.
fn position_columns(schema: &Schema, opts: &IngestOptions, file: &Path) -> Result<(usize, usize)> {
    Ok((
        find_column(schema, opts.ra_column.as_deref(), RA_NAMES, "RA", file)?,
        find_column(schema, opts.dec_column.as_deref(), DEC_NAMES, "Dec", file)?,
    ))
}

/// The map stage over batches computed in this process.
fn map_batches(
    schema: &SchemaRef,
    batches: &mut dyn Iterator<Item = Result<RecordBatch>>,
    label: &Path,
    opts: &IngestOptions,
    spill_dir: &Path,
    progress: &(dyn Fn(&IngestProgress) + Sync),
) -> Result<Mapped> {
    let (ra_in, dec_in) = position_columns(schema, opts, label)?;
    for idx in [ra_in, dec_in] {
        if *schema.field(idx).data_type() == DataType::Utf8 {
            return Err(Error::Invalid(format!(
                "{}: position column '{}' holds text, not numbers",
                label.display(),
                schema.field(idx).name()
            )));
        }
    }
    let mut mapper = Mapper::new(schema, ra_in, dec_in, opts, spill_dir);
    let mut read = 0u64;
    for batch in batches {
        // The batch's columns under the schema given (its metadata), checked against it.
        let batch =
            RecordBatch::try_new(schema.clone(), batch?.columns().to_vec()).map_err(|e| {
                Error::Invalid(format!(
                    "{}: a batch's columns differ from the schema given: {e}",
                    label.display()
                ))
            })?;
        mapper.push(&batch, label, read)?;
        read += batch.num_rows() as u64;
        mapper.report(progress, (0, 0), false);
    }
    mapper.report(progress, (0, 0), true);
    mapper.finish()
}

fn map_inputs(
    inputs: &[PathBuf],
    opts: &IngestOptions,
    spill_dir: &Path,
    progress: &(dyn Fn(&IngestProgress) + Sync),
) -> Result<Mapped> {
    let bytes_total: u64 = inputs.iter().map(|p| file_size(p)).sum();
    let counter = ByteCounter::default();
    // Find the position columns from the first input; they must be numbers, so a text
    // column (a few junk values in the inference sample) is read as float64 and its junk
    // values become bad rows that name their line.
    let mut read = opts.read.clone();
    let probe = meridian_formats::open(&inputs[0], &read)?.schema();
    let (ra_in, dec_in) = position_columns(&probe, opts, &inputs[0])?;
    for idx in [ra_in, dec_in] {
        let f = probe.field(idx);
        if !(f.data_type().is_floating() || f.data_type().is_integer()) {
            let over = read.schema.get_or_insert_with(|| {
                meridian_formats::SchemaOverride::new(Vec::new(), &inputs[0])
            });
            over.force_type(f.name(), "float64");
        }
    }
    let in_schema = meridian_formats::open(&inputs[0], &read)?.schema();
    let mut mapper = Mapper::new(&in_schema, ra_in, dec_in, opts, spill_dir);
    let (tx, rx) = crossbeam_channel::bounded::<Result<(usize, RecordBatch)>>(4);
    // Input files are parsed by up to one reader thread per core, each taking whole files
    // in turn, so a file's batches arrive in order; this thread locates and spills.
    let cores = if opts.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        opts.threads
    };
    let next_file = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..cores.min(inputs.len()).max(1) {
        let (tx, read, inputs, counter, expected, next_file) = (
            tx.clone(),
            read.clone(),
            inputs.to_vec(),
            counter.clone(),
            in_schema.clone(),
            next_file.clone(),
        );
        let handle = std::thread::Builder::new()
            .name("ingest-reader".into())
            .spawn(move || read_files(&inputs, &read, &counter, &expected, &next_file, &tx))
            .map_err(|e| Error::Invalid(format!("cannot start reader thread: {e}")))?;
        readers.push(handle);
    }
    drop(tx);
    let mut file_rows = vec![0u64; inputs.len()];
    let result: Result<()> = (|| {
        for msg in rx.iter() {
            let (file_idx, batch) = msg?;
            let first_row = file_rows[file_idx];
            file_rows[file_idx] += batch.num_rows() as u64;
            mapper.push(&batch, &inputs[file_idx], first_row)?;
            mapper.report(progress, (counter.get(), bytes_total), false);
        }
        Ok(())
    })();
    drop(rx);
    for r in readers {
        let reader_bad = r
            .join()
            .map_err(|_| Error::Invalid("a reader thread panicked".into()))?;
        mapper.bad.merge(&reader_bad);
    }
    result?;
    mapper.report(progress, (bytes_total, bytes_total), true);
    mapper.finish()
}

/// Reads whole input files in turn (the next index from `next_file`), sending their batches.
fn read_files(
    inputs: &[PathBuf],
    read: &ReadOptions,
    counter: &ByteCounter,
    expected: &SchemaRef,
    next_file: &AtomicUsize,
    tx: &crossbeam_channel::Sender<Result<(usize, RecordBatch)>>,
) -> BadRows {
    let mut bad = BadRows::default();
    loop {
        let i = next_file.fetch_add(1, Ordering::Relaxed);
        let Some(path) = inputs.get(i) else {
            return bad;
        };
        let mut stream = match meridian_formats::open_counted(path, read, counter.clone()) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e.into()));
                return bad;
            }
        };
        let s = stream.schema();
        let same = s.fields().len() == expected.fields().len()
            && s.fields()
                .iter()
                .zip(expected.fields())
                .all(|(a, b)| a.name() == b.name() && a.data_type() == b.data_type());
        if !same {
            let _ = tx.send(Err(Error::Invalid(format!(
                "{}: columns differ from those of {} (every input must have the same columns and types)",
                path.display(),
                inputs[0].display()
            ))));
            return bad;
        }
        for batch in stream.by_ref() {
            let failed = batch.is_err();
            if tx.send(batch.map(|b| (i, b)).map_err(Error::from)).is_err() || failed {
                return bad;
            }
        }
        bad.merge(&stream.bad_rows());
    }
}

/// Checks positions, drops (or fails on) bad ones, and computes `_healpix_29`.
fn locate(
    batch: &RecordBatch,
    ra_idx: usize,
    dec_idx: usize,
    file: &Path,
    first_row: u64,
    skip: bool,
    bad: &mut BadRows,
) -> Result<(RecordBatch, Int64Array)> {
    let ra = arrow::compute::cast(batch.column(ra_idx), &DataType::Float64)?;
    let dec = arrow::compute::cast(batch.column(dec_idx), &DataType::Float64)?;
    let (ra, dec) = (
        ra.as_primitive::<Float64Type>(),
        dec.as_primitive::<Float64Type>(),
    );
    let schema = batch.schema();
    let mut keep = Vec::with_capacity(batch.num_rows());
    let mut hpx = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let problem = if ra.is_null(i) {
            Some((ra_idx, "position is empty (null)".to_string()))
        } else if dec.is_null(i) {
            Some((dec_idx, "position is empty (null)".to_string()))
        } else if !ra.value(i).is_finite() {
            Some((ra_idx, format!("RA {} is not a finite number", ra.value(i))))
        } else if !dec.value(i).is_finite() || !(-90.0..=90.0).contains(&dec.value(i)) {
            Some((
                dec_idx,
                format!("Dec {} is outside [-90, 90] degrees", dec.value(i)),
            ))
        } else {
            None
        };
        match problem {
            None => {
                keep.push(true);
                hpx.push(healpix::hpx29_deg(ra.value(i).rem_euclid(360.0), dec.value(i)) as i64);
            }
            Some((col, message)) => {
                let err = Error::Position {
                    file: file.to_path_buf(),
                    row: first_row + i as u64 + 1,
                    column: schema.field(col).name().clone(),
                    message,
                };
                if !skip {
                    return Err(err);
                }
                bad.record(err.to_string());
                keep.push(false);
            }
        }
    }
    let hpx = Int64Array::from(hpx);
    if hpx.len() == batch.num_rows() {
        return Ok((batch.clone(), hpx));
    }
    let filtered = arrow::compute::filter_record_batch(batch, &BooleanArray::from(keep))?;
    Ok((filtered, hpx))
}

/// Spill files of rows bucketed by a HEALPix cell, each an Arrow IPC stream.
pub(crate) struct Spill {
    dir: PathBuf,
    order: u8,
    schema: SchemaRef,
    budget: u64,
    pending: Vec<RecordBatch>,
    pending_bytes: u64,
    writers: BTreeMap<u64, StreamWriter<BufWriter<File>>>,
}

impl Spill {
    pub(crate) fn new(dir: PathBuf, order: u8, schema: SchemaRef, budget: u64) -> Self {
        Self {
            dir,
            order,
            schema,
            budget: budget.max(8 << 20),
            pending: Vec::new(),
            pending_bytes: 0,
            writers: BTreeMap::new(),
        }
    }

    fn bucket_path(&self, bucket: u64) -> PathBuf {
        self.dir.join(format!("o{}_{bucket}.arrows", self.order))
    }

    /// Buffers a batch; when the buffer is full, sorts it and appends each bucket's rows.
    pub(crate) fn push(&mut self, batch: RecordBatch) -> Result<()> {
        self.pending_bytes += batch.get_array_memory_size() as u64;
        self.pending.push(batch);
        if self.pending_bytes >= self.budget {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let all = arrow::compute::concat_batches(&self.schema, &self.pending)?;
        self.pending.clear();
        self.pending_bytes = 0;
        let sorted = sort_by_hpx(&all)?;
        let hpx = sorted.column(0).as_primitive::<Int64Type>();
        let values = hpx.values();
        let shift = 2 * (29 - self.order as u32);
        let mut start = 0;
        while start < values.len() {
            let bucket = values[start] as u64 >> shift;
            let end = start + values[start..].partition_point(|v| (*v as u64 >> shift) == bucket);
            let slice = sorted.slice(start, end - start);
            if !self.writers.contains_key(&bucket) {
                let path = self.bucket_path(bucket);
                let f = File::create(&path).map_err(|e| Error::io(&path, e))?;
                let w =
                    StreamWriter::try_new(BufWriter::with_capacity(256 << 10, f), &self.schema)?;
                self.writers.insert(bucket, w);
            }
            self.writers
                .get_mut(&bucket)
                .expect("writer inserted above")
                .write(&slice)?;
            start = end;
        }
        Ok(())
    }

    /// Closes every bucket file; returns them by bucket.
    pub(crate) fn finish(mut self) -> Result<BTreeMap<u64, PathBuf>> {
        self.flush()?;
        let mut out = BTreeMap::new();
        for (bucket, mut w) in std::mem::take(&mut self.writers) {
            w.finish()?;
            out.insert(bucket, self.bucket_path(bucket));
        }
        Ok(out)
    }
}

fn sort_by_hpx(batch: &RecordBatch) -> Result<RecordBatch> {
    let idx = arrow::compute::sort_to_indices(batch.column(0), None, None)?;
    Ok(arrow::compute::take_record_batch(batch, &idx)?)
}

/// A spill bucket: its order, its cell and its file.
type BucketFile = (u8, u64, PathBuf);

/// Groups spill buckets so that a partition coarser than the spill order (spanning several
/// buckets) is written by one worker from consecutive buckets.
fn work_units(
    buckets: &BTreeMap<u64, PathBuf>,
    order: u8,
    pixels: &[Pixel],
) -> Vec<Vec<BucketFile>> {
    let mut units: Vec<(Option<Pixel>, Vec<BucketFile>)> = Vec::new();
    for (bucket, path) in buckets {
        let start = healpix::hpx29_range(order, *bucket).start;
        let i = pixels.partition_point(|p| p.hpx29_range().end <= start);
        let coarse = pixels
            .get(i)
            .filter(|p| p.order < order && p.hpx29_range().contains(&start))
            .copied();
        match units.last_mut() {
            Some((Some(k), list)) if coarse == Some(*k) => {
                list.push((order, *bucket, path.clone()))
            }
            _ => units.push((coarse, vec![(order, *bucket, path.clone())])),
        }
    }
    units.into_iter().map(|u| u.1).collect()
}

struct ReduceCtx<'a> {
    dir: &'a Path,
    schema: &'a SchemaRef,
    props: &'a Arc<parquet::file::properties::WriterProperties>,
    pixels: &'a [Pixel],
    budget: u64,
    spill_dir: &'a Path,
    margin: Option<&'a crate::margin::MarginBuilder>,
}

fn reduce_unit(ctx: &ReduceCtx, unit: &[BucketFile]) -> Result<Vec<Written>> {
    let mut current: Option<PartitionWriter> = None;
    let mut out = Vec::new();
    for (order, bucket, path) in unit {
        reduce_bucket(ctx, *order, *bucket, path, &mut current, &mut out)?;
    }
    if let Some(w) = current.take() {
        out.push(w.close()?);
    }
    Ok(out)
}

pub(crate) fn read_ipc(path: &Path) -> Result<Vec<RecordBatch>> {
    let f = File::open(path).map_err(|e| Error::io(path, e))?;
    let r = StreamReader::try_new(std::io::BufReader::with_capacity(1 << 20, f), None)?;
    Ok(r.collect::<std::result::Result<Vec<_>, _>>()?)
}

fn reduce_bucket(
    ctx: &ReduceCtx,
    order: u8,
    bucket: u64,
    path: &Path,
    current: &mut Option<PartitionWriter>,
    out: &mut Vec<Written>,
) -> Result<()> {
    // Arrow in memory takes about as much as the IPC file, plus the sorted copy.
    if 2 * file_size(path) > ctx.budget && order + 2 <= 29 {
        let sub_dir = ctx.spill_dir.join(format!("split_o{order}_{bucket}"));
        std::fs::create_dir_all(&sub_dir).map_err(|e| Error::io(&sub_dir, e))?;
        let mut sub = Spill::new(
            sub_dir.clone(),
            order + 2,
            ctx.schema.clone(),
            ctx.budget / 4,
        );
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        for b in StreamReader::try_new(std::io::BufReader::new(f), None)? {
            sub.push(b?)?;
        }
        let parts = sub.finish()?;
        std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
        for (b, p) in parts {
            reduce_bucket(ctx, order + 2, b, &p, current, out)?;
        }
        let _ = std::fs::remove_dir_all(&sub_dir);
        return Ok(());
    }
    let batches = read_ipc(path)?;
    let _ = std::fs::remove_file(path);
    let all = arrow::compute::concat_batches(ctx.schema, &batches)?;
    drop(batches);
    let sorted = sort_by_hpx(&all)?;
    drop(all);
    let hpx = sorted
        .column(0)
        .as_primitive::<Int64Type>()
        .values()
        .clone();
    let mut start = 0usize;
    while start < hpx.len() {
        let h = hpx[start] as u64;
        let i = ctx.pixels.partition_point(|p| p.hpx29_range().end <= h);
        let pixel = *ctx
            .pixels
            .get(i)
            .filter(|p| p.hpx29_range().contains(&h))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "internal: row with _healpix_29 {h} falls in no partition"
                ))
            })?;
        let end_h = pixel.hpx29_range().end;
        let end = start + hpx[start..].partition_point(|v| (*v as u64) < end_h);
        if current.as_ref().is_some_and(|w| w.pixel != pixel) {
            out.push(current.take().expect("checked above").close()?);
        }
        if current.is_none() {
            *current = Some(PartitionWriter::create(
                ctx.dir, pixel, ctx.schema, ctx.props,
            )?);
        }
        let slice = sorted.slice(start, end - start);
        if let Some(m) = ctx.margin {
            m.collect(i, &slice)?;
        }
        current.as_mut().expect("set above").write(&slice)?;
        start = end;
    }
    Ok(())
}
