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
//! `ZtfCandidate`, `ZtfUpperLimit` and `Cutout`. [`load`] appends them to the alert
//! database: catalogs of the store (`dia_source`, `dia_object`, ...) served over TAP.

pub mod avro;
pub mod convert;
pub mod dead_letter;
pub mod dia;
pub mod kafka;
pub mod load;

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
    /// Kafka: the brokers, topics or offsets (the message names which).
    #[error("kafka {0}")]
    Kafka(String),
    /// The alert database (the store's catalogs) could not be written.
    #[error(transparent)]
    Catalog(#[from] meridian_catalog::Error),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
