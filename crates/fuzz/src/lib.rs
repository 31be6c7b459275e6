//! Fuzz targets for what Meridian reads from strangers: the ADQL and SQL front ends, STC-S
//! regions, the VOTable, FITS, CSV, Parquet and Avro readers, HTTP parameters and multipart
//! bodies, and VOSpace's XML documents.
//!
//! Each target takes arbitrary bytes and must return for every input, accepting or refusing
//! it: a panic, an abort, a hang, or an HTTP 500 is a finding. Two drivers run them:
//!
//! - libFuzzer (`src/bin/meridian-fuzz.rs`, built with coverage instrumentation on the
//!   stable toolchain by `scripts/fuzz.sh`), for long runs;
//! - the tests (`tests/short.rs`), which run every target over its seeds, the regression
//!   inputs kept in `crates/fuzz/regressions/`, and a fixed number of seeded mutations
//!   ([`mutate`]), in every `cargo test`.
//!
//! Targets that need a service (queries, HTTP) share a small world built once per process
//! ([`world`]): a 40-row catalog, the query engine over it, and for HTTP the whole router
//! with a user and their token, rebuilt every few thousand requests so that what requests
//! create does not pile up.

pub mod mutate;
pub mod seeds;
mod targets;
pub mod world;

/// The fuzz targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// ADQL text: parsed, validated, translated, planned and run (first rows).
    Adql,
    /// SQL text (the `/query` and `meridian query --sql` language): guarded, planned, run.
    Sql,
    /// STC-S region strings (TAP `POS`, `REGION`, SIA `POS`): parsed, and the shape's area,
    /// coverage and containment computed.
    Stcs,
    /// VOTable documents, as uploaded or imported.
    Votable,
    /// FITS files: binary and ASCII tables, image headers and their WCS.
    Fits,
    /// CSV text.
    Csv,
    /// Parquet files.
    Parquet,
    /// Avro: object container files and Confluent-framed alert messages, split into DIA
    /// tables.
    Avro,
    /// HTTP requests (method, path, query string, headers, body: url-encoded forms and
    /// multipart uploads) sent to the whole router.
    Http,
    /// VOSpace XML documents (nodes, transfers) sent to the VOSpace service.
    Vospace,
}

impl Target {
    /// Every target.
    pub const ALL: [Target; 10] = [
        Target::Adql,
        Target::Sql,
        Target::Stcs,
        Target::Votable,
        Target::Fits,
        Target::Csv,
        Target::Parquet,
        Target::Avro,
        Target::Http,
        Target::Vospace,
    ];

    /// The target's name (as `scripts/fuzz.sh` and the regression directories spell it).
    pub fn name(self) -> &'static str {
        match self {
            Target::Adql => "adql",
            Target::Sql => "sql",
            Target::Stcs => "stcs",
            Target::Votable => "votable",
            Target::Fits => "fits",
            Target::Csv => "csv",
            Target::Parquet => "parquet",
            Target::Avro => "avro",
            Target::Http => "http",
            Target::Vospace => "vospace",
        }
    }

    /// The target named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The largest input worth trying, bytes (libFuzzer's `-max_len`).
    pub fn max_len(self) -> usize {
        match self {
            Target::Adql | Target::Sql | Target::Stcs => 4 << 10,
            Target::Http | Target::Vospace => 16 << 10,
            Target::Votable | Target::Csv => 128 << 10,
            Target::Parquet => 256 << 10,
            Target::Fits | Target::Avro => 512 << 10,
        }
    }
}

/// What a target made of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Read, or answered with a success.
    Accepted,
    /// Refused with an error (the expected answer to most mutated inputs).
    Refused,
}

/// Runs `target` on `data`. Returns for every input; panics on a finding that is not itself
/// a panic (an HTTP 500 answer, an error without a message).
pub fn run(target: Target, data: &[u8]) -> Outcome {
    match target {
        Target::Adql => targets::query(data, meridian_engine::Lang::Adql),
        Target::Sql => targets::query(data, meridian_engine::Lang::Sql),
        Target::Stcs => targets::stcs(data),
        Target::Votable => targets::table(data, "input.vot"),
        Target::Fits => targets::fits(data),
        Target::Csv => targets::table(data, "input.csv"),
        Target::Parquet => targets::table(data, "input.parquet"),
        Target::Avro => targets::avro(data),
        Target::Http => targets::http(data),
        Target::Vospace => targets::vospace(data),
    }
}
