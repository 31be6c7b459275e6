//! `meridian cluster`: the processes of a Ballista cluster that runs Meridian's queries,
//! and its status.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Run the scheduler: clients send it their plans, it splits them into stages and
    /// hands these to the executors.
    Scheduler {
        /// Address to listen at (default: the `[cluster] scheduler_bind` setting).
        #[arg(long)]
        bind: Option<String>,
    },
    /// Run an executor: it registers with the scheduler and runs the stages it is given,
    /// reading the catalogs at the paths the plans name.
    Executor {
        /// The scheduler, df://host:port (default: the `[cluster] scheduler` setting).
        #[arg(long)]
        scheduler: Option<String>,
        /// Address to listen at (default: the `[cluster] executor_bind` setting).
        #[arg(long)]
        bind: Option<String>,
        /// Port of the data service (0: a free one).
        #[arg(long)]
        port: Option<u16>,
        /// Directory of the stage outputs kept for the next stages.
        #[arg(long)]
        work_dir: Option<PathBuf>,
        /// Partitions run at once (0: the number of cores).
        #[arg(long)]
        concurrent_tasks: Option<usize>,
        /// Identifier (default: a random one).
        #[arg(long)]
        id: Option<String>,
    },
    /// The executors the scheduler knows, with their task slots and last heartbeat.
    Status {
        /// The scheduler, df://host:port (default: the `[cluster] scheduler` setting).
        #[arg(long)]
        scheduler: Option<String>,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

fn scheduler_url(config: &Config, flag: Option<String>) -> anyhow::Result<String> {
    flag.or_else(|| config.cluster.scheduler.clone()).context(
        "no scheduler: pass --scheduler df://host:port or set [cluster] scheduler in the config",
    )
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(meridian_engine::guard::EXECUTION_STACK_BYTES)
        .enable_all()
        .build()?)
}

pub fn run(config: &Config, cmd: ClusterCommand) -> anyhow::Result<()> {
    let c = &config.cluster;
    match cmd {
        ClusterCommand::Scheduler { bind } => {
            let bind = bind.unwrap_or_else(|| c.scheduler_bind.clone());
            let addr = bind
                .parse()
                .with_context(|| format!("scheduler address '{bind}': write host:port"))?;
            let opts = meridian_cluster::scheduler::SchedulerOptions {
                bind: addr,
                engine: crate::engine_config(config),
                task_max_failures: c.task_max_failures,
                executor_timeout_seconds: c.executor_timeout_s,
            };
            runtime()?.block_on(async {
                let s = meridian_cluster::scheduler::Scheduler::start(opts).await?;
                // The line scripts and tests wait for.
                eprintln!("Cluster scheduler: {}", s.url());
                tokio::select! {
                    r = s.wait() => r?,
                    _ = tokio::signal::ctrl_c() => tracing::info!("scheduler stopping"),
                }
                anyhow::Ok(())
            })
        }
        ClusterCommand::Executor {
            scheduler,
            bind,
            port,
            work_dir,
            concurrent_tasks,
            id,
        } => {
            let opts = meridian_cluster::executor::ExecutorOptions {
                scheduler: scheduler_url(config, scheduler)?,
                bind_host: bind.unwrap_or_else(|| c.executor_bind.clone()),
                external_host: None,
                port: port.unwrap_or(c.executor_port),
                work_dir: work_dir.or_else(|| c.work_dir.clone()),
                concurrent_tasks: concurrent_tasks.unwrap_or(c.concurrent_tasks),
                engine: crate::engine_config(config),
                id,
            };
            runtime()?.block_on(meridian_cluster::executor::run(opts))?;
            Ok(())
        }
        ClusterCommand::Status { scheduler, json } => {
            let url = scheduler_url(config, scheduler)?;
            let executors = meridian_cluster::client::executors(&url)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&executors)?);
                return Ok(());
            }
            println!("scheduler {url}: {} executor(s)", executors.len());
            for e in &executors {
                let seen = e.last_seen_ms.map_or("never".to_string(), |ms| {
                    format!("{:.1} s ago", ms as f64 / 1e3)
                });
                println!(
                    "  {}  {}:{}  {} task slot(s)  heartbeat {seen}",
                    e.id, e.host, e.port, e.task_slots
                );
            }
            Ok(())
        }
    }
}
