//! Writing partition files and the HATS summary files.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::metadata::{
    FileMetaData, ParquetMetaData, ParquetMetaDataBuilder, ParquetMetaDataWriter, SortingColumn,
};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::layout::Pixel;
use crate::{Error, Result};

/// Rows of a partition's row group, unless an ingest asks otherwise.
pub(crate) const ROW_GROUP_ROWS: usize = 100_000;
/// Rows of a partition's page (up to twice as many), unless an ingest asks otherwise.
pub(crate) const PAGE_ROWS: usize = 4096;

/// Parquet writer settings for partitions: row groups small enough that a cone reads only
/// the ones it needs, page statistics on the sort key (with the offset index, a cone decodes
/// only the `page_rows` pages it overlaps, in every column) and on the position columns
/// `positions` (RA, Dec: a cross-match with a few positions reads only the pages within
/// the boxes around them, see the engine's cross-match), plain pages for numbers and snappy
/// for the rest (text, booleans, binary), and dictionary encoding only for text columns
/// (numeric measurements are nearly all distinct, so a dictionary is built and then
/// abandoned: wasted time).
///
/// Snappy finds nothing to gain in measured values' bits (a compressed-to-plain ratio of
/// 1.00 for positions, magnitudes and `_healpix_29` in the synthetic survey) and costs a
/// quarter of a selective scan's time in decompression, so those columns are written
/// plain: scans of them are 6-10% faster (bench/README, the selective filter). Integer
/// identifiers shrink a little under snappy (to 65% in the synthetic survey, about 5% of a
/// partition), but a selective filter fetches them from nearly every page, and their
/// decompression was then a quarter of its time: they are written plain too.
pub(crate) fn writer_properties(
    row_group_rows: usize,
    page_rows: usize,
    hpx_column: &str,
    positions: [&str; 2],
    schema: &SchemaRef,
) -> Arc<WriterProperties> {
    let mut builder =
        meridian_formats::write::text_dictionaries(WriterProperties::builder(), schema);
    for c in positions {
        builder =
            builder.set_column_statistics_enabled(ColumnPath::from(c), EnabledStatistics::Page);
    }
    builder = builder.set_compression(Compression::SNAPPY);
    for f in schema.fields() {
        if f.data_type().is_floating() || f.data_type().is_integer() || f.name() == hpx_column {
            builder = builder.set_column_compression(
                ColumnPath::from(f.name().as_str()),
                Compression::UNCOMPRESSED,
            );
        }
    }
    Arc::new(
        builder
            .set_max_row_group_row_count(Some(row_group_rows.max(1)))
            // A page ends once a write (a batch, or a piece of one) takes it to the limit:
            // pages hold from `page_rows` to twice as many rows.
            .set_data_page_row_count_limit(page_rows.max(1))
            .set_write_batch_size((page_rows / 4).clamp(1, 1024))
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_column_statistics_enabled(ColumnPath::from(hpx_column), EnabledStatistics::Page)
            .set_sorting_columns(Some(vec![SortingColumn {
                column_idx: 0,
                descending: false,
                nulls_first: false,
            }]))
            .set_created_by(format!("meridian {}", env!("CARGO_PKG_VERSION")))
            .build(),
    )
}

/// One open partition file.
pub(crate) struct PartitionWriter {
    pub(crate) pixel: Pixel,
    path: PathBuf,
    writer: ArrowWriter<BufWriter<File>>,
    pub(crate) rows: u64,
}

/// A finished partition file.
pub(crate) struct Written {
    pub(crate) pixel: Pixel,
    pub(crate) metadata: ParquetMetaData,
    pub(crate) rows: u64,
}

impl PartitionWriter {
    pub(crate) fn create(
        dir: &Path,
        pixel: Pixel,
        schema: &SchemaRef,
        props: &Arc<WriterProperties>,
    ) -> Result<Self> {
        Self::create_at(pixel.path_in(dir), pixel, schema, props)
    }

    /// A writer of partition `pixel`'s rows to file `path` (one of the files of a
    /// partition directory).
    pub(crate) fn create_at(
        path: PathBuf,
        pixel: Pixel,
        schema: &SchemaRef,
        props: &Arc<WriterProperties>,
    ) -> Result<Self> {
        let parent = path.parent().expect("partition path has a parent");
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let writer = ArrowWriter::try_new(
            BufWriter::with_capacity(1 << 20, file),
            schema.clone(),
            Some(props.as_ref().clone()),
        )
        .map_err(|e| Error::parquet(&path, e))?;
        Ok(Self {
            pixel,
            path,
            writer,
            rows: 0,
        })
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.rows += batch.num_rows() as u64;
        self.writer
            .write(batch)
            .map_err(|e| Error::parquet(&self.path, e))
    }

