//! Sessions whose plans run on a cluster.

use std::sync::Arc;

use ballista::prelude::SessionContextExt;
use datafusion::prelude::SessionContext;
use meridian_engine::{EngineConfig, Remote};

use crate::codec::check_plan;
use crate::scheduler::{ExecutorState, session_config};
use crate::{Error, Result, scheduler_address};

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
    })
}

/// The executors the scheduler at `url` knows, from its REST API.
pub fn executors(url: &str) -> Result<Vec<ExecutorState>> {
    let (host, port) = scheduler_address(url)?;
    let api = format!("http://{host}:{port}/api/executors");
    let body = ureq::get(&api)
        .call()
        .map_err(|e| Error::Ballista(format!("{api}: {e}")))?
        .body_mut()
        .read_to_string()
        .map_err(|e| Error::Ballista(format!("{api}: {e}")))?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| Error::Ballista(format!("{api}: not JSON: {e}")))?;
    let list = v
        .as_array()
        .ok_or_else(|| Error::Ballista(format!("{api}: not a list of executors")))?;
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
