//! Per-client limits on requests, so that one user (or one anonymous address) cannot
//! starve the others: a request rate, queries at once, result bytes a day and uploads an
//! hour. Rates are token buckets (a minute's or an hour's worth may come at once, then
//! they come at the steady rate); a refusal says which limit, the figures, and how long
//! to wait. Asynchronous jobs have their own per-client limits ([`crate::jobs`]).
//!
//! Written by hand: the crates that rate-limit (governor and the tower layers over it)
//! count requests only, not queries in flight, bytes a day or uploads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The limits, per client; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Requests a minute (a minute's worth may come at once).
    pub requests_per_minute: u32,
    /// Queries running at once (synchronous TAP, SIA, SSA, SODA, DataLink, Data Lab's
    /// query calls, SPARCL...).
    pub concurrent_queries: u32,
    /// Response bytes a day (UTC), MiB.
    pub result_mib_per_day: u64,
    /// Uploads an hour (TAP uploads, MyDB imports, file puts).
    pub uploads_per_hour: u32,
}

impl QuotaConfig {
    /// No limit at all.
    pub const UNLIMITED: Self = Self {
        requests_per_minute: 0,
        concurrent_queries: 0,
        result_mib_per_day: 0,
        uploads_per_hour: 0,
    };

    /// Defaults after the Rubin Science Platform's: about 1,000 requests a minute and 12
    /// queries at once per user; 100 GiB of results a day and 600 uploads an hour.
    pub const DEFAULT: Self = Self {
        requests_per_minute: 1000,
        concurrent_queries: 12,
        result_mib_per_day: 100 * 1024,
        uploads_per_hour: 600,
    };
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Requests a minute.
    Requests,
    /// Queries at once.
    Concurrency,
    /// Result bytes a day.
    ResultBytes,
    /// Uploads an hour.
    Uploads,
}

impl Limit {
    /// Every limit, in the order of the counters.
    pub const ALL: [Limit; 4] = [
        Limit::Requests,
        Limit::Concurrency,
        Limit::ResultBytes,
        Limit::Uploads,
    ];

    /// Its name in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
            Limit::Concurrency => "concurrent_queries",
            Limit::ResultBytes => "result_bytes",
            Limit::Uploads => "uploads",
        }
    }
}

/// A request refused: the limit, a message naming it, and when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The limit reached.
    pub limit: Limit,
    /// Seconds until the request would be admitted (at least 1).
    pub retry_after_s: u64,
    /// What was reached, with the figures.
    pub message: String,
}

/// What a request is, for the limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Kind {
    /// A query (counts against the queries at once while it runs).
    pub query: bool,
    /// An upload.
    pub upload: bool,
}

/// One client's counters.
#[derive(Debug)]
struct Client {
    requests: Bucket,
    uploads: Bucket,
    running: u32,
    /// The UTC day `bytes` counts, days since the epoch.
    day: u64,
    bytes: u64,
    seen: Instant,
}

/// A token bucket of `capacity` tokens refilled over `period`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: u32, now: Instant) -> Self {
        Self {
            tokens: capacity as f64,
            at: now,
        }
    }

    fn refill(&mut self, capacity: u32, period: Duration, now: Instant) {
        let rate = capacity as f64 / period.as_secs_f64();
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(capacity as f64);
        self.at = now;
    }

    /// Seconds until a token is there (0 when one is).
    fn wait_s(&self, capacity: u32, period: Duration) -> u64 {
        if self.tokens >= 1.0 {
            return 0;
        }
        let rate = capacity as f64 / period.as_secs_f64();
        ((1.0 - self.tokens) / rate).ceil().max(1.0) as u64
    }
}

/// The limits' state for every client seen lately.
#[derive(Debug)]
pub struct Quotas {
    config: QuotaConfig,
    clients: Mutex<(HashMap<String, Client>, Instant)>,
    refused: [AtomicU64; 4],
}

/// A query admitted: it counts against its client's queries at once until dropped.
#[derive(Debug)]
pub struct Running {
    quotas: Arc<Quotas>,
    client: String,
}

