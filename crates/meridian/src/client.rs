//! The command line as a client of a running Meridian: `login`/`logout`, `mydb ...`,
//! `vos ...`, `group ...` and `query --out mydb://t|vos://f`. They speak the same HTTP
//! calls as Data Lab's Python clients (`/query/...`, `/storage/...`) and Meridian's own
//! (`/api/...`), so what they do can be done from any of them.
//!
//! The service and token come from `--service`/`MERIDIAN_SERVICE` and `MERIDIAN_TOKEN`, or
//! from what `meridian login` saved (`$XDG_CONFIG_HOME/meridian/login.json`, readable by
//! its owner only).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// Where to reach the service, as whom.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// The service's base URL (default: the one `meridian login` saved).
    #[arg(long, env = "MERIDIAN_SERVICE")]
    pub service: Option<String>,
}

/// A logged-in session.
pub struct Session {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
    progress: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    service: String,
    user: String,
    token: String,
}

fn saved_path() -> PathBuf {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    dir.join("meridian").join("login.json")
}

fn saved() -> Option<Saved> {
    let text = std::fs::read_to_string(saved_path()).ok()?;
    serde_json::from_str(&text).ok()
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(std::time::Duration::from_secs(30)))
        .build()
        .into()
}

/// The answer's body, or the service's message as the error.
fn answer(mut r: ureq::http::Response<ureq::Body>) -> anyhow::Result<String> {
    let status = r.status();
    let body = r
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_string()
        .unwrap_or_default();
    if !status.is_success() {
        let message = body
            .split("<INFO name=\"QUERY_STATUS\" value=\"ERROR\">")
            .nth(1)
            .and_then(|s| s.split("</INFO>").next())
            .unwrap_or(&body)
            .trim();
        bail!("the service answered {status}: {message}");
    }
    Ok(body)
}

impl Session {
    /// The session for `remote` (and the saved login, when it is for the same service).
    pub fn open(remote: &Remote, quiet: bool) -> anyhow::Result<Self> {
        let saved = saved();
        let base = remote
            .service
            .clone()
            .or_else(|| saved.as_ref().map(|s| s.service.clone()))
            .context("no service: pass --service URL (or set MERIDIAN_SERVICE), or log in first")?;
        let base = base.trim_end_matches('/').to_string();
        let token = std::env::var("MERIDIAN_TOKEN").ok().or_else(|| {
            saved
                .filter(|s| s.service.trim_end_matches('/') == base)
                .map(|s| s.token)
        });
        Ok(Self {
            base,
            token,
            agent: agent(),
            progress: !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        })
    }

    fn get(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<String> {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.header("X-DL-AuthToken", t);
        }
        for (k, v) in params {
            req = req.query(*k, *v);
        }
        answer(
            req.call()
                .with_context(|| format!("reaching {}", self.base))?,
        )
    }

    fn send(&self, method: &str, path: &str, form: &[(&str, &str)]) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "DELETE" => {
                let mut r = self.agent.delete(&url);
                if let Some(t) = &self.token {
                    r = r.header("X-DL-AuthToken", t);
                }
                return answer(
                    r.call()
                        .with_context(|| format!("reaching {}", self.base))?,
                );
            }
            _ => self.agent.post(&url),
        };
        if let Some(t) = &self.token {
            req = req.header("X-DL-AuthToken", t);
        }
        answer(
            req.send_form(form.iter().copied())
                .with_context(|| format!("reaching {}", self.base))?,
        )
    }

    fn bar(&self, len: Option<u64>, what: &str) -> indicatif::ProgressBar {
        if !self.progress {
            return indicatif::ProgressBar::hidden();
        }
        let bar = match len {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message(what.to_string());
        bar
    }

    /// Uploads `file` as `name` (a `vos://` name), with progress.
    fn put_file(&self, file: &Path, name: &str) -> anyhow::Result<()> {
        let url = self.get("/storage/put", &[("name", name)])?;
        let fh =
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
        let len = fh.metadata()?.len();
        let bar = self.bar(Some(len), &format!("{} → {name}", file.display()));
        let mut reader = bar.wrap_read(fh);
        let r = self
            .agent
            .put(url.trim())
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len.to_string())
            .send(ureq::SendBody::from_reader(&mut reader))
            .context("uploading")?;
        bar.finish_and_clear();
        answer(r)?;
        Ok(())
    }

    /// Downloads `name` into `to` (written under a temporary name, then renamed), with
    /// progress.
    fn get_file(&self, name: &str, to: &Path) -> anyhow::Result<u64> {
        let url = self.get("/storage/get", &[("name", name)])?;
        let r = self.agent.get(url.trim()).call().context("downloading")?;
        if !r.status().is_success() {
            answer(r)?;
            bail!("download failed");
        }
        let len = r
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let dir = to
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("writing in {}", dir.display()))?;
        let bar = self.bar(len, &format!("{name} → {}", to.display()));
        let mut reader = r.into_body().into_reader();
        let n = std::io::copy(&mut reader, &mut bar.wrap_write(tmp.as_file_mut()))
            .context("downloading")?;
        bar.finish_and_clear();
        if let Some(expected) = len.filter(|l| *l != n) {
            bail!("the download of {name} stopped after {n} of {expected} bytes; nothing was kept");
        }
        tmp.persist(to)
            .with_context(|| format!("keeping {}", to.display()))?;
        Ok(n)
    }
}

