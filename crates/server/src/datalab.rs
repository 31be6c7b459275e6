//! Data Lab's query service on the wire, for the unmodified `astro-datalab` queryClient:
//! `/query/query` (synchronous, or asynchronous with `async=True`), `/query/status`,
//! `/query/results`, `/query/error`, `/query/abort`, `/query/profiles`, and the MyDB calls
//! `/query/list`, `/query/delete`, `/query/rename`, `/query/copy` and `/query/truncate`
//! (with `out=mydb://<table>` on queries), as
//! ../shared/specs/datalab-clients-wire.md describes them. Queries run exactly as TAP
//! queries do (same planner, limits and result writers); asynchronous ones are UWS jobs of
//! the caller, visible through `/tap/async` too.
//!
//! Answers are plain text; failures are non-200 answers whose body starts with `Error: `,
//! which the client raises as `queryClientError`.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use meridian_services::accounts::Scope;
use meridian_services::jobs::{Job, NewJob, Phase};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::params::{DaliRequest, Params};
use crate::tap::{QuerySpec, run_streaming};

/// Data Lab's names of output formats, as the client sends them, to ours.
fn format_name(ofmt: &str) -> Result<&'static str> {
    Ok(match ofmt.trim().to_ascii_lowercase().as_str() {
        "" | "csv" => "csv",
        // Tab-separated without a header line, as Data Lab's service answered.
        "ascii" => "tsv-noheader",
        "votable" => "votable",
        "fits" => "fits",
        "parquet" => "parquet",
        "json" => "json",
        other => {
            return Err(Error::Usage(format!(
                "output format '{other}' is not offered; use csv, ascii, votable, fits, \
                 parquet or json"
            )));
        }
    })
}

/// The query string, first value of each key, decoded leniently (the client builds it by
/// hand), then a form body's fields for keys the query string lacks.
fn fields(req: &Request) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

/// `Error: <message>` with the status the error calls for.
fn failure(e: Error) -> Response {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!(%status, error = %e, "data lab call failed");
    }
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("Error: {e}"),
    )
        .into_response()
}

