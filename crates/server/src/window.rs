//! `/tap/async/{id}/results/{name}/window`: a window of a finished job's result, filtered
//! and sorted by the server, so that a browser grid never downloads a whole result.
//!
//! Parameters: `OFFSET` (rows to skip, default 0), `LIMIT` (rows, default 100, at most
//! 10,000), `SORT` (comma-separated columns, `-` before a name for descending order) and
//! any number of `FILTER=column:op:value` with op `eq`, `ne`, `lt`, `le`, `gt`, `ge`,
//! `contains` (text, case-insensitive), `null` or `notnull`. The answer is an Arrow IPC
//! stream of the window; its `X-Total-Rows` header counts the rows the filters keep.
//!
//! The first window of a result converts it once to Parquet beside it (from VOTable, CSV,
//! TSV, FITS, Parquet or Arrow); later windows read that file through the engine, with its
//! row-group statistics.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use datafusion::common::Column;
use datafusion::logical_expr::{Expr, lit};

use crate::AppState;
use crate::error::{Error, Result};
use crate::params::DaliRequest;

/// Rows one window may hold.
const MAX_LIMIT: usize = 10_000;
/// Filters one window may apply.
const MAX_FILTERS: usize = 32;

fn usage(e: impl std::fmt::Display) -> Error {
    Error::Usage(e.to_string())
}

/// Converts the result file at `from` to Parquet at `to` (through a temporary file).
fn to_parquet(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    let tmp = to.with_extension(format!("partial-{}", std::process::id()));
    let internal = |e: &dyn std::fmt::Display| {
        Error::Internal(format!("converting {} for windows: {e}", from.display()))
    };
    let is_arrow = from.extension().is_some_and(|e| e == "arrows");
    let (schema, batches): (
        arrow::datatypes::SchemaRef,
        Box<dyn Iterator<Item = Result<arrow::record_batch::RecordBatch>>>,
    ) = if is_arrow {
        let f = std::fs::File::open(from).map_err(|e| internal(&e))?;
        let r = arrow::ipc::reader::StreamReader::try_new(std::io::BufReader::new(f), None)
            .map_err(|e| internal(&e))?;
        let schema = r.schema();
        (
            schema,
            Box::new(r.map(move |b| b.map_err(|e| internal(&e)))),
        )
    } else {
        let r = meridian_formats::open(from, &Default::default()).map_err(|e| {
            usage(format!(
                "this result's format cannot be windowed ({e}); run the query with \
                 RESPONSEFORMAT votable, csv, fits, parquet or arrow"
            ))
        })?;
        let schema = r.schema();
        (schema, Box::new(r.map(|b| b.map_err(Error::from))))
    };
    let file = std::fs::File::create(&tmp).map_err(|e| internal(&e))?;
    let mut w =
        parquet::arrow::ArrowWriter::try_new(file, schema, None).map_err(|e| internal(&e))?;
    for b in batches {
        w.write(&b?).map_err(|e| internal(&e))?;
    }
    w.close().map_err(|e| internal(&e))?;
    std::fs::rename(&tmp, to).map_err(|e| internal(&e))
}

/// `FILTER=column:op:value` as an expression over `schema`.
fn filter_expr(f: &str, schema: &datafusion::common::DFSchema) -> Result<Expr> {
    let mut parts = f.splitn(3, ':');
    let (name, op) = match (parts.next(), parts.next()) {
        (Some(n), Some(o)) if !n.is_empty() => (n, o.to_ascii_lowercase()),
        _ => {
            return Err(usage(format!(
                "FILTER '{f}': write column:op:value (op eq, ne, lt, le, gt, ge, contains, \
                 null, notnull)"
            )));
        }
    };
    let value = parts.next();
    let field = schema
        .fields()
        .iter()
        .find(|x| x.name() == name)
        .ok_or_else(|| usage(format!("FILTER: no column '{name}' in this result")))?;
    let c = Expr::Column(Column::new_unqualified(name));
    let value_of = || -> Result<Expr> {
        let v = value.ok_or_else(|| usage(format!("FILTER '{f}': op {op} needs a value")))?;
        let t = field.data_type();
        Ok(if t.is_numeric() {
            lit(v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| usage(format!("FILTER '{f}': '{v}' is not a number")))?)
        } else {
            lit(v.to_string())
        })
    };
    Ok(match op.as_str() {
        "eq" => c.eq(value_of()?),
        "ne" => c.not_eq(value_of()?),
        "lt" => c.lt(value_of()?),
        "le" => c.lt_eq(value_of()?),
        "gt" => c.gt(value_of()?),
        "ge" => c.gt_eq(value_of()?),
        "null" => c.is_null(),
        "notnull" => c.is_not_null(),
        "contains" => {
            let v = value.ok_or_else(|| usage(format!("FILTER '{f}': contains needs a value")))?;
            let escaped = v
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            Expr::Like(datafusion::logical_expr::expr::Like::new(
                false,
                Box::new(datafusion::logical_expr::cast(
                    c,
                    arrow::datatypes::DataType::Utf8,
                )),
                Box::new(lit(format!("%{escaped}%"))),
                Some('\\'),
                true,
            ))
        }
        other => {
            return Err(usage(format!(
                "FILTER '{f}': unknown op '{other}' (eq, ne, lt, le, gt, ge, contains, null, \
                 notnull)"
            )));
        }
    })
}

