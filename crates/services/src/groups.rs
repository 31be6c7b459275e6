//! Groups of users with roles. A group owns a storage space and a MyDB schema, both named
//! after it (users and groups share one name space, without regard to case); its members
//! reach them with their role's rights. The owner (its creator) and its admins invite
//! members and set their roles; an invited user has no access until they accept, and may
//! decline; members may leave; only the owner dissolves the group. Kept in the account
//! database, so that removing a user removes their memberships and the groups they own.
//!
//! Names are reused, so what a name is given must not outlive its holder. Every holder of
//! a name (a user, a group) gets an id that is never given again ([`Accounts::user_id`],
//! [`Accounts::group_id`]): storage spaces and the group grants of nodes are bound to ids,
//! so a space or a grant made for an earlier `proj` reaches nobody in a later `proj`.
//! Dissolving a group and removing a user delete their spaces, tables and grants
//! ([`purge`]); a removed user's name is never given again ([`Accounts::remove_user`]);
//! and names that stand for schemas, schemes or spaces of the service itself
//! ([`RESERVED_NAMES`]) are no one's.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::accounts::{Accounts, check_user_name};
use crate::error::{Error, Result};
use crate::jobs::now_ms;
use crate::mydb::MyDb;
use crate::storage::Storage;

/// Names no user or group may take (compared without regard to case): the schemas queries
/// name (`mydb`, `tap_upload`, `tap_schema`, `ivoa`, DataFusion's `public`,
/// `information_schema`, `datafusion`, `pg_catalog`), the schemes of file names (`vos://`,
/// `mydb://`, `http://`, ...), the containers of every home (`public`, `tmp`) and the
/// identities of the service (`admin`, `anonymous`).
pub const RESERVED_NAMES: &[&str] = &[
    "mydb",
    "tap_upload",
    "tap_schema",
    "ivoa",
    "public",
    "tmp",
    "information_schema",
    "pg_catalog",
    "datafusion",
    "vos",
    "http",
    "https",
    "file",
    "s3",
    "ivo",
    "admin",
    "anonymous",
];

/// Whether `name` is reserved ([`RESERVED_NAMES`]).
pub fn is_reserved(name: &str) -> bool {
    RESERVED_NAMES.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// The tables of this module, in the account database beside `users` and `groups`.
/// `principals` gives each holder of a name an id that is never reused (AUTOINCREMENT);
/// `stamp` tells holders of the same name apart (a user's uid and creation time, a group's
/// owner and creation time), so that a holder deleted by a path that did not retire its id
/// still gets no successor's id. The trigger keeps reserved and retired names, and names
/// of groups in another case, from becoming users (the insert is ignored, which
/// `create_user` reports as a name that is taken).
const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS principals (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        stamp TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        gone_ms INTEGER
    );
    CREATE UNIQUE INDEX IF NOT EXISTS principals_live ON principals (name) WHERE gone_ms IS NULL;
    CREATE TABLE IF NOT EXISTS invitations (
        grp TEXT NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
        user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        role TEXT NOT NULL,
        invited_by TEXT NOT NULL,
        invited_ms INTEGER NOT NULL,
        PRIMARY KEY (grp, user)
    );
    CREATE INDEX IF NOT EXISTS invitations_by_user ON invitations (user);
    CREATE TABLE IF NOT EXISTS retired_names (
        name TEXT PRIMARY KEY COLLATE NOCASE,
        retired_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS reserved_names (name TEXT PRIMARY KEY COLLATE NOCASE);
";

/// The last object [`SCHEMA`] and [`ensure_schema`] make: when it exists, all do.
const SCHEMA_MARK: &str = "users_name_free_v1";

fn ensure_schema(db: &Connection) -> Result<()> {
    let done: bool = db.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = ?1)",
        [SCHEMA_MARK],
        |r| r.get(0),
    )?;
    if done {
        return Ok(());
    }
    db.execute_batch(SCHEMA)?;
    for name in RESERVED_NAMES {
        db.execute(
            "INSERT OR IGNORE INTO reserved_names (name) VALUES (?1)",
            [name],
        )?;
    }
    db.execute_batch(&format!(
        "CREATE TRIGGER IF NOT EXISTS {SCHEMA_MARK} BEFORE INSERT ON users
         WHEN EXISTS (SELECT 1 FROM retired_names WHERE name = NEW.name)
           OR EXISTS (SELECT 1 FROM reserved_names WHERE name = NEW.name)
           OR EXISTS (SELECT 1 FROM groups WHERE name = NEW.name COLLATE NOCASE)
         BEGIN SELECT RAISE(IGNORE); END;"
    ))?;
    Ok(())
}

