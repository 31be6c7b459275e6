//! MyDB: each user's own tables, kept as VO-Parquet files under `<root>/<user>/<table>.parquet`
//! (units, UCDs and descriptions travel in the file). Names follow Data Lab's rule,
//! `[a-z_][a-z0-9_]*`; a table appears only once its file is complete (written under a
//! temporary name and renamed), and the per-user quota is checked before a table is kept.
//!
//! This module knows files and names only; the server writes query results into the paths
//! it hands out and the engine reads them.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A table as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// Table name.
    pub name: String,
    /// Size of its file, bytes.
    pub bytes: u64,
}

/// The MyDB store.
#[derive(Debug)]
pub struct MyDb {
    root: PathBuf,
    quota_bytes: u64,
    /// Held from the quota check to the rename, so that tables kept at the same moment
    /// cannot together pass the quota that each alone passes.
    commits: std::sync::Mutex<()>,
}

/// Checks a MyDB table name (Data Lab's rule): a lower-case letter or `_`, then lower-case
/// letters, digits or `_`, at most 63 characters.
pub fn check_table_name(name: &str) -> Result<()> {
    let ok = name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "MyDB table name '{name}' is not allowed: use a lower-case letter or '_', then \
             lower-case letters, digits or '_' (at most 63)"
        )))
    }
}

/// Bytes of the files under `dir` (0 when it is missing).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

/// `mydb://name` or `name` as a table name.
pub fn strip_scheme(name: &str) -> &str {
    name.trim().strip_prefix("mydb://").unwrap_or(name.trim())
}

impl MyDb {
    /// The directory of `user`'s spatial indexes: a HATS catalog store whose catalog
    /// `<table>` is the table partitioned by HEALPix (built by the server when a table has
    /// positions; queries use it while it is newer than the table's file).
    pub fn index_dir(&self, user: &str) -> Result<PathBuf> {
        Ok(self.dir(user)?.join(".hats"))
    }

    /// Whether `space` has a directory of tables.
    pub fn has_space(&self, space: &str) -> bool {
        crate::accounts::check_user_name(space).is_ok() && self.root.join(space).is_dir()
    }

