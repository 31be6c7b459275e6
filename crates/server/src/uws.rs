//! TAP asynchronous queries: the UWS 1.1 REST binding of [`meridian_services::jobs`] at
//! `/tap/async`, and the runner that executes a TAP job into a result file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::FutureExt;
use futures::future::BoxFuture;
use meridian_formats::write::{ResultWriter, xml_escape};
use meridian_services::accounts::Scope;
use meridian_services::jobs::{
    ErrorSummary, Job, JobResult, ListFilter, NewJob, Phase, Runner, format_time, parse_time,
};

use crate::auth::Caller;
use crate::error::{Error, Result, error_votable};
use crate::params::{DaliRequest, Params};
use crate::result::write_stream;
use crate::tap::{QuerySpec, plan};
use crate::upload;
use crate::vosi::{base_url, xml};
use crate::{AppState, text};

const UWS_NS: &str = "xmlns:uws=\"http://www.ivoa.net/xml/UWS/v1.0\" \
     xmlns:xlink=\"http://www.w3.org/1999/xlink\" \
     xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\"";

/// Parameters that steer the job itself rather than being job parameters.
const CONTROL: &[&str] = &["PHASE", "ACTION", "RUNID", "WAIT"];

/// Executes TAP jobs: the query of the job's parameters, its uploads from the job's
/// directory, the result written to `result.<ext>` there (through a temporary file).
pub struct TapRunner {
    /// The engine queries run on.
    pub engine: Arc<meridian_engine::Engine>,
    /// Row limits.
    pub limits: Arc<crate::Limits>,
    /// Users' tables, which their jobs see as `mydb.<name>`.
    pub mydb: Arc<meridian_services::mydb::MyDb>,
    /// Users and their groups (a job sees its owner's groups' tables).
    pub accounts: Arc<meridian_services::accounts::Accounts>,
    /// The registered images, for SODA cutout jobs.
    pub images: Arc<crate::images::ImageService>,
}

impl Runner for TapRunner {
    fn run(
        &self,
        job: Job,
        dir: PathBuf,
    ) -> BoxFuture<'static, Result<Vec<JobResult>, ErrorSummary>> {
        let params = Params::from_pairs(job.parameters.clone());
        if params
            .get("REQUEST")
            .is_some_and(|r| r == crate::soda::JOB_REQUEST)
        {
            let images = self.images.clone();
            return async move {
                let ran = tokio::task::spawn_blocking(move || {
                    crate::soda::run_job(&images, &params, &dir)
                })
                .await
                .map_err(|e| Error::Internal(format!("cutout job: {e}")))
                .and_then(|r| r);
                match ran {
                    Ok((file, size_bytes)) => Ok(vec![JobResult {
                        id: "result".into(),
                        file,
                        mime_type: "application/fits".into(),
                        size_bytes,
                        rows: None,
                    }]),
                    Err(e) if e.status().is_server_error() => {
                        Err(ErrorSummary::transient(e.message()))
                    }
                    Err(e) => Err(ErrorSummary::fatal(e.message())),
                }
            }
            .boxed();
        }
        let engine = self.engine.clone();
        let limits = self.limits.clone();
        let mydb = self.mydb.clone();
        let groups = job
            .owner
            .as_deref()
            .and_then(|o| self.accounts.groups_of(o).ok())
            .unwrap_or_default()
            .into_iter()
            .map(|(g, _)| g)
            .collect::<Vec<_>>();
        async move {
            run_query(&engine, &limits, &mydb, &groups, &job, &dir)
                .await
                .map_err(|e| match e {
                    Error::Timeout(_) => ErrorSummary::transient(e.message()),
                    e if e.status().is_server_error() => ErrorSummary::transient(e.message()),
                    e => ErrorSummary::fatal(e.message()),
                })
        }
        .boxed()
    }
}

