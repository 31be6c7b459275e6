//! The notebook hub: JupyterHub (with its `configurable-http-proxy`) run as a child of
//! `meridian serve`, signing users in through Meridian's OAuth endpoints and spawning a
//! JupyterLab per user with their token in its environment.
//!
//! [`Hub::start`] checks what the hub needs (the `jupyterhub` command, the proxy, Meridian's
//! Python package `meridian_hub`, a free port) and says what is missing; then a supervisor
//! thread writes the hub's configuration into its directory, starts it, forwards its log
//! lines to Meridian's log, and restarts it if it dies (giving up after
//! [`MAX_RESTARTS`] failures within [`RESTART_WINDOW`]). The rest of Meridian never waits
//! on the hub: its state is only reported ([`Hub::status`], the portal's "My notebooks").

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The hub's configuration file, written into its directory at each start: it only
/// hands over to `meridian_hub.config`, which reads the `MERIDIAN_HUB_*` variables.
pub const CONFIG_PY: &str = "\
# Written by `meridian serve` at each start of the notebook hub; edits are lost.
# The settings come from the MERIDIAN_HUB_* environment variables; an administrator's own
# additions go in the file named by [notebooks] extra_config (loaded last).
from meridian_hub.config import configure

configure(c)  # noqa: F821 (JupyterHub's configuration object)
";

/// Restarts allowed within [`RESTART_WINDOW`] before the hub is left stopped.
pub const MAX_RESTARTS: usize = 5;
/// See [`MAX_RESTARTS`].
pub const RESTART_WINDOW: Duration = Duration::from_secs(600);

/// How to run the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// The `jupyterhub` command (a path, or a name on `PATH`).
    pub command: PathBuf,
    /// The `configurable-http-proxy` command.
    pub proxy_command: PathBuf,
    /// Where the hub keeps its database, secrets, configuration and logs.
    pub dir: PathBuf,
    /// The address browsers open the hub at (`http://host:port`); the hub listens there.
    pub public_url: String,
    /// Where browsers reach Meridian (the login page, the authorization endpoint).
    pub meridian_public_url: String,
    /// Where the hub and the notebooks reach Meridian (the token endpoint, the APIs).
    pub meridian_internal_url: String,
    /// The hub's OAuth client id and secret, as registered with Meridian.
    pub client_id: String,
    /// See [`HubConfig::client_id`].
    pub client_secret: String,
    /// A user's server idle this long is stopped, seconds (0: never).
    pub idle_timeout_s: u64,
    /// A server that takes longer to start has failed, seconds.
    pub start_timeout_s: u64,
    /// Memory each user's server may use, MiB (0: no limit).
    pub mem_limit_mib: u64,
    /// CPU time each user's server may use, seconds (0: no limit).
    pub cpu_time_limit_s: u64,
    /// Python environments to offer as kernels (each a `python` executable), besides the
    /// hub's own.
    pub kernels: Vec<PathBuf>,
    /// The spawner class (`meridian_hub.spawner.LocalSpawner` on one machine;
    /// `dockerspawner.DockerSpawner` or `kubespawner.KubeSpawner` on a cluster).
    pub spawner: String,
    /// Example notebooks copied into a user's storage the first time they start a server.
    pub examples: Option<PathBuf>,
    /// An administrator's own JupyterHub configuration, loaded after Meridian's.
    pub extra_config: Option<PathBuf>,
}

/// What the hub is doing.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Checked and being started.
    Starting,
    /// Running.
    Running,
    /// Not running, and not to be restarted; [`Status::problem`] says why.
    Failed,
    /// Stopped with Meridian.
    Stopped,
}

/// The hub's state, and what went wrong.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// What it is doing.
    pub state: State,
    /// Where browsers open it.
    pub url: String,
    /// Why it is not running (what is missing, or its last log lines).
    pub problem: Option<String>,
}

/// The hub, its process and its state.
pub struct Hub {
    config: HubConfig,
    status: Mutex<Status>,
    child: Mutex<Option<Child>>,
    stopping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("url", &self.config.public_url)
            .field("status", &self.status())
            .finish()
    }
}

