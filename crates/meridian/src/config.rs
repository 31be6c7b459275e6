//! Configuration in layers: built-in defaults, then a TOML file, then `MERIDIAN_*`
//! environment variables (`MERIDIAN_DATA_DIR`, `MERIDIAN_INGEST__PARTITION_ROWS`, ...: a
//! double underscore separates a section from its key). Validated once, at start.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory holding catalogs and all other state.
    pub data_dir: PathBuf,
    /// Ingest defaults.
    pub ingest: IngestConfig,
    /// Query limits.
    pub query: QueryConfig,
    /// Logging.
    pub log: LogConfig,
    /// The HTTP services.
    pub server: ServerConfig,
    /// Asynchronous (UWS) jobs.
    pub jobs: JobsConfig,
    /// Accounts and tokens.
    pub auth: AuthConfig,
    /// Users' own tables.
    pub mydb: MyDbConfig,
    /// Users' files (VOSpace) and survey file collections.
    pub storage: StorageConfig,
    /// The spectra services' limits.
    pub spectra: SpectraConfig,
    /// The Ballista cluster queries run on, and its processes' settings.
    pub cluster: ClusterConfig,
    /// Alert filters and their outputs.
    pub alerts: AlertsConfig,
    /// Per-client limits on requests.
    pub quotas: QuotasConfig,
    /// The notebook hub `meridian serve` runs beside the services.
    pub notebooks: NotebooksConfig,
    /// Precomputed cross-match tables with reference catalogs.
    pub xmatch: XMatchConfig,
}

/// Precomputed cross-match tables: every catalog matched with each reference catalog,
/// published as catalog `x<radius>__<catalog>__<reference>` and recomputed when either
/// changes (see docs/xmatch-tables.md).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct XMatchConfig {
    /// The reference catalogs (none: no tables are kept).
    pub references: Vec<String>,
    /// Match radius, arcseconds.
    pub radius_arcsec: f64,
    /// "nearest" (each row's nearest partner within the radius) or "all" (every pair).
    pub mode: String,
    /// Catalogs that get no match tables.
    pub exclude: Vec<String>,
    /// How often `meridian serve` looks for stale tables and recomputes them, seconds (0:
    /// never; `meridian ingest` and `meridian xmatch refresh` still do).
    pub check_interval_s: u64,
    /// Threads `meridian serve`'s recomputes use, at low CPU priority.
    pub background_threads: usize,
}

impl Default for XMatchConfig {
    fn default() -> Self {
        Self {
            references: Vec::new(),
            radius_arcsec: 1.5,
            mode: "nearest".into(),
            exclude: Vec::new(),
            check_interval_s: 300,
            background_threads: 1,
        }
    }
}

impl XMatchConfig {
    /// The settings of the match tables (the references not yet checked against the store:
    /// see [`meridian_engine::match_tables::Settings::check`]).
    pub fn settings(&self) -> anyhow::Result<meridian_engine::match_tables::Settings> {
        let mode = match self.mode.as_str() {
            "nearest" => meridian_engine::XMatchMode::Nearest,
            "all" => meridian_engine::XMatchMode::All,
            other => bail!("[xmatch] mode must be \"nearest\" or \"all\", not \"{other}\""),
        };
        Ok(meridian_engine::match_tables::Settings {
            references: self.references.clone(),
            radius_arcsec: self.radius_arcsec,
            mode,
            exclude: self.exclude.clone(),
        })
    }
}