async fn run_query(
    engine: &Arc<meridian_engine::Engine>,
    limits: &crate::Limits,
    mydb: &meridian_services::mydb::MyDb,
    groups: &[String],
    job: &Job,
    dir: &std::path::Path,
) -> Result<Vec<JobResult>> {
    let params = Params::from_pairs(job.parameters.clone());
    let spec = QuerySpec::from_params(&params, limits)?;
    let uploads = upload::stored(&params, dir, limits)?;
    let engine = upload::with_uploads(engine, uploads, limits).await?;
    let engine =
        crate::mydb::engine_for(&engine, mydb, job.owner.as_deref(), groups, &spec.query).await?;
    let (schema, stream) = plan(&engine, &spec).await?;
    let file = format!("result.{}", spec.format.extension);
    let path = dir.join(&file);
    let mut writer = ResultWriter::create(spec.format.output, &path, &schema)?;
    writer.set_maxrec(spec.maxrec);
    let rows = write_stream(writer, stream).await?;
    let size_bytes = std::fs::metadata(&path)
        .map_err(|e| Error::Usage(format!("result file: {e}")))?
        .len();
    Ok(vec![JobResult {
        id: "result".into(),
        file,
        mime_type: spec.format.media_type.to_string(),
        size_bytes,
        rows: Some(rows),
    }])
}

fn jobs_url(state: &AppState, headers: &HeaderMap) -> String {
    format!("{}/tap/async", base_url(state, headers))
}

fn see_other(location: String) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

/// 303 to job `id`'s resource, where UWS sends a client after a change to the job.
pub(crate) fn to_job(state: &AppState, headers: &HeaderMap, id: &str) -> Response {
    see_other(format!("{}/{id}", jobs_url(state, headers)))
}

/// The job parameters of a request: all but those that steer the job itself.
fn job_parameters(params: &Params) -> Vec<(String, String)> {
    params
        .pairs()
        .iter()
        .filter(|(k, _)| !CONTROL.iter().any(|c| c.eq_ignore_ascii_case(k)))
        .cloned()
        .collect()
}

/// The UWS `job` document.
fn job_xml(job: &Job, url: &str) -> String {
    let mut o = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    o += &format!("<uws:job {UWS_NS} version=\"1.1\">\n");
    o += &format!("  <uws:jobId>{}</uws:jobId>\n", xml_escape(&job.id));
    if let Some(r) = &job.run_id {
        o += &format!("  <uws:runId>{}</uws:runId>\n", xml_escape(r));
    }
    match &job.owner {
        Some(owner) => o += &format!("  <uws:ownerId>{}</uws:ownerId>\n", xml_escape(owner)),
        None => o += "  <uws:ownerId xsi:nil=\"true\"/>\n",
    }
    o += &format!("  <uws:phase>{}</uws:phase>\n", job.phase.as_str());
    o += "  <uws:quote xsi:nil=\"true\"/>\n";
    o += &format!(
        "  <uws:creationTime>{}</uws:creationTime>\n",
        format_time(job.creation_ms)
    );
    for (name, t) in [("startTime", job.start_ms), ("endTime", job.end_ms)] {
        match t {
            Some(t) => o += &format!("  <uws:{name}>{}</uws:{name}>\n", format_time(t)),
            None => o += &format!("  <uws:{name} xsi:nil=\"true\"/>\n"),
        }
    }
    o += &format!(
        "  <uws:executionDuration>{}</uws:executionDuration>\n",
        job.execution_duration_s
    );
    o += &format!(
        "  <uws:destruction>{}</uws:destruction>\n",
        format_time(job.destruction_ms)
    );
    o += &parameters_xml(job, false);
    o += &results_xml(job, url, false);
    if let Some(e) = &job.error {
        o += &format!(
            "  <uws:errorSummary type=\"{}\" hasDetail=\"true\">\n    <uws:message>{}</uws:message>\n  </uws:errorSummary>\n",
            match e.kind {
                meridian_services::jobs::ErrorKind::Fatal => "fatal",
                meridian_services::jobs::ErrorKind::Transient => "transient",
            },
            xml_escape(&e.message)
        );
    }
    o += "</uws:job>\n";
    o
}

