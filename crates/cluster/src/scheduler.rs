//! The cluster's scheduler: Ballista's, planning with Meridian's session.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::ConfigProducer;
use ballista_core::extension::SessionConfigExt;
use ballista_scheduler::SessionBuilder;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use meridian_engine::EngineConfig;

use crate::codec::{LogicalCodec, PhysicalCodec};
use crate::error::to_df;
use crate::{Error, Result};

/// How a scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Address to listen at (gRPC for clients and executors, and the REST API).
    pub bind: SocketAddr,
    /// Session settings of the plans it makes.
    pub engine: EngineConfig,
    /// Attempts of a failing task before its query fails.
    pub task_max_failures: usize,
    /// Seconds without a heartbeat after which an executor is taken for lost (its stages
    /// run again elsewhere).
    pub executor_timeout_seconds: u64,
}

impl SchedulerOptions {
    /// Defaults at `bind`.
    pub fn new(bind: SocketAddr) -> Self {
        Self {
            bind,
            engine: EngineConfig::default(),
            task_max_failures: 4,
            executor_timeout_seconds: 60,
        }
    }
}

/// The configuration of every session on the cluster: Ballista's, Meridian's codecs and
/// Meridian's settings.
pub(crate) fn session_config(engine: &EngineConfig) -> Result<SessionConfig> {
    let mut sc = SessionConfig::new_with_ballista()
        .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(PhysicalCodec::default()))
        // Ballista 55's adaptive planner cannot run a finished stage again when the
        // executor holding its output is lost: the job would stay running for ever. The
        // static planner rolls back and reruns those stages.
        .with_ballista_adaptive_query_planner(false);
    // A shuffle read from a lost executor fails after one quick retry, so that the stage
    // that wrote it runs again soon.
    sc = sc
        .set_usize(ballista_core::config::BALLISTA_CLIENT_IO_RETRIES_TIMES, 1)
        .set_usize(
            ballista_core::config::BALLISTA_CLIENT_IO_RETRY_WAIT_TIME_MS,
            500,
        );
    Ok(meridian_engine::configure(sc, engine)?)
}

/// A scheduler running in this process.
pub struct Scheduler {
    server: SchedulerServer<LogicalPlanNode, PhysicalPlanNode>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<ballista_core::error::Result<()>>,
}

/// An executor as the scheduler knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExecutorState {
    /// Its identifier.
    pub id: String,
    /// Where its data (Flight) service listens.
    pub host: String,
    /// Its data port.
    pub port: u16,
    /// Tasks it runs at once.
    pub task_slots: u32,
    /// Milliseconds since its last heartbeat.
    pub last_seen_ms: Option<u128>,
}

/// Milliseconds from `at_ms` (since the Unix epoch, as the scheduler keeps heartbeat
/// times) to now.
pub(crate) fn ago_ms(at_ms: u128) -> u128 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    now.saturating_sub(at_ms)
}

impl Scheduler {
    /// Starts a scheduler; it serves until [`Scheduler::stop`] or the process ends.
    pub async fn start(opts: SchedulerOptions) -> Result<Self> {
        let engine = opts.engine.clone();
        let producer_engine = engine.clone();
        let config_producer: ConfigProducer = Arc::new(move || {
            // Checked when the scheduler starts (below), so it cannot fail here.
            session_config(&producer_engine).expect("session configuration")
        });
        session_config(&engine)?;
        let builder_engine = engine.clone();
        let session_builder: SessionBuilder = Arc::new(move |sc: SessionConfig| {
            let runtime = meridian_engine::runtime(&builder_engine).map_err(to_df)?;
            meridian_engine::session_state(sc, runtime).map_err(to_df)
        });
        let listener = tokio::net::TcpListener::bind(opts.bind)
            .await
            .map_err(|e| {
                Error::Config(format!("scheduler: cannot listen at {}: {e}", opts.bind))
            })?;
        let addr = listener.local_addr()?;
        let mut config = SchedulerConfig {
            bind_host: addr.ip().to_string(),
            external_host: addr.ip().to_string(),
            bind_port: addr.port(),
            task_max_failures: opts.task_max_failures,
            scheduling_policy: crate::SCHEDULING,
            executor_timeout_seconds: opts.executor_timeout_seconds,
            expire_dead_executor_interval_seconds: (opts.executor_timeout_seconds / 4).max(1),
            // With no executor left, jobs fail once a lost executor would have been noticed,
            // instead of after Ballista's 3 minutes.
            no_executors_grace_period_seconds: opts.executor_timeout_seconds,
            ..SchedulerConfig::default()
        }
        .with_override_session_builder(session_builder)
        .with_override_config_producer(config_producer);
        config.override_logical_codec = Some(Arc::new(LogicalCodec::default()));
        config.override_physical_codec = Some(Arc::new(PhysicalCodec::default()));
        let config = Arc::new(config);
        let cluster = BallistaCluster::new_from_config(&config).await?;
        let server = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config).await?;
        let task = tokio::spawn(start_grpc_service_with_listener(listener, server.clone()));
        tracing::info!(url = %format!("df://{addr}"), "cluster scheduler listening");
        Ok(Self { server, addr, task })
    }

    /// The address it listens at.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its URL for clients, `df://host:port`.
    pub fn url(&self) -> String {
        format!("df://{}", self.addr)
    }

    /// The executors registered with it.
    pub async fn executors(&self) -> Result<Vec<ExecutorState>> {
        Ok(self
            .server
            .state
            .executor_manager
            .get_executors_state()
            .await?
            .into_iter()
            .map(|(m, seen, _)| ExecutorState {
                id: m.id,
                host: m.host,
                port: m.port,
                task_slots: m.specification.vcores,
                last_seen_ms: seen.map(|d| ago_ms(d.as_millis())),
            })
            .collect())
    }

    /// Serves until the service fails (or forever).
    pub async fn wait(self) -> Result<()> {
        match self.task.await {
            Ok(r) => Ok(r?),
            Err(e) => Err(Error::Ballista(format!("scheduler task: {e}"))),
        }
    }

    /// Stops serving.
    pub fn stop(self) {
        self.task.abort();
    }
}