fn plain(body: impl Into<String>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// `GET /query`: liveness.
pub async fn alive() -> Response {
    plain("Hello World! This is the Meridian query service.")
}

/// `GET /query/{call}`: the queryClient's calls.
pub async fn call(
    State(state): State<AppState>,
    axum::extract::Path(call): axum::extract::Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    let f = fields(&req);
    let timeout_s = req
        .headers()
        .get("x-dl-timeoutrequest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok());
    let result = match call.as_str() {
        "query" => query(&state, &caller, peer, &f, timeout_s).await,
        "status" => owned_job(&state, &caller, &f).map(|j| plain(j.phase.as_str())),
        "results" => match owned_job(&state, &caller, &f) {
            Ok(job) => results(&state, &job).await,
            Err(e) => Err(e),
        },
        "error" => owned_job(&state, &caller, &f).map(|job| {
            plain(match (&job.error, job.phase) {
                (Some(e), _) => format!("Error: {}", e.message),
                (None, Phase::Aborted) => "Error: the job was aborted".to_string(),
                (None, p) => format!("job {} is {} and has no error", job.id, p.as_str()),
            })
        }),
        "abort" => owned_job(&state, &caller, &f)
            .and_then(|job| Ok(state.jobs.abort(&job.id)?))
            .map(|_| plain("OK")),
        "profiles" => Ok(profiles(&state, &f)),
        "list" => mydb_list(&state, &caller, &f).await,
        "rename" | "copy" | "truncate" => mydb_change(&state, &caller, &call, &f).await,
        "delete" => caller
            .identity()
            .and_then(|id| {
                let table = meridian_services::mydb::strip_scheme(
                    f.get("table").map(String::as_str).unwrap_or(""),
                );
                Ok(state.mydb.drop_table(&id.user, table)?)
            })
            .map(|()| plain("OK")),
        other => Err(Error::NotFound(format!(
            "'{other}' is not a query service call"
        ))),
    };
    result.unwrap_or_else(failure)
}

/// The job `jobid` names, when it is the caller's (otherwise it does not exist for them).
fn owned_job(state: &AppState, caller: &Caller, f: &HashMap<String, String>) -> Result<Job> {
    let id = f
        .get("jobid")
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::Usage("the call needs a jobid".into()))?;
    let job = state.jobs.get(id)?;
    if job.owner.as_deref() != caller.user()? {
        return Err(Error::NotFound(format!("no job '{id}'")));
    }
    Ok(job)
}

async fn query(
    state: &AppState,
    caller: &Caller,
    peer: SocketAddr,
    f: &HashMap<String, String>,
    timeout_s: Option<f64>,
) -> Result<Response> {
    caller.allows(Scope::ReadCatalogs)?;
    let (lang, text) = match (f.get("sql"), f.get("adql")) {
        (Some(q), _) if !q.trim().is_empty() => ("SQL", q),
        (_, Some(q)) if !q.trim().is_empty() => ("ADQL", q),
        _ => return Err(Error::Usage("give the query as sql=... or adql=...".into())),
    };
    let text = crate::mydb::rewrite(text);
    let out = f
        .get("out")
        .map(String::as_str)
        .filter(|o| !o.is_empty() && *o != "None");
    let mydb_out = out.and_then(|o| o.strip_prefix("mydb://"));
    if let Some(o) = out.filter(|o| o.contains("://") && !o.starts_with("mydb://")) {
        return Err(Error::Usage(format!(
            "out={o}: saving results to VOSpace is not offered by this service yet; use \
             out=mydb://<table> or leave out unset to receive the result"
        )));
    }
    let format = format_name(f.get("ofmt").map(String::as_str).unwrap_or("csv"))?;
    // Data Lab answers with every row; the service's own ceiling still applies.
    let params = Params::from_pairs(vec![
        ("LANG".into(), lang.into()),
        ("QUERY".into(), text),
        ("FORMAT".into(), format.into()),
        ("MAXREC".into(), state.limits.max_maxrec.to_string()),
    ]);
    let is_async = f
        .get("async")
        .is_some_and(|a| a.eq_ignore_ascii_case("true"));
    if let Some(table) = mydb_out {
        // Kept as a MyDB table, synchronously; the client answers "OK" whatever the body.
        let user = caller.identity()?.user.clone();
        caller.allows(Scope::WriteStorage)?;
        let replace = f
            .get("drop")
            .is_some_and(|d| d.eq_ignore_ascii_case("true"));
        let spec = QuerySpec::from_params(&params, &state.limits)?;
        let rows =
            crate::mydb::save(&state.engine, &state.mydb, &user, &spec, table, replace).await?;
        return Ok(plain(format!("OK: {rows} rows written to mydb://{table}")));
    }
    if is_async {
        caller.allows(Scope::RunJobs)?;
        let owner = caller.user()?.map(str::to_string);
        if owner.is_none() && !state.auth.anonymous_jobs {
            caller.identity()?;
        }
        // Checked now, so that a bad query fails here rather than in the job.
        QuerySpec::from_params(&params, &state.limits)?;
        let job = state.jobs.create(NewJob {
            run_id: None,
            client: owner.clone().unwrap_or_else(|| peer.ip().to_string()),
            owner,
            parameters: params.pairs().to_vec(),
        })?;
        state.jobs.run(&job.id)?;
        tracing::info!(job = %job.id, "data lab async query");
        return Ok(plain(job.id));
    }
    let spec = QuerySpec::from_params(&params, &state.limits)?;
    let mut limit_s = state.limits.sync_timeout_s as f64;
    if let Some(t) = timeout_s.filter(|t| *t > 0.0) {
        limit_s = limit_s.min(t);
    }
    let req = DaliRequest {
        params,
        files: Vec::new(),
    };
    run_streaming(
        state,
        &req,
        caller.user()?,
        spec,
        std::time::Duration::from_secs_f64(limit_s),
    )
    .await
}

/// A completed job's result file, as the body; the client reads it whatever the status.
async fn results(state: &AppState, job: &Job) -> Result<Response> {
    let r = job
        .results
        .first()
        .filter(|_| job.phase == Phase::Completed)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "job {} is {} and has no result yet",
                job.id,
                job.phase.as_str()
            ))
        })?;
    let path = state.jobs.job_dir(&job.id).join(&r.file);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Error::NotFound(format!("result of job {}: {e}", job.id)))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    Ok(([(header::CONTENT_TYPE, r.mime_type.clone())], body).into_response())
}

