//! Meridian's time domain: alert packets as the Rubin Observatory and ZTF publish them
//! (Avro, in object container files or in Kafka messages in the Confluent wire format) read
//! into Arrow, and split into the DIA tables they carry. Writer schemas come from the
//! files, from Rubin's schema tree or from a schema registry ([`schemas`]).
//!
//! A Rubin alert holds one new `diaSource`, the object's earlier sources
//! (`prvDiaSources`) and forced photometry (`prvDiaForcedSources`), its `diaObject`, and
//! three FITS cutouts (science, template, difference). [`dia::split`] turns a batch of
//! alerts into rows of `DiaSource`, `DiaForcedSource`, `DiaObject` and `Cutout` (the
//! cutouts addressed by the source's id), each source once however many alerts repeat it.
//! ZTF alerts (`candidate`, `prv_candidates`, three stamps) split the same way into
//! `ZtfCandidate`, `ZtfUpperLimit` and `Cutout`. [`load`] appends them to the alert
//! database: catalogs of the store (`dia_source`, `dia_object`, ...) served over TAP.
//!
//! Users' [`filters`] (ADQL over each incoming batch, see [`evaluate`]) send their matches
//! to a Kafka topic, a webhook, a MyDB table and an event stream ([`outputs`]).

pub mod avro;
pub mod convert;
mod datum;
pub mod dead_letter;
pub mod dia;
pub mod evaluate;
pub mod filters;
pub mod kafka;
pub mod load;
pub mod outputs;
pub mod schemas;
pub mod synthetic;

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
    /// A filter or output that cannot be used as given (the message says why).
    #[error("{0}")]
    Invalid(String),
    /// A filter that exists but is not there (or not the caller's).
    #[error("{0}")]
    NotFound(String),
    /// A name already taken.
    #[error("{0}")]
    Conflict(String),
    /// A filter's query failed.
    #[error(transparent)]
    Query(#[from] meridian_engine::Error),
    /// The filters' database.
    #[error("{0}")]
    Database(String),
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
