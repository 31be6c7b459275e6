//! Meridian on Apache DataFusion Ballista, for catalogs one machine cannot serve.
//!
//! - [`scheduler`]: Ballista's scheduler, planning with Meridian's session (its functions,
//!   the cross-match rule and planner) and decoding Meridian's tables and operators.
//! - [`executor`]: Ballista's executor, running plan stages with Meridian's functions,
//!   operators and memory budget.
//! - [`client`]: a session whose plans run on such a cluster, for an
//!   [`meridian_engine::Engine`] (`meridian query`, `meridian xmatch`, `meridian serve`).
//! - [`codec`]: how Meridian's tables and operators travel between them.
//!
//! Every process reads the catalogs itself, at the paths the client names: a shared
//! filesystem (or one machine, for tests and trials).

pub mod client;
pub mod codec;
mod error;
pub mod executor;
pub mod scheduler;

pub use error::{Error, Result};

/// How the scheduler hands out tasks: executors ask for work (pull), each from its own
/// free task slots.
///
/// Ballista 55's push scheduling keeps each executor's free slots in the scheduler and
/// loses some when an executor is lost: the tasks of a stage rolled back on the executors
/// left are cancelled but their slots are never given back (their late statuses find the
/// stage unresolved and refund nothing). When that takes all of an executor's slots the
/// stage to rerun is never placed and the query hangs. Under pull scheduling an executor
/// reports its own free slots with every request, so nothing can leak. Its costs: an idle
/// executor asks every 50 ms (a stage can wait that long to start), and a cancelled
/// query's running tasks end on their own instead of being stopped (no further stage
/// starts).
pub(crate) const SCHEDULING: ballista_core::config::TaskSchedulingPolicy =
    ballista_core::config::TaskSchedulingPolicy::PullStaged;

/// Ballista's pull-scheduling executors ask for work at least this often even when busy,
/// and each request counts as their heartbeat.
pub const EXECUTOR_POLL_SECONDS: u64 = 5;

/// `host:port` of a scheduler URL (`df://host:port`, or `host:port` alone).
pub fn scheduler_address(url: &str) -> Result<(String, u16)> {
    let rest = url.strip_prefix("df://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
        Error::Config(format!(
            "scheduler '{url}': write df://host:port (for example df://127.0.0.1:50050)"
        ))
    })?;
    let port = port
        .parse::<u16>()
        .map_err(|_| Error::Config(format!("scheduler '{url}': '{port}' is not a port")))?;
    if host.is_empty() {
        return Err(Error::Config(format!("scheduler '{url}': no host")));
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_urls() {
        assert_eq!(
            scheduler_address("df://127.0.0.1:50050").unwrap(),
            ("127.0.0.1".to_string(), 50050)
        );
        assert_eq!(
            scheduler_address("node-1:7000").unwrap(),
            ("node-1".to_string(), 7000)
        );
        for bad in ["df://host", "df://:50", "df://h:port", "df://h:70000"] {
            let e = scheduler_address(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