/// The notebook hub: JupyterHub, signing users in through Meridian and spawning a
/// JupyterLab per user (see docs/notebooks.md). `scripts/notebooks-setup.sh` installs what
/// it needs into `~/.cache/meridian/notebooks`, which the defaults point at.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NotebooksConfig {
    /// Whether `meridian serve` runs the hub.
    pub enabled: bool,
    /// Where browsers open the hub (`http://host:port`); it listens there, and on the next
    /// two ports of 127.0.0.1 for its own API and its proxy's. Use another host name than Meridian's in
    /// production, so that Meridian's login cookie never reaches users' servers.
    pub url: String,
    /// The `jupyterhub` command.
    pub jupyterhub: PathBuf,
    /// The `configurable-http-proxy` command.
    pub proxy: PathBuf,
    /// Pythons offered as kernels besides the hub's own (each with `ipykernel`).
    pub kernels: Vec<PathBuf>,
    /// Where the hub and the notebooks reach Meridian, when not at its public URL (a
    /// cluster-internal address).
    pub meridian_url: Option<String>,
    /// A user's server idle this long is stopped, seconds (0: never).
    pub idle_timeout_s: u64,
    /// A server that takes longer to start has failed, seconds.
    pub start_timeout_s: u64,
    /// Memory each user's server may use, MiB (0: no limit).
    pub mem_limit_mib: u64,
    /// CPU time each user's server may use, seconds (0: no limit).
    pub cpu_time_limit_s: u64,
    /// The spawner class: `meridian_hub.spawner.LocalSpawner` runs servers as processes on
    /// this machine; `dockerspawner.DockerSpawner` or `kubespawner.KubeSpawner` on a
    /// cluster (configured further in `extra_config`).
    pub spawner: String,
    /// Example notebooks copied into each user's storage the first time their server
    /// starts (none: the ones installed with the hub).
    pub examples: Option<PathBuf>,
    /// An administrator's own JupyterHub configuration file, loaded after Meridian's.
    pub extra_config: Option<PathBuf>,
    /// The hub's OAuth client secret (default: made once and kept in the hub's
    /// directory).
    pub client_secret: Option<String>,
}

impl Default for NotebooksConfig {
    fn default() -> Self {
        let tools = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".cache/meridian/notebooks");
        Self {
            enabled: false,
            url: "http://127.0.0.2:8000".into(),
            jupyterhub: tools.join("hub/bin/jupyterhub"),
            proxy: tools.join("node_modules/.bin/configurable-http-proxy"),
            kernels: vec![
                tools.join("kernel/bin/python"),
                tools.join("datalab-kernel/bin/python"),
            ],
            meridian_url: None,
            idle_timeout_s: 3600,
            start_timeout_s: 120,
            mem_limit_mib: 4096,
            cpu_time_limit_s: 0,
            spawner: "meridian_hub.spawner.LocalSpawner".into(),
            examples: None,
            extra_config: None,
            client_secret: None,
        }
    }
}

/// Per-client limits on the HTTP services: each user, and each anonymous caller's
/// address, may make so many requests a minute, run so many queries at once, receive so
/// many result bytes a day and upload so many times an hour; more gets 429 with
/// `Retry-After`. Administrators are exempt. 0 turns a limit off.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasConfig {
    /// Requests a minute (a minute's worth may come at once).
    pub requests_per_minute: u32,
    /// Queries running at once.
    pub concurrent_queries: u32,
    /// Result bytes a day (UTC), MiB.
    pub result_mib_per_day: u64,
    /// Uploads an hour.
    pub uploads_per_hour: u32,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        let d = meridian_services::quota::QuotaConfig::DEFAULT;
        Self {
            requests_per_minute: d.requests_per_minute,
            concurrent_queries: d.concurrent_queries,
            result_mib_per_day: d.result_mib_per_day,
            uploads_per_hour: d.uploads_per_hour,
        }
    }
}

impl QuotasConfig {
    /// The limits for the services.
    pub fn to_services(&self) -> meridian_services::quota::QuotaConfig {
        meridian_services::quota::QuotaConfig {
            requests_per_minute: self.requests_per_minute,
            concurrent_queries: self.concurrent_queries,
            result_mib_per_day: self.result_mib_per_day,
            uploads_per_hour: self.uploads_per_hour,
        }
    }
}

