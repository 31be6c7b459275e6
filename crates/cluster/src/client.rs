//! Sessions whose plans run on a cluster.

use std::sync::Arc;

use ballista::prelude::SessionContextExt;
use datafusion::prelude::SessionContext;
use meridian_engine::{EngineConfig, Remote};

use crate::codec::check_plan;
use crate::scheduler::{ExecutorState, session_config};
use crate::{Error, Result, scheduler_address};

/// How long the cluster's metrics are reused for `/metrics` scrapes.
const METRICS_KEPT: std::time::Duration = std::time::Duration::from_secs(5);

/// A [`Remote`] for an engine: plans go to the scheduler at `url` (`df://host:port`);
/// those that cannot (they read a table only this process holds) run here, or fail when
/// `required`.
pub async fn connect(url: &str, engine: &EngineConfig, required: bool) -> Result<Remote> {
    scheduler_address(url)?;
    let state =
        meridian_engine::session_state(session_config(engine)?, meridian_engine::runtime(engine)?)?;
    // Ballista's upgrade of the session puts DataFusion's own functions in place of the
    // session's: Meridian's are registered again.
    let mut ctx = SessionContext::remote_with_state(url, state).await?;
    meridian_engine::register_functions(&mut ctx)?;
    Ok(Remote {
        ctx,
        check: Arc::new(check_plan),
        required,
        url: url.to_string(),
        metrics: Arc::new({
            // Scrapes within METRICS_KEPT of the last are answered from it: each costs the
            // scheduler two REST calls.
            let url = url.to_string();
            let last: std::sync::Mutex<Option<(std::time::Instant, String)>> = Default::default();
            move || {
                let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
                match &*last {
                    Some((at, text)) if at.elapsed() < METRICS_KEPT => text.clone(),
                    _ => {
                        let text = metrics(&url);
                        *last = Some((std::time::Instant::now(), text.clone()));
                        text
                    }
                }
            }
        }),
    })
}

/// A GET of the scheduler's REST API at `path`, as JSON.
fn api(url: &str, path: &str) -> Result<serde_json::Value> {
    let (host, port) = scheduler_address(url)?;
    let api = format!("http://{host}:{port}{path}");
    let body = ureq::get(&api)
        .config()
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .call()
        .map_err(|e| Error::Ballista(format!("{api}: {e}")))?
        .body_mut()
        .read_to_string()
        .map_err(|e| Error::Ballista(format!("{api}: {e}")))?;
    serde_json::from_str(&body).map_err(|e| Error::Ballista(format!("{api}: not JSON: {e}")))
}

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The cluster's executors, jobs and stages in the Prometheus text format, from the
/// scheduler at `url`; `meridian_cluster_up 0` when it does not answer.
pub fn metrics(url: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let (executors, jobs) = match (executors(url), api(url, "/api/jobs")) {
        (Ok(e), Ok(j)) => (e, j),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cluster metrics: the scheduler did not answer");
            return "# HELP meridian_cluster_up Whether the cluster's scheduler answers.\n\
                    # TYPE meridian_cluster_up gauge\nmeridian_cluster_up 0\n"
                .to_string();
        }
    };
    let _ = write!(
        out,
        "# HELP meridian_cluster_up Whether the cluster's scheduler answers.\n\
         # TYPE meridian_cluster_up gauge\nmeridian_cluster_up 1\n\
         # HELP meridian_cluster_executors Executors registered with the scheduler.\n\
         # TYPE meridian_cluster_executors gauge\nmeridian_cluster_executors {}\n\
         # HELP meridian_cluster_executor_task_slots Tasks an executor runs at once.\n\
         # TYPE meridian_cluster_executor_task_slots gauge\n",
        executors.len()
    );
    for e in &executors {
        let _ = writeln!(
            out,
            "meridian_cluster_executor_task_slots{{executor=\"{}\"}} {}",
            label(&e.id),
            e.task_slots
        );
    }
    out.push_str(
        "# HELP meridian_cluster_executor_heartbeat_age_seconds Seconds since an executor's last heartbeat.\n\
         # TYPE meridian_cluster_executor_heartbeat_age_seconds gauge\n",
    );
    for e in &executors {
        if let Some(ms) = e.last_seen_ms {
            let _ = writeln!(
                out,
                "meridian_cluster_executor_heartbeat_age_seconds{{executor=\"{}\"}} {}",
                label(&e.id),
                ms as f64 / 1e3
            );
        }
    }
    let jobs = jobs.as_array().cloned().unwrap_or_default();
    let mut by_status: std::collections::BTreeMap<String, u64> =
        ["Queued", "Running", "Completed", "Failed"]
            .into_iter()
            .map(|s| (s.to_string(), 0))
            .collect();
    let (mut stages, mut stages_done) = (0u64, 0u64);
    for j in &jobs {
        let status = j["status"].as_str().unwrap_or("Unknown").to_string();
        *by_status.entry(status).or_default() += 1;
        stages += j["num_stages"].as_u64().unwrap_or(0);
        stages_done += j["completed_stages"].as_u64().unwrap_or(0);
    }
    out.push_str(
        "# HELP meridian_cluster_jobs Jobs the scheduler knows, by status.\n\
         # TYPE meridian_cluster_jobs gauge\n",
    );
    for (status, n) in &by_status {
        let _ = writeln!(
            out,
            "meridian_cluster_jobs{{status=\"{}\"}} {n}",
            label(status)
        );
    }
    let _ = write!(
        out,
        "# HELP meridian_cluster_stages Stages of the jobs the scheduler knows.\n\
         # TYPE meridian_cluster_stages gauge\nmeridian_cluster_stages {stages}\n\
         # HELP meridian_cluster_stages_completed Completed stages of those jobs.\n\
         # TYPE meridian_cluster_stages_completed gauge\nmeridian_cluster_stages_completed {stages_done}\n"
    );
    out
}

/// The executors the scheduler at `url` knows, from its REST API.
pub fn executors(url: &str) -> Result<Vec<ExecutorState>> {
    let v = api(url, "/api/executors")?;
    let list = v
        .as_array()
        .ok_or_else(|| Error::Ballista(format!("{url}: not a list of executors")))?;
    Ok(list
        .iter()
        .map(|e| ExecutorState {
            id: e["id"].as_str().unwrap_or_default().to_string(),
            host: e["host"].as_str().unwrap_or_default().to_string(),
            port: e["port"].as_u64().unwrap_or(0) as u16,
            task_slots: e["specification"]["vcores"].as_u64().unwrap_or(0) as u32,
            last_seen_ms: e["last_seen"]
                .as_u64()
                .map(|t| crate::scheduler::ago_ms(u128::from(t))),
        })
        .collect())
}
