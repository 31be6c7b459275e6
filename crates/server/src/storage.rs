//! Users' files on the wire, the Data Lab way: the storeClient's calls under `/storage`
//! (`ls`, `get`, `put`, `mkdir`, `rmdir`, `rm`, `mv`, `cp`, `ln`, `tag`, `stat`, `access`,
//! `isdir`, `load`, `profiles`), as ../shared/specs/datalab-clients-wire.md describes them,
//! and the single-use transfer URLs (`/storage/xfer/<ticket>`) that `put` and `get` hand
//! out and that VOSpace transfers use too.
//!
//! Names: `vos://path` is the caller's home; `<space>://path` is another user's or a
//! group's space (reached with the rights its nodes grant), or a survey collection when
//! one has that name. A name without `://` is `vos://name`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use meridian_services::accounts::Scope;
use meridian_services::storage::{DESCRIPTION, Kind, Node, Who, grant_names, node_path};

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::params::query_fields;
use crate::{AppState, text, text_with};

/// What a name refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A node of the tree (`space/path`).
    Node(String),
    /// A file or directory of a survey collection.
    Collection {
        /// The collection.
        name: String,
        /// The path in it.
        path: String,
    },
}

impl Target {
    /// The name as Data Lab writes it.
    pub fn uri(&self) -> String {
        match self {
            Target::Node(p) => format!("vos://{p}"),
            Target::Collection { name, path } => format!("{name}://{path}"),
        }
    }
}

/// A transfer URL's permission: who may read or write what, once, until when.
#[derive(Debug, Clone)]
struct Ticket {
    who: Who,
    target: Target,
    upload: bool,
    expires: Instant,
}

/// The open transfer tickets.
#[derive(Debug, Default)]
pub struct Tickets(Mutex<HashMap<String, Ticket>>);

/// How long a transfer URL stays valid.
const TICKET_LIFETIME: Duration = Duration::from_secs(15 * 60);

impl Tickets {
    /// A new single-use ticket for `who` to read (or, when `upload`, write) `target`.
    pub fn issue(&self, who: &Who, target: Target, upload: bool) -> String {
        let id = meridian_services::storage::random_key();
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, t| t.expires > now);
        map.insert(
            id.clone(),
            Ticket {
                who: who.clone(),
                target,
                upload,
                expires: now + TICKET_LIFETIME,
            },
        );
        id
    }

    fn take(&self, id: &str, upload: bool) -> Result<Ticket> {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A ticket is spent only by the use it was issued for (a HEAD or GET on an upload
        // URL leaves it alone).
        if map.get(id).is_some_and(|t| t.upload != upload) {
            return Err(Error::NotFound(format!(
                "transfer {id} is an {}",
                if upload { "download" } else { "upload" }
            )));
        }
        match map.remove(id) {
            Some(t) if t.expires > Instant::now() => Ok(t),
            _ => Err(Error::NotFound(format!(
                "no transfer {id}: transfer URLs are used once and expire after {} minutes",
                TICKET_LIFETIME.as_secs() / 60
            ))),
        }
    }
}

/// The caller as the file store sees them, with the ids of their account and groups (their
/// home made on first use). With `write_scope`, 401 without a login and 403 without the
/// `storage:write` scope.
pub fn who(state: &AppState, caller: &Caller, write_scope: bool) -> Result<Who> {
    if write_scope {
        caller.user_with(Scope::WriteStorage)?;
    }
    let Some(user) = caller.user()? else {
        return Ok(Who::anonymous());
    };
    let identity = caller.identity()?;
    let user_id = state.accounts.user_id(user)?.ok_or_else(|| {
        Error::Services(meridian_services::Error::Unauthorized(format!(
            "the account '{user}' no longer exists"
        )))
    })?;
    state.storage.ensure_space(user, user, user_id)?;
    let memberships = state.accounts.memberships(user)?;
    let mut ids: HashMap<String, i64> = memberships
        .iter()
        .map(|(g, _, id)| (g.clone(), *id))
        .collect();
    ids.insert(user.to_string(), user_id);
    Ok(Who {
        user: Some(user.to_string()),
        groups: memberships.into_iter().map(|(g, r, _)| (g, r)).collect(),
        admin: identity.scopes.has(Scope::Admin),
        ids,
    })
}

/// The id of group `name`, for the grants of nodes (which are bound to it).
pub fn group_id(state: &AppState, name: &str) -> meridian_services::Result<Option<i64>> {
    state.accounts.group_id(name)
}

