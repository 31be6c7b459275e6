//! The Meridian query engine on Apache DataFusion: one session builder (UDFs, limits),
//! spatial functions, a table provider serving HATS catalogs with spatial pruning, and the
//! translation of ADQL into DataFusion SQL.

mod engine;
mod error;
pub mod geometry;
pub mod hats_table;
pub mod session;
pub mod translate;
pub mod udf;
pub mod units;
pub mod xmatch;

pub use engine::{Engine, Lang, ScanReport, XMatchSpec, functions, id_column};
pub use error::{Error, Result};
pub use session::{EngineConfig, build_session};
pub use xmatch::Mode as XMatchMode;

pub use datafusion::dataframe::DataFrame;
pub use datafusion::physical_plan::{
    ExecutionPlan, SendableRecordBatchStream as RecordBatchStream,
};

/// The indented text of a physical plan.
pub fn display_plan(plan: &std::sync::Arc<dyn ExecutionPlan>) -> String {
    datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string()
}

/// Starts executing a physical plan of `engine`'s session, as one stream.
pub fn execute(
    plan: std::sync::Arc<dyn ExecutionPlan>,
    engine: &Engine,
) -> Result<RecordBatchStream> {
    Ok(datafusion::physical_plan::execute_stream(
        plan,
        engine.session().task_ctx(),
    )?)
}
