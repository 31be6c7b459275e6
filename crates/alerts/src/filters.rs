//! Users' alert filters and the matches waiting for delivery, in one SQLite database
//! (`<data>/alerts/filters.sqlite`) shared by the server (which manages filters and streams
//! matches) and the consumer (which evaluates filters and delivers matches).
//!
//! A filter is an ADQL query over the incoming alerts (see [`crate::evaluate`]) with its
//! outputs: a Kafka topic, a webhook and a MyDB table, each optional; every match can also
//! be read as a server-sent-events stream. A filter that fails at run time is paused with
//! its reason; the stream goes on.
//!
//! Matches wait in an outbox (the `matches` table), one row per (filter, alert): a
//! re-consumed alert (after a restart before its offsets were committed) finds its row
//! and is not queued twice. Each output (Kafka, webhooks) delivers the outbox in order
//! and keeps a cursor: every match at or below it is delivered (or was given up on), so a
//! match is written once when queued and, on the common path, never again. Only the
//! exceptions are written on their rows: a failed delivery waiting to be retried, one
//! given up, one found delivered out of order after a crash. A slow or failing output
//! holds back only itself. The number of deliveries waiting (the backlog the consumer
//! holds back on) is kept in the database, changed in the same transactions.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{OptionalExtension, params};

use crate::{Error, Result};

/// Whether a filter runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Evaluated against every batch.
    Active,
    /// Not evaluated (by its owner's wish, or after a failure: see [`Filter::reason`]).
    Paused,
}

impl State {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Active => "active",
            State::Paused => "paused",
        }
    }

    fn parse(s: &str) -> State {
        if s == "active" {
            State::Active
        } else {
            State::Paused
        }
    }
}

/// Where a filter's matches go (besides its event stream, which every filter has).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outputs {
    /// A Kafka topic the matches are published to, as JSON, keyed by alert id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_topic: Option<String>,
    /// An http(s) URL each match is POSTed to, as JSON, retried with backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
    /// A table of the owner's MyDB the matching rows are appended to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mydb_table: Option<String>,
}

/// A stored filter.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Filter {
    /// Its number.
    pub id: i64,
    /// The user it belongs to.
    pub owner: String,
    /// Its owner's name for it.
    pub name: String,
    /// The ADQL query.
    pub query: String,
    /// Its outputs.
    pub outputs: Outputs,
    /// `active` or `paused`.
    #[serde(serialize_with = "state_name")]
    pub state: State,
    /// Why it was paused, when a failure paused it.
    pub reason: Option<String>,
    /// The last delivery error, if one failed for good.
    pub last_error: Option<String>,
    /// Alerts it has matched.
    pub matches: u64,
    /// When it was made, ms since the Unix epoch.
    pub created_ms: i64,
}

fn state_name<S: serde::Serializer>(s: &State, ser: S) -> std::result::Result<S::Ok, S::Error> {
    ser.serialize_str(s.as_str())
}

/// One alert matched by one filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Match {
    /// The filter.
    pub filter: i64,
    /// The alert (`alertId` for Rubin, `candid` for ZTF).
    pub alert_id: i64,
    /// The filter's result rows for this alert, a JSON array of objects.
    pub rows: String,
}

/// A queued match as an output or the event stream reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// Its place in the outbox (the event id of the stream).
    pub seq: i64,
    /// The filter.
    pub filter: i64,
    /// The alert.
    pub alert_id: i64,
    /// The message delivered: `{"filter":..,"name":..,"alertId":..,"rows":[..]}`.
    pub payload: String,
    /// Delivery attempts so far (for this output).
    pub attempts: i64,
}

/// The outputs a queued match is delivered to, by the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// The filter's Kafka topic.
    Kafka,
    /// The filter's webhook.
    Webhook,
}

impl Output {
    fn column(self) -> &'static str {
        match self {
            Output::Kafka => "kafka",
            Output::Webhook => "webhook",
        }
    }
}

/// Delivery states of a match for one output (the output's column of the row).
mod delivery {
    /// The filter has no such output.
    pub const NONE: i64 = 0;
    /// To be delivered when above the output's cursor; delivered at or below it.
    pub const PENDING: i64 = 1;
    /// Being sent, in databases of earlier versions (read as PENDING since).
    pub const IN_FLIGHT: i64 = 2;
    /// Delivered out of the cursor's order (a retry; a match found on its topic after a
    /// crash).
    pub const DONE: i64 = 3;
    /// Given up after the last retry.
    pub const FAILED: i64 = 4;
    /// Failed; tried again at `next_try_ms`.
    pub const RETRY: i64 = 5;
}

/// The outputs, in the order their rows are kept.
const OUTPUTS: [Output; 2] = [Output::Kafka, Output::Webhook];

/// Sequence numbers examined at most per statement when looking for pending matches (a
/// stretch of matches for filters without the output is skipped in steps of this).
const SCAN_WINDOW: i64 = 50_000;

/// Matches read at a time by [`FilterStore::each_undelivered`].
const UNDELIVERED_PAGE: usize = 10_000;

/// Matches queued per transaction: a batch's matches are queued in a few transactions,
/// so the deliverer is not kept out of the database for the whole batch (a crash between
/// them is safe: the batch is consumed again and the queued matches are kept once).
const ENQUEUE_CHUNK: usize = 20_000;

/// Most matches one statement inserts (six parameters each; SQLite allows 32,766).
const INSERT_ROWS: usize = 64;

/// An insert of `rows` matches into the outbox.
fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT OR IGNORE INTO matches (filter, alert_id, payload, created_ms, kafka, webhook) \
         VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?)");
    }
    sql
}