/// The `host:port` of an `http://host:port[/...]` URL.
fn host_port(url: &str) -> Result<(String, u16)> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| Error::Invalid(format!("hub URL '{url}' is not http(s)://host:port")))?;
    let auth = rest.split('/').next().unwrap_or_default();
    let (host, port) = auth
        .rsplit_once(':')
        .ok_or_else(|| Error::Invalid(format!("hub URL '{url}' names no port")))?;
    let port = port
        .parse()
        .map_err(|_| Error::Invalid(format!("hub URL '{url}': port '{port}' is not a number")))?;
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// Runs `cmd` (with `args`) and returns its first output line, or says what failed.
fn probe(cmd: &Path, args: &[&str], what: &str, env: &[(&str, String)]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Error::Invalid(format!(
                "{what}: '{}' cannot be run ({e}); install it (scripts/notebooks-setup.sh) or \
                 set its path in [notebooks]",
                cmd.display()
            ))
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(Error::Invalid(format!(
            "{what}: '{} {}' failed ({}): {last}",
            cmd.display(),
            args.join(" "),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string())
}

/// The Python interpreter next to the `jupyterhub` command (its environment's).
fn python_of(command: &Path) -> PathBuf {
    let resolved = if command.components().count() > 1 {
        Some(command.to_path_buf())
    } else {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(command))
                .find(|p| p.is_file())
        })
    };
    resolved
        .and_then(|p| p.parent().map(|d| d.join("python")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"))
}

impl Hub {
    /// A hub to run as `config` says (not started).
    pub fn new(config: HubConfig) -> Self {
        let url = config.public_url.clone();
        Self {
            config,
            status: Mutex::new(Status {
                state: State::Starting,
                url,
                problem: None,
            }),
            child: Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Its state.
    pub fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set(&self, state: State, problem: Option<String>) {
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.state = state;
        s.problem = problem;
    }

    /// Checks that everything the hub needs is there: its command, the proxy, Meridian's
    /// Python package beside the hub, each kernel's Python, and a free port.
    pub fn check(&self) -> Result<String> {
        let c = &self.config;
        let version = probe(&c.command, &["--version"], "JupyterHub", &[])?;
        probe(
            &c.proxy_command,
            &["--version"],
            "configurable-http-proxy",
            &[],
        )?;
        let python = python_of(&c.command);
        probe(
            &python,
            &["-c", "import meridian_hub.config, oauthenticator"],
            "the hub's Python packages (meridian-notebooks, oauthenticator)",
            &[],
        )?;
        for k in &c.kernels {
            probe(
                k,
                &["-c", "import ipykernel"],
                "a kernel's Python (ipykernel)",
                &[],
            )?;
        }
        let (host, port) = host_port(&c.public_url)?;
        std::net::TcpListener::bind((host.as_str(), port)).map_err(|e| {
            Error::Invalid(format!(
                "the notebook hub cannot listen on {host}:{port} ({e}): another program holds \
                 the port; set [notebooks] url to a free one"
            ))
        })?;
        // The hub's API and the proxy's API, on the next two ports of 127.0.0.1.
        for (offset, what) in [
            (1, "the notebook hub's API"),
            (2, "the notebook proxy's API"),
        ] {
            let api = port.checked_add(offset).ok_or_else(|| {
                Error::Invalid(format!(
                    "the notebook hub's port {port} leaves no room for {what} port"
                ))
            })?;
            std::net::TcpListener::bind(("127.0.0.1", api)).map_err(|e| {
                Error::Invalid(format!(
                    "{what} port 127.0.0.1:{api} is in use ({e}); set [notebooks] url to \
                     another port (the hub takes it and the next two)"
                ))
            })?;
        }
        Ok(version)
    }

    /// The environment the hub runs with.
    fn environment(&self) -> Result<Vec<(String, String)>> {
        let c = &self.config;
        let (host, port) = host_port(&c.public_url)?;
        let crypt_key = secret_file(&c.dir.join("crypt-key"))?;
        let join = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        };
        let mut env = vec![
            ("MERIDIAN_HUB_DIR", c.dir.display().to_string()),
            ("MERIDIAN_HUB_PUBLIC_URL", c.public_url.clone()),
            ("MERIDIAN_HUB_IP", host),
            ("MERIDIAN_HUB_PORT", port.to_string()),
            ("MERIDIAN_HUB_API_PORT", (port + 1).to_string()),
            ("MERIDIAN_HUB_PROXY_API_PORT", (port + 2).to_string()),
            ("MERIDIAN_HUB_PROXY", c.proxy_command.display().to_string()),
            ("MERIDIAN_PUBLIC_URL", c.meridian_public_url.clone()),
            ("MERIDIAN_INTERNAL_URL", c.meridian_internal_url.clone()),
            ("MERIDIAN_HUB_CLIENT_ID", c.client_id.clone()),
            ("MERIDIAN_HUB_CLIENT_SECRET", c.client_secret.clone()),
            ("MERIDIAN_HUB_IDLE_TIMEOUT", c.idle_timeout_s.to_string()),
            ("MERIDIAN_HUB_START_TIMEOUT", c.start_timeout_s.to_string()),
            ("MERIDIAN_HUB_MEM_LIMIT_MIB", c.mem_limit_mib.to_string()),
            (
                "MERIDIAN_HUB_CPU_TIME_LIMIT",
                c.cpu_time_limit_s.to_string(),
            ),
            ("MERIDIAN_HUB_KERNELS", join(&c.kernels)),
            ("MERIDIAN_HUB_SPAWNER", c.spawner.clone()),
            ("JUPYTERHUB_CRYPT_KEY", crypt_key),
        ];
        if let Some(x) = &c.examples {
            env.push(("MERIDIAN_HUB_EXAMPLES", x.display().to_string()));
        }
        if let Some(x) = &c.extra_config {
            env.push(("MERIDIAN_HUB_EXTRA_CONFIG", x.display().to_string()));
        }
        Ok(env.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    }

    /// Checks, then starts the hub under a supervisor thread. A failed check leaves the
    /// hub [`State::Failed`] with the reason (logged, and shown in the portal); Meridian
    /// goes on without notebooks.
    pub fn start(self: &Arc<Self>) {
        match self.check() {
            Ok(version) => {
                tracing::info!(jupyterhub = %version, url = %self.config.public_url, "notebook hub starting");
            }
            Err(e) => {
                tracing::error!(error = %e, "notebook hub not started");
                self.set(State::Failed, Some(e.to_string()));
                return;
            }
        }
        let hub = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("notebook-hub".into())
            .spawn(move || hub.supervise());
        if let Err(e) = spawned {
            self.set(
                State::Failed,
                Some(format!("cannot start its supervisor: {e}")),
            );
        }
    }

    fn spawn(&self) -> Result<Child> {
        let c = &self.config;
        std::fs::create_dir_all(&c.dir)
            .map_err(|e| Error::io(format!("creating {}", c.dir.display()), e))?;
        let config = c.dir.join("jupyterhub_config.py");
        write_atomically(&config, CONFIG_PY.as_bytes())?;
        let mut cmd = Command::new(&c.command);
        cmd.arg("-f")
            .arg(&config)
            .current_dir(&c.dir)
            .envs(self.environment()?)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Its own process group, so that stopping it stops the proxy and the users'
        // servers it started.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn()
            .map_err(|e| Error::io(format!("starting {}", c.command.display()), e))
    }

    fn supervise(&self) {
        let mut failures: Vec<Instant> = Vec::new();
        loop {
            let mut child = match self.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "notebook hub not started");
                    self.set(State::Failed, Some(e.to_string()));
                    return;
                }
            };
            let tail = Arc::new(Mutex::new(std::collections::VecDeque::<String>::new()));
            let mut readers = Vec::new();
            for pipe in [
                child
                    .stdout
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            ]
            .into_iter()
            .flatten()
            {
                let tail = Arc::clone(&tail);
                readers.push(std::thread::spawn(move || forward(pipe, &tail)));
            }
            let pid = child.id();
            *self.child.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
            self.set(State::Running, None);
            tracing::info!(pid, "notebook hub running");
            // Wait for it to end, without holding the lock `stop` needs.
            let code = loop {
                std::thread::sleep(Duration::from_millis(200));
                let mut guard = self.child.lock().unwrap_or_else(|p| p.into_inner());
                match guard.as_mut().map(Child::try_wait) {
                    Some(Ok(Some(status))) => {
                        guard.take();
                        break Some(status);
                    }
                    Some(Ok(None)) => continue,
                    Some(Err(e)) => {
                        tracing::error!(error = %e, "notebook hub cannot be waited for");
                        break None;
                    }
                    None => break None,
                }
            };
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                self.set(State::Stopped, None);
                return;
            }
            // The hub's last lines, read within a second: what it started in sessions of
            // their own (the proxy, the users' servers) holds its output pipes open after
            // it died. The next hub stops the old proxy (found by its pid file) and takes
            // the users' servers over (their process ids are in its database); the idle
            // culler ends with the hub that started it (`meridian_hub.culler`).
            let drained = Instant::now() + Duration::from_secs(1);
            while readers.iter().any(|r| !r.is_finished()) && Instant::now() < drained {
                std::thread::sleep(Duration::from_millis(50));
            }
            drop(readers);
            let last: Vec<String> = tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            let why = format!(
                "the notebook hub stopped ({}); its last lines: {}",
                code.map_or("status unknown".to_string(), |c| c.to_string()),
                last.join(" | ")
            );
            tracing::error!(problem = %why, "notebook hub stopped");
            let now = Instant::now();
            failures.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
            failures.push(now);
            if failures.len() > MAX_RESTARTS {
                // No hub takes its proxy and users' servers over: they are stopped.
                self.stop_leftovers(Duration::from_secs(10));
                self.set(
                    State::Failed,
                    Some(format!(
                        "{why}; not restarted after {MAX_RESTARTS} restarts within {} minutes",
                        RESTART_WINDOW.as_secs() / 60
                    )),
                );
                return;
            }
            self.set(State::Starting, Some(why));
            std::thread::sleep(Duration::from_secs(2u64.pow(failures.len() as u32)));
        }
    }

    /// Stops the hub and everything it started (its process group): SIGTERM, then SIGKILL
    /// after `grace`.
    pub fn stop(&self, grace: Duration) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let pid = self
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|c| c.id() as i32);
        if let Some(pid) = pid {
            signal_group(pid, libc::SIGTERM);
            let until = Instant::now() + grace;
            while Instant::now() < until {
                if self
                    .child
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                    .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
                {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Whatever of the group is left (users' servers slow to stop).
            signal_group(pid, libc::SIGKILL);
        }
        // The hub stops its proxy and users' servers (sessions of their own) when it
        // shuts down cleanly; not when it was killed, or between a death and its restart.
        self.stop_leftovers(grace);
        tracing::info!("notebook hub stopped");
    }

    /// Stops what a hub started in sessions of their own and that outlives it: the proxy
    /// (its pid file) and the users' servers (their process ids in the hub's database),
    /// each only if it still is one of this hub's (SIGTERM, then SIGKILL after `grace`).
    fn stop_leftovers(&self, grace: Duration) {
        let api_port = host_port(&self.config.public_url).map_or(0, |(_, p)| p.wrapping_add(1));
        let pids = leftovers(&self.config.dir, api_port);
        if pids.is_empty() {
            return;
        }
        for (pid, what) in &pids {
            tracing::warn!(pid, what = %what, "stopping a process of the notebook hub left running");
            signal_process(*pid, libc::SIGTERM);
        }
        let until = Instant::now() + grace;
        while Instant::now() < until && pids.iter().any(|(p, _)| alive(*p)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        for (pid, _) in pids.iter().filter(|(p, _)| alive(*p)) {
            signal_process(*pid, libc::SIGKILL);
        }
    }
}

/// The processes of the hub kept in `dir` (API on `api_port`) that live on: its proxy
/// (`proxy.pid`, a `configurable-http-proxy` with the hub's `MERIDIAN_HUB_DIR`) and the
/// users' servers (the `pid` of each spawner's state in `jupyterhub.sqlite`, a process
/// talking to that hub's API). A pid that now names another process is left alone.
fn leftovers(dir: &Path, api_port: u16) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let hub_dir = format!("MERIDIAN_HUB_DIR={}", dir.display());
    if let Some(pid) = std::fs::read_to_string(dir.join("proxy.pid"))
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        && process_has(pid, "configurable-http-proxy", &hub_dir)
    {
        found.push((pid, "the notebook proxy".to_string()));
    }
    let api = format!("JUPYTERHUB_API_URL=http://127.0.0.1:{api_port}/hub/api");
    let states: Vec<String> = rusqlite::Connection::open_with_flags(
        dir.join("jupyterhub.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .and_then(|db| {
        let mut st = db.prepare("SELECT state FROM spawners WHERE state IS NOT NULL")?;
        st.query_map([], |r| r.get::<_, String>(0))?.collect()
    })
    .unwrap_or_default();
    for state in states {
        let pid = serde_json::from_str::<serde_json::Value>(&state)
            .ok()
            .and_then(|v| v.get("pid").and_then(serde_json::Value::as_i64))
            .and_then(|p| i32::try_from(p).ok());
        if let Some(pid) = pid
            && pid > 0
            && process_has(pid, "", &api)
        {
            found.push((pid, "a user's notebook server".to_string()));
        }
    }
    found
}

/// Whether process `pid` runs with `command` in its command line and `variable`
/// (`NAME=value`) in its environment.
fn process_has(pid: i32, command: &str, variable: &str) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let (Ok(cmdline), Ok(environ)) = (
        std::fs::read(proc.join("cmdline")),
        std::fs::read(proc.join("environ")),
    ) else {
        return false;
    };
    String::from_utf8_lossy(&cmdline).contains(command)
        && environ
            .split(|b| *b == 0)
            .any(|kv| kv == variable.as_bytes())
}