/// Alert filters and their outputs (`meridian alerts consume`, `/api/alerts/filters`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// Whether filters' webhooks may reach this machine and private networks (off: an
    /// open service must not post into the network it sits in).
    pub webhook_allow_private: bool,
    /// Matches waiting for delivery above which the consumer stops reading. A batch of a
    /// Rubin visit (10,000 alerts) through 100 filters can queue 150,000 matches at once:
    /// the default lets the outputs work through a few such batches while the next are
    /// read, and bounds the outbox (about 300 bytes a match) when an output is down.
    pub max_backlog: u64,
    /// Longest wait for a webhook's answer, seconds.
    pub webhook_timeout_s: u64,
    /// Longest run of one filter over one batch of alerts, seconds: past it the filter is
    /// stopped and paused with that reason, and the stream goes on.
    pub filter_time_limit_s: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            webhook_allow_private: false,
            max_backlog: 1_000_000,
            webhook_timeout_s: 10,
            filter_time_limit_s: 30,
        }
    }
}

/// The cluster (`meridian cluster scheduler` and `meridian cluster executor`) and its
/// clients (`meridian query`, `meridian xmatch`, `meridian serve`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The scheduler queries run on, `df://host:port`; none: queries run in this process.
    pub scheduler: Option<String>,
    /// A query that cannot run on the cluster fails, rather than running in this process.
    pub required: bool,
    /// Address the scheduler listens at.
    pub scheduler_bind: String,
    /// Address an executor listens at.
    pub executor_bind: String,
    /// Port of an executor's data service (0: a free one).
    pub executor_port: u16,
    /// Directory of an executor's stage outputs (default: a temporary directory).
    pub work_dir: Option<PathBuf>,
    /// Partitions an executor runs at once (0: the number of cores).
    pub concurrent_tasks: usize,
    /// Seconds without a heartbeat after which the scheduler takes an executor for lost
    /// (an executor's requests for work are its heartbeats: at least every
    /// [`meridian_cluster::EXECUTOR_POLL_SECONDS`], so this must be at least twice that).
    pub executor_timeout_s: u64,
    /// Attempts of a failing task before its query fails.
    pub task_max_failures: usize,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            scheduler: None,
            required: false,
            scheduler_bind: "127.0.0.1:50050".into(),
            executor_bind: "127.0.0.1".into(),
            executor_port: 0,
            work_dir: None,
            concurrent_tasks: 0,
            executor_timeout_s: 60,
            task_max_failures: 4,
        }
    }
}

/// Limits of the spectra services (SPARCL, SSA, stacks).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SpectraConfig {
    /// Most spectra one retrieve may ask for (sparclclient stops at 24,000 itself).
    pub max_retrieve: usize,
    /// Most records one find may return.
    pub max_find: usize,
    /// Most spectra one stack may take.
    pub max_stack: usize,
    /// Memory one stack may hold, MiB (medians keep every value).
    pub stack_memory_mib: u64,
    /// Stacks computed at once.
    pub concurrent_stacks: usize,
}

impl Default for SpectraConfig {
    fn default() -> Self {
        let d = meridian_server::spectra::SpectraService::default();
        Self {
            max_retrieve: d.max_retrieve,
            max_find: d.max_find,
            max_stack: d.max_stack,
            stack_memory_mib: d.stack_memory_bytes >> 20,
            concurrent_stacks: d.stacks.available_permits(),
        }
    }
}

/// Users' files and survey file collections.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where file bytes live: a directory (default: `storage` in the data directory).
    pub dir: Option<PathBuf>,
    /// Or an object-store URL instead (`s3://bucket/prefix`, configured by the `AWS_*`
    /// environment variables as catalogs in object stores are; `memory:///` for tests).
    pub url: Option<String>,
    /// The node tree (default: `storage.sqlite` in the data directory).
    pub db: Option<PathBuf>,
    /// What one user's or group's files may take, MiB.
    pub quota_mib: u64,
    /// Read-only survey file collections, `name = "directory"`: listed and fetched as
    /// `<name>://path`.
    pub collections: std::collections::BTreeMap<String, PathBuf>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            dir: None,
            url: None,
            db: None,
            quota_mib: 10 * 1024,
            collections: Default::default(),
        }
    }
}