fn parameters_xml(job: &Job, standalone: bool) -> String {
    let mut o = String::new();
    if standalone {
        o += &format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<uws:parameters {UWS_NS}>\n");
    } else {
        o += "  <uws:parameters>\n";
    }
    for (k, v) in &job.parameters {
        match v.strip_prefix(upload::STORED_PREFIX) {
            // An inline upload's content lives in the job's directory.
            Some(file) => {
                o += &format!(
                    "    <uws:parameter id=\"{}\" byReference=\"true\">{}</uws:parameter>\n",
                    xml_escape(k),
                    xml_escape(file)
                )
            }
            None => {
                o += &format!(
                    "    <uws:parameter id=\"{}\">{}</uws:parameter>\n",
                    xml_escape(&k.to_ascii_lowercase()),
                    xml_escape(v)
                )
            }
        }
    }
    o += if standalone {
        "</uws:parameters>\n"
    } else {
        "  </uws:parameters>\n"
    };
    o
}

fn results_xml(job: &Job, url: &str, standalone: bool) -> String {
    let mut o = String::new();
    if standalone {
        o += &format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<uws:results {UWS_NS}>\n");
    } else {
        o += "  <uws:results>\n";
    }
    if job.phase == Phase::Completed {
        for r in &job.results {
            o += &format!(
                "    <uws:result id=\"{}\" xlink:type=\"simple\" xlink:href=\"{}/{}/results/{}\" size=\"{}\" mime-type=\"{}\"/>\n",
                xml_escape(&r.id),
                xml_escape(url),
                xml_escape(&job.id),
                xml_escape(&r.id),
                r.size_bytes,
                xml_escape(&r.mime_type)
            );
        }
    }
    o += if standalone {
        "</uws:results>\n"
    } else {
        "  </uws:results>\n"
    };
    o
}

/// Middleware of a job's resources: a job that is not the caller's is answered as if it
/// did not exist, so that job ids cannot be probed. Anonymous callers share the anonymous
/// jobs. Changing a job needs the `jobs:run` scope.
pub async fn owner_only(
    State(state): State<AppState>,
    Path(path): Path<std::collections::HashMap<String, String>>,
    Extension(caller): Extension<Caller>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Result<Response> {
    let id = path.get("id").map(String::as_str).unwrap_or_default();
    owned_job(&state, &caller, id)?;
    // Reading a job needs no scope; changing it (phase, parameters, times, deletion) is
    // running jobs, as creating one is.
    if !matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        caller.allows(Scope::RunJobs)?;
    }
    Ok(next.run(req).await)
}

/// Job `id` when it is the caller's; another's is answered as if it did not exist.
pub(crate) fn owned_job(state: &AppState, caller: &Caller, id: &str) -> Result<Job> {
    let job = state.jobs.get(id)?;
    if job.owner.as_deref() != caller.user()? {
        return Err(Error::NotFound(format!("no job '{id}'")));
    }
    Ok(job)
}

/// A new PENDING job of the caller's with `parameters`: refused without the `jobs:run`
/// scope, and for anonymous callers unless the service lets them run jobs.
pub(crate) fn new_job(
    state: &AppState,
    caller: &Caller,
    peer: SocketAddr,
    run_id: Option<String>,
    parameters: Vec<(String, String)>,
) -> Result<Job> {
    caller.allows(Scope::RunJobs)?;
    let owner = caller.user()?.map(str::to_string);
    if owner.is_none() && !state.auth.anonymous_jobs {
        caller.identity()?; // 401: log in first
    }
    Ok(state.jobs.create(NewJob {
        run_id,
        // Per-client limits count a user's jobs together, wherever they come from.
        client: owner.clone().unwrap_or_else(|| peer.ip().to_string()),
        owner,
        parameters,
    })?)
}

/// The caller's jobs a list request asks for: PHASE (any number), AFTER and LAST.
fn list_filter(caller: &Caller, req: &DaliRequest) -> Result<ListFilter> {
    let mut filter = ListFilter {
        owner: Some(caller.user()?.map(str::to_string)),
        ..ListFilter::default()
    };
    for v in req.params.all("PHASE") {
        filter.phases.push(
            Phase::parse(v)
                .ok_or_else(|| Error::Usage(format!("PHASE '{v}' is not a UWS phase")))?,
        );
    }
    if let Some(a) = req.params.get("AFTER") {
        filter.after_ms = Some(
            parse_time(a)
                .ok_or_else(|| Error::Usage(format!("AFTER '{a}' is not an ISO 8601 time")))?,
        );
    }
    if let Some(n) = req.params.get("LAST") {
        filter.last = Some(
            n.trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| Error::Usage(format!("LAST '{n}' is not a positive integer")))?,
        );
    }
    Ok(filter)
}

