/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ADQL does not parse or validate.
    #[error(transparent)]
    Adql(#[from] meridian_adql::Error),
    /// A catalog problem.
    #[error(transparent)]
    Catalog(#[from] meridian_catalog::Error),
    /// Planning or execution failed.
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A request names something that does not exist or is out of range.
    #[error("{0}")]
    Invalid(String),
    /// The query uses something not supported yet.
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
