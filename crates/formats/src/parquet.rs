use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

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
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let perr = |source| Error::Parquet {
            file: path.to_path_buf(),
            source,
        };
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(perr)?;
        let rows = builder.metadata().file_metadata().num_rows().max(1) as f64;
        let schema = apply_override(builder.schema().clone(), options.schema.as_ref(), path)?;
        let inner = builder
            .with_batch_size(options.batch_rows.max(1))
            .build()
            .map_err(perr)?;
        Ok(Self {
            path: path.to_path_buf(),
            inner,
            schema,
            counter,
            bytes_per_row: size as f64 / rows,
        })
    }
}

impl BatchSource for ParquetReader {
    fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let Some(batch) = self.inner.next() else {
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