/// What a round of delivery to one output did, recorded in one transaction by
/// [`FilterStore::record`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Progress {
    /// The output's new cursor: every match at or below it is delivered or settled.
    pub cursor: Option<i64>,
    /// Kafka topics' marks: the offset after the last message recorded as delivered.
    pub marks: HashMap<String, i64>,
    /// Matches delivered out of the cursor's order (retries, matches found on their topic
    /// after a crash).
    pub delivered: Vec<i64>,
}

/// How many times a webhook delivery is tried before it is given up (backoff doubles from
/// one second: the last try comes about 17 minutes after the first).
pub const WEBHOOK_ATTEMPTS: i64 = 10;

/// How long delivered matches stay for the event stream to replay, ms.
pub const KEEP_DELIVERED_MS: i64 = 7 * 24 * 3600 * 1000;

/// The filters and their outbox.
#[derive(Debug)]
pub struct FilterStore {
    path: PathBuf,
    conn: Mutex<rusqlite::Connection>,
    /// Counts the outbox's commits of new matches, so that a deliverer waiting for work
    /// wakes as soon as some are queued.
    queued: (Mutex<u64>, std::sync::Condvar),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Checks a filter's name: 1 to 64 letters, digits, `_`, `-` or `.`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "filter name '{name}' is not allowed: use 1 to 64 letters, digits, '_', '-' or '.'"
        )))
    }
}

/// Checks a Kafka topic name as brokers do: 1 to 249 letters, digits, `_`, `-` or `.`,
/// not `.` or `..`.
pub fn check_topic(topic: &str) -> Result<()> {
    let ok = (1..=249).contains(&topic.len())
        && topic != "."
        && topic != ".."
        && topic
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "Kafka topic '{topic}' is not allowed: use 1 to 249 letters, digits, '_', '-' or '.'"
        )))
    }
}

/// `seqs` as runs of consecutive numbers, (first, last) each, in ascending order: the
/// matches of one batch and filter have consecutive sequence numbers, so a delivery's
/// bookkeeping is a few range updates rather than one statement a match.
fn runs(seqs: impl Iterator<Item = i64>) -> Vec<(i64, i64)> {
    let mut seqs: Vec<i64> = seqs.collect();
    seqs.sort_unstable();
    seqs.dedup();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for s in seqs {
        match out.last_mut() {
            Some((_, last)) if *last + 1 == s => *last = s,
            _ => out.push((s, s)),
        }
    }
    out
}

