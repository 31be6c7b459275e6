//! `/spectra/stack`: the stack of the spectra an ADQL query selects.
//!
//! Parameters: `QUERY` (ADQL; its result names spectra by a `sparcl_id` column, or by
//! `specid` with an optional `data_release`), `GRID` (`start:stop:step` in Å, default
//! `3600:9800:1`), `METHOD` (`mean`, `ivar` (inverse-variance weighted, the default) or
//! `median`), `REST_FRAME` (`true` shifts each spectrum by its redshift first) and
//! `FORMAT` (`fits`, the default, or `votable`). The answer is an SDM spectrum with the
//! number of spectra combined at each pixel (`N`). Only spectra the caller may read are
//! stacked; the query runs under the synchronous time limit.

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use meridian_spectra::ops::{Grid, StackMethod};
use meridian_spectra::sdm;
use meridian_spectra::stack::StackSpec;
use meridian_spectra::store::Dataset;

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::params::DaliRequest;

fn arrow_err(e: arrow::error::ArrowError) -> Error {
    Error::Usage(format!(
        "QUERY: its sparcl_id, specid or data_release column cannot be read as an id: {e}"
    ))
}

/// The rows of `batches` as (dataset, row) among `datasets`: by `sparcl_id`, or by `specid`
/// (every spectrum with that id, in `data_release` when the result has that column).
pub fn rows_of<'a>(
    datasets: &'a [Arc<Dataset>],
    batches: &[arrow::record_batch::RecordBatch],
) -> Result<Selected<'a>> {
    let mut out = Vec::new();
    let mut unknown = 0u64;
    for b in batches {
        let col = |name: &str| {
            b.schema()
                .fields()
                .iter()
                .position(|f| f.name().eq_ignore_ascii_case(name))
                .map(|i| b.column(i).clone())
        };
        if let Some(ids) = col("sparcl_id") {
            let ids = arrow::compute::cast(&ids, &DataType::Utf8).map_err(arrow_err)?;
            let ids = ids.as_string::<i32>();
            for i in 0..ids.len() {
                if ids.is_null(i) {
                    continue;
                }
                match datasets
                    .iter()
                    .find_map(|d| d.row_of(ids.value(i)).map(|r| (d.as_ref(), r)))
                {
                    Some(x) => out.push(x),
                    None => unknown += 1,
                }
            }
        } else if let Some(ids) = col("specid") {
            let ids = arrow::compute::cast(&ids, &DataType::Int64).map_err(arrow_err)?;
            let ids = ids.as_primitive::<Int64Type>();
            let drs = col("data_release")
                .map(|c| arrow::compute::cast(&c, &DataType::Utf8))
                .transpose()
                .map_err(arrow_err)?;
            for i in 0..ids.len() {
                if ids.is_null(i) {
                    continue;
                }
                let dr = drs.as_ref().map(|c| c.as_string::<i32>().value(i));
                let before = out.len();
                for d in datasets
                    .iter()
                    .filter(|d| dr.is_none_or(|dr| dr == d.name()))
                {
                    out.extend(
                        d.rows_of_specid(ids.value(i))
                            .iter()
                            .map(|&r| (d.as_ref(), r)),
                    );
                }
                if out.len() == before {
                    unknown += 1;
                }
            }
        } else {
            return Err(Error::Usage(
                "QUERY: the result must have a sparcl_id column, or a specid column (with \
                 data_release to choose among releases)"
                    .into(),
            ));
        }
    }
    let mut seen = std::collections::HashSet::with_capacity(out.len());
    let before = out.len();
    out.retain(|(d, r)| seen.insert((std::ptr::from_ref(*d) as usize, *r)));
    let repeated = (before - out.len()) as u64;
    Ok(Selected {
        rows: out,
        unknown,
        repeated,
    })
}

/// The spectra a query's result names.
pub struct Selected<'a> {
    /// Each spectrum once, in the order first named.
    pub rows: Vec<(&'a Dataset, u32)>,
    /// Ids that matched nothing readable.
    pub unknown: u64,
    /// Ids that named a spectrum already taken.
    pub repeated: u64,
}

