//! A directory of catalogs with atomic publication.
//!
//! Each catalog entry is a symlink: to `.versions/<name>.<stamp>` for catalogs Meridian wrote,
//! to an external HATS directory served in place, or, for a catalog in an object store, a
//! link whose target is the store's URL (`s3://bucket/prefix`: never a file, only read
//! back). Publishing renames a finished staging
//! directory into `.versions/` and then atomically replaces the symlink (`rename(2)` over the
//! old link), so readers see either the old catalog or the new one, never a half-written one;
//! a killed ingest leaves only a staging directory, removed by the next ingest.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{Catalog, Error, Location, Result, objects};

const VERSIONS: &str = ".versions";
const STAGING: &str = ".staging";
const LOCKS: &str = ".locks";

/// How long a superseded version stays after the version replacing it is published, for
/// the queries that opened it (appends publish versions that share files; a query reads
/// the version it started on to its end).
pub const SUPERSEDED_KEPT: Duration = Duration::from_secs(3600);

/// A store of catalogs under one directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// A staging directory for one ingest; removed on drop unless published.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
    name: String,
    published: bool,
}

impl Staging {
    /// The staging directory (a HATS collection is built here).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The catalog name being staged.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.published {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Checks a catalog name: a letter or underscore, then letters, digits, underscores (so that
/// it is a regular ADQL identifier), at most 64 characters.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid catalog name '{name}': use a letter or '_' followed by letters, digits or \
             '_' (at most 64 characters)"
        )))
    }
}

fn nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

/// Whether process `pid` is running (the writer a temporary file or directory names).
pub fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

