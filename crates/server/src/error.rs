//! The one place where failures become HTTP responses: a DALI error document (a VOTable
//! with `INFO name="QUERY_STATUS" value="ERROR"`) with the status DALI prescribes.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use meridian_formats::write::xml_escape;

/// Errors of the HTTP services.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed: a missing or invalid parameter.
    #[error("{0}")]
    Usage(String),
    /// The named resource does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The query failed.
    #[error(transparent)]
    Engine(#[from] meridian_engine::Error),
    /// The query ran past the service's time limit.
    #[error("the query exceeded the time limit of {0} s and was stopped")]
    Timeout(u64),
    /// Writing the result failed.
    #[error(transparent)]
    Format(#[from] meridian_formats::Error),
    /// An image request failed.
    #[error(transparent)]
    Images(#[from] meridian_images::Error),
    /// A job or account request failed.
    #[error(transparent)]
    Services(#[from] meridian_services::Error),
    /// A spectra request failed.
    #[error(transparent)]
    Spectra(#[from] meridian_spectra::Error),
    /// A SPARCL request refused with one of SPARCL's error codes (BADQUERY, UNKFIELD,
    /// BADCONST, NODRACCESS).
    #[error("{message}")]
    Sparcl {
        /// SPARCL's code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// An alert filter request failed.
    #[error(transparent)]
    Alerts(#[from] meridian_alerts::Error),
    /// An OAuth token request refused with one of RFC 6749's error codes
    /// (`invalid_client`, `invalid_grant`, ...).
    #[error("{message}")]
    OAuth {
        /// RFC 6749's code.
        code: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The service failed in a way no request can cause or fix.
    #[error("{0}")]
    Internal(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// DALI: a request the client can fix is 400, an unknown resource 404, a failure of
    /// the service 500 (507 when its disk is full); no valid credentials 401, a refused
    /// action 403.
    pub fn status(&self) -> StatusCode {
        if self.disk_full() {
            return StatusCode::INSUFFICIENT_STORAGE;
        }
        match self {
            Error::Usage(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Engine(e) => engine_status(e),
            Error::Services(e) => {
                use meridian_services::Error as S;
                match e {
                    S::NotFound(_) => StatusCode::NOT_FOUND,
                    S::Invalid(_) => StatusCode::BAD_REQUEST,
                    S::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                    S::Forbidden(_) => StatusCode::FORBIDDEN,
                    S::Conflict(_) => StatusCode::CONFLICT,
                    S::Quota(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    S::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
                    S::Storage(_) | S::Io { .. } | S::Record(_) => {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                }
            }
            Error::Images(meridian_images::Error::Invalid(_)) => StatusCode::BAD_REQUEST,
            Error::Sparcl { .. } => StatusCode::BAD_REQUEST,
            Error::OAuth { code, .. } => crate::oauth::status_of(code),
            Error::Spectra(e) => {
                use meridian_spectra::Error as S;
                match e {
                    S::Invalid(_) | S::UnknownField(_) | S::BadFile { .. } => {
                        StatusCode::BAD_REQUEST
                    }
                    S::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    S::NotFound(_) => StatusCode::NOT_FOUND,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                }
            }
            Error::Alerts(e) => {
                use meridian_alerts::Error as A;
                match e {
                    A::Invalid(_) => StatusCode::BAD_REQUEST,
                    A::NotFound(_) => StatusCode::NOT_FOUND,
                    A::Conflict(_) => StatusCode::CONFLICT,
                    A::Query(q) => engine_status(q),
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                }
            }
            Error::Images(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Format(_) | Error::Timeout(_) | Error::Internal(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }
}

impl Error {
    /// Whether the error comes from a full disk, wherever in its chain.
    pub fn disk_full(&self) -> bool {
        disk_full(self)
    }

    /// The message a client gets: the error's own words, after a plain statement when the
    /// service's disk is full (the operating system's words alone do not say whose disk).
    pub fn message(&self) -> String {
        let text = self.to_string();
        if self.disk_full() {
            let first = text.lines().next().unwrap_or_default().trim();
            format!("the service's disk is full, so nothing was kept; try again later ({first})")
        } else {
            text
        }
    }
}

/// Whether `e` or an error it wraps is a full disk: ENOSPC, a file system quota (EDQUOT),
/// or SQLite's full database.
pub fn disk_full(e: &(dyn std::error::Error + 'static)) -> bool {
    // Linux's ENOSPC and EDQUOT.
    const ENOSPC: i32 = 28;
    const EDQUOT: i32 = 122;
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && (io.kind() == std::io::ErrorKind::StorageFull
                || matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT)))
        {
            return true;
        }
        next = err.source();
    }
    // Errors that carry their cause as text (DataFusion's and Parquet's external errors,
    // an I/O error's custom payload) keep the operating system's or SQLite's words.
    let text = e.to_string();
    [
        "No space left on device",
        "Disk quota exceeded",
        "database or disk is full",
    ]
    .iter()
    .any(|w| text.contains(w))
}

/// The status of a query's failure: the request's fault (400) or the service's (500).
fn engine_status(e: &meridian_engine::Error) -> StatusCode {
    use meridian_engine::Error as E;
    match e {
        E::Adql(_) | E::Invalid(_) | E::Unsupported(_) => StatusCode::BAD_REQUEST,
        E::DataFusion(e) => {
            use meridian_engine::DataFusionError as D;
            match e.find_root() {
                // A query that asks for more than its limits allow is the request's
                // fault, not the service's.
                D::Plan(_)
                | D::SchemaError(..)
                | D::SQL(..)
                | D::NotImplemented(_)
                | D::ResourcesExhausted(_) => StatusCode::BAD_REQUEST,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            }
        }
        E::Catalog(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A DALI error document carrying `message`.
pub fn error_votable(message: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <VOTABLE version=\"1.4\" xmlns=\"http://www.ivoa.net/xml/VOTable/v1.3\">\n\
         <RESOURCE type=\"results\">\n\
         <INFO name=\"QUERY_STATUS\" value=\"ERROR\">{}</INFO>\n\
         </RESOURCE>\n\
         </VOTABLE>\n",
        xml_escape(message)
    )
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = self.message();
        if status.is_server_error() {
            tracing::error!(%status, error = %message, "request failed");
        } else {
            tracing::info!(%status, error = %message, "request refused");
        }
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/x-votable+xml")],
            error_votable(&message),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"Meridian\""),
            );
        }
        response
    }
}

/// An error of an OAuth token request: RFC 6749's JSON, `{"error", "error_description"}`
/// (section 5.2), never cached.
#[derive(Debug)]
pub struct OAuth(pub Error);

impl From<Error> for OAuth {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for OAuth {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = e.status();
        let message = e.message();
        tracing::info!(%status, error = %message, "oauth request refused");
        let code = match &e {
            Error::OAuth { code, .. } => *code,
            _ if status.is_server_error() => "server_error",
            _ => "invalid_request",
        };
        let mut response = (
            status,
            [(header::CACHE_CONTROL, "no-store")],
            axum::Json(serde_json::json!({"error": code, "error_description": message})),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Basic realm=\"Meridian\""),
            );
        }
        response
    }
}

/// An error of the SPARCL API: answered as the JSON body `sparclclient` maps to its
/// exceptions, `{"errorMessage", "errorCode"}` (status 400 for the request's faults, as
/// SPARCL does; 429 as `{"detail"}`).
#[derive(Debug)]
pub struct Sparcl(pub Error);

impl From<Error> for Sparcl {
    fn from(e: Error) -> Self {
        Self(e)
    }
}

impl IntoResponse for Sparcl {
    fn into_response(self) -> Response {
        let e = self.0;
        let status = e.status();
        let message = e.message();
        if status.is_server_error() {
            tracing::error!(%status, error = %message, "sparcl request failed");
        } else {
            tracing::info!(%status, error = %message, "sparcl request refused");
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            return (status, axum::Json(serde_json::json!({"detail": message}))).into_response();
        }
        let code = match &e {
            Error::Sparcl { code, .. } => code,
            Error::Spectra(meridian_spectra::Error::UnknownField(_)) => "UNKFIELD",
            _ if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN => {
                "NODRACCESS"
            }
            _ if status == StatusCode::NOT_FOUND => "BADPATH",
            _ if status.is_client_error() => "BADQUERY",
            _ => "INTERNAL",
        };
        let status = if status.is_client_error() {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        (
            status,
            axum::Json(serde_json::json!({"errorMessage": message, "errorCode": code})),
        )
            .into_response()
    }
}

impl From<meridian_engine::DataFusionError> for Error {
    fn from(e: meridian_engine::DataFusionError) -> Self {
        Error::Engine(e.into())
    }
}
