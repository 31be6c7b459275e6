//! The one session builder: every query, local or on a Ballista cluster, runs in a session
//! made here, with the spatial UDFs, the cross-match rule and operator, and the configured
//! limits.

use std::sync::Arc;

use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::Result;
use crate::xmatch::{MeridianQueryPlanner, XMatchRule};
use datafusion::common::Result as DfResult;

/// Engine limits and parallelism.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Memory pool for query execution, bytes; beyond it operators spill or the query fails
    /// with a resources error (the process lives).
    pub memory_limit_bytes: usize,
    /// Parallel partitions per query (0: the number of cores).
    pub target_partitions: usize,
    /// Rows per batch.
    pub batch_size: usize,
    /// How cross-matches index their build side (see [`XMatchZones`]).
    pub xmatch_zones: XMatchZones,
}

/// How a cross-match runs: one index of its whole build input, or zone by zone over both
/// inputs sorted by HEALPix zone (see [`crate::zones`]), which holds one zone chunk per
/// partition instead of the whole build input and spreads over a cluster.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum XMatchZones {
    /// Zone by zone on a cluster, when the build input's size is unknown, or when its index
    /// would take more than a quarter of the memory budget; one index otherwise.
    #[default]
    Auto,
    /// Always zone by zone.
    Always,
    /// Always one index (a build input over the budget fails with a resources error).
    Never,
}

impl std::str::FromStr for XMatchZones {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "always" => Ok(Self::Always),
            "never" => Ok(Self::Never),
            _ => Err(format!(
                "'{s}' is not a cross-match zone setting (auto, always or never)"
            )),
        }
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            memory_limit_bytes: 2 << 30,
            target_partitions: 0,
            batch_size: 8192,
            xmatch_zones: XMatchZones::Auto,
        }
    }
}

/// Applies DataFusion's own environment convention on top of Meridian's settings, for
/// tuning and diagnosis: `DATAFUSION_EXECUTION_BATCH_SIZE=32768` sets
/// `datafusion.execution.batch_size`, and so on for every option.
fn apply_env_overrides(sc: &mut SessionConfig) -> Result<()> {
    let keys: Vec<String> = sc.options().entries().into_iter().map(|e| e.key).collect();
    for key in keys {
        let var = key.to_uppercase().replace('.', "_");
        if let Ok(value) = std::env::var(&var) {
            sc.options_mut().set(&key, &value)?;
            tracing::info!(option = %key, %value, "DataFusion option from the environment");
        }
    }
    Ok(())
}

/// Builds a session: UDFs, memory pool, parallelism.
pub fn build_session(config: &EngineConfig) -> Result<SessionContext> {
    let sc = configure(SessionConfig::new(), config)?;
    Ok(SessionContext::new_with_state(session_state(
        sc,
        runtime(config)?,
    )?))
}

/// The runtime of a session: the memory pool.
pub fn runtime(config: &EngineConfig) -> Result<Arc<RuntimeEnv>> {
    // A fair pool: spilling operators (sorts, aggregations, joins) share the budget evenly
    // and spill instead of starving each other; others (a cross-match's index) take what
    // they need or fail with a resources error.
    // A resources error names the largest consumers, so that a query over budget says what
    // took the memory.
    let pool = TrackConsumersPool::new(
        FairSpillPool::new(config.memory_limit_bytes),
        std::num::NonZeroUsize::new(5).expect("non-zero"),
    );
    Ok(RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(pool))
        .with_object_store_registry(object_store_registry())
        .build_arc()?)
}

/// The object-store registry of Meridian's runtimes (local files, and buckets reached on first
/// use): for processes that
/// build their runtimes themselves, as a cluster executor does for each task.
pub fn object_store_registry() -> Arc<dyn datafusion::execution::object_store::ObjectStoreRegistry>
{
    Arc::new(Stores::default())
}

/// The object stores plans read: local files, and the buckets that catalogs name
/// (`s3://bucket/...`), reached on first use with the process's object-store
/// configuration ([`meridian_catalog::objects`]). Every cluster process builds its runtime
/// here, so an executor reads the catalog that a client's plan names without being told.
#[derive(Debug, Default)]
struct Stores {
    known: datafusion::execution::object_store::DefaultObjectStoreRegistry,
}

