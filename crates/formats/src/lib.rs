//! Table formats for Meridian: streaming readers that turn CSV/TSV, FITS binary tables,
//! VOTables and Parquet files (plain or gzip-compressed) into Arrow record batches.
//!
//! Every reader keeps column metadata (unit, UCD, utype, description) in the Arrow field
//! metadata under the keys of [`meta`], reports errors with the file, the line or row, and
//! the column, and can skip bad rows while counting them (see [`ReadOptions`]).

pub mod contain;
mod csv;
mod detect;
mod error;
mod fits;
mod limits;
pub mod meta;
mod parquet;
mod progress;
mod schema_file;
mod votable;
pub mod write;

use std::path::Path;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

pub use detect::{Compression, Format, content_head, detect};
pub use error::{Error, Result};
pub use fits::{HduHeader, Header as FitsHeader, read_headers as read_fits_headers};
pub use limits::InputLimits;
pub use meta::ColumnMeta;
pub use progress::ByteCounter;
pub use schema_file::{ColumnSpec, SchemaOverride, parse_type, type_name};
pub use votable::xml_reference;

/// Options common to every reader.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// Rows per record batch.
    pub batch_rows: usize,
    /// Type and metadata overrides from a schema file.
    pub schema: Option<SchemaOverride>,
    /// Skip rows that cannot be read (recording them in [`BadRows`]) instead of failing.
    pub skip_bad_rows: bool,
    /// Rows sampled to infer column types of text formats.
    pub infer_rows: usize,
    /// What reading one file may cost (sizes after decompression, record length, columns).
    pub limits: InputLimits,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self {
            batch_rows: 65_536,
            schema: None,
            skip_bad_rows: false,
            infer_rows: 10_000,
            limits: InputLimits::default(),
        }
    }
}

/// Rows skipped by a reader in `skip_bad_rows` mode: how many, and the first few reasons.
#[derive(Debug, Clone, Default)]
pub struct BadRows {
    /// Number of rows skipped.
    pub count: u64,
    /// The first [`BadRows::KEPT`] errors, each naming file, line or row, and column.
    pub examples: Vec<String>,
}

impl BadRows {
    /// How many example messages are kept.
    pub const KEPT: usize = 20;

    /// Records one skipped row.
    pub fn record(&mut self, message: String) {
        self.count += 1;
        if self.examples.len() < Self::KEPT {
            self.examples.push(message);
        }
    }

    /// Adds another reader's skipped rows.
    pub fn merge(&mut self, other: &BadRows) {
        self.count += other.count;
        for e in &other.examples {
            if self.examples.len() < Self::KEPT {
                self.examples.push(e.clone());
            }
        }
    }
}

/// A streaming table reader.
pub trait TableReader: Iterator<Item = Result<RecordBatch>> + Send {
    /// The Arrow schema of every batch, with column metadata.
    fn schema(&self) -> SchemaRef;
    /// Rows skipped so far (only in `skip_bad_rows` mode).
    fn bad_rows(&self) -> BadRows;
}

/// What each format reader implements; [`Batches`] turns it into a [`TableReader`].
pub(crate) trait BatchSource: Send {
    /// The next batch, `None` at the end.
    fn next_batch(&mut self) -> Result<Option<RecordBatch>>;
    /// The schema of every batch.
    fn schema(&self) -> SchemaRef;
    /// Rows skipped so far.
    fn bad_rows(&self) -> BadRows {
        BadRows::default()
    }
}

/// A [`BatchSource`] as an iterator that stops for good after the end or an error; an
/// error caused by a limit of the input's [`limits::Meter`] is reported as that limit.
pub(crate) struct Batches<S> {
    source: S,
    done: bool,
    meter: limits::Meter,
    path: std::path::PathBuf,
}

impl<S: BatchSource> Batches<S> {
    fn boxed(source: S, meter: limits::Meter, path: &Path) -> Box<dyn TableReader>
    where
        S: 'static,
    {
        Box::new(Self {
            source,
            done: false,
            meter,
            path: path.to_path_buf(),
        })
    }
}

impl<S: BatchSource> Iterator for Batches<S> {
    type Item = Result<RecordBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.source.next_batch() {
            Ok(Some(b)) => Some(Ok(b)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(self.meter.explain(e, &self.path)))
            }
        }
    }
}

impl<S: BatchSource> TableReader for Batches<S> {
    fn schema(&self) -> SchemaRef {
        self.source.schema()
    }

    fn bad_rows(&self) -> BadRows {
        self.source.bad_rows()
    }
}

/// Opens a table file, detecting its format from its name and checking its content.
pub fn open(path: &Path, options: &ReadOptions) -> Result<Box<dyn TableReader>> {
    open_counted(path, options, ByteCounter::default())
}

/// Like [`open`], counting the bytes read from the file (compressed bytes for gzip) in
/// `counter`, for progress reporting.
pub fn open_counted(
    path: &Path,
    options: &ReadOptions,
    counter: ByteCounter,
) -> Result<Box<dyn TableReader>> {
    let (format, compression) = detect(path)?;
    let meter = limits::Meter::new(&options.limits);
    let m = meter.clone();
    let opened = match format {
        Format::Csv | Format::Tsv => {
            csv::CsvReader::open(path, format, compression, options, counter, m)
                .map(|r| Batches::boxed(r, meter.clone(), path))
        }
        Format::Fits => fits::FitsReader::open(path, compression, options, counter, m)
            .map(|r| Batches::boxed(r, meter.clone(), path)),
        Format::VoTable => votable::VoTableReader::open(path, compression, options, counter, m)
            .map(|r| Batches::boxed(r, meter.clone(), path)),
        Format::Parquet => parquet::ParquetReader::open(path, options, counter)
            .map(|r| Batches::boxed(r, meter.clone(), path)),
    };
    opened.map_err(|e| meter.explain(e, path))
}

/// Applies a schema override's metadata (unit, UCD, description) to a schema and returns the
/// schema with casts to apply, used by the binary formats whose types are fixed by the file.
pub(crate) fn apply_override(
    schema: SchemaRef,
    over: Option<&SchemaOverride>,
    file: &Path,
) -> Result<SchemaRef> {
    let Some(over) = over else { return Ok(schema) };
    over.check_columns(schema.fields().iter().map(|f| f.name().as_str()), file)?;
    let fields: Vec<_> = schema
        .fields()
        .iter()
        .map(|f| match over.column(f.name()) {
            Some(spec) => Arc::new(spec.apply(f.as_ref())),
            None => f.clone(),
        })
        .collect();
    Ok(Arc::new(arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

/// Casts a batch to `target` (same column names), naming the column that fails.
pub(crate) fn cast_batch(
    batch: RecordBatch,
    target: &SchemaRef,
    file: &Path,
) -> Result<RecordBatch> {
    if batch.schema().fields() == target.fields() {
        return Ok(batch);
    }
    let mut cols = Vec::with_capacity(batch.num_columns());
    for (col, field) in batch.columns().iter().zip(target.fields()) {
        if col.data_type() == field.data_type() {
            cols.push(col.clone());
        } else {
            let opts = arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            };
            let cast =
                arrow::compute::cast_with_options(col, field.data_type(), &opts).map_err(|e| {
                    Error::Value {
                        file: file.to_path_buf(),
                        location: "a batch".into(),
                        column: field.name().clone(),
                        message: format!("cannot convert to {}: {e}", field.data_type()),
                    }
                })?;
            cols.push(cast);
        }
    }
    Ok(RecordBatch::try_new(target.clone(), cols)?)
}
