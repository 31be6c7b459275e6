//! The UWS 1.1 job model.
//!
//! A job is created PENDING with its parameters; `run` queues it; a bounded pool of workers
//! takes queued jobs in the order they were queued, at most `max_running` at once and at
//! most `max_running_per_client` for any one client, so that one user's batch cannot starve
//! everybody else. A worker ends in COMPLETED (with result files in the job's directory),
//! ERROR (with an error summary) or ABORTED. Every transition is committed to SQLite before
//! it is visible, so a job outlives the process: on restart, queued jobs run again and
//! jobs that were executing when the process died end in ERROR with the reason. A sweeper
//! destroys jobs, with their files, once their destruction time has passed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

use crate::error::{Error, Result};

/// Execution phase of a job (UWS 1.1 §2.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Created, not yet asked to run; parameters may still change.
    Pending,
    /// Accepted for execution, waiting for a worker.
    Queued,
    /// Running.
    Executing,
    /// Finished; results available.
    Completed,
    /// Failed; the error summary says why.
    Error,
    /// Stopped by the client or the service.
    Aborted,
    /// State not known.
    Unknown,
    /// Held by the service.
    Held,
    /// Suspended by the service.
    Suspended,
    /// Results deleted, record kept.
    Archived,
}

impl Phase {
    /// Every phase, in the order of the UWS schema.
    pub const ALL: [Phase; 10] = [
        Phase::Pending,
        Phase::Queued,
        Phase::Executing,
        Phase::Completed,
        Phase::Error,
        Phase::Aborted,
        Phase::Unknown,
        Phase::Held,
        Phase::Suspended,
        Phase::Archived,
    ];

    /// The UWS name of the phase.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "PENDING",
            Phase::Queued => "QUEUED",
            Phase::Executing => "EXECUTING",
            Phase::Completed => "COMPLETED",
            Phase::Error => "ERROR",
            Phase::Aborted => "ABORTED",
            Phase::Unknown => "UNKNOWN",
            Phase::Held => "HELD",
            Phase::Suspended => "SUSPENDED",
            Phase::Archived => "ARCHIVED",
        }
    }

    /// The phase a UWS name denotes (case-insensitive).
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// Whether the job may still change phase by itself or on RUN (a blocking WAIT waits
    /// only on these).
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Pending | Phase::Queued | Phase::Executing | Phase::Held | Phase::Suspended
        )
    }
}

/// One result file of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// Result name (`result` for a TAP query).
    pub id: String,
    /// File name inside the job's directory.
    pub file: String,
    /// Media type to serve it as.
    pub mime_type: String,
    /// Size, bytes.
    pub size_bytes: u64,
    /// Rows, for a table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
}

/// Whether a failure may go away if the job is run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// It will fail again (bad query, unknown table).
    Fatal,
    /// It may succeed later (time limit, service restart).
    Transient,
}

/// Why a job ended in ERROR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorSummary {
    /// Fatal or transient.
    pub kind: ErrorKind,
    /// The message shown to the user.
    pub message: String,
}

impl ErrorSummary {
    /// A fatal error with `message`.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Fatal,
            message: message.into(),
        }
    }

    /// A transient error with `message`.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            message: message.into(),
        }
    }
}

/// A job: what UWS shows of it, plus the client it counts against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Identifier, unique in this service.
    pub id: String,
    /// The client's own label (RUNID).
    pub run_id: Option<String>,
    /// Authenticated owner, if any.
    pub owner: Option<String>,
    /// Whom the per-client concurrency limit counts the job against (the owner, or the
    /// client's address for anonymous jobs).
    pub client: String,
    /// Current phase.
    pub phase: Phase,
    /// When it was created, ms since the Unix epoch.
    pub creation_ms: i64,
    /// When it was queued, ms since the Unix epoch.
    pub queued_ms: Option<i64>,
    /// When it started executing.
    pub start_ms: Option<i64>,
    /// When it ended.
    pub end_ms: Option<i64>,
    /// Longest it may execute, seconds.
    pub execution_duration_s: u64,
    /// When the service destroys it, ms since the Unix epoch.
    pub destruction_ms: i64,
    /// Parameters, in the order given (names as given).
    pub parameters: Vec<(String, String)>,
    /// Result files.
    pub results: Vec<JobResult>,
    /// Why it failed.
    pub error: Option<ErrorSummary>,
}

impl Job {
    /// The first value of parameter `name` (case-insensitive).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What a new job starts with.
#[derive(Debug, Clone, Default)]
pub struct NewJob {
    /// RUNID.
    pub run_id: Option<String>,
    /// Authenticated owner.
    pub owner: Option<String>,
    /// Key of the per-client limit.
    pub client: String,
    /// Parameters.
    pub parameters: Vec<(String, String)>,
}

/// The work a job does: runs it, writing result files into `dir`, and lists them. The
/// future is dropped when the job is aborted or runs out of time.
pub trait Runner: Send + Sync + 'static {
    /// Runs `job` with its files in `dir`.
    fn run(
        &self,
        job: Job,
        dir: PathBuf,
    ) -> BoxFuture<'static, Result<Vec<JobResult>, ErrorSummary>>;
}