/// Reads a Data Lab name (`vos://p`, `p`, `<space>://p`, `<collection>://p`).
pub fn resolve(state: &AppState, who: &Who, name: &str) -> Result<Target> {
    let name = name.trim();
    let name = if name.contains("://") {
        name.to_string()
    } else {
        format!("vos://{name}")
    };
    let (scheme, rest) = name.split_once("://").unwrap_or(("vos", &name));
    let rest = rest.trim_start_matches('/');
    if scheme == "vos" {
        let home = who.user.as_deref().ok_or_else(|| {
            Error::Services(meridian_services::Error::Unauthorized(
                "vos:// is your home and needs a login; anonymous callers name a space, as \
                 <user>://public/file"
                    .into(),
            ))
        })?;
        return Ok(Target::Node(node_path(home, rest)?));
    }
    if state.storage.collection(scheme).is_some() {
        // Checked segment by segment when used.
        return Ok(Target::Collection {
            name: scheme.to_string(),
            path: rest.to_string(),
        });
    }
    Ok(Target::Node(node_path(scheme, rest)?))
}

/// The node a target names; survey collections are read-only.
fn node_of(target: &Target) -> Result<&str> {
    match target {
        Target::Node(p) => Ok(p),
        Target::Collection { name, .. } => Err(Error::Services(
            meridian_services::Error::Forbidden(format!("collection '{name}' is read-only")),
        )),
    }
}

/// Permissions as `ls -l` shows them: the owner reads and writes; the group columns
/// show group read and write; the others' column public read.
pub fn perms(node: &Node) -> String {
    let dir = node.kind == Kind::Container;
    let x = if dir { 'x' } else { '-' };
    let flag = |on: bool, c: char| if on { c } else { '-' };
    format!(
        "{}rw{x}{}{}{x}{}-{x}",
        match node.kind {
            Kind::Container => 'd',
            Kind::Link => 'l',
            Kind::Data => '-',
        },
        flag(!node.group_read.is_empty(), 'r'),
        flag(!node.group_write.is_empty(), 'w'),
        flag(node.public_read, 'r'),
    )
}

fn date(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%d %b %Y %H:%M").to_string())
        .unwrap_or_default()
}

/// A content type from a file name.
pub fn content_type(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    let ext = lower.rsplit('.').next().unwrap_or("");
    match ext {
        "fits" | "fit" | "fz" => "application/fits",
        "csv" => "text/csv",
        "txt" | "tsv" | "dat" => "text/plain",
        "xml" | "vot" => "application/x-votable+xml",
        "json" => "application/json",
        "parquet" => "application/vnd.apache.parquet",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "pdf" => "application/pdf",
        "gz" => "application/gzip",
        "html" => "text/html",
        _ => "application/octet-stream",
    }
}