/// Whether process `pid` is alive (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        // The state follows the command name's closing parenthesis.
        s.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// Sends `signal` to process `pid`.
fn signal_process(pid: i32, signal: i32) {
    if pid > 0 {
        // SAFETY: kill only sends a signal; a process that is gone makes it fail with ESRCH.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Writes `bytes` to `path` whole or not at all (a temporary file, then a rename).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("writing {}", path.display()), e)
        })
}

/// Sends `signal` to process group `pgid`.
fn signal_group(pgid: i32, signal: i32) {
    if pgid > 0 {
        // SAFETY: kill only sends a signal; a group that is gone makes it fail with ESRCH.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// Lines the hub writes, into Meridian's log; the last ones are kept for the status.
fn forward(pipe: Box<dyn std::io::Read + Send>, tail: &Mutex<std::collections::VecDeque<String>>) {
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        tracing::info!(target: "meridian::notebooks", "{line}");
        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == 5 {
            t.pop_front();
        }
        t.push_back(line);
    }
}

/// The secret kept in file `path`, made (64 hex digits, readable by its owner only) the
/// first time.
pub fn secret_file(path: &Path) -> Result<String> {
    if let Ok(s) = std::fs::read_to_string(path)
        && s.trim().len() >= 32
    {
        return Ok(s.trim().to_string());
    }
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    write_atomically(path, secret.as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("protecting {}", path.display()), e))?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_urls_give_host_and_port() {
        assert_eq!(
            host_port("http://127.0.0.1:8000").unwrap(),
            ("127.0.0.1".to_string(), 8000)
        );
        assert_eq!(
            host_port("https://[::1]:9443/hub/").unwrap(),
            ("::1".to_string(), 9443)
        );
        assert!(host_port("127.0.0.1:8000").is_err());
        assert!(host_port("http://host").is_err());
    }

    #[test]
    fn secrets_are_made_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hub/secret");
        let a = secret_file(&p).unwrap();
        assert_eq!(a.len(), 64);
        assert_eq!(secret_file(&p).unwrap(), a);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    /// A process running `sleep` under the name `name`, with `env` set.
    fn fake(name: &str, env: &[(&str, &str)]) -> Child {
        Command::new("bash")
            .args(["-c", &format!("exec -a {name} sleep 60")])
            .envs(env.iter().copied())
            .spawn()
            .unwrap()
    }

    #[test]
    fn a_dead_hubs_proxy_and_servers_are_found_and_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let hub_dir = dir.path().join("hub");
        std::fs::create_dir_all(&hub_dir).unwrap();
        let d = hub_dir.display().to_string();
        let api = "http://127.0.0.1:8001/hub/api";
        let mut proxy = fake("configurable-http-proxy", &[("MERIDIAN_HUB_DIR", &d)]);
        let mut server = fake("jupyterhub-singleuser", &[("JUPYTERHUB_API_URL", api)]);
        // Pids recorded by the hub that now name other processes: not to be touched.
        let mut other_hubs = fake(
            "jupyterhub-singleuser",
            &[("JUPYTERHUB_API_URL", "http://127.0.0.1:9001/hub/api")],
        );
        let mut stranger = fake(
            "configurable-http-proxy",
            &[("MERIDIAN_HUB_DIR", "/elsewhere")],
        );
        std::fs::write(hub_dir.join("proxy.pid"), format!("{}\n", proxy.id())).unwrap();
        let db = rusqlite::Connection::open(hub_dir.join("jupyterhub.sqlite")).unwrap();
        db.execute_batch("CREATE TABLE spawners (id INTEGER PRIMARY KEY, state TEXT)")
            .unwrap();
        for state in [
            format!("{{\"pid\": {}}}", server.id()),
            format!("{{\"pid\": {}}}", other_hubs.id()),
            "{}".to_string(),
            "not json".to_string(),
        ] {
            db.execute("INSERT INTO spawners (state) VALUES (?1)", [state])
                .unwrap();
        }
        drop(db);

        let mut found = leftovers(&hub_dir, 8001);
        found.sort();
        let mut want = vec![proxy.id() as i32, server.id() as i32];
        want.sort();
        assert_eq!(found.iter().map(|(p, _)| *p).collect::<Vec<_>>(), want);
        // The stranger's pid file is elsewhere; pointing ours at it changes nothing.
        std::fs::write(hub_dir.join("proxy.pid"), stranger.id().to_string()).unwrap();
        assert_eq!(leftovers(&hub_dir, 8001).len(), 1);
        std::fs::write(hub_dir.join("proxy.pid"), proxy.id().to_string()).unwrap();

        let hub = Hub::new(HubConfig {
            dir: hub_dir.clone(),
            public_url: "http://127.0.0.1:8000".into(),
            ..config(dir.path())
        });
        hub.stop(Duration::from_secs(5));
        for c in [&mut proxy, &mut server] {
            let status = c.wait().unwrap();
            assert_eq!(
                std::os::unix::process::ExitStatusExt::signal(&status),
                Some(libc::SIGTERM)
            );
        }
        for c in [&mut other_hubs, &mut stranger] {
            assert!(c.try_wait().unwrap().is_none(), "a stranger was stopped");
            c.kill().unwrap();
            c.wait().unwrap();
        }
        assert!(leftovers(&hub_dir, 8001).is_empty());
    }

    fn config(dir: &Path) -> HubConfig {
        HubConfig {
            command: dir.join("no-jupyterhub"),
            proxy_command: "configurable-http-proxy".into(),
            dir: dir.join("hub"),
            public_url: "http://127.0.0.1:1".into(),
            meridian_public_url: "http://127.0.0.1:2".into(),
            meridian_internal_url: "http://127.0.0.1:2".into(),
            client_id: "jupyterhub".into(),
            client_secret: "s".into(),
            idle_timeout_s: 0,
            start_timeout_s: 60,
            mem_limit_mib: 0,
            cpu_time_limit_s: 0,
            kernels: vec![],
            spawner: "meridian_hub.spawner.LocalSpawner".into(),
            examples: None,
            extra_config: None,
        }
    }

    #[test]
    fn a_missing_hub_is_named_in_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let hub = Hub::new(config(dir.path()));
        let e = hub.check().unwrap_err().to_string();
        assert!(
            e.contains("JupyterHub") && e.contains("no-jupyterhub"),
            "{e}"
        );
        let hub = Arc::new(hub);
        hub.start();
        assert_eq!(hub.status().state, State::Failed);
        assert!(hub.status().problem.unwrap().contains("cannot be run"));
    }
}