/// Limits and defaults of the job service.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// Jobs executing at once, in all.
    pub max_running: usize,
    /// Jobs executing at once for one client; more wait in the queue.
    pub max_running_per_client: usize,
    /// Unfinished jobs (pending, queued, executing, held, suspended) one client may have;
    /// creating one more is refused.
    pub max_active_per_client: usize,
    /// Jobs in any phase one client may keep; creating one more is refused until some are
    /// deleted or destroyed.
    pub max_jobs_per_client: usize,
    /// Bytes of uploads one client's jobs may keep, bytes.
    pub max_upload_bytes_per_client: u64,
    /// Execution duration of a new job, seconds.
    pub default_execution_duration_s: u64,
    /// The longest execution duration a client may set, seconds.
    pub max_execution_duration_s: u64,
    /// Lifetime of a new job, seconds.
    pub default_lifetime_s: u64,
    /// The longest lifetime a client may set, seconds.
    pub max_lifetime_s: u64,
    /// Lifetime of a job without an owner (anonymous), and the longest it may be given from
    /// its creation, seconds (no more than the lifetimes above).
    pub anonymous_lifetime_s: u64,
    /// How often the sweeper looks for jobs past their destruction time, seconds.
    pub sweep_interval_s: u64,
    /// The longest a blocking WAIT holds a request, seconds.
    pub max_wait_s: u64,
}

impl Default for JobConfig {
    fn default() -> Self {
        Self {
            max_running: 2,
            max_running_per_client: 2,
            max_active_per_client: 100,
            max_jobs_per_client: 1_000,
            max_upload_bytes_per_client: 1 << 30,
            default_execution_duration_s: 3_600,
            max_execution_duration_s: 86_400,
            default_lifetime_s: 7 * 86_400,
            max_lifetime_s: 30 * 86_400,
            anonymous_lifetime_s: 86_400,
            sweep_interval_s: 60,
            max_wait_s: 600,
        }
    }
}

/// Which jobs a listing shows (UWS 1.1 §2.2.1.1). Without PHASE, ARCHIVED jobs are left
/// out.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only jobs in one of these phases.
    pub phases: Vec<Phase>,
    /// Only jobs created after this instant, ms since the Unix epoch.
    pub after_ms: Option<i64>,
    /// Only the most recently created `n`, newest first.
    pub last: Option<usize>,
    /// Only the jobs of this owner (`Some(None)`: anonymous jobs); `None`: everybody's.
    pub owner: Option<Option<String>>,
}

/// How a worker's job ended.
enum Outcome {
    Done(Vec<JobResult>),
    Failed(ErrorSummary),
    Aborted,
}

struct Running {
    client: String,
    abort: oneshot::Sender<()>,
}

struct Inner {
    db: Connection,
    running: HashMap<String, Running>,
    /// Held for the life of the service: one process per job directory.
    _lock: std::fs::File,
}

/// The job service.
pub struct Jobs {
    dir: PathBuf,
    config: JobConfig,
    runner: Arc<dyn Runner>,
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
}

