//! Data Lab's query service on the wire, for the unmodified `astro-datalab` queryClient:
//! `/query/query` (synchronous, or asynchronous with `async=True`), `/query/status`,
//! `/query/results`, `/query/error`, `/query/abort`, `/query/profiles`, and the MyDB calls
//! `/query/list`, `/query/delete`, `/query/rename`, `/query/copy`, `/query/truncate` and
//! `/query/import` (with `out=mydb://<table>` on queries, and uploads staged by
//! `/storage/xfer`), as
//! ../shared/specs/datalab-clients-wire.md describes them. Queries run exactly as TAP
//! queries do (same planner, limits and result writers); asynchronous ones are UWS jobs of
//! the caller, visible through `/tap/async` too.
//!
//! Answers are plain text; failures are non-200 answers whose body starts with `Error: `,
//! which the client raises as `queryClientError`.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use meridian_services::accounts::Scope;
use meridian_services::jobs::{Job, Phase};

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::params::{DaliRequest, Params, query_fields};
use crate::tap::{QuerySpec, run_streaming};
use crate::uws::{new_job, result_file};
use crate::{AppState, text, text_with};

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

/// `Error: <message>` with the status the error calls for.
fn failure(e: Error) -> Response {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!(%status, error = %e, "data lab call failed");
    }
    text_with(status, format!("Error: {}", e.message()))
}

/// `GET /query`: liveness.
pub async fn alive() -> Response {
    text("Hello World! This is the Meridian query service.")
}

/// `GET /query/{call}`: the queryClient's calls.
pub async fn call(
    State(state): State<AppState>,
    axum::extract::Path(call): axum::extract::Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    let f = query_fields(req.uri());
    let req_headers = req.headers().clone();
    let timeout_s = req
        .headers()
        .get("x-dl-timeoutrequest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok());
    let result = match call.as_str() {
        "query" => query(&state, &caller, peer, &f, timeout_s).await,
        "status" => owned_job(&state, &caller, &f).map(|j| text(j.phase.as_str())),
        // The client reads the body whatever the status.
        "results" => match owned_job(&state, &caller, &f) {
            Ok(job) => result_file(&state, &job, "result").await,
            Err(e) => Err(e),
        },
        "error" => owned_job(&state, &caller, &f).map(|job| {
            text(match (&job.error, job.phase) {
                (Some(e), _) => format!("Error: {}", e.message),
                (None, Phase::Aborted) => "Error: the job was aborted".to_string(),
                (None, p) => format!("job {} is {} and has no error", job.id, p.as_str()),
            })
        }),
        "abort" => owned_job(&state, &caller, &f)
            .and_then(|job| {
                caller.allows(Scope::RunJobs)?;
                Ok(state.jobs.abort(&job.id)?)
            })
            .map(|_| text("OK")),
        "profiles" => Ok(profiles(&state, &f)),
        "schema" => schema_text(&state, f.get("value").map(String::as_str).unwrap_or("")),
        "list" => mydb_list(&state, &caller, &f).await,
        "rename" | "copy" | "truncate" => mydb_change(&state, &caller, &call, &f).await,
        "import" => mydb_import(&state, &caller, &f, false).await,
        // mydb_insert: rows of a staged file appended to a table (made by mydb_create).
        "ingest" => mydb_import(&state, &caller, &f, true).await,
        "create" => mydb_create(&state, &caller, &f).await,
        // Positions are indexed (HATS) whenever a table changes, and Parquet keeps
        // per-column statistics: there is nothing more to build.
        "index" => caller.user_with(Scope::WriteStorage).and_then(|user| {
            let table = f
                .get("tbl")
                .or(f.get("table"))
                .map(String::as_str)
                .unwrap_or("");
            state
                .mydb
                .existing(user, meridian_services::mydb::strip_scheme(table))?;
            Ok(text("OK"))
        }),
        "flush" => Ok(text("OK")),
        "services" => Ok(services(&state, &req_headers)),
        "delete" => mydb_drop(&state, &caller, &f).await,
        other => Err(Error::NotFound(format!(
            "'{other}' is not a query service call"
        ))),
    };
    result.unwrap_or_else(failure)
}

/// Data Lab's (PostgreSQL's) column type names as the readers' type names.
fn column_type(pg: &str) -> Result<&'static str> {
    let t = pg.trim().to_ascii_lowercase();
    let base = t.split('(').next().unwrap_or("").trim();
    Ok(match base {
        "text" | "varchar" | "character varying" | "char" | "character" | "string" | "date"
        | "timestamp" | "timestamptz" | "time" => "string",
        "smallint" | "int2" => "int16",
        "integer" | "int" | "int4" => "int32",
        "bigint" | "int8" | "long" => "int64",
        "real" | "float4" | "float" => "float32",
        "double precision" | "double" | "float8" | "numeric" | "decimal" => "float64",
        "boolean" | "bool" => "bool",
        _ => {
            return Err(Error::Usage(format!(
                "column type '{pg}' is not offered; use text, smallint, integer, bigint, real, \
                 double precision or boolean"
            )));
        }
    })
}

