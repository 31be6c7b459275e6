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

    pub(crate) fn format(file: &std::path::Path, message: impl Into<String>) -> Self {
        Error::Format {
            file: file.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
