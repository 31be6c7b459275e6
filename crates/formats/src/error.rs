use std::path::PathBuf;

/// Errors of the format readers. Every variant names the file; value errors also name the
/// line or row and the column.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{}: {source}", file.display())]
    Io {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing a result failed (disk full, closed pipe...).
    #[error("writing the result: {0}")]
    Output(#[from] std::io::Error),
    /// The file is not in the format its name or content claims, or is structurally broken.
    #[error("{}: {message}", file.display())]
    Format {
        /// The file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A value could not be read as its column's type, or a row is malformed.
    #[error("{}: {location}, column '{column}': {message}", file.display())]
    Value {
        /// The file.
        file: PathBuf,
        /// "line N" for text formats, "row N" for binary formats.
        location: String,
        /// The column name.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// A schema file is invalid.
    #[error("schema file {}: {message}", file.display())]
    Schema {
        /// The schema file.
        file: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An Arrow error while assembling batches.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// The file passes a limit of [`crate::InputLimits`] (or declares sizes that would):
    /// too large after decompression, a decompression bomb, a record or a declared array
    /// too long, too many columns.
    #[error("{}: {message}", file.display())]
    Limit {
        /// The file.
        file: PathBuf,
        /// Which limit, and by how much.
        message: String,
    },
    /// A Parquet error.
    #[error("{}: parquet: {source}", file.display())]
    Parquet {
        /// The file.
        file: PathBuf,
        /// The underlying error.
        source: ::parquet::errors::ParquetError,
    },
}

impl Error {
    pub(crate) fn io(file: &std::path::Path, source: std::io::Error) -> Self {
        if let Some(limit) = source
            .get_ref()
            .and_then(|e| e.downcast_ref::<crate::limits::LimitExceeded>())
        {
            return Error::Limit {
                file: file.to_path_buf(),
                message: limit.0.clone(),
            };
        }
        // A truncated gzip stream surfaces as UnexpectedEof from the decoder.
        if source.kind() == std::io::ErrorKind::UnexpectedEof {
            return Error::Format {
                file: file.to_path_buf(),
                message: format!("file ends unexpectedly (truncated or corrupt): {source}"),
            };
        }
        if source.kind() == std::io::ErrorKind::InvalidInput
            || source.kind() == std::io::ErrorKind::InvalidData
        {
            return Error::Format {
                file: file.to_path_buf(),
                message: format!("corrupt compressed data: {source}"),
            };
        }
        Error::Io {
            file: file.to_path_buf(),
            source,
        }
    }

    pub(crate) fn limit(file: &std::path::Path, message: impl Into<String>) -> Self {
        Error::Limit {
            file: file.to_path_buf(),
            message: message.into(),
        }
    }

    /// What is wrong, without the file's path (for messages to remote clients, who should
    /// not learn where the service keeps files).
    pub fn detail(&self) -> String {
        match self {
            Error::Io { source, .. } => source.to_string(),
            Error::Format { message, .. } | Error::Limit { message, .. } => message.clone(),
            Error::Value {
                location,
                column,
                message,
                ..
            } => format!("{location}, column '{column}': {message}"),
            Error::Schema { message, .. } => format!("schema: {message}"),
            Error::Parquet { source, .. } => format!("parquet: {source}"),
            Error::Output(e) => format!("writing the result: {e}"),
            Error::Arrow(e) => format!("arrow: {e}"),
        }
    }

    /// Whether a limit of [`crate::InputLimits`] was passed.
    pub fn is_limit(&self) -> bool {
        matches!(self, Error::Limit { .. })
    }

    pub(crate) fn format(file: &std::path::Path, message: impl Into<String>) -> Self {
        Error::Format {
            file: file.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