/// `col,type` lines (or `col type` items separated by commas or newlines) as column types.
fn parse_columns(text: &str) -> Result<Vec<(String, &'static str)>> {
    let pairs: Vec<&str> = text.split(',').map(str::trim).collect();
    let items: Vec<&str> = if !text.contains('\n') && pairs.iter().all(|p| p.contains(' ')) {
        pairs
    } else {
        text.lines().collect()
    };
    let mut out = Vec::new();
    // `col,type` on one line each, or `col type, col type`.
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        let (name, ty) = item
            .split_once(',')
            .or_else(|| item.split_once(char::is_whitespace))
            .ok_or_else(|| Error::Usage(format!("column '{item}' has no type")))?;
        let name = name.trim().trim_matches('"');
        if name.is_empty() {
            return Err(Error::Usage(format!("column '{item}' has no name")));
        }
        out.push((name.to_string(), column_type(ty)?));
    }
    Ok(out)
}

/// `create` (mydb_create): an empty table with the given columns (`schema` as `col,type`
/// lines); `drop=True` replaces an existing one.
async fn mydb_create(
    state: &AppState,
    caller: &Caller,
    f: &HashMap<String, String>,
) -> Result<Response> {
    let user = caller.user_with(Scope::WriteStorage)?.to_string();
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let table = meridian_services::mydb::strip_scheme(get("table")).to_string();
    let target = state.mydb.path(&user, &table)?;
    let columns = parse_columns(get("schema"))?;
    if columns.is_empty() {
        return Err(Error::Usage(
            "give the columns as schema=<col,type lines>".into(),
        ));
    }
    let replace = get("drop").eq_ignore_ascii_case("true");
    if target.is_file() && !replace {
        return Err(Error::Services(meridian_services::Error::Conflict(
            format!("MyDB table '{table}' exists; drop it first or create with drop=True"),
        )));
    }
    let fields: Vec<arrow::datatypes::Field> = columns
        .iter()
        .map(|(name, ty)| {
            let t = meridian_formats::parse_type(ty)
                .ok_or_else(|| Error::Internal(format!("column type '{ty}' has no Arrow type")))?;
            Ok(arrow::datatypes::Field::new(name, t, true))
        })
        .collect::<Result<_>>()?;
    let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(fields));
    let staged = state.mydb.staging_path(&user, &table)?;
    let format = crate::tap::format(Some("parquet"))?;
    let written = meridian_formats::write::ResultWriter::create(format.output, &staged, &schema)
        .and_then(|w| w.finish());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&staged);
        return Err(e.into());
    }
    state.mydb.commit(&user, &table, &staged, true)?;
    crate::mydb::reindex(&state.mydb, &user, &table).await;
    Ok(text("OK"))
}

/// `services`: the service's endpoints, one `name<TAB>type<TAB>URL` line each.
fn services(state: &AppState, headers: &axum::http::HeaderMap) -> Response {
    let base = crate::vosi::base_url(state, headers);
    text(format!(
        "tap\ttap\t{base}/tap\nquery\tquery\t{base}/query\nauth\tauth\t{base}/auth\n\
         storage\tvos\t{base}/storage\nvospace\tvos\t{base}/vospace\n"
    ))
}

/// `delete`: drops a table and its index.
async fn mydb_drop(
    state: &AppState,
    caller: &Caller,
    f: &HashMap<String, String>,
) -> Result<Response> {
    let user = caller.user_with(Scope::WriteStorage)?;
    let table =
        meridian_services::mydb::strip_scheme(f.get("table").map(String::as_str).unwrap_or(""));
    state.mydb.drop_table(user, table)?;
    crate::mydb::reindex(&state.mydb, user, table).await;
    Ok(text("OK"))
}

