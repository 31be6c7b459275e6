use std::path::PathBuf;

/// Errors of the catalog store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the input failed (bad file, bad value); the message names file, row, column.
    #[error(transparent)]
    Input(#[from] meridian_formats::Error),
    /// A row has an invalid position.
    #[error("{}: row {row}, column '{column}': {message}", file.display())]
    Position {
        /// Input file.
        file: PathBuf,
        /// 1-based data row.
        row: u64,
        /// The position column.
        column: String,
        /// What is wrong.
        message: String,
    },
    /// A file or directory of the store could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A catalog directory is not valid HATS, or a name is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A catalog that does not exist.
    #[error("no catalog named '{name}' in {}{hint}", store.display())]
    NotFound {
        /// Requested name.
        name: String,
        /// Store directory.
        store: PathBuf,
        /// "; did you mean ...?" or empty.
        hint: String,
    },
    /// Parquet error while writing or reading partitions.
    #[error("{}: parquet: {source}", path.display())]
    Parquet {
        /// The file.
        path: PathBuf,
        /// Underlying error.
        source: parquet::errors::ParquetError,
    },
    /// An object-store call failed (a missing object, a refused or failed request).
    #[error("{url}: {source}")]
    Object {
        /// The object or prefix.
        url: String,
        /// Underlying error.
        source: Box<object_store::Error>,
    },
    /// Arrow error.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Geometry error.
    #[error(transparent)]
    Sky(#[from] meridian_sky::Error),
    /// Ingest was cancelled.
    #[error("ingest cancelled")]
    Cancelled,
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn parquet(path: impl Into<PathBuf>, source: parquet::errors::ParquetError) -> Self {
        Error::Parquet {
            path: path.into(),
            source,
        }
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
