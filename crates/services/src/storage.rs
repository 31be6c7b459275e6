//! Users' files: a VOSpace tree of nodes (containers, data and links) with properties and
//! permissions, one space per user and per group, plus read-only survey collections.
//!
//! The tree lives in SQLite (`storage.sqlite`); the bytes of data nodes live in an
//! [`ObjectStore`] (a directory under the data directory by default, a bucket by
//! configuration) under random keys. So a node's path never becomes a file path (no
//! traversal can reach outside the store), a move or rename is one transaction however big
//! the tree, and a node appears only when its bytes are complete: an upload streams into a
//! multipart upload that is committed, and only then recorded.
//!
//! Every space has a quota. An upload reserves its declared length before the first byte
//! is taken, and more as bytes arrive beyond it; reservations of concurrent uploads count
//! together, so together they cannot pass the quota that each alone passes.
//!
//! Access: a space's owner (or a group's writing members) read and write it; others read
//! a node when it or a container above it is public-read (every home has a `public`
//! container that is) or group-read for one of their groups, and write when it grants
//! group-write to a group where they write. A node the caller may not read does not exist
//! for them: they get the same answer as for a missing one.
//!
//! Names are reused (a group is dissolved and another takes its name), so spaces and
//! grants are bound to the id of the user or group they were made for, which is never
//! given again: a space made for an earlier holder of a name is not its later holder's
//! (and is replaced, empty, when the later holder's is made), and a grant to an earlier
//! `proj` gives the later `proj` nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};
use rusqlite::{Connection, OptionalExtension, params};

use crate::error::{Error, Result};
use crate::groups::Role;
use crate::jobs::now_ms;

/// The kind of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Holds other nodes.
    Container,
    /// Holds bytes.
    Data,
    /// Points at another node or a URI.
    Link,
}

impl Kind {
    /// `container`, `data` or `link`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Data => "data",
            Kind::Link => "link",
        }
    }

    fn parse(text: &str) -> Self {
        match text {
            "container" => Kind::Container,
            "link" => Kind::Link,
            _ => Kind::Data,
        }
    }
}

/// A node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// `space/dir/name`: the space (a user or group) and the path in it.
    pub path: String,
    /// What it is.
    pub kind: Kind,
    /// Who created it.
    pub owner: String,
    /// Bytes (data nodes).
    pub size: u64,
    /// Last change, ms since the epoch.
    pub mtime_ms: i64,
    /// A link's target URI.
    pub target: Option<String>,
    /// Readable by anyone.
    pub public_read: bool,
    /// Groups whose members read it.
    pub group_read: Vec<Grant>,
    /// Groups whose writing members write it.
    pub group_write: Vec<Grant>,
    /// Other properties, by URI (`ivo://ivoa.net/vospace/core#description`, ...).
    pub properties: BTreeMap<String, String>,
    /// The key of its bytes in the object store.
    object: Option<String>,
}

/// A group a node is shared with: the group's name, and the id of the group that had the
/// name when the grant was made (none for grants made before groups had ids, which go by
/// the name alone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The group's name.
    pub name: String,
    /// The group's id.
    pub id: Option<i64>,
}

impl Grant {
    /// A grant as stored: `<id>:<name>`, or `<name>` for one without an id.
    fn parse(word: &str) -> Self {
        match word.split_once(':') {
            Some((id, name)) if id.parse::<i64>().is_ok() => Grant {
                name: name.to_string(),
                id: id.parse().ok(),
            },
            _ => Grant {
                name: word.to_string(),
                id: None,
            },
        }
    }

    fn stored(&self) -> String {
        match self.id {
            Some(id) => format!("{id}:{}", self.name),
            None => self.name.clone(),
        }
    }
}

