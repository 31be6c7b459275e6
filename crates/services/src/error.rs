//! Errors of the services.

/// Errors of the services.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such job (or it has been destroyed), user or token; the message names it.
    #[error("{0}")]
    NotFound(String),
    /// No valid credentials: a token that is unknown, revoked or expired, or a wrong
    /// password.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The thing to create exists already.
    #[error("{0}")]
    Conflict(String),
    /// Too many attempts; the message says when to try again.
    #[error("{0}")]
    RateLimited(String),
    /// A quota or size limit would be passed.
    #[error("{0}")]
    Quota(String),
    /// The request is not allowed in the job's current phase, or a value is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The job or account database failed.
    #[error("database: {0}")]
    Storage(#[from] rusqlite::Error),
    /// A job's files could not be written or read.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A job record could not be encoded or decoded.
    #[error("job record: {0}")]
    Record(#[from] serde_json::Error),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}