/// A member's role in a group, from most to least rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Created the group; dissolves it; manages everyone.
    Owner,
    /// Manages read-write and read-only members; reads and writes.
    Admin,
    /// Reads and writes the group's storage and tables.
    ReadWrite,
    /// Reads them.
    ReadOnly,
}

impl Role {
    /// The role's name: `owner`, `admin`, `rw`, `ro`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::ReadWrite => "rw",
            Role::ReadOnly => "ro",
        }
    }

    /// Reads a role's name (`read-write` and `read-only` are accepted too).
    pub fn parse(text: &str) -> Result<Self> {
        Ok(match text.trim().to_ascii_lowercase().as_str() {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            "rw" | "read-write" | "readwrite" | "write" => Role::ReadWrite,
            "ro" | "read-only" | "readonly" | "read" => Role::ReadOnly,
            other => {
                return Err(Error::Invalid(format!(
                    "role '{other}' is not one of owner, admin, rw, ro"
                )));
            }
        })
    }

    /// Whether the role may change the group's files and tables.
    pub fn writes(self) -> bool {
        self <= Role::ReadWrite
    }

    /// Whether the role may manage members.
    pub fn manages(self) -> bool {
        self <= Role::Admin
    }
}

/// A group as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Its owner.
    pub owner: String,
    /// When it was created, ms since the epoch.
    pub created_ms: i64,
    /// Its id, never given to another group or user.
    pub id: i64,
}

/// What [`Accounts::set_member`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The user is invited with the role: no access until they accept.
    Invited,
    /// The user was a member already: their role changed.
    RoleChanged,
}

impl Added {
    /// `invited` or `member`.
    pub fn status(self) -> &'static str {
        match self {
            Added::Invited => "invited",
            Added::RoleChanged => "member",
        }
    }
}

/// A user or group that no longer exists, whose storage space, MyDB tables and (for a
/// group) grants are to be deleted by [`purge`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gone {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: i64,
    /// Whether it was a group.
    pub group: bool,
}

