/// Errors raised for invalid geometry input. Each message names the offending value.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum Error {
    /// A coordinate is NaN, infinite or out of its valid range.
    #[error("invalid coordinate: {0}")]
    Coordinate(String),
    /// A region is malformed (too few vertices, self-intersecting, negative radius, ...).
    #[error("invalid region: {0}")]
    Region(String),
    /// A HEALPix order outside 0..=29 or a cell index outside that order.
    #[error("invalid HEALPix argument: {0}")]
    Healpix(String),
    /// A MOC could not be written or read.
    #[error("MOC: {0}")]
    Moc(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