/// `GET /api/jobs` (PHASE, AFTER, LAST as for the UWS list): the caller's jobs in one JSON
/// document, with what a person looks for in a list (phase, times, query, rows, error),
/// so that a client does not fetch every job's document.
pub async fn list_json(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: DaliRequest,
) -> Result<Response> {
    let filter = list_filter(&caller, &req)?;
    let time = |t: Option<i64>| t.map(format_time);
    let jobs: Vec<serde_json::Value> = state
        .jobs
        .list(&filter)?
        .into_iter()
        .map(|job| {
            serde_json::json!({
                "id": job.id,
                "runId": job.run_id,
                "phase": job.phase.as_str(),
                "created": format_time(job.creation_ms),
                "started": time(job.start_ms),
                "ended": time(job.end_ms),
                "query": job.parameter("QUERY"),
                "lang": job.parameter("LANG"),
                "maxrec": job.parameter("MAXREC"),
                "error": job.error.as_ref().map(|e| e.message.clone()),
                "results": job.results.iter().map(|r| serde_json::json!({
                    "id": r.id,
                    "size": r.size_bytes,
                    "mime": r.mime_type,
                    "rows": r.rows,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(axum::Json(jobs).into_response())
}

/// `GET /tap/async`: the caller's jobs, filtered by PHASE (repeatable), AFTER and LAST.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    let filter = list_filter(&caller, &req)?;
    let url = jobs_url(&state, &headers);
    let mut o = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<uws:jobs {UWS_NS} version=\"1.1\">\n"
    );
    for job in state.jobs.list(&filter)? {
        o += &format!(
            "  <uws:jobref id=\"{id}\" xlink:type=\"simple\" xlink:href=\"{url}/{id}\">\n    <uws:phase>{}</uws:phase>\n",
            job.phase.as_str(),
            id = xml_escape(&job.id),
            url = xml_escape(&url),
        );
        if let Some(r) = &job.run_id {
            o += &format!("    <uws:runId>{}</uws:runId>\n", xml_escape(r));
        }
        match &job.owner {
            Some(owner) => o += &format!("    <uws:ownerId>{}</uws:ownerId>\n", xml_escape(owner)),
            None => o += "    <uws:ownerId xsi:nil=\"true\"/>\n",
        }
        o += &format!(
            "    <uws:creationTime>{}</uws:creationTime>\n  </uws:jobref>\n",
            format_time(job.creation_ms)
        );
    }
    o += "</uws:jobs>\n";
    Ok(xml(o))
}

/// `POST /tap/async`: creates a job from the request's parameters and inline uploads,
/// queues it at once with PHASE=RUN, and redirects to it.
pub async fn create(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    let jobs = &state.jobs;
    let run = run_on_create(&req.params)?;
    let job = new_job(
        &state,
        &caller,
        peer,
        req.params.get("RUNID").map(str::to_string),
        job_parameters(&req.params),
    )?;
    // Inline uploads are kept with the job, so that it can run (again) after a restart,
    // within what one client's jobs may keep.
    let stored = jobs
        .check_upload(&job.client, upload_bytes(&req.files))
        .map_err(Error::from)
        .and_then(|()| upload::store(&req.files, &jobs.job_dir(&job.id), &state.limits));
    match stored {
        Ok(refs) if !refs.is_empty() => {
            jobs.set_parameters(&job.id, &refs)?;
        }
        Ok(_) => {}
        Err(e) => {
            let _ = jobs.delete(&job.id);
            return Err(e);
        }
    }
    tracing::info!(job = %job.id, run, "job created");
    if run {
        jobs.run(&job.id)?;
    }
    Ok(to_job(&state, &headers, &job.id))
}

/// Whether a job's creation asks to start it (PHASE=RUN); another PHASE is refused.
pub(crate) fn run_on_create(params: &Params) -> Result<bool> {
    match params.get("PHASE") {
        None => Ok(false),
        Some(p) if p.eq_ignore_ascii_case("RUN") => Ok(true),
        Some(p) => Err(Error::Usage(format!(
            "PHASE '{p}' cannot be given when creating a job; use RUN or leave it out"
        ))),
    }
}

/// Bytes of a request's inline uploads.
fn upload_bytes(files: &[(String, Option<String>, axum::body::Bytes)]) -> u64 {
    files.iter().map(|(_, _, data)| data.len() as u64).sum()
}

/// `GET /tap/async/{id}`: the job, after a blocking WAIT when asked.
pub async fn job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    let jobs = &state.jobs;
    let job = match req.params.get("WAIT") {
        None => jobs.get(&id)?,
        Some(w) => {
            let secs: i64 = w
                .trim()
                .parse()
                .map_err(|_| Error::Usage(format!("WAIT '{w}' is not an integer")))?;
            let phase = match req.params.get("PHASE") {
                Some(p) => Some(
                    Phase::parse(p)
                        .ok_or_else(|| Error::Usage(format!("PHASE '{p}' is not a UWS phase")))?,
                ),
                None => None,
            };
            // WAIT=-1 waits as long as the service allows.
            let timeout = if secs < 0 {
                Duration::MAX
            } else {
                Duration::from_secs(secs as u64)
            };
            jobs.wait(&id, phase, timeout).await?
        }
    };
    Ok(xml(job_xml(&job, &jobs_url(&state, &headers))))
}

/// `POST /tap/async/{id}`: ACTION=DELETE destroys the job; PHASE, DESTRUCTION and
/// EXECUTIONDURATION act as on their own resources; other parameters update a PENDING job.
pub async fn post_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    let jobs = &state.jobs;
    let url = jobs_url(&state, &headers);
    if let Some(a) = req.params.get("ACTION") {
        if a.eq_ignore_ascii_case("DELETE") {
            jobs.delete(&id)?;
            return Ok(see_other(url));
        }
        return Err(Error::Usage(format!(
            "ACTION '{a}' is not supported; use ACTION=DELETE"
        )));
    }
    jobs.get(&id)?;
    let mut updates = Vec::new();
    for (k, v) in req.params.pairs() {
        match k.to_ascii_uppercase().as_str() {
            "PHASE" => change_phase(&state, &id, v)?,
            "DESTRUCTION" => set_destruction(&state, &id, v)?,
            "EXECUTIONDURATION" => set_duration(&state, &id, v)?,
            "RUNID" | "WAIT" => {}
            _ => updates.push((k.clone(), v.clone())),
        }
    }
    if !updates.is_empty() {
        jobs.set_parameters(&id, &updates)?;
    }
    Ok(see_other(format!("{url}/{id}")))
}

/// `DELETE /tap/async/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    state.jobs.delete(&id)?;
    Ok(see_other(jobs_url(&state, &headers)))
}

fn change_phase(state: &AppState, id: &str, phase: &str) -> Result<()> {
    let jobs = &state.jobs;
    match phase.trim().to_ascii_uppercase().as_str() {
        "RUN" => jobs.run(id).map(drop)?,
        "ABORT" => jobs.abort(id).map(drop)?,
        other => {
            return Err(Error::Usage(format!(
                "PHASE '{other}' cannot be requested; use RUN or ABORT"
            )));
        }
    }
    Ok(())
}

fn set_destruction(state: &AppState, id: &str, value: &str) -> Result<()> {
    let at = parse_time(value)
        .ok_or_else(|| Error::Usage(format!("DESTRUCTION '{value}' is not an ISO 8601 time")))?;
    state.jobs.set_destruction(id, at)?;
    Ok(())
}

fn set_duration(state: &AppState, id: &str, value: &str) -> Result<()> {
    let s = value.trim().parse::<u64>().map_err(|_| {
        Error::Usage(format!(
            "EXECUTIONDURATION '{value}' is not a whole number of seconds"
        ))
    })?;
    state.jobs.set_execution_duration(id, s)?;
    Ok(())
}

/// `GET /tap/async/{id}/phase`.
pub async fn phase(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    Ok(text(state.jobs.get(&id)?.phase.as_str().to_string()))
}

/// `POST /tap/async/{id}/phase`: PHASE=RUN or PHASE=ABORT.
pub async fn post_phase(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    change_phase(&state, &id, req.params.required("PHASE")?)?;
    Ok(to_job(&state, &headers, &id))
}

/// `GET /tap/async/{id}/executionduration`.
pub async fn execution_duration(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response> {
    Ok(text(state.jobs.get(&id)?.execution_duration_s.to_string()))
}

/// `POST /tap/async/{id}/executionduration`.
pub async fn post_execution_duration(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    set_duration(&state, &id, req.params.required("EXECUTIONDURATION")?)?;
    Ok(to_job(&state, &headers, &id))
}

/// `GET /tap/async/{id}/destruction`.
pub async fn destruction(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response> {
    Ok(text(format_time(state.jobs.get(&id)?.destruction_ms)))
}

/// `POST /tap/async/{id}/destruction`.
pub async fn post_destruction(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    set_destruction(&state, &id, req.params.required("DESTRUCTION")?)?;
    Ok(to_job(&state, &headers, &id))
}

/// `GET /tap/async/{id}/quote`: the service does not predict completion times, so the
/// quote is empty (UWS: "don't know").
pub async fn quote(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    state.jobs.get(&id)?;
    Ok(text(String::new()))
}

/// `GET /tap/async/{id}/owner`: empty for an anonymous job.
pub async fn owner(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    Ok(text(state.jobs.get(&id)?.owner.unwrap_or_default()))
}

/// `GET /tap/async/{id}/error`: the DALI error document of a failed job.
pub async fn error(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    let job = state.jobs.get(&id)?;
    let message = match (&job.error, job.phase) {
        (Some(e), _) => e.message.clone(),
        (None, Phase::Aborted) => "the job was aborted".to_string(),
        _ => {
            return Err(Error::NotFound(format!(
                "job {id} is {} and has no error",
                job.phase.as_str()
            )));
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/x-votable+xml")],
        error_votable(&message),
    )
        .into_response())
}

/// `GET /tap/async/{id}/parameters`.
pub async fn parameters(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response> {
    Ok(xml(parameters_xml(&state.jobs.get(&id)?, true)))
}

/// `POST /tap/async/{id}/parameters`: updates a PENDING job's parameters.
pub async fn post_parameters(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    let jobs = &state.jobs;
    jobs.set_parameters(&id, &job_parameters(&req.params))?;
    if !req.files.is_empty() {
        jobs.check_upload(&jobs.get(&id)?.client, upload_bytes(&req.files))?;
        let refs = upload::store(&req.files, &jobs.job_dir(&id), &state.limits)?;
        jobs.set_parameters(&id, &refs)?;
    }
    Ok(to_job(&state, &headers, &id))
}

/// `GET /tap/async/{id}/results`.
pub async fn results(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response> {
    let job = state.jobs.get(&id)?;
    Ok(xml(results_xml(&job, &jobs_url(&state, &headers), true)))
}

/// `GET /tap/async/{id}/results/{name}`: the result file, streamed from disk.
pub async fn result(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response> {
    result_file(&state, &state.jobs.get(&id)?, &name).await
}

/// Result `name` of `job` once the job is COMPLETED (404 before, or for another name).
pub(crate) fn completed_result<'a>(
    job: &'a Job,
    name: &str,
) -> Result<&'a meridian_services::jobs::JobResult> {
    job.results
        .iter()
        .find(|r| r.id == name)
        .filter(|_| job.phase == Phase::Completed)
        .ok_or_else(|| {
            Error::NotFound(format!(
                "job {} ({}) has no result '{name}'",
                job.id,
                job.phase.as_str()
            ))
        })
}

/// Result `name` of `job`, streamed from disk with its length, once the job is COMPLETED.
pub(crate) async fn result_file(state: &AppState, job: &Job, name: &str) -> Result<Response> {
    let id = &job.id;
    let r = completed_result(job, name)?;
    let path = state.jobs.job_dir(id).join(&r.file);
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Error::NotFound(format!("result '{name}' of job {id}: {e}")))?;
    let len = file.metadata().await.map(|m| m.len()).ok();
    state.metrics.add_bytes_out(len.unwrap_or(0));
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 1 << 20));
    let mut response = ([(header::CONTENT_TYPE, r.mime_type.clone())], body).into_response();
    if let Some(len) = len {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, len.into());
    }
    Ok(response)
}