    pub(crate) fn close(self) -> Result<Written> {
        let metadata = self
            .writer
            .close()
            .map_err(|e| Error::parquet(&self.path, e))?;
        Ok(Written {
            pixel: self.pixel,
            metadata,
            rows: self.rows,
        })
    }
}

/// Writes `dataset/_common_metadata` (the schema, no rows), returning its metadata.
pub(crate) fn write_common_metadata(
    dir: &Path,
    schema: &SchemaRef,
    props: &Arc<WriterProperties>,
) -> Result<ParquetMetaData> {
    let dataset = dir.join("dataset");
    std::fs::create_dir_all(&dataset).map_err(|e| Error::io(&dataset, e))?;
    let common = dataset.join("_common_metadata");
    let f = File::create(&common).map_err(|e| Error::io(&common, e))?;
    let w = ArrowWriter::try_new(f, schema.clone(), Some(props.as_ref().clone()))
        .map_err(|e| Error::parquet(&common, e))?;
    w.close().map_err(|e| Error::parquet(&common, e))
}

/// Writes `dataset/_common_metadata` (schema only) and `dataset/_metadata` (schema and every
/// row group, each pointing at its partition file).
pub(crate) fn write_summary_files(
    dir: &Path,
    schema: &SchemaRef,
    props: &Arc<WriterProperties>,
    written: &[Written],
) -> Result<()> {
    let empty_meta = write_common_metadata(dir, schema, props)?;
    let dataset = dir.join("dataset");
    let base = written.first().map(|w| &w.metadata).unwrap_or(&empty_meta);
    let fm = base.file_metadata();
    let total: i64 = written.iter().map(|w| w.rows as i64).sum();
    let file_meta = FileMetaData::new(
        fm.version(),
        total,
        fm.created_by().map(str::to_string),
        fm.key_value_metadata().cloned(),
        fm.schema_descr_ptr(),
        fm.column_orders().cloned(),
    );
    let mut row_groups = Vec::new();
    for w in written {
        let rel = w.pixel.relative_path();
        let rel = rel
            .strip_prefix("dataset/")
            .expect("partition path is under dataset")
            .to_string();
        for rg in w.metadata.row_groups() {
            let cols = rg
                .columns()
                .iter()
                .map(|c| c.clone().into_builder().set_file_path(rel.clone()).build())
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| Error::parquet(&rel, e))?;
            row_groups.push(
                rg.clone()
                    .into_builder()
                    .set_column_metadata(cols)
                    .build()
                    .map_err(|e| Error::parquet(&rel, e))?,
            );
        }
    }
    let meta = ParquetMetaDataBuilder::new(file_meta)
        .set_row_groups(row_groups)
        .build();
    let path = dataset.join("_metadata");
    let mut out = BufWriter::new(File::create(&path).map_err(|e| Error::io(&path, e))?);
    out.write_all(b"PAR1").map_err(|e| Error::io(&path, e))?;
    ParquetMetaDataWriter::new(&mut out, &meta)
        .finish()
        .map_err(|e| Error::parquet(&path, e))?;
    out.flush().map_err(|e| Error::io(&path, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn numbers_are_written_plain_the_rest_snappy() {
        let schema: SchemaRef = Arc::new(Schema::new(vec![
            Field::new("_healpix_29", DataType::Int64, false),
            Field::new("objectId", DataType::Int64, false),
            Field::new("ra", DataType::Float64, false),
            Field::new("g_mag", DataType::Float32, true),
            Field::new("band", DataType::Utf8, true),
            Field::new("flag", DataType::Boolean, true),
        ]));
        let p = writer_properties(1000, 100, "_healpix_29", ["ra", "dec"], &schema);
        let codec = |c: &str| p.compression(&ColumnPath::from(c));
        for plain in ["_healpix_29", "objectId", "ra", "g_mag"] {
            assert_eq!(codec(plain), Compression::UNCOMPRESSED, "{plain}");
        }
        for snappy in ["band", "flag"] {
            assert_eq!(codec(snappy), Compression::SNAPPY, "{snappy}");
        }
    }
}
