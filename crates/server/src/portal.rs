//! The web portal: the single-page application built from `web/` and embedded by
//! `meridian-portal`, served at `/`. Its hashed asset files are cached for good; the page
//! itself is revalidated. A content security policy keeps the page's requests on this
//! service (the sky viewer's default setup would call CDS servers).

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// What the portal's page may load and call: only this service.
const CSP: &str = "default-src 'self'; script-src 'self' 'unsafe-eval' 'wasm-unsafe-eval'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; connect-src 'self' data: blob:; \
    worker-src 'self' blob:; font-src 'self' data:; object-src 'none'; base-uri 'self'; \
    frame-ancestors 'self'; form-action 'self'";

/// `GET /` and any path no service claims: the portal's file there, or 404.
pub async fn file(req: Request) -> Response {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return StatusCode::NOT_FOUND.into_response();
    }
    let path = req.uri().path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    let Some(asset) = meridian_portal::get(path) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let gzip_ok = req
        .headers()
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|e| e.trim().split(';').next() == Some("gzip"))
        });
    let (body, gzipped) = match asset.gzip {
        Some(gz) if gzip_ok => (gz, true),
        _ => (asset.body, false),
    };
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    if gzipped {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if asset.gzip.is_some() {
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    // Vite names its output files by their content hash.
    let immutable = path.starts_with("assets/");
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    if asset.content_type.starts_with("text/html") {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
    }
    r
}