/// Sets its flag when dropped: the handler's future is dropped when its client goes away.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Parses the stack's parameters (`GRID`, `METHOD`, `REST_FRAME`).
pub fn spec_of(
    grid: Option<&str>,
    method: Option<&str>,
    rest_frame: Option<&str>,
    budget_bytes: u64,
) -> Result<StackSpec> {
    let grid: Grid = grid
        .unwrap_or("3600:9800:1")
        .parse()
        .map_err(|e: meridian_spectra::Error| Error::Usage(format!("GRID: {e}")))?;
    let method: StackMethod = method
        .unwrap_or("ivar")
        .parse()
        .map_err(|e: meridian_spectra::Error| Error::Usage(format!("METHOD: {e}")))?;
    let rest_frame = match rest_frame.map(|s| s.trim().to_ascii_lowercase()) {
        None => false,
        Some(s) if matches!(s.as_str(), "true" | "1" | "yes") => true,
        Some(s) if matches!(s.as_str(), "false" | "0" | "no" | "") => false,
        Some(s) => {
            return Err(Error::Usage(format!(
                "REST_FRAME: '{s}' is not true or false"
            )));
        }
    };
    Ok(StackSpec {
        grid,
        method,
        rest_frame,
        budget_bytes: budget_bytes as usize,
    })
}

/// `/spectra/stack`.
pub async fn stack(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: DaliRequest,
) -> Result<Response> {
    let query = req.params.required("QUERY")?.to_string();
    let spec = spec_of(
        req.params.get("GRID"),
        req.params.get("METHOD"),
        req.params.get("REST_FRAME"),
        state.spectra.stack_memory_bytes,
    )?;
    let fits = super::ssa::wants_fits(req.params.get("FORMAT"), true)?;
    let who = match &caller {
        Caller::User(id) => Some(id.clone()),
        _ => None,
    };
    let datasets = super::readable(&state, who.as_ref())?;
    let started = std::time::Instant::now();
    let limit = std::time::Duration::from_secs(state.limits.sync_timeout_s);
    let max = state.spectra.max_stack;
    let engine = state.engine.clone();
    let batches = tokio::select! {
        r = async {
            let df = engine
                .query(&query, meridian_engine::Lang::Adql)
                .await?
                .limit(0, Some(max + 1))
                .map_err(meridian_engine::Error::from)?;
            let plan = engine.physical_plan(df).await?;
            let mut stream = meridian_engine::execute(plan, &engine)?;
            let mut out = Vec::new();
            let mut rows = 0usize;
            while let Some(b) = stream.next().await {
                let b = b.map_err(meridian_engine::Error::from)?;
                rows += b.num_rows();
                out.push(b);
            }
            Ok::<_, Error>((out, rows))
        } => r?,
        _ = meridian_engine::deadline(limit) => return Err(Error::Timeout(limit.as_secs())),
    };
    let (batches, n) = batches;
    if n > max {
        return Err(Error::Usage(format!(
            "QUERY selects more than {max} spectra, the most one stack takes"
        )));
    }
    let authority = state.spectra.authority.clone();
    // Two stacks at a time; a third waits, within the synchronous time limit. The slot is
    // held by the computation itself, which stops at the time limit or when the client
    // goes away (this handler is then dropped, and with it `_stop`).
    let ends = started + limit;
    let permit = tokio::time::timeout(
        ends.saturating_duration_since(std::time::Instant::now()),
        state.spectra.stacks.clone().acquire_owned(),
    )
    .await
    .map_err(|_| Error::Timeout(limit.as_secs()))?
    .map_err(|e| Error::Internal(format!("stack queue: {e}")))?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stop = StopOnDrop(stop.clone());
    let body = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, &'static str)> {
        let _permit = permit;
        let Selected {
            rows,
            unknown,
            repeated,
        } = rows_of(&datasets, &batches)?;
        if rows.is_empty() {
            return Err(Error::Usage(format!(
                "QUERY selects no spectrum this service holds for you ({unknown} ids matched \
                 nothing)"
            )));
        }
        let s = meridian_spectra::stack::stack(&rows, &spec, &|_| {
            !stop.load(std::sync::atomic::Ordering::Relaxed) && std::time::Instant::now() < ends
        })
        .map_err(|e| match e {
            meridian_spectra::Error::Stopped(_) => Error::Timeout(limit.as_secs()),
            e => e.into(),
        })?;
        tracing::info!(
            spectra = s.used,
            no_redshift = s.no_redshift,
            unknown,
            repeated,
            method = %spec.method,
            "stack"
        );
        let meta = sdm::Meta::of_stack(&s, &spec, format!("ivo://{authority}/spectra/stack"));
        let cols = sdm::Columns::of_stack(&s);
        super::ssa::render(&meta, &cols, fits)
    })
    .await
    .map_err(|e| Error::Internal(format!("stack task failed: {e}")))??;
    Ok(([(header::CONTENT_TYPE, body.1)], body.0).into_response())
}
