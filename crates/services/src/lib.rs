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
pub mod quota;
pub mod storage;

pub use error::{Error, Result};