impl FilterStore {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let conn = rusqlite::Connection::open(path).map_err(|e| db_err(path, e))?;
        // Room for the outbox's inserts of each size next to the other statements.
        conn.set_prepared_statement_cache_capacity(32);
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA busy_timeout = 10000;
             PRAGMA cache_size = -65536;
             CREATE TABLE IF NOT EXISTS filter (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 owner TEXT NOT NULL,
                 name TEXT NOT NULL,
                 query TEXT NOT NULL,
                 kafka_topic TEXT UNIQUE,
                 webhook TEXT,
                 mydb_table TEXT,
                 state TEXT NOT NULL,
                 reason TEXT,
                 last_error TEXT,
                 matches INTEGER NOT NULL DEFAULT 0,
                 created_ms INTEGER NOT NULL,
                 UNIQUE (owner, name)
             );
             CREATE TABLE IF NOT EXISTS matches (
                 seq INTEGER PRIMARY KEY AUTOINCREMENT,
                 filter INTEGER NOT NULL,
                 alert_id INTEGER NOT NULL,
                 payload TEXT NOT NULL,
                 created_ms INTEGER NOT NULL,
                 kafka INTEGER NOT NULL,
                 webhook INTEGER NOT NULL,
                 attempts INTEGER NOT NULL DEFAULT 0,
                 next_try_ms INTEGER NOT NULL DEFAULT 0,
                 UNIQUE (filter, alert_id)
             );
             -- Pending matches are read in sequence order after an output's cursor;
             -- only the retries need an index of their own (a small one: a row is in it
             -- only while it waits for a retry).
             DROP INDEX IF EXISTS matches_kafka;
             DROP INDEX IF EXISTS matches_webhook;
             DROP INDEX IF EXISTS matches_kafka_seq;
             DROP INDEX IF EXISTS matches_webhook_seq;
             CREATE INDEX IF NOT EXISTS matches_kafka_retry ON matches (seq) WHERE kafka = 5;
             CREATE INDEX IF NOT EXISTS matches_webhook_retry ON matches (seq) WHERE webhook = 5;
             CREATE TABLE IF NOT EXISTS kafka_mark (
                 topic TEXT PRIMARY KEY,
                 next_offset INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS outbox_cursor (
                 output TEXT PRIMARY KEY,
                 seq INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS outbox_backlog (
                 output TEXT PRIMARY KEY,
                 n INTEGER NOT NULL
             );",
        )
        .map_err(|e| db_err(path, e))?;
        let store = Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            queued: Default::default(),
        };
        store.prepare_outbox()?;
        Ok(store)
    }

    /// Gives each output a cursor (a database of an earlier version kept a state per
    /// row: the cursor goes before its first match not delivered, and matches left in
    /// flight become pending) and counts the backlog afresh.
    fn prepare_outbox(&self) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for output in OUTPUTS {
            let c = output.column();
            let known = cursor_in(&tx, output).optional().map_err(|e| self.err(e))?;
            let cursor = match known {
                Some(c) => c,
                None => {
                    let cursor: i64 = tx
                        .query_row(
                            &format!(
                                "SELECT coalesce((SELECT min(seq) - 1 FROM matches
                                                  WHERE {c} IN (1, 2)),
                                                 (SELECT max(seq) FROM matches), 0)"
                            ),
                            [],
                            |r| r.get(0),
                        )
                        .map_err(|e| self.err(e))?;
                    tx.execute(
                        &format!(
                            "UPDATE matches SET {c} = {} WHERE {c} = {}",
                            delivery::PENDING,
                            delivery::IN_FLIGHT
                        ),
                        [],
                    )
                    .map_err(|e| self.err(e))?;
                    tx.execute(
                        "INSERT INTO outbox_cursor (output, seq) VALUES (?1, ?2)",
                        params![c, cursor],
                    )
                    .map_err(|e| self.err(e))?;
                    cursor
                }
            };
            let n: i64 = tx
                .query_row(
                    &format!(
                        "SELECT (SELECT count(*) FROM matches WHERE seq > ?1 AND {c} = 1)
                              + (SELECT count(*) FROM matches WHERE {c} = 5)"
                    ),
                    [cursor],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))?;
            tx.execute(
                "INSERT INTO outbox_backlog (output, n) VALUES (?1, ?2)
                 ON CONFLICT (output) DO UPDATE SET n = excluded.n",
                params![c, n],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The database's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, e: rusqlite::Error) -> Error {
        db_err(&self.path, e)
    }

    /// Stores a new active filter (its query already checked by
    /// [`crate::evaluate::Evaluator::validate`]).
    pub fn add(&self, owner: &str, name: &str, query: &str, outputs: &Outputs) -> Result<Filter> {
        check_name(name)?;
        if let Some(t) = &outputs.kafka_topic {
            check_topic(t)?;
        }
        let conn = self.lock();
        let taken: Option<String> = conn
            .query_row(
                "SELECT owner FROM filter WHERE owner = ?1 AND name = ?2",
                params![owner, name],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if taken.is_some() {
            return Err(Error::Conflict(format!(
                "you have a filter named '{name}'; delete it first or choose another name"
            )));
        }
        if let Some(t) = &outputs.kafka_topic {
            let used: Option<i64> = conn
                .query_row(
                    "SELECT id FROM filter WHERE kafka_topic = ?1",
                    params![t],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| self.err(e))?;
            if used.is_some() {
                return Err(Error::Conflict(format!(
                    "Kafka topic '{t}' is another filter's output; choose another topic"
                )));
            }
        }
        conn.execute(
            "INSERT INTO filter (owner, name, query, kafka_topic, webhook, mydb_table, state,
                                 created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'active', ?7)",
            params![
                owner,
                name,
                query,
                outputs.kafka_topic,
                outputs.webhook,
                outputs.mydb_table,
                now_ms()
            ],
        )
        .map_err(|e| self.err(e))?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.get(id)?
            .ok_or_else(|| Error::Database("a filter vanished as it was stored".into()))
    }

    /// Filters of `owner` (all when `None`), by id.
    pub fn list(&self, owner: Option<&str>) -> Result<Vec<Filter>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "{SELECT} WHERE ?1 IS NULL OR owner = ?1 ORDER BY id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![owner], filter_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// The active filters.
    pub fn active(&self) -> Result<Vec<Filter>> {
        Ok(self
            .list(None)?
            .into_iter()
            .filter(|f| f.state == State::Active)
            .collect())
    }

    /// Filter `id`.
    pub fn get(&self, id: i64) -> Result<Option<Filter>> {
        let conn = self.lock();
        conn.query_row(&format!("{SELECT} WHERE id = ?1"), params![id], filter_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Filter `id` of `owner`: not found (the same answer as a filter that does not
    /// exist) when it is another user's.
    pub fn owned(&self, owner: &str, id: i64) -> Result<Filter> {
        match self.get(id)? {
            Some(f) if f.owner == owner => Ok(f),
            _ => Err(Error::NotFound(format!("you have no alert filter {id}"))),
        }
    }

    /// Deletes filter `id` and its queued matches.
    pub fn remove(&self, id: i64) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        for output in OUTPUTS {
            let c = output.column();
            let cursor = cursor_in(&tx, output).map_err(|e| self.err(e))?;
            let waiting: i64 = tx
                .query_row(
                    &format!(
                        "SELECT count(*) FROM matches WHERE filter = ?1
                         AND (({c} = 1 AND seq > ?2) OR {c} = 5)"
                    ),
                    params![id, cursor],
                    |r| r.get(0),
                )
                .map_err(|e| self.err(e))?;
            add_backlog(&tx, output, -waiting).map_err(|e| self.err(e))?;
        }
        tx.execute("DELETE FROM matches WHERE filter = ?1", params![id])
            .map_err(|e| self.err(e))?;
        tx.execute("DELETE FROM filter WHERE id = ?1", params![id])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// Pauses (with the reason, when a failure pauses it) or resumes filter `id`.
    pub fn set_state(&self, id: i64, state: State, reason: Option<&str>) -> Result<()> {
        self.lock()
            .execute(
                "UPDATE filter SET state = ?2, reason = ?3 WHERE id = ?1",
                params![id, state.as_str(), reason],
            )
            .map_err(|e| self.err(e))?;
        if state == State::Paused {
            tracing::warn!(
                filter = id,
                reason = reason.unwrap_or("by its owner"),
                "alert filter paused"
            );
        }
        Ok(())
    }

    /// Queues `matches` for their filters' outputs; a (filter, alert) already queued is
    /// left as it is. Returns the matches new to the outbox. Written durably (synced)
    /// before it returns: the consumer commits its offsets afterwards.
    pub fn enqueue(&self, matches: &[Match]) -> Result<usize> {
        let mut added = 0;
        // Each filter's name and outputs, looked up once.
        let mut filters: HashMap<i64, Option<(String, bool, bool)>> = HashMap::new();
        for chunk in matches.chunks(ENQUEUE_CHUNK) {
            added += self.enqueue_chunk(chunk, &mut filters)?;
        }
        Ok(added)
    }

    fn enqueue_chunk(
        &self,
        matches: &[Match],
        filters: &mut HashMap<i64, Option<(String, bool, bool)>>,
    ) -> Result<usize> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut added = 0;
        let (mut to_kafka, mut to_webhook) = (0, 0);
        {
            let mut filter = tx
                .prepare_cached("SELECT name, kafka_topic IS NOT NULL, webhook IS NOT NULL FROM filter WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            let mut count = tx
                .prepare_cached("UPDATE filter SET matches = matches + ?2 WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            let now = now_ms();
            let mut payloads: Vec<String> = Vec::new();
            // Runs of one filter's matches (a batch's matches come filter by filter).
            for run in matches.chunk_by(|a, b| a.filter == b.filter) {
                let id = run[0].filter;
                let found = match filters.get(&id) {
                    Some(f) => f,
                    None => {
                        let f = filter
                            .query_row(params![id], |r| {
                                Ok((
                                    // As a JSON string, for the payloads.
                                    serde_json::Value::String(r.get::<_, String>(0)?).to_string(),
                                    r.get::<_, bool>(1)?,
                                    r.get::<_, bool>(2)?,
                                ))
                            })
                            .optional()
                            .map_err(|e| self.err(e))?;
                        filters.entry(id).or_insert(f)
                    }
                };
                let Some((name, kafka, webhook)) = found else {
                    continue;
                };
                payloads.clear();
                payloads.extend(run.iter().map(|m| {
                    format!(
                        "{{\"filter\":{},\"name\":{},\"alertId\":{},\"rows\":{}}}",
                        m.filter, name, m.alert_id, m.rows
                    )
                }));
                let state = |wanted: bool| {
                    if wanted {
                        delivery::PENDING
                    } else {
                        delivery::NONE
                    }
                };
                let (kafka_state, webhook_state) = (state(*kafka), state(*webhook));
                // Statements of 2^k rows, largest first: a handful of statements, each
                // prepared once, insert any number of rows.
                let mut n_run = 0;
                let mut at = 0;
                while at < run.len() {
                    let rows = INSERT_ROWS.min(1 << (run.len() - at).ilog2());
                    let mut insert = tx
                        .prepare_cached(&insert_sql(rows))
                        .map_err(|e| self.err(e))?;
                    for (k, (m, payload)) in run[at..at + rows]
                        .iter()
                        .zip(&payloads[at..at + rows])
                        .enumerate()
                    {
                        let p = 6 * k;
                        insert
                            .raw_bind_parameter(p + 1, m.filter)
                            .and_then(|_| insert.raw_bind_parameter(p + 2, m.alert_id))
                            .and_then(|_| insert.raw_bind_parameter(p + 3, payload))
                            .and_then(|_| insert.raw_bind_parameter(p + 4, now))
                            .and_then(|_| insert.raw_bind_parameter(p + 5, kafka_state))
                            .and_then(|_| insert.raw_bind_parameter(p + 6, webhook_state))
                            .map_err(|e| self.err(e))?;
                    }
                    // Rows already queued (the same alert again) are ignored, not counted.
                    n_run += insert.raw_execute().map_err(|e| self.err(e))? as i64;
                    at += rows;
                }
                if n_run > 0 {
                    count.execute(params![id, n_run]).map_err(|e| self.err(e))?;
                    added += n_run as usize;
                    to_kafka += n_run * i64::from(*kafka);
                    to_webhook += n_run * i64::from(*webhook);
                }
            }
        }
        add_backlog(&tx, Output::Kafka, to_kafka).map_err(|e| self.err(e))?;
        add_backlog(&tx, Output::Webhook, to_webhook).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        drop(conn);
        if added > 0 {
            let (count, wake) = &self.queued;
            *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            wake.notify_all();
        }
        Ok(added)
    }

    /// How many times new matches have been queued (a number to pass to
    /// [`FilterStore::wait_queued`]).
    pub fn queued_count(&self) -> u64 {
        *self.queued.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until matches are queued after `seen` (a [`FilterStore::queued_count`]) or
    /// `timeout` passes; whether they were.
    pub fn wait_queued(&self, seen: u64, timeout: std::time::Duration) -> bool {
        let (count, wake) = &self.queued;
        let guard = count.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = wake
            .wait_timeout_while(guard, timeout, |n| *n == seen)
            .unwrap_or_else(|p| p.into_inner());
        *guard != seen
    }

    /// Deliveries waiting, over all outputs (a match waiting for its Kafka topic and its
    /// webhook counts twice); the consumer holds back while there are too many.
    pub fn backlog(&self) -> Result<u64> {
        self.lock()
            .query_row("SELECT coalesce(sum(n), 0) FROM outbox_backlog", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// Deliveries waiting for `output` (retries included).
    pub fn backlog_of(&self, output: Output) -> Result<u64> {
        self.lock()
            .query_row(
                "SELECT coalesce(sum(n), 0) FROM outbox_backlog WHERE output = ?1",
                [output.column()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n.max(0) as u64)
            .map_err(|e| self.err(e))
    }

    /// The cursor of `output`: every match at or below it is delivered or settled.
    pub fn cursor(&self, output: Output) -> Result<i64> {
        cursor_in(&self.lock(), output).map_err(|e| self.err(e))
    }

    /// Up to `limit` matches pending for `output` after sequence number `after`, oldest
    /// first, and the sequence number up to which the outbox was examined (the last one
    /// returned when `limit` were found): an output's deliverer goes on from there.
    /// Examines at most a few windows of the outbox per call, and returns as soon as one
    /// window has something pending.
    pub fn pending_after(
        &self,
        output: Output,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<Queued>, i64)> {
        let c = output.column();
        let conn = self.lock();
        let last: i64 = conn
            .query_row("SELECT coalesce(max(seq), 0) FROM matches", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.err(e))?;
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT seq, filter, alert_id, payload, attempts FROM matches
                 WHERE seq > ?1 AND seq <= ?2 AND {c} = {} ORDER BY seq LIMIT ?3",
                delivery::PENDING
            ))
            .map_err(|e| self.err(e))?;
        let mut from = after;
        while from < last {
            let to = from.saturating_add(SCAN_WINDOW).min(last);
            let rows: Vec<Queued> = stmt
                .query_map(params![from, to, limit as i64], queued_row)
                .map_err(|e| self.err(e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?;
            if rows.len() >= limit {
                let seen = rows.last().map_or(to, |q| q.seq);
                return Ok((rows, seen));
            }
            from = to;
            if !rows.is_empty() {
                return Ok((rows, to));
            }
        }
        Ok((Vec::new(), from.max(after)))
    }

    /// Up to `limit` matches whose delivery to `output` failed and is due to be tried
    /// again, oldest first.
    pub fn retries_due(&self, output: Output, limit: usize) -> Result<Vec<Queued>> {
        self.retries_by(output, now_ms(), limit)
    }

    /// Up to `limit` matches waiting for a retry to `output` due by `until_ms`, oldest
    /// first.
    fn retries_by(&self, output: Output, until_ms: i64, limit: usize) -> Result<Vec<Queued>> {
        let c = output.column();
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT seq, filter, alert_id, payload, attempts FROM matches
                 WHERE {c} = {} AND next_try_ms <= ?1 ORDER BY seq LIMIT ?2",
                delivery::RETRY
            ))
            .map_err(|e| self.err(e))?;
        stmt.query_map(params![until_ms, limit as i64], queued_row)
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Calls `f` on each match not yet known delivered to `output`: those after its cursor
    /// (after a crash some of them may have been sent), a page at a time, then all those
    /// waiting for a retry, due or not. Returns how many there were.
    pub fn each_undelivered(&self, output: Output, mut f: impl FnMut(&Queued)) -> Result<usize> {
        let mut n = 0;
        let mut after = self.cursor(output)?;
        loop {
            let (page, read_to) = self.pending_after(output, after, UNDELIVERED_PAGE)?;
            if page.is_empty() {
                break;
            }
            n += page.len();
            page.iter().for_each(&mut f);
            after = read_to;
        }
        let retries = self.retries_by(output, i64::MAX, i64::MAX as usize)?;
        n += retries.len();
        retries.iter().for_each(&mut f);
        Ok(n)
    }

    /// The matches [`FilterStore::each_undelivered`] goes through, oldest first.
    pub fn undelivered(&self, output: Output) -> Result<Vec<Queued>> {
        let mut all = Vec::new();
        self.each_undelivered(output, |q| all.push(q.clone()))?;
        all.sort_by_key(|q| q.seq);
        Ok(all)
    }

    /// Records a round of delivery to `output` in one transaction: matches delivered out
    /// of order, then the cursor moved forward, then Kafka topics' marks moved past the
    /// messages recorded (see [`FilterStore::kafka_marks`]). Not synced to disk at once:
    /// after a power failure a round may be lost, which only makes its matches be looked
    /// up again (Kafka) or posted again with their idempotency keys (webhooks).
    pub fn record(&self, output: Output, progress: &Progress) -> Result<()> {
        let c = output.column();
        let mut conn = self.lock();
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.err(e))?;
        let done = (|| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            let old = cursor_in(&tx, output)?;
            let mut settled = 0i64;
            {
                let mut done = tx.prepare_cached(&format!(
                    "UPDATE matches SET {c} = {} WHERE seq BETWEEN ?1 AND ?2
                     AND ({c} = {} OR ({c} = {} AND seq > ?3))",
                    delivery::DONE,
                    delivery::RETRY,
                    delivery::PENDING
                ))?;
                for (first, last) in runs(progress.delivered.iter().copied()) {
                    settled += done.execute(params![first, last, old])? as i64;
                }
            }
            if let Some(new) = progress.cursor.filter(|n| *n > old) {
                settled += tx.query_row(
                    &format!(
                        "SELECT count(*) FROM matches WHERE seq > ?1 AND seq <= ?2 AND {c} = {}",
                        delivery::PENDING
                    ),
                    params![old, new],
                    |r| r.get::<_, i64>(0),
                )?;
                tx.execute(
                    "UPDATE outbox_cursor SET seq = ?2 WHERE output = ?1",
                    params![c, new],
                )?;
            }
            {
                let mut mark = tx.prepare_cached(
                    "INSERT INTO kafka_mark (topic, next_offset) VALUES (?1, ?2)
                     ON CONFLICT (topic) DO UPDATE
                     SET next_offset = max(next_offset, excluded.next_offset)",
                )?;
                for (topic, next) in &progress.marks {
                    mark.execute(params![topic, next])?;
                }
            }
            add_backlog(&tx, output, -settled)?;
            tx.commit()
        })();
        let restored = conn.pragma_update(None, "synchronous", "FULL");
        done.and(restored).map_err(|e| self.err(e))
    }

    /// For each topic that received matches, the offset after the last one recorded as
    /// delivered. Every message on a topic that Meridian sent and did not record yet is
    /// at or after its mark: the deliverer moves a mark only past messages it records in
    /// the same transaction, and the broker acknowledges a topic's messages in order.
    pub fn kafka_marks(&self) -> Result<HashMap<String, i64>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT topic, next_offset FROM kafka_mark")
            .map_err(|e| self.err(e))?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Records a failed attempt of match `q` for `output`: retried after a backoff that
    /// doubles from one second, given up (and the error kept on the filter) after
    /// [`WEBHOOK_ATTEMPTS`]. Returns whether it was given up.
    pub fn failed_attempt(&self, output: Output, q: &Queued, error: &str) -> Result<bool> {
        let c = output.column();
        let attempts = q.attempts + 1;
        let give_up = attempts >= WEBHOOK_ATTEMPTS;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let cursor = cursor_in(&tx, output).map_err(|e| self.err(e))?;
        let was: Option<i64> = tx
            .query_row(
                &format!("SELECT {c} FROM matches WHERE seq = ?1"),
                [q.seq],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        // Its filter is gone, and the match with it.
        let Some(was) = was else {
            return Ok(true);
        };
        let waiting_before = was == delivery::RETRY || (was == delivery::PENDING && q.seq > cursor);
        let state = if give_up {
            delivery::FAILED
        } else {
            delivery::RETRY
        };
        let backoff_ms = 1000i64 << (attempts - 1).clamp(0, 20);
        tx.execute(
            &format!("UPDATE matches SET {c} = ?2, attempts = ?3, next_try_ms = ?4 WHERE seq = ?1"),
            params![q.seq, state, attempts, now_ms() + backoff_ms],
        )
        .map_err(|e| self.err(e))?;
        add_backlog(&tx, output, i64::from(!give_up) - i64::from(waiting_before))
            .map_err(|e| self.err(e))?;
        if give_up {
            tx.execute(
                "UPDATE filter SET last_error = ?2 WHERE id = ?1",
                params![q.filter, format!("{} of alert {}: {error}", c, q.alert_id)],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(give_up)
    }

    /// Records an output's error on filter `id` (shown with the filter).
    pub fn note_error(&self, id: i64, error: &str) -> Result<()> {
        self.lock()
            .execute(
                "UPDATE filter SET last_error = ?2 WHERE id = ?1",
                params![id, error],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Matches of filter `id` after `seq`, at most `limit`, oldest first (the event
    /// stream, and a client catching up).
    pub fn after(&self, id: i64, seq: i64, limit: usize) -> Result<Vec<Queued>> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "SELECT seq, filter, alert_id, payload, attempts FROM matches
                 WHERE filter = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map(params![id, seq, limit as i64], queued_row)
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Deliveries of filter `id`: (pending, delivered, failed) over its outputs.
    pub fn delivery_counts(&self, id: i64) -> Result<(u64, u64, u64)> {
        let conn = self.lock();
        let k = cursor_in(&conn, Output::Kafka).map_err(|e| self.err(e))?;
        let w = cursor_in(&conn, Output::Webhook).map_err(|e| self.err(e))?;
        conn.query_row(
            "SELECT
                 coalesce(sum((kafka = 1 AND seq > ?2) + (kafka = 5)
                              + (webhook = 1 AND seq > ?3) + (webhook = 5)), 0),
                 coalesce(sum((kafka = 3) + (kafka = 1 AND seq <= ?2)
                              + (webhook = 3) + (webhook = 1 AND seq <= ?3)), 0),
                 coalesce(sum((kafka = 4) + (webhook = 4)), 0)
             FROM matches WHERE filter = ?1",
            params![id, k, w],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            },
        )
        .map_err(|e| self.err(e))
    }

    /// Removes matches delivered everywhere (or given up) longer ago than
    /// [`KEEP_DELIVERED_MS`]; returns how many.
    pub fn prune(&self) -> Result<usize> {
        let conn = self.lock();
        let k = cursor_in(&conn, Output::Kafka).map_err(|e| self.err(e))?;
        let w = cursor_in(&conn, Output::Webhook).map_err(|e| self.err(e))?;
        conn.execute(
            "DELETE FROM matches WHERE created_ms < ?1
             AND (kafka IN (0, 3, 4) OR (kafka = 1 AND seq <= ?2))
             AND (webhook IN (0, 3, 4) OR (webhook = 1 AND seq <= ?3))",
            params![now_ms() - KEEP_DELIVERED_MS, k, w],
        )
        .map_err(|e| self.err(e))
    }
}

/// The cursor of `output` (see [`FilterStore::cursor`]).
fn cursor_in(conn: &rusqlite::Connection, output: Output) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT seq FROM outbox_cursor WHERE output = ?1",
        [output.column()],
        |r| r.get(0),
    )
}

/// Changes the backlog of `output` by `n`.
fn add_backlog(conn: &rusqlite::Connection, output: Output, n: i64) -> rusqlite::Result<()> {
    if n != 0 {
        conn.execute(
            "UPDATE outbox_backlog SET n = n + ?2 WHERE output = ?1",
            params![output.column(), n],
        )?;
    }
    Ok(())
}

const SELECT: &str = "SELECT id, owner, name, query, kafka_topic, webhook, mydb_table, state,
                             reason, last_error, matches, created_ms FROM filter";

fn filter_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Filter> {
    Ok(Filter {
        id: r.get(0)?,
        owner: r.get(1)?,
        name: r.get(2)?,
        query: r.get(3)?,
        outputs: Outputs {
            kafka_topic: r.get(4)?,
            webhook: r.get(5)?,
            mydb_table: r.get(6)?,
        },
        state: State::parse(&r.get::<_, String>(7)?),
        reason: r.get(8)?,
        last_error: r.get(9)?,
        matches: r.get::<_, i64>(10)? as u64,
        created_ms: r.get(11)?,
    })
}

fn queued_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Queued> {
    Ok(Queued {
        seq: r.get(0)?,
        filter: r.get(1)?,
        alert_id: r.get(2)?,
        payload: r.get(3)?,
        attempts: r.get(4)?,
    })
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::Database(format!("alert filters {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn outbox_keeps_each_match_once_and_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilterStore::open(&dir.path().join("f.sqlite")).unwrap();
        let outputs = Outputs {
            webhook: Some("http://example.org/hook".into()),
            ..Default::default()
        };
        let f = store.add("ann", "bright", "SELECT 1", &outputs).unwrap();
        assert!(matches!(
            store.add("ann", "bright", "SELECT 1", &outputs),
            Err(Error::Conflict(_))
        ));
        let m = |a| Match {
            filter: f.id,
            alert_id: a,
            rows: "[{\"x\":1}]".into(),
        };
        assert_eq!(store.enqueue(&[m(1), m(2)]).unwrap(), 2);
        // A re-consumed batch queues nothing twice.
        assert_eq!(store.enqueue(&[m(2), m(3)]).unwrap(), 1);
        assert_eq!(store.get(f.id).unwrap().unwrap().matches, 3);
        assert_eq!(store.backlog().unwrap(), 3);
        let cursor = store.cursor(Output::Webhook).unwrap();
        let (due, read_to) = store.pending_after(Output::Webhook, cursor, 10).unwrap();
        assert_eq!(due.len(), 3);
        assert_eq!(read_to, due[2].seq);
        assert!(due[0].payload.contains("\"alertId\":1"));
        // The first posted, the second failed; the third not yet posted.
        assert!(
            !store
                .failed_attempt(Output::Webhook, &due[1], "503")
                .unwrap()
        );
        store
            .record(
                Output::Webhook,
                &Progress {
                    cursor: Some(due[1].seq),
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(store.backlog().unwrap(), 2);
        // Backed off: not due again at once; the third still pending.
        assert!(store.retries_due(Output::Webhook, 10).unwrap().is_empty());
        let (rest, _) = store
            .pending_after(Output::Webhook, due[1].seq, 10)
            .unwrap();
        assert_eq!(rest.iter().map(|q| q.alert_id).collect::<Vec<_>>(), vec![3]);
        assert_eq!(store.undelivered(Output::Webhook).unwrap().len(), 2);
        assert_eq!(store.after(f.id, due[0].seq, 10).unwrap().len(), 2);
        assert_eq!(store.delivery_counts(f.id).unwrap(), (2, 1, 0));
        // The retry delivered out of order, the third in order.
        store
            .record(
                Output::Webhook,
                &Progress {
                    cursor: Some(due[2].seq),
                    delivered: vec![due[1].seq],
                    ..Default::default()
                },
            )
            .unwrap();
        assert_eq!(store.backlog().unwrap(), 0);
        assert_eq!(store.delivery_counts(f.id).unwrap(), (0, 3, 0));
        assert!(store.undelivered(Output::Webhook).unwrap().is_empty());
    }

    #[test]
    fn sequence_numbers_group_into_runs() {
        assert_eq!(runs([].into_iter()), vec![]);
        assert_eq!(
            runs([7, 3, 4, 5, 9, 8, 12, 4].into_iter()),
            vec![(3, 5), (7, 9), (12, 12)]
        );
    }

    #[test]
    fn cursors_count_exactly_the_deliveries_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.sqlite");
        let store = FilterStore::open(&path).unwrap();
        let both = |t: &str| Outputs {
            kafka_topic: Some(t.into()),
            webhook: Some("http://example.org/hook".into()),
            ..Default::default()
        };
        let a = store.add("ann", "a", "SELECT 1", &both("ann.a")).unwrap();
        let b = store
            .add("ann", "b", "SELECT 1", &Outputs::default())
            .unwrap();
        let c = store.add("ann", "c", "SELECT 1", &both("ann.c")).unwrap();
        let m = |filter, alert_id| Match {
            filter,
            alert_id,
            rows: "[]".into(),
        };
        // Filters' matches interleaved: b's (no outputs) sit between a's and c's.
        // Sequence numbers: a1 1, b1 2, c1 3, a2 4, b2 5, c2 6, a3 7, b3 8, c3 9, a4 10, ...
        let batch: Vec<Match> = (1..=4)
            .flat_map(|i| [m(a.id, i), m(b.id, i), m(c.id, i)])
            .collect();
        assert_eq!(store.enqueue(&batch).unwrap(), 12);
        assert_eq!(store.backlog().unwrap(), 16);
        let seqs = |q: &[Queued]| q.iter().map(|q| q.seq).collect::<Vec<_>>();
        let (sent, read_to) = store.pending_after(Output::Kafka, 0, 5).unwrap();
        assert_eq!(seqs(&sent), vec![1, 3, 4, 6, 7]);
        assert_eq!(read_to, 7);
        let record = |cursor: Option<i64>, delivered: Vec<i64>, marks: &[(&str, i64)]| {
            store
                .record(
                    Output::Kafka,
                    &Progress {
                        cursor,
                        delivered,
                        marks: marks.iter().map(|(t, o)| (t.to_string(), *o)).collect(),
                    },
                )
                .unwrap()
        };
        // a1 and c1 acknowledged: the cursor moves past them.
        record(Some(3), vec![], &[("ann.a", 1), ("ann.c", 1)]);
        assert_eq!(store.backlog().unwrap(), 14);
        // a3 delivered ahead of the cursor, then the cursor moves past a2, c2 and a3: a3
        // is not counted twice.
        record(None, vec![7], &[]);
        assert_eq!(store.backlog().unwrap(), 13);
        record(Some(7), vec![7], &[("ann.a", 3)]);
        assert_eq!(store.backlog().unwrap(), 11);
        assert_eq!(store.kafka_marks().unwrap()["ann.a"], 3);
        // c3 fails: it waits for a retry, off the pending matches but in the backlog.
        let c3 = store.after(c.id, 6, 1).unwrap().remove(0);
        assert_eq!(c3.seq, 9);
        assert!(!store.failed_attempt(Output::Kafka, &c3, "broken").unwrap());
        assert_eq!(store.backlog().unwrap(), 11);
        let (rest, _) = store.pending_after(Output::Kafka, 7, 100).unwrap();
        assert_eq!(seqs(&rest), vec![10, 12]);
        assert_eq!(
            seqs(&store.undelivered(Output::Kafka).unwrap()),
            vec![9, 10, 12]
        );
        store
            .lock()
            .execute("UPDATE matches SET next_try_ms = 0 WHERE seq = 9", [])
            .unwrap();
        assert_eq!(
            seqs(&store.retries_due(Output::Kafka, 10).unwrap()),
            vec![9]
        );
        // The count kept equals the count made afresh on opening.
        drop(store);
        let store = FilterStore::open(&path).unwrap();
        assert_eq!(store.backlog().unwrap(), 11);
        assert_eq!(store.delivery_counts(a.id).unwrap(), (5, 3, 0));
        assert_eq!(store.delivery_counts(b.id).unwrap(), (0, 0, 0));
        // Removing c takes its waiting deliveries with it: c3 and c4 to Kafka, four
        // webhook posts.
        store.remove(c.id).unwrap();
        assert_eq!(store.backlog().unwrap(), 5);
        for q in store.after(b.id, 0, 100).unwrap() {
            let state: (i64, i64) = store
                .lock()
                .query_row(
                    "SELECT kafka, webhook FROM matches WHERE seq = ?1",
                    [q.seq],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!(state, (delivery::NONE, delivery::NONE));
        }
    }

    #[test]
    fn a_long_stretch_without_an_output_is_read_past() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilterStore::open(&dir.path().join("f.sqlite")).unwrap();
        let hook = Outputs {
            webhook: Some("http://example.org/hook".into()),
            ..Default::default()
        };
        let quiet = store
            .add("ann", "quiet", "SELECT 1", &Outputs::default())
            .unwrap();
        let loud = store.add("ann", "loud", "SELECT 1", &hook).unwrap();
        let n = SCAN_WINDOW as usize * 2 + 10;
        let batch: Vec<Match> = (0..n as i64)
            .map(|i| Match {
                filter: quiet.id,
                alert_id: i,
                rows: "[]".into(),
            })
            .chain([Match {
                filter: loud.id,
                alert_id: 1,
                rows: "[]".into(),
            }])
            .collect();
        assert_eq!(store.enqueue(&batch).unwrap(), n + 1);
        let (due, read_to) = store.pending_after(Output::Webhook, 0, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].filter, loud.id);
        assert_eq!(read_to, n as i64 + 1);
        let (none, read_to) = store.pending_after(Output::Webhook, read_to, 10).unwrap();
        assert!(none.is_empty());
        assert_eq!(read_to, n as i64 + 1);
        assert_eq!(store.backlog().unwrap(), 1);
    }

    #[test]
    fn a_waiting_deliverer_wakes_when_matches_are_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilterStore::open(&dir.path().join("f.sqlite")).unwrap();
        let f = store
            .add("ann", "f", "SELECT 1", &Outputs::default())
            .unwrap();
        let m = |alert_id| Match {
            filter: f.id,
            alert_id,
            rows: "[]".into(),
        };
        let seen = store.queued_count();
        // Nothing queued: the wait runs out.
        assert!(!store.wait_queued(seen, Duration::from_millis(20)));
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let start = std::time::Instant::now();
                (
                    store.wait_queued(seen, Duration::from_secs(60)),
                    start.elapsed(),
                )
            });
            std::thread::sleep(Duration::from_millis(50));
            assert_eq!(store.enqueue(&[m(1)]).unwrap(), 1);
            let (woke, waited) = waiter.join().unwrap();
            assert!(woke);
            assert!(waited < Duration::from_secs(30), "{waited:?}");
        });
        // Matches already queued add nothing, and wake no one.
        let seen = store.queued_count();
        assert_eq!(store.enqueue(&[m(1)]).unwrap(), 0);
        assert!(!store.wait_queued(seen, Duration::from_millis(20)));
        // Queued before the wait began: no wait at all.
        assert_eq!(store.enqueue(&[m(2)]).unwrap(), 1);
        assert!(store.wait_queued(seen, Duration::from_secs(60)));
    }

    #[test]
    fn a_database_of_the_earlier_outbox_gets_cursors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.sqlite");
        let store = FilterStore::open(&path).unwrap();
        let f = store
            .add(
                "ann",
                "a",
                "SELECT 1",
                &Outputs {
                    kafka_topic: Some("ann.a".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        let batch: Vec<Match> = (1..=4)
            .map(|i| Match {
                filter: f.id,
                alert_id: i,
                rows: "[]".into(),
            })
            .collect();
        store.enqueue(&batch).unwrap();
        drop(store);
        // As the earlier version left it: the first delivered, the second in flight, the
        // third delivered out of order, the fourth pending; no cursors.
        {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch(
                "UPDATE matches SET kafka = 3 WHERE seq IN (1, 3);
                 UPDATE matches SET kafka = 2 WHERE seq = 2;
                 DROP TABLE outbox_cursor; DROP TABLE outbox_backlog;",
            )
            .unwrap();
        }
        let store = FilterStore::open(&path).unwrap();
        assert_eq!(store.cursor(Output::Kafka).unwrap(), 1);
        assert_eq!(store.cursor(Output::Webhook).unwrap(), 4);
        assert_eq!(store.backlog().unwrap(), 2);
        let (due, _) = store.pending_after(Output::Kafka, 1, 10).unwrap();
        assert_eq!(due.iter().map(|q| q.seq).collect::<Vec<_>>(), vec![2, 4]);
    }
}