fn stored_grants(grants: &[Grant]) -> String {
    grants
        .iter()
        .map(Grant::stored)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The names of `grants`, space-separated (as the permission properties show them).
pub fn grant_names(grants: &[Grant]) -> String {
    grants
        .iter()
        .map(|g| g.name.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

impl Node {
    /// The last segment of the path.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The space the node is in.
    pub fn space(&self) -> &str {
        space_of(&self.path)
    }
}

/// Who is asking, with what they belong to.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// The user, or `None` when anonymous.
    pub user: Option<String>,
    /// Their groups and roles.
    pub groups: Vec<(String, Role)>,
    /// Administrators reach everything.
    pub admin: bool,
    /// The ids of the user and of their groups, by name: spaces and grants bound to
    /// other ids (made for earlier holders of those names) do not reach them.
    pub ids: HashMap<String, i64>,
}

impl Who {
    /// An anonymous caller.
    pub fn anonymous() -> Self {
        Self::default()
    }

    /// Their role in `group`.
    fn role_in(&self, group: &str) -> Option<Role> {
        self.groups
            .iter()
            .find(|(g, _)| g == group)
            .map(|(_, r)| *r)
    }

    /// Their role in the group `grant` was made for.
    fn granted_role(&self, grant: &Grant) -> Option<Role> {
        let role = self.role_in(&grant.name)?;
        match grant.id {
            Some(id) if self.ids.get(&grant.name) != Some(&id) => None,
            _ => Some(role),
        }
    }
}

/// The property of a node's description (what Data Lab's `tag` sets).
pub const DESCRIPTION: &str = "ivo://ivoa.net/vospace/core#description";
/// Properties that are the node's permissions, read and written as fields.
pub const PUBLIC_READ: &str = "ivo://ivoa.net/vospace/core#ispublic";
/// Groups that read the node (space-separated).
pub const GROUP_READ: &str = "ivo://ivoa.net/vospace/core#groupread";
/// Groups that write the node (space-separated).
pub const GROUP_WRITE: &str = "ivo://ivoa.net/vospace/core#groupwrite";

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    CREATE TABLE IF NOT EXISTS nodes (
        path TEXT PRIMARY KEY,
        parent TEXT NOT NULL,
        space TEXT NOT NULL,
        kind TEXT NOT NULL,
        owner TEXT NOT NULL,
        size INTEGER NOT NULL DEFAULT 0,
        mtime_ms INTEGER NOT NULL,
        object TEXT,
        target TEXT,
        public_read INTEGER NOT NULL DEFAULT 0,
        group_read TEXT NOT NULL DEFAULT '',
        group_write TEXT NOT NULL DEFAULT '',
        props TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX IF NOT EXISTS nodes_by_parent ON nodes (parent);
    CREATE INDEX IF NOT EXISTS nodes_by_space ON nodes (space);
    CREATE TABLE IF NOT EXISTS spaces (
        name TEXT PRIMARY KEY,
        principal INTEGER NOT NULL
    );
";

const COLUMNS: &str = "path, kind, owner, size, mtime_ms, object, target, public_read, \
                       group_read, group_write, props";

fn read_node(r: &rusqlite::Row<'_>) -> rusqlite::Result<Node> {
    let words = |s: String| -> Vec<Grant> { s.split_whitespace().map(Grant::parse).collect() };
    let props: String = r.get(10)?;
    Ok(Node {
        path: r.get(0)?,
        kind: Kind::parse(&r.get::<_, String>(1)?),
        owner: r.get(2)?,
        size: r.get::<_, i64>(3)? as u64,
        mtime_ms: r.get(4)?,
        object: r.get(5)?,
        target: r.get(6)?,
        public_read: r.get(7)?,
        group_read: words(r.get(8)?),
        group_write: words(r.get(9)?),
        properties: serde_json::from_str(&props).unwrap_or_default(),
    })
}

/// Checks one segment of a node path: not empty, not `.` or `..`, no `/`, `\` or control
/// characters, at most 255 bytes. Other characters (spaces, accents) are kept as given.
pub fn check_segment(segment: &str) -> Result<()> {
    let why = if segment.is_empty() {
        "an empty name"
    } else if segment == "." || segment == ".." {
        "'.' and '..' are not names"
    } else if segment.contains(['/', '\\']) {
        "'/' and '\\' separate names"
    } else if segment.chars().any(char::is_control) {
        "control characters are not allowed"
    } else if segment.len() > 255 {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::Invalid(format!(
        "node name '{}' is not allowed: {why}",
        segment.escape_default()
    )))
}

/// `space` plus the `/`-separated `rel` as a checked node path (empty segments from
/// repeated or trailing slashes are dropped; `..` is refused, never resolved).
pub fn node_path(space: &str, rel: &str) -> Result<String> {
    check_segment(space)?;
    let mut path = space.to_string();
    for seg in rel.split('/').filter(|s| !s.is_empty()) {
        check_segment(seg)?;
        path.push('/');
        path.push_str(seg);
    }
    Ok(path)
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn not_found(path: &str) -> Error {
    Error::NotFound(format!(
        "no node {path}: a node does not exist with the requested URI"
    ))
}

/// Deletes the rows of `path` and below in `tx`, returning their objects' keys.
fn delete_rows_in(tx: &Connection, path: &str) -> Result<Vec<String>> {
    let below = format!("{}/%", like_escape(path));
    let objects = {
        let mut stmt = tx.prepare(
            "SELECT object FROM nodes WHERE (path = ?1 OR path LIKE ?2 ESCAPE '\\') \
             AND object IS NOT NULL",
        )?;
        let rows = stmt.query_map([path, &below], |r| r.get::<_, String>(0))?;
        rows.collect::<rusqlite::Result<Vec<_>>>()?
    };
    tx.execute(
        "DELETE FROM nodes WHERE path = ?1 OR path LIKE ?2 ESCAPE '\\'",
        [path, &below],
    )?;
    Ok(objects)
}

async fn delete_objects(store: &Arc<dyn ObjectStore>, keys: Vec<String>) {
    for key in keys {
        if let Err(e) = store.delete(&ObjectPath::from(key.as_str())).await {
            tracing::warn!(key, error = %e, "could not delete a removed node's bytes");
        }
    }
}

/// A read-only survey file collection.
#[derive(Debug, Clone)]
pub struct Collection {
    /// Its name (the scheme of `<name>://path`).
    pub name: String,
    /// Where its files are.
    pub store: Arc<dyn ObjectStore>,
}

impl Collection {
    /// The collection `name` of the files under the local directory `dir`.
    pub fn local(name: &str, dir: &Path) -> Result<Self> {
        check_segment(name)?;
        if !dir.is_dir() {
            return Err(Error::Invalid(format!(
                "collection '{name}': {} is not a directory",
                dir.display()
            )));
        }
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| store_error(&format!("collection '{name}'"), e))?;
        Ok(Self {
            name: name.to_string(),
            store: Arc::new(fs),
        })
    }
}

/// An entry of a collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path in the collection.
    pub path: String,
    /// Whether it is a directory.
    pub dir: bool,
    /// Bytes.
    pub size: u64,
    /// Last change, ms since the epoch.
    pub mtime_ms: i64,
}

/// Releases a space's reservation when an upload ends, however it ends.
struct Reservation<'a> {
    storage: &'a Storage,
    space: String,
    bytes: u64,
}

impl Reservation<'_> {
    /// Reserves `more` bytes, if the space has room.
    fn grow(&mut self, more: u64) -> Result<()> {
        self.storage.reserve(&self.space, more)?;
        self.bytes += more;
        Ok(())
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut reserved = self.storage.reserved();
        if let Some(r) = reserved.get_mut(&self.space) {
            *r = r.saturating_sub(self.bytes);
        }
    }
}

/// The file store.
pub struct Storage {
    db: Mutex<Connection>,
    store: Arc<dyn ObjectStore>,
    quota_bytes: u64,
    reserved: Mutex<HashMap<String, u64>>,
    collections: Vec<Collection>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("store", &self.store.to_string())
            .field("quota_bytes", &self.quota_bytes)
            .finish()
    }
}

/// Files that uploads cut off left in a local file store's directory `dir`: a multipart
/// upload writes `<key>#<n>` and renames it when complete, so such a file older than a
/// minute belongs to no upload in progress. Removed with `repair`.
pub fn staged_leftovers(dir: &Path, repair: bool) -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if e.file_name().to_string_lossy().contains('#') {
                out.push(p);
            }
        }
    }
    let mut found = Vec::new();
    walk(dir, &mut found);
    found.sort();
    let recent = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
    found
        .into_iter()
        .filter(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < recent)
        })
        .map(|p| {
            let removed = repair && std::fs::remove_file(&p).is_ok();
            format!(
                "file store: {} is what an interrupted upload left{}",
                p.display(),
                if removed { " (removed)" } else { "" }
            )
        })
        .collect()
}

fn store_error(context: &str, e: object_store::Error) -> Error {
    Error::io(context, std::io::Error::other(e))
}

