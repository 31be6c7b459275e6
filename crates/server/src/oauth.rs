//! Meridian as an OAuth 2.0 authorization server for the tools it runs beside (the notebook
//! hub): the authorization code grant of RFC 6749, with PKCE (RFC 7636) when the client
//! sends a challenge, and a user-info endpoint and discovery document in the shape of
//! OpenID Connect's, which JupyterHub's `GenericOAuthenticator` reads.
//!
//! A user logged in to the portal who opens a client's login is sent to
//! `/oauth/authorize`; their login cookie there (honoured on this one top-level navigation
//! from another site: the answer only ever goes to a registered client's registered
//! address) yields a one-time code, which the client exchanges at `/oauth/token`, with its
//! secret, for a Meridian token of its own. That token is issued on behalf of the login
//! ([`meridian_services::accounts::Accounts::issue_delegated`]): never `admin`, expiring
//! with the login at the latest, and revoked when the user logs out. Without a login the
//! user is sent to the portal's login page, which returns here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{Extension, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use meridian_services::accounts::{Scope, Scopes};
use rand::Rng as _;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::auth::{Caller, token_of};
use crate::error::{Error, OAuth, Result};
use crate::params::DaliRequest;
use crate::vosi::base_url;

/// How long an authorization code may wait to be exchanged.
const CODE_LIFETIME: Duration = Duration::from_secs(60);

/// Codes waiting to be exchanged beyond which new ones are refused (a client that never
/// exchanges its codes cannot grow the table without bound).
const MAX_PENDING_CODES: usize = 10_000;

/// A client allowed to sign users in through Meridian.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its `client_id`.
    pub id: String,
    /// Its `client_secret`.
    pub secret: String,
    /// The addresses codes may be sent to, compared whole.
    pub redirect_uris: Vec<String>,
}

/// A code handed out and not yet exchanged.
struct Grant {
    client_id: String,
    redirect_uri: String,
    /// The login the client's token is issued on behalf of.
    login: String,
    scopes: Scopes,
    /// PKCE: the S256 challenge the exchange must answer.
    challenge: Option<String>,
    expires: Instant,
}