/// Users' own tables.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MyDbConfig {
    /// Where they live (default: `mydb` in the data directory).
    pub dir: Option<PathBuf>,
    /// What one user's tables may take, MiB.
    pub quota_mib: u64,
}

impl Default for MyDbConfig {
    fn default() -> Self {
        Self {
            dir: None,
            quota_mib: 1024,
        }
    }
}

/// Accounts and tokens.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The account database (default: `accounts.sqlite` in the data directory).
    pub db: Option<PathBuf>,
    /// How long a token issued at login lives, days.
    pub token_lifetime_days: u64,
    /// Whether anyone may create an account through `/api/auth/register`.
    pub self_registration: bool,
    /// Whether callers without a token may run asynchronous jobs.
    pub anonymous_jobs: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        let d = meridian_server::auth::AuthConfig::default();
        Self {
            db: None,
            token_lifetime_days: 30,
            self_registration: d.self_registration,
            anonymous_jobs: d.anonymous_jobs,
        }
    }
}

/// Asynchronous jobs: the worker pool, per-client limits, lifetimes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Where job records and results live (default: `jobs` in the data directory).
    pub dir: Option<PathBuf>,
    /// Jobs executing at once.
    pub max_running: usize,
    /// Jobs executing at once for one client.
    pub max_running_per_client: usize,
    /// Unfinished jobs (pending, queued, executing...) one client may have.
    pub max_active_per_client: usize,
    /// Jobs in any phase one client may keep.
    pub max_jobs_per_client: usize,
    /// What the uploads kept with one client's jobs may take, MiB.
    pub max_upload_mib_per_client: u64,
    /// Execution duration of a new job, seconds.
    pub default_execution_duration_s: u64,
    /// Longest execution duration a client may set, seconds.
    pub max_execution_duration_s: u64,
    /// Lifetime of a new job (until its destruction), seconds.
    pub default_lifetime_s: u64,
    /// Longest lifetime a client may set, seconds.
    pub max_lifetime_s: u64,
    /// Lifetime of an anonymous job, and the longest it may be given, seconds.
    pub anonymous_lifetime_s: u64,
    /// How often jobs past their destruction time are removed, seconds.
    pub sweep_interval_s: u64,
    /// Longest blocking WAIT, seconds.
    pub max_wait_s: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        let d = meridian_services::jobs::JobConfig::default();
        Self {
            dir: None,
            max_running: d.max_running,
            max_running_per_client: d.max_running_per_client,
            max_active_per_client: d.max_active_per_client,
            max_jobs_per_client: d.max_jobs_per_client,
            max_upload_mib_per_client: d.max_upload_bytes_per_client >> 20,
            default_execution_duration_s: d.default_execution_duration_s,
            max_execution_duration_s: d.max_execution_duration_s,
            default_lifetime_s: d.default_lifetime_s,
            max_lifetime_s: d.max_lifetime_s,
            anonymous_lifetime_s: d.anonymous_lifetime_s,
            sweep_interval_s: d.sweep_interval_s,
            max_wait_s: d.max_wait_s,
        }
    }
}

impl JobsConfig {
    /// The job service's settings.
    pub fn to_services(&self) -> meridian_services::jobs::JobConfig {
        meridian_services::jobs::JobConfig {
            max_running: self.max_running,
            max_running_per_client: self.max_running_per_client,
            max_active_per_client: self.max_active_per_client,
            max_jobs_per_client: self.max_jobs_per_client,
            max_upload_bytes_per_client: self.max_upload_mib_per_client << 20,
            default_execution_duration_s: self.default_execution_duration_s,
            max_execution_duration_s: self.max_execution_duration_s,
            default_lifetime_s: self.default_lifetime_s,
            max_lifetime_s: self.max_lifetime_s,
            anonymous_lifetime_s: self.anonymous_lifetime_s,
            sweep_interval_s: self.sweep_interval_s,
            max_wait_s: self.max_wait_s,
        }
    }
}

