//! Who a request comes from, and the account endpoints.
//!
//! A token travels as `Authorization: Bearer <token>`, as Data Lab's `X-DL-AuthToken`
//! header, or as the `meridian_token` cookie a browser gets at login. [`identify`] checks
//! it once per request and leaves a [`Caller`] in the request's extensions; protected routes
//! turn an invalid token into 401 ([`reject_invalid_token`]), while Data Lab's `isValid*`
//! calls answer `False` for it.
//!
//! Endpoints: `/api/auth/login`, `/logout`, `/whoami` and (when enabled) `/register` for
//! Meridian's own clients and the portal; `/auth/...` for Data Lab's `authClient`, as
//! ../shared/specs/datalab-clients-wire.md describes it.
//!
//! Every password check (both logins, `isValidPassword`, the old password of a
//! `passwordReset`) is throttled by the client's address, the TCP peer's ([`ClientAddr`]);
//! `X-Forwarded-For` is not read, since nothing says which proxy may be trusted to set it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, Extension, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use meridian_services::accounts::{Identity, Scope};

use crate::error::{Error, Result};
use crate::params::DaliRequest;
use crate::params::query_fields;
use crate::{AppState, text, text_with};

/// The cookie holding a browser's token.
pub const COOKIE: &str = "meridian_token";

/// Account settings of the service.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// Whether anyone may create an account at `/api/auth/register`.
    pub self_registration: bool,
    /// Whether callers without a token may run asynchronous jobs (they share one anonymous
    /// job list).
    pub anonymous_jobs: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            self_registration: false,
            anonymous_jobs: true,
        }
    }
}

/// Who a request comes from.
#[derive(Debug, Clone)]
pub enum Caller {
    /// No token (or Data Lab's anonymous one).
    Anonymous,
    /// A valid token's holder.
    User(Identity),
    /// A token that is unknown, revoked or expired, with the reason.
    Invalid(String),
}

impl Caller {
    /// The user's name, `None` for anonymous callers; 401 for an invalid token.
    pub fn user(&self) -> Result<Option<&str>> {
        match self {
            Caller::Anonymous => Ok(None),
            Caller::User(id) => Ok(Some(&id.user)),
            Caller::Invalid(why) => Err(Error::Services(meridian_services::Error::Unauthorized(
                why.clone(),
            ))),
        }
    }

    /// The identity, or 401 when there is none.
    pub fn identity(&self) -> Result<&Identity> {
        match self {
            Caller::User(id) => Ok(id),
            Caller::Anonymous => Err(Error::Services(meridian_services::Error::Unauthorized(
                "this needs a login: send a token as 'Authorization: Bearer <token>'".into(),
            ))),
            Caller::Invalid(why) => Err(Error::Services(meridian_services::Error::Unauthorized(
                why.clone(),
            ))),
        }
    }

    /// The user's name when the token carries `scope`: 401 without a login, 403 without
    /// the scope.
    pub fn user_with(&self, scope: Scope) -> Result<&str> {
        let id = self.identity()?;
        id.require(scope)?;
        Ok(&id.user)
    }

    /// Refuses (403) a token without `scope`; anonymous callers pass (what they may do is
    /// decided where it matters).
    pub fn allows(&self, scope: Scope) -> Result<()> {
        match self {
            Caller::User(id) => Ok(id.require(scope)?),
            _ => self.user().map(drop),
        }
    }
}

/// The token a request carries, if any: Bearer first, then Data Lab's header, then the
/// cookie.
pub fn token_of(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(t.trim().to_string());
        }
    }
    if let Some(v) = headers.get("x-dl-authtoken").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
}

/// The address a request comes from: the TCP peer's. Without one (a router served without
/// connection information) every request counts as coming from one unknown address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

impl ClientAddr {
    /// The address of the request with these extensions.
    pub fn of(extensions: &Extensions) -> Self {
        Self(
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip()),
        )
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        _: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.extensions))
    }
}

fn caller_for(state: &AppState, token: Option<&str>) -> Result<Caller> {
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Ok(Caller::Anonymous);
    };
    Ok(match state.accounts.authenticate(token) {
        Ok(Some(id)) => Caller::User(id),
        Ok(None) => Caller::Anonymous,
        Err(meridian_services::Error::Unauthorized(why)) => Caller::Invalid(why),
        Err(e) => return Err(e.into()),
    })
}

