//! `/tap/async/{id}/results/{name}/window`: a window of a finished job's result, filtered
//! and sorted by the server, so that a browser grid never downloads a whole result.
//!
//! Parameters: `OFFSET` (rows to skip, default 0), `LIMIT` (rows, default 100), `COLUMNS`
//! (comma-separated names, `*` for every column of the result; default `*`), `SORT`
//! (comma-separated columns, `-` before a name for descending order) and any number of
//! `FILTER=column:op:value` with op `eq`, `ne`, `lt`, `le`, `gt`, `ge`, `in` (a
//! comma-separated list), `contains` (text, case-insensitive), `null` or `notnull`. The
//! answer is an Arrow IPC stream of the window; its `X-Total-Rows` header counts the rows
//! the filters keep.
//!
//! A window holds at most 10,000 rows, or more of a few columns (at most 4,000,000 values
//! and 1,000,000 rows): a plot fetches the two or three columns it draws in one window.
//!
//! Every result has a virtual column `_row`, its rows' positions in the result (from 0),
//! which `COLUMNS`, `SORT` and `FILTER` may name: a selection made on a plot is a list of
//! `_row`s that the grid shows or filters on. Without `SORT` the rows come in result order.
//!
//! The first window of a result converts it once to Parquet beside it (from VOTable, CSV,
//! TSV, FITS, Parquet or Arrow), with `_row` added; later windows read that file through
//! the engine, with its row-group statistics.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use datafusion::common::Column;
use datafusion::logical_expr::{Expr, lit};

use crate::AppState;
use crate::error::{Error, Result};
use crate::params::DaliRequest;

/// Rows one window may hold whatever its columns.
const MAX_LIMIT: usize = 10_000;
/// Values (rows times columns) one window of a few columns may hold.
const MAX_CELLS: usize = 4_000_000;
/// Rows one window may hold at all.
const MAX_ROWS: usize = 1_000_000;
/// Values one `in` filter may list.
const MAX_IN: usize = 100_000;
/// The virtual column of row positions.
pub const ROW: &str = "_row";
/// Filters one window may apply.
const MAX_FILTERS: usize = 32;

fn usage(e: impl std::fmt::Display) -> Error {
    Error::Usage(e.to_string())
}