/// `profiles`: one profile, `default`, for this service.
fn profiles(state: &AppState, f: &HashMap<String, String>) -> Response {
    match f
        .get("profile")
        .map(String::as_str)
        .filter(|p| !p.is_empty())
    {
        None => plain("default"),
        Some("default") => {
            let base = state.public_url.clone().unwrap_or_default();
            (
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::json!({
                    "accessURL": format!("{base}/tap"),
                    "description": "Meridian's catalogs",
                    "database": "meridian",
                    "vosRoot": "vos://",
                    "type": "meridian",
                })
                .to_string(),
            )
                .into_response()
        }
        Some(other) => (
            StatusCode::NOT_FOUND,
            format!("Error: no profile '{other}'; the only profile is 'default'"),
        )
            .into_response(),
    }
}

/// `list`: with no table, the caller's MyDB tables one per line; with one, its columns as
/// `name,type` lines.
async fn mydb_list(
    state: &AppState,
    caller: &Caller,
    f: &HashMap<String, String>,
) -> Result<Response> {
    let user = caller.identity()?.user.clone();
    let table =
        meridian_services::mydb::strip_scheme(f.get("table").map(String::as_str).unwrap_or(""));
    if table.is_empty() {
        let names: Vec<String> = state
            .mydb
            .list(&user)?
            .into_iter()
            .map(|t| t.name)
            .collect();
        return Ok(plain(names.join("\n")));
    }
    if !state.mydb.exists(&user, table)? {
        return Ok(plain(format!("relation \"{table}\" not known")));
    }
    let provider = state
        .engine
        .parquet_table(&state.mydb.path(&user, table)?)
        .await?;
    let lines: Vec<String> = provider
        .schema()
        .fields()
        .iter()
        .map(|c| format!("{},{}", c.name(), c.data_type()))
        .collect();
    Ok(plain(lines.join("\n")))
}

/// `rename` and `copy` (`source`, `target`) and `truncate` (`table`, emptied with its
/// columns kept).
async fn mydb_change(
    state: &AppState,
    caller: &Caller,
    call: &str,
    f: &HashMap<String, String>,
) -> Result<Response> {
    use meridian_services::mydb::strip_scheme;
    let user = caller.identity()?.user.clone();
    caller.allows(Scope::WriteStorage)?;
    let arg = |k: &str| strip_scheme(f.get(k).map(String::as_str).unwrap_or("")).to_string();
    match call {
        "rename" => state.mydb.rename(&user, &arg("source"), &arg("target"))?,
        "copy" => state.mydb.copy(&user, &arg("source"), &arg("target"))?,
        _ => {
            let table = arg("table");
            if !state.mydb.exists(&user, &table)? {
                return Err(Error::Services(meridian_services::Error::NotFound(
                    format!("relation \"{table}\" not known"),
                )));
            }
            let params = Params::from_pairs(vec![
                ("LANG".into(), "SQL".into()),
                (
                    "QUERY".into(),
                    format!("SELECT * FROM mydb.{table} LIMIT 0"),
                ),
            ]);
            let spec = QuerySpec::from_params(&params, &state.limits)?;
            crate::mydb::save(&state.engine, &state.mydb, &user, &spec, &table, true).await?;
        }
    }
    Ok(plain("OK"))
}
