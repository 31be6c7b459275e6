//! Alert files into table files: one Parquet file per table of the alerts.

use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;

use crate::{Error, Result, avro, dia};

/// A table written by [`convert`].
#[derive(Debug)]
pub struct Written {
    /// Table name.
    pub table: &'static str,
    /// Its rows.
    pub rows: usize,
    /// Its file.
    pub path: PathBuf,
}

/// Splits Avro alert files (one survey's) into their tables, each row once across all the
/// files (the first occurrence; the last for `DiaObject`, whose later alerts carry the
/// newer summary), and writes `<out>/<table>.parquet`. Nothing is written unless every
/// file reads whole.
pub fn convert(files: &[PathBuf], out: &Path) -> Result<Vec<Written>> {
    let mut alerts: Vec<RecordBatch> = Vec::new();
    let mut kind: Option<dia::Kind> = None;
    for f in files {
        let (schema, batches) = avro::read_file(f)?;
        let k = dia::Kind::detect(&schema)
            .map_err(|e| Error::Shape(format!("{}: {e}", f.display())))?;
        if let Some(prev) = kind.filter(|p| *p != k) {
            return Err(Error::Shape(format!(
                "{}: {k:?} alerts after {prev:?} alerts: convert one survey's alerts at a time",
                f.display()
            )));
        }
        kind = Some(k);
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        tracing::info!(file = %f.display(), alerts = n, kind = ?k, "read alerts");
        alerts.extend(batches);
    }
    let Some(kind) = kind else {
        return Err(Error::Shape("no alert files".into()));
    };
    let mut parts: Vec<(&'static str, Vec<RecordBatch>)> =
        kind.tables().iter().map(|t| (*t, Vec::new())).collect();
    for batch in alerts.iter().filter(|b| b.num_rows() > 0) {
        for (name, rows) in dia::split(batch)?.tables {
            if let Some((_, v)) = parts.iter_mut().find(|(n, _)| *n == name) {
                v.push(rows);
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|source| Error::Io {
        path: out.display().to_string(),
        source,
    })?;
    let mut written = Vec::new();
    for (table, batches) in parts {
        let Some(first) = batches.first() else {
            continue;
        };
        let rows = arrow::compute::concat_batches(&first.schema(), &batches)?;
        let rows = match kind.key(table) {
            Some(key) => dia::unique(&rows, key, table == "DiaObject")?,
            None => rows,
        };
        let path = out.join(format!("{table}.parquet"));
        write_parquet(&path, &rows)?;
        written.push(Written {
            table,
            rows: rows.num_rows(),
            path,
        });
    }
    Ok(written)
}

/// Writes `rows` to `path` through a temporary file in the same directory, renamed when
/// complete: never a half-written file under the name asked for.
fn write_parquet(path: &Path, rows: &RecordBatch) -> Result<()> {
    let io = |source| Error::Io {
        path: path.display().to_string(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    let file = tmp.reopen().map_err(io)?;
    let parquet =
        |e: parquet::errors::ParquetError| Error::Avro(format!("{}: {e}", path.display()));
    let mut w = parquet::arrow::ArrowWriter::try_new(file, rows.schema(), None).map_err(parquet)?;
    w.write(rows).map_err(parquet)?;
    w.close().map_err(parquet)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}
