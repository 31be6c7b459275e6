//! The REST binding of IVOA VOSpace 2.1 over users' files, under `/vospace`:
//!
//! - `/vospace/nodes/{space/path}`: `GET` a node (`detail=min|max|properties`, `limit`),
//!   `PUT` a new ContainerNode, DataNode or LinkNode with properties (a node that exists
//!   is a `DuplicateNode`, never replaced), `POST` properties (a `xsi:nil` property is
//!   removed), `DELETE` (recursively).
//! - `/vospace/synctrans`: synchronous transfers, posted as a Transfer document or as
//!   `TARGET`, `DIRECTION`, `PROTOCOL` parameters; `pushToVoSpace` and `pullFromVoSpace`
//!   answer with single-use `httpput`/`httpget` endpoints (a 303 to the transfer details,
//!   or, with `REQUEST=redirect`, to the endpoint itself).
//! - `/vospace/transfers`: asynchronous transfers as UWS jobs: move and copy
//!   (`direction` a node URI, `keepBytes` false or true), `pullToVoSpace` from a URL.
//!   They run at `PHASE=RUN` and are quick (a move is one transaction), so they are kept
//!   in memory for the life of the process.
//! - `/vospace/files/{space/path}`: a file's bytes in one request (the `files-proto`
//!   capability CADC's `vos` client reads files with).
//! - `/vospace/protocols`, `/vospace/views`, `/vospace/properties`, and VOSI
//!   `/vospace/availability` and `/vospace/capabilities`.
//!
//! Node URIs are `vos://meridian!vospace/<space>/<path>`. Failures are `text/plain` with
//! the fault's name first (`NodeNotFound`, `DuplicateNode`, `PermissionDenied`,
//! `InvalidURI`, `ContainerNotFound`, `QuotaExceeded`, ...), and the status VOSpace gives
//! it.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::{Extension, Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use meridian_formats::write::xml_escape;
use meridian_services::storage::{
    DESCRIPTION, GROUP_READ, GROUP_WRITE, Kind, Node, PUBLIC_READ, Who, grant_names, node_path,
    node_uri, target_path,
};

use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::params::query_fields;
use crate::storage::{Target, group_id, ticket_url, who};
use crate::{AppState, text, text_with};

const NS: &str = "http://www.ivoa.net/xml/VOSpace/v2.0";
const CORE: &str = "ivo://ivoa.net/vospace/core";
const HTTP_GET: &str = "ivo://ivoa.net/vospace/core#httpget";
const HTTP_PUT: &str = "ivo://ivoa.net/vospace/core#httpput";

/// A failure, answered as VOSpace names it (handlers return it with `?`).
pub struct Fault(Error);

impl From<Error> for Fault {
    fn from(e: Error) -> Self {
        Fault(e)
    }
}

impl From<meridian_services::Error> for Fault {
    fn from(e: meridian_services::Error) -> Self {
        Fault(e.into())
    }
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        fault(self.0)
    }
}

/// A failure as VOSpace names it.
fn fault(e: Error) -> Response {
    let (status, message) = fault_text(&e);
    if status.is_server_error() {
        tracing::error!(%status, error = %e, "vospace request failed");
    }
    let mut response = text_with(status, message);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"Meridian\""),
        );
    }
    response
}

/// The status and `Fault: message` text of a failure.
fn fault_text(e: &Error) -> (StatusCode, String) {
    use meridian_services::Error as S;
    let name = match &e {
        Error::Services(S::NotFound(m)) if m.contains("a container is missing") => {
            "ContainerNotFound"
        }
        Error::NotFound(_) | Error::Services(S::NotFound(_)) => "NodeNotFound",
        Error::Services(S::Conflict(_)) => "DuplicateNode",
        Error::Services(S::Forbidden(_)) => "PermissionDenied",
        Error::Services(S::Unauthorized(_)) => "PermissionDenied",
        Error::Services(S::Quota(_)) => "QuotaExceeded",
        Error::Services(S::Invalid(m)) if m.contains("not allowed") => "InvalidURI",
        Error::Usage(_) | Error::Services(S::Invalid(_)) => "InvalidArgument",
        _ => "InternalFault",
    };
    // Messages that already start with a fault's name keep it.
    let text = e.message();
    let named = text
        .split_once(':')
        .is_some_and(|(head, _)| !head.is_empty() && head.chars().all(|c| c.is_ascii_alphabetic()));
    (
        e.status(),
        if named {
            text
        } else {
            format!("{name}: {text}")
        },
    )
}