impl Drop for Running {
    fn drop(&mut self) {
        let mut guard = self.quotas.lock();
        if let Some(c) = guard.0.get_mut(&self.client) {
            c.running = c.running.saturating_sub(1);
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn utc_day_and_left_s() -> (u64, u64) {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    (s / 86_400, 86_400 - s % 86_400)
}

impl Quotas {
    /// Limits of `config`.
    pub fn new(config: QuotaConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            clients: Mutex::new((HashMap::new(), Instant::now())),
            refused: Default::default(),
        })
    }

    /// The limits.
    pub fn config(&self) -> QuotaConfig {
        self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (HashMap<String, Client>, Instant)> {
        self.clients.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a request of `client` (a user's name or an anonymous address) of `kind`, or
    /// refuses it naming the limit reached. A refused request uses up nothing. A query
    /// admitted holds its place among the client's queries at once until the returned
    /// guard is dropped (when its response has been sent).
    pub fn admit(self: &Arc<Self>, client: &str, kind: Kind) -> Result<Option<Running>, Refusal> {
        let c = self.config;
        let now = Instant::now();
        let (today, left_s) = utc_day_and_left_s();
        let mut guard = self.lock();
        let (clients, pruned) = &mut *guard;
        // Clients quiet for an hour, with nothing running and no bytes counted today, are
        // forgotten (their buckets would be full again anyway).
        if now.saturating_duration_since(*pruned) > MINUTE {
            clients.retain(|_, s| {
                s.running > 0
                    || now.saturating_duration_since(s.seen) < HOUR
                    || (s.day == today && s.bytes > 0)
            });
            *pruned = now;
        }
        let state = clients.entry(client.to_string()).or_insert_with(|| Client {
            requests: Bucket::full(c.requests_per_minute, now),
            uploads: Bucket::full(c.uploads_per_hour, now),
            running: 0,
            day: today,
            bytes: 0,
            seen: now,
        });
        state.seen = now;
        if state.day != today {
            state.day = today;
            state.bytes = 0;
        }
        let refuse = |limit: Limit, retry_after_s: u64, message: String| {
            self.refused[limit as usize].fetch_add(1, Ordering::Relaxed);
            Err(Refusal {
                limit,
                retry_after_s: retry_after_s.max(1),
                message,
            })
        };
        let limit_bytes = c.result_mib_per_day.saturating_mul(1 << 20);
        if c.result_mib_per_day > 0 && state.bytes >= limit_bytes {
            return refuse(
                Limit::ResultBytes,
                left_s,
                format!(
                    "result volume limit reached: {} MiB sent to you today (limit {} MiB a \
                     day, UTC); try again after midnight UTC",
                    state.bytes >> 20,
                    c.result_mib_per_day
                ),
            );
        }
        if c.requests_per_minute > 0 {
            state.requests.refill(c.requests_per_minute, MINUTE, now);
            let wait = state.requests.wait_s(c.requests_per_minute, MINUTE);
            if wait > 0 {
                return refuse(
                    Limit::Requests,
                    wait,
                    format!(
                        "request rate limit reached: at most {} requests a minute; try again \
                         in {wait} s",
                        c.requests_per_minute
                    ),
                );
            }
        }
        if kind.upload && c.uploads_per_hour > 0 {
            state.uploads.refill(c.uploads_per_hour, HOUR, now);
            let wait = state.uploads.wait_s(c.uploads_per_hour, HOUR);
            if wait > 0 {
                return refuse(
                    Limit::Uploads,
                    wait,
                    format!(
                        "upload limit reached: at most {} uploads an hour; try again in \
                         {wait} s",
                        c.uploads_per_hour
                    ),
                );
            }
        }
        if kind.query && c.concurrent_queries > 0 && state.running >= c.concurrent_queries {
            return refuse(
                Limit::Concurrency,
                1,
                format!(
                    "too many queries at once: {} of yours are running (limit {}); wait for \
                     one to finish",
                    state.running, c.concurrent_queries
                ),
            );
        }
        if c.requests_per_minute > 0 {
            state.requests.tokens -= 1.0;
        }
        if kind.upload && c.uploads_per_hour > 0 {
            state.uploads.tokens -= 1.0;
        }
        if !kind.query {
            return Ok(None);
        }
        state.running += 1;
        Ok(Some(Running {
            quotas: self.clone(),
            client: client.to_string(),
        }))
    }

    /// Counts `n` response bytes sent to `client` today.
    pub fn add_bytes(&self, client: &str, n: u64) {
        if self.config.result_mib_per_day == 0 {
            return;
        }
        let (today, _) = utc_day_and_left_s();
        let mut guard = self.lock();
        if let Some(s) = guard.0.get_mut(client) {
            if s.day != today {
                s.day = today;
                s.bytes = 0;
            }
            s.bytes = s.bytes.saturating_add(n);
        }
    }

    /// Requests refused so far, by limit (in the order of [`Limit::ALL`]).
    pub fn refused(&self) -> [u64; 4] {
        Limit::ALL.map(|l| self.refused[l as usize].load(Ordering::Relaxed))
    }

    /// Clients followed now, and queries running over all of them.
    pub fn clients(&self) -> (usize, u64) {
        let guard = self.lock();
        (
            guard.0.len(),
            guard.0.values().map(|c| c.running as u64).sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUERY: Kind = Kind {
        query: true,
        upload: false,
    };
    const UPLOAD: Kind = Kind {
        query: false,
        upload: true,
    };

    fn quotas(requests: u32, queries: u32, mib: u64, uploads: u32) -> Arc<Quotas> {
        Quotas::new(QuotaConfig {
            requests_per_minute: requests,
            concurrent_queries: queries,
            result_mib_per_day: mib,
            uploads_per_hour: uploads,
        })
    }

    #[test]
    fn a_minutes_worth_of_requests_then_refusals_with_the_wait() {
        let q = quotas(60, 0, 0, 0);
        for _ in 0..60 {
            q.admit("ann", Kind::default()).unwrap();
        }
        let r = q.admit("ann", Kind::default()).unwrap_err();
        assert_eq!(r.limit, Limit::Requests);
        assert!((1..=2).contains(&r.retry_after_s), "{r:?}");
        assert!(r.message.contains("60 requests a minute"), "{}", r.message);
        // Another client is not affected.
        q.admit("bob", Kind::default()).unwrap();
        assert_eq!(q.refused(), [1, 0, 0, 0]);
    }

    #[test]
    fn queries_at_once_are_counted_until_their_guard_goes() {
        let q = quotas(0, 2, 0, 0);
        let a = q.admit("ann", QUERY).unwrap();
        let _b = q.admit("ann", QUERY).unwrap();
        let r = q.admit("ann", QUERY).unwrap_err();
        assert_eq!(r.limit, Limit::Concurrency);
        assert!(
            r.message.contains("2 of yours are running (limit 2)"),
            "{}",
            r.message
        );
        // Other requests go on meanwhile.
        assert!(q.admit("ann", Kind::default()).unwrap().is_none());
        drop(a);
        let _c = q.admit("ann", QUERY).unwrap();
        assert_eq!(q.clients(), (1, 2));
    }

    #[test]
    fn bytes_a_day_and_uploads_an_hour() {
        let q = quotas(0, 0, 1, 2);
        q.admit("ann", Kind::default()).unwrap();
        q.add_bytes("ann", 600_000);
        q.admit("ann", Kind::default()).unwrap();
        q.add_bytes("ann", 600_000);
        let r = q.admit("ann", Kind::default()).unwrap_err();
        assert_eq!(r.limit, Limit::ResultBytes);
        assert!(r.retry_after_s <= 86_400 && r.message.contains("1 MiB a day"));
        q.admit("bob", UPLOAD).unwrap();
        q.admit("bob", UPLOAD).unwrap();
        let r = q.admit("bob", UPLOAD).unwrap_err();
        assert_eq!(r.limit, Limit::Uploads);
        // An hour's worth comes back at 2 an hour: one in about 30 minutes.
        assert!((1700..=1800).contains(&r.retry_after_s), "{r:?}");
        // Other requests are not uploads.
        q.admit("bob", Kind::default()).unwrap();
    }

    #[test]
    fn a_refused_request_uses_nothing_up() {
        let q = quotas(3, 1, 0, 0);
        let _held = q.admit("ann", QUERY).unwrap();
        for _ in 0..5 {
            assert_eq!(q.admit("ann", QUERY).unwrap_err().limit, Limit::Concurrency);
        }
        // Two requests of the three are left.
        q.admit("ann", Kind::default()).unwrap();
        q.admit("ann", Kind::default()).unwrap();
        assert_eq!(
            q.admit("ann", Kind::default()).unwrap_err().limit,
            Limit::Requests
        );
    }
}
