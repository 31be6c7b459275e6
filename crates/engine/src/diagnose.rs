//! Failures of a query's reads, named with the catalog, the partition and the file.
//!
//! DataFusion's Parquet scan reports a page that does not decode without naming its file,
//! and the parquet crate panics on some corrupt pages. When a query fails so, the files
//! its plan reads are decoded one by one (on the failure's path only, the first
//! [`MAX_DIAGNOSED`] of them) and the first that does not decode is named with its
//! catalog and partition, so that the user and the operator know what is damaged
//! (`meridian check --deep` finds the same).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::ExecutionPlan;

/// Files decoded at most when a query's read fails.
pub const MAX_DIAGNOSED: usize = 64;

/// The object paths of the files `plan` scans.
pub(crate) fn plan_files(plan: &Arc<dyn ExecutionPlan>) -> Vec<String> {
    let mut out = Vec::new();
    collect(plan, &mut out);
    out
}

fn collect(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<String>) {
    if let Some(ds) = plan.downcast_ref::<DataSourceExec>()
        && let Some(config) = ds.data_source().downcast_ref::<FileScanConfig>()
    {
        for group in &config.file_groups {
            out.extend(group.iter().map(|f| f.object_meta.location.to_string()));
        }
    }
    for child in plan.children() {
        collect(child, out);
    }
}

/// Whether a query's failure may come from a file that does not decode.
pub(crate) fn is_read_failure(e: &DataFusionError) -> bool {
    let text = e.to_string();
    text.contains("Parquet") || text.contains("parquet") || text.contains("corrupt data")
}

/// The failure `error`, naming the first of `files` that does not decode (local files;
/// those of object stores are not read again).
pub(crate) async fn named(files: Vec<String>, error: String) -> DataFusionError {
    let found = tokio::task::spawn_blocking(move || {
        files.iter().take(MAX_DIAGNOSED).find_map(|f| {
            let local = Path::new("/").join(f);
            if !local.is_file() {
                return None;
            }
            let file = std::fs::File::open(&local).ok()?;
            meridian_catalog::check::decode_all(file, "the file")
                .err()
                .map(|why| format!("{}: {why}", describe(f)))
        })
    })
    .await
    .ok()
    .flatten();
    DataFusionError::Execution(match found {
        Some(culprit) => format!("{culprit} (the query failed with: {error})"),
        None => error,
    })
}

/// A partition file's catalog and partition, from its path (`<catalog>/dataset/Norder=O/
/// Dir=D/Npix=N.parquet`, or a file in the directory `Npix=N/` of an appended partition).
fn describe(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').collect();
    let field = |key: &str| {
        parts.iter().find_map(|p| {
            p.strip_prefix(key)
                .map(|v| v.trim_end_matches(".parquet").to_string())
        })
    };
    let catalog = parts
        .iter()
        .position(|p| *p == "dataset")
        .and_then(|i| i.checked_sub(1))
        .map(|i| parts[i]);
    match (catalog, field("Norder="), field("Npix=")) {
        (Some(c), Some(o), Some(n)) => {
            format!("catalog '{c}': partition Norder={o}/Npix={n} cannot be read (/{path})")
        }
        _ => format!("/{path} cannot be read"),
    }
}

/// A future whose panics (a dependency's, on corrupt input) become its error, as
/// [`meridian_formats::contain::contain`] does for a call.
pub(crate) struct Contained<F>(pub F);

impl<F: Future + Unpin> Future for Contained<F> {
    type Output = Result<F::Output, String>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match meridian_formats::contain::contain(|| Pin::new(&mut *inner).poll(cx)) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_from_their_paths() {
        assert_eq!(
            describe("d/.versions/gaia.1/gaia/dataset/Norder=1/Dir=0/Npix=30.parquet"),
            "catalog 'gaia': partition Norder=1/Npix=30 cannot be read \
             (/d/.versions/gaia.1/gaia/dataset/Norder=1/Dir=0/Npix=30.parquet)"
        );
        assert_eq!(
            describe("s/dia/dataset/Norder=5/Dir=0/Npix=7/part-0000000001.parquet"),
            "catalog 'dia': partition Norder=5/Npix=7 cannot be read \
             (/s/dia/dataset/Norder=5/Dir=0/Npix=7/part-0000000001.parquet)"
        );
        assert_eq!(describe("tmp/x.parquet"), "/tmp/x.parquet cannot be read");
    }
}
