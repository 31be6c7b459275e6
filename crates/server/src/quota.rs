//! Per-client limits at the door: every service request is counted against its client (a
//! user, or an anonymous caller's address) by [`meridian_services::quota`]; a request over
//! a limit gets 429 with `Retry-After` and a message naming the limit, in the form its
//! service answers errors in. Administrators are exempt; so are the health and metrics
//! endpoints, HiPS tiles and the portal's own files (a browser fetches many at once).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use meridian_services::accounts::Scope;
use meridian_services::quota::{Kind, Quotas, Refusal, Running};

use crate::AppState;
use crate::auth::{Caller, ClientAddr};
use crate::error::{Error, Sparcl};

/// Paths of the services (anything else is the portal's files).
const SERVICES: [&str; 17] = [
    "/tap",
    "/sia",
    "/ssa",
    "/soda",
    "/datalink",
    "/lightcurve",
    "/spectra",
    "/images",
    "/preview",
    "/moc",
    "/hips2fits",
    "/api",
    "/storage",
    "/vospace",
    "/query",
    "/auth",
    "/sparcl",
];

/// Paths of queries: they count against the queries a client may run at once.
const QUERIES: [&str; 10] = [
    "/tap/sync",
    "/sia/",
    "/ssa",
    "/soda/sync",
    "/datalink",
    "/lightcurve",
    "/spectra/stack",
    "/hips2fits",
    "/query/",
    "/sparcl/api/",
];

fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'))
}

/// What `req` is for the limits; `None` when it is not counted.
fn kind_of(req: &Request) -> Option<Kind> {
    let path = req.uri().path();
    if !SERVICES.iter().any(|p| under(path, p)) {
        return None;
    }
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let upload = (req.method() == Method::PUT && path != "/query/import")
        || (req.method() == Method::POST && (multipart || path == "/query/import"));
    // VOSI resources under a query service are metadata.
    let vosi = path.ends_with("/capabilities") || path.ends_with("/availability");
    Some(Kind {
        query: !vosi && QUERIES.iter().any(|p| under(path, p)),
        upload,
    })
}

/// Middleware (after [`crate::auth::identify`]): admits the request or answers 429.
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(kind) = kind_of(&req) else {
        return next.run(req).await;
    };
    let client = match req.extensions().get::<Caller>() {
        Some(Caller::User(id)) if id.scopes.has(Scope::Admin) => {
            return next.run(req).await;
        }
        Some(Caller::User(id)) => format!("user {}", id.user),
        _ => format!("address {}", ClientAddr::of(req.extensions()).0),
    };
    let quotas = state.quotas.clone();
    let running = match quotas.admit(&client, kind) {
        Ok(r) => r,
        Err(refusal) => {
            tracing::info!(
                client,
                limit = refusal.limit.as_str(),
                retry_after_s = refusal.retry_after_s,
                "request over a limit"
            );
            return refused(req.uri().path(), &refusal);
        }
    };
    let response = next.run(req).await;
    if quotas.config().result_mib_per_day == 0 && running.is_none() {
        return response;
    }
    counted(response, quotas, client, running)
}

/// The response with its body's bytes counted against `client`; the query's place
/// (`running`) is held until a streamed body is sent or dropped.
fn counted(
    response: Response,
    quotas: Arc<Quotas>,
    client: String,
    running: Option<Running>,
) -> Response {
    // A body of known size (in memory: the work behind it is done) is counted at once and
    // sent as it is, with its Content-Length; a streamed one is counted as it goes.
    if let Some(n) = axum::body::HttpBody::size_hint(response.body()).exact() {
        quotas.add_bytes(&client, n);
        return response;
    }
    let (parts, body) = response.into_parts();
    let mut meter = Meter {
        quotas,
        client,
        pending: 0,
        _running: running,
    };
    let stream = body.into_data_stream().map(move |chunk| {
        if let Ok(b) = &chunk {
            meter.add(b.len() as u64);
        }
        chunk
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Counts bytes sent, a megabyte at a time and when dropped.
struct Meter {
    quotas: Arc<Quotas>,
    client: String,
    pending: u64,
    _running: Option<Running>,
}

impl Meter {
    fn add(&mut self, n: u64) {
        self.pending += n;
        if self.pending >= 1 << 20 {
            self.quotas.add_bytes(&self.client, self.pending);
            self.pending = 0;
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if self.pending > 0 {
            self.quotas.add_bytes(&self.client, self.pending);
        }
    }
}

/// 429 with `Retry-After`, as the service at `path` answers errors.
fn refused(path: &str, refusal: &Refusal) -> Response {
    let error = Error::Services(meridian_services::Error::RateLimited(
        refusal.message.clone(),
    ));
    let mut response = if under(path, "/sparcl") {
        Sparcl(error).into_response()
    } else if ["/query", "/auth", "/storage"]
        .iter()
        .any(|p| under(path, p))
    {
        // Data Lab's services answer errors as text.
        crate::text_with(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Error: {}", refusal.message),
        )
    } else if under(path, "/api") {
        (
            StatusCode::TOO_MANY_REQUESTS,
            axum::Json(serde_json::json!({"error": refusal.message})),
        )
            .into_response()
    } else {
        error.into_response()
    };
    if let Ok(v) = HeaderValue::from_str(&refusal.retry_after_s.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(method: Method, path: &str, content_type: Option<&str>) -> Option<Kind> {
        let mut b = axum::http::Request::builder().method(method).uri(path);
        if let Some(c) = content_type {
            b = b.header(header::CONTENT_TYPE, c);
        }
        kind_of(&b.body(Body::empty()).unwrap())
    }

    #[test]
    fn requests_are_told_apart() {
        let q = |query, upload| Some(Kind { query, upload });
        assert_eq!(kind(Method::GET, "/tap/sync", None), q(true, false));
        assert_eq!(
            kind(
                Method::POST,
                "/tap/sync",
                Some("multipart/form-data; boundary=x")
            ),
            q(true, true)
        );
        assert_eq!(kind(Method::GET, "/tap/tables", None), q(false, false));
        assert_eq!(kind(Method::GET, "/sia/query", None), q(true, false));
        assert_eq!(kind(Method::POST, "/query/import", None), q(true, true));
        assert_eq!(kind(Method::PUT, "/storage/xfer/abc", None), q(false, true));
        assert_eq!(kind(Method::GET, "/ssa", None), q(true, false));
        assert_eq!(
            kind(Method::GET, "/ssa/capabilities", None),
            q(false, false)
        );
        assert_eq!(
            kind(Method::GET, "/sia/availability", None),
            q(false, false)
        );
        // Not counted: health, metrics, HiPS tiles, the portal's files.
        for p in [
            "/health",
            "/metrics",
            "/hips/gaia/Norder3/Dir0/Npix1.tsv",
            "/",
            "/app.js",
        ] {
            assert_eq!(kind(Method::GET, p, None), None, "{p}");
        }
        // A path that only starts like a service is not one.
        assert_eq!(kind(Method::GET, "/tapestry", None), None);
    }
}