/// The job `jobid` names, when it is the caller's (otherwise it does not exist for them).
fn owned_job(state: &AppState, caller: &Caller, f: &HashMap<String, String>) -> Result<Job> {
    let id = f
        .get("jobid")
        .map(String::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::Usage("the call needs a jobid".into()))?;
    crate::uws::owned_job(state, caller, id)
}

async fn query(
    state: &AppState,
    caller: &Caller,
    peer: SocketAddr,
    f: &HashMap<String, String>,
    timeout_s: Option<f64>,
) -> Result<Response> {
    caller.allows(Scope::ReadCatalogs)?;
    let (lang, raw) = match (f.get("sql"), f.get("adql")) {
        (Some(q), _) if !q.trim().is_empty() => ("SQL", q),
        (_, Some(q)) if !q.trim().is_empty() => ("ADQL", q),
        _ => return Err(Error::Usage("give the query as sql=... or adql=...".into())),
    };
    let adql_or_sql = crate::mydb::rewrite(raw);
    let out = f
        .get("out")
        .map(String::as_str)
        .filter(|o| !o.is_empty() && *o != "None");
    let mydb_out = out.and_then(|o| o.strip_prefix("mydb://"));
    let file_out = out.filter(|o| o.contains("://") && !o.starts_with("mydb://"));
    let format = format_name(f.get("ofmt").map(String::as_str).unwrap_or("csv"))?;
    // Data Lab answers with every row; the service's own ceiling still applies.
    let params = Params::from_pairs(vec![
        ("LANG".into(), lang.into()),
        ("QUERY".into(), adql_or_sql),
        ("FORMAT".into(), format.into()),
        ("MAXREC".into(), state.limits.max_maxrec.to_string()),
    ]);
    let is_async = f
        .get("async")
        .is_some_and(|a| a.eq_ignore_ascii_case("true"));
    // The client's timeout, within the service's limit for synchronous queries.
    let mut limit_s = state.limits.sync_timeout_s as f64;
    if let Some(t) = timeout_s.filter(|t| *t > 0.0) {
        limit_s = limit_s.min(t);
    }
    let limit = std::time::Duration::from_secs_f64(limit_s);
    if let Some(table) = mydb_out {
        // Kept as a MyDB table, synchronously; the client answers "OK" whatever the body.
        let user = caller.user_with(Scope::WriteStorage)?.to_string();
        let replace = f
            .get("drop")
            .is_some_and(|d| d.eq_ignore_ascii_case("true"));
        let spec = QuerySpec::from_params(&params, &state.limits)?;
        let (space, name) = crate::mydb::writable_space(state, &user, table)?;
        let groups = crate::tap::user_groups(state, Some(&user));
        let to = crate::mydb::Destination {
            user: &user,
            groups: &groups,
            space: &space,
            name: &name,
        };
        // Past the limit the write is dropped unfinished and no table appears.
        let rows = tokio::select! {
            r = crate::mydb::save(&state.engine, &state.mydb, &spec, &to, replace) => r?,
            _ = meridian_engine::deadline(limit) => return Err(Error::Timeout(limit.as_secs())),
        };
        return Ok(text(format!("OK: {rows} rows written to mydb://{table}")));
    }
    if let Some(name) = file_out {
        // Written as a file in the caller's storage, in the format asked for.
        let who = crate::storage::who(state, caller, true)?;
        let target = crate::storage::resolve(state, &who, name)?;
        let crate::storage::Target::Node(path) = target else {
            return Err(Error::Usage(format!(
                "out={name}: collections are read-only"
            )));
        };
        let spec = QuerySpec::from_params(&params, &state.limits)?;
        let user = who.user.clone().unwrap_or_default();
        let rows = tokio::select! {
            r = crate::storage::save_query(state, &who, &user, &spec, &path) => r?,
            _ = meridian_engine::deadline(limit) => return Err(Error::Timeout(limit.as_secs())),
        };
        return Ok(text(format!("OK: {rows} rows written to vos://{path}")));
    }
    if is_async {
        // Checked now, so that a bad query fails here rather than in the job.
        QuerySpec::from_params(&params, &state.limits)?;
        let job = new_job(state, caller, peer, None, params.pairs().to_vec())?;
        state.jobs.run(&job.id)?;
        tracing::info!(job = %job.id, "data lab async query");
        return Ok(text(job.id));
    }
    let spec = QuerySpec::from_params(&params, &state.limits)?;
    let req = DaliRequest {
        params,
        files: Vec::new(),
    };
    run_streaming(state, &req, caller.user()?, spec, limit).await
}

