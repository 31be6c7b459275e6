use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

use crate::limits::{InputLimits, batch_rows_for};
use crate::{BatchSource, ByteCounter, Error, ReadOptions, Result, apply_override, cast_batch};

/// Parquet reader: row groups are streamed batch by batch; column metadata comes from the
/// embedded Arrow schema.
pub(crate) struct ParquetReader {
    path: PathBuf,
    inner: ParquetRecordBatchReader,
    schema: SchemaRef,
    counter: ByteCounter,
    bytes_per_row: f64,
}

impl ParquetReader {
    pub(crate) fn open(path: &Path, options: &ReadOptions, counter: ByteCounter) -> Result<Self> {
        // The footer's Arrow schema is decoded by arrow-ipc, which panics on some malformed
        // ones (a union's type ids that do not match its children).
        crate::contain::contain(|| Self::open_file(path, options, counter)).unwrap_or_else(|p| {
            Err(Error::format(
                path,
                format!("parquet: corrupt footer or schema: {p}"),
            ))
        })
    }

    fn open_file(path: &Path, options: &ReadOptions, counter: ByteCounter) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let perr = |source| Error::Parquet {
            file: path.to_path_buf(),
            source,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(perr)?;
        let expanded = check_sizes(builder.metadata(), size, &options.limits, path)?;
        let rows = builder.metadata().file_metadata().num_rows().max(1) as f64;
        let schema = apply_override(builder.schema().clone(), options.schema.as_ref(), path)?;
        let batch_rows = batch_rows_for(
            options.batch_rows,
            (expanded as f64 / rows).ceil() as u64,
            builder.parquet_schema().num_columns(),
        );
        let inner = builder.with_batch_size(batch_rows).build().map_err(perr)?;
        Ok(Self {
            path: path.to_path_buf(),
            inner,
            schema,
            counter,
            bytes_per_row: size as f64 / rows,
        })
    }
}

/// Checks the sizes the footer declares against the file and the limits before any page
/// is read: the columns, each column chunk within the file, the data after decompression
/// and its expansion ratio. Returns the bytes of all column chunks after decompression.
fn check_sizes(
    meta: &parquet::file::metadata::ParquetMetaData,
    file_len: u64,
    limits: &InputLimits,
    path: &Path,
) -> Result<u64> {
    let columns = meta.file_metadata().schema_descr().num_columns();
    limits.check_column_count(columns, path)?;
    let corrupt = |what: String| Error::format(path, format!("parquet: corrupt footer: {what}"));
    let (mut packed, mut expanded) = (0u64, 0u64);
    for (g, group) in meta.row_groups().iter().enumerate() {
        if group.num_rows() < 0 {
            return Err(corrupt(format!("row group {g} has a negative row count")));
        }
        for c in group.columns() {
            let (start, len) = c.byte_range();
            if start.checked_add(len).is_none_or(|end| end > file_len) {
                return Err(corrupt(format!(
                    "column '{}' of row group {g} lies outside the file",
                    c.column_path()
                )));
            }
            let raw = u64::try_from(c.uncompressed_size()).map_err(|_| {
                corrupt(format!(
                    "column '{}' of row group {g} has a negative size",
                    c.column_path()
                ))
            })?;
            packed = packed.saturating_add(len);
            expanded = expanded.saturating_add(raw);
        }
    }
    if let Some(max) = limits.max_data_bytes
        && expanded > max
    {
        return Err(Error::limit(
            path,
            format!(
                "the table data is {expanded} bytes after decompression, over the limit of {max} bytes"
            ),
        ));
    }
    if expanded > InputLimits::RATIO_FLOOR
        && expanded / packed.max(1) > limits.max_compression_ratio
    {
        return Err(Error::limit(
            path,
            format!(
                "the column data expands more than {} times, the limit of the expansion ratio \
                 (a likely decompression bomb: {expanded} bytes from {packed})",
                limits.max_compression_ratio
            ),
        ));
    }
    Ok(expanded)
}

impl BatchSource for ParquetReader {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let inner = &mut self.inner;
        let next = crate::contain::contain(|| inner.next())
            .map_err(|p| Error::format(&self.path, format!("parquet: corrupt data: {p}")))?;
        let Some(batch) = next else {
            return Ok(None);
        };
        let b = batch.map_err(|e| Error::format(&self.path, format!("parquet: {e}")))?;
        self.counter
            .add((b.num_rows() as f64 * self.bytes_per_row) as u64);
        cast_batch(b, &self.schema, &self.path).map(Some)
    }

    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