/// A posted body: form fields when it is a form, the raw bytes otherwise (an XML document).
struct Posted {
    fields: HashMap<String, String>,
    body: bytes::Bytes,
}

async fn posted(req: Request) -> Result<Posted> {
    let form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let body = axum::body::to_bytes(req.into_body(), 16 << 20)
        .await
        .map_err(|e| Error::Usage(format!("reading the request body: {e}")))?;
    if form {
        let fields = form_urlencoded::parse(&body).into_owned().collect();
        return Ok(Posted {
            fields,
            body: bytes::Bytes::new(),
        });
    }
    Ok(Posted {
        fields: HashMap::new(),
        body,
    })
}

fn xml(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
        body,
    )
        .into_response()
}

fn xsi_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Container => "vos:ContainerNode",
        Kind::Data => "vos:DataNode",
        Kind::Link => "vos:LinkNode",
    }
}

fn iso(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// The properties of `node` as VOSpace lists them.
fn properties(node: &Node) -> Vec<(String, String)> {
    let mut p = vec![
        (format!("{CORE}#date"), iso(node.mtime_ms)),
        (format!("{CORE}#creator"), node.owner.clone()),
        (PUBLIC_READ.to_string(), node.public_read.to_string()),
    ];
    if node.kind == Kind::Data {
        p.push((format!("{CORE}#length"), node.size.to_string()));
        p.push((
            format!("{CORE}#type"),
            crate::storage::content_type(node.name()).to_string(),
        ));
    }
    if !node.group_read.is_empty() {
        p.push((GROUP_READ.to_string(), grant_names(&node.group_read)));
    }
    if !node.group_write.is_empty() {
        p.push((GROUP_WRITE.to_string(), grant_names(&node.group_write)));
    }
    p.extend(node.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
    p
}

/// A node document; a container lists its children (`limit` of them) unless `detail` is
/// `min` for them.
fn node_xml(node: &Node, children: Option<&[Node]>, detail: &str) -> String {
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<vos:node xmlns:vos=\"{NS}\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xsi:type=\"{}\" uri=\"{}\" busy=\"false\">\n",
        xsi_type(node.kind),
        xml_escape(&node_uri(&node.path))
    ));
    node_body(&mut out, node, detail != "min" || children.is_none());
    if let Some(children) = children {
        out.push_str("  <vos:nodes>\n");
        for c in children {
            out.push_str(&format!(
                "    <vos:node uri=\"{}\" xsi:type=\"{}\"",
                xml_escape(&node_uri(&c.path)),
                xsi_type(c.kind)
            ));
            if detail == "max" {
                out.push_str(">\n");
                node_body(&mut out, c, true);
                out.push_str("    </vos:node>\n");
            } else {
                out.push_str("/>\n");
            }
        }
        out.push_str("  </vos:nodes>\n");
    }
    out.push_str("</vos:node>\n");
    out
}

fn node_body(out: &mut String, node: &Node, with_properties: bool) {
    out.push_str("  <vos:properties>\n");
    if with_properties {
        for (k, v) in properties(node) {
            out.push_str(&format!(
                "    <vos:property uri=\"{}\">{}</vos:property>\n",
                xml_escape(&k),
                xml_escape(&v)
            ));
        }
    }
    out.push_str("  </vos:properties>\n");
    match node.kind {
        Kind::Data => out.push_str(
            "  <vos:accepts><vos:view uri=\"ivo://ivoa.net/vospace/core#defaultview\"/></vos:accepts>\n\
             <vos:provides><vos:view uri=\"ivo://ivoa.net/vospace/core#defaultview\"/></vos:provides>\n\
             <vos:capabilities/>\n",
        ),
        _ => out.push_str("  <vos:accepts/>\n  <vos:provides/>\n  <vos:capabilities/>\n"),
    }
    if let Some(t) = &node.target {
        out.push_str(&format!("  <vos:target>{}</vos:target>\n", xml_escape(t)));
    }
}

/// One element of a posted document: local name, attributes, text.
#[derive(Debug, Default)]
struct Element {
    name: String,
    attrs: HashMap<String, String>,
    text: String,
}