/// A `vos://` name for a path given on the command line (`vos://` is added when missing).
fn vos(name: &str) -> String {
    if name.contains("://") {
        name.to_string()
    } else {
        format!("vos://{}", name.trim_start_matches('/'))
    }
}

/// `meridian login`: asks for the password (or reads it from standard input), saves the
/// token.
pub fn login(remote: &Remote, user: &str, password: &str) -> anyhow::Result<()> {
    let base = remote
        .service
        .clone()
        .context("pass --service URL (or set MERIDIAN_SERVICE)")?
        .trim_end_matches('/')
        .to_string();
    let r = agent()
        .post(format!("{base}/api/auth/login"))
        .send_form([("username", user), ("password", password)])
        .with_context(|| format!("reaching {base}"))?;
    let body: serde_json::Value = serde_json::from_str(&answer(r)?)?;
    let token = body["token"].as_str().context("no token in the answer")?;
    let path = saved_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_string_pretty(&Saved {
        service: base.clone(),
        user: user.to_string(),
        token: token.to_string(),
    })?;
    let mut tmp = tempfile::NamedTempFile::new_in(path.parent().unwrap_or(Path::new(".")))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    tmp.write_all(text.as_bytes())?;
    tmp.persist(&path)?;
    eprintln!(
        "logged in to {base} as {user} until {}",
        body["expires"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `meridian logout`: revokes the saved token and forgets it.
pub fn logout(remote: &Remote) -> anyhow::Result<()> {
    let s = Session::open(remote, true)?;
    if s.token.is_some() {
        s.send("POST", "/api/auth/logout", &[])?;
    }
    let _ = std::fs::remove_file(saved_path());
    eprintln!("logged out");
    Ok(())
}

/// `query --out mydb://t|vos://f` on the service; returns its message.
pub fn query_out(
    remote: &Remote,
    query: &str,
    sql: bool,
    out: &str,
    format: &str,
) -> anyhow::Result<String> {
    let s = Session::open(remote, true)?;
    let lang = if sql { "sql" } else { "adql" };
    s.get(
        "/query/query",
        &[
            (lang, query),
            ("out", out),
            ("ofmt", format),
            ("drop", "True"),
        ],
    )
}

/// MyDB commands.
#[derive(Debug, clap::Subcommand)]
pub enum MyDbCommand {
    /// Your tables, or one table's columns.
    List {
        /// A table to describe.
        table: Option<String>,
    },
    /// Import a table file (CSV, TSV, FITS, VOTable, Parquet) as a table: a local file, or
    /// one of the service's (`vos://...`, `<collection>://...`).
    Import {
        /// The new table.
        table: String,
        /// The file.
        file: PathBuf,
        /// Append to an existing table with the same columns.
        #[arg(long)]
        append: bool,
    },
    /// Drop a table.
    Drop {
        /// The table.
        table: String,
    },
    /// Rename a table.
    Rename {
        /// The table.
        from: String,
        /// Its new name.
        to: String,
    },
    /// Copy a table.
    Copy {
        /// The table.
        from: String,
        /// The copy.
        to: String,
    },
    /// Empty a table, keeping its columns.
    Truncate {
        /// The table.
        table: String,
    },
}

/// Runs a MyDB command.
pub fn mydb(remote: &Remote, cmd: &MyDbCommand, quiet: bool) -> anyhow::Result<()> {
    let s = Session::open(remote, quiet)?;
    let out = match cmd {
        MyDbCommand::List { table } => {
            s.get("/query/list", &[("table", table.as_deref().unwrap_or(""))])?
        }
        MyDbCommand::Import {
            table,
            file,
            append,
        } => {
            let remote_file = file.to_str().filter(|f| f.contains("://"));
            let name = match remote_file {
                Some(f) => f.to_string(),
                None => {
                    let name = file
                        .file_name()
                        .and_then(|n| n.to_str())
                        .context("the file has no name")?
                        .to_string();
                    upload_staged(&s, file, &name)?;
                    name
                }
            };
            s.get(
                "/query/import",
                &[
                    ("table", table),
                    ("filename", &name),
                    ("append", if *append { "True" } else { "False" }),
                ],
            )?
        }
        MyDbCommand::Drop { table } => s.get("/query/delete", &[("table", table)])?,
        MyDbCommand::Rename { from, to } => {
            s.get("/query/rename", &[("source", from), ("target", to)])?
        }
        MyDbCommand::Copy { from, to } => {
            s.get("/query/copy", &[("source", from), ("target", to)])?
        }
        MyDbCommand::Truncate { table } => s.get("/query/truncate", &[("table", table)])?,
    };
    out!("{}", out.trim_end())?;
    Ok(())
}

/// Stages `file` for an import in 16 MiB chunks (`POST /storage/xfer`), with progress.
fn upload_staged(s: &Session, file: &Path, name: &str) -> anyhow::Result<()> {
    let mut fh =
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let len = fh.metadata()?.len();
    let bar = s.bar(Some(len), &format!("{} → MyDB", file.display()));
    let mut chunk = vec![0u8; 16 << 20];
    let mut first = true;
    loop {
        let n = read_full(&mut fh, &mut chunk)?;
        if n == 0 && !first {
            break;
        }
        let mut req = s
            .agent
            .post(format!("{}/storage/xfer", s.base))
            .header("X-DL-FileName", name)
            .header("X-DL-InitXfer", if first { "True" } else { "False" });
        if let Some(t) = &s.token {
            req = req.header("X-DL-AuthToken", t);
        }
        answer(req.send(&chunk[..n]).context("uploading")?)?;
        bar.inc(n as u64);
        first = false;
        if n < chunk.len() {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(())
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Storage commands.
#[derive(Debug, clap::Subcommand)]
pub enum VosCommand {
    /// List a container (`vos://`, `<user>://public`, `<group>://`, `<collection>://`).
    Ls {
        /// What to list.
        #[arg(default_value = "vos://")]
        name: String,
        /// Long format: permissions, owner, size, date.
        #[arg(short, long)]
        long: bool,
    },
    /// Download a file (to a local path, or standard output with `-`).
    Get {
        /// The file.
        name: String,
        /// Where to write it (default: its name, here).
        to: Option<PathBuf>,
    },
    /// Upload files (into a container when the destination is one).
    Put {
        /// Local files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Destination (default: your home).
        #[arg(long, default_value = "vos://")]
        to: String,
    },
    /// Make a container.
    Mkdir {
        /// The container.
        name: String,
    },
    /// Remove a file.
    Rm {
        /// The file.
        name: String,
    },
    /// Remove an empty container.
    Rmdir {
        /// The container.
        name: String,
    },
    /// Move or rename.
    Mv {
        /// From.
        from: String,
        /// To (into it, when a container).
        to: String,
    },
    /// Copy.
    Cp {
        /// From.
        from: String,
        /// To (into it, when a container).
        to: String,
    },
    /// Make a link.
    Ln {
        /// The link.
        link: String,
        /// What it points at.
        target: String,
    },
    /// Set a node's description.
    Tag {
        /// The node.
        name: String,
        /// The description.
        tag: String,
    },
    /// A node's details as JSON.
    Stat {
        /// The node.
        name: String,
    },
}

/// Runs a storage command.
pub fn vos_command(remote: &Remote, cmd: &VosCommand, quiet: bool) -> anyhow::Result<()> {
    let s = Session::open(remote, quiet)?;
    match cmd {
        VosCommand::Ls { name, long } => {
            let out = s.get(
                "/storage/ls",
                &[
                    ("name", &vos(name)),
                    ("format", if *long { "long" } else { "csv" }),
                ],
            )?;
            if *long {
                print!("{out}");
            } else {
                for n in out.split(',').filter(|n| !n.is_empty()) {
                    out!("{n}")?;
                }
            }
        }
        VosCommand::Get { name, to } => {
            let name = vos(name);
            let base = name.rsplit('/').next().unwrap_or("download").to_string();
            let to = to.clone().unwrap_or_else(|| PathBuf::from(base));
            if to.as_os_str() == "-" {
                let url = s.get("/storage/get", &[("name", &name)])?;
                let r = s.agent.get(url.trim()).call()?;
                if !r.status().is_success() {
                    answer(r)?;
                } else {
                    std::io::copy(&mut r.into_body().into_reader(), &mut std::io::stdout())?;
                }
            } else {
                let n = s.get_file(&name, &to)?;
                if !quiet {
                    eprintln!("{name} → {} ({n} bytes)", to.display());
                }
            }
        }
        VosCommand::Put { files, to } => {
            let to = vos(to);
            let into_dir = files.len() > 1
                || to.ends_with('/')
                || s.get("/storage/isdir", &[("name", &to)])
                    .is_ok_and(|r| r.trim() == "True");
            for f in files {
                let fname = f
                    .file_name()
                    .and_then(|n| n.to_str())
                    .context("a file has no name")?;
                let dest = if into_dir && to.ends_with('/') {
                    format!("{to}{fname}")
                } else if into_dir {
                    format!("{to}/{fname}")
                } else {
                    to.clone()
                };
                s.put_file(f, &dest)?;
                if !quiet {
                    eprintln!("{} → {dest}", f.display());
                }
            }
        }
        VosCommand::Mkdir { name } => drop(s.get("/storage/mkdir", &[("dir", &vos(name))])?),
        VosCommand::Rm { name } => drop(s.get("/storage/rm", &[("file", &vos(name))])?),
        VosCommand::Rmdir { name } => drop(s.get("/storage/rmdir", &[("dir", &vos(name))])?),
        VosCommand::Mv { from, to } => {
            drop(s.get("/storage/mv", &[("from", &vos(from)), ("to", &vos(to))])?)
        }
        VosCommand::Cp { from, to } => {
            drop(s.get("/storage/cp", &[("from", &vos(from)), ("to", &vos(to))])?)
        }
        VosCommand::Ln { link, target } => {
            drop(s.get("/storage/ln", &[("from", &vos(link)), ("to", &vos(target))])?)
        }
        VosCommand::Tag { name, tag } => {
            drop(s.get("/storage/tag", &[("name", &vos(name)), ("tag", tag)])?)
        }
        VosCommand::Stat { name } => out!("{}", s.get("/storage/stat", &[("name", &vos(name))])?)?,
    }
    Ok(())
}

/// Group commands.
#[derive(Debug, clap::Subcommand)]
pub enum GroupCommand {
    /// Your groups and your role in each.
    List,
    /// Create a group you own.
    Create {
        /// Its name.
        name: String,
    },
    /// A group's members.
    Show {
        /// The group.
        name: String,
    },
    /// Add a member or change their role (owner, admin, rw, ro).
    Add {
        /// The group.
        name: String,
        /// The user.
        user: String,
        /// Their role.
        #[arg(long, default_value = "ro")]
        role: String,
    },
    /// Remove a member (yourself to leave).
    Remove {
        /// The group.
        name: String,
        /// The user.
        user: String,
    },
    /// Dissolve a group you own, with its files and tables.
    Dissolve {
        /// The group.
        name: String,
    },
}

/// Runs a group command.
pub fn group(remote: &Remote, cmd: &GroupCommand) -> anyhow::Result<()> {
    let s = Session::open(remote, true)?;
    let out = match cmd {
        GroupCommand::List => s.get("/api/groups", &[])?,
        GroupCommand::Create { name } => s.send("POST", "/api/groups", &[("name", name)])?,
        GroupCommand::Show { name } => s.get(&format!("/api/groups/{name}"), &[])?,
        GroupCommand::Add { name, user, role } => s.send(
            "POST",
            &format!("/api/groups/{name}/members"),
            &[("user", user), ("role", role)],
        )?,
        GroupCommand::Remove { name, user } => {
            s.send("DELETE", &format!("/api/groups/{name}/members/{user}"), &[])?
        }
        GroupCommand::Dissolve { name } => s.send("DELETE", &format!("/api/groups/{name}"), &[])?,
    };
    if !out.trim().is_empty() {
        out!("{}", out.trim_end())?;
    }
    Ok(())
}
