//! Meridian's time domain: alert packets as the Rubin Observatory and ZTF publish them
//! (Avro, in object container files or in Kafka messages in the Confluent wire format) read
//! into Arrow, and split into the DIA tables they carry.
//!
//! A Rubin alert holds one new `diaSource`, the object's earlier sources
//! (`prvDiaSources`) and forced photometry (`prvDiaForcedSources`), its `diaObject`, and
//! three FITS cutouts (science, template, difference). [`dia::split`] turns a batch of
//! alerts into rows of `DiaSource`, `DiaForcedSource`, `DiaObject` and `Cutout` (the
//! cutouts addressed by the source's id), each source once however many alerts repeat it.
//! ZTF alerts (`candidate`, `prv_candidates`, three stamps) split the same way into
//! `ZtfCandidate`, `ZtfUpperLimit` and `Cutout`.

pub mod avro;
pub mod convert;
pub mod dia;

/// Errors of alert reading.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Avro that cannot be read: the message names the file or message and what is wrong.
    #[error("{0}")]
    Avro(String),
    /// Alerts of a shape Meridian does not know (neither Rubin's nor ZTF's).
    #[error("{0}")]
    Shape(String),
    /// Arrow error while splitting alerts into tables.
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