/// The elements of `body` in document order (local names; enough for Node and Transfer
/// documents, which are flat lists of simple elements).
fn elements(body: &[u8]) -> Result<Vec<Element>> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut out: Vec<Element> = Vec::new();
    let mut open: Vec<usize> = Vec::new();
    let mut buf = Vec::new();
    let bad = |e: String| Error::Usage(format!("the posted XML is not well formed: {e}"));
    loop {
        match reader
            .read_event_into(&mut buf)
            .map_err(|e| bad(e.to_string()))?
        {
            ev @ (Event::Start(_) | Event::Empty(_)) => {
                let empty = matches!(ev, Event::Empty(_));
                let (Event::Start(e) | Event::Empty(e)) = ev else {
                    continue;
                };
                let mut el = Element {
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ..Default::default()
                };
                for a in e.attributes().flatten() {
                    let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
                    let value = a
                        .unescape_value()
                        .map_err(|e| bad(e.to_string()))?
                        .into_owned();
                    el.attrs.insert(key, value);
                }
                out.push(el);
                if !empty {
                    open.push(out.len() - 1);
                }
            }
            Event::End(_) => {
                open.pop();
            }
            Event::Text(t) => {
                if let Some(&i) = open.last() {
                    let s = t.xml_content().map_err(|e| bad(e.to_string()))?;
                    out[i].text.push_str(&s);
                }
            }
            Event::GeneralRef(r) => {
                if let Some(&i) = open.last() {
                    out[i].text.push_str(&meridian_formats::xml_reference(&r));
                }
            }
            Event::CData(t) => {
                if let Some(&i) = open.last() {
                    out[i].text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(out)
}

/// The node path of a request path (`space/dir/name`, each segment checked).
fn path_of(raw: &str) -> Result<String> {
    let raw = raw.trim_matches('/');
    let (space, rest) = raw.split_once('/').unwrap_or((raw, ""));
    Ok(node_path(space, rest)?)
}

/// The node path a node URI names, checked.
fn uri_path(uri: &str) -> Result<String> {
    let p = target_path(uri.trim()).ok_or_else(|| {
        Error::Services(meridian_services::Error::Invalid(format!(
            "'{uri}' is not allowed: not a node URI of this service (vos://{}/...)",
            meridian_services::storage::AUTHORITY
        )))
    })?;
    path_of(&p)
}

/// `GET /vospace/nodes/{path}`.
pub async fn get_node(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Result<Response, Fault> {
    let f = query_fields(req.uri());
    let who = who(&state, &caller, false)?;
    let path = path_of(&raw)?;
    let node = state.storage.node(&who, &path)?;
    let detail = f.get("detail").map(String::as_str).unwrap_or("max");
    let limit = f
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    let children = if node.kind == Kind::Container && detail != "properties" {
        let mut c = state.storage.list(&who, &path)?;
        c.truncate(limit);
        Some(c)
    } else {
        None
    };
    Ok(xml(
        StatusCode::OK,
        node_xml(&node, children.as_deref(), detail),
    ))
}

/// What a posted Node document gives: its uri, type, properties and link target.
type PostedNode = (String, Option<Kind>, Vec<(String, String)>, Option<String>);

/// Reads a posted Node document.
fn posted_node(body: &[u8]) -> Result<PostedNode> {
    let els = elements(body)?;
    let root = els
        .first()
        .filter(|e| e.name == "node")
        .ok_or_else(|| Error::Usage("the body is not a VOSpace node document".into()))?;
    let kind = root
        .attrs
        .get("type")
        .map(|t| match t.rsplit(':').next().unwrap_or(t) {
            "ContainerNode" => Some(Kind::Container),
            "DataNode" | "UnstructuredDataNode" | "StructuredDataNode" => Some(Kind::Data),
            "LinkNode" => Some(Kind::Link),
            _ => None,
        });
    let kind = match kind {
        Some(Some(k)) => Some(k),
        Some(None) => {
            return Err(Error::Usage(format!(
                "TypeNotSupported: node type '{}'",
                root.attrs.get("type").cloned().unwrap_or_default()
            )));
        }
        None => None,
    };
    let uri = root.attrs.get("uri").cloned().unwrap_or_default();
    let props = els
        .iter()
        .filter(|e| e.name == "property")
        .filter_map(|e| {
            let nil = e.attrs.get("nil").is_some_and(|v| v == "true");
            e.attrs.get("uri").map(|u| {
                (
                    u.clone(),
                    if nil {
                        String::new()
                    } else {
                        e.text.trim().to_string()
                    },
                )
            })
        })
        .collect();
    let target = els
        .iter()
        .find(|e| e.name == "target")
        .map(|e| e.text.trim().to_string());
    Ok((uri, kind, props, target))
}

/// `PUT /vospace/nodes/{path}`: creates the node the body describes.
pub async fn put_node(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, Fault> {
    let who = who(&state, &caller, true)?;
    let path = path_of(&raw)?;
    let (uri, kind, props, target) = posted_node(&body)?;
    if !uri.is_empty() && uri_path(&uri)? != path {
        return Err(Error::Usage(format!(
            "InvalidURI: the node's uri {uri} is not the path it is put at"
        ))
        .into());
    }
    let node = match kind.unwrap_or(Kind::Data) {
        Kind::Container => state.storage.mkdir(&who, &path)?,
        Kind::Link => state.storage.link(
            &who,
            &path,
            &target.ok_or_else(|| Error::Usage("a LinkNode needs a target".into()))?,
        )?,
        // A node that exists is a DuplicateNode (409), whatever it is: a PUT never
        // empties a file.
        Kind::Data => state.storage.create_data(&who, &path).await?,
    };
    let node = if props.is_empty() {
        node
    } else {
        state
            .storage
            .set_properties(&who, &node.path, &props, &|g| group_id(&state, g))?
    };
    Ok(xml(StatusCode::CREATED, node_xml(&node, None, "max")))
}

/// `POST /vospace/nodes/{path}`: sets the properties the body lists.
pub async fn post_node(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Extension(caller): Extension<Caller>,
    body: axum::body::Bytes,
) -> Result<Response, Fault> {
    let who = who(&state, &caller, true)?;
    let path = path_of(&raw)?;
    let (uri, kind, props, _) = posted_node(&body)?;
    if !uri.is_empty() && uri_path(&uri)? != path {
        return Err(Error::Usage(format!(
            "InvalidURI: the node's uri {uri} is not the path it is posted to"
        ))
        .into());
    }
    let current = state.storage.node(&who, &path)?;
    if kind.is_some_and(|k| k != current.kind) {
        return Err(Error::Usage("InvalidArgument: a node's type cannot change".into()).into());
    }
    let node = state
        .storage
        .set_properties(&who, &path, &props, &|g| group_id(&state, g))?;
    Ok(xml(StatusCode::OK, node_xml(&node, None, "max")))
}

/// `DELETE /vospace/nodes/{path}`.
pub async fn delete_node(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Fault> {
    let who = who(&state, &caller, true)?;
    let path = path_of(&raw)?;
    state.storage.delete(&who, &path, true).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A transfer request.
#[derive(Debug, Clone)]
struct Transfer {
    target: String,
    direction: String,
    protocols: Vec<(String, Option<String>)>,
    keep_bytes: bool,
}

fn transfer_from(body: &[u8], f: &HashMap<String, String>) -> Result<Transfer> {
    if !body.iter().all(u8::is_ascii_whitespace) && body.trim_ascii_start().starts_with(b"<") {
        let els = elements(body)?;
        if els.first().is_none_or(|e| e.name != "transfer") {
            return Err(Error::Usage(
                "the body is not a VOSpace transfer document".into(),
            ));
        }
        let text = |n: &str| {
            els.iter()
                .find(|e| e.name == n)
                .map(|e| e.text.trim().to_string())
        };
        let mut protocols = Vec::new();
        let mut current: Option<(String, Option<String>)> = None;
        for e in &els {
            match e.name.as_str() {
                "protocol" => {
                    protocols.extend(current.take());
                    current = Some((e.attrs.get("uri").cloned().unwrap_or_default(), None));
                }
                "endpoint" => {
                    if let Some(c) = current.as_mut() {
                        c.1 = Some(e.text.trim().to_string());
                    }
                }
                _ => {}
            }
        }
        protocols.extend(current);
        return Ok(Transfer {
            target: text("target")
                .ok_or_else(|| Error::Usage("the transfer has no target".into()))?,
            direction: text("direction")
                .ok_or_else(|| Error::Usage("the transfer has no direction".into()))?,
            protocols,
            keep_bytes: text("keepBytes").is_some_and(|k| k == "true"),
        });
    }
    let get = |k: &str| {
        f.iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Ok(Transfer {
        target: get("TARGET").ok_or_else(|| Error::Usage("TARGET is missing".into()))?,
        direction: get("DIRECTION").ok_or_else(|| Error::Usage("DIRECTION is missing".into()))?,
        protocols: get("PROTOCOL").map(|p| vec![(p, None)]).unwrap_or_default(),
        keep_bytes: get("KEEPBYTES").is_some_and(|k| k == "true"),
    })
}

fn transfer_xml(t: &Transfer) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<vos:transfer xmlns:vos=\"{NS}\" version=\"2.1\">\n  \
         <vos:target>{}</vos:target>\n  <vos:direction>{}</vos:direction>\n",
        xml_escape(&t.target),
        xml_escape(&t.direction)
    );
    for (uri, endpoint) in &t.protocols {
        out.push_str(&format!("  <vos:protocol uri=\"{}\">", xml_escape(uri)));
        if let Some(e) = endpoint {
            out.push_str(&format!("<vos:endpoint>{}</vos:endpoint>", xml_escape(e)));
        }
        out.push_str("</vos:protocol>\n");
    }
    out.push_str(&format!(
        "  <vos:keepBytes>{}</vos:keepBytes>\n</vos:transfer>\n",
        t.keep_bytes
    ));
    out
}

/// Negotiates a push or pull: the endpoints for the protocols the client offers (ours when
/// it names none).
fn negotiate(state: &AppState, headers: &HeaderMap, who: &Who, t: &Transfer) -> Result<Transfer> {
    let path = uri_path(&t.target)?;
    let (upload, protocol) = match t.direction.as_str() {
        "pushToVoSpace" => (true, HTTP_PUT),
        "pullFromVoSpace" => (false, HTTP_GET),
        other => {
            return Err(Error::Usage(format!(
                "InvalidArgument: direction '{other}' is not a synchronous transfer; use \
                 pushToVoSpace or pullFromVoSpace (moves, copies and pullToVoSpace go to \
                 /vospace/transfers)"
            )));
        }
    };
    // The https variants are answered with the service's own base URL (https when it is
    // published behind TLS): clients such as CADC's `vos` only ever ask for those.
    let secure = protocol.replace("#http", "#https");
    let chosen = if t.protocols.is_empty() {
        protocol.to_string()
    } else {
        t.protocols
            .iter()
            .map(|(p, _)| p.as_str())
            .find(|p| *p == protocol || *p == secure)
            .map(str::to_string)
            .ok_or_else(|| {
                Error::Usage(format!(
                    "ProtocolNotSupported: this service transfers with {protocol} (or {secure})"
                ))
            })?
    };
    if upload {
        state.storage.access(who, &path, true).and_then(|ok| {
            if ok {
                Ok(())
            } else {
                Err(meridian_services::Error::Forbidden(format!(
                    "permission denied: you may not write {path}"
                )))
            }
        })?;
    } else {
        let node = state.storage.node(who, &path)?;
        if node.kind == Kind::Container {
            return Err(Error::Usage(format!(
                "InvalidArgument: {path} is a container; transfer its files one by one"
            )));
        }
    }
    let ticket = state.tickets.issue(who, Target::Node(path), upload);
    Ok(Transfer {
        protocols: vec![(chosen, Some(ticket_url(state, headers, &ticket)))],
        ..t.clone()
    })
}

/// The transfers negotiated so far (synchronous) and the asynchronous transfer jobs.
#[derive(Debug, Default)]
pub struct Transfers(Mutex<HashMap<String, TransferJob>>);

#[derive(Debug, Clone)]
struct TransferJob {
    owner: Option<String>,
    transfer: Transfer,
    phase: &'static str,
    error: Option<String>,
    result: Option<String>,
}

impl Transfers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TransferJob>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, job: TransferJob) -> String {
        let id = meridian_services::storage::random_key();
        let mut map = self.lock();
        // A bounded memory: the oldest finished transfers go first.
        if map.len() > 10_000 {
            let done: Vec<String> = map
                .iter()
                .filter(|(_, j)| j.phase != "PENDING")
                .map(|(k, _)| k.clone())
                .take(1000)
                .collect();
            for k in done {
                map.remove(&k);
            }
        }
        map.insert(id.clone(), job);
        id
    }

    /// The caller's job `id` (another's does not exist for them).
    fn get(&self, id: &str, who: &Who) -> Result<TransferJob> {
        self.lock()
            .get(id)
            .filter(|j| j.owner == who.user)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("no transfer {id}")))
    }
}

/// `POST /vospace/synctrans`: a push or pull negotiated at once.
pub async fn synctrans(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Result<Response, Fault> {
    let f = query_fields(req.uri());
    let headers = req.headers().clone();
    let form = posted(req).await?;
    let f: HashMap<String, String> = f.into_iter().chain(form.fields).collect();
    let t = transfer_from(&form.body, &f)?;
    let who = who(&state, &caller, t.direction == "pushToVoSpace")?;
    let done = negotiate(&state, &headers, &who, &t)?;
    let base = crate::vosi::base_url(&state, &headers);
    let redirect_to_endpoint = f
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("REQUEST") && v == "redirect");
    if redirect_to_endpoint {
        let endpoint = done.protocols[0].1.clone().unwrap_or_default();
        return Ok(see_other(&endpoint));
    }
    let id = state.transfers.add(TransferJob {
        owner: who.user.clone(),
        transfer: done,
        phase: "EXECUTING",
        error: None,
        result: None,
    });
    // A synchronous transfer is a UWS job too (phase, error), as clients check.
    Ok(see_other(&format!(
        "{base}/vospace/transfers/{id}/results/transferDetails"
    )))
}

fn see_other(location: &str) -> Response {
    (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

/// `GET /vospace/synctrans/{id}` (and `/vospace/transfers/{id}/results/transferDetails`):
/// the negotiated transfer with its endpoints.
pub async fn transfer_details(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Fault> {
    let who = who(&state, &caller, false)?;
    let job = state.transfers.get(&id, &who)?;
    Ok(xml(StatusCode::OK, transfer_xml(&job.transfer)))
}

/// `POST /vospace/transfers`: a transfer job; it runs at once with `PHASE=RUN`.
pub async fn create_transfer(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Result<Response, Fault> {
    let f = query_fields(req.uri());
    let headers = req.headers().clone();
    let form = posted(req).await?;
    let f: HashMap<String, String> = f.into_iter().chain(form.fields).collect();
    let t = transfer_from(&form.body, &f)?;
    let who = who(&state, &caller, true)?;
    let id = state.transfers.add(TransferJob {
        owner: who.user.clone(),
        transfer: t,
        phase: "PENDING",
        error: None,
        result: None,
    });
    if f.iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("PHASE") && v.eq_ignore_ascii_case("RUN"))
    {
        run_transfer(&state, &headers, &who, &id).await;
    }
    let base = crate::vosi::base_url(&state, &headers);
    Ok(see_other(&format!("{base}/vospace/transfers/{id}")))
}

/// Runs a pending transfer job to its end.
async fn run_transfer(state: &AppState, headers: &HeaderMap, who: &Who, id: &str) {
    let Ok(job) = state.transfers.get(id, who) else {
        return;
    };
    if job.phase != "PENDING" {
        return;
    }
    let t = &job.transfer;
    let outcome: Result<(Option<String>, Transfer)> = async {
        let from = uri_path(&t.target)?;
        match t.direction.as_str() {
            "pushToVoSpace" | "pullFromVoSpace" => Ok((None, negotiate(state, headers, who, t)?)),
            "pullToVoSpace" => {
                let url = t
                    .protocols
                    .iter()
                    .find_map(|(_, e)| e.clone())
                    .ok_or_else(|| Error::Usage("pullToVoSpace needs an endpoint".into()))?;
                crate::storage::load(state, who, &from, &url).await?;
                Ok((None, t.clone()))
            }
            direction if direction.starts_with("vos://") => {
                let to = uri_path(direction)?;
                let node = if t.keep_bytes {
                    state.storage.copy_node(who, &from, &to).await?
                } else {
                    state.storage.move_node(who, &from, &to)?
                };
                Ok((Some(node_uri(&node.path)), t.clone()))
            }
            other => Err(Error::Usage(format!(
                "InvalidArgument: direction '{other}' is not offered"
            ))),
        }
    }
    .await;
    let mut map = state.transfers.lock();
    if let Some(j) = map.get_mut(id) {
        match outcome {
            Ok((result, transfer)) => {
                j.phase = if transfer.direction == "pushToVoSpace"
                    || transfer.direction == "pullFromVoSpace"
                {
                    "EXECUTING"
                } else {
                    "COMPLETED"
                };
                j.result = result;
                j.transfer = transfer;
            }
            Err(e) => {
                j.phase = "ERROR";
                j.error = Some(fault_text(&e).1);
            }
        }
    }
}

/// `GET /vospace/transfers/{id}`: the UWS job document.
pub async fn transfer_job(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Fault> {
    let who = who(&state, &caller, false)?;
    let job = state.transfers.get(&id, &who)?;
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<uws:job xmlns:uws=\"http://www.ivoa.net/xml/UWS/v1.0\" \
         xmlns:xlink=\"http://www.w3.org/1999/xlink\" version=\"1.1\">\n  <uws:jobId>{id}</uws:jobId>\n  \
         <uws:ownerId>{}</uws:ownerId>\n  <uws:phase>{}</uws:phase>\n  <uws:jobInfo>\n{}  </uws:jobInfo>\n",
        xml_escape(job.owner.as_deref().unwrap_or("anonymous")),
        job.phase,
        transfer_xml(&job.transfer)
            .lines()
            .skip(1)
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    out.push_str("  <uws:results>\n");
    if job.phase != "PENDING" && job.phase != "ERROR" {
        out.push_str(&format!(
            "    <uws:result id=\"transferDetails\" xlink:href=\"/vospace/transfers/{id}/results/transferDetails\"/>\n"
        ));
    }
    if let Some(r) = &job.result {
        out.push_str(&format!(
            "    <uws:result id=\"dataNode\" xlink:href=\"{}\"/>\n",
            xml_escape(r)
        ));
    }
    out.push_str("  </uws:results>\n");
    if let Some(e) = &job.error {
        out.push_str(&format!(
            "  <uws:errorSummary type=\"fatal\" hasDetail=\"true\"><uws:message>{}</uws:message></uws:errorSummary>\n",
            xml_escape(e)
        ));
    }
    out.push_str("</uws:job>\n");
    Ok(xml(StatusCode::OK, out))
}

/// `GET /vospace/transfers/{id}/phase`.
pub async fn transfer_phase(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Fault> {
    let who = who(&state, &caller, false)?;
    Ok(text(state.transfers.get(&id, &who)?.phase))
}

/// `POST /vospace/transfers/{id}/phase`: `PHASE=RUN` runs the job.
pub async fn post_transfer_phase(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Result<Response, Fault> {
    let headers = req.headers().clone();
    let who = who(&state, &caller, true)?;
    state.transfers.get(&id, &who)?;
    let form = posted(req).await?;
    let phase = form
        .fields
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("PHASE"))
        .map(|(_, v)| v.to_ascii_uppercase());
    match phase.as_deref() {
        Some("RUN") => run_transfer(&state, &headers, &who, &id).await,
        Some("ABORT") => {
            if let Some(j) = state
                .transfers
                .lock()
                .get_mut(&id)
                .filter(|j| j.phase == "PENDING")
            {
                j.phase = "ABORTED";
            }
        }
        _ => return Err(Error::Usage("PHASE must be RUN or ABORT".into()).into()),
    }
    let base = crate::vosi::base_url(&state, &headers);
    Ok(see_other(&format!("{base}/vospace/transfers/{id}")))
}

/// `GET /vospace/transfers/{id}/error`.
pub async fn transfer_error(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Fault> {
    let who = who(&state, &caller, false)?;
    let job = state.transfers.get(&id, &who)?;
    Ok(text(job.error.unwrap_or_default()))
}

/// `GET /vospace/files/{path}`: a data node's bytes (a link's target's), for the caller.
pub async fn get_file(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, Fault> {
    let who = who(&state, &caller, false)?;
    let path = path_of(&raw)?;
    Ok(crate::storage::download(&state, &who, &Target::Node(path)).await?)
}

/// `GET /vospace/protocols`.
pub async fn protocols() -> Response {
    xml(
        StatusCode::OK,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<vos:protocols xmlns:vos=\"{NS}\">\n  \
             <vos:accepts><vos:protocol uri=\"{HTTP_PUT}\"/></vos:accepts>\n  \
             <vos:provides><vos:protocol uri=\"{HTTP_GET}\"/></vos:provides>\n</vos:protocols>\n"
        ),
    )
}

/// `GET /vospace/views`.
pub async fn views() -> Response {
    xml(
        StatusCode::OK,
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<vos:views xmlns:vos=\"{NS}\">\n  \
             <vos:accepts><vos:view uri=\"{CORE}#defaultview\"/></vos:accepts>\n  \
             <vos:provides><vos:view uri=\"{CORE}#defaultview\"/></vos:provides>\n</vos:views>\n"
        ),
    )
}

/// `GET /vospace/properties`.
pub async fn property_list() -> Response {
    let readonly = ["length", "date", "creator", "type"];
    let writable = [PUBLIC_READ, GROUP_READ, GROUP_WRITE, DESCRIPTION];
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<vos:properties xmlns:vos=\"{NS}\">\n  <vos:accepts>\n"
    );
    for p in writable {
        out.push_str(&format!("    <vos:property uri=\"{p}\"/>\n"));
    }
    out.push_str("  </vos:accepts>\n  <vos:provides>\n");
    for p in readonly {
        out.push_str(&format!("    <vos:property uri=\"{CORE}#{p}\"/>\n"));
    }
    for p in writable {
        out.push_str(&format!("    <vos:property uri=\"{p}\"/>\n"));
    }
    out.push_str("  </vos:provides>\n  <vos:contains/>\n</vos:properties>\n");
    xml(StatusCode::OK, out)
}

/// `GET /vospace/availability`.
pub async fn availability() -> Response {
    xml(
        StatusCode::OK,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<vosi:availability xmlns:vosi=\"http://www.ivoa.net/xml/VOSIAvailability/v1.0\">\n  \
         <vosi:available>true</vosi:available>\n</vosi:availability>\n"
            .into(),
    )
}

/// `GET /vospace/capabilities`.
pub async fn capabilities(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base_url = crate::vosi::base_url(&state, &headers);
    let base = xml_escape(&base_url);
    let cap = |standard: &str, path: &str| {
        format!(
            "  <capability standardID=\"{standard}\">\n    <interface xsi:type=\"vs:ParamHTTP\" role=\"std\" version=\"2.1\">\n      \
             <accessURL use=\"base\">{base}/vospace{path}</accessURL>\n      <securityMethod/>\n      \
             <securityMethod standardID=\"ivo://ivoa.net/sso#cookie\"/>\n    </interface>\n  </capability>\n"
        )
    };
    let mut out = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<vosi:capabilities xmlns:vosi=\"http://www.ivoa.net/xml/VOSICapabilities/v1.0\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xmlns:vs=\"http://www.ivoa.net/xml/VODataService/v1.1\">\n",
    );
    out.push_str(&cap(
        "ivo://ivoa.net/std/VOSI#capabilities",
        "/capabilities",
    ));
    out.push_str(&cap(
        "ivo://ivoa.net/std/VOSI#availability",
        "/availability",
    ));
    out.push_str(&cap("ivo://ivoa.net/std/VOSpace/v2.0#nodes", "/nodes"));
    out.push_str(&cap(
        "ivo://ivoa.net/std/VOSpace/v2.0#transfers",
        "/transfers",
    ));
    out.push_str(&cap("ivo://ivoa.net/std/VOSpace#sync-2.1", "/synctrans"));
    out.push_str(&cap("ivo://ivoa.net/std/VOSpace#files-proto", "/files"));
    out.push_str(&cap(
        "ivo://ivoa.net/std/VOSpace/v2.0#protocols",
        "/protocols",
    ));
    out.push_str(&cap("ivo://ivoa.net/std/VOSpace/v2.0#views", "/views"));
    out.push_str(&cap(
        "ivo://ivoa.net/std/VOSpace/v2.0#properties",
        "/properties",
    ));
    out.push_str("</vosi:capabilities>\n");
    xml(StatusCode::OK, out)
}