/// Middleware: checks the request's token and leaves a [`Caller`] for the handlers.
pub async fn identify(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = token_of(req.headers());
    // A login cookie whose token is no longer valid (expired, revoked, logged out
    // elsewhere) is cleared with the answer, so that the browser goes on as an anonymous
    // caller after the 401 rather than being refused for good.
    let from_cookie = token.is_some()
        && !req.headers().contains_key(header::AUTHORIZATION)
        && !req.headers().contains_key("x-dl-authtoken");
    match caller_for(&state, token.as_deref()) {
        Ok(caller) => {
            let stale = from_cookie && caller.user().is_err();
            req.extensions_mut().insert(caller);
            let mut response = next.run(req).await;
            if stale && let Ok(v) = header::HeaderValue::from_str(&login_cookie(&state, "", 0)) {
                response.headers_mut().append(header::SET_COOKIE, v);
            }
            response
        }
        Err(e) => e.into_response(),
    }
}

/// Middleware for protected routes: an unknown, revoked or expired token gets 401 rather
/// than being taken for anonymous.
pub async fn reject_invalid_token(
    Extension(caller): Extension<Caller>,
    req: Request,
    next: Next,
) -> Response {
    match caller.user() {
        Ok(_) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

/// The login cookie: never readable by scripts, sent on top-level navigations from other
/// sites but not on their subrequests (and `csrf` drops it from any cross-site request),
/// and only over TLS when the service is reached over https.
fn login_cookie(state: &AppState, token: &str, max_age_s: i64) -> String {
    let secure = state
        .public_url
        .as_deref()
        .is_some_and(|u| u.starts_with("https://"));
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}")
}

/// Runs the password hash off the async workers: argon2 takes tens of milliseconds on
/// purpose.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> meridian_services::Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("account task failed: {e}")))?
        .map_err(Error::from)
}

/// `POST /api/auth/login` (form or query: `username`, `password`): a JSON body with the
/// token and its expiry, and the token as a cookie for browsers. A wrong password and a
/// missing user get the same 401; repeated failures get 429 for a while.
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(from): ClientAddr,
    req: DaliRequest,
) -> Result<Response> {
    let user = req.params.required("username")?.to_string();
    let password = req.params.required("password")?.to_string();
    let accounts = state.accounts.clone();
    let who = user.clone();
    let issued = blocking(move || accounts.login(&who, &password, from)).await?;
    tracing::info!(user, "login");
    let max_age = ((issued.expires_ms - meridian_services::jobs::now_ms()) / 1000).max(0);
    let body = serde_json::json!({
        "token": issued.token,
        "user": user,
        "expires": meridian_services::jobs::format_time(issued.expires_ms),
    });
    Ok((
        [(
            header::SET_COOKIE,
            login_cookie(&state, &issued.token, max_age),
        )],
        Json(body),
    )
        .into_response())
}

/// `POST /api/auth/logout`: revokes the request's token and clears the cookie.
pub async fn logout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response> {
    caller.identity()?;
    let token = token_of(&headers).unwrap_or_default();
    state.accounts.revoke(&token)?;
    Ok((
        [(header::SET_COOKIE, login_cookie(&state, "", 0))],
        Json(serde_json::json!({"logged_out": true})),
    )
        .into_response())
}

/// `GET /api/auth/whoami`: the caller's name, scopes and token expiry; 401 without a
/// valid token.
pub async fn whoami(Extension(caller): Extension<Caller>) -> Result<Response> {
    let id = caller.identity()?;
    Ok(Json(serde_json::json!({
        "user": id.user,
        "scopes": id.scopes.names(),
        "expires": meridian_services::jobs::format_time(id.expires_ms),
    }))
    .into_response())
}

/// `POST /api/auth/register` (`username`, `password`, optional `email`), when the service
/// allows self-registration.
pub async fn register(State(state): State<AppState>, req: DaliRequest) -> Result<Response> {
    if !state.auth.self_registration {
        return Err(Error::Services(meridian_services::Error::Forbidden(
            "this service does not allow self-registration; ask its administrator for an account"
                .into(),
        )));
    }
    let user = req.params.required("username")?.to_string();
    let password = req.params.required("password")?.to_string();
    let email = req.params.get("email").map(str::to_string);
    let accounts = state.accounts.clone();
    let made =
        blocking(move || accounts.create_user(&user, &password, email.as_deref(), false)).await?;
    tracing::info!(user = made.name, "registered");
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"user": made.name})),
    )
        .into_response())
}

