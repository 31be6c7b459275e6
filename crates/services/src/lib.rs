//! Meridian's services below the protocols. [`accounts`] holds users and their tokens,
//! [`groups`] their groups with roles, [`storage`] their files (VOSpace nodes).
//! [`mydb`] keeps each user's tables. [`jobs`] is the UWS 1.1 job model: phases and
//! their transitions, a bounded worker pool with per-owner limits, blocking waits, the
//! destruction sweeper, and persistence in SQLite so that jobs outlive the process.
//!
//! Protocol code (the HTTP server) renders these types as UWS documents and supplies the
//! work a job does through [`jobs::Runner`]; nothing here knows about HTTP or queries.

pub mod accounts;
pub mod error;
pub mod groups;
pub mod jobs;
pub mod mydb;
pub mod net;
pub mod notebooks;
pub mod quota;
pub mod storage;

pub use error::{Error, Result};

/// Checks the SQLite database at `path` (SQLite's own `PRAGMA integrity_check`, read only):
/// what it finds wrong, none when the database is sound or absent.
pub fn check_database(path: &std::path::Path) -> Vec<String> {
    if !path.exists() {
        return Vec::new();
    }
    let flags =
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = match rusqlite::Connection::open_with_flags(path, flags) {
        Ok(c) => c,
        Err(e) => return vec![format!("{}: cannot be opened: {e}", path.display())],
    };
    let rows = conn.prepare("PRAGMA integrity_check").and_then(|mut s| {
        s.query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<String>>>()
    });
    match rows {
        Ok(rows) if rows == ["ok"] => Vec::new(),
        Ok(rows) => rows
            .into_iter()
            .map(|r| format!("{}: {r}", path.display()))
            .collect(),
        Err(e) => vec![format!("{}: {e}", path.display())],
    }
}