impl Store {
    /// Opens (creating if needed) a store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        for d in [root.clone(), root.join(VERSIONS), root.join(STAGING)] {
            std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
        }
        Ok(Self { root })
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Names of the catalogs, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))? {
            let e = e.map_err(|e| Error::io(&self.root, e))?;
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with('.')
                && check_name(&name).is_ok()
                && (e.path().is_dir() || self.remote_url(&name).is_some())
            {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The object-store URL of catalog `name`, when it is in an object store.
    fn remote_url(&self, name: &str) -> Option<String> {
        let target = std::fs::read_link(self.root.join(name)).ok()?;
        let target = target.to_str()?;
        objects::is_url(target).then(|| target.to_string())
    }

    /// Where catalog `name` is: its directory (through its symlink) or its object-store
    /// prefix.
    pub fn location(&self, name: &str) -> Result<Location> {
        check_name(name)?;
        if let Some(url) = self.remote_url(name) {
            return Location::parse(&url);
        }
        let p = self.root.join(name);
        if p.is_dir() {
            return Ok(Location::Local(p));
        }
        let names = self.list()?;
        let hint = names
            .iter()
            .filter(|n| n.eq_ignore_ascii_case(name) || strsim::levenshtein(n, name) <= 2)
            .map(|n| format!("; did you mean '{n}'?"))
            .next()
            .unwrap_or_default();
        Err(Error::NotFound {
            name: name.into(),
            store: self.root.clone(),
            hint,
        })
    }

    /// Opens a catalog by name.
    pub fn catalog(&self, name: &str) -> Result<Catalog> {
        Catalog::open_at(&self.location(name)?)
    }

    /// Starts staging a new version of catalog `name`, first removing what killed ingests
    /// left behind.
    pub fn begin_staging(&self, name: &str) -> Result<Staging> {
        check_name(name)?;
        self.clean_leftovers();
        let path =
            self.root
                .join(STAGING)
                .join(format!("{name}.{}.{}", std::process::id(), nanos()));
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Staging {
            path,
            name: name.to_string(),
            published: false,
        })
    }

    /// Atomically makes a staged catalog the current version of its name; the version it
    /// replaces is removed at once.
    pub fn publish(&self, staging: Staging) -> Result<PathBuf> {
        self.publish_version(staging, true)
    }

    /// [`Store::publish`] for a version that shares files with the one it replaces (an
    /// append): the old version stays readable by the queries that opened it and is
    /// removed once it has been superseded for [`SUPERSEDED_KEPT`].
    pub(crate) fn publish_keeping_old(&self, staging: Staging) -> Result<PathBuf> {
        self.publish_version(staging, false)
    }

    fn publish_version(&self, mut staging: Staging, remove_old: bool) -> Result<PathBuf> {
        let version = self
            .root
            .join(VERSIONS)
            .join(format!("{}.{}", staging.name, nanos()));
        std::fs::rename(&staging.path, &version).map_err(|e| Error::io(&version, e))?;
        staging.published = true;
        let target = PathBuf::from(VERSIONS).join(version.file_name().expect("version has a name"));
        let old = self.swap_link(&staging.name, &target)?;
        if remove_old {
            self.remove_old_version(old);
        }
        Ok(self.root.join(&staging.name))
    }

    /// The version directory catalog `name` links to, when Meridian wrote it (none for a
    /// catalog served in place, or absent).
    pub fn current_version(&self, name: &str) -> Result<Option<PathBuf>> {
        check_name(name)?;
        let link = self.root.join(name);
        Ok(std::fs::read_link(&link)
            .ok()
            .filter(|t| t.starts_with(VERSIONS))
            .map(|t| self.root.join(t)))
    }

    /// What identifies the current content of catalog `name`, for tables derived from it:
    /// the version directory for a catalog Meridian wrote (every ingest and append makes a
    /// new one); for one served in place, its path and the modification time of its
    /// properties file (rewritten whenever the catalog is); for one in an object store, its
    /// URL.
    pub fn version_id(&self, name: &str) -> Result<String> {
        if let Some(v) = self.current_version(name)? {
            let v = v.file_name().unwrap_or_default().to_string_lossy();
            return Ok(v.to_string());
        }
        let location = self.location(name)?;
        let Some(dir) = location.as_local() else {
            return Ok(location.to_string());
        };
        let dir = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
        let changed = ["collection.properties", "hats.properties", "properties"]
            .iter()
            .find_map(|f| std::fs::metadata(dir.join(f)).ok())
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        Ok(format!("{}@{changed}", dir.display()))
    }

    /// Takes the writer's lock of catalog `name` (one appender at a time, across
    /// processes), released when the returned file is dropped.
    pub(crate) fn lock(&self, name: &str) -> Result<std::fs::File> {
        use std::os::fd::AsRawFd;
        check_name(name)?;
        let dir = self.root.join(LOCKS);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(format!("{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // SAFETY: flock on a descriptor this function owns; the lock goes with the file.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(&path, std::io::Error::last_os_error()));
        }
        Ok(file)
    }

    /// Serves an existing HATS catalog or collection under `name`, in place (no copy).
    pub fn register_external(&self, name: &str, path: &Path) -> Result<Catalog> {
        check_name(name)?;
        let abs = path.canonicalize().map_err(|e| Error::io(path, e))?;
        let catalog = Catalog::open(&abs)?;
        let old = self.swap_link(name, &abs)?;
        self.remove_old_version(old);
        Ok(catalog)
    }

    /// Serves the HATS catalog or collection at an object-store URL (`s3://bucket/prefix`)
    /// under `name`, in place: every process that reads this store, and every executor of a
    /// cluster, reads its partitions from there.
    pub fn register_remote(&self, name: &str, url: &str) -> Result<Catalog> {
        check_name(name)?;
        let location = Location::parse(url)?;
        if location.as_local().is_some() {
            return Err(Error::Invalid(format!(
                "'{url}' is not an object-store URL (s3://bucket/prefix)"
            )));
        }
        let url = location.to_string();
        let catalog = Catalog::open_at(&location)?;
        let old = self.swap_link(name, Path::new(&url))?;
        self.remove_old_version(old);
        Ok(catalog)
    }

    /// Removes a catalog entry (and its data if Meridian wrote it).
    pub fn remove(&self, name: &str) -> Result<()> {
        let link = self.root.join(name);
        self.location(name)?;
        let old = std::fs::read_link(&link).ok();
        std::fs::remove_file(&link).map_err(|e| Error::io(&link, e))?;
        self.remove_old_version(old);
        Ok(())
    }

    /// Points `name` at `target`, returning the link's old target.
    fn swap_link(&self, name: &str, target: &Path) -> Result<Option<PathBuf>> {
        let link = self.root.join(name);
        if link.exists() && !link.is_symlink() {
            return Err(Error::Invalid(format!(
                "{} exists and is not managed by Meridian (not a symlink); move it away first",
                link.display()
            )));
        }
        let old = std::fs::read_link(&link).ok();
        let tmp = self
            .root
            .join(format!(".{name}.link.{}.{}", std::process::id(), nanos()));
        std::os::unix::fs::symlink(target, &tmp).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &link).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(&link, e)
        })?;
        if let Ok(dir) = std::fs::File::open(&self.root) {
            let _ = dir.sync_all();
        }
        Ok(old)
    }

    fn remove_old_version(&self, old: Option<PathBuf>) {
        if let Some(old) = old.filter(|o| o.starts_with(VERSIONS)) {
            let p = self.root.join(old);
            if let Err(e) = std::fs::remove_dir_all(&p) {
                tracing::warn!(path = %p.display(), error = %e, "could not remove old catalog version");
            }
        }
    }

    /// Staging directories of processes that are gone (interrupted ingests and appends),
    /// with the catalog each was for.
    pub(crate) fn leftovers(&self) -> Vec<(String, PathBuf)> {
        let staging = self.root.join(STAGING);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&staging).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let mut parts = name.split('.');
            let catalog = parts.next().unwrap_or_default().to_string();
            let pid = parts.next().and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|p| !pid_alive(p)) {
                out.push((catalog, e.path()));
            }
        }
        out
    }

    /// Removes staging directories of dead processes and unreferenced old versions.
    pub(crate) fn clean_leftovers(&self) {
        let staging = self.root.join(STAGING);
        for e in std::fs::read_dir(&staging).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let pid = name.split('.').nth(1).and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|p| !pid_alive(p)) {
                tracing::info!(path = %e.path().display(), "removing staging directory of an interrupted ingest");
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let referenced: Vec<PathBuf> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .collect();
        // An unreferenced version goes once a newer version of its catalog has been
        // current for SUPERSEDED_KEPT (queries that opened it may read it until then), or,
        // with no newer version (its catalog was removed), once it is that old.
        let versions = self.root.join(VERSIONS);
        let mut by_name: std::collections::BTreeMap<String, Vec<(u128, PathBuf)>> =
            Default::default();
        for e in std::fs::read_dir(&versions).into_iter().flatten().flatten() {
            let file_name = e.file_name().to_string_lossy().to_string();
            if let Some((name, stamp)) = file_name.rsplit_once('.')
                && let Ok(stamp) = stamp.parse::<u128>()
            {
                by_name
                    .entry(name.to_string())
                    .or_default()
                    .push((stamp, e.path()));
            }
        }
        let now = nanos();
        let kept = SUPERSEDED_KEPT.as_nanos();
        for (_, mut list) in by_name {
            list.sort();
            for (i, (stamp, path)) in list.iter().enumerate() {
                let rel = PathBuf::from(VERSIONS).join(path.file_name().unwrap_or_default());
                let since = list.get(i + 1).map_or(*stamp, |(next, _)| *next);
                if !referenced.contains(&rel) && now.saturating_sub(since) > kept {
                    let _ = std::fs::remove_dir_all(path);
                }
            }
        }
    }
}