/// The registered clients and the codes handed out.
#[derive(Default)]
pub struct Provider {
    clients: Vec<Client>,
    codes: Mutex<HashMap<String, Grant>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field(
                "clients",
                &self.clients.iter().map(|c| &c.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// 32 random characters safe in URLs.
fn random_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::rng();
    (0..32)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

impl Provider {
    /// A provider for `clients`.
    pub fn new(clients: Vec<Client>) -> Self {
        Self {
            clients,
            codes: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, id: &str) -> Option<&Client> {
        self.clients.iter().find(|c| c.id == id)
    }

    fn codes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Grant>> {
        self.codes.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The scopes a client asked for (Meridian's names, space separated; OpenID's `openid`,
/// `profile` and unknown names are ignored), every user scope when it named none.
fn requested_scopes(scope: Option<&str>) -> Scopes {
    let named: Vec<Scope> = scope
        .unwrap_or("")
        .split_whitespace()
        .filter_map(|s| Scope::ALL.into_iter().find(|k| k.as_str() == s))
        .collect();
    if named.is_empty() {
        Scopes::user()
    } else {
        Scopes::of(&named)
    }
}

/// Appends `pairs` to `uri`'s query.
fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{}", q.finish())
}

/// `GET /oauth/authorize` (`response_type=code`, `client_id`, `redirect_uri`, `state`,
/// optional `scope`, `code_challenge` and `code_challenge_method=S256`): a logged-in user
/// is sent back to the client with a code; anyone else to the portal's login, which
/// returns here. An unknown client or address is refused here, never redirected to.
pub async fn authorize(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
    req: DaliRequest,
) -> Result<Response> {
    let p = &req.params;
    let client_id = p.required("client_id")?;
    let client = state.oauth.client(client_id).ok_or_else(|| {
        Error::Usage(format!(
            "client_id '{client_id}' is not a client of this service"
        ))
    })?;
    let redirect_uri = match p.get("redirect_uri") {
        Some(r) => r,
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].as_str(),
        None => return Err(Error::Usage("redirect_uri is required".into())),
    };
    if !client.redirect_uris.iter().any(|r| r == redirect_uri) {
        return Err(Error::Usage(format!(
            "redirect_uri '{redirect_uri}' is not registered for client '{client_id}'"
        )));
    }
    // From here on, errors go back to the client (RFC 6749 section 4.1.2.1).
    let back = |error: &str, description: &str| -> Result<Response> {
        let mut pairs = vec![("error", error), ("error_description", description)];
        if let Some(s) = p.get("state") {
            pairs.push(("state", s));
        }
        Ok(Redirect::to(&with_query(redirect_uri, &pairs)).into_response())
    };
    if p.get("response_type") != Some("code") {
        return back(
            "unsupported_response_type",
            "only the authorization code grant (response_type=code) is offered",
        );
    }
    let challenge = match (p.get("code_challenge"), p.get("code_challenge_method")) {
        (None, _) => None,
        (Some(c), Some("S256")) if (43..=128).contains(&c.len()) => Some(c.to_string()),
        _ => {
            return back(
                "invalid_request",
                "PKCE needs code_challenge_method=S256 and a challenge of 43 to 128 characters",
            );
        }
    };
    let Caller::User(id) = &caller else {
        // To the portal's login page, which comes back to this very request.
        let next = uri
            .path_and_query()
            .map_or("/oauth/authorize", |pq| pq.as_str());
        let base = base_url(&state, &headers);
        let login_page = with_query(&format!("{base}/"), &[("next", next)]) + "#/data";
        return Ok(Redirect::to(&login_page).into_response());
    };
    let login = token_of(&headers).unwrap_or_default();
    let code = random_code();
    {
        let mut codes = state.oauth.codes();
        let now = Instant::now();
        codes.retain(|_, g| g.expires > now);
        if codes.len() >= MAX_PENDING_CODES {
            return back(
                "temporarily_unavailable",
                "too many sign-ins are waiting; try again in a minute",
            );
        }
        codes.insert(
            code.clone(),
            Grant {
                client_id: client.id.clone(),
                redirect_uri: redirect_uri.to_string(),
                login,
                scopes: requested_scopes(p.get("scope")),
                challenge,
                expires: now + CODE_LIFETIME,
            },
        );
    }
    tracing::info!(user = %id.user, client = %client.id, "oauth code issued");
    let mut pairs = vec![("code", code.as_str())];
    if let Some(s) = p.get("state") {
        pairs.push(("state", s));
    }
    Ok(Redirect::to(&with_query(redirect_uri, &pairs)).into_response())
}

fn oauth_error(code: &'static str, message: impl Into<String>) -> OAuth {
    OAuth(Error::OAuth {
        code,
        message: message.into(),
    })
}

/// The client's id and secret: HTTP Basic first (RFC 6749 section 2.3.1), else the form's
/// `client_id` and `client_secret`.
fn client_credentials(headers: &HeaderMap, req: &DaliRequest) -> Option<(String, String)> {
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            let (id, secret) = s.split_once(':')?;
            let decode = |t: &str| {
                form_urlencoded::parse(format!("x={t}").as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
            };
            Some((decode(id)?, decode(secret)?))
        });
    basic.or_else(|| {
        Some((
            req.params.get("client_id")?.to_string(),
            req.params.get("client_secret")?.to_string(),
        ))
    })
}

/// `POST /oauth/token` (`grant_type=authorization_code`, `code`, `redirect_uri`, the
/// client's credentials, and `code_verifier` when the code was asked for with PKCE): the
/// client's Meridian token, as `{"access_token", "token_type": "Bearer", "expires_in",
/// "scope"}`. Errors are RFC 6749's JSON (`invalid_client`, `invalid_grant`, ...).
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    req: DaliRequest,
) -> std::result::Result<Response, OAuth> {
    let (id, secret) = client_credentials(&headers, &req).ok_or_else(|| {
        oauth_error(
            "invalid_client",
            "client credentials are missing (HTTP Basic or client_id and client_secret)",
        )
    })?;
    let client = state
        .oauth
        .client(&id)
        .filter(|c| same_secret(&c.secret, &secret))
        .ok_or_else(|| oauth_error("invalid_client", "unknown client or wrong secret"))?;
    match req.params.get("grant_type") {
        Some("authorization_code") => {}
        other => {
            return Err(oauth_error(
                "unsupported_grant_type",
                format!("grant_type {other:?}: only authorization_code is offered"),
            ));
        }
    }
    let code = req
        .params
        .get("code")
        .ok_or_else(|| oauth_error("invalid_request", "code is missing"))?;
    // A code is used once, whatever the outcome.
    let grant = state
        .oauth
        .codes()
        .remove(code)
        .filter(|g| g.expires > Instant::now())
        .ok_or_else(|| oauth_error("invalid_grant", "the code is unknown, used or expired"))?;
    if grant.client_id != client.id {
        return Err(oauth_error(
            "invalid_grant",
            "the code was issued to another client",
        ));
    }
    if req
        .params
        .get("redirect_uri")
        .unwrap_or(grant.redirect_uri.as_str())
        != grant.redirect_uri
    {
        return Err(oauth_error(
            "invalid_grant",
            "redirect_uri differs from the one the code was issued for",
        ));
    }
    if let Some(challenge) = &grant.challenge {
        let verifier = req
            .params
            .get("code_verifier")
            .ok_or_else(|| oauth_error("invalid_grant", "code_verifier is missing (PKCE)"))?;
        let answer = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(Sha256::digest(verifier.as_bytes()));
        if !same_secret(&answer, challenge) {
            return Err(oauth_error("invalid_grant", "code_verifier does not match"));
        }
    }
    let issued = state
        .accounts
        .issue_delegated(&grant.login, grant.scopes)
        .map_err(|e| oauth_error("invalid_grant", format!("the login has ended: {e}")))?;
    let id = state
        .accounts
        .authenticate(&issued.token)
        .ok()
        .flatten()
        .ok_or_else(|| oauth_error("server_error", "the new token does not authenticate"))?;
    tracing::info!(user = %id.user, client = %client.id, "oauth token issued");
    let expires_in = ((issued.expires_ms - meridian_services::jobs::now_ms()) / 1000).max(0);
    Ok((
        [(header::CACHE_CONTROL, "no-store")],
        Json(serde_json::json!({
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": id.scopes.names().join(" "),
        })),
    )
        .into_response())
}

/// `GET /oauth/userinfo` with a token: who holds it, as OpenID Connect's claims (`sub`,
/// `preferred_username`, `name`, `email`) and Meridian's `scope`.
pub async fn userinfo(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response> {
    let id = caller.identity()?;
    let email = state.accounts.user(&id.user)?.and_then(|u| u.email);
    Ok(Json(serde_json::json!({
        "sub": id.user,
        "preferred_username": id.user,
        "name": id.user,
        "email": email,
        "scope": id.scopes.names().join(" "),
        "expires": meridian_services::jobs::format_time(id.expires_ms),
    }))
    .into_response())
}

/// `GET /.well-known/openid-configuration`: where the endpoints are (OpenID Connect
/// Discovery's names; Meridian issues opaque tokens, not ID tokens).
pub async fn discovery(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = base_url(&state, &headers);
    Json(serde_json::json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "userinfo_endpoint": format!("{base}/oauth/userinfo"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": Scope::ALL.iter().filter(|s| **s != Scope::Admin).map(|s| s.as_str()).collect::<Vec<_>>(),
        "subject_types_supported": ["public"],
    }))
    .into_response()
}

/// Whether a request is the top-level navigation to the authorization endpoint, on which
/// the login cookie counts even from another site (see the module's text).
pub fn is_authorize_navigation(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::GET && path == "/oauth/authorize"
}

/// The status a refused token request gets: 401 for a client that failed to
/// authenticate, 400 otherwise (RFC 6749 section 5.2).
pub fn status_of(code: &str) -> StatusCode {
    match code {
        "invalid_client" => StatusCode::UNAUTHORIZED,
        "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::BAD_REQUEST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_asked_for_never_include_admin_by_default() {
        assert_eq!(requested_scopes(None), Scopes::user());
        assert_eq!(requested_scopes(Some("openid profile")), Scopes::user());
        let read = requested_scopes(Some("openid catalogs:read"));
        assert!(read.has(Scope::ReadCatalogs) && !read.has(Scope::WriteStorage));
    }

    #[test]
    fn query_pairs_are_appended_encoded() {
        assert_eq!(
            with_query("http://h/cb", &[("code", "a b"), ("state", "x&y")]),
            "http://h/cb?code=a+b&state=x%26y"
        );
        assert_eq!(
            with_query("http://h/cb?x=1", &[("code", "c")]),
            "http://h/cb?x=1&code=c"
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd") && !same_secret("abc", "ab"));
    }
}
