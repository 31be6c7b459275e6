//! The crate's one error type.

use std::path::{Path, PathBuf};

/// What went wrong with spectra.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not a spectrum this crate can read: names the file, the HDU and why.
    #[error("{file}{}: {reason}", hdu.as_ref().map(|h| format!(" [HDU {h}]")).unwrap_or_default())]
    BadFile {
        /// The file.
        file: PathBuf,
        /// The HDU, when one is at fault.
        hdu: Option<String>,
        /// Why.
        reason: String,
    },
    /// A request, a name or a value that is not valid.
    #[error("{0}")]
    Invalid(String),
    /// A field the dataset does not have.
    #[error("{0}")]
    UnknownField(String),
    /// A dataset that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A request larger than the limits allow.
    #[error("{0}")]
    TooLarge(String),
    /// Work stopped before its end (its time limit passed, or its caller went away).
    #[error("{0}")]
    Stopped(String),
    /// Storage that is not what this version wrote.
    #[error("{0}")]
    Corrupt(String),
    /// The core table could not be written or read.
    #[error(transparent)]
    Catalog(#[from] meridian_catalog::Error),
    /// Arrow failed.
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet failed.
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// A file that cannot be read as a spectrum.
    pub fn bad_file(file: &Path, hdu: Option<&str>, reason: impl Into<String>) -> Self {
        Self::BadFile {
            file: file.to_path_buf(),
            hdu: hdu.map(str::to_string),
            reason: reason.into(),
        }
    }
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