/// The id of the user or group space `name` was made for (none for a space made before
/// spaces were bound, or no space).
fn bound_principal(db: &rusqlite::Connection, name: &str) -> Result<Option<i64>> {
    Ok(db
        .query_row(
            "SELECT principal FROM spaces WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?)
}

impl Storage {
    /// The tree recorded in `db`, bytes in `store`, each space allowed `quota_bytes`, with
    /// the survey `collections`.
    pub fn open(
        db: &Path,
        store: Arc<dyn ObjectStore>,
        quota_bytes: u64,
        collections: Vec<Collection>,
    ) -> Result<Self> {
        if let Some(dir) = db.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let conn = Connection::open(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            db: Mutex::new(conn),
            store,
            quota_bytes,
            reserved: Mutex::new(HashMap::new()),
            collections,
        })
    }

    /// A store of files in the local directory `dir` (created if missing).
    pub fn local_store(dir: &Path) -> Result<Arc<dyn ObjectStore>> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| store_error(&format!("opening {}", dir.display()), e))?;
        Ok(Arc::new(fs))
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        // Changes are single statements or transactions: a poisoned lock leaves it whole.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reserved(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.reserved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Each space's quota, bytes.
    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// The survey collections.
    pub fn collections(&self) -> &[Collection] {
        &self.collections
    }

    /// Collection `name`, if published.
    pub fn collection(&self, name: &str) -> Option<&Collection> {
        self.collections.iter().find(|c| c.name == name)
    }

    fn get(&self, path: &str) -> Result<Option<Node>> {
        Ok(self
            .db()
            .query_row(
                &format!("SELECT {COLUMNS} FROM nodes WHERE path = ?1"),
                [path],
                read_node,
            )
            .optional()?)
    }

    fn insert(&self, db: &Connection, node: &Node) -> Result<()> {
        db.execute(
            "INSERT INTO nodes (path, parent, space, kind, owner, size, mtime_ms, object, \
             target, public_read, group_read, group_write, props)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                node.path,
                parent_of(&node.path),
                node.space(),
                node.kind.as_str(),
                node.owner,
                node.size as i64,
                node.mtime_ms,
                node.object,
                node.target,
                node.public_read,
                stored_grants(&node.group_read),
                stored_grants(&node.group_write),
                serde_json::to_string(&node.properties)?,
            ],
        )?;
        Ok(())
    }

    fn new_node(path: &str, kind: Kind, owner: &str) -> Node {
        Node {
            path: path.to_string(),
            kind,
            owner: owner.to_string(),
            size: 0,
            mtime_ms: now_ms(),
            target: None,
            public_read: false,
            group_read: Vec::new(),
            group_write: Vec::new(),
            properties: BTreeMap::new(),
            object: None,
        }
    }

    /// The id of the user or group space `name` was made for (`None` for a space made
    /// before spaces were bound, or no space).
    pub fn space_id(&self, name: &str) -> Result<Option<i64>> {
        bound_principal(&self.db(), name)
    }

    /// Makes sure the space `name` of the user or group with id `id` exists (made by
    /// `owner`): a home has `public` (readable by anyone) and `tmp` containers, as Data
    /// Lab's do. A space made for another id (an earlier holder of the name) is deleted
    /// first, with its files; a space made before spaces were bound is taken as it is.
    pub fn ensure_space(&self, name: &str, owner: &str, id: i64) -> Result<()> {
        check_segment(name)?;
        if self.space_id(name)? == Some(id) {
            return Ok(());
        }
        let stale = {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let bound = bound_principal(&tx, name)?;
            if bound == Some(id) {
                return Ok(());
            }
            let stale = match bound {
                Some(_) => delete_rows_in(&tx, name)?,
                None => Vec::new(),
            };
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM nodes WHERE path = ?1)",
                [name],
                |r| r.get(0),
            )?;
            if !exists {
                self.insert(&tx, &Self::new_node(name, Kind::Container, owner))?;
                let mut public = Self::new_node(&format!("{name}/public"), Kind::Container, owner);
                public.public_read = true;
                self.insert(&tx, &public)?;
                self.insert(
                    &tx,
                    &Self::new_node(&format!("{name}/tmp"), Kind::Container, owner),
                )?;
            }
            tx.execute(
                "INSERT INTO spaces (name, principal) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET principal = excluded.principal",
                params![name, id],
            )?;
            tx.commit()?;
            stale
        };
        if !stale.is_empty() {
            tracing::warn!(
                space = name,
                files = stale.len(),
                "a space left by an earlier holder of the name was deleted"
            );
            self.delete_objects_later(stale);
        }
        Ok(())
    }

    /// Removes a whole space with its bytes, whoever it was made for.
    pub async fn remove_space(&self, name: &str) -> Result<()> {
        check_segment(name)?;
        let objects = {
            let mut db = self.db();
            let tx = db.transaction()?;
            let objects = delete_rows_in(&tx, name)?;
            tx.execute("DELETE FROM spaces WHERE name = ?1", [name])?;
            tx.commit()?;
            objects
        };
        self.delete_objects(objects).await;
        Ok(())
    }

    /// Removes the space `name` with its bytes if it was made for id `id` (or before
    /// spaces were bound); a space of a later holder of the name stays. Returns whether
    /// it went.
    pub async fn remove_space_of(&self, name: &str, id: i64) -> Result<bool> {
        check_segment(name)?;
        let objects = {
            let mut db = self.db();
            let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let bound = bound_principal(&tx, name)?;
            if bound.is_some_and(|b| b != id) {
                return Ok(false);
            }
            let objects = delete_rows_in(&tx, name)?;
            tx.execute("DELETE FROM spaces WHERE name = ?1", [name])?;
            tx.commit()?;
            objects
        };
        self.delete_objects(objects).await;
        Ok(true)
    }

    /// Removes the grants to group `name` made for the group with id `id`, and those made
    /// to the name alone (before grants had ids); with `id` `None`, every grant to `name`.
    /// Returns how many nodes changed.
    pub fn revoke_group(&self, name: &str, id: Option<i64>) -> Result<usize> {
        self.retain_grants(name, |g| id.is_some() && g.id.is_some() && g.id != id)
    }

    /// Removes the grants to group `name` that were not made for the group with id `id`:
    /// those left by earlier groups of that name. Returns how many nodes changed.
    pub fn revoke_stale_grants(&self, name: &str, id: i64) -> Result<usize> {
        self.retain_grants(name, |g| g.id == Some(id))
    }

    /// Keeps, of the grants to group `name`, those `keep` says.
    fn retain_grants(&self, name: &str, keep: impl Fn(&Grant) -> bool) -> Result<usize> {
        let mut db = self.db();
        let tx = db.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let like = format!("%{}%", like_escape(name));
        let rows: Vec<(String, String, String)> = {
            let mut stmt = tx.prepare(
                "SELECT path, group_read, group_write FROM nodes \
                 WHERE group_read LIKE ?1 ESCAPE '\\' OR group_write LIKE ?1 ESCAPE '\\'",
            )?;
            let r = stmt.query_map([&like], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            r.collect::<rusqlite::Result<_>>()?
        };
        let mut changed = 0;
        for (path, read, write) in rows {
            let filter = |text: &str| -> String {
                let kept: Vec<Grant> = text
                    .split_whitespace()
                    .map(Grant::parse)
                    .filter(|g| g.name != name || keep(g))
                    .collect();
                stored_grants(&kept)
            };
            let (new_read, new_write) = (filter(&read), filter(&write));
            if new_read != read || new_write != write {
                tx.execute(
                    "UPDATE nodes SET group_read = ?2, group_write = ?3 WHERE path = ?1",
                    params![path, new_read, new_write],
                )?;
                changed += 1;
            }
        }
        tx.commit()?;
        Ok(changed)
    }

    /// Whether `space` is the one made for the holder of its name that `who` knows (a
    /// space made before spaces were bound is taken to be).
    fn bound_for(&self, who: &Who, space: &str) -> Result<bool> {
        Ok(match self.space_id(space)? {
            Some(id) => who.ids.get(space) == Some(&id),
            None => true,
        })
    }

    /// Whether `space` is `who`'s home.
    fn is_home(&self, who: &Who, space: &str) -> Result<bool> {
        Ok(who.user.as_deref() == Some(space) && self.bound_for(who, space)?)
    }

    /// `who`'s role in the group whose space `space` is.
    fn space_role(&self, who: &Who, space: &str) -> Result<Option<Role>> {
        Ok(match who.role_in(space) {
            Some(role) if self.bound_for(who, space)? => Some(role),
            _ => None,
        })
    }

    /// Whether `who` reads `node`'s tree position (see the module's rules).
    fn can_read(&self, who: &Who, path: &str) -> Result<bool> {
        if who.admin {
            return Ok(true);
        }
        let space = space_of(path);
        if self.is_home(who, space)? || self.space_role(who, space)?.is_some() {
            return Ok(true);
        }
        self.granted(path, |n| {
            n.public_read || n.group_read.iter().any(|g| who.granted_role(g).is_some())
        })
    }

    /// Whether `who` changes what is at `path` (or creates it there).
    fn can_write(&self, who: &Who, path: &str) -> Result<bool> {
        if who.admin {
            return Ok(true);
        }
        let space = space_of(path);
        if self.is_home(who, space)? || self.space_role(who, space)?.is_some_and(Role::writes) {
            return Ok(true);
        }
        self.granted(path, |n| {
            n.group_write
                .iter()
                .any(|g| who.granted_role(g).is_some_and(Role::writes))
        })
    }

    /// Whether `path` or a container above it satisfies `grants`.
    fn granted(&self, path: &str, grants: impl Fn(&Node) -> bool) -> Result<bool> {
        let mut p = path;
        loop {
            if self.get(p)?.is_some_and(|n| grants(&n)) {
                return Ok(true);
            }
            if !p.contains('/') {
                return Ok(false);
            }
            p = parent_of(p);
        }
    }

    /// The node at `path`, when `who` may read it.
    pub fn node(&self, who: &Who, path: &str) -> Result<Node> {
        if !self.can_read(who, path)? {
            return Err(not_found(path));
        }
        self.get(path)?.ok_or_else(|| not_found(path))
    }

    /// Whether `who` may read (`write` false) or write the node at `path`.
    pub fn access(&self, who: &Who, path: &str, write: bool) -> Result<bool> {
        Ok(if write {
            self.can_write(who, path)?
        } else {
            self.can_read(who, path)?
        })
    }

    /// The children of container `path`, by name.
    pub fn list(&self, who: &Who, path: &str) -> Result<Vec<Node>> {
        let node = self.node(who, path)?;
        if node.kind != Kind::Container {
            return Ok(vec![node]);
        }
        let db = self.db();
        let mut stmt = db.prepare(&format!(
            "SELECT {COLUMNS} FROM nodes WHERE parent = ?1 ORDER BY path"
        ))?;
        let rows = stmt.query_map([path], read_node)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Checks that `who` may write the data node at `path` (a new one, or one there to
    /// replace), as a later upload to it would: for handing out an upload URL.
    pub fn check_upload(&self, who: &Who, path: &str) -> Result<()> {
        self.check_create(who, path, true).map(drop)
    }

    /// Checks that `who` may create a node at `path`: its parent is a container they write
    /// and nothing is there yet (unless `replace_data` and it is a data node).
    fn check_create(&self, who: &Who, path: &str, replace_data: bool) -> Result<Option<Node>> {
        let parent = parent_of(path);
        if parent.is_empty() {
            return Err(Error::Forbidden(format!(
                "{path} is a space; spaces are made with their user or group"
            )));
        }
        let parent_node = self.node(who, parent).map_err(|_| {
            Error::NotFound(format!("no container {parent}: a container is missing"))
        })?;
        if parent_node.kind != Kind::Container {
            return Err(Error::Invalid(format!("{parent} is not a container")));
        }
        if !self.can_write(who, path)? {
            return Err(Error::Forbidden(format!(
                "permission denied: you may not write in {parent}"
            )));
        }
        match self.get(path)? {
            Some(n) if replace_data && n.kind == Kind::Data => Ok(Some(n)),
            Some(_) => Err(Error::Conflict(format!(
                "{path}: a node already exists with the requested URI"
            ))),
            None => Ok(None),
        }
    }

    fn creator(who: &Who) -> Result<&str> {
        who.user
            .as_deref()
            .ok_or_else(|| Error::Unauthorized("storage needs a login".into()))
    }

    /// Creates container `path`.
    pub fn mkdir(&self, who: &Who, path: &str) -> Result<Node> {
        let owner = Self::creator(who)?;
        self.check_create(who, path, false)?;
        let node = Self::new_node(path, Kind::Container, owner);
        self.insert(&self.db(), &node)
            .map_err(|_| Error::Conflict(format!("{path}: a node already exists")))?;
        Ok(node)
    }

    /// Creates a link at `path` to `target` (a node URI or any URI).
    pub fn link(&self, who: &Who, path: &str, target: &str) -> Result<Node> {
        let owner = Self::creator(who)?;
        self.check_create(who, path, false)?;
        if target.trim().is_empty() {
            return Err(Error::Invalid("a link needs a target".into()));
        }
        let mut node = Self::new_node(path, Kind::Link, owner);
        node.target = Some(target.trim().to_string());
        self.insert(&self.db(), &node)?;
        Ok(node)
    }

    fn reserve(&self, space: &str, bytes: u64) -> Result<()> {
        let used = self.usage_bytes(space)?;
        let mut reserved = self.reserved();
        let r = reserved.entry(space.to_string()).or_default();
        if used + *r + bytes > self.quota_bytes {
            return Err(Error::Quota(format!(
                "storage quota of '{space}' exceeded: {used} bytes kept, {} in uploads under \
                 way, {bytes} more asked, quota {} bytes",
                *r, self.quota_bytes
            )));
        }
        *r += bytes;
        Ok(())
    }

    /// `bytes` reserved in `space`, released when the reservation is dropped.
    fn reservation(&self, space: &str, bytes: u64) -> Result<Reservation<'_>> {
        let mut r = Reservation {
            storage: self,
            space: space.to_string(),
            bytes: 0,
        };
        r.grow(bytes)?;
        Ok(r)
    }

    /// Bytes kept in `space`.
    pub fn usage_bytes(&self, space: &str) -> Result<u64> {
        let n: i64 = self.db().query_row(
            "SELECT COALESCE(SUM(size), 0) FROM nodes WHERE space = ?1",
            [space],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    /// Writes the bytes of `body` as data node `path` (replacing an existing data node's
    /// bytes). `declared` (a Content-Length) is reserved against the quota before a byte is
    /// taken; the node appears only when every byte is stored. Nothing is left behind when
    /// the body fails, is cut short of `declared`, or passes the quota or `max_bytes`.
    pub async fn write<S, E>(
        &self,
        who: &Who,
        path: &str,
        body: S,
        declared: Option<u64>,
        max_bytes: u64,
    ) -> Result<Node>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let owner = Self::creator(who)?.to_string();
        let old = self.check_create(who, path, true)?;
        if let Some(n) = declared.filter(|n| *n > max_bytes) {
            return Err(Error::Quota(format!(
                "{n} bytes is over the upload limit of {max_bytes} bytes"
            )));
        }
        // What the replaced bytes free counts for the new ones.
        let credit = old.as_ref().map_or(0, |n| n.size);
        let mut reservation =
            self.reservation(space_of(path), declared.unwrap_or(0).saturating_sub(credit))?;
        let key = format!("nodes/{}", random_key());
        let location = ObjectPath::from(key.as_str());
        let upload = self
            .store
            .put_multipart(&location)
            .await
            .map_err(|e| store_error("starting an upload", e))?;
        let mut writer = WriteMultipart::new(upload);
        let mut size = 0u64;
        let mut body = std::pin::pin!(body);
        let streamed: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    Error::Invalid(format!("the upload of {path} was interrupted: {e}"))
                })?;
                size += chunk.len() as u64;
                if size > max_bytes {
                    return Err(Error::Quota(format!(
                        "the upload of {path} is over the upload limit of {max_bytes} bytes"
                    )));
                }
                let needed = size.saturating_sub(credit);
                if needed > reservation.bytes {
                    reservation.grow(needed - reservation.bytes)?;
                }
                writer
                    .wait_for_capacity(4)
                    .await
                    .map_err(|e| store_error("uploading", e))?;
                writer.write(&chunk);
            }
            if let Some(n) = declared.filter(|n| *n != size) {
                return Err(Error::Invalid(format!(
                    "the upload of {path} ended after {size} of {n} bytes"
                )));
            }
            Ok(())
        }
        .await;
        if let Err(e) = streamed {
            let _ = writer.abort().await;
            tracing::info!(path, bytes = size, error = %e, "upload refused; nothing kept");
            return Err(e);
        }
        writer
            .finish()
            .await
            .map_err(|e| store_error("completing an upload", e))?;
        let mut node = old
            .clone()
            .unwrap_or_else(|| Self::new_node(path, Kind::Data, &owner));
        node.size = size;
        node.mtime_ms = now_ms();
        node.object = Some(key);
        let recorded = {
            let mut db = self.db();
            let tx = db.transaction()?;
            tx.execute("DELETE FROM nodes WHERE path = ?1", [path])?;
            self.insert(&tx, &node)?;
            tx.commit().map_err(Error::from)
        };
        if let Err(e) = recorded {
            let _ = self.store.delete(&location).await;
            return Err(e);
        }
        drop(reservation);
        if let Some(old_key) = old.and_then(|n| n.object) {
            self.delete_objects(vec![old_key]).await;
        }
        tracing::info!(path, bytes = size, "stored");
        Ok(node)
    }

    /// What `meridian check` finds in the file store: data nodes whose bytes are missing,
    /// bytes that no node refers to (an upload or a removal cut off), and spaces of users or
    /// groups that are `gone` (a removal or a dissolution cut off), returned for
    /// [`crate::groups::purge`]. With `repair`, unreferenced bytes are deleted, unless they
    /// were written in the last minute (an upload that is not recorded yet).
    pub async fn check(
        &self,
        gone: &HashMap<i64, crate::groups::Gone>,
        repair: bool,
    ) -> Result<(Vec<String>, Vec<crate::groups::Gone>)> {
        let (objects, spaces) = {
            let db = self.db();
            let objects: Vec<(String, String)> = db
                .prepare("SELECT path, object FROM nodes WHERE object IS NOT NULL")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let spaces: Vec<(String, i64)> = db
                .prepare("SELECT name, principal FROM spaces")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            (objects, spaces)
        };
        let mut listed = HashMap::new();
        let mut stream = self.store.list(Some(&ObjectPath::from("nodes")));
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| store_error("listing the file store", e))?;
            listed.insert(
                meta.location.to_string(),
                meta.last_modified.timestamp_millis(),
            );
        }
        let mut problems = Vec::new();
        let referenced: std::collections::HashSet<&str> =
            objects.iter().map(|(_, k)| k.as_str()).collect();
        for (path, key) in &objects {
            if !listed.contains_key(key) {
                problems.push(format!(
                    "file vos://{path}: its bytes ({key}) are missing from the store"
                ));
            }
        }
        let recent = now_ms() - 60_000;
        let mut unreferenced: Vec<_> = listed
            .into_iter()
            .filter(|(k, modified)| !referenced.contains(k.as_str()) && *modified < recent)
            .collect();
        unreferenced.sort();
        for (key, _) in unreferenced {
            let removed = repair
                && self
                    .store
                    .delete(&ObjectPath::from(key.as_str()))
                    .await
                    .is_ok();
            problems.push(format!(
                "file store: {key} belongs to no file{}",
                if removed { " (deleted)" } else { "" }
            ));
        }
        let mut orphans = Vec::new();
        for (name, id) in spaces {
            if let Some(g) = gone.get(&id) {
                problems.push(format!(
                    "file store: space '{name}' belongs to a {} that is gone (id {id}): its \
                     removal was cut off",
                    if g.group { "group" } else { "user" }
                ));
                orphans.push(g.clone());
            }
        }
        Ok((problems, orphans))
    }

    /// Creates an empty data node at `path` (VOSpace's PUT of a DataNode): refused, as any
    /// other node, when one is there already; an existing file's bytes stay.
    pub async fn create_data(&self, who: &Who, path: &str) -> Result<Node> {
        let owner = Self::creator(who)?.to_string();
        self.check_create(who, path, false)?;
        let key = format!("nodes/{}", random_key());
        let location = ObjectPath::from(key.as_str());
        self.store
            .put(&location, object_store::PutPayload::default())
            .await
            .map_err(|e| store_error("creating an empty file", e))?;
        let mut node = Self::new_node(path, Kind::Data, &owner);
        node.object = Some(key);
        let inserted = self.insert(&self.db(), &node);
        if let Err(e) = inserted {
            let _ = self.store.delete(&location).await;
            if self.get(path)?.is_some() {
                return Err(Error::Conflict(format!(
                    "{path}: a node already exists with the requested URI"
                )));
            }
            return Err(e);
        }
        Ok(node)
    }

    /// The bytes of data node `path`, as a stream, with the node.
    pub async fn read(
        &self,
        who: &Who,
        path: &str,
    ) -> Result<(Node, futures::stream::BoxStream<'static, Result<Bytes>>)> {
        let node = self.node(who, path)?;
        let node = self.follow(who, node)?;
        if node.kind != Kind::Data {
            return Err(Error::Invalid(format!(
                "{} is a container, not a file",
                node.path
            )));
        }
        let key = node.object.clone().unwrap_or_default();
        let got = self
            .store
            .get(&ObjectPath::from(key.as_str()))
            .await
            .map_err(|e| store_error(&format!("reading {path}"), e))?;
        let stream = got
            .into_stream()
            .map(|r| r.map_err(|e| store_error("reading", e)))
            .boxed();
        Ok((node, stream))
    }

    /// A link to a node of this store, followed (up to 8 links); other nodes as they are.
    fn follow(&self, who: &Who, mut node: Node) -> Result<Node> {
        for _ in 0..8 {
            if node.kind != Kind::Link {
                return Ok(node);
            }
            let target = node.target.clone().unwrap_or_default();
            let Some(path) = target_path(&target) else {
                return Err(Error::Invalid(format!(
                    "{} links outside this store, to {target}",
                    node.path
                )));
            };
            node = self.node(who, &path)?;
        }
        Err(Error::Invalid(format!("{}: too many links", node.path)))
    }

    /// Removes `path` (a container only when empty, unless `recursive`).
    pub async fn delete(&self, who: &Who, path: &str, recursive: bool) -> Result<()> {
        let node = self.node(who, path)?;
        if !path.contains('/') {
            return Err(Error::Forbidden(format!("{path} is a space and stays")));
        }
        if !self.can_write(who, path)? {
            return Err(Error::Forbidden(format!(
                "permission denied: you may not remove {path}"
            )));
        }
        if node.kind == Kind::Container && !recursive && !self.list(who, path)?.is_empty() {
            return Err(Error::Conflict(format!("{path} is not empty")));
        }
        let objects = self.delete_rows(path)?;
        self.delete_objects(objects).await;
        Ok(())
    }

    /// Deletes the rows of `path` and below, returning their objects' keys.
    fn delete_rows(&self, path: &str) -> Result<Vec<String>> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let objects = delete_rows_in(&tx, path)?;
        tx.commit()?;
        Ok(objects)
    }

    async fn delete_objects(&self, keys: Vec<String>) {
        delete_objects(&self.store, keys).await
    }

    /// Deletes `keys` from the store in the background (from code that cannot wait).
    fn delete_objects_later(&self, keys: Vec<String>) {
        let store = self.store.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(async move { delete_objects(&store, keys).await })),
            Err(_) => tracing::warn!(
                count = keys.len(),
                "bytes of deleted nodes left in the store: no runtime to delete them"
            ),
        }
    }

    /// Where `from` goes for a move or copy to `to`: into `to` when it is a container.
    fn destination(&self, who: &Who, from: &str, to: &str) -> Result<String> {
        let into = self
            .node(who, to)
            .ok()
            .filter(|n| n.kind == Kind::Container);
        let dest = match into {
            Some(dir) => format!("{}/{}", dir.path, from.rsplit('/').next().unwrap_or(from)),
            None => to.to_string(),
        };
        if dest == from || dest.starts_with(&format!("{from}/")) {
            return Err(Error::Invalid(format!("{from} cannot go inside itself")));
        }
        Ok(dest)
    }

    /// Moves (renames) `from` to `to`, with everything below it; into `to` when that is a
    /// container. One transaction, whatever the size of the tree.
    pub fn move_node(&self, who: &Who, from: &str, to: &str) -> Result<Node> {
        let node = self.node(who, from)?;
        if !from.contains('/') {
            return Err(Error::Forbidden(format!("{from} is a space and stays")));
        }
        if !self.can_write(who, from)? {
            return Err(Error::Forbidden(format!(
                "permission denied: you may not move {from}"
            )));
        }
        let dest = self.destination(who, from, to)?;
        self.check_create(who, &dest, false)?;
        // A move to another space is counted against it, released once the rows have moved.
        let _reservation = if node.space() != space_of(&dest) {
            Some(self.reservation(space_of(&dest), self.subtree_bytes(from)?)?)
        } else {
            None
        };
        self.rename_rows(from, &dest)?;
        self.get(&dest)?.ok_or_else(|| not_found(&dest))
    }

    fn subtree_bytes(&self, path: &str) -> Result<u64> {
        let n: i64 = self.db().query_row(
            "SELECT COALESCE(SUM(size), 0) FROM nodes WHERE path = ?1 OR path LIKE ?2 ESCAPE '\\'",
            [path, &format!("{}/%", like_escape(path))],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }

    fn rename_rows(&self, from: &str, to: &str) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let rows: Vec<String> = {
            let mut stmt =
                tx.prepare("SELECT path FROM nodes WHERE path = ?1 OR path LIKE ?2 ESCAPE '\\'")?;
            let r = stmt.query_map([from, &format!("{}/%", like_escape(from))], |r| r.get(0))?;
            r.collect::<rusqlite::Result<_>>()?
        };
        let now = now_ms();
        for old in rows {
            let new = format!("{to}{}", &old[from.len()..]);
            tx.execute(
                "UPDATE nodes SET path = ?2, parent = ?3, space = ?4, mtime_ms = \
                 CASE WHEN path = ?5 THEN ?6 ELSE mtime_ms END WHERE path = ?1",
                params![old, new, parent_of(&new), space_of(&new), from, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Copies `from` to `to` (into `to` when that is a container), bytes and all; the
    /// copies belong to the caller.
    pub async fn copy_node(&self, who: &Who, from: &str, to: &str) -> Result<Node> {
        let owner = Self::creator(who)?.to_string();
        self.node(who, from)?;
        let dest = self.destination(who, from, to)?;
        self.check_create(who, &dest, false)?;
        let nodes: Vec<Node> = {
            let db = self.db();
            let mut stmt = db.prepare(&format!(
                "SELECT {COLUMNS} FROM nodes WHERE path = ?1 OR path LIKE ?2 ESCAPE '\\' \
                 ORDER BY path"
            ))?;
            let rows = stmt.query_map([from, &format!("{}/%", like_escape(from))], read_node)?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let bytes: u64 = nodes.iter().map(|n| n.size).sum();
        let reservation = self.reservation(space_of(&dest), bytes)?;
        let mut copies = Vec::with_capacity(nodes.len());
        let mut new_keys = Vec::new();
        let copied: Result<()> = async {
            for n in &nodes {
                let mut c = n.clone();
                c.path = format!("{dest}{}", &n.path[from.len()..]);
                c.owner = owner.clone();
                c.mtime_ms = now_ms();
                if let Some(key) = &n.object {
                    let new_key = format!("nodes/{}", random_key());
                    self.store
                        .copy(
                            &ObjectPath::from(key.as_str()),
                            &ObjectPath::from(new_key.as_str()),
                        )
                        .await
                        .map_err(|e| store_error(&format!("copying {}", n.path), e))?;
                    new_keys.push(new_key.clone());
                    c.object = Some(new_key);
                }
                copies.push(c);
            }
            let mut db = self.db();
            let tx = db.transaction()?;
            for c in &copies {
                self.insert(&tx, c)?;
            }
            tx.commit()?;
            Ok(())
        }
        .await;
        if let Err(e) = copied {
            self.delete_objects(new_keys).await;
            return Err(e);
        }
        drop(reservation);
        self.get(&dest)?.ok_or_else(|| not_found(&dest))
    }

    /// Sets properties of `path`: the permission properties ([`PUBLIC_READ`],
    /// [`GROUP_READ`], [`GROUP_WRITE`]) change the permissions; an empty value removes
    /// any other property. Only who writes the node changes them. The groups the
    /// permission properties name (`proj`, or CADC's `ivo://.../gms?proj`) must exist:
    /// `group_id` gives the id of each, to which the grant is bound.
    pub fn set_properties(
        &self,
        who: &Who,
        path: &str,
        props: &[(String, String)],
        group_id: &dyn Fn(&str) -> Result<Option<i64>>,
    ) -> Result<Node> {
        let mut node = self.node(who, path)?;
        if !self.can_write(who, path)? {
            return Err(Error::Forbidden(format!(
                "permission denied: you may not change {path}"
            )));
        }
        let grants = |value: &str| -> Result<Vec<Grant>> {
            let mut out: Vec<Grant> = Vec::new();
            for word in value.split_whitespace() {
                let name = word.rsplit(['?', '#']).next().unwrap_or(word);
                let id = group_id(name)?.ok_or_else(|| {
                    Error::Invalid(format!(
                        "no group '{name}': nodes are shared with groups that exist"
                    ))
                })?;
                if !out.iter().any(|g| g.name == name) {
                    out.push(Grant {
                        name: name.to_string(),
                        id: Some(id),
                    });
                }
            }
            Ok(out)
        };
        for (k, v) in props {
            match k.as_str() {
                PUBLIC_READ => node.public_read = matches!(v.trim(), "true" | "True" | "1" | "yes"),
                GROUP_READ => node.group_read = grants(v)?,
                GROUP_WRITE => node.group_write = grants(v)?,
                "ivo://ivoa.net/vospace/core#length" | "ivo://ivoa.net/vospace/core#date" => {}
                _ if v.is_empty() => {
                    node.properties.remove(k);
                }
                _ => {
                    node.properties.insert(k.clone(), v.clone());
                }
            }
        }
        self.db().execute(
            "UPDATE nodes SET public_read = ?2, group_read = ?3, group_write = ?4, props = ?5 \
             WHERE path = ?1",
            params![
                path,
                node.public_read,
                stored_grants(&node.group_read),
                stored_grants(&node.group_write),
                serde_json::to_string(&node.properties)?
            ],
        )?;
        Ok(node)
    }

    /// The entries of collection `name` under directory `dir`, or the one file `dir` names.
    pub async fn collection_list(&self, name: &str, dir: &str) -> Result<Vec<Entry>> {
        let c = self.collection_or_404(name)?;
        let prefix = collection_path(dir)?;
        let listed = c
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| store_error(&format!("listing {name}://{dir}"), e))?;
        let mut out: Vec<Entry> = listed
            .common_prefixes
            .iter()
            .map(|p| Entry {
                path: p.to_string(),
                dir: true,
                size: 0,
                mtime_ms: 0,
            })
            .chain(listed.objects.iter().map(|o| Entry {
                path: o.location.to_string(),
                dir: false,
                size: o.size,
                mtime_ms: o.last_modified.timestamp_millis(),
            }))
            .collect();
        if out.is_empty() && !prefix.as_ref().is_empty() {
            // Not a directory: perhaps a file.
            out.push(self.collection_stat(name, dir).await?);
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }

    /// One entry of collection `name`.
    pub async fn collection_stat(&self, name: &str, path: &str) -> Result<Entry> {
        let c = self.collection_or_404(name)?;
        let p = collection_path(path)?;
        if p.as_ref().is_empty() {
            return Ok(Entry {
                path: String::new(),
                dir: true,
                size: 0,
                mtime_ms: 0,
            });
        }
        match c.store.head(&p).await {
            Ok(o) => Ok(Entry {
                path: o.location.to_string(),
                dir: false,
                size: o.size,
                mtime_ms: o.last_modified.timestamp_millis(),
            }),
            Err(_) => {
                let listed = c
                    .store
                    .list_with_delimiter(Some(&p))
                    .await
                    .map_err(|e| store_error("listing", e))?;
                if listed.objects.is_empty() && listed.common_prefixes.is_empty() {
                    Err(Error::NotFound(format!("no file {name}://{path}")))
                } else {
                    Ok(Entry {
                        path: p.to_string(),
                        dir: true,
                        size: 0,
                        mtime_ms: 0,
                    })
                }
            }
        }
    }

    /// The bytes of a collection's file.
    pub async fn collection_read(
        &self,
        name: &str,
        path: &str,
    ) -> Result<(u64, futures::stream::BoxStream<'static, Result<Bytes>>)> {
        let c = self.collection_or_404(name)?;
        let p = collection_path(path)?;
        let got = c
            .store
            .get(&p)
            .await
            .map_err(|_| Error::NotFound(format!("no file {name}://{path}")))?;
        let size = got.meta.size;
        Ok((
            size,
            got.into_stream()
                .map(|r| r.map_err(|e| store_error("reading", e)))
                .boxed(),
        ))
    }

    fn collection_or_404(&self, name: &str) -> Result<&Collection> {
        self.collection(name)
            .ok_or_else(|| Error::NotFound(format!("no collection '{name}'")))
    }
}

/// A collection path, each segment checked (so `..` never reaches the file system).
fn collection_path(path: &str) -> Result<ObjectPath> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    for s in &segs {
        check_segment(s)?;
    }
    Ok(ObjectPath::from_iter(segs))
}

fn space_of(path: &str) -> &str {
    path.split('/').next().unwrap_or(path)
}

/// The authority part of this service's node URIs (`vos://meridian!vospace/space/path`).
pub const AUTHORITY: &str = "meridian!vospace";

/// The VOSpace URI of node `path`.
pub fn node_uri(path: &str) -> String {
    format!("vos://{AUTHORITY}/{path}")
}

/// The node path of a `vos://authority!vospace/space/path` or `space/path` link target.
pub fn target_path(target: &str) -> Option<String> {
    let rest = match target.strip_prefix("vos://") {
        Some(r) => match r.split_once('/') {
            Some((authority, p)) if authority.contains('!') => p,
            _ if r.contains('!') => "",
            _ => r,
        },
        None if !target.contains("://") => target,
        None => return None,
    };
    let mut segs = rest.split('/').filter(|s| !s.is_empty());
    let space = segs.next()?;
    node_path(space, &segs.collect::<Vec<_>>().join("/")).ok()
}

fn like_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

/// 128 random bits as hex: object keys, transfer tickets and job ids.
pub fn random_key() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..2)
        .map(|_| format!("{:016x}", rng.random::<u64>()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ids of the tests' users and groups.
    fn id_of(name: &str) -> i64 {
        name.bytes().fold(7, |h, b| h * 31 + i64::from(b))
    }

    fn who(user: &str, groups: &[(&str, Role)]) -> Who {
        Who {
            user: Some(user.to_string()),
            groups: groups.iter().map(|(g, r)| (g.to_string(), *r)).collect(),
            admin: false,
            ids: std::iter::once(user)
                .chain(groups.iter().map(|(g, _)| *g))
                .map(|n| (n.to_string(), id_of(n)))
                .collect(),
        }
    }

    fn group_ids(name: &str) -> Result<Option<i64>> {
        Ok(Some(id_of(name)))
    }

    fn storage(quota: u64) -> (tempfile::TempDir, Storage) {
        let tmp = tempfile::tempdir().unwrap();
        let store = Storage::local_store(&tmp.path().join("bytes")).unwrap();
        let s = Storage::open(&tmp.path().join("s.sqlite"), store, quota, Vec::new()).unwrap();
        for u in ["ann", "bob"] {
            s.ensure_space(u, u, id_of(u)).unwrap();
        }
        (tmp, s)
    }

    fn body(data: &'static [u8]) -> impl Stream<Item = std::result::Result<Bytes, String>> {
        futures::stream::iter(data.chunks(3).map(|c| Ok(Bytes::from_static(c))))
    }

    async fn read_all(s: &Storage, who: &Who, path: &str) -> Result<Vec<u8>> {
        let (_, mut stream) = s.read(who, path).await?;
        let mut out = Vec::new();
        while let Some(c) = stream.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[test]
    fn paths_refuse_traversal_and_odd_names() {
        assert_eq!(node_path("ann", "/a//b/").unwrap(), "ann/a/b");
        for bad in ["../bob", "a/../../bob", "a/./b", "a\\b", "a\u{0}b"] {
            assert!(node_path("ann", bad).is_err(), "{bad}");
        }
        assert_eq!(
            node_path("ann", "my file é.fits").unwrap(),
            "ann/my file é.fits"
        );
        assert_eq!(target_path("vos://x!vospace/ann/a").unwrap(), "ann/a");
        assert!(target_path("http://example.org/x").is_none());
    }

    #[tokio::test]
    async fn files_move_copy_and_stay_private() {
        let (_tmp, s) = storage(1 << 20);
        let (ann, bob) = (who("ann", &[]), who("bob", &[]));
        s.mkdir(&ann, "ann/dir").unwrap();
        s.write(
            &ann,
            "ann/dir/f.txt",
            body(b"hello world"),
            Some(11),
            1 << 20,
        )
        .await
        .unwrap();
        assert_eq!(
            read_all(&s, &ann, "ann/dir/f.txt").await.unwrap(),
            b"hello world"
        );
        // Bob neither reads nor lists it, and it looks missing to him.
        assert!(matches!(
            read_all(&s, &bob, "ann/dir/f.txt").await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(s.list(&bob, "ann/dir"), Err(Error::NotFound(_))));
        assert!(matches!(
            s.write(&bob, "ann/dir/g", body(b"x"), None, 100).await,
            Err(Error::NotFound(_))
        ));
        // Public files are read by anyone, written by the owner only.
        s.copy_node(&ann, "ann/dir/f.txt", "ann/public")
            .await
            .unwrap();
        assert_eq!(
            read_all(&s, &Who::anonymous(), "ann/public/f.txt")
                .await
                .unwrap(),
            b"hello world"
        );
        assert!(matches!(
            s.delete(&bob, "ann/public/f.txt", false).await,
            Err(Error::Forbidden(_))
        ));
        // A move into a container keeps the name; a container moves with its contents.
        s.move_node(&ann, "ann/dir", "ann/tmp").unwrap();
        assert_eq!(
            read_all(&s, &ann, "ann/tmp/dir/f.txt").await.unwrap(),
            b"hello world"
        );
        assert!(s.node(&ann, "ann/dir").is_err());
        assert!(matches!(
            s.move_node(&ann, "ann/tmp", "ann/tmp/dir"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            s.delete(&ann, "ann/tmp", false).await,
            Err(Error::Conflict(_))
        ));
        s.delete(&ann, "ann/tmp", true).await.unwrap();
        assert_eq!(s.usage_bytes("ann").unwrap(), 11);
        // Granting a group read lets its members in.
        let bob_in = who("bob", &[("team", Role::ReadOnly)]);
        s.mkdir(&ann, "ann/shared").unwrap();
        s.set_properties(
            &ann,
            "ann/shared",
            &[(GROUP_READ.into(), "team".into())],
            &group_ids,
        )
        .unwrap();
        assert!(s.list(&bob_in, "ann/shared").unwrap().is_empty());
        assert!(s.list(&bob, "ann/shared").is_err());
    }

    #[tokio::test]
    async fn quota_holds_and_failed_uploads_leave_nothing() {
        let (tmp, s) = storage(20);
        let ann = who("ann", &[]);
        // Declared too big: refused before a byte is taken.
        assert!(matches!(
            s.write(&ann, "ann/big", body(b"x"), Some(21), 1 << 20)
                .await,
            Err(Error::Quota(_))
        ));
        // Undeclared and growing past the quota: refused on the way, nothing kept.
        let long: &'static [u8] = b"0123456789012345678901234";
        assert!(matches!(
            s.write(&ann, "ann/long", body(long), None, 1 << 20).await,
            Err(Error::Quota(_))
        ));
        // Cut short.
        let broken = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err("connection reset".to_string()),
        ]);
        assert!(matches!(
            s.write(&ann, "ann/cut", broken, None, 1 << 20).await,
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            s.write(&ann, "ann/short", body(b"abc"), Some(10), 1 << 20)
                .await,
            Err(Error::Invalid(_))
        ));
        assert_eq!(s.list(&ann, "ann").unwrap().len(), 2, "only public and tmp");
        let files = walk(&tmp.path().join("bytes"));
        assert!(files.is_empty(), "left behind: {files:?}");
        // Two uploads that each fit but together do not: one is refused.
        let a = s.write(&ann, "ann/a", body(b"0123456789ab"), Some(12), 100);
        let b = s.write(&ann, "ann/b", body(b"0123456789ab"), Some(12), 100);
        let (a, b) = futures::join!(a, b);
        assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
        assert_eq!(s.usage_bytes("ann").unwrap(), 12);
        // Replacing a file counts only the difference.
        s.write(&ann, "ann/c", body(b"12345678"), Some(8), 100)
            .await
            .unwrap();
        s.write(&ann, "ann/c", body(b"87654321"), Some(8), 100)
            .await
            .unwrap();
        assert_eq!(walk(&tmp.path().join("bytes")).len(), 2);
    }

    #[tokio::test]
    async fn spaces_and_grants_reach_only_the_holder_they_were_made_for() {
        let (tmp, s) = storage(1 << 20);
        let ann = who("ann", &[("proj", Role::ReadWrite)]);
        let bob = who("bob", &[("proj", Role::ReadOnly)]);
        s.ensure_space("proj", "ann", id_of("proj")).unwrap();
        s.write(&ann, "proj/plan.txt", body(b"secret"), Some(6), 100)
            .await
            .unwrap();
        s.mkdir(&ann, "ann/shared").unwrap();
        s.write(&ann, "ann/shared/f", body(b"shared"), Some(6), 100)
            .await
            .unwrap();
        // A grant names a group that exists, and is bound to its id.
        assert!(matches!(
            s.set_properties(
                &ann,
                "ann/shared",
                &[(GROUP_READ.into(), "nope".into())],
                &|_| { Ok(None) }
            ),
            Err(Error::Invalid(_))
        ));
        let node = s
            .set_properties(
                &ann,
                "ann/shared",
                &[(GROUP_READ.into(), "ivo://cadc.nrc.ca/gms?proj".into())],
                &group_ids,
            )
            .unwrap();
        assert_eq!(grant_names(&node.group_read), "proj");
        assert_eq!(read_all(&s, &bob, "ann/shared/f").await.unwrap(), b"shared");
        assert_eq!(
            read_all(&s, &bob, "proj/plan.txt").await.unwrap(),
            b"secret"
        );

        // A later group of the same name (another id) gets neither the space nor the grant.
        let later = Who {
            ids: [("bob".to_string(), id_of("bob")), ("proj".to_string(), 99)].into(),
            ..who("bob", &[("proj", Role::Admin)])
        };
        assert!(matches!(
            read_all(&s, &later, "ann/shared/f").await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            read_all(&s, &later, "proj/plan.txt").await,
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            s.write(&later, "proj/x", body(b"x"), None, 100).await,
            Err(Error::NotFound(_))
        ));
        // Its own space replaces the old one, empty.
        s.ensure_space("proj", "bob", 99).unwrap();
        assert_eq!(s.space_id("proj").unwrap(), Some(99));
        assert_eq!(
            s.list(&later, "proj")
                .unwrap()
                .iter()
                .map(|n| n.name().to_string())
                .collect::<Vec<_>>(),
            ["public", "tmp"]
        );
        assert!(s.node(&ann, "proj/plan.txt").is_err());

        // Grants to a group go with it; a space of a later holder is not removed for an
        // earlier one.
        assert_eq!(s.revoke_group("proj", Some(id_of("proj"))).unwrap(), 1);
        assert!(s.node(&ann, "ann/shared").unwrap().group_read.is_empty());
        assert!(!s.remove_space_of("proj", id_of("proj")).await.unwrap());
        assert!(s.remove_space_of("proj", 99).await.unwrap());
        assert!(s.space_id("proj").unwrap().is_none());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(
            walk(&tmp.path().join("bytes")).len(),
            1,
            "only ann/shared/f"
        );
    }

    #[tokio::test]
    async fn an_empty_data_node_is_made_only_where_there_is_none() {
        let (_tmp, s) = storage(1 << 20);
        let ann = who("ann", &[]);
        s.write(&ann, "ann/f", body(b"bytes"), Some(5), 100)
            .await
            .unwrap();
        assert!(matches!(
            s.create_data(&ann, "ann/f").await,
            Err(Error::Conflict(_))
        ));
        assert_eq!(read_all(&s, &ann, "ann/f").await.unwrap(), b"bytes");
        let n = s.create_data(&ann, "ann/g").await.unwrap();
        assert_eq!((n.kind, n.size), (Kind::Data, 0));
        assert!(read_all(&s, &ann, "ann/g").await.unwrap().is_empty());
        assert!(matches!(
            s.create_data(&who("bob", &[]), "ann/h").await,
            Err(Error::NotFound(_))
        ));
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.path().is_dir() {
                    out.extend(walk(&e.path()));
                } else {
                    out.push(e.path());
                }
            }
        }
        out
    }
}