/// `profiles`: one profile, `default`, for this service.
fn profiles(state: &AppState, f: &HashMap<String, String>) -> Response {
    match f
        .get("profile")
        .map(String::as_str)
        .filter(|p| !p.is_empty())
    {
        None => text("default"),
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
        Some(other) => text_with(
            StatusCode::NOT_FOUND,
            format!("Error: no profile '{other}'; the only profile is 'default'"),
        ),
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
        return Ok(text(names.join("\n")));
    }
    if !state.mydb.exists(&user, table)? {
        return Ok(text(format!("relation \"{table}\" not known")));
    }
    let provider = state
        .engine
        .parquet_table(&state.mydb.path(&user, table)?)
        .await?;
    let lines: Vec<String> = provider
        .schema()
        .fields()
        .iter()
        .map(|c| format!("{},{}", c.name(), pg_type(c.data_type())))
        .collect();
    Ok(text(lines.join("\n")))
}

/// A column type as Data Lab (PostgreSQL) names it.
fn pg_type(t: &arrow::datatypes::DataType) -> String {
    use arrow::datatypes::DataType as D;
    match t {
        D::Boolean => "boolean".into(),
        D::Int8 | D::Int16 | D::UInt8 => "smallint".into(),
        D::Int32 | D::UInt16 => "integer".into(),
        D::Int64 | D::UInt32 | D::UInt64 => "bigint".into(),
        D::Float16 | D::Float32 => "real".into(),
        D::Float64 => "double precision".into(),
        D::Utf8 | D::LargeUtf8 | D::Utf8View => "text".into(),
        D::Binary | D::LargeBinary | D::BinaryView => "bytea".into(),
        D::Timestamp(..) => "timestamp".into(),
        D::Date32 | D::Date64 => "date".into(),
        other => other.to_string().to_ascii_lowercase(),
    }
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
    let user = caller.user_with(Scope::WriteStorage)?.to_string();
    let arg = |k: &str| strip_scheme(f.get(k).map(String::as_str).unwrap_or("")).to_string();
    match call {
        "rename" => {
            state.mydb.rename(&user, &arg("source"), &arg("target"))?;
            crate::mydb::reindex(&state.mydb, &user, &arg("source")).await;
            crate::mydb::reindex(&state.mydb, &user, &arg("target")).await;
        }
        "copy" => {
            state.mydb.copy(&user, &arg("source"), &arg("target"))?;
            crate::mydb::reindex(&state.mydb, &user, &arg("target")).await;
        }
        _ => {
            let table = arg("table");
            state.mydb.existing(&user, &table)?;
            let params = Params::from_pairs(vec![
                ("LANG".into(), "SQL".into()),
                (
                    "QUERY".into(),
                    format!("SELECT * FROM mydb.{table} LIMIT 0"),
                ),
            ]);
            let spec = QuerySpec::from_params(&params, &state.limits)?;
            let to = crate::mydb::Destination {
                user: &user,
                groups: &[],
                space: &user,
                name: &table,
            };
            crate::mydb::save(&state.engine, &state.mydb, &spec, &to, true).await?;
        }
    }
    Ok(text("OK"))
}

