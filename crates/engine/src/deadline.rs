//! Time limits that fire even when every runtime worker is busy.
//!
//! tokio's timers are driven by whichever worker parks, so while all workers are inside
//! long CPU-bound operator polls a `tokio::time::timeout` around a query does not fire.
//! Deadlines here are driven by a one-thread runtime of their own, which only ever sleeps.

use std::sync::OnceLock;
use std::time::Duration;

fn timer() -> &'static tokio::runtime::Handle {
    static TIMER: OnceLock<tokio::runtime::Handle> = OnceLock::new();
    TIMER.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("timer runtime");
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("meridian-deadlines".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))
            .expect("timer thread");
        handle
    })
}

/// Resolves after `limit`, whatever the caller's runtime is doing.
pub fn deadline(limit: Duration) -> impl std::future::Future<Output = ()> + Send + 'static {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    timer().spawn(async move {
        tokio::time::sleep(limit).await;
        let _ = tx.send(());
    });
    async move {
        // The sender only goes away by firing.
        let _ = rx.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deadline fires on time while the only worker of the caller's runtime is blocked.
    #[test]
    fn fires_while_the_workers_are_busy() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let start = std::time::Instant::now();
        rt.block_on(async {
            let busy = tokio::spawn(async {
                std::thread::sleep(Duration::from_millis(1500));
            });
            deadline(Duration::from_millis(200)).await;
            assert!(
                start.elapsed() < Duration::from_millis(1000),
                "{:?}",
                start.elapsed()
            );
            busy.await.unwrap();
        });
    }
}