/// A file's bytes as a response, streamed.
pub async fn download(state: &AppState, who: &Who, target: &Target) -> Result<Response> {
    let (name, size, stream) = match target {
        Target::Node(p) => {
            let (node, stream) = state.storage.read(who, p).await?;
            (node.name().to_string(), node.size, stream)
        }
        Target::Collection { name, path } => {
            let (size, stream) = state.storage.collection_read(name, path).await?;
            (
                path.rsplit('/').next().unwrap_or(path).to_string(),
                size,
                stream,
            )
        }
    };
    let metrics = state.metrics.clone();
    let body = Body::from_stream(stream.map(move |r| {
        if let Ok(b) = &r {
            metrics.add_bytes_out(b.len() as u64);
        }
        r
    }));
    let disposition = format!(
        "inline; filename=\"{}\"",
        name.replace(['"', '\\'], "_")
            .replace(|c: char| !c.is_ascii(), "_")
    );
    Ok((
        [
            (header::CONTENT_TYPE, content_type(&name).to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// Stores a request body as the file `path` (Content-Length reserved against the quota
/// before a byte is taken).
pub async fn upload(state: &AppState, who: &Who, path: &str, req: Request) -> Result<Node> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let body = req.into_body().into_data_stream();
    Ok(state
        .storage
        .write(who, path, body, declared, state.limits.upload_max_bytes)
        .await?)
}

/// Stores the local file `file` as node `path`.
pub async fn store_file(
    state: &AppState,
    who: &Who,
    path: &str,
    file: &std::path::Path,
) -> Result<Node> {
    let fh = tokio::fs::File::open(file)
        .await
        .map_err(|e| Error::Internal(format!("reading {}: {e}", file.display())))?;
    let len = fh
        .metadata()
        .await
        .map_err(|e| Error::Internal(format!("reading {}: {e}", file.display())))?
        .len();
    let stream = tokio_util::io::ReaderStream::new(fh);
    Ok(state
        .storage
        .write(who, path, stream, Some(len), u64::MAX)
        .await?)
}

/// Runs `spec` (with `user`'s MyDB tables) and stores its result, in the format it asks
/// for, as node `path`. Returns the rows written.
pub async fn save_query(
    state: &AppState,
    who: &Who,
    user: &str,
    spec: &crate::tap::QuerySpec,
    path: &str,
) -> Result<u64> {
    let groups: Vec<String> = who.groups.iter().map(|(g, _)| g.clone()).collect();
    let engine = crate::mydb::engine_for(
        &state.engine,
        &state.mydb,
        Some(user).filter(|u| !u.is_empty()),
        &groups,
        &spec.query,
    )
    .await?;
    let (schema, stream) = crate::tap::plan(&engine, spec).await?;
    let staged = tempfile::NamedTempFile::new()
        .map_err(|e| Error::Internal(format!("staging a result: {e}")))?
        .into_temp_path();
    let mut writer =
        meridian_formats::write::ResultWriter::create(spec.format.output, &staged, &schema)?;
    writer.set_maxrec(spec.maxrec);
    let rows = crate::result::write_stream(writer, stream).await?;
    store_file(state, who, path, &staged).await?;
    tracing::info!(user, path, rows, "query result stored");
    Ok(rows)
}

/// Copies the bytes of `target` to the local file `to` (written whole or not at all).
pub async fn copy_out(
    state: &AppState,
    who: &Who,
    target: &Target,
    to: &std::path::Path,
) -> Result<u64> {
    use tokio::io::AsyncWriteExt;
    let mut stream = match target {
        Target::Node(p) => state.storage.read(who, p).await?.1,
        Target::Collection { name, path } => state.storage.collection_read(name, path).await?.1,
    };
    let io = |e: std::io::Error| Error::Internal(format!("writing {}: {e}", to.display()));
    let dir = to.parent().unwrap_or(std::path::Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    let (std_file, tmp_path) = tmp.into_parts();
    let mut fh = tokio::fs::File::from_std(std_file);
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        n += chunk.len() as u64;
        fh.write_all(&chunk).await.map_err(io)?;
    }
    fh.flush().await.map_err(io)?;
    tmp_path.persist(to).map_err(|e| io(e.error))?;
    Ok(n)
}

/// `PUT /storage/xfer/{ticket}`: the bytes of a `put`.
pub async fn xfer_put(
    State(state): State<AppState>,
    Path(ticket): Path<String>,
    req: Request,
) -> Result<Response> {
    let t = state.tickets.take(&ticket, true)?;
    let node = upload(&state, &t.who, node_of(&t.target)?, req).await?;
    Ok(text_with(
        StatusCode::CREATED,
        format!("OK: {} bytes stored as vos://{}", node.size, node.path),
    ))
}

/// `GET /storage/xfer/{ticket}`: the bytes of a `get`.
pub async fn xfer_get(
    State(state): State<AppState>,
    Path(ticket): Path<String>,
) -> Result<Response> {
    let t = state.tickets.take(&ticket, false)?;
    download(&state, &t.who, &t.target).await
}

/// An absolute transfer URL for `ticket`.
pub fn ticket_url(state: &AppState, headers: &HeaderMap, ticket: &str) -> String {
    format!(
        "{}/storage/xfer/{ticket}",
        crate::vosi::base_url(state, headers)
    )
}

/// `Error: <message>`-less failure bodies, as Data Lab's storage service answers: the
/// client shows the text.
fn refusal(e: Error) -> Response {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!(%status, error = %e, "storage call failed");
    }
    let body = match &e {
        Error::NotFound(_) | Error::Services(meridian_services::Error::NotFound(_)) => {
            "A Node does not exist with the requested URI.".to_string()
        }
        Error::Services(meridian_services::Error::Conflict(_)) => {
            "A Node already exists with the requested URI.".to_string()
        }
        _ => format!("Error: {}", e.message()),
    };
    text_with(status, body)
}

/// `GET /storage/{call}`: the storeClient's calls.
pub async fn call(
    State(state): State<AppState>,
    Path(call): Path<String>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    let f = query_fields(req.uri());
    let arg = |k: &str| f.get(k).map(String::as_str).unwrap_or("").to_string();
    let headers = req.headers().clone();
    let result = async {
        match call.as_str() {
            "profiles" => Ok(text("default")),
            "isdir" => {
                let who = who(&state, &caller, false)?;
                let is_dir = match resolve(&state, &who, &arg("name"))? {
                    Target::Node(p) => state.storage.node(&who, &p)?.kind == Kind::Container,
                    Target::Collection { name, path } => {
                        state.storage.collection_stat(&name, &path).await?.dir
                    }
                };
                Ok(text(if is_dir { "True" } else { "False" }))
            }
            "ls" => ls(&state, &caller, &arg("name"), &arg("format")).await,
            "stat" => stat(&state, &caller, &arg("name")).await,
            "access" => {
                let who = who(&state, &caller, false)?;
                let mode = arg("mode");
                let ok = match resolve(&state, &who, &arg("name"))? {
                    Target::Node(p) => {
                        let read = state.storage.access(&who, &p, false)?;
                        let write = state.storage.access(&who, &p, true)?;
                        match mode.as_str() {
                            "w" => write,
                            "rw" => read && write,
                            _ => read,
                        }
                    }
                    Target::Collection { .. } => !mode.contains('w'),
                };
                Ok(text(if ok { "true" } else { "false" }))
            }
            "get" => {
                let who = who(&state, &caller, false)?;
                let target = resolve(&state, &who, &arg("name"))?;
                // Checked now, so that a missing file fails here rather than at the URL.
                match &target {
                    Target::Node(p) => drop(state.storage.node(&who, p)?),
                    Target::Collection { name, path } => {
                        drop(state.storage.collection_stat(name, path).await?)
                    }
                }
                let ticket = state.tickets.issue(&who, target, false);
                Ok(text(ticket_url(&state, &headers, &ticket)))
            }
            "put" => {
                let who = who(&state, &caller, true)?;
                let target = resolve(&state, &who, &arg("name"))?;
                // Checked now, so that a URL is handed out only for what the caller may write.
                state.storage.check_upload(&who, node_of(&target)?)?;
                let ticket = state.tickets.issue(&who, target, true);
                Ok(text(ticket_url(&state, &headers, &ticket)))
            }
            "mkdir" => {
                let who = who(&state, &caller, true)?;
                let target = resolve(&state, &who, &arg("dir"))?;
                state.storage.mkdir(&who, node_of(&target)?)?;
                Ok(text_with(StatusCode::CREATED, "OK"))
            }
            "rmdir" | "rm" => {
                let who = who(&state, &caller, true)?;
                let key = if call == "rm" { "file" } else { "dir" };
                let target = resolve(&state, &who, &arg(key))?;
                let path = node_of(&target)?;
                let node = state.storage.node(&who, path)?;
                let want_dir = call == "rmdir";
                if want_dir != (node.kind == Kind::Container) {
                    return Err(Error::Usage(format!(
                        "{} is {}; use {}",
                        target.uri(),
                        if want_dir {
                            "not a container"
                        } else {
                            "a container"
                        },
                        if want_dir { "rm" } else { "rmdir" }
                    )));
                }
                state.storage.delete(&who, path, false).await?;
                Ok(StatusCode::NO_CONTENT.into_response())
            }
            "mv" | "cp" => {
                let who = who(&state, &caller, true)?;
                let from = resolve(&state, &who, &arg("from"))?;
                let to = resolve(&state, &who, &arg("to"))?;
                let to = node_of(&to)?;
                let node = match &from {
                    Target::Node(p) if call == "mv" => state.storage.move_node(&who, p, to)?,
                    Target::Node(p) => state.storage.copy_node(&who, p, to).await?,
                    Target::Collection { name, path } if call == "cp" => {
                        copy_from_collection(&state, &who, name, path, to).await?
                    }
                    Target::Collection { name, .. } => {
                        return Err(Error::Services(meridian_services::Error::Forbidden(
                            format!("collection '{name}' is read-only: copy from it instead"),
                        )));
                    }
                };
                Ok(text(format!("COMPLETED: vos://{}", node.path)))
            }
            "ln" => {
                let who = who(&state, &caller, true)?;
                let link = resolve(&state, &who, &arg("from"))?;
                let target = resolve(&state, &who, &arg("to"))?;
                let uri = match &target {
                    Target::Node(p) => meridian_services::storage::node_uri(p),
                    Target::Collection { .. } => target.uri(),
                };
                state.storage.link(&who, node_of(&link)?, &uri)?;
                Ok(text_with(StatusCode::CREATED, "OK"))
            }
            "tag" => {
                let who = who(&state, &caller, true)?;
                let target = resolve(&state, &who, &arg("name"))?;
                state.storage.set_properties(
                    &who,
                    node_of(&target)?,
                    &[(DESCRIPTION.to_string(), arg("tag"))],
                    &|g| group_id(&state, g),
                )?;
                Ok(text("OK"))
            }
            "load" => {
                let who = who(&state, &caller, true)?;
                let target = resolve(&state, &who, &arg("name"))?;
                let path = node_of(&target)?.to_string();
                // Nothing is fetched for a file the caller may not write.
                state.storage.check_upload(&who, &path)?;
                load(&state, &who, &path, &arg("endpoint")).await?;
                Ok(text("OK"))
            }
            other => Err(Error::NotFound(format!(
                "'{other}' is not a storage service call"
            ))),
        }
    }
    .await;
    result.unwrap_or_else(refusal)
}

/// Copies a collection's file into the tree.
async fn copy_from_collection(
    state: &AppState,
    who: &Who,
    name: &str,
    path: &str,
    to: &str,
) -> Result<Node> {
    let base = path.rsplit('/').next().unwrap_or(path);
    let dest = match state.storage.node(who, to) {
        Ok(n) if n.kind == Kind::Container => format!("{to}/{base}"),
        _ => to.to_string(),
    };
    let (size, stream) = state.storage.collection_read(name, path).await?;
    Ok(state
        .storage
        .write(
            who,
            &dest,
            stream,
            Some(size),
            state.limits.upload_max_bytes,
        )
        .await?)
}

/// Fetches `url` into node `path` (Data Lab's `load`), under the URL-upload rules.
pub async fn load(state: &AppState, who: &Who, path: &str, url: &str) -> Result<Node> {
    if !state.limits.allow_url_uploads {
        return Err(Error::Usage(
            "this service does not fetch URLs (server.allow_url_uploads is off)".into(),
        ));
    }
    let limits = state.limits.clone();
    let (name, u) = (path.to_string(), url.to_string());
    let file = tokio::task::spawn_blocking(move || crate::upload::fetch(&name, &u, &limits))
        .await
        .map_err(|e| Error::Internal(format!("fetch task failed: {e}")))??;
    store_file(state, who, path, &file).await
}

async fn ls(state: &AppState, caller: &Caller, name: &str, format: &str) -> Result<Response> {
    let who = who(state, caller, false)?;
    let long = format == "long";
    let target = resolve(state, &who, name)?;
    let mut out = Vec::new();
    match &target {
        Target::Node(p) => {
            let node = match state.storage.node(&who, p) {
                Ok(n) => n,
                // A missing name lists as nothing.
                Err(_) if !long => return Ok(text("")),
                Err(e) => return Err(e.into()),
            };
            let items = if node.kind == Kind::Container {
                state.storage.list(&who, p)?
            } else {
                vec![node]
            };
            for n in items {
                let shown = if n.kind == Kind::Container && long {
                    format!("{}/", n.name())
                } else {
                    n.name().to_string()
                };
                out.push(if long {
                    format!(
                        "{}  {}  {}  {}  {shown}\n",
                        perms(&n),
                        n.owner,
                        n.size,
                        date(n.mtime_ms)
                    )
                } else {
                    shown
                });
            }
        }
        Target::Collection { name, path } => {
            for e in state.storage.collection_list(name, path).await? {
                let base = e.path.rsplit('/').next().unwrap_or(&e.path).to_string();
                out.push(if long {
                    format!(
                        "{}  {name}  {}  {}  {base}{}\n",
                        if e.dir { "dr-xr-xr-x" } else { "-r--r--r--" },
                        e.size,
                        date(e.mtime_ms),
                        if e.dir { "/" } else { "" }
                    )
                } else {
                    base
                });
            }
        }
    }
    Ok(text(if long { out.concat() } else { out.join(",") }))
}

async fn stat(state: &AppState, caller: &Caller, name: &str) -> Result<Response> {
    let who = who(state, caller, false)?;
    let target = resolve(state, &who, name)?;
    let json = match &target {
        Target::Node(p) => {
            let n = state.storage.node(&who, p)?;
            serde_json::json!({
                "name": target.uri(),
                "type": n.kind.as_str(),
                "size": n.size,
                "owner": n.owner,
                "perms": perms(&n),
                "groupread": grant_names(&n.group_read),
                "groupwrite": grant_names(&n.group_write),
                "publicread": n.public_read,
                "target": n.target.clone().unwrap_or_default(),
                "date": date(n.mtime_ms),
                "properties": n.properties,
            })
        }
        Target::Collection { name, path } => {
            let e = state.storage.collection_stat(name, path).await?;
            serde_json::json!({
                "name": target.uri(),
                "type": if e.dir { "container" } else { "data" },
                "size": e.size,
                "owner": name,
                "perms": if e.dir { "dr-xr-xr-x" } else { "-r--r--r--" },
                "groupread": "",
                "groupwrite": "",
                "publicread": true,
                "target": "",
                "date": date(e.mtime_ms),
            })
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
        .into_response())
}
