//! The Meridian query engine on Apache DataFusion: one session builder (UDFs, limits),
//! spatial functions, a table provider serving HATS catalogs with spatial pruning, and the
//! translation of ADQL into DataFusion SQL.

pub mod aggregate;
mod bounded;
pub mod codec;
mod deadline;
mod diagnose;
mod engine;
mod error;
pub mod float_compare;
pub mod floor;
pub mod footprint_table;
pub mod geometry;
pub mod guard;
pub mod hats_table;
pub mod match_tables;
pub mod region_value;
pub mod session;
pub mod stop;
pub mod translate;
pub mod udf;
pub mod units;
pub mod xmatch;
pub mod zones;

pub use codec::{MeridianCodec, plan_from_bytes, plan_to_bytes};
pub use deadline::deadline;
pub use engine::{
    ClusterMetrics, DistributionCheck, Engine, Lang, Remote, ScanReport, XMatchSpec, functions,
    id_column,
};
pub use error::{Error, Result};
pub use meridian_adql::identifier as adql_identifier;
pub use session::{
    EngineConfig, XMatchZones, build_session, configure, object_store_registry, register_functions,
    runtime, session_state,
};
pub use xmatch::Mode as XMatchMode;

pub use datafusion::dataframe::DataFrame;
pub use datafusion::error::DataFusionError;
pub use datafusion::physical_plan::{
    ExecutionPlan, SendableRecordBatchStream as RecordBatchStream,
};

/// Whether `df` is an `EXPLAIN` (or `EXPLAIN ANALYZE`), whose plan must stay the root.
pub fn is_explain(df: &DataFrame) -> bool {
    matches!(
        df.logical_plan(),
        datafusion::logical_expr::LogicalPlan::Explain(_)
            | datafusion::logical_expr::LogicalPlan::Analyze(_)
    )
}

/// The indented text of a physical plan.
pub fn display_plan(plan: &std::sync::Arc<dyn ExecutionPlan>) -> String {
    datafusion::physical_plan::displayable(plan.as_ref())
        .indent(true)
        .to_string()
}

/// Starts executing a physical plan of `engine`'s session, as one stream.
///
/// The plan is driven by a task of the engine's executor runtime (or the current one) and
/// its batches arrive over a small channel, so the caller's own task never runs operator
/// code: it stays free to notice a cancellation or a time limit even while an operator is
/// in a long CPU-bound poll. Dropping the stream aborts that task and raises the plan's stop
/// flag (see [`stop`]), so that an operator in the middle of a long poll ends within one
/// batch's work rather than when it is done. Must be called within a tokio runtime.
pub fn execute(
    plan: std::sync::Arc<dyn ExecutionPlan>,
    engine: &Engine,
) -> Result<RecordBatchStream> {
    use datafusion::physical_plan::stream::RecordBatchReceiverStream;
    use futures::StreamExt;
    let mut builder = RecordBatchReceiverStream::builder(plan.schema(), 2);
    let tx = builder.tx();
    let ctx = engine.session().task_ctx();
    let files = diagnose::plan_files(&plan);
    let stop = stop::Stop::default();
    let plan = stop::stoppable(plan, &stop)?;
    let schema = plan.schema();
    // Operators start (and spawn their own tasks) on the runtime that drives them.
    let task = async move {
        let mut inner = match datafusion::physical_plan::execute_stream(plan, ctx) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return Ok(());
            }
        };
        loop {
            // A dependency's panic on a corrupt file is the query's error, not the task's.
            let batch = match diagnose::Contained(inner.next()).await {
                Ok(Some(b)) => b,
                Ok(None) => break,
                Err(panic) => Err(DataFusionError::Execution(format!("corrupt data: {panic}"))),
            };
            let batch = match batch {
                Err(e) if diagnose::is_read_failure(&e) => {
                    Err(diagnose::named(files.clone(), e.to_string()).await)
                }
                other => other,
            };
            let failed = batch.is_err();
            // A closed channel means the consumer is gone: stop producing.
            if tx.send(batch).await.is_err() || failed {
                break;
            }
        }
        Ok(())
    };
    match engine.executor() {
        Some(rt) => builder.spawn_on(task, rt),
        None => builder.spawn(task),
    }
    let inner = builder.build();
    let guard = stop::RaiseOnDrop(stop);
    let batches = inner.map(move |b| {
        let _ = &guard;
        b
    });
    Ok(Box::pin(
        datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, batches),
    ))
}

/// Uniform doubles in [0, 1) from `seed`, for tests: a 64-bit linear congruential
/// generator, reproducible and with no dependency.
#[cfg(test)]
pub(crate) fn test_uniform(seed: u64) -> impl FnMut() -> f64 {
    let mut state = seed;
    move || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64
    }
}