    /// Removes every table of `space` (a dissolved group's).
    pub fn remove_space(&self, space: &str) -> Result<()> {
        crate::accounts::check_user_name(space)?;
        let dir = self.root.join(space);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("removing {}", dir.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// The store under `root`, each user allowed `quota_bytes`.
    pub fn new(root: impl Into<PathBuf>, quota_bytes: u64) -> Self {
        Self {
            root: root.into(),
            quota_bytes,
            commits: std::sync::Mutex::new(()),
        }
    }

    fn dir(&self, user: &str) -> Result<PathBuf> {
        crate::accounts::check_user_name(user)?;
        Ok(self.root.join(user))
    }

    /// The file of `user`'s table `name` (which may not exist yet).
    pub fn path(&self, user: &str, name: &str) -> Result<PathBuf> {
        check_table_name(name)?;
        Ok(self.dir(user)?.join(format!("{name}.parquet")))
    }

    /// The file of `user`'s table `name`, which must exist (404 in Data Lab's words
    /// otherwise).
    pub fn existing(&self, user: &str, name: &str) -> Result<PathBuf> {
        let path = self.path(user, name)?;
        if !path.is_file() {
            return Err(Error::NotFound(format!("relation \"{name}\" not known")));
        }
        Ok(path)
    }

    /// Whether `user` has table `name`.
    pub fn exists(&self, user: &str, name: &str) -> Result<bool> {
        Ok(self.path(user, name)?.is_file())
    }

    /// `user`'s tables, by name.
    pub fn list(&self, user: &str) -> Result<Vec<TableInfo>> {
        let dir = self.dir(user)?;
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
            let file = entry.file_name();
            let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".parquet")) else {
                continue; // temporary files of tables being written
            };
            if check_table_name(name).is_err() {
                continue;
            }
            let bytes = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push(TableInfo {
                name: name.to_string(),
                bytes,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Bytes `user`'s tables and their spatial indexes take.
    pub fn usage_bytes(&self, user: &str) -> Result<u64> {
        let tables: u64 = self.list(user)?.iter().map(|t| t.bytes).sum();
        // Spatial indexes take room too (followed through the store's version links).
        Ok(tables + tree_bytes(&self.index_dir(user)?))
    }

    /// A temporary path in `user`'s directory to write a new table's file into, before
    /// [`MyDb::commit`] gives it its name.
    pub fn staging_path(&self, user: &str, name: &str) -> Result<PathBuf> {
        check_table_name(name)?;
        let dir = self.dir(user)?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(dir.join(format!(
            ".{name}.{}.{}.tmp",
            std::process::id(),
            crate::jobs::now_ms()
        )))
    }

    /// Makes the staged file `staged` table `name`: refused (and the file removed) when the
    /// table exists and `replace` is false, or when it would take `user` over the quota.
    pub fn commit(&self, user: &str, name: &str, staged: &Path, replace: bool) -> Result<()> {
        let target = self.path(user, name)?;
        let _guard = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| {
            if target.exists() && !replace {
                return Err(Error::Conflict(format!(
                    "MyDB table '{name}' exists; drop it first or ask to replace it"
                )));
            }
            let size = std::fs::metadata(staged)
                .map_err(|e| Error::io(format!("reading {}", staged.display()), e))?
                .len();
            let old = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
            let used = self.usage_bytes(user)?.saturating_sub(old);
            if used + size > self.quota_bytes {
                return Err(Error::Forbidden(format!(
                    "MyDB quota exceeded: table '{name}' takes {size} bytes and {used} of the \
                     {} allowed are in use; drop tables to make room",
                    self.quota_bytes
                )));
            }
            std::fs::rename(staged, &target)
                .map_err(|e| Error::io(format!("keeping table '{name}'"), e))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(staged);
        }
        result
    }

    /// Where `user`'s staged upload `file` lives (Data Lab's `POST /storage/xfer` puts files
    /// there for a later import): a plain file name of letters, digits, `.`, `_` and `-`,
    /// not starting with a dot, so that it can never leave the user's directory.
    pub fn upload_path(&self, user: &str, file: &str) -> Result<PathBuf> {
        let ok = !file.is_empty()
            && file.len() <= 255
            && !file.starts_with('.')
            && file
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(Error::Invalid(format!(
                "file name '{file}' is not allowed: use letters, digits, '.', '_' and '-', \
                 not starting with '.'"
            )));
        }
        let dir = self.dir(user)?.join("uploads");
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(dir.join(file))
    }

    /// Bytes `user`'s staged uploads take.
    pub fn uploads_bytes(&self, user: &str) -> Result<u64> {
        let dir = self.dir(user)?.join("uploads");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
        };
        Ok(entries
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum())
    }

    /// Refuses (403) `more` bytes that would take `user`'s tables and staged uploads
    /// together past the quota.
    pub fn check_room(&self, user: &str, more: u64) -> Result<()> {
        let used = self.usage_bytes(user)? + self.uploads_bytes(user)?;
        if used + more > self.quota_bytes {
            return Err(Error::Forbidden(format!(
                "MyDB quota exceeded: {used} of the {} bytes allowed are in use (tables and \
                 staged uploads); drop tables to make room",
                self.quota_bytes
            )));
        }
        Ok(())
    }

    /// Drops `user`'s table `name`.
    pub fn drop_table(&self, user: &str, name: &str) -> Result<()> {
        let path = self.path(user, name)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NotFound(format!("relation \"{name}\" not known")))
            }
            Err(e) => Err(Error::io(format!("dropping '{name}'"), e)),
        }
    }

    /// Renames `user`'s table `from` to `to` (which must not exist).
    pub fn rename(&self, user: &str, from: &str, to: &str) -> Result<()> {
        let (a, b) = (self.existing(user, from)?, self.path(user, to)?);
        if b.exists() {
            return Err(Error::Conflict(format!("MyDB table '{to}' exists")));
        }
        std::fs::rename(&a, &b).map_err(|e| Error::io(format!("renaming '{from}'"), e))
    }

    /// Copies `user`'s table `from` to a new table `to`, within the quota.
    pub fn copy(&self, user: &str, from: &str, to: &str) -> Result<()> {
        let a = self.existing(user, from)?;
        let staged = self.staging_path(user, to)?;
        std::fs::copy(&a, &staged).map_err(|e| Error::io(format!("copying '{from}'"), e))?;
        self.commit(user, to, &staged, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(db: &MyDb, user: &str, name: &str, bytes: usize) -> PathBuf {
        let p = db.staging_path(user, name).unwrap();
        std::fs::write(&p, vec![0u8; bytes]).unwrap();
        p
    }

    #[test]
    fn tables_appear_when_committed_within_the_quota_and_names_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let db = MyDb::new(tmp.path(), 1000);
        let s = stage(&db, "alice", "t1", 600);
        // Staged files are not tables.
        assert!(db.list("alice").unwrap().is_empty());
        db.commit("alice", "t1", &s, false).unwrap();
        assert_eq!(db.list("alice").unwrap()[0].name, "t1");
        // A spatial index counts against the quota (its version directory, not its link).
        let version = db.index_dir("alice").unwrap().join(".versions/t1.1");
        std::fs::create_dir_all(&version).unwrap();
        std::fs::write(version.join("part.parquet"), vec![0u8; 50]).unwrap();
        std::os::unix::fs::symlink(&version, db.index_dir("alice").unwrap().join("t1")).unwrap();
        assert_eq!(db.usage_bytes("alice").unwrap(), 650);
        // Over the quota: refused, nothing left behind.
        let s = stage(&db, "alice", "t2", 600);
        assert!(matches!(
            db.commit("alice", "t2", &s, false),
            Err(Error::Forbidden(_))
        ));
        assert!(!s.exists());
        // Replacing counts the old file out.
        let s = stage(&db, "alice", "t1", 900);
        assert!(matches!(
            db.commit("alice", "t1", &s, false),
            Err(Error::Conflict(_))
        ));
        let s = stage(&db, "alice", "t1", 900);
        db.commit("alice", "t1", &s, true).unwrap();
        // (The index stays until the server rebuilds it.)
        assert_eq!(db.usage_bytes("alice").unwrap(), 950);
        // Another user's space is separate.
        assert!(db.list("bob").unwrap().is_empty());
        for bad in ["T1", "1t", "a-b", "../x", "a/b", "a.b", "", "mydb://x"] {
            assert!(
                matches!(db.path("alice", bad), Err(Error::Invalid(_))),
                "{bad}"
            );
        }
        assert!(db.path("../bob", "t").is_err());
        for bad in ["", "../x", "a/b", ".hidden", "a%2fb", "a b"] {
            assert!(
                matches!(db.upload_path("alice", bad), Err(Error::Invalid(_))),
                "{bad}"
            );
        }
        let up = db.upload_path("alice", "tmpx1_2.csv").unwrap();
        assert!(up.starts_with(tmp.path().join("alice")));
        // Staged uploads are not tables.
        std::fs::write(&up, b"a,b\n").unwrap();
        assert_eq!(strip_scheme("mydb://t1"), "t1");
        db.rename("alice", "t1", "t3").unwrap();
        assert!(matches!(
            db.drop_table("alice", "t1"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            db.copy("alice", "t3", "t4"),
            Err(Error::Forbidden(_))
        ));
        db.drop_table("alice", "t3").unwrap();
        assert!(db.list("alice").unwrap().is_empty());
    }

    #[test]
    fn concurrent_commits_never_exceed_the_quota() {
        let tmp = tempfile::tempdir().unwrap();
        let db = std::sync::Arc::new(MyDb::new(tmp.path(), 10_000));
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let db = db.clone();
                std::thread::spawn(move || {
                    let name = format!("t{i}");
                    let s = stage(&db, "alice", &name, 3_000);
                    db.commit("alice", &name, &s, false).is_ok()
                })
            })
            .collect();
        let kept = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|kept| *kept)
            .count();
        assert_eq!(kept, 3);
        assert_eq!(db.usage_bytes("alice").unwrap(), 9_000);
        // The refused ones left no files behind.
        let files = std::fs::read_dir(tmp.path().join("alice")).unwrap().count();
        assert_eq!(files, 3);
    }
}