/// The finished result `name` of job `id` as a data frame over its Parquet copy (made on
/// first use).
async fn result_frame(
    state: &AppState,
    id: &str,
    name: &str,
) -> Result<datafusion::dataframe::DataFrame> {
    let job = state.jobs.get(id)?;
    let r = crate::uws::completed_result(&job, name)?;
    let dir = state.jobs.job_dir(id);
    let path = dir.join(&r.file);
    let cache = dir.join(format!("{}.window.parquet", r.file));
    if !cache.exists() {
        let (from, to) = (path.clone(), cache.clone());
        tokio::task::spawn_blocking(move || to_parquet(&from, &to))
            .await
            .map_err(|e| Error::Internal(format!("window task failed: {e}")))??;
    }
    let provider = state.engine.parquet_table(&cache).await?;
    Ok(state
        .engine
        .session()
        .read_table(provider)
        .map_err(meridian_engine::Error::from)?)
}

/// The FILTERs of a request, applied to `df`.
fn filtered(
    mut df: datafusion::dataframe::DataFrame,
    p: &crate::params::Params,
) -> Result<datafusion::dataframe::DataFrame> {
    let filters: Vec<&str> = p.all("FILTER").collect();
    if filters.len() > MAX_FILTERS {
        return Err(usage(format!("at most {MAX_FILTERS} FILTERs")));
    }
    for f in filters {
        let e = filter_expr(f, df.schema())?;
        df = df.filter(e).map_err(meridian_engine::Error::from)?;
    }
    Ok(df)
}

fn df_err(e: datafusion::error::DataFusionError) -> Error {
    Error::from(meridian_engine::Error::from(e))
}

/// The first value of column `i` of `b` as a number.
fn first_f64(b: &arrow::record_batch::RecordBatch, i: usize) -> Option<f64> {
    let a = arrow::compute::cast(b.column(i), &arrow::datatypes::DataType::Float64).ok()?;
    let a = a.as_any().downcast_ref::<arrow::array::Float64Array>()?;
    (!arrow::array::Array::is_empty(a) && !arrow::array::Array::is_null(a, 0)).then(|| a.value(0))
}

