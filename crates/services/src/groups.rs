//! Groups of users with roles. A group owns a storage space and a MyDB schema, both named
//! after it (users and groups share one name space); its members reach them with their
//! role's rights. The owner (its creator) and its admins manage members; only the owner
//! dissolves it. Kept in the account database, so that removing a user removes their
//! memberships and the groups they own.

use rusqlite::{OptionalExtension, params};

use crate::accounts::{Accounts, check_user_name};
use crate::error::{Error, Result};
use crate::jobs::now_ms;

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
}

fn read_role(text: String) -> rusqlite::Result<Role> {
    Role::parse(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl Accounts {
    /// Creates group `name`, owned by `owner`.
    pub fn create_group(&self, owner: &str, name: &str) -> Result<Group> {
        check_user_name(name).map_err(|_| {
            Error::Invalid(format!(
                "group name '{name}' is not allowed: use a letter, then letters, digits, '_' \
                 or '-', at most 32 characters"
            ))
        })?;
        let mut db = self.db();
        let tx = db.transaction()?;
        let user: Option<String> = tx
            .query_row("SELECT name FROM users WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if user.is_some() {
            return Err(Error::Conflict(format!("'{name}' is the name of a user")));
        }
        let created_ms = now_ms();
        let inserted = tx.execute(
            "INSERT OR IGNORE INTO groups (name, owner, created_ms) VALUES (?1, ?2, ?3)",
            params![name, owner, created_ms],
        )?;
        if inserted == 0 {
            return Err(Error::Conflict(format!("group '{name}' already exists")));
        }
        tx.execute(
            "INSERT INTO members (grp, user, role) VALUES (?1, ?2, 'owner')",
            params![name, owner],
        )?;
        tx.commit()?;
        Ok(Group {
            name: name.to_string(),
            owner: owner.to_string(),
            created_ms,
        })
    }

    /// Group `name`, if there is one.
    pub fn group(&self, name: &str) -> Result<Option<Group>> {
        Ok(self
            .db()
            .query_row(
                "SELECT name, owner, created_ms FROM groups WHERE name = ?1",
                [name],
                |r| {
                    Ok(Group {
                        name: r.get(0)?,
                        owner: r.get(1)?,
                        created_ms: r.get(2)?,
                    })
                },
            )
            .optional()?)
    }

    /// The groups `user` belongs to, with their role in each.
    pub fn groups_of(&self, user: &str) -> Result<Vec<(String, Role)>> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT grp, role FROM members WHERE user = ?1 ORDER BY grp")?;
        let rows = stmt.query_map([user], |r| Ok((r.get(0)?, read_role(r.get(1)?)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
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

    /// The caller's role; a group they are not in does not exist for them.
    fn caller_role(&self, caller: &str, group: &str) -> Result<Role> {
        self.role(group, caller)?
            .ok_or_else(|| Error::NotFound(format!("no group '{group}' of yours")))
    }

    /// Adds `user` to `group` with `role`, or changes their role. The owner and admins
    /// manage read-write and read-only members; only the owner makes admins. There is one
    /// owner.
    pub fn set_member(&self, caller: &str, group: &str, user: &str, role: Role) -> Result<()> {
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
        if mine != Role::Owner && (role == Role::Admin || theirs == Some(Role::Admin)) {
            return Err(Error::Forbidden(format!(
                "only the owner of '{group}' makes or unmakes admins"
            )));
        }
        self.db().execute(
            "INSERT INTO members (grp, user, role) VALUES (?1, ?2, ?3)
             ON CONFLICT (grp, user) DO UPDATE SET role = excluded.role",
            params![group, user, role.as_str()],
        )?;
        Ok(())
    }

    /// Removes `user` from `group`: by its owner or an admin (an admin only read-write and
    /// read-only members), or by the member themselves. The owner cannot leave; they
    /// dissolve the group.
    pub fn remove_member(&self, caller: &str, group: &str, user: &str) -> Result<()> {
        let mine = self.caller_role(caller, group)?;
        let theirs = self
            .role(group, user)?
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

    /// Dissolves `group`: its owner only. The caller removes its storage and tables.
    pub fn dissolve_group(&self, caller: &str, group: &str) -> Result<()> {
        if self.caller_role(caller, group)? != Role::Owner {
            return Err(Error::Forbidden(format!(
                "only the owner of '{group}' dissolves it"
            )));
        }
        self.db()
            .execute("DELETE FROM groups WHERE name = ?1", [group])?;
        Ok(())
    }
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
        a.set_member("ann", "survey", "bob", Role::Admin).unwrap();
        a.set_member("bob", "survey", "cat", Role::ReadWrite)
            .unwrap();
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
        a.set_member("bob", "survey", "dan", Role::ReadOnly)
            .unwrap();
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
        // A member leaves; only the owner dissolves.
        a.remove_member("dan", "survey", "dan").unwrap();
        assert!(matches!(
            a.dissolve_group("bob", "survey"),
            Err(Error::Forbidden(_))
        ));
        a.dissolve_group("ann", "survey").unwrap();
        assert!(a.groups_of("cat").unwrap().is_empty());
        assert!(a.group("survey").unwrap().is_none());
    }
}
