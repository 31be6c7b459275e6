//! Cross-site request forgery: a browser sends its cookies with requests that other sites
//! make it send (a link, an image, a form), and Data Lab's calls change state over GET
//! (`/storage/rm?file=...`). So the login cookie counts only on requests that the browser
//! says come from this service's own pages: `Sec-Fetch-Site: same-origin` (or `none`, a
//! request the user typed), else an `Origin` or `Referer` of this service, or that no
//! browser sent (none of these headers: a program such as pyvo's `AuthSession`). Elsewhere the
//! cookie is dropped before [`crate::auth::identify`] reads it, and the request goes on as
//! an anonymous one. One request is let through from anywhere: the top-level navigation
//! to OAuth's `/oauth/authorize`, whose answer only goes to a registered client's
//! registered address (see [`crate::oauth`]). Tokens sent in headers (`Authorization`, `X-DL-AuthToken`), as every
//! programmatic client sends them, are not affected: a page on another site cannot make a
//! browser add them.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;

/// What a request's headers say about where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// From this service's own pages, or typed by the user.
    Same,
    /// From another site.
    Cross,
    /// Nothing said (a non-browser client, or a very old browser).
    Unknown,
}

/// The `host[:port]` of a URL (`scheme://host[:port]/...`), lower-cased.
fn authority(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let auth = &rest[..end];
    let auth = auth.rsplit_once('@').map_or(auth, |(_, a)| a);
    (!auth.is_empty()).then(|| auth.to_ascii_lowercase())
}

fn origin_of(headers: &HeaderMap, own: &[String]) -> Origin {
    let get = |h: &str| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return match site.to_ascii_lowercase().as_str() {
            "same-origin" | "none" => Origin::Same,
            _ => Origin::Cross,
        };
    }
    for h in ["origin", "referer"] {
        if let Some(v) = get(h) {
            return match authority(v) {
                Some(a) if own.contains(&a) => Origin::Same,
                _ => Origin::Cross,
            };
        }
    }
    Origin::Unknown
}

/// The authorities this service answers as: the configured public URL's, and the `Host`
/// the request was sent to.
fn own_authorities(state: &AppState, headers: &HeaderMap) -> Vec<String> {
    let mut own = Vec::new();
    if let Some(a) = state.public_url.as_deref().and_then(authority) {
        own.push(a);
    }
    if let Some(h) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
        own.push(h.to_ascii_lowercase());
    }
    own
}

/// Whether the request carries the login cookie.
fn has_login_cookie(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(crate::auth::COOKIE))
}

/// Middleware: drops the cookies of requests that a page of another site may have made.
pub async fn cross_site_cookies(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if has_login_cookie(req.headers())
        && !crate::oauth::is_authorize_navigation(req.method(), req.uri().path())
    {
        let own = own_authorities(&state, req.headers());
        let honoured = match origin_of(req.headers(), &own) {
            Origin::Same => true,
            Origin::Cross => false,
            // No browser of the last years omits Sec-Fetch-Site; a request without it,
            // Origin and Referer comes from a program (pyvo's AuthSession sends the
            // cookie this way), which no other site can drive.
            Origin::Unknown => true,
        };
        if !honoured {
            tracing::info!(
                path = req.uri().path(),
                "login cookie ignored on a cross-site request"
            );
            req.headers_mut().remove(header::COOKIE);
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn where_a_request_comes_from() {
        let own = vec!["data.example.org".to_string(), "127.0.0.1:8070".to_string()];
        let o = |pairs| origin_of(&headers(pairs), &own);
        assert_eq!(o(&[("sec-fetch-site", "same-origin")]), Origin::Same);
        assert_eq!(o(&[("sec-fetch-site", "none")]), Origin::Same);
        assert_eq!(o(&[("sec-fetch-site", "cross-site")]), Origin::Cross);
        assert_eq!(o(&[("sec-fetch-site", "same-site")]), Origin::Cross);
        assert_eq!(o(&[("origin", "https://data.example.org")]), Origin::Same);
        assert_eq!(o(&[("origin", "http://127.0.0.1:8070")]), Origin::Same);
        assert_eq!(o(&[("origin", "https://evil.example")]), Origin::Cross);
        assert_eq!(o(&[("origin", "null")]), Origin::Cross);
        assert_eq!(
            o(&[("referer", "https://data.example.org/portal?q=1")]),
            Origin::Same
        );
        assert_eq!(
            o(&[("referer", "https://data.example.org.evil.example/")]),
            Origin::Cross
        );
        assert_eq!(o(&[]), Origin::Unknown);
    }
}