/// The HTTP services (`meridian serve`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub addr: String,
    /// The URL clients reach the service at, if not the address they connect to (behind a
    /// proxy); VOSI documents advertise it.
    pub public_url: Option<String>,
    /// Rows returned when a query gives no MAXREC.
    pub default_maxrec: u64,
    /// The most rows a query may ask for.
    pub max_maxrec: u64,
    /// Time limit of a synchronous query, seconds.
    pub sync_timeout_s: u64,
    /// Largest uploaded table, MiB.
    pub upload_max_mib: u64,
    /// Most rows of an uploaded table.
    pub upload_max_rows: u64,
    /// Whether UPLOAD (and Data Lab's and VOSpace's fetches) may name http(s) URLs; on by
    /// default, as TAP 1.1 expects of a service that takes uploads, behind the guard below.
    pub allow_url_uploads: bool,
    /// Whether URL uploads may read from loopback and private networks.
    pub url_uploads_allow_private: bool,
    /// The most pixels one SODA request may cut out (all its HDUs together).
    pub cutout_max_pixels: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let d = meridian_server::Limits::default();
        Self {
            addr: "127.0.0.1:8070".into(),
            public_url: None,
            default_maxrec: d.default_maxrec,
            max_maxrec: d.max_maxrec,
            sync_timeout_s: d.sync_timeout_s,
            upload_max_mib: d.upload_max_bytes >> 20,
            upload_max_rows: d.upload_max_rows,
            allow_url_uploads: true,
            url_uploads_allow_private: d.url_uploads_allow_private,
            cutout_max_pixels: 100_000_000,
        }
    }
}

/// Ingest defaults (each can be overridden on the command line).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Maximum rows per partition.
    pub partition_rows: u64,
    /// Lowest partition order.
    pub min_order: u8,
    /// Highest partition order.
    pub max_order: u8,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// Rows per Parquet data page.
    pub page_rows: usize,
    /// Margin cache width, arcseconds (0 for none).
    pub margin_arcsec: f64,
    /// Memory budget of an ingest, MiB.
    pub memory_budget_mib: u64,
    /// Worker threads (0: all cores).
    pub threads: usize,
}

/// Limits every query runs under.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Memory pool of one query's execution, MiB; beyond it operators spill or the query
    /// fails with a resources error.
    pub memory_limit_mib: u64,
    /// Parallel partitions per query (0: the number of cores).
    pub target_partitions: usize,
    /// How cross-matches run: "auto" (zone by zone on a cluster or when the indexed side
    /// would take more than a quarter of the memory budget), "always" (zone by zone) or
    /// "never" (one index of the smaller side in memory).
    pub xmatch_zones: String,
}

impl Default for QueryConfig {
    fn default() -> Self {
        let d = meridian_engine::EngineConfig::default();
        Self {
            memory_limit_mib: (d.memory_limit_bytes >> 20) as u64,
            target_partitions: d.target_partitions,
            xmatch_zones: "auto".into(),
        }
    }
}

