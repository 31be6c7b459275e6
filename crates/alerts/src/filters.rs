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
//! and is not queued twice. Each output's delivery state is kept on the row, so a slow or
//! failing output holds back only itself.

use std::collections::{BTreeMap, HashMap};
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

/// Delivery states of a match for one output.
mod delivery {
    /// The filter has no such output.
    pub const NONE: i64 = 0;
    /// To be delivered.
    pub const PENDING: i64 = 1;
    /// Being sent: after a crash, checked against the output (see `recover`).
    pub const IN_FLIGHT: i64 = 2;
    /// Delivered.
    pub const DONE: i64 = 3;
    /// Given up after the last retry.
    pub const FAILED: i64 = 4;
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
             -- Matches of an output's state in queue order: the due ones, those in
             -- flight and the backlog are read through these, never by a scan of the
             -- table (which holds delivered matches for days).
             DROP INDEX IF EXISTS matches_kafka;
             DROP INDEX IF EXISTS matches_webhook;
             CREATE INDEX IF NOT EXISTS matches_kafka_seq ON matches (kafka, seq);
             CREATE INDEX IF NOT EXISTS matches_webhook_seq ON matches (webhook, seq);
             CREATE TABLE IF NOT EXISTS kafka_mark (
                 topic TEXT PRIMARY KEY,
                 next_offset INTEGER NOT NULL
             );",
        )
        .map_err(|e| db_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
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
    /// left as it is. Returns the matches new to the outbox.
    pub fn enqueue(&self, matches: &[Match]) -> Result<usize> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let mut added = 0;
        {
            let mut filter = tx
                .prepare("SELECT name, kafka_topic IS NOT NULL, webhook IS NOT NULL FROM filter WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            let mut insert = tx
                .prepare(
                    "INSERT OR IGNORE INTO matches (filter, alert_id, payload, created_ms, kafka,
                                                    webhook)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(|e| self.err(e))?;
            let mut count = tx
                .prepare("UPDATE filter SET matches = matches + ?2 WHERE id = ?1")
                .map_err(|e| self.err(e))?;
            let now = now_ms();
            // Each filter's name and outputs, looked up once; matches counted per filter.
            let mut filters: HashMap<i64, Option<(String, bool, bool)>> = HashMap::new();
            let mut counts: BTreeMap<i64, i64> = BTreeMap::new();
            for m in matches {
                let found = match filters.get(&m.filter) {
                    Some(f) => f,
                    None => {
                        let f = filter
                            .query_row(params![m.filter], |r| {
                                Ok((
                                    // As a JSON string, for the payloads.
                                    serde_json::Value::String(r.get::<_, String>(0)?).to_string(),
                                    r.get::<_, bool>(1)?,
                                    r.get::<_, bool>(2)?,
                                ))
                            })
                            .optional()
                            .map_err(|e| self.err(e))?;
                        filters.entry(m.filter).or_insert(f)
                    }
                };
                let Some((name, kafka, webhook)) = found else {
                    continue;
                };
                let payload = format!(
                    "{{\"filter\":{},\"name\":{},\"alertId\":{},\"rows\":{}}}",
                    m.filter, name, m.alert_id, m.rows
                );
                let state = |wanted: bool| {
                    if wanted {
                        delivery::PENDING
                    } else {
                        delivery::NONE
                    }
                };
                let n = insert
                    .execute(params![
                        m.filter,
                        m.alert_id,
                        payload,
                        now,
                        state(*kafka),
                        state(*webhook)
                    ])
                    .map_err(|e| self.err(e))?;
                if n > 0 {
                    *counts.entry(m.filter).or_default() += 1;
                    added += 1;
                }
            }
            for (id, n) in counts {
                count.execute(params![id, n]).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(added)
    }

    /// Deliveries waiting, over all outputs (a match waiting for its Kafka topic and its
    /// webhook counts twice); the consumer holds back while there are too many.
    pub fn backlog(&self) -> Result<u64> {
        self.lock()
            .query_row(
                "SELECT (SELECT count(*) FROM matches WHERE kafka IN (1, 2))
                      + (SELECT count(*) FROM matches WHERE webhook IN (1, 2))",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// Up to `limit` matches due for `output`, oldest first, marked in flight.
    pub fn take_due(&self, output: Output, limit: usize) -> Result<Vec<Queued>> {
        let c = output.column();
        let now = now_ms();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        let rows: Vec<Queued> = {
            let mut stmt = tx
                .prepare(&format!(
                    "SELECT seq, filter, alert_id, payload, attempts FROM matches
                     WHERE {c} = 1 AND next_try_ms <= ?1 ORDER BY seq LIMIT ?2"
                ))
                .map_err(|e| self.err(e))?;
            stmt.query_map(params![now, limit as i64], queued_row)
                .map_err(|e| self.err(e))?
                .collect::<std::result::Result<_, _>>()
                .map_err(|e| self.err(e))?
        };
        // The rows taken are exactly those due between the first and the last taken: one
        // statement marks them all.
        if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
            tx.execute(
                &format!(
                    "UPDATE matches SET {c} = {} WHERE {c} = 1 AND next_try_ms <= ?1
                     AND seq BETWEEN ?2 AND ?3",
                    delivery::IN_FLIGHT
                ),
                params![now, first.seq, last.seq],
            )
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// Matches left in flight for `output` by a process that stopped while sending them.
    pub fn in_flight(&self, output: Output) -> Result<Vec<Queued>> {
        let c = output.column();
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT seq, filter, alert_id, payload, attempts FROM matches
                 WHERE {c} = 2 ORDER BY seq"
            ))
            .map_err(|e| self.err(e))?;
        stmt.query_map([], queued_row)
            .map_err(|e| self.err(e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| self.err(e))
    }

    /// Marks matches `seqs` delivered to `output`.
    pub fn delivered(&self, output: Output, seqs: &[i64]) -> Result<()> {
        self.set_delivery(output, seqs, delivery::DONE)
    }

    /// Marks matches delivered to Kafka, given as (sequence number, topic, offset the
    /// broker gave it), and moves each topic's mark past them, in one transaction: every
    /// match still in flight afterwards was sent after the mark, so it is at or after the
    /// mark if the broker has it (see [`FilterStore::kafka_marks`]).
    pub fn delivered_to_kafka(&self, acks: &[(i64, String, i64)]) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut done = tx
                .prepare(&format!(
                    "UPDATE matches SET kafka = {} WHERE seq BETWEEN ?1 AND ?2",
                    delivery::DONE
                ))
                .map_err(|e| self.err(e))?;
            let mut mark = tx
                .prepare(
                    "INSERT INTO kafka_mark (topic, next_offset) VALUES (?1, ?2)
                     ON CONFLICT (topic) DO UPDATE
                     SET next_offset = max(next_offset, excluded.next_offset)",
                )
                .map_err(|e| self.err(e))?;
            let mut marks: HashMap<&str, i64> = HashMap::new();
            for (first, last) in runs(acks.iter().map(|(seq, ..)| *seq)) {
                done.execute(params![first, last])
                    .map_err(|e| self.err(e))?;
            }
            for (_, topic, offset) in acks {
                let m = marks.entry(topic).or_insert(offset + 1);
                *m = (*m).max(offset + 1);
            }
            for (topic, next) in marks {
                mark.execute(params![topic, next])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// For each topic that received matches, the offset after the last one acknowledged
    /// by the broker.
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

    /// Puts matches `seqs` back in the queue of `output` (not sent after all).
    pub fn requeue(&self, output: Output, seqs: &[i64]) -> Result<()> {
        self.set_delivery(output, seqs, delivery::PENDING)
    }

    fn set_delivery(&self, output: Output, seqs: &[i64], state: i64) -> Result<()> {
        let c = output.column();
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(|e| self.err(e))?;
        {
            let mut stmt = tx
                .prepare(&format!(
                    "UPDATE matches SET {c} = ?3 WHERE seq BETWEEN ?1 AND ?2"
                ))
                .map_err(|e| self.err(e))?;
            for (first, last) in runs(seqs.iter().copied()) {
                stmt.execute(params![first, last, state])
                    .map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Records a failed attempt of match `seq` for `output`: retried after a backoff that
    /// doubles from one second, given up (and the error kept on the filter) after
    /// [`WEBHOOK_ATTEMPTS`].
    pub fn failed_attempt(&self, output: Output, q: &Queued, error: &str) -> Result<bool> {
        let c = output.column();
        let attempts = q.attempts + 1;
        let conn = self.lock();
        let give_up = attempts >= WEBHOOK_ATTEMPTS;
        let state = if give_up {
            delivery::FAILED
        } else {
            delivery::PENDING
        };
        let backoff_ms = 1000i64 << (attempts - 1).clamp(0, 20);
        conn.execute(
            &format!("UPDATE matches SET {c} = ?2, attempts = ?3, next_try_ms = ?4 WHERE seq = ?1"),
            params![q.seq, state, attempts, now_ms() + backoff_ms],
        )
        .map_err(|e| self.err(e))?;
        if give_up {
            conn.execute(
                "UPDATE filter SET last_error = ?2 WHERE id = ?1",
                params![q.filter, format!("{} of alert {}: {error}", c, q.alert_id)],
            )
            .map_err(|e| self.err(e))?;
        }
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
        conn.query_row(
            "SELECT
                 coalesce(sum((kafka IN (1, 2)) + (webhook IN (1, 2))), 0),
                 coalesce(sum((kafka = 3) + (webhook = 3)), 0),
                 coalesce(sum((kafka = 4) + (webhook = 4)), 0)
             FROM matches WHERE filter = ?1",
            params![id],
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
        self.lock()
            .execute(
                "DELETE FROM matches WHERE created_ms < ?1 AND kafka NOT IN (1, 2)
                 AND webhook NOT IN (1, 2)",
                params![now_ms() - KEEP_DELIVERED_MS],
            )
            .map_err(|e| self.err(e))
    }
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
        let due = store.take_due(Output::Webhook, 10).unwrap();
        assert_eq!(due.len(), 3);
        assert!(store.take_due(Output::Webhook, 10).unwrap().is_empty());
        assert!(due[0].payload.contains("\"alertId\":1"));
        store.delivered(Output::Webhook, &[due[0].seq]).unwrap();
        assert!(
            !store
                .failed_attempt(Output::Webhook, &due[1], "503")
                .unwrap()
        );
        // Backed off: not due again at once.
        store.requeue(Output::Webhook, &[due[2].seq]).unwrap();
        let again = store.take_due(Output::Webhook, 10).unwrap();
        assert_eq!(
            again.iter().map(|q| q.alert_id).collect::<Vec<_>>(),
            vec![3]
        );
        assert_eq!(store.after(f.id, due[0].seq, 10).unwrap().len(), 2);
        assert_eq!(store.delivery_counts(f.id).unwrap(), (2, 1, 0));
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
    fn range_bookkeeping_touches_exactly_the_matches_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = FilterStore::open(&dir.path().join("f.sqlite")).unwrap();
        let kafka = |t: &str| Outputs {
            kafka_topic: Some(t.into()),
            webhook: Some("http://example.org/hook".into()),
            ..Default::default()
        };
        let a = store.add("ann", "a", "SELECT 1", &kafka("ann.a")).unwrap();
        let b = store
            .add("ann", "b", "SELECT 1", &Outputs::default())
            .unwrap();
        let c = store.add("ann", "c", "SELECT 1", &kafka("ann.c")).unwrap();
        let m = |filter, alert_id| Match {
            filter,
            alert_id,
            rows: "[]".into(),
        };
        // Filters' matches interleaved: b's (no outputs) sit between a's and c's.
        let batch: Vec<Match> = (1..=4)
            .flat_map(|i| [m(a.id, i), m(b.id, i), m(c.id, i)])
            .collect();
        assert_eq!(store.enqueue(&batch).unwrap(), 12);
        let state = |output: Output, seq: i64| -> i64 {
            store
                .lock()
                .query_row(
                    &format!("SELECT {} FROM matches WHERE seq = ?1", output.column()),
                    [seq],
                    |r| r.get(0),
                )
                .unwrap()
        };
        // Kafka: take 5 of the 8, acknowledge the 1st, 2nd and 4th; the rest stay in
        // flight, b's matches untouched.
        let sent = store.take_due(Output::Kafka, 5).unwrap();
        assert_eq!(sent.len(), 5);
        let acks: Vec<(i64, String, i64)> = [0, 1, 3]
            .iter()
            .map(|&i| (sent[i].seq, "ann.a".to_string(), i as i64))
            .collect();
        store.delivered_to_kafka(&acks).unwrap();
        for (i, q) in sent.iter().enumerate() {
            let want = if [0, 1, 3].contains(&i) {
                delivery::DONE
            } else {
                delivery::IN_FLIGHT
            };
            assert_eq!(state(Output::Kafka, q.seq), want, "{i}");
        }
        assert_eq!(store.in_flight(Output::Kafka).unwrap().len(), 2);
        assert_eq!(store.kafka_marks().unwrap()["ann.a"], 4);
        let rest = store.take_due(Output::Kafka, 100).unwrap();
        assert_eq!(rest.len(), 3);
        for q in store.after(b.id, 0, 100).unwrap() {
            assert_eq!(state(Output::Kafka, q.seq), delivery::NONE);
            assert_eq!(state(Output::Webhook, q.seq), delivery::NONE);
        }
        store
            .requeue(Output::Kafka, &[sent[2].seq, sent[4].seq])
            .unwrap();
        assert_eq!(store.take_due(Output::Kafka, 100).unwrap().len(), 2);
        // One of a's webhook deliveries backed off: the range taken must skip it.
        let hooks = store.take_due(Output::Webhook, 2).unwrap();
        assert_eq!(hooks.len(), 2);
        assert!(
            !store
                .failed_attempt(Output::Webhook, &hooks[1], "503")
                .unwrap()
        );
        store.delivered(Output::Webhook, &[hooks[0].seq]).unwrap();
        let due = store.take_due(Output::Webhook, 100).unwrap();
        assert_eq!(due.len(), 6, "{due:?}");
        assert!(due.iter().all(|q| q.seq != hooks[1].seq));
        assert_eq!(state(Output::Webhook, hooks[1].seq), delivery::PENDING);
    }
}