/// Now, ms since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// An instant as UWS writes it: ISO 8601 in UTC with milliseconds.
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Reads an ISO 8601 instant (UTC when no offset is given; date alone is midnight).
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_millis());
    }
    let naive = s.trim_end_matches('Z');
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
    ] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(naive, f) {
            return Some(t.and_utc().timestamp_millis());
        }
    }
    chrono::NaiveDate::parse_from_str(naive, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_millis())
}

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    CREATE TABLE IF NOT EXISTS jobs (
        id TEXT PRIMARY KEY,
        phase TEXT NOT NULL,
        creation_ms INTEGER NOT NULL,
        queued_ms INTEGER,
        queue_seq INTEGER,
        destruction_ms INTEGER NOT NULL,
        record TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS jobs_by_phase ON jobs (phase, queue_seq);
    CREATE INDEX IF NOT EXISTS jobs_by_creation ON jobs (creation_ms);
    CREATE INDEX IF NOT EXISTS jobs_by_destruction ON jobs (destruction_ms);
    CREATE INDEX IF NOT EXISTS jobs_by_client ON jobs (json_extract(record, '$.client'));
";

/// SQLite's `auto_vacuum` mode that keeps free pages until `PRAGMA incremental_vacuum`.
const INCREMENTAL_VACUUM: i64 = 2;

/// The phases of a job that has not finished, which count towards a client's limit (as SQL).
const UNFINISHED: &str = "('PENDING', 'QUEUED', 'EXECUTING', 'HELD', 'SUSPENDED', 'UNKNOWN')";

impl Jobs {
    /// Opens (or creates) the job service in `dir`: `dir/jobs.sqlite` and one directory per
    /// job. Jobs that were executing when the previous process stopped end in ERROR;
    /// queued jobs wait for [`Jobs::start`].
    pub fn open(dir: &Path, config: JobConfig, runner: Arc<dyn Runner>) -> Result<Arc<Self>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        // Two processes on one job directory would each take the other's executing jobs
        // for interrupted ones: the directory is locked for the life of the service.
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        if lock.try_lock().is_err() {
            return Err(Error::Invalid(format!(
                "the job directory {} is in use by another Meridian process",
                dir.display()
            )));
        }
        let db = Connection::open(dir.join("jobs.sqlite"))?;
        db.busy_timeout(Duration::from_secs(5))?;
        // Pages freed by destroyed jobs go back to the file system ([`Jobs::reclaim`]), so
        // the database's size follows the jobs it holds, not the most it ever held. A
        // database made before is rewritten once to allow it.
        let vacuum: i64 = db.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))?;
        if vacuum != INCREMENTAL_VACUUM {
            db.pragma_update(None, "auto_vacuum", INCREMENTAL_VACUUM)?;
            db.execute_batch("VACUUM")?;
        }
        db.execute_batch(SCHEMA)?;
        let jobs = Arc::new(Self {
            dir: dir.to_path_buf(),
            config,
            runner,
            inner: Mutex::new(Inner {
                db,
                running: HashMap::new(),
                _lock: lock,
            }),
            changed: watch::Sender::new(0),
        });
        jobs.recover()?;
        Ok(jobs)
    }

    /// The limits in force.
    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    /// Starts the workers on queued jobs and the destruction sweeper. Call from within a
    /// tokio runtime.
    pub fn start(self: &Arc<Self>) {
        self.dispatch();
        let weak = Arc::downgrade(self);
        let every = Duration::from_secs(self.config.sweep_interval_s.max(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(jobs) = weak.upgrade() else { break };
                match jobs.sweep() {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(destroyed = n, "job sweep"),
                    Err(e) => tracing::error!(error = %e, "job sweep failed"),
                }
                match jobs.reclaim() {
                    Ok(0) => {}
                    Ok(bytes) => tracing::debug!(bytes, "job database pages given back"),
                    Err(e) => tracing::warn!(error = %e, "job database not compacted"),
                }
            }
        });
    }

    /// The directory holding job `id`'s files (uploads, results).
    pub fn job_dir(&self, id: &str) -> PathBuf {
        self.dir.join(id)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the database consistent (every change is one
        // statement), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    /// The lifetime of a new job of `owner`'s, seconds: shorter for anonymous jobs.
    fn lifetime_s(&self, owner: Option<&str>) -> u64 {
        match owner {
            Some(_) => self.config.default_lifetime_s,
            None => self
                .config
                .anonymous_lifetime_s
                .min(self.config.default_lifetime_s),
        }
    }

    /// Creates a PENDING job, unless its client has reached the number of unfinished jobs
    /// or of jobs in all it may have (429).
    pub fn create(&self, new: NewJob) -> Result<Job> {
        let now = now_ms();
        let inner = self.lock();
        let (unfinished, kept): (i64, i64) = inner.db.query_row(
            &format!(
                "SELECT COALESCE(SUM(phase IN {UNFINISHED}), 0), COUNT(*) FROM jobs
                 WHERE json_extract(record, '$.client') = ?1"
            ),
            params![new.client],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let c = &self.config;
        if unfinished as usize >= c.max_active_per_client {
            return Err(Error::RateLimited(format!(
                "too many unfinished jobs: this client has {unfinished} pending, queued or \
                 executing (limit {}); run, abort or delete some before creating more",
                c.max_active_per_client
            )));
        }
        if kept as usize >= c.max_jobs_per_client {
            return Err(Error::RateLimited(format!(
                "too many jobs: this client keeps {kept} (limit {}); delete finished ones \
                 before creating more",
                c.max_jobs_per_client
            )));
        }
        let lifetime_s = self.lifetime_s(new.owner.as_deref());
        let mut job = Job {
            id: String::new(),
            run_id: new.run_id.filter(|r| !r.is_empty()),
            owner: new.owner,
            client: new.client,
            phase: Phase::Pending,
            creation_ms: now,
            queued_ms: None,
            start_ms: None,
            end_ms: None,
            execution_duration_s: self.config.default_execution_duration_s,
            destruction_ms: now + (lifetime_s as i64) * 1000,
            parameters: new.parameters,
            results: Vec::new(),
            error: None,
        };
        // 64 random bits: unguessable enough that job URLs are not enumerable, and a clash
        // (checked by the primary key) simply draws again.
        loop {
            job.id = format!("{:016x}", rand_u64());
            let record = serde_json::to_string(&job)?;
            let inserted = inner.db.execute(
                "INSERT OR IGNORE INTO jobs (id, phase, creation_ms, queued_ms, destruction_ms, record)
                 VALUES (?1, ?2, ?3, NULL, ?4, ?5)",
                params![job.id, job.phase.as_str(), job.creation_ms, job.destruction_ms, record],
            )?;
            if inserted == 1 {
                break;
            }
        }
        let dir = self.job_dir(&job.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        drop(inner);
        self.notify();
        Ok(job)
    }

    /// Refuses to keep `bytes` more of uploads with the jobs of `client` when their uploads
    /// (every file of a job's directory but its results) would pass the per-client limit
    /// (413).
    pub fn check_upload(&self, client: &str, bytes: u64) -> Result<()> {
        let jobs: Vec<Job> = {
            let inner = self.lock();
            let mut stmt = inner
                .db
                .prepare("SELECT record FROM jobs WHERE json_extract(record, '$.client') = ?1")?;
            let rows = stmt.query_map(params![client], |r| r.get::<_, String>(0))?;
            let mut v = Vec::new();
            for r in rows {
                v.push(serde_json::from_str(&r?)?);
            }
            v
        };
        let mut used = 0u64;
        for job in &jobs {
            let Ok(entries) = std::fs::read_dir(self.job_dir(&job.id)) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if job.results.iter().any(|r| r.file == name) {
                    continue;
                }
                used += e.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        let max = self.config.max_upload_bytes_per_client;
        if used.saturating_add(bytes) > max {
            return Err(Error::Quota(format!(
                "uploads kept with this client's jobs would take {} bytes, over the limit of \
                 {max} bytes; delete some jobs first",
                used.saturating_add(bytes)
            )));
        }
        Ok(())
    }

    /// Job `id`.
    pub fn get(&self, id: &str) -> Result<Job> {
        load(&self.lock().db, id)?.ok_or_else(|| Error::NotFound(format!("no job '{id}'")))
    }

    /// The jobs `filter` selects: oldest first, or newest first under LAST.
    pub fn list(&self, filter: &ListFilter) -> Result<Vec<Job>> {
        let mut sql = String::from("SELECT record FROM jobs WHERE 1 = 1");
        let mut args: Vec<rusqlite::types::Value> = Vec::new();
        if filter.phases.is_empty() {
            sql.push_str(" AND phase <> 'ARCHIVED'");
        } else {
            sql.push_str(" AND phase IN (");
            for (i, p) in filter.phases.iter().enumerate() {
                sql.push_str(if i == 0 { "?" } else { ", ?" });
                args.push(p.as_str().to_string().into());
            }
            sql.push(')');
        }
        if let Some(after) = filter.after_ms {
            sql.push_str(" AND creation_ms > ?");
            args.push(after.into());
        }
        if let Some(owner) = &filter.owner {
            sql.push_str(" AND json_extract(record, '$.owner') IS ?");
            args.push(owner.clone().into());
        }
        match filter.last {
            Some(n) => {
                sql.push_str(" ORDER BY creation_ms DESC, id LIMIT ?");
                args.push((n as i64).into());
            }
            None => sql.push_str(" ORDER BY creation_ms, id"),
        }
        let inner = self.lock();
        let mut stmt = inner.db.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(serde_json::from_str(&r?)?);
        }
        Ok(out)
    }

    /// How many jobs are in each phase.
    pub fn counts(&self) -> Result<Vec<(Phase, u64)>> {
        let inner = self.lock();
        let mut stmt = inner
            .db
            .prepare("SELECT phase, COUNT(*) FROM jobs GROUP BY phase")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (p, n) = r?;
            if let Some(p) = Phase::parse(&p) {
                out.push((p, n as u64));
            }
        }
        Ok(out)
    }

    /// PHASE=RUN: queues a PENDING (or HELD) job. Running a job that is already queued or
    /// executing changes nothing; a finished job cannot run again.
    pub fn run(self: &Arc<Self>, id: &str) -> Result<Job> {
        {
            let inner = self.lock();
            let mut job =
                load(&inner.db, id)?.ok_or_else(|| Error::NotFound(format!("no job '{id}'")))?;
            match job.phase {
                Phase::Pending | Phase::Held => {
                    let active: i64 = inner.db.query_row(
                        "SELECT COUNT(*) FROM jobs WHERE phase IN ('QUEUED', 'EXECUTING')
                         AND json_extract(record, '$.client') = ?1",
                        params![job.client],
                        |r| r.get(0),
                    )?;
                    if active as usize >= self.config.max_active_per_client {
                        return Err(Error::RateLimited(format!(
                            "too many active jobs: {active} are queued or executing for this \
                             client (limit {}); wait for some to finish or abort them",
                            self.config.max_active_per_client
                        )));
                    }
                    job.phase = Phase::Queued;
                    job.queued_ms = Some(now_ms());
                    save(&inner.db, &job)?;
                    // Queue order is a sequence, not a clock: jobs queued within the same
                    // millisecond still start in the order they were queued.
                    inner.db.execute(
                        "UPDATE jobs SET queue_seq = (SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM jobs)
                         WHERE id = ?1",
                        params![job.id],
                    )?;
                }
                Phase::Queued | Phase::Executing => return Ok(job),
                other => {
                    return Err(Error::Invalid(format!(
                        "job {id} is {} and cannot be run again; create a new job",
                        other.as_str()
                    )));
                }
            }
        }
        self.notify();
        self.dispatch();
        self.get(id)
    }

    /// PHASE=ABORT: a job that has not finished ends ABORTED (an executing one as soon as
    /// its worker stops). Aborting a finished job changes nothing.
    pub fn abort(&self, id: &str) -> Result<Job> {
        let mut inner = self.lock();
        let mut job =
            load(&inner.db, id)?.ok_or_else(|| Error::NotFound(format!("no job '{id}'")))?;
        if !job.phase.is_active() {
            return Ok(job);
        }
        // An executing job's worker is told to stop; the phase is set here so that the
        // client sees ABORTED at once, and the worker finds the job no longer running and
        // leaves it alone.
        if let Some(r) = inner.running.remove(id) {
            let _ = r.abort.send(());
        }
        job.phase = Phase::Aborted;
        job.end_ms = Some(now_ms());
        save(&inner.db, &job)?;
        drop(inner);
        self.notify();
        Ok(job)
    }

    /// Destroys job `id`: stops it if executing, deletes its record and files.
    pub fn delete(&self, id: &str) -> Result<()> {
        let mut inner = self.lock();
        if let Some(r) = inner.running.remove(id) {
            let _ = r.abort.send(());
        }
        let n = inner
            .db
            .execute("DELETE FROM jobs WHERE id = ?1", params![id])?;
        drop(inner);
        if n == 0 {
            return Err(Error::NotFound(format!("no job '{id}'")));
        }
        let dir = self.job_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(job = id, error = %e, "could not remove job files");
        }
        self.notify();
        Ok(())
    }

    /// Sets the execution duration of a job that has not started, bounded by the service
    /// maximum (0, "unlimited", means the maximum).
    pub fn set_execution_duration(&self, id: &str, seconds: u64) -> Result<Job> {
        self.update_pending(id, "execution duration", |job, max| {
            job.execution_duration_s = if seconds == 0 {
                max.max_execution_duration_s
            } else {
                seconds.min(max.max_execution_duration_s)
            };
        })
    }

    /// Sets when job `id` is destroyed, no later than the service's maximum lifetime from
    /// now (an anonymous job: its lifetime from its creation).
    pub fn set_destruction(&self, id: &str, at_ms: i64) -> Result<Job> {
        let inner = self.lock();
        let mut job =
            load(&inner.db, id)?.ok_or_else(|| Error::NotFound(format!("no job '{id}'")))?;
        let mut latest = now_ms() + (self.config.max_lifetime_s as i64) * 1000;
        if job.owner.is_none() {
            latest = latest.min(job.creation_ms + (self.lifetime_s(None) as i64) * 1000);
        }
        job.destruction_ms = at_ms.min(latest);
        save(&inner.db, &job)?;
        drop(inner);
        self.notify();
        Ok(job)
    }

    /// Adds or replaces parameters of a PENDING job.
    pub fn set_parameters(&self, id: &str, pairs: &[(String, String)]) -> Result<Job> {
        self.update_pending(id, "parameters", |job, _| {
            for (k, v) in pairs {
                match job
                    .parameters
                    .iter_mut()
                    .find(|(name, _)| name.eq_ignore_ascii_case(k))
                {
                    Some(slot) => slot.1 = v.clone(),
                    None => job.parameters.push((k.clone(), v.clone())),
                }
            }
        })
    }

    fn update_pending(
        &self,
        id: &str,
        what: &str,
        change: impl FnOnce(&mut Job, &JobConfig),
    ) -> Result<Job> {
        let inner = self.lock();
        let mut job =
            load(&inner.db, id)?.ok_or_else(|| Error::NotFound(format!("no job '{id}'")))?;
        if job.phase != Phase::Pending {
            return Err(Error::Invalid(format!(
                "job {id} is {}: its {what} can only change while it is PENDING",
                job.phase.as_str()
            )));
        }
        change(&mut job, &self.config);
        save(&inner.db, &job)?;
        drop(inner);
        self.notify();
        Ok(job)
    }

    /// UWS blocking WAIT: returns when job `id` leaves `phase` (or any active phase when
    /// none is given), or after `timeout` (bounded by the service's maximum wait).
    pub async fn wait(&self, id: &str, phase: Option<Phase>, timeout: Duration) -> Result<Job> {
        let mut changes = self.changed.subscribe();
        let until =
            tokio::time::Instant::now() + timeout.min(Duration::from_secs(self.config.max_wait_s));
        loop {
            let job = self.get(id)?;
            let blocked = job.phase.is_active() && phase.is_none_or(|p| p == job.phase);
            if !blocked {
                return Ok(job);
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return Ok(job) },
                _ = tokio::time::sleep_until(until) => return Ok(job),
            }
        }
    }

    /// Destroys every job past its destruction time; returns how many.
    pub fn sweep(&self) -> Result<usize> {
        let due: Vec<String> = {
            let inner = self.lock();
            let mut stmt = inner
                .db
                .prepare("SELECT id FROM jobs WHERE destruction_ms <= ?1")?;
            stmt.query_map(params![now_ms()], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?
        };
        let mut n = 0;
        for id in due {
            match self.delete(&id) {
                Ok(()) => n += 1,
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    /// Gives the job database's free pages (left by destroyed jobs) back to the file
    /// system, and empties its write-ahead log; returns the bytes given back. The sweeper
    /// calls it after each sweep.
    pub fn reclaim(&self) -> Result<u64> {
        let inner = self.lock();
        let free: i64 = inner
            .db
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        if free == 0 {
            return Ok(0);
        }
        let page: i64 = inner.db.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        // Both pragmas answer with rows, which must be stepped through.
        for pragma in [
            "PRAGMA incremental_vacuum",
            "PRAGMA wal_checkpoint(TRUNCATE)",
        ] {
            let mut stmt = inner.db.prepare(pragma)?;
            let mut rows = stmt.query([])?;
            while rows.next()?.is_some() {}
        }
        Ok((free * page) as u64)
    }

    /// What `meridian check` finds in a job directory: results that jobs record but whose
    /// files are missing or of another size, and directories of no job (a destruction cut
    /// off). With `repair`, those directories are removed, unless a running service holds
    /// the directory (then it is checked only).
    pub fn check_dir(dir: &Path, repair: bool) -> Result<Vec<String>> {
        let db_path = dir.join("jobs.sqlite");
        if !db_path.exists() {
            return Ok(Vec::new());
        }
        let mut problems = Vec::new();
        let held = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join("lock"))
            .map(|f| f.try_lock().is_err())
            .unwrap_or(false);
        let repair = repair && !held;
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
        let db = Connection::open_with_flags(&db_path, flags)?;
        let mut stmt = db.prepare("SELECT id, record FROM jobs")?;
        let rows: Vec<(String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut ids = std::collections::HashSet::new();
        for (id, record) in rows {
            let job: Job = match serde_json::from_str(&record) {
                Ok(j) => j,
                Err(e) => {
                    problems.push(format!("job {id}: its record cannot be read: {e}"));
                    ids.insert(id);
                    continue;
                }
            };
            for r in &job.results {
                let path = dir.join(&id).join(&r.file);
                match std::fs::metadata(&path) {
                    Ok(m) if m.len() == r.size_bytes => {}
                    Ok(m) => problems.push(format!(
                        "job {id}: result '{}' ({}) has {} bytes, {} recorded",
                        r.id,
                        path.display(),
                        m.len(),
                        r.size_bytes
                    )),
                    Err(_) => problems.push(format!(
                        "job {id}: result '{}' ({}) is missing",
                        r.id,
                        path.display()
                    )),
                }
            }
            ids.insert(id);
        }
        for e in std::fs::read_dir(dir)
            .map_err(|e| Error::io(format!("reading {}", dir.display()), e))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.path().is_dir() || ids.contains(&name) {
                continue;
            }
            let removed = repair && std::fs::remove_dir_all(e.path()).is_ok();
            problems.push(format!(
                "jobs: {} belongs to no job{}",
                e.path().display(),
                if removed { " (removed)" } else { "" }
            ));
        }
        if held {
            tracing::info!(dir = %dir.display(), "a running service holds the job directory: checked, not repaired");
        }
        Ok(problems)
    }

    /// After a restart: executing jobs were cut off, so they end in ERROR and their partial
    /// files go; queued jobs keep their place.
    fn recover(&self) -> Result<()> {
        let inner = self.lock();
        let mut stmt = inner
            .db
            .prepare("SELECT record FROM jobs WHERE phase = 'EXECUTING'")?;
        let cut: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        drop(stmt);
        for record in cut {
            let mut job: Job = serde_json::from_str(&record)?;
            job.phase = Phase::Error;
            job.end_ms = Some(now_ms());
            job.results.clear();
            job.error = Some(ErrorSummary::transient(format!(
                "the service stopped while this job was executing (started {}); run the query again",
                job.start_ms.map(format_time).unwrap_or_default()
            )));
            remove_partial_files(&self.job_dir(&job.id));
            save(&inner.db, &job)?;
            tracing::warn!(job = %job.id, "job interrupted by a restart marked ERROR");
        }
        Ok(())
    }

    /// Starts queued jobs while workers are free, oldest first, skipping clients at their
    /// limit.
    fn dispatch(self: &Arc<Self>) {
        if let Err(e) = self.try_dispatch() {
            tracing::error!(error = %e, "job dispatch failed");
        }
    }

    fn try_dispatch(self: &Arc<Self>) -> Result<()> {
        let mut inner = self.lock();
        if inner.running.len() >= self.config.max_running {
            return Ok(());
        }
        let queued: Vec<Job> = {
            let mut stmt = inner
                .db
                .prepare("SELECT record FROM jobs WHERE phase = 'QUEUED' ORDER BY queue_seq")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            let mut v = Vec::new();
            for r in rows {
                v.push(serde_json::from_str(&r?)?);
            }
            v
        };
        let mut started = false;
        for mut job in queued {
            if inner.running.len() >= self.config.max_running {
                break;
            }
            let same = inner
                .running
                .values()
                .filter(|r| r.client == job.client)
                .count();
            if same >= self.config.max_running_per_client {
                continue;
            }
            job.phase = Phase::Executing;
            job.start_ms = Some(now_ms());
            save(&inner.db, &job)?;
            let (tx, rx) = oneshot::channel();
            inner.running.insert(
                job.id.clone(),
                Running {
                    client: job.client.clone(),
                    abort: tx,
                },
            );
            self.launch(job, rx);
            started = true;
        }
        drop(inner);
        if started {
            self.notify();
        }
        Ok(())
    }

    fn launch(self: &Arc<Self>, job: Job, abort: oneshot::Receiver<()>) {
        let this = self.clone();
        tokio::spawn(async move {
            let id = job.id.clone();
            let limit_s = job.execution_duration_s;
            tracing::info!(job = %id, "job started");
            // A panic in the work ends the job as failed, and frees its slot, rather than
            // leaving it EXECUTING for good.
            let work = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
                this.runner.run(job, this.job_dir(&id)),
            ));
            let outcome = tokio::select! {
                r = work => match r {
                    Ok(Ok(results)) => Outcome::Done(results),
                    Ok(Err(e)) => Outcome::Failed(e),
                    Err(_) => {
                        tracing::error!(job = %id, "job panicked");
                        Outcome::Failed(ErrorSummary::fatal(
                            "the service failed while running the job (an internal error)",
                        ))
                    }
                },
                _ = tokio::time::sleep(Duration::from_secs(limit_s)) => Outcome::Failed(
                    ErrorSummary::transient(format!(
                        "the job exceeded its execution duration of {limit_s} s and was stopped"
                    )),
                ),
                _ = abort => Outcome::Aborted,
            };
            if let Err(e) = this.finish(&id, outcome) {
                tracing::error!(job = %id, error = %e, "could not record the end of a job");
            }
            this.dispatch();
        });
    }

    fn finish(&self, id: &str, outcome: Outcome) -> Result<()> {
        let mut inner = self.lock();
        // A job no longer in the running set was aborted or deleted meanwhile: that
        // request already recorded its end.
        if inner.running.remove(id).is_none() {
            remove_partial_files(&self.job_dir(id));
            return Ok(());
        }
        let Some(mut job) = load(&inner.db, id)? else {
            return Ok(());
        };
        job.end_ms = Some(now_ms());
        match outcome {
            Outcome::Done(results) => {
                job.phase = Phase::Completed;
                job.results = results;
                tracing::info!(job = id, "job completed");
            }
            Outcome::Failed(e) => {
                tracing::info!(job = id, error = %e.message, "job failed");
                job.phase = Phase::Error;
                job.error = Some(e);
                remove_partial_files(&self.job_dir(id));
            }
            Outcome::Aborted => {
                job.phase = Phase::Aborted;
                remove_partial_files(&self.job_dir(id));
            }
        }
        save(&inner.db, &job)?;
        drop(inner);
        self.notify();
        Ok(())
    }
}

/// Suffix of files being written (as `meridian_formats` names them); a result is renamed to
/// its final name only when whole.
pub const PARTIAL_SUFFIX: &str = ".partial";

fn remove_partial_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().ends_with(PARTIAL_SUFFIX) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn load(db: &Connection, id: &str) -> Result<Option<Job>> {
    let record: Option<String> = db
        .query_row("SELECT record FROM jobs WHERE id = ?1", params![id], |r| {
            r.get(0)
        })
        .optional()?;
    record
        .map(|r| serde_json::from_str(&r).map_err(Error::from))
        .transpose()
}

fn save(db: &Connection, job: &Job) -> Result<()> {
    let record = serde_json::to_string(job)?;
    db.execute(
        "UPDATE jobs SET phase = ?2, queued_ms = ?3, destruction_ms = ?4, record = ?5 WHERE id = ?1",
        params![
            job.id,
            job.phase.as_str(),
            job.queued_ms,
            job.destruction_ms,
            record
        ],
    )?;
    Ok(())
}

/// A random 64-bit number from the OS-seeded hasher (no RNG dependency for job ids).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_i64(now_ms());
    h.write_u64(std::process::id() as u64);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Idle;

    impl Runner for Idle {
        fn run(
            &self,
            _job: Job,
            _dir: PathBuf,
        ) -> BoxFuture<'static, Result<Vec<JobResult>, ErrorSummary>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    fn open(dir: &Path, config: JobConfig) -> Arc<Jobs> {
        Jobs::open(dir, config, Arc::new(Idle)).unwrap()
    }

    struct Panics;

    impl Runner for Panics {
        fn run(
            &self,
            _job: Job,
            _dir: PathBuf,
        ) -> BoxFuture<'static, Result<Vec<JobResult>, ErrorSummary>> {
            Box::pin(async { panic!("a defect in the work") })
        }
    }

    #[tokio::test]
    async fn a_panicking_job_ends_in_error_and_frees_its_slot() {
        let tmp = tempfile::tempdir().unwrap();
        let jobs = Jobs::open(
            tmp.path(),
            JobConfig {
                max_running: 1,
                ..JobConfig::default()
            },
            Arc::new(Panics),
        )
        .unwrap();
        jobs.start();
        for _ in 0..2 {
            let id = jobs.create(new("10.0.0.2", None)).unwrap().id;
            jobs.run(&id).unwrap();
            let mut phase = Phase::Pending;
            for _ in 0..200 {
                phase = jobs.get(&id).unwrap().phase;
                if phase == Phase::Error {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // The second job runs too: the first one's slot was freed.
            assert_eq!(phase, Phase::Error);
            let error = jobs.get(&id).unwrap().error.unwrap();
            assert!(format!("{error:?}").contains("internal error"), "{error:?}");
        }
    }

    #[test]
    fn destroyed_jobs_give_their_pages_back() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("jobs.sqlite");
        let size = || {
            let db = Connection::open(&file).unwrap();
            db.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
            std::fs::metadata(&file).unwrap().len()
        };
        // A database made before incremental vacuum existed is rewritten for it.
        Connection::open(&file)
            .unwrap()
            .execute_batch(SCHEMA)
            .unwrap();
        let jobs = open(tmp.path(), JobConfig::default());
        let empty = size();
        let query = "SELECT * FROM gaia WHERE phot_g_mean_mag < 12 ".repeat(40);
        let ids: Vec<String> = (0..300)
            .map(|i| {
                let mut n = new(&format!("10.0.{}.{}", i / 200, i % 200), Some("ann"));
                n.parameters.push(("QUERY".into(), query.clone()));
                jobs.create(n).unwrap().id
            })
            .collect();
        assert_eq!(jobs.reclaim().unwrap(), 0);
        let full = size();
        assert!(full > empty + 100 * 1024, "{empty} -> {full}");
        for id in &ids {
            jobs.delete(id).unwrap();
        }
        assert!(jobs.reclaim().unwrap() > 100 * 1024);
        assert_eq!(size(), empty);
    }

    fn new(client: &str, owner: Option<&str>) -> NewJob {
        NewJob {
            client: client.into(),
            owner: owner.map(str::to_string),
            ..NewJob::default()
        }
    }

    #[test]
    fn pending_jobs_count_towards_the_client_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let jobs = open(
            tmp.path(),
            JobConfig {
                max_active_per_client: 3,
                ..JobConfig::default()
            },
        );
        let ids: Vec<String> = (0..3)
            .map(|_| jobs.create(new("10.0.0.1", None)).unwrap().id)
            .collect();
        let e = jobs.create(new("10.0.0.1", None)).unwrap_err();
        assert!(
            matches!(&e, Error::RateLimited(m) if m.contains("limit 3")),
            "{e}"
        );
        // Nothing is kept of a refused job; other clients are not affected.
        assert_eq!(jobs.list(&ListFilter::default()).unwrap().len(), 3);
        jobs.create(new("10.0.0.2", None)).unwrap();
        // A finished (here aborted) or deleted job no longer counts.
        jobs.abort(&ids[0]).unwrap();
        jobs.create(new("10.0.0.1", None)).unwrap();
        assert!(jobs.create(new("10.0.0.1", None)).is_err());
        jobs.delete(&ids[1]).unwrap();
        jobs.create(new("10.0.0.1", None)).unwrap();
    }

    #[test]
    fn the_jobs_a_client_keeps_are_capped() {
        let tmp = tempfile::tempdir().unwrap();
        let jobs = open(
            tmp.path(),
            JobConfig {
                max_jobs_per_client: 2,
                ..JobConfig::default()
            },
        );
        for _ in 0..2 {
            let j = jobs.create(new("alice", Some("alice"))).unwrap();
            jobs.abort(&j.id).unwrap();
        }
        let e = jobs.create(new("alice", Some("alice"))).unwrap_err();
        assert!(
            matches!(&e, Error::RateLimited(m) if m.contains("too many jobs")),
            "{e}"
        );
    }

    #[test]
    fn anonymous_jobs_live_shorter() {
        let tmp = tempfile::tempdir().unwrap();
        let config = JobConfig {
            anonymous_lifetime_s: 3_600,
            ..JobConfig::default()
        };
        let jobs = open(tmp.path(), config.clone());
        let anon = jobs.create(new("10.0.0.1", None)).unwrap();
        let owned = jobs.create(new("bob", Some("bob"))).unwrap();
        assert_eq!(anon.destruction_ms - anon.creation_ms, 3_600_000);
        assert_eq!(
            owned.destruction_ms - owned.creation_ms,
            config.default_lifetime_s as i64 * 1000
        );
        // An anonymous job cannot be kept longer on request.
        let later = jobs
            .set_destruction(&anon.id, now_ms() + 86_400_000)
            .unwrap();
        assert_eq!(later.destruction_ms, anon.creation_ms + 3_600_000);
        let later = jobs
            .set_destruction(&owned.id, now_ms() + 86_400_000)
            .unwrap();
        assert!(later.destruction_ms > owned.creation_ms + 3_600_000);
    }

    #[test]
    fn uploads_kept_per_client_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let jobs = open(
            tmp.path(),
            JobConfig {
                max_upload_bytes_per_client: 100,
                ..JobConfig::default()
            },
        );
        let j = jobs.create(new("10.0.0.1", None)).unwrap();
        std::fs::write(jobs.job_dir(&j.id).join("upload-t.csv"), [b'x'; 80]).unwrap();
        jobs.check_upload("10.0.0.1", 20).unwrap();
        let e = jobs.check_upload("10.0.0.1", 21).unwrap_err();
        assert!(
            matches!(&e, Error::Quota(m) if m.contains("limit of 100 bytes")),
            "{e}"
        );
        jobs.check_upload("10.0.0.2", 100).unwrap();
    }
}
