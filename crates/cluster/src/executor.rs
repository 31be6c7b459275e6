//! The cluster's executor: Ballista's, running plan stages with Meridian's functions,
//! operators and memory budget.

use std::path::PathBuf;
use std::sync::Arc;

use ballista_core::ConfigProducer;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use meridian_engine::EngineConfig;

use crate::codec::{LogicalCodec, PhysicalCodec};
use crate::scheduler::session_config;
use crate::{Error, Result, scheduler_address};

/// How an executor runs.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `df://host:port`.
    pub scheduler: String,
    /// Address its services listen at.
    pub bind_host: String,
    /// Host name the scheduler and clients reach it by (default: `bind_host`).
    pub external_host: Option<String>,
    /// Port of its data (Arrow Flight) service; 0 picks a free one.
    pub port: u16,
    /// Directory of the stage outputs it keeps for the next stages (default: a temporary
    /// directory).
    pub work_dir: Option<PathBuf>,
    /// Partitions it runs at once (0: the number of cores).
    pub concurrent_tasks: usize,
    /// Memory budget and session settings.
    pub engine: EngineConfig,
    /// Its identifier (default: a random one).
    pub id: Option<String>,
}

/// A free port on `host` (Ballista tells the scheduler the configured port, not the one
/// bound, so port 0 must be resolved first).
fn free_port(host: &str) -> Result<u16> {
    Ok(std::net::TcpListener::bind((host, 0))?.local_addr()?.port())
}

/// Runs an executor until it is stopped (Ctrl-C, SIGTERM, or the scheduler's request).
pub async fn run(opts: ExecutorOptions) -> Result<()> {
    let (scheduler_host, scheduler_port) = scheduler_address(&opts.scheduler)?;
    let engine = opts.engine.clone();
    session_config(&engine)?;
    let runtime = meridian_engine::runtime(&engine)?;
    let registry = BallistaFunctionRegistry::from(&meridian_engine::session_state(
        session_config(&engine)?,
        runtime,
    )?);
    let producer_engine = engine.clone();
    let config_producer: ConfigProducer = Arc::new(move || {
        // Checked above, so it cannot fail here.
        session_config(&producer_engine).expect("session configuration")
    });
    let port = match opts.port {
        0 => free_port(&opts.bind_host)?,
        p => p,
    };
    // Executors ask the scheduler for work (see `PULL` below) and serve no control service;
    // Ballista still registers a port for one.
    let grpc_port = free_port(&opts.bind_host)?;
    let work_dir = match &opts.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| {
                Error::Config(format!("executor work directory {}: {e}", d.display()))
            })?;
            Some(d.to_string_lossy().into_owned())
        }
        None => None,
    };
    // Each task's runtime reads the object stores that plans name (catalogs in buckets)
    // through Meridian's registry; Ballista then gives it the task's share of the memory.
    let stores = meridian_engine::object_store_registry();
    let temp_dir = work_dir.clone();
    let runtime_producer: ballista_core::RuntimeProducer = Arc::new(move |_| {
        let mut b = datafusion::execution::runtime_env::RuntimeEnvBuilder::new()
            .with_object_store_registry(stores.clone());
        if let Some(d) = &temp_dir {
            b = b.with_temp_file_path(d.clone());
        }
        b.build_arc()
    });
    let vcores = match opts.concurrent_tasks {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let config = ExecutorProcessConfig {
        executor_id: opts
            .id
            .clone()
            .unwrap_or_else(|| ExecutorProcessConfig::default().executor_id),
        bind_host: opts.bind_host.clone(),
        external_host: opts.external_host.clone().or(Some(opts.bind_host.clone())),
        port,
        grpc_port,
        scheduler_host,
        scheduler_port,
        vcores,
        work_dir,
        memory_pool_size: Some(engine.memory_limit_bytes as u64),
        task_scheduling_policy: crate::SCHEDULING,
        override_function_registry: Some(Arc::new(registry)),
        override_config_producer: Some(config_producer),
        override_runtime_producer: Some(runtime_producer),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..ExecutorProcessConfig::default()
    };
    tracing::info!(
        id = %config.executor_id,
        scheduler = %opts.scheduler,
        port,
        task_slots = vcores,
        "cluster executor starting"
    );
    start_executor_process(Arc::new(config)).await?;
    Ok(())
}
