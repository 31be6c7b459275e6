//! Streaming table writers: batches go out as they come, in constant memory. Files are
//! written under a temporary name and renamed when complete, so a failed query leaves no
//! half-written result.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

use crate::{Error, Result};

mod columns;
mod fits;
mod votable;

pub use columns::{VoField, vo_fields};
pub use votable::{Serialization, escape as xml_escape};

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Comma-separated values with a header line.
    Csv,
    /// Tab-separated values with a header line.
    Tsv,
    /// Comma-separated values without a header line.
    CsvNoHeader,
    /// Tab-separated values without a header line.
    TsvNoHeader,
    /// JSON lines (one object per row).
    Json,
    /// Apache Parquet.
    Parquet,
    /// VOTable 1.4 in the given serialization.
    VoTable(Serialization),
    /// VOTable 1.5 in the given serialization.
    VoTable15(Serialization),
    /// FITS binary table.
    Fits,
    /// Apache Arrow IPC stream (`application/vnd.apache.arrow.stream`): the batches as they
    /// are, for programs and the web portal (apache-arrow, pyarrow).
    ArrowStream,
}

enum Inner {
    Csv(Box<arrow::csv::Writer<Box<dyn Write + Send>>>),
    Json(arrow::json::LineDelimitedWriter<Box<dyn Write + Send>>),
    Parquet(Box<parquet::arrow::ArrowWriter<Box<dyn Write + Send>>>),
    VoTable(votable::VotableWriter),
    Fits(Box<fits::FitsWriter>),
    Arrow(Box<arrow::ipc::writer::StreamWriter<Box<dyn Write + Send>>>),
    /// After `finish`.
    Closed,
}

/// A writer of one result table.
pub struct ResultWriter {
    inner: Inner,
    rows: u64,
    /// Rows the result may hold (MAXREC); rows past it are dropped.
    maxrec: Option<u64>,
    /// A row was dropped by `maxrec`.
    overflow: bool,
    /// (temporary, final) paths when writing a file.
    rename: Option<(PathBuf, PathBuf)>,
    /// RESOURCE elements a VOTable ends with.
    resources: String,
}

impl ResultWriter {
    /// Writes to `out` (standard output, a socket...).
    pub fn new(
        format: OutputFormat,
        out: Box<dyn Write + Send>,
        schema: &SchemaRef,
    ) -> Result<Self> {
        let inner = match format {
            OutputFormat::Csv
            | OutputFormat::Tsv
            | OutputFormat::CsvNoHeader
            | OutputFormat::TsvNoHeader => {
                let tab = matches!(format, OutputFormat::Tsv | OutputFormat::TsvNoHeader);
                let header = matches!(format, OutputFormat::Csv | OutputFormat::Tsv);
                let w = arrow::csv::WriterBuilder::new()
                    .with_header(header)
                    .with_delimiter(if tab { b'\t' } else { b',' });
                Inner::Csv(Box::new(w.build(out)))
            }
            OutputFormat::Json => Inner::Json(arrow::json::LineDelimitedWriter::new(out)),
            OutputFormat::Parquet => Inner::Parquet(Box::new(
                parquet::arrow::ArrowWriter::try_new(
                    out,
                    schema.clone(),
                    Some(parquet_properties(schema)),
                )
                .map_err(|e| Error::Parquet {
                    file: PathBuf::from("<output>"),
                    source: e,
                })?,
            )),
            OutputFormat::VoTable(s) => {
                Inner::VoTable(votable::VotableWriter::new(out, schema, s, "1.4")?)
            }
            OutputFormat::VoTable15(s) => {
                Inner::VoTable(votable::VotableWriter::new(out, schema, s, "1.5")?)
            }
            OutputFormat::Fits => Inner::Fits(Box::new(fits::FitsWriter::new(out, schema)?)),
            OutputFormat::ArrowStream => Inner::Arrow(Box::new(
                arrow::ipc::writer::StreamWriter::try_new(out, schema)?,
            )),
        };
        let mut w = Self {
            inner,
            rows: 0,
            maxrec: None,
            overflow: false,
            rename: None,
            resources: String::new(),
        };
        // A CSV or TSV writer writes its header with its first batch: an empty one now, so
        // that a result without rows still has its header line.
        if matches!(w.inner, Inner::Csv(_)) {
            w.write(&RecordBatch::new_empty(schema.clone()))?;
        }
        Ok(w)
    }

    /// Writes to file `path` (through a temporary file renamed by [`ResultWriter::finish`]).
    pub fn create(format: OutputFormat, path: &Path, schema: &SchemaRef) -> Result<Self> {
        let tmp = path.with_file_name(format!(
            ".{}.partial",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("result")
        ));
        let f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = Self::new(
            format,
            Box::new(BufWriter::with_capacity(1 << 20, f)),
            schema,
        )?;
        w.rename = Some((tmp, path.to_path_buf()));
        Ok(w)
    }

