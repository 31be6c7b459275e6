/// Errors of the cluster processes and clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is wrong (an address, a port, a directory).
    #[error("{0}")]
    Config(String),
    /// The engine could not make its session.
    #[error(transparent)]
    Engine(#[from] meridian_engine::Error),
    /// Ballista failed (starting a process, reaching the scheduler).
    #[error("cluster: {0}")]
    Ballista(String),
    /// DataFusion failed.
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    /// A socket or file.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl From<ballista_core::error::BallistaError> for Error {
    fn from(e: ballista_core::error::BallistaError) -> Self {
        Error::Ballista(e.to_string())
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An engine error as DataFusion's, for the callbacks Ballista calls.
pub(crate) fn to_df(e: meridian_engine::Error) -> datafusion::error::DataFusionError {
    match e {
        meridian_engine::Error::DataFusion(e) => e,
        e => datafusion::error::DataFusionError::External(Box::new(e)),
    }
}