// ---------------------------------------------------------------------------------------
// Data Lab's authClient. Every call is a GET; booleans are the bodies `True` and `False`;
// failures are non-200 answers whose body starts with `Error: `.

fn boolean(b: bool) -> Response {
    text(if b { "True" } else { "False" })
}

fn dl_error(e: impl std::fmt::Display, status: StatusCode) -> Response {
    text_with(status, format!("Error: {e}"))
}

fn header_str<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// `GET /auth`: Data Lab's liveness answer.
pub async fn dl_alive() -> Response {
    text("Hello World! This is the Meridian authentication service.")
}

/// `GET /auth/{call}`: Data Lab's authClient calls.
pub async fn dl_call(
    State(state): State<AppState>,
    axum::extract::Path(call): axum::extract::Path<String>,
    req: Request,
) -> Response {
    let q = query_fields(req.uri());
    let get = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let accounts = state.accounts.clone();
    let valid = |token: &str| matches!(accounts.authenticate(token), Ok(Some(_)));
    let from = ClientAddr::of(req.extensions()).0;
    // Who asks, by the token the request carries (Data Lab's client sends its own in
    // X-DL-AuthToken once logged in).
    let asker = match req.extensions().get::<Caller>() {
        Some(Caller::User(id)) => Some(id.clone()),
        _ => None,
    };
    match call.as_str() {
        "login" => {
            let user = get("username").to_string();
            let password = header_str(&req, "x-dl-password")
                .map(str::to_string)
                .or_else(|| q.get("password").cloned())
                .unwrap_or_default();
            let accounts = state.accounts.clone();
            match blocking(move || accounts.login(&user, &password, from)).await {
                // The body is the token and nothing else: the client puts it in headers.
                Ok(t) => text(t.token),
                // The same words whether the user exists or not.
                Err(Error::Services(meridian_services::Error::Unauthorized(_))) => {
                    dl_error(DL_LOGIN_FAILED, StatusCode::UNAUTHORIZED)
                }
                Err(e) => {
                    let status = e.status();
                    dl_error(e, status)
                }
            }
        }
        "logout" => {
            let token = q
                .get("token")
                .cloned()
                .or_else(|| header_str(&req, "x-dl-authtoken").map(str::to_string))
                .unwrap_or_default();
            match state.accounts.revoke(&token) {
                Ok(()) => text("OK"),
                Err(e) => dl_error(e, StatusCode::UNAUTHORIZED),
            }
        }
        "isValidToken" | "isTokenLoggedIn" => boolean(valid(get("token"))),
        // Which names exist is told only to holders of a valid token (a group's owner adds
        // members by name anyway); anonymous callers get `False` for every name.
        "isValidUser" => {
            boolean(asker.is_some() && matches!(state.accounts.user(get("user")), Ok(Some(_))))
        }
        "isValidPassword" => {
            let (user, password) = (get("user").to_string(), get("password").to_string());
            let accounts = state.accounts.clone();
            match blocking(move || accounts.check_password(&user, &password, from)).await {
                Ok(ok) => boolean(ok),
                Err(e @ Error::Services(meridian_services::Error::RateLimited(_))) => {
                    dl_error(e, StatusCode::TOO_MANY_REQUESTS)
                }
                Err(_) => boolean(false),
            }
        }
        // Only about oneself (or, for an administrator, anyone): whether someone else is
        // logged in is nobody else's business, and would tell that the name exists.
        "isUserLoggedIn" => {
            let user = get("user");
            let may_ask = asker
                .as_ref()
                .is_some_and(|id| id.user == user || id.scopes.has(Scope::Admin));
            boolean(may_ask && matches!(state.accounts.logged_in(user), Ok(true)))
        }
        // `user` carries a token here. A valid token reaches the caller's own resources;
        // which resource it names is checked by the service that holds it.
        "hasAccess" => boolean(valid(get("user"))),
        "passwordReset" => password_reset(&state, req.headers(), get("username"), from).await,
        other => dl_error(
            format!("'{other}' is not an authentication call"),
            StatusCode::NOT_FOUND,
        ),
    }
}