/// `import`: a file staged with `POST /storage/xfer` (CSV with a header line, TSV, FITS,
/// VOTable or Parquet, recognised from its content) becomes table `table`, or is appended
/// to it with `append=True` when the columns match.
async fn mydb_import(
    state: &AppState,
    caller: &Caller,
    f: &HashMap<String, String>,
    insert: bool,
) -> Result<Response> {
    use meridian_services::mydb::strip_scheme;
    let user = caller.user_with(Scope::WriteStorage)?.to_string();
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let table = strip_scheme(get("table")).to_string();
    let target = state.mydb.path(&user, &table)?;
    let mut file = get("filename").to_string();
    if file.contains("://") {
        // A file of the caller's storage (or a collection): staged like an upload.
        let who = crate::storage::who(state, caller, false)?;
        let target = crate::storage::resolve(state, &who, &file)?;
        let base = file.rsplit('/').next().unwrap_or("import").to_string();
        let staged = state.mydb.upload_path(&user, &base)?;
        crate::storage::copy_out(state, &who, &target, &staged).await?;
        file = base;
    }
    if get("csv_header").eq_ignore_ascii_case("false") {
        return Err(Error::Usage(
            "files without a header line cannot be imported: the first line must name the columns"
                .into(),
        ));
    }
    let delimiter = match get("delimiter") {
        "" | "," => None,
        "\t" | "\\t" => Some("tsv"),
        d => {
            return Err(Error::Usage(format!(
                "delimiter '{d}' is not supported; use ',' or a tab"
            )));
        }
    };
    let append = insert || get("append").eq_ignore_ascii_case("true");
    let exists = target.is_file();
    // Column types: as `schema_def` gives them, and an appended file's as the table's.
    let mut types = parse_columns(get("schema_def"))?;
    if append && exists {
        let table_schema = meridian_formats::open(&target, &Default::default())?.schema();
        for field in table_schema.fields() {
            if let Some(t) = meridian_formats::type_name(field.data_type()) {
                types.push((field.name().clone(), t));
            }
        }
    }
    if exists && !append {
        return Err(Error::Services(meridian_services::Error::Conflict(
            format!("MyDB table '{table}' exists; drop it first or import with append=True"),
        )));
    }
    let source = state.mydb.upload_path(&user, &file)?;
    if !source.is_file() {
        return Err(Error::NotFound(format!(
            "no uploaded file '{file}': upload it (POST /storage/xfer) first"
        )));
    }
    let staged = state.mydb.staging_path(&user, &table)?;
    let existing = (append && exists).then_some(target);
    let (out, upload) = (staged.clone(), source.clone());
    let rows = tokio::task::spawn_blocking(move || {
        import_file(&upload, &file, delimiter, &types, existing.as_deref(), &out)
    })
    .await
    .map_err(|e| Error::Internal(format!("import task failed: {e}")))?;
    let rows = match rows {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&staged);
            return Err(e);
        }
    };
    state.mydb.commit(&user, &table, &staged, true)?;
    crate::mydb::reindex(&state.mydb, &user, &table).await;
    // The staged upload has served its purpose; it would otherwise count against the quota.
    let _ = std::fs::remove_file(&source);
    tracing::info!(user, table, rows, "MyDB import");
    Ok(text("OK"))
}

