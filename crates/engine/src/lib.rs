//! The Meridian query engine on Apache DataFusion: one session builder (UDFs, limits),
//! spatial functions, a table provider serving HATS catalogs with spatial pruning, and the
//! translation of ADQL into DataFusion SQL.

mod engine;
mod error;
pub mod hats_table;
pub mod session;
pub mod translate;
pub mod udf;

pub use engine::{Engine, Lang, functions};
pub use error::{Error, Result};
pub use session::{EngineConfig, build_session};
