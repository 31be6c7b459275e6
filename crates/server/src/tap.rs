//! TAP 1.1 synchronous queries: parameters, output formats, MAXREC, and a result that
//! streams from the engine to the socket in constant memory.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use meridian_engine::Lang;
use meridian_formats::write::{OutputFormat, ResultWriter, Serialization};

use crate::AppState;
use crate::error::{Error, Result};
use crate::params::{DaliRequest, Params};
use crate::result::{BodySink, write_stream};
use crate::upload;

/// An output format with the media type it is served as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    /// The writer.
    pub output: OutputFormat,
    /// The response's Content-Type.
    pub media_type: &'static str,
    /// File name extension of a stored result.
    pub extension: &'static str,
}

/// The output formats: (RESPONSEFORMAT values accepted, format). The first name is the
/// one advertised in the capabilities.
pub const FORMATS: &[(&[&str], Format)] = &[
    (
        &[
            "application/x-votable+xml",
            "votable",
            "application/x-votable+xml;serialization=binary2",
            "votable/b2",
            "text/xml",
        ],
        Format {
            output: OutputFormat::VoTable(Serialization::Binary2),
            media_type: "application/x-votable+xml",
            extension: "vot",
        },
    ),
    (
        &[
            "application/x-votable+xml;serialization=tabledata",
            "votable/td",
            "votabletd",
        ],
        Format {
            output: OutputFormat::VoTable(Serialization::TableData),
            media_type: "application/x-votable+xml;serialization=TABLEDATA",
            extension: "vot",
        },
    ),
    (
        &[
            "application/x-votable+xml;serialization=binary",
            "votable/b",
        ],
        Format {
            output: OutputFormat::VoTable(Serialization::Binary),
            media_type: "application/x-votable+xml;serialization=BINARY",
            extension: "vot",
        },
    ),
    (
        &["text/csv", "csv", "text/csv;header=present"],
        Format {
            output: OutputFormat::Csv,
            media_type: "text/csv;header=present",
            extension: "csv",
        },
    ),
    (
        &["text/csv;header=absent", "csv-noheader"],
        Format {
            output: OutputFormat::CsvNoHeader,
            media_type: "text/csv;header=absent",
            extension: "csv",
        },
    ),
    (
        &["text/tab-separated-values", "tsv"],
        Format {
            output: OutputFormat::Tsv,
            media_type: "text/tab-separated-values",
            extension: "tsv",
        },
    ),
    (
        &["text/tab-separated-values;header=absent", "tsv-noheader"],
        Format {
            output: OutputFormat::TsvNoHeader,
            media_type: "text/tab-separated-values;header=absent",
            extension: "tsv",
        },
    ),
    (
        &["application/fits", "fits"],
        Format {
            output: OutputFormat::Fits,
            media_type: "application/fits",
            extension: "fits",
        },
    ),
    (
        &["application/vnd.apache.parquet", "parquet"],
        Format {
            output: OutputFormat::Parquet,
            media_type: "application/vnd.apache.parquet",
            extension: "parquet",
        },
    ),
    (
        &[
            "application/vnd.apache.arrow.stream",
            "arrow",
            "application/vnd.apache.arrow",
        ],
        Format {
            output: OutputFormat::ArrowStream,
            media_type: "application/vnd.apache.arrow.stream",
            extension: "arrows",
        },
    ),
    (
        &["application/x-ndjson", "json", "application/json"],
        Format {
            output: OutputFormat::Json,
            media_type: "application/x-ndjson",
            extension: "json",
        },
    ),
];