impl datafusion::execution::object_store::ObjectStoreRegistry for Stores {
    fn register_store(
        &self,
        url: &url::Url,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> Option<Arc<dyn object_store::ObjectStore>> {
        self.known.register_store(url, store)
    }

    fn deregister_store(&self, url: &url::Url) -> DfResult<Arc<dyn object_store::ObjectStore>> {
        self.known.deregister_store(url)
    }

    fn get_store(&self, url: &url::Url) -> DfResult<Arc<dyn object_store::ObjectStore>> {
        self.known
            .get_store(url)
            .or_else(|unknown| match url.scheme() {
                "s3" | "s3a" | "memory" => {
                    let store = meridian_catalog::objects::store_for(url)
                        .map_err(|e| datafusion::common::DataFusionError::External(Box::new(e)))?;
                    self.known.register_store(url, store.clone());
                    Ok(store)
                }
                _ => Err(unknown),
            })
    }
}

/// Meridian's settings applied to `sc`: a plain configuration, or one that a cluster
/// process made with its own extensions (Ballista's settings and codecs).
pub fn configure(sc: SessionConfig, config: &EngineConfig) -> Result<SessionConfig> {
    let mut sc = sc
        .with_batch_size(config.batch_size)
        .with_information_schema(true)
        .with_extension(Arc::new(config.xmatch_zones));
    if config.target_partitions > 0 {
        sc = sc.with_target_partitions(config.target_partitions);
    }
    // Each sorting partition reserves room to merge its spill files; keep that a small share
    // of the pool so that small budgets still sort (DataFusion's default is 10 MB each).
    let partitions = sc.target_partitions().max(1);
    sc.options_mut().execution.sort_spill_reservation_bytes =
        (config.memory_limit_bytes / (8 * partitions)).min(10 << 20);
    // Catalog scans spread whole partition files over the partitions themselves
    // (`HatsTable`); cutting files into byte ranges as well would make a cone open its one
    // file twice.
    sc.options_mut().optimizer.repartition_file_scans = false;
    sc.options_mut().execution.parquet.pruning = true;
    sc.options_mut().execution.parquet.enable_page_index = true;
    // Late materialization: a scan's filters are evaluated while decoding, column by
    // column, cheapest and most selective first, and the other columns are decoded only for
    // the rows that pass (a selective filter on 10^6 rows: 29 -> 17 ms).
    sc.options_mut().execution.parquet.pushdown_filters = true;
    sc.options_mut().execution.parquet.reorder_filters = true;
    // Real queries (IN lists, OR chains of ids, nested subqueries) go far past the parser's
    // default of 50; the planning thread's stack is sized for this limit (crate::guard).
    sc.options_mut().sql_parser.recursion_limit =
        datafusion::common::config::ConfigNonZeroUsize::try_new(crate::guard::SQL_RECURSION_LIMIT)?;
    apply_env_overrides(&mut sc)?;
    Ok(sc)
}

/// A session state over `sc` (see [`configure`]) and `runtime`, with Meridian's optimizer
/// rule, query planner and functions: what every process that plans or runs Meridian's
/// queries uses, the cluster's scheduler and executors included.
pub fn session_state(sc: SessionConfig, runtime: Arc<RuntimeEnv>) -> Result<SessionState> {
    let state = SessionStateBuilder::new()
        .with_config(sc)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_optimizer_rule(Arc::new(XMatchRule))
        .with_optimizer_rule(Arc::new(crate::float_compare::Float32Compare))
        .with_query_planner(Arc::new(MeridianQueryPlanner))
        .build();
    let mut ctx = SessionContext::new_with_state(state);
    register_functions(&mut ctx)?;
    Ok(ctx.state())
}

/// Registers Meridian's functions (spatial, geometry, region, HEALPix, bounded, the
/// run-aware average and the SSE2 floor) in `ctx`.
pub fn register_functions(ctx: &mut SessionContext) -> Result<()> {
    ctx.register_udaf(crate::aggregate::avg_udaf());
    if let Ok(inner) = datafusion::execution::FunctionRegistry::udf(ctx, "floor") {
        ctx.register_udf(crate::floor::floor_udf(inner));
    }
    for udf in crate::udf::spatial_udfs()
        .into_iter()
        .chain(crate::geometry::geometry_udfs())
        .chain(crate::region_value::region_udfs())
        .chain(crate::udf::healpix_udfs())
    {
        ctx.register_udf(udf);
    }
    crate::bounded::register(ctx)?;
    Ok(())
}
