//! The crate's one error type.

/// What went wrong with an image.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read as FITS.
    #[error(transparent)]
    Fits(#[from] meridian_formats::Error),
    /// The header has no usable celestial WCS, or one this crate cannot evaluate.
    #[error("{0}")]
    Wcs(String),
    /// A request or a name that is not valid.
    #[error("{0}")]
    Invalid(String),
    /// Pixels could not be read or written.
    #[error("{0}")]
    Pixels(String),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