/// Logging settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `meridian_catalog=debug`.
    pub level: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            ingest: IngestConfig::default(),
            query: QueryConfig::default(),
            log: LogConfig::default(),
            server: ServerConfig::default(),
            jobs: JobsConfig::default(),
            auth: AuthConfig::default(),
            mydb: MyDbConfig::default(),
            storage: StorageConfig::default(),
            spectra: SpectraConfig::default(),
            cluster: ClusterConfig::default(),
            alerts: AlertsConfig::default(),
            quotas: QuotasConfig::default(),
            notebooks: NotebooksConfig::default(),
            xmatch: XMatchConfig::default(),
        }
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        let d = meridian_catalog::IngestOptions::default();
        Self {
            partition_rows: d.partition_rows,
            min_order: d.min_order,
            max_order: d.max_order,
            row_group_rows: d.row_group_rows,
            page_rows: d.page_rows,
            margin_arcsec: d.margin_arcsec,
            memory_budget_mib: d.memory_budget_bytes >> 20,
            threads: d.threads,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: "text".into(),
            level: "info".into(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if given), then the environment `env`. Returns the
    /// configuration and the `MERIDIAN_*` variables that name no configuration section or
    /// key (ignored, for the caller to warn about); an unknown key inside a known section
    /// is an error, as it is most likely a typo.
    pub fn load(
        file: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> anyhow::Result<(Self, Vec<String>)> {
        const TOP: [&str; 15] = [
            "data_dir",
            "ingest",
            "query",
            "log",
            "server",
            "jobs",
            "auth",
            "mydb",
            "storage",
            "spectra",
            "cluster",
            "alerts",
            "quotas",
            "notebooks",
            "xmatch",
        ];
        let mut ignored = Vec::new();
        let mut table = match file {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading config {}", f.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("parsing config {}", f.display()))?
            }
            None => toml::Table::new(),
        };
        for (key, value) in env {
            let Some(rest) = key.strip_prefix("MERIDIAN_") else {
                continue;
            };
            // The command line's own variables (configuration file; service and token of the
            // client commands).
            if matches!(rest, "CONFIG" | "SERVICE" | "TOKEN") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if !TOP.contains(&path[0].as_str()) {
                ignored.push(key);
                continue;
            }
            let parsed = format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value.clone()));
            let mut t = &mut table;
            for p in &path[..path.len() - 1] {
                t = t
                    .entry(p.clone())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .with_context(|| format!("{key}: '{p}' is not a section"))?;
            }
            t.insert(path[path.len() - 1].clone(), parsed);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .context("invalid configuration (file or MERIDIAN_* environment)")?;
        config.validate()?;
        Ok((config, ignored))
    }

    fn validate(&self) -> anyhow::Result<()> {
        let i = &self.ingest;
        if i.max_order > 19 || i.min_order > i.max_order {
            bail!("ingest.min_order <= ingest.max_order <= 19 is required");
        }
        if i.partition_rows == 0 || i.row_group_rows == 0 || i.page_rows == 0 {
            bail!(
                "ingest.partition_rows, ingest.row_group_rows and ingest.page_rows must be positive"
            );
        }
        if !(0.0..=3600.0).contains(&i.margin_arcsec) {
            bail!("ingest.margin_arcsec must be in [0, 3600]");
        }
        if self.query.memory_limit_mib < 16 {
            bail!("query.memory_limit_mib must be at least 16");
        }
        if let Err(e) = self
            .query
            .xmatch_zones
            .parse::<meridian_engine::XMatchZones>()
        {
            bail!("query.xmatch_zones: {e}");
        }
        if let Some(url) = &self.cluster.scheduler {
            meridian_cluster::scheduler_address(url).context("cluster.scheduler")?;
        }
        if self.cluster.task_max_failures == 0 {
            bail!("cluster.task_max_failures must be positive");
        }
        let poll = meridian_cluster::EXECUTOR_POLL_SECONDS;
        if self.cluster.executor_timeout_s < 2 * poll {
            bail!(
                "cluster.executor_timeout_s is {} s: it must be at least {} s, since a busy \
                 executor's heartbeat comes every {poll} s",
                self.cluster.executor_timeout_s,
                2 * poll
            );
        }
        let j = &self.jobs;
        if j.max_running == 0
            || j.max_running_per_client == 0
            || j.max_active_per_client == 0
            || j.max_jobs_per_client == 0
        {
            bail!(
                "jobs.max_running, max_running_per_client, max_active_per_client and \
                 max_jobs_per_client must be positive"
            );
        }
        if j.anonymous_lifetime_s == 0 {
            bail!("jobs.anonymous_lifetime_s must be positive");
        }
        if self.auth.token_lifetime_days == 0 {
            bail!("auth.token_lifetime_days must be positive");
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!("log.format must be 'text' or 'json'");
        }
        let x = &self.xmatch;
        x.settings()?.validate()?;
        if x.background_threads == 0 {
            bail!("xmatch.background_threads must be positive");
        }
        let n = &self.notebooks;
        if n.enabled {
            if !(n.url.starts_with("http://") || n.url.starts_with("https://")) {
                bail!("notebooks.url must be http://host:port (it is '{}')", n.url);
            }
            if n.start_timeout_s == 0 {
                bail!("notebooks.start_timeout_s must be positive");
            }
        }
        Ok(())
    }

    /// The notebook hub's directory (its database, secrets and configuration).
    pub fn notebooks_dir(&self) -> PathBuf {
        self.data_dir.join("notebooks")
    }

    /// The directory of asynchronous jobs.
    pub fn jobs_dir(&self) -> PathBuf {
        self.jobs
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("jobs"))
    }

    /// The directory of users' tables.
    pub fn mydb_dir(&self) -> PathBuf {
        self.mydb
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("mydb"))
    }

    /// The directory of users' file bytes.
    pub fn storage_dir(&self) -> PathBuf {
        self.storage
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("storage"))
    }

    /// The database of users' file trees.
    pub fn storage_db(&self) -> PathBuf {
        self.storage
            .db
            .clone()
            .unwrap_or_else(|| self.data_dir.join("storage.sqlite"))
    }

    /// The account database.
    pub fn accounts_db(&self) -> PathBuf {
        self.auth
            .db
            .clone()
            .unwrap_or_else(|| self.data_dir.join("accounts.sqlite"))
    }

    /// The catalog store directory.
    pub fn catalog_dir(&self) -> PathBuf {
        self.data_dir.join("catalogs")
    }

    /// The alert filters' database.
    pub fn alert_filters_path(&self) -> PathBuf {
        self.data_dir.join("alerts").join("filters.sqlite")
    }

    /// The spectra datasets' directory.
    pub fn spectra_dir(&self) -> PathBuf {
        self.data_dir.join("spectra")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let example = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
            .join("../../meridian.example.toml");
        let (c, _) = Config::load(Some(&example), std::iter::empty()).unwrap();
        assert_eq!(c.ingest, IngestConfig::default());
        assert_eq!(c.query, QueryConfig::default());
        assert_eq!(c.log, LogConfig::default());
        assert_eq!(c.server, ServerConfig::default());
        assert_eq!(c.jobs, JobsConfig::default());
        assert_eq!(c.auth, AuthConfig::default());
        assert_eq!(c.mydb, MyDbConfig::default());
        assert_eq!(c.spectra, SpectraConfig::default());
        assert_eq!(c.notebooks, NotebooksConfig::default());
        assert_eq!(c.xmatch, XMatchConfig::default());
    }

    #[test]
    fn environment_overrides_file() {
        let env = [
            ("MERIDIAN_DATA_DIR".to_string(), "/tmp/x".to_string()),
            (
                "MERIDIAN_INGEST__PARTITION_ROWS".to_string(),
                "5000".to_string(),
            ),
            ("OTHER".to_string(), "1".to_string()),
            ("MERIDIAN_SOMETHING_ELSE".to_string(), "x".to_string()),
        ];
        let (c, ignored) = Config::load(None, env.into_iter()).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.ingest.partition_rows, 5000);
        assert_eq!(ignored, vec!["MERIDIAN_SOMETHING_ELSE".to_string()]);
    }

    #[test]
    fn bad_values_are_refused() {
        let env = [("MERIDIAN_INGEST__MAX_ORDER".to_string(), "25".to_string())];
        assert!(Config::load(None, env.into_iter()).is_err());
        let env = [("MERIDIAN_INGEST__NO_SUCH".to_string(), "1".to_string())];
        let e = Config::load(None, env.into_iter()).unwrap_err();
        assert!(format!("{e:#}").contains("no_such"), "{e:#}");
    }
}
