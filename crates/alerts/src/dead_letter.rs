//! The dead-letter table: alerts that could not be stored (malformed Avro, an unknown
//! schema id, a message cut short, a position that is not one), each with where it came
//! from, why, and its bytes, so that nothing read is silently dropped and the stream never
//! stops for one bad alert.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::{Error, Result};

/// One alert that was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// A Kafka topic or a file.
    pub source: String,
    /// The Kafka partition, if from Kafka.
    pub partition: Option<i32>,
    /// The message's offset in its partition, or the alert's index in its file.
    pub offset: i64,
    /// What is wrong with it.
    pub reason: String,
    /// The message's bytes (empty for an alert of a file, which stays where it is).
    pub payload: Vec<u8>,
}

/// The dead-letter table, in an SQLite database.
#[derive(Debug)]
pub struct DeadLetters {
    path: PathBuf,
    conn: Mutex<rusqlite::Connection>,
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::Avro(format!("dead-letter table {}: {e}", path.display()))
}

impl DeadLetters {
    /// Opens (creating if needed) the table in the database at `path`.
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
             CREATE TABLE IF NOT EXISTS dead_letter (
                 id INTEGER PRIMARY KEY,
                 at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
                 source TEXT NOT NULL,
                 partition INTEGER,
                 offset INTEGER NOT NULL,
                 reason TEXT NOT NULL,
                 payload BLOB NOT NULL
             );",
        )
        .map_err(|e| db_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// Records alerts that were not stored (one transaction), logging each.
    pub fn add(&self, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let tx = conn.transaction().map_err(|e| db_err(&self.path, e))?;
        for l in letters {
            tracing::warn!(
                source = %l.source,
                partition = ?l.partition,
                offset = l.offset,
                reason = %l.reason,
                "alert sent to the dead-letter table"
            );
            tx.execute(
                "INSERT INTO dead_letter (source, partition, offset, reason, payload) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![l.source, l.partition, l.offset, l.reason, l.payload],
            )
            .map_err(|e| db_err(&self.path, e))?;
        }
        tx.commit().map_err(|e| db_err(&self.path, e))
    }

    /// The most recent `limit` dead letters, newest first.
    pub fn recent(&self, limit: usize) -> Result<Vec<DeadLetter>> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = conn
            .prepare(
                "SELECT source, partition, offset, reason, payload FROM dead_letter \
                 ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| db_err(&self.path, e))?;
        let rows = st
            .query_map([limit as i64], |r| {
                Ok(DeadLetter {
                    source: r.get(0)?,
                    partition: r.get(1)?,
                    offset: r.get(2)?,
                    reason: r.get(3)?,
                    payload: r.get(4)?,
                })
            })
            .map_err(|e| db_err(&self.path, e))?;
        rows.collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| db_err(&self.path, e))
    }

    /// How many alerts were not stored.
    pub fn count(&self) -> Result<u64> {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("SELECT COUNT(*) FROM dead_letter", [], |r| {
            r.get::<_, i64>(0)
        })
        .map(|n| n as u64)
        .map_err(|e| db_err(&self.path, e))
    }
}