/// Reads `source` (its format recognised from its content, or `format`) into a VO-Parquet
/// table at `out`, after the rows of `existing` when appending.
fn import_file(
    source: &std::path::Path,
    file: &str,
    format: Option<&str>,
    types: &[(String, &'static str)],
    existing: Option<&std::path::Path>,
    out: &std::path::Path,
) -> Result<u64> {
    use std::io::Read;
    let bad = |e: meridian_formats::Error| Error::Usage(format!("file '{file}': {e}"));
    let ext = match format {
        Some(f) => f,
        None => {
            let mut head = vec![0u8; 512];
            let n = std::fs::File::open(source)
                .and_then(|mut fh| fh.read(&mut head))
                .map_err(|e| Error::Usage(format!("file '{file}': {e}")))?;
            crate::upload::sniff(&head[..n])
        }
    };
    // The readers know a format by its file name: read through a link that carries it,
    // beside the upload (same file system).
    let link = source.with_file_name(format!(
        ".import-{}-{}.{ext}",
        std::process::id(),
        meridian_services::jobs::now_ms()
    ));
    std::fs::hard_link(source, &link)
        .map_err(|e| Error::Internal(format!("reading upload '{file}': {e}")))?;
    let result = (|| {
        let options = meridian_formats::ReadOptions::default();
        let mut reader = meridian_formats::open(&link, &options).map_err(bad)?;
        if !types.is_empty() {
            // Types given for the file's own columns; appended rows take the table's.
            let names: Vec<String> = reader
                .schema()
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect();
            let mut over = meridian_formats::SchemaOverride::new(Vec::new(), &link);
            for (name, ty) in types.iter().filter(|(n, _)| names.contains(n)) {
                over.force_type(name, ty);
            }
            let given = meridian_formats::ReadOptions {
                schema: Some(over),
                ..Default::default()
            };
            reader = meridian_formats::open(&link, &given).map_err(bad)?;
        }
        let schema = reader.schema();
        let format = crate::tap::format(Some("parquet"))?;
        let mut writer =
            meridian_formats::write::ResultWriter::create(format.output, out, &schema)?;
        if let Some(old) = existing {
            let previous = meridian_formats::open(old, &options)?;
            let columns = |s: &arrow::datatypes::SchemaRef| -> Vec<String> {
                s.fields()
                    .iter()
                    .map(|c| format!("{} {}", c.name(), c.data_type()))
                    .collect()
            };
            let (was, new) = (columns(&previous.schema()), columns(&schema));
            if was != new {
                return Err(Error::Usage(format!(
                    "cannot append '{file}': the table has columns ({}) and the file ({})",
                    was.join(", "),
                    new.join(", ")
                )));
            }
            for batch in previous {
                writer.write(&batch?)?;
            }
        }
        for batch in reader {
            writer.write(&batch.map_err(bad)?)?;
        }
        Ok(writer.finish()?)
    })();
    let _ = std::fs::remove_file(&link);
    result
}

/// `POST /storage/xfer`: one chunk of Data Lab's chunked upload (`X-DL-FileName`; the
/// first chunk has `X-DL-InitXfer: True` and starts the file, later ones append), staged
/// for a MyDB import (and removed by it). A file may not grow past the service's upload
/// limit, nor the user's tables and staged files past their MyDB quota.
pub async fn xfer(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let result = async {
        let user = caller.user_with(Scope::WriteStorage)?.to_string();
        let header = |k: &str| {
            headers
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let file = header("x-dl-filename");
        let init = !header("x-dl-initxfer").eq_ignore_ascii_case("false");
        let path = state.mydb.upload_path(&user, &file)?;
        if let Err(e) = state.mydb.check_room(&user, body.len() as u64) {
            // A refused chunk ends the upload: no partial file stays behind.
            let _ = std::fs::remove_file(&path);
            return Err(e.into());
        }
        let limit = state.limits.upload_max_bytes;
        tokio::task::spawn_blocking(move || -> Result<()> {
            use std::io::Write;
            let io = |e: std::io::Error| Error::Internal(format!("staging '{file}': {e}"));
            let mut fh = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(!init)
                .truncate(init)
                .open(&path)
                .map_err(io)?;
            let size = fh.metadata().map_err(io)?.len() + body.len() as u64;
            if size > limit {
                drop(fh);
                let _ = std::fs::remove_file(&path);
                return Err(Error::Usage(format!(
                    "upload '{file}' is over the limit of {limit} bytes"
                )));
            }
            fh.write_all(&body).map_err(io)
        })
        .await
        .map_err(|e| Error::Internal(format!("upload task failed: {e}")))?
    }
    .await;
    match result {
        Ok(()) => text("OK"),
        Err(e) => failure(e),
    }
}

/// `GET /storage`: liveness.
pub async fn storage_alive() -> Response {
    text("Hello World! This is the Meridian storage service.")
}

/// `schema`: with no value, the schemas; with a schema, its tables; with a table (its ADQL
/// name, or `schema.table`), its columns with type, unit and description. Plain text, one
/// item per line, as the client prints it.
fn schema_text(state: &AppState, value: &str) -> Result<Response> {
    let value = value.trim();
    let line = |name: &str, what: &str| format!("{name:<32} {what}");
    if value.is_empty() {
        let lines: Vec<String> = state
            .model
            .iter()
            .map(|s| line(&s.name, &s.description))
            .collect();
        return Ok(text(format!("Schemas:\n\n{}\n", lines.join("\n"))));
    }
    if let Some(s) = state
        .model
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(value))
    {
        let lines: Vec<String> = s
            .tables
            .iter()
            .map(|t| line(&t.name, t.description.as_deref().unwrap_or("")))
            .collect();
        return Ok(text(format!(
            "Schema: {}\n\nTables:\n{}\n",
            s.name,
            lines.join("\n")
        )));
    }
    let table = state
        .model
        .iter()
        .flat_map(|s| &s.tables)
        .find(|t| {
            t.name.eq_ignore_ascii_case(value)
                || format!("{}.{}", t.schema, t.name).eq_ignore_ascii_case(value)
        })
        .ok_or_else(|| {
            Error::NotFound(format!(
                "'{value}' is neither a schema nor a table here; schema with no value lists \
                 the schemas"
            ))
        })?;
    let lines: Vec<String> = table
        .columns
        .iter()
        .map(|c| {
            let unit = c
                .unit
                .as_deref()
                .map(|u| format!(" [{u}]"))
                .unwrap_or_default();
            line(
                &c.name,
                &format!(
                    "{}{unit}  {}",
                    c.datatype,
                    c.description.as_deref().unwrap_or("")
                ),
            )
        })
        .collect();
    Ok(text(format!(
        "Table: {}\n{}\n\nColumns:\n{}\n",
        table.name,
        table.description.as_deref().unwrap_or(""),
        lines.join("\n")
    )))
}