fn read_role(text: String) -> rusqlite::Result<Role> {
    Role::parse(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// The present holder of `name`: `user` or `group`, and its stamp (what tells it from
/// earlier holders of the name).
fn holder(db: &Connection, name: &str) -> Result<Option<(&'static str, String)>> {
    let user: Option<String> = db
        .query_row(
            "SELECT uid || ':' || created_ms FROM users WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(stamp) = user {
        return Ok(Some(("user", stamp)));
    }
    let group: Option<String> = db
        .query_row(
            "SELECT owner || ':' || created_ms FROM groups WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    Ok(group.map(|stamp| ("group", stamp)))
}

fn live_id(db: &Connection, name: &str, kind: &str, stamp: &str) -> Result<Option<i64>> {
    Ok(db
        .query_row(
            "SELECT id FROM principals WHERE name = ?1 AND kind = ?2 AND stamp = ?3 \
             AND gone_ms IS NULL",
            params![name, kind, stamp],
            |r| r.get(0),
        )
        .optional()?)
}

/// A new id for the holder of `name`; earlier holders' ids are retired.
fn bind(db: &Connection, name: &str, kind: &str, stamp: &str) -> Result<i64> {
    let now = now_ms();
    db.execute(
        "UPDATE principals SET gone_ms = ?2 WHERE name = ?1 AND gone_ms IS NULL",
        params![name, now],
    )?;
    db.execute(
        "INSERT INTO principals (name, kind, stamp, created_ms) VALUES (?1, ?2, ?3, ?4)",
        params![name, kind, stamp, now],
    )?;
    Ok(db.last_insert_rowid())
}

/// The id of the present holder of `name` if it is a `kind`, given one on first use.
fn principal(db: &mut Connection, name: &str, kind: &str) -> Result<Option<i64>> {
    match holder(db, name)? {
        Some((k, stamp)) if k == kind => {
            if let Some(id) = live_id(db, name, k, &stamp)? {
                return Ok(Some(id));
            }
        }
        _ => return Ok(None),
    }
    // First use (or a holder deleted without retiring its id): bind, once.
    let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let id = match holder(&tx, name)? {
        Some((k, stamp)) if k == kind => match live_id(&tx, name, k, &stamp)? {
            Some(id) => Some(id),
            None => Some(bind(&tx, name, k, &stamp)?),
        },
        _ => None,
    };
    tx.commit()?;
    Ok(id)
}

/// Refuses a name that is reserved, retired, or held by a user or group (in any case).
pub(crate) fn name_free(db: &Connection, name: &str) -> Result<()> {
    if is_reserved(name) {
        return Err(Error::Invalid(format!(
            "'{name}' is reserved: it names a schema, a scheme or a part of the service"
        )));
    }
    let retired: bool = db.query_row(
        "SELECT EXISTS (SELECT 1 FROM retired_names WHERE name = ?1)",
        [name],
        |r| r.get(0),
    )?;
    if retired {
        return Err(Error::Conflict(format!(
            "'{name}' was the name of a removed user and is not given again"
        )));
    }
    let user: Option<String> = db
        .query_row(
            "SELECT name FROM users WHERE name = ?1 COLLATE NOCASE",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(u) = user {
        return Err(Error::Conflict(format!("'{u}' is the name of a user")));
    }
    let group: Option<String> = db
        .query_row(
            "SELECT name FROM groups WHERE name = ?1 COLLATE NOCASE",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(g) = group {
        return Err(Error::Conflict(format!("group '{g}' already exists")));
    }
    Ok(())
}

impl Accounts {
    /// The account database with this module's tables.
    pub(crate) fn gdb(&self) -> Result<std::sync::MutexGuard<'_, Connection>> {
        let db = self.db();
        ensure_schema(&db)?;
        Ok(db)
    }

    /// Refuses (400 or 409) a name a new user or group may not take: reserved
    /// ([`RESERVED_NAMES`]), once a removed user's, or held by a user or group in any case.
    pub fn check_name_free(&self, name: &str) -> Result<()> {
        let db = self.gdb()?;
        name_free(&db, name)
    }

    /// The id of user `name` (`None` when there is no such user): never the id of an
    /// earlier user or group of that name.
    pub fn user_id(&self, name: &str) -> Result<Option<i64>> {
        let mut db = self.gdb()?;
        principal(&mut db, name, "user")
    }

    /// The id of group `name` (`None` when there is no such group): never the id of an
    /// earlier group or user of that name.
    pub fn group_id(&self, name: &str) -> Result<Option<i64>> {
        let mut db = self.gdb()?;
        principal(&mut db, name, "group")
    }

    /// The users and groups that are gone (removed, dissolved), by id.
    pub fn gone(&self) -> Result<HashMap<i64, Gone>> {
        let db = self.gdb()?;
        let mut stmt =
            db.prepare("SELECT id, name, kind FROM principals WHERE gone_ms IS NOT NULL")?;
        let rows = stmt.query_map([], |r| {
            Ok(Gone {
                id: r.get(0)?,
                name: r.get(1)?,
                group: r.get::<_, String>(2)? == "group",
            })
        })?;
        rows.map(|g| g.map(|g| (g.id, g)).map_err(Error::from))
            .collect()
    }

    /// Creates group `name`, owned by `owner`.
    pub fn create_group(&self, owner: &str, name: &str) -> Result<Group> {
        check_user_name(name).map_err(|_| {
            Error::Invalid(format!(
                "group name '{name}' is not allowed: use a letter, then letters, digits, '_' \
                 or '-', at most 32 characters"
            ))
        })?;
        let mut db = self.gdb()?;
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        name_free(&tx, name)?;
        let created_ms = now_ms();
        tx.execute(
            "INSERT INTO groups (name, owner, created_ms) VALUES (?1, ?2, ?3)",
            params![name, owner, created_ms],
        )?;
        tx.execute(
            "INSERT INTO members (grp, user, role) VALUES (?1, ?2, 'owner')",
            params![name, owner],
        )?;
        let id = bind(&tx, name, "group", &format!("{owner}:{created_ms}"))?;
        tx.commit()?;
        Ok(Group {
            name: name.to_string(),
            owner: owner.to_string(),
            created_ms,
            id,
        })
    }

    /// Group `name`, if there is one.
    pub fn group(&self, name: &str) -> Result<Option<Group>> {
        let found: Option<(String, String, i64)> = self
            .db()
            .query_row(
                "SELECT name, owner, created_ms FROM groups WHERE name = ?1",
                [name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let Some((name, owner, created_ms)) = found else {
            return Ok(None);
        };
        let Some(id) = self.group_id(&name)? else {
            return Ok(None);
        };
        Ok(Some(Group {
            name,
            owner,
            created_ms,
            id,
        }))
    }

    /// The groups `user` belongs to, with their role in each (not those they are only
    /// invited to).
    pub fn groups_of(&self, user: &str) -> Result<Vec<(String, Role)>> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT grp, role FROM members WHERE user = ?1 ORDER BY grp")?;
        let rows = stmt.query_map([user], |r| Ok((r.get(0)?, read_role(r.get(1)?)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The groups `user` belongs to, with their role in each and each group's id.
    pub fn memberships(&self, user: &str) -> Result<Vec<(String, Role, i64)>> {
        let mut out = Vec::new();
        for (g, role) in self.groups_of(user)? {
            if let Some(id) = self.group_id(&g)? {
                out.push((g, role, id));
            }
        }
        Ok(out)
    }

    /// `user`'s role in `group`, if a member.
    pub fn role(&self, group: &str, user: &str) -> Result<Option<Role>> {
        let role: Option<String> = self
            .db()
            .query_row(
                "SELECT role FROM members WHERE grp = ?1 AND user = ?2",
                [group, user],
                |r| r.get(0),
            )
            .optional()?;
        role.map(|r| Role::parse(&r)).transpose()
    }

    /// The members of `group` with their roles, for a caller who is one of them.
    pub fn members(&self, caller: &str, group: &str) -> Result<Vec<(String, Role)>> {
        self.caller_role(caller, group)?;
        let db = self.db();
        let mut stmt = db.prepare("SELECT user, role FROM members WHERE grp = ?1 ORDER BY user")?;
        let rows = stmt.query_map([group], |r| Ok((r.get(0)?, read_role(r.get(1)?)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The users invited to `group` who have not answered, with the roles they are
    /// offered, for a caller who is a member.
    pub fn invitations(&self, caller: &str, group: &str) -> Result<Vec<(String, Role)>> {
        self.caller_role(caller, group)?;
        let db = self.gdb()?;
        let mut stmt =
            db.prepare("SELECT user, role FROM invitations WHERE grp = ?1 ORDER BY user")?;
        let rows = stmt.query_map([group], |r| Ok((r.get(0)?, read_role(r.get(1)?)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The groups `user` is invited to, with the role offered and who invited them.
    pub fn invitations_of(&self, user: &str) -> Result<Vec<(String, Role, String)>> {
        let db = self.gdb()?;
        let mut stmt = db.prepare(
            "SELECT grp, role, invited_by FROM invitations WHERE user = ?1 ORDER BY grp",
        )?;
        let rows = stmt.query_map([user], |r| {
            Ok((r.get(0)?, read_role(r.get(1)?)?, r.get(2)?))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The role `user` is invited to take in `group`, if invited.
    pub fn invitation(&self, group: &str, user: &str) -> Result<Option<Role>> {
        let role: Option<String> = self
            .gdb()?
            .query_row(
                "SELECT role FROM invitations WHERE grp = ?1 AND user = ?2",
                [group, user],
                |r| r.get(0),
            )
            .optional()?;
        role.map(|r| Role::parse(&r)).transpose()
    }

    /// The caller's role; a group they are not in does not exist for them.
    fn caller_role(&self, caller: &str, group: &str) -> Result<Role> {
        self.role(group, caller)?
            .ok_or_else(|| Error::NotFound(format!("no group '{group}' of yours")))
    }

    /// Invites `user` to `group` with `role` (they have no access until they accept), or
    /// changes the role of a member or of an invitation. The owner and admins manage
    /// read-write and read-only members; only the owner makes admins. There is one owner.
    pub fn set_member(&self, caller: &str, group: &str, user: &str, role: Role) -> Result<Added> {
        let mine = self.caller_role(caller, group)?;
        if !mine.manages() {
            return Err(Error::Forbidden(format!(
                "only the owner and admins of '{group}' manage its members"
            )));
        }
        if role == Role::Owner {
            return Err(Error::Invalid(format!(
                "a group has one owner; '{group}' is owned by its creator"
            )));
        }
        if self.user(user)?.is_none() {
            return Err(Error::NotFound(format!("no user '{user}'")));
        }
        let theirs = self.role(group, user)?;
        if theirs == Some(Role::Owner) {
            return Err(Error::Forbidden(format!(
                "the owner's role in '{group}' cannot change"
            )));
        }
        let offered = self.invitation(group, user)?;
        if mine != Role::Owner
            && (role == Role::Admin || theirs == Some(Role::Admin) || offered == Some(Role::Admin))
        {
            return Err(Error::Forbidden(format!(
                "only the owner of '{group}' makes or unmakes admins"
            )));
        }
        let db = self.gdb()?;
        if theirs.is_some() {
            db.execute(
                "UPDATE members SET role = ?3 WHERE grp = ?1 AND user = ?2",
                params![group, user, role.as_str()],
            )?;
            return Ok(Added::RoleChanged);
        }
        db.execute(
            "INSERT INTO invitations (grp, user, role, invited_by, invited_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (grp, user) DO UPDATE SET role = excluded.role,
                 invited_by = excluded.invited_by, invited_ms = excluded.invited_ms",
            params![group, user, role.as_str(), caller, now_ms()],
        )?;
        Ok(Added::Invited)
    }

    /// `user` accepts their invitation to `group` and becomes a member with the role it
    /// offers.
    pub fn accept_invitation(&self, user: &str, group: &str) -> Result<Role> {
        let mut db = self.gdb()?;
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let role: Option<String> = tx
            .query_row(
                "SELECT role FROM invitations WHERE grp = ?1 AND user = ?2",
                [group, user],
                |r| r.get(0),
            )
            .optional()?;
        let role = Role::parse(
            &role.ok_or_else(|| Error::NotFound(format!("no invitation to '{group}' for you")))?,
        )?;
        tx.execute(
            "INSERT INTO members (grp, user, role) VALUES (?1, ?2, ?3)
             ON CONFLICT (grp, user) DO NOTHING",
            params![group, user, role.as_str()],
        )?;
        tx.execute(
            "DELETE FROM invitations WHERE grp = ?1 AND user = ?2",
            [group, user],
        )?;
        tx.commit()?;
        Ok(role)
    }

    /// `user` declines their invitation to `group`.
    pub fn decline_invitation(&self, user: &str, group: &str) -> Result<()> {
        let n = self.gdb()?.execute(
            "DELETE FROM invitations WHERE grp = ?1 AND user = ?2",
            [group, user],
        )?;
        if n == 0 {
            return Err(Error::NotFound(format!(
                "no invitation to '{group}' for you"
            )));
        }
        Ok(())
    }

    /// Removes `user` from `group`: by its owner or an admin (an admin only read-write and
    /// read-only members), or by the member themselves (who leave). The owner cannot
    /// leave; they dissolve the group. An invitation is withdrawn the same way, or
    /// declined by the invited user.
    pub fn remove_member(&self, caller: &str, group: &str, user: &str) -> Result<()> {
        let theirs = self.role(group, user)?;
        if theirs.is_none()
            && let Some(offered) = self.invitation(group, user)?
        {
            let allowed = caller == user
                || match self.role(group, caller)? {
                    Some(Role::Owner) => true,
                    Some(Role::Admin) => offered != Role::Admin,
                    Some(_) => false,
                    None => return Err(Error::NotFound(format!("no group '{group}' of yours"))),
                };
            if !allowed {
                return Err(Error::Forbidden(format!(
                    "you may not withdraw the invitation of '{user}' to '{group}'"
                )));
            }
            return self.decline_invitation(user, group);
        }
        let mine = self.caller_role(caller, group)?;
        let theirs = theirs
            .ok_or_else(|| Error::NotFound(format!("'{user}' is not a member of '{group}'")))?;
        if theirs == Role::Owner {
            return Err(Error::Forbidden(format!(
                "the owner cannot leave '{group}'; dissolve it instead"
            )));
        }
        let allowed =
            caller == user || mine == Role::Owner || (mine == Role::Admin && theirs != Role::Admin);
        if !allowed {
            return Err(Error::Forbidden(format!(
                "you may not remove '{user}' from '{group}'"
            )));
        }
        self.db().execute(
            "DELETE FROM members WHERE grp = ?1 AND user = ?2",
            [group, user],
        )?;
        Ok(())
    }

    /// Dissolves `group`: its owner only. Returns what [`purge`] then deletes (its storage
    /// space, tables and grants).
    pub fn dissolve_group(&self, caller: &str, group: &str) -> Result<Gone> {
        if self.caller_role(caller, group)? != Role::Owner {
            return Err(Error::Forbidden(format!(
                "only the owner of '{group}' dissolves it"
            )));
        }
        let id = self
            .group_id(group)?
            .ok_or_else(|| Error::NotFound(format!("no group '{group}' of yours")))?;
        let mut db = self.gdb()?;
        let tx = db.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute("DELETE FROM groups WHERE name = ?1", [group])?;
        tx.execute(
            "UPDATE principals SET gone_ms = ?2 WHERE id = ?1 AND gone_ms IS NULL",
            params![id, now_ms()],
        )?;
        tx.commit()?;
        Ok(Gone {
            name: group.to_string(),
            id,
            group: true,
        })
    }

    /// Removes user `name` with their tokens, memberships, invitations and the groups they
    /// own. Their name is retired: no user or group is ever given it again, so nothing
    /// that still names them (jobs, links, logs) can come to mean someone else. Returns
    /// the user and the groups that went with them, for [`purge`].
    pub fn remove_user(&self, name: &str) -> Result<Vec<Gone>> {
        let id = self
            .user_id(name)?
            .ok_or_else(|| Error::NotFound(format!("user '{name}'")))?;
        let mut gone = vec![Gone {
            name: name.to_string(),
            id,
            group: false,
        }];
        let owned: Vec<String> = {
            let db = self.db();
            let mut stmt = db.prepare("SELECT name FROM groups WHERE owner = ?1 ORDER BY name")?;
            let rows = stmt.query_map([name], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        for g in owned {
            if let Some(id) = self.group_id(&g)? {
                gone.push(Gone {
                    name: g,
                    id,
                    group: true,
                });
            }
        }
        self.gdb()?.execute(
            "INSERT OR IGNORE INTO retired_names (name, retired_ms) VALUES (?1, ?2)",
            params![name, now_ms()],
        )?;
        self.delete_user(name)?;
        let db = self.gdb()?;
        for g in &gone {
            db.execute(
                "UPDATE principals SET gone_ms = ?2 WHERE id = ?1 AND gone_ms IS NULL",
                params![g.id, now_ms()],
            )?;
        }
        Ok(gone)
    }
}

/// Deletes what `gone` had: its storage space with the bytes of its files, its MyDB tables
/// and spatial indexes, and, for a group, the grants nodes anywhere give it. A space that
/// a later holder of the name has made (bound to another id) is left alone.
pub async fn purge(storage: &Storage, mydb: &MyDb, gone: &Gone) -> Result<()> {
    if gone.group {
        storage.revoke_group(&gone.name, Some(gone.id))?;
    }
    if storage.remove_space_of(&gone.name, gone.id).await? {
        mydb.remove_space(&gone.name)?;
    }
    tracing::info!(
        name = gone.name,
        id = gone.id,
        group = gone.group,
        "space, tables and grants removed"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> (tempfile::TempDir, Accounts) {
        let tmp = tempfile::tempdir().unwrap();
        let a = Accounts::open(
            &tmp.path().join("a.sqlite"),
            std::time::Duration::from_secs(3600),
        )
        .unwrap();
        for u in ["ann", "bob", "cat", "dan"] {
            a.create_user(u, "password1", None, false).unwrap();
        }
        (tmp, a)
    }

    /// `user` accepts an invitation to `group` from its owner `owner`.
    fn join(a: &Accounts, owner: &str, group: &str, user: &str, role: Role) {
        assert_eq!(
            a.set_member(owner, group, user, role).unwrap(),
            Added::Invited
        );
        assert_eq!(a.accept_invitation(user, group).unwrap(), role);
    }

    #[test]
    fn roles_decide_who_manages_whom() {
        let (_tmp, a) = accounts();
        a.create_group("ann", "survey").unwrap();
        assert!(matches!(
            a.create_group("bob", "survey"),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            a.create_group("bob", "ann"),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            a.create_user("survey", "password1", None, false),
            Err(Error::Conflict(_))
        ));
        join(&a, "ann", "survey", "bob", Role::Admin);
        a.set_member("bob", "survey", "cat", Role::ReadWrite)
            .unwrap();
        a.accept_invitation("cat", "survey").unwrap();
        // An admin neither makes admins nor touches the owner.
        assert!(matches!(
            a.set_member("bob", "survey", "dan", Role::Admin),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            a.remove_member("bob", "survey", "ann"),
            Err(Error::Forbidden(_))
        ));
        // A read-write member manages nobody; a non-member does not see the group.
        assert!(matches!(
            a.set_member("cat", "survey", "dan", Role::ReadOnly),
            Err(Error::Forbidden(_))
        ));
        assert!(matches!(
            a.members("dan", "survey"),
            Err(Error::NotFound(_))
        ));
        join(&a, "bob", "survey", "dan", Role::ReadOnly);
        assert_eq!(
            a.members("dan", "survey").unwrap(),
            vec![
                ("ann".to_string(), Role::Owner),
                ("bob".to_string(), Role::Admin),
                ("cat".to_string(), Role::ReadWrite),
                ("dan".to_string(), Role::ReadOnly),
            ]
        );
        assert_eq!(
            a.groups_of("cat").unwrap(),
            vec![("survey".to_string(), Role::ReadWrite)]
        );
        // A member's role changes at once; a member leaves; only the owner dissolves.
        assert_eq!(
            a.set_member("ann", "survey", "dan", Role::ReadWrite)
                .unwrap(),
            Added::RoleChanged
        );
        assert_eq!(a.role("survey", "dan").unwrap(), Some(Role::ReadWrite));
        a.remove_member("dan", "survey", "dan").unwrap();
        assert_eq!(a.role("survey", "dan").unwrap(), None);
        assert!(matches!(
            a.dissolve_group("bob", "survey"),
            Err(Error::Forbidden(_))
        ));
        let gone = a.dissolve_group("ann", "survey").unwrap();
        assert!(gone.group && gone.name == "survey");
        assert!(a.groups_of("cat").unwrap().is_empty());
        assert!(a.group("survey").unwrap().is_none());
    }

    #[test]
    fn an_added_user_has_no_access_until_they_accept() {
        let (_tmp, a) = accounts();
        a.create_group("ann", "proj").unwrap();
        a.set_member("ann", "proj", "bob", Role::ReadWrite).unwrap();
        // Invited, not a member: no role, not among their groups, the group's members
        // hidden from them; but they see the invitation.
        assert_eq!(a.role("proj", "bob").unwrap(), None);
        assert!(a.groups_of("bob").unwrap().is_empty());
        assert!(a.memberships("bob").unwrap().is_empty());
        assert!(matches!(a.members("bob", "proj"), Err(Error::NotFound(_))));
        assert_eq!(
            a.invitations_of("bob").unwrap(),
            vec![("proj".to_string(), Role::ReadWrite, "ann".to_string())]
        );
        assert_eq!(
            a.invitations("ann", "proj").unwrap(),
            vec![("bob".to_string(), Role::ReadWrite)]
        );
        // Someone else cannot accept it for them.
        assert!(matches!(
            a.accept_invitation("cat", "proj"),
            Err(Error::NotFound(_))
        ));
        a.accept_invitation("bob", "proj").unwrap();
        assert_eq!(a.role("proj", "bob").unwrap(), Some(Role::ReadWrite));
        assert!(a.invitations_of("bob").unwrap().is_empty());
        // Declined, by the invitation's route or by removing oneself.
        a.set_member("ann", "proj", "cat", Role::ReadOnly).unwrap();
        a.decline_invitation("cat", "proj").unwrap();
        assert_eq!(a.role("proj", "cat").unwrap(), None);
        assert!(matches!(
            a.accept_invitation("cat", "proj"),
            Err(Error::NotFound(_))
        ));
        a.set_member("ann", "proj", "cat", Role::ReadOnly).unwrap();
        a.remove_member("cat", "proj", "cat").unwrap();
        assert!(a.invitation("proj", "cat").unwrap().is_none());
        // Withdrawn by the owner; a stranger cannot touch it.
        a.set_member("ann", "proj", "dan", Role::ReadOnly).unwrap();
        assert!(matches!(
            a.remove_member("cat", "proj", "dan"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            a.remove_member("bob", "proj", "dan"),
            Err(Error::Forbidden(_))
        ));
        a.remove_member("ann", "proj", "dan").unwrap();
        assert!(a.invitation("proj", "dan").unwrap().is_none());
        // Members leave.
        a.remove_member("bob", "proj", "bob").unwrap();
        assert!(a.groups_of("bob").unwrap().is_empty());
    }

    #[test]
    fn reserved_and_colliding_names_are_refused() {
        let (_tmp, a) = accounts();
        for name in [
            "mydb",
            "MyDB",
            "tap_upload",
            "TAP_SCHEMA",
            "ivoa",
            "public",
            "tmp",
        ] {
            assert!(
                matches!(a.create_group("ann", name), Err(Error::Invalid(_))),
                "{name}"
            );
        }
        for name in ["information_schema", "admin", "anonymous", "vos"] {
            assert!(a.check_name_free(name).is_err(), "{name}");
        }
        // Users and groups share one name space whatever the case.
        assert!(matches!(
            a.create_group("ann", "Bob"),
            Err(Error::Conflict(_))
        ));
        a.create_group("ann", "proj").unwrap();
        assert!(matches!(
            a.create_group("bob", "PROJ"),
            Err(Error::Conflict(_))
        ));
        // New users cannot take a reserved name or a group's name in another case.
        for name in ["mydb", "Tap_Upload", "anonymous", "Proj"] {
            let refused = a.create_user(name, "password1", None, false);
            if name == "Proj" {
                assert!(matches!(refused, Err(Error::Conflict(_))), "{name}");
            } else {
                assert!(matches!(refused, Err(Error::Invalid(_))), "{name}");
            }
            assert!(a.user(name).unwrap().is_none(), "{name}");
        }
    }

    #[test]
    fn ids_are_never_reused_and_removed_users_names_are_retired() {
        let (_tmp, a) = accounts();
        let first = a.create_group("ann", "proj").unwrap().id;
        assert_eq!(a.group_id("proj").unwrap(), Some(first));
        let gone = a.dissolve_group("ann", "proj").unwrap();
        assert_eq!(gone.id, first);
        assert_eq!(a.group_id("proj").unwrap(), None);
        // The same name later is another group.
        let second = a.create_group("bob", "proj").unwrap().id;
        assert_ne!(second, first);
        assert_eq!(a.group("proj").unwrap().unwrap().id, second);

        // A user's id is stable while they exist.
        let cat = a.user_id("cat").unwrap().unwrap();
        assert_eq!(a.user_id("cat").unwrap(), Some(cat));
        assert_eq!(a.user_id("proj").unwrap(), None);
        assert_eq!(a.group_id("cat").unwrap(), None);
        // Removing a user takes the groups they own; their name is never given again.
        a.create_group("cat", "cats").unwrap();
        join(&a, "cat", "cats", "dan", Role::ReadOnly);
        a.set_member("bob", "proj", "cat", Role::ReadOnly).unwrap();
        let gone = a.remove_user("cat").unwrap();
        assert_eq!(gone.len(), 2);
        assert!(!gone[0].group && gone[0].name == "cat" && gone[0].id == cat);
        assert!(gone[1].group && gone[1].name == "cats");
        assert!(a.user("cat").unwrap().is_none());
        assert!(a.group("cats").unwrap().is_none());
        assert!(a.groups_of("dan").unwrap().is_empty());
        assert!(a.invitations("bob", "proj").unwrap().is_empty());
        assert!(matches!(
            a.create_user("cat", "password1", None, false),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            a.create_group("dan", "cat"),
            Err(Error::Conflict(m)) if m.contains("removed user")
        ));
        assert!(matches!(a.remove_user("cat"), Err(Error::NotFound(_))));
        // A dissolved group's name is free: its new holder is new.
        let cats = a.create_group("dan", "cats").unwrap();
        assert!(cats.id != gone[1].id && cats.id != gone[0].id);

        // A holder deleted without retiring its id (a path that knows nothing of ids)
        // still gives its successor a new one.
        let dan = a.user_id("dan").unwrap().unwrap();
        a.delete_user("dan").unwrap();
        a.create_user("dan", "password1", None, false).unwrap();
        let new_dan = a.user_id("dan").unwrap().unwrap();
        assert_ne!(new_dan, dan);
    }
}