/// Converts the result file at `from` to Parquet at `to` (through a temporary file).
fn to_parquet(
    from: &std::path::Path,
    numbered_to: &std::path::Path,
    own_to: &std::path::Path,
) -> Result<()> {
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
    // A result that has a `_row` column of its own keeps it, and its windows are not
    // numbered.
    let numbered = schema.field_with_name(ROW).is_err();
    let to = if numbered { numbered_to } else { own_to };
    let tmp = to.with_extension(format!("partial-{}", std::process::id()));
    let out_schema = if numbered {
        let mut fields: Vec<_> = schema.fields().iter().cloned().collect();
        fields.push(Arc::new(arrow::datatypes::Field::new(
            ROW,
            arrow::datatypes::DataType::UInt64,
            false,
        )));
        Arc::new(arrow::datatypes::Schema::new_with_metadata(
            fields,
            schema.metadata().clone(),
        ))
    } else {
        schema
    };
    let file = std::fs::File::create(&tmp).map_err(|e| internal(&e))?;
    // Row groups of 64k rows: a window's `_row` range reads one or two of them.
    let props = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(65_536))
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, out_schema.clone(), Some(props))
        .map_err(|e| internal(&e))?;
    let mut next_row = 0u64;
    for b in batches {
        let b = b?;
        let b = if numbered {
            let n = b.num_rows() as u64;
            let rows = arrow::array::UInt64Array::from_iter_values(next_row..next_row + n);
            next_row += n;
            let mut columns = b.columns().to_vec();
            columns.push(Arc::new(rows));
            arrow::record_batch::RecordBatch::try_new(out_schema.clone(), columns)
                .map_err(|e| internal(&e))?
        } else {
            b
        };
        w.write(&b).map_err(|e| internal(&e))?;
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
                "FILTER '{f}': write column:op:value (op eq, ne, lt, le, gt, ge, in, \
                 contains, null, notnull)"
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
    let literal = |v: &str| -> Result<Expr> {
        let t = field.data_type();
        Ok(if t.is_numeric() {
            lit(v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .ok_or_else(|| usage(format!("FILTER on '{name}': '{v}' is not a number")))?)
        } else {
            lit(v.to_string())
        })
    };
    let value_of = || -> Result<Expr> {
        literal(value.ok_or_else(|| usage(format!("FILTER '{f}': op {op} needs a value")))?)
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
        "in" => {
            let v = value.ok_or_else(|| usage(format!("FILTER '{name}:in': needs a list")))?;
            let items: Vec<&str> = v.split(',').filter(|x| !x.trim().is_empty()).collect();
            if items.len() > MAX_IN {
                return Err(usage(format!(
                    "FILTER '{name}:in': at most {MAX_IN} values (this one has {})",
                    items.len()
                )));
            }
            let list = items.into_iter().map(literal).collect::<Result<Vec<_>>>()?;
            c.in_list(list, false)
        }
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
                "FILTER '{f}': unknown op '{other}' (eq, ne, lt, le, gt, ge, in, contains, \
                 null, notnull)"
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
    // The copy's name says which it is: rows numbered here are in `_row` order (windows
    // in result order need no sort); a result's own `_row` column may be in any order.
    let numbered = dir.join(format!("{}.numbered.parquet", r.file));
    let own = dir.join(format!("{}.rows.parquet", r.file));
    if !numbered.exists() && !own.exists() {
        let (from, to, own_to) = (path.clone(), numbered.clone(), own.clone());
        tokio::task::spawn_blocking(move || to_parquet(&from, &to, &own_to))
            .await
            .map_err(|e| Error::Internal(format!("window task failed: {e}")))??;
    }
    let (cache, sorted_by) = if numbered.exists() {
        (numbered, Some(ROW))
    } else {
        (own, None)
    };
    let provider = state.engine.parquet_table_sorted(&cache, sorted_by).await?;
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

/// The `SORT` of a request as sort expressions over `df`.
fn sort_keys(
    p: &crate::params::Params,
    df: &datafusion::dataframe::DataFrame,
) -> Result<Vec<datafusion::logical_expr::SortExpr>> {
    let mut keys = Vec::new();
    if let Some(sort) = p.get("SORT").filter(|s| !s.trim().is_empty()) {
        for k in sort.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let (name, desc) = match k.strip_prefix('-') {
                Some(n) => (n, true),
                None => (k, false),
            };
            if df.schema().fields().iter().all(|f| f.name() != name) {
                return Err(usage(format!("SORT: no column '{name}' in this result")));
            }
            keys.push(Expr::Column(Column::new_unqualified(name)).sort(!desc, false));
        }
    }
    Ok(keys)
}

/// `GET /tap/async/{id}/results/{name}/as?RESPONSEFORMAT=f[&SORT=...][&FILTER=...]`: the
/// result (the rows the filters keep, in the sort's order) in any TAP output format, as a
/// download.
pub async fn download(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    req: DaliRequest,
) -> Result<Response> {
    use futures::StreamExt;
    let p = &req.params;
    let format = crate::tap::format(p.get("RESPONSEFORMAT").or_else(|| p.get("FORMAT")))?;
    let mut df = filtered(result_frame(&state, &id, &name).await?, p)?;
    let numbered = df.schema().fields().iter().any(|f| f.name() == ROW);
    let mut keys = sort_keys(p, &df)?;
    if numbered {
        keys.push(Expr::Column(Column::new_unqualified(ROW)).sort(true, false));
    }
    df = df.sort(keys).map_err(meridian_engine::Error::from)?;
    if numbered {
        df = df
            .drop_columns(&[ROW])
            .map_err(meridian_engine::Error::from)?;
    }
    let schema: arrow::datatypes::SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let stream = df
        .execute_stream()
        .await
        .map_err(meridian_engine::Error::from)?
        .map(|b| b.map_err(meridian_engine::Error::from));
    let dir = state.jobs.job_dir(&id);
    let tmp = tempfile::Builder::new()
        .prefix(".download-")
        .tempfile_in(&dir)
        .map_err(|e| Error::Internal(format!("download file in {}: {e}", dir.display())))?;
    let writer = meridian_formats::write::ResultWriter::create(format.output, tmp.path(), &schema)?;
    crate::result::write_stream(writer, stream).await?;
    // The open file outlives its name: nothing is left behind in the job's directory.
    let file = tokio::fs::File::open(tmp.path())
        .await
        .map_err(|e| Error::Internal(format!("download file: {e}")))?;
    drop(tmp);
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    Ok((
        [
            (header::CONTENT_TYPE, format.media_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}-{}.{}\"",
                    id.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
                    name.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
                    format.extension
                ),
            ),
        ],
        body,
    )
        .into_response())
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
    let mut df = filtered(result_frame(&state, &id, &name).await?, p)?;
    let numbered = df.schema().fields().iter().any(|f| f.name() == ROW);
    let has = |df: &datafusion::dataframe::DataFrame, c: &str| {
        df.schema().fields().iter().any(|f| f.name() == c)
    };
    let mut columns: Vec<String> = Vec::new();
    for c in p
        .get("COLUMNS")
        .unwrap_or("*")
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        if c == "*" {
            columns.extend(
                df.schema()
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .filter(|n| n != ROW || !numbered),
            );
        } else if has(&df, c) {
            columns.push(c.to_string());
        } else {
            return Err(usage(format!("COLUMNS: no column '{c}' in this result")));
        }
    }
    if columns.is_empty() {
        return Err(usage("COLUMNS: name at least one column"));
    }
    let max_rows = (MAX_CELLS / columns.len()).clamp(MAX_LIMIT, MAX_ROWS);
    if limit > max_rows {
        return Err(usage(format!(
            "LIMIT: at most {max_rows} rows a window of {} column(s)",
            columns.len()
        )));
    }
    let filters = p.all("FILTER").next().is_some();
    let total = df
        .clone()
        .count()
        .await
        .map_err(meridian_engine::Error::from)?;
    let mut keys = sort_keys(p, &df)?;
    let row = || Expr::Column(Column::new_unqualified(ROW));
    let (df, skip) = if numbered && keys.is_empty() && !filters {
        // Result order, unfiltered: the window is a `_row` range, which the Parquet
        // statistics prune to the row groups that hold it.
        let (lo, hi) = (offset as u64, offset.saturating_add(limit) as u64);
        (
            df.filter(row().gt_eq(lit(lo)).and(row().lt(lit(hi))))
                .map_err(meridian_engine::Error::from)?
                .sort(vec![row().sort(true, false)])
                .map_err(meridian_engine::Error::from)?,
            0,
        )
    } else {
        // Ties (and an unsorted request) keep result order, so that windows of one
        // ordering never overlap nor miss a row, whatever the scan's parallelism.
        if numbered {
            keys.push(row().sort(true, false));
        }
        if !keys.is_empty() {
            df = df.sort(keys).map_err(meridian_engine::Error::from)?;
        }
        (df, offset)
    };
    let df = df
        .limit(skip, Some(limit))
        .map_err(meridian_engine::Error::from)?
        .select(
            columns
                .iter()
                .map(|c| Expr::Column(Column::new_unqualified(c)))
                .collect::<Vec<_>>(),
        )
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