    /// Appends a batch; under a row limit, only the rows that still fit.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let cut;
        let batch = match self.maxrec {
            Some(m) if self.rows + batch.num_rows() as u64 > m => {
                self.overflow = true;
                cut = batch.slice(0, m.saturating_sub(self.rows) as usize);
                &cut
            }
            _ => batch,
        };
        self.rows += batch.num_rows() as u64;
        match &mut self.inner {
            Inner::Csv(w) => {
                // Arrays (DALI geometry values) as space-separated numbers, bytes as
                // hexadecimal.
                if batch.columns().iter().any(|c| {
                    matches!(
                        c.data_type(),
                        arrow::datatypes::DataType::FixedSizeList(..)
                            | arrow::datatypes::DataType::List(_)
                            | arrow::datatypes::DataType::Binary
                            | arrow::datatypes::DataType::LargeBinary
                            | arrow::datatypes::DataType::BinaryView
                    )
                }) {
                    let cols: Vec<_> = batch
                        .columns()
                        .iter()
                        .map(|c| match c.data_type() {
                            arrow::datatypes::DataType::FixedSizeList(..)
                            | arrow::datatypes::DataType::List(_) => columns::doubles_as_text(
                                &arrow::compute::cast(c, &columns::list_of_doubles(c.data_type()))?,
                            ),
                            arrow::datatypes::DataType::Binary
                            | arrow::datatypes::DataType::LargeBinary
                            | arrow::datatypes::DataType::BinaryView => columns::bytes_as_hex(c),
                            _ => Ok(c.clone()),
                        })
                        .collect::<Result<_>>()?;
                    let fields: Vec<_> = batch
                        .schema()
                        .fields()
                        .iter()
                        .zip(&cols)
                        .map(|(f, c)| {
                            arrow::datatypes::Field::new(f.name(), c.data_type().clone(), true)
                        })
                        .collect();
                    let b = RecordBatch::try_new(
                        std::sync::Arc::new(arrow::datatypes::Schema::new(fields)),
                        cols,
                    )?;
                    w.write(&b)?
                } else {
                    w.write(batch)?
                }
            }
            Inner::Json(w) => w.write(batch)?,
            Inner::Parquet(w) => w.write(batch).map_err(|e| Error::Parquet {
                file: PathBuf::from("<output>"),
                source: e,
            })?,
            Inner::VoTable(w) => w.write(batch)?,
            Inner::Fits(w) => w.write(batch)?,
            Inner::Arrow(w) => w.write(batch)?,
            Inner::Closed => unreachable!("write after finish"),
        }
        Ok(())
    }

    /// Limits the result to `maxrec` rows (DALI's MAXREC): later rows are dropped, and if
    /// any is, VOTable output ends with the OVERFLOW status.
    pub fn set_maxrec(&mut self, maxrec: u64) {
        self.maxrec = Some(maxrec);
    }

    /// Whole RESOURCE elements (DataLink service descriptors) that a VOTable result ends
    /// with, after its results; other formats have no place for them.
    pub fn set_votable_resources(&mut self, xml: String) {
        self.resources = xml;
    }

    /// Whether the row limit dropped rows.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Flushes, closes, and for files renames the temporary file into place.
    pub fn finish(mut self) -> Result<u64> {
        let inner = std::mem::replace(&mut self.inner, Inner::Closed);
        match inner {
            Inner::Csv(w) => {
                let mut out = w.into_inner();
                out.flush()
                    .map_err(|e| Error::io(Path::new("<output>"), e))?;
            }
            Inner::Json(mut w) => w.finish()?,
            Inner::Parquet(w) => {
                w.close().map_err(|e| Error::Parquet {
                    file: PathBuf::from("<output>"),
                    source: e,
                })?;
            }
            Inner::VoTable(w) => w.finish(self.overflow, &self.resources)?,
            Inner::Fits(w) => w.finish()?,
            Inner::Arrow(mut w) => {
                w.finish()?;
                w.get_mut()
                    .flush()
                    .map_err(|e| Error::io(Path::new("<output>"), e))?;
            }
            Inner::Closed => {}
        }
        if let Some((tmp, path)) = self.rename.take() {
            std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        }
        Ok(self.rows)
    }
}

impl Drop for ResultWriter {
    /// A result abandoned before [`ResultWriter::finish`] (an error, a cancelled query)
    /// leaves no file behind.
    fn drop(&mut self) {
        if let Some((tmp, _)) = self.rename.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// VO-Parquet writer settings. The column metadata travels as a VOTable in the file's
/// key-value metadata, where VO-aware readers (astropy's parquet.votable, TOPCAT) find
/// units, UCDs and descriptions. A row group is held in memory until it is written, so
/// groups are kept to 128 Ki rows (the default, 1 Mi rows, would hold about 100 MB of a
/// wide table per stream).
fn parquet_properties(schema: &SchemaRef) -> parquet::file::properties::WriterProperties {
    use parquet::file::metadata::KeyValue;
    let b = parquet::file::properties::WriterProperties::builder()
        .set_key_value_metadata(Some(vec![
            KeyValue::new("IVOA.VOTable-Parquet.version".into(), "1.0".to_string()),
            KeyValue::new(
                "IVOA.VOTable-Parquet.content".into(),
                votable::vo_parquet_content(schema),
            ),
        ]))
        .set_max_row_group_row_count(Some(128 * 1024));
    text_dictionaries(b, schema).build()
}

/// Dictionary encoding for the text columns of `schema` only: numeric measurements are
/// nearly all distinct, so a dictionary would be built and then abandoned (wasted time, and
/// for small row groups a larger file).
pub fn text_dictionaries(
    builder: parquet::file::properties::WriterPropertiesBuilder,
    schema: &SchemaRef,
) -> parquet::file::properties::WriterPropertiesBuilder {
    schema
        .fields()
        .iter()
        .filter(|f| {
            matches!(
                f.data_type(),
                arrow::datatypes::DataType::Utf8
                    | arrow::datatypes::DataType::LargeUtf8
                    | arrow::datatypes::DataType::Utf8View
            )
        })
        .fold(builder.set_dictionary_enabled(false), |b, f| {
            b.set_column_dictionary_enabled(
                parquet::schema::types::ColumnPath::from(f.name().as_str()),
                true,
            )
        })
}