/// What Data Lab's `/auth/login` says when it fails, whether the user exists or not.
pub const DL_LOGIN_FAILED: &str = "Invalid user name or password";

/// The header carrying the current password when one changes one's own.
pub const OLD_PASSWORD_HEADER: &str = "x-dl-old-password";

/// `GET /auth/passwordReset?username=U`, with the caller's token in `X-DL-AuthToken` and the
/// new password in `X-DL-Password`.
///
/// - One's own password (no `username`, or one's own): the current one must come too, in
///   `X-DL-Old-Password` (checked and throttled as a login). Every token of the user is
///   revoked, and the answer is a new token with the scopes of the caller's token, never
///   more.
/// - Another user's: only with a token that carries `admin`. That user's tokens are
///   revoked; the answer is the caller's own token, which stays valid (Data Lab's client
///   keeps the answer as its token). No token of the other user is issued.
async fn password_reset(
    state: &AppState,
    headers: &HeaderMap,
    username: &str,
    from: IpAddr,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let token = header("x-dl-authtoken").unwrap_or_default().trim();
    let caller = match caller_for(state, Some(token)) {
        Ok(Caller::User(id)) => id,
        _ => return dl_error("log in to change a password", StatusCode::UNAUTHORIZED),
    };
    let target = match username {
        "" => caller.user.clone(),
        u => u.to_string(),
    };
    let Some(new) = header("x-dl-password").map(str::to_string) else {
        return dl_error(
            "the new password goes in X-DL-Password",
            StatusCode::BAD_REQUEST,
        );
    };
    let accounts = state.accounts.clone();
    let changed = target.clone();
    let result = if target == caller.user {
        let Some(old) = header(OLD_PASSWORD_HEADER).map(str::to_string) else {
            return dl_error(
                "changing your password needs your current one in X-DL-Old-Password",
                StatusCode::FORBIDDEN,
            );
        };
        blocking(move || accounts.change_password(&target, &old, &new, from, caller.scopes))
            .await
            .map(|t| t.token)
    } else {
        if !caller.scopes.has(Scope::Admin) {
            return dl_error(
                "only an administrator's token may change another user's password",
                StatusCode::FORBIDDEN,
            );
        }
        let token = token.to_string();
        blocking(move || accounts.set_password(&target, &new))
            .await
            .map(|()| token)
    };
    match result {
        Ok(token) => {
            tracing::info!(user = changed, by = caller.user, "password changed");
            text(token)
        }
        Err(e) => {
            let status = e.status();
            dl_error(e, status)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_client_address_is_the_tcp_peers_and_never_a_header() {
        let mut ext = Extensions::new();
        assert_eq!(ClientAddr::of(&ext).0, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        ext.insert(ConnectInfo(SocketAddr::from(([192, 0, 2, 7], 40000))));
        assert_eq!(
            ClientAddr::of(&ext).0,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))
        );
        // A forwarded-for header does not change it.
        let (mut parts, ()) = axum::http::Request::builder()
            .header("x-forwarded-for", "203.0.113.9")
            .body(())
            .unwrap()
            .into_parts();
        parts.extensions = ext;
        let addr =
            futures::executor::block_on(ClientAddr::from_request_parts(&mut parts, &())).unwrap();
        assert_eq!(addr.0, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
    }

    #[test]
    fn the_token_comes_from_bearer_then_data_lab_header_then_cookie() {
        assert_eq!(token_of(&headers(&[])), None);
        assert_eq!(
            token_of(&headers(&[("authorization", "Bearer  abc ")])).as_deref(),
            Some("abc")
        );
        assert_eq!(
            token_of(&headers(&[
                ("x-dl-authtoken", "u.1.1.$1$x"),
                ("cookie", "meridian_token=c")
            ]))
            .as_deref(),
            Some("u.1.1.$1$x")
        );
        assert_eq!(
            token_of(&headers(&[
                ("authorization", "Bearer b"),
                ("x-dl-authtoken", "d")
            ]))
            .as_deref(),
            Some("b")
        );
        assert_eq!(
            token_of(&headers(&[(
                "cookie",
                "theme=dark; meridian_token=t1; other=x"
            )]))
            .as_deref(),
            Some("t1")
        );
        // Basic credentials are not a token.
        assert_eq!(
            token_of(&headers(&[("authorization", "Basic Zm9vOmJhcg==")])),
            None
        );
    }
}