/// The format a RESPONSEFORMAT (or FORMAT) value names; VOTable BINARY2 when absent.
pub fn format(value: Option<&str>) -> Result<Format> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(FORMATS[0].1);
    };
    // Media types compare without spaces and case; parameters other than serialization,
    // header and version (charset...) are ignored. `version=1.5` asks for VOTable 1.5.
    let parts: Vec<String> = v
        .split(';')
        .map(|p| p.replace(' ', "").to_ascii_lowercase())
        .collect();
    let version = parts
        .iter()
        .find_map(|p| p.strip_prefix("version="))
        .map(str::to_string);
    let norm: String = parts
        .iter()
        .filter(|p| {
            !p.is_empty()
                && (!p.contains('=') || p.starts_with("serialization") || p.starts_with("header"))
        })
        .cloned()
        .collect::<Vec<_>>()
        .join(";");
    let found = FORMATS
        .iter()
        .find(|(names, _)| names.iter().any(|n| *n == norm))
        .map(|(_, f)| *f);
    let found = match (found, version.as_deref()) {
        (Some(f), None | Some("1.4")) => Some(f),
        (
            Some(Format {
                output: OutputFormat::VoTable(s),
                media_type,
                extension,
            }),
            Some("1.5"),
        ) => Some(Format {
            output: OutputFormat::VoTable15(s),
            media_type,
            extension,
        }),
        (Some(_), Some(other)) => {
            return Err(Error::Usage(format!(
                "RESPONSEFORMAT '{v}': version {other} is not served; VOTable is written as \
                 1.4 (default) or 1.5"
            )));
        }
        (None, _) => None,
    };
    found.ok_or_else(|| {
        Error::Usage(format!(
            "RESPONSEFORMAT '{v}' is not supported; use one of: {}",
            FORMATS
                .iter()
                .map(|(n, _)| n[0])
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// The query language a LANG value names.
pub fn lang(value: Option<&str>) -> Result<Lang> {
    match value.map(|v| v.trim().to_ascii_uppercase()).as_deref() {
        None | Some("ADQL") | Some("ADQL-2.0") | Some("ADQL-2.1") => Ok(Lang::Adql),
        Some("SQL") | Some("POSTGRESQL") => Ok(Lang::Sql),
        Some(other) => Err(Error::Usage(format!(
            "LANG '{other}' is not supported; use ADQL (ADQL-2.0, ADQL-2.1) or SQL"
        ))),
    }
}

/// DALI's MAXREC of `p`: the service default when absent, bounded by the service maximum.
pub fn maxrec(p: &Params, limits: &crate::Limits) -> Result<u64> {
    Ok(match p.get("MAXREC").map(str::trim) {
        None | Some("") => limits.default_maxrec,
        Some(v) => v
            .parse::<u64>()
            .map_err(|_| Error::Usage(format!("MAXREC '{v}' is not a non-negative integer")))?
            .min(limits.max_maxrec),
    })
}

/// A validated TAP query request.
#[derive(Debug, Clone)]
pub struct QuerySpec {
    /// Query text.
    pub query: String,
    /// Its language.
    pub lang: Lang,
    /// Output format.
    pub format: Format,
    /// Row limit (MAXREC, or the service default), bounded by the service maximum.
    pub maxrec: u64,
}

impl QuerySpec {
    /// Reads a query from TAP parameters under the service's limits.
    pub fn from_params(p: &Params, limits: &crate::Limits) -> Result<Self> {
        if let Some(r) = p.get("REQUEST")
            && !r.eq_ignore_ascii_case("doQuery")
        {
            return Err(Error::Usage(format!(
                "REQUEST '{r}' is not supported; use doQuery (or omit it)"
            )));
        }
        let query = p.required("QUERY")?.to_string();
        let lang = lang(p.get("LANG"))?;
        let format = format(p.get("RESPONSEFORMAT").or(p.get("FORMAT")))?;
        let maxrec = maxrec(p, limits)?;
        Ok(Self {
            query,
            lang,
            format,
            maxrec,
        })
    }
}

/// Plans and starts `spec`; the response streams the result. Planning errors (bad ADQL,
/// unknown columns) come back as error documents before any byte of the result.
///
/// The whole query, planning and streaming, runs under `limit`; past it the query stops
/// (an error document if nothing was sent yet, a broken transfer otherwise).
/// `user`'s MyDB tables are visible as `mydb.<name>`.
pub async fn run_streaming(
    state: &AppState,
    req: &DaliRequest,
    user: Option<&str>,
    spec: QuerySpec,
    limit: std::time::Duration,
) -> Result<Response> {
    let ends = std::time::Instant::now() + limit;
    tokio::select! {
        r = start(state, req, user, spec, ends, limit.as_secs()) => r,
        _ = meridian_engine::deadline(limit) => Err(Error::Timeout(limit.as_secs())),
    }
}

/// Plans `spec` on the engine and starts it: the result's schema and its batch stream (one
/// row past MAXREC, so that the writer can tell whether the limit cut the result).
pub(crate) async fn plan(
    engine: &Arc<meridian_engine::Engine>,
    spec: &QuerySpec,
) -> Result<(
    arrow::datatypes::SchemaRef,
    meridian_engine::RecordBatchStream,
)> {
    let mut df = engine.query(&spec.query, spec.lang).await?;
    // An EXPLAIN's plan must stay the root: its few rows need no limit.
    if !meridian_engine::is_explain(&df) {
        df = df
            .limit(0, Some(spec.maxrec as usize + 1))
            .map_err(meridian_engine::Error::from)?;
    }
    let plan = engine.physical_plan(df).await?;
    let schema = plan.schema();
    Ok((schema, meridian_engine::execute(plan, engine)?))
}

/// The names of `user`'s groups (none for anonymous callers).
pub(crate) fn user_groups(state: &AppState, user: Option<&str>) -> Vec<String> {
    user.and_then(|u| state.accounts.groups_of(u).ok())
        .unwrap_or_default()
        .into_iter()
        .map(|(g, _)| g)
        .collect()
}

async fn start(
    state: &AppState,
    req: &DaliRequest,
    user: Option<&str>,
    spec: QuerySpec,
    ends: std::time::Instant,
    limit_s: u64,
) -> Result<Response> {
    let engine = sync_uploads(state, req).await?;
    let groups = user_groups(state, user);
    let engine = crate::mydb::engine_for(&engine, &state.mydb, user, &groups, &spec.query).await?;
    let (schema, mut stream) = plan(&engine, &spec).await?;
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let sink = BodySink::new(tx.clone(), state.metrics.clone());
    let mut writer = ResultWriter::new(spec.format.output, Box::new(sink.clone()), &schema)?;
    writer.set_maxrec(spec.maxrec);
    // The first batch is awaited here, so an execution error that comes at once is still
    // an error document with its status.
    let first = stream.next().await.transpose()?;
    let left = ends.saturating_duration_since(std::time::Instant::now());
    tokio::spawn(async move {
        let batches = futures::stream::iter(first.map(Ok)).chain(stream);
        let result: Result<u64> = tokio::select! {
            r = write_stream(writer, batches) => r,
            _ = meridian_engine::deadline(left) => Err(Error::Timeout(limit_s)),
        };
        match result {
            Ok(_) => sink.send_rest().await,
            Err(_) if tx.is_closed() => tracing::debug!("the client went away"),
            Err(e) => {
                // The status line is gone: end the body with an error so that the client
                // sees a broken transfer, never a silently short table.
                tracing::error!(error = %e, "result stream failed");
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            }
        }
    });
    Ok((
        [(header::CONTENT_TYPE, spec.format.media_type)],
        crate::result::body(rx),
    )
        .into_response())
}

/// The engine for a sync query: with the request's uploads as `TAP_UPLOAD` tables, read
/// through a temporary directory that is gone when this returns.
async fn sync_uploads(state: &AppState, req: &DaliRequest) -> Result<Arc<meridian_engine::Engine>> {
    if req.params.get("UPLOAD").is_none() {
        return Ok(state.engine.clone());
    }
    let dir = tempfile::tempdir().map_err(|e| Error::Usage(format!("upload space: {e}")))?;
    let mut params = req.params.clone();
    for (k, v) in upload::store(&req.files, dir.path(), &state.limits)? {
        params.push(k, v);
    }
    let uploads = upload::stored(&params, dir.path(), &state.limits)?;
    upload::with_uploads(&state.engine, uploads, &state.limits).await
}

/// A query text as logged: its first 1,000 bytes and its length, so that one request
/// cannot write a log line of megabytes.
pub(crate) fn loggable(text: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 1000;
    if text.len() <= MAX {
        return text.into();
    }
    let cut = text.floor_char_boundary(MAX);
    format!("{}... ({} bytes)", &text[..cut], text.len()).into()
}

/// `/tap/sync`, GET or POST.
pub async fn sync(
    State(state): State<AppState>,
    axum::extract::Extension(caller): axum::extract::Extension<crate::auth::Caller>,
    req: DaliRequest,
) -> Result<Response> {
    caller.allows(meridian_services::accounts::Scope::ReadCatalogs)?;
    let spec = QuerySpec::from_params(&req.params, &state.limits)?;
    tracing::info!(query = %loggable(&spec.query), maxrec = spec.maxrec, "sync query");
    let limit = std::time::Duration::from_secs(state.limits.sync_timeout_s);
    run_streaming(&state, &req, caller.user()?, spec, limit).await
}