/// `GET /tap/async/{id}/results/{name}/stats?COLUMN=c[&BINS=20][&FILTER=...]`: a column's
/// statistics over the rows the filters keep, as JSON: rows, count (non-null), nulls, and
/// for numbers min, max, mean, standard deviation and a histogram of `BINS` equal bins
/// (at most 1000) between min and max.
pub async fn stats(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    req: DaliRequest,
) -> Result<Response> {
    use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, stddev};
    let p = &req.params;
    let column = p.required("COLUMN")?.to_string();
    let bins = p.get("BINS").map_or(Ok(20usize), |v| {
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|b| (1..=1000).contains(b))
            .ok_or_else(|| usage(format!("BINS: '{v}' is not a whole number from 1 to 1000")))
    })?;
    let df = filtered(result_frame(&state, &id, &name).await?, p)?;
    let field = df
        .schema()
        .fields()
        .iter()
        .find(|f| *f.name() == column)
        .cloned()
        .ok_or_else(|| usage(format!("COLUMN: no column '{column}' in this result")))?;
    let c = || Expr::Column(Column::new_unqualified(&column));
    let x = || datafusion::logical_expr::cast(c(), arrow::datatypes::DataType::Float64);
    let rows = df.clone().count().await.map_err(df_err)? as u64;
    let mut out = serde_json::json!({
        "column": column,
        "type": field.data_type().to_string(),
        "rows": rows,
    });
    let numeric = field.data_type().is_numeric();
    let mut aggs = vec![count(c()).alias("n")];
    if numeric {
        aggs.extend([
            min(x()).alias("lo"),
            max(x()).alias("hi"),
            avg(x()).alias("mean"),
            stddev(x()).alias("sd"),
        ]);
    }
    let agg = df
        .clone()
        .aggregate(vec![], aggs)
        .map_err(df_err)?
        .collect()
        .await
        .map_err(df_err)?;
    let b = agg
        .first()
        .ok_or_else(|| Error::Internal("stats: no aggregate row".into()))?;
    let n = first_f64(b, 0).unwrap_or(0.0) as u64;
    out["count"] = serde_json::json!(n);
    out["nulls"] = serde_json::json!(rows.saturating_sub(n));
    if numeric {
        let (lo, hi) = (first_f64(b, 1), first_f64(b, 2));
        out["min"] = serde_json::json!(lo);
        out["max"] = serde_json::json!(hi);
        out["mean"] = serde_json::json!(first_f64(b, 3));
        out["stddev"] = serde_json::json!(first_f64(b, 4));
        if let (Some(lo), Some(hi)) = (lo, hi) {
            let width = if hi > lo {
                (hi - lo) / bins as f64
            } else {
                1.0
            };
            let index = datafusion::functions::math::expr_fn::floor((x() - lit(lo)) / lit(width));
            let h = df
                .aggregate(vec![index.alias("bin")], vec![count(c()).alias("n")])
                .map_err(df_err)?
                .collect()
                .await
                .map_err(df_err)?;
            let mut counts = vec![0u64; bins];
            for b in &h {
                for i in 0..b.num_rows() {
                    let (Some(bin), Some(n)) =
                        (first_f64(&b.slice(i, 1), 0), first_f64(&b.slice(i, 1), 1))
                    else {
                        continue;
                    };
                    // The maximum belongs to the last bin.
                    counts[(bin.max(0.0) as usize).min(bins - 1)] += n as u64;
                }
            }
            let edges: Vec<f64> = (0..=bins).map(|i| lo + width * i as f64).collect();
            out["histogram"] = serde_json::json!({"edges": edges, "counts": counts});
        }
    }
    Ok(axum::Json(out).into_response())
}

/// `GET /tap/async/{id}/results/{name}/window`.
pub async fn window(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    req: DaliRequest,
) -> Result<Response> {
    let p = &req.params;
    let number = |key: &str, default: usize| -> Result<usize> {
        p.get(key).map_or(Ok(default), |v| {
            v.trim()
                .parse::<usize>()
                .map_err(|_| usage(format!("{key}: '{v}' is not a whole number")))
        })
    };
    let offset = number("OFFSET", 0)?;
    let limit = number("LIMIT", 100)?;
    if limit > MAX_LIMIT {
        return Err(usage(format!("LIMIT: at most {MAX_LIMIT} rows a window")));
    }
    let mut df = filtered(result_frame(&state, &id, &name).await?, p)?;
    let total = df
        .clone()
        .count()
        .await
        .map_err(meridian_engine::Error::from)?;
    if let Some(sort) = p.get("SORT").filter(|s| !s.trim().is_empty()) {
        let mut keys = Vec::new();
        for k in sort.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let (name, desc) = match k.strip_prefix('-') {
                Some(n) => (n, true),
                None => (k, false),
            };
            if df.schema().fields().iter().all(|x| x.name() != name) {
                return Err(usage(format!("SORT: no column '{name}' in this result")));
            }
            keys.push(Expr::Column(Column::new_unqualified(name)).sort(!desc, false));
        }
        df = df.sort(keys).map_err(meridian_engine::Error::from)?;
    }
    let df = df
        .limit(offset, Some(limit))
        .map_err(meridian_engine::Error::from)?;
    let schema: arrow::datatypes::SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(meridian_engine::Error::from)?;
    let mut body = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut body, &schema)
            .map_err(|e| Error::Internal(format!("window: {e}")))?;
        for b in &batches {
            w.write(b)
                .map_err(|e| Error::Internal(format!("window: {e}")))?;
        }
        w.finish()
            .map_err(|e| Error::Internal(format!("window: {e}")))?;
    }
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.apache.arrow.stream".to_string(),
            ),
            (
                header::HeaderName::from_static("x-total-rows"),
                total.to_string(),
            ),
        ],
        body,
    )
        .into_response())
}
