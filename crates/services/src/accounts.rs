//! Accounts: users with argon2id password hashes, and the tokens they log in for.
//!
//! A token has Data Lab's shape, `user.uid.gid.$1$<8 characters>$<22 characters>`, so that
//! the unmodified `astro-datalab` client accepts it (the client silently replaces a token
//! of any other shape by the anonymous one). Its 30 random characters carry 180 bits; only
//! their SHA-256 is stored, so the database never holds a usable token. Every token has
//! scopes, an expiry time, and can be revoked (logout). The same token is accepted as
//! `Authorization: Bearer`, as Data Lab's `X-DL-AuthToken` header and as a cookie.
//!
//! Every password check ([`Accounts::check_password`], and through it [`Accounts::login`]
//! and [`Accounts::change_password`]) is throttled by where it comes from: failures are
//! counted per (user name, client address) and per client address, never per user name
//! alone, so that a stranger's guesses cannot lock a user out.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::Rng;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::jobs::now_ms;

/// The token Data Lab's clients send when nobody is logged in.
pub const ANONYMOUS_TOKEN: &str = "anonymous.0.0.anon_access";

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Query the catalogs.
    ReadCatalogs,
    /// Write to one's storage (VOSpace, MyDB).
    WriteStorage,
    /// Run asynchronous jobs.
    RunJobs,
    /// Manage users.
    Admin,
}

impl Scope {
    /// Every scope.
    pub const ALL: [Scope; 4] = [
        Scope::ReadCatalogs,
        Scope::WriteStorage,
        Scope::RunJobs,
        Scope::Admin,
    ];

    /// The scope's name, as given on the command line and shown by `whoami`.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ReadCatalogs => "catalogs:read",
            Scope::WriteStorage => "storage:write",
            Scope::RunJobs => "jobs:run",
            Scope::Admin => "admin",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scopes(u8);

impl Scopes {
    /// Everything a user who is not an administrator may do.
    pub fn user() -> Self {
        Self::of(&[Scope::ReadCatalogs, Scope::WriteStorage, Scope::RunJobs])
    }

    /// The set of `scopes`.
    pub fn of(scopes: &[Scope]) -> Self {
        Self(scopes.iter().fold(0, |b, s| b | s.bit()))
    }

    /// Whether `scope` is in the set.
    pub fn has(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// Parses a comma-separated list of scope names.
    pub fn parse(text: &str) -> Result<Self> {
        let mut out = Self::default();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let scope = Scope::ALL
                .into_iter()
                .find(|s| s.as_str() == name)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "unknown scope '{name}'; the scopes are {}",
                        Scope::ALL.map(Scope::as_str).join(", ")
                    ))
                })?;
            out.0 |= scope.bit();
        }
        Ok(out)
    }

    /// The names of the scopes in the set.
    pub fn names(self) -> Vec<&'static str> {
        Scope::ALL
            .into_iter()
            .filter(|s| self.has(*s))
            .map(Scope::as_str)
            .collect()
    }
}

/// A user as listed (never with the password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Numeric id (Data Lab's tokens carry it).
    pub uid: i64,
    /// Contact address, if given.
    pub email: Option<String>,
    /// Whether the user may manage users.
    pub admin: bool,
    /// When the account was made, ms since the epoch.
    pub created_ms: i64,
}

/// Who a request comes from, once its token is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Login name.
    pub user: String,
    /// What the token allows.
    pub scopes: Scopes,
    /// When the token expires, ms since the epoch.
    pub expires_ms: i64,
}

impl Identity {
    /// Refuses (403) unless the token carries `scope`.
    pub fn require(&self, scope: Scope) -> Result<()> {
        if self.scopes.has(scope) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "this token does not allow '{}'; log in again or ask for a token with that scope",
                scope.as_str()
            )))
        }
    }
}

/// A newly issued token: the only time its text is known.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The token, to send back on every request.
    pub token: String,
    /// When it expires, ms since the epoch.
    pub expires_ms: i64,
}

/// The account database.
pub struct Accounts {
    db: Mutex<Connection>,
    token_lifetime: Duration,
    throttle: Mutex<Throttle>,
}

/// Failed password checks allowed for one user name from one client address within
/// [`LOGIN_WINDOW_MS`]; more checks of that name from that address are refused until the
/// window ends. The same name from another address is not affected.
pub const LOGIN_ATTEMPTS: u32 = 5;
/// Failed password checks allowed from one client address within [`LOGIN_WINDOW_MS`],
/// whatever the names, so that one address cannot try a password on many users.
pub const ADDRESS_ATTEMPTS: u32 = 20;
/// The window of [`LOGIN_ATTEMPTS`] and [`ADDRESS_ATTEMPTS`], ms.
pub const LOGIN_WINDOW_MS: i64 = 5 * 60 * 1000;

/// Failures within one window.
#[derive(Debug)]
struct Window {
    /// Failed checks (and checks under way, counted until they succeed).
    count: u32,
    /// When the window began, ms since the epoch.
    first_ms: i64,
    /// Keyed digests of the wrong passwords counted, so that asking whether one of them
    /// is valid (Data Lab's client asks `isValidPassword` after a failed login) is not
    /// counted as another guess.
    wrong: Vec<[u8; 32]>,
}

impl Window {
    fn new(now: i64) -> Self {
        Self {
            count: 0,
            first_ms: now,
            wrong: Vec::new(),
        }
    }
}

/// Failed password checks by (user name, client address) and by client address.
struct Throttle {
    /// Key of the digests of wrong passwords, random per process; they never leave memory.
    key: [u8; 32],
    by_name: HashMap<(String, IpAddr), Window>,
    by_address: HashMap<IpAddr, Window>,
}

/// A password check under way: counted as a failure until it succeeds.
struct Attempt {
    name: (String, IpAddr),
    address: IpAddr,
    digest: [u8; 32],
    /// Whether it was counted.
    counted: bool,
}

/// The address failures are counted under: an IPv4 address as it is (IPv4-mapped IPv6
/// addresses too), an IPv6 address by its /64 network, which one subscriber usually holds
/// whole.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(s.into())
            }
        },
    }
}

/// A user name as a throttle key: names longer than any valid one are cut, so that a
/// failure costs a bounded amount of memory.
fn name_key(name: &str) -> String {
    name.chars().take(40).collect()
}

impl Throttle {
    fn new() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill(&mut key);
        Self {
            key,
            by_name: HashMap::new(),
            by_address: HashMap::new(),
        }
    }

    fn digest(&self, name: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Refuses a check while its name and address, or its address, has failed too often;
    /// otherwise counts it as a failure until [`Throttle::finish`] says otherwise. With
    /// `recount` false, a wrong password already counted for the name from the address is
    /// not counted again (it tells the caller nothing new).
    fn begin(
        &mut self,
        name: &str,
        password: &str,
        from: IpAddr,
        now: i64,
        recount: bool,
    ) -> Result<Attempt> {
        self.by_name
            .retain(|_, w| now - w.first_ms < LOGIN_WINDOW_MS);
        self.by_address
            .retain(|_, w| now - w.first_ms < LOGIN_WINDOW_MS);
        let address = address_key(from);
        let key = (name_key(name), address);
        let wait = |w: &Window| (LOGIN_WINDOW_MS - (now - w.first_ms)) / 1000 + 1;
        if let Some(w) = self.by_name.get(&key).filter(|w| w.count >= LOGIN_ATTEMPTS) {
            return Err(Error::RateLimited(format!(
                "too many failed password attempts for '{}' from your address: try again in {} s",
                key.0,
                wait(w)
            )));
        }
        if let Some(w) = self
            .by_address
            .get(&address)
            .filter(|w| w.count >= ADDRESS_ATTEMPTS)
        {
            return Err(Error::RateLimited(format!(
                "too many failed password attempts from your address: try again in {} s",
                wait(w)
            )));
        }
        let digest = self.digest(&key.0, password);
        let repeated = !recount
            && self
                .by_name
                .get(&key)
                .is_some_and(|w| w.wrong.contains(&digest));
        if !repeated {
            self.by_name
                .entry(key.clone())
                .or_insert_with(|| Window::new(now))
                .count += 1;
            self.by_address
                .entry(address)
                .or_insert_with(|| Window::new(now))
                .count += 1;
        }
        Ok(Attempt {
            name: key,
            address,
            digest,
            counted: !repeated,
        })
    }

    /// Ends a check: `Some(true)` if the password was right (the name's failures from
    /// that address are forgotten, the address's are kept), `Some(false)` if wrong,
    /// `None` if it could not be decided (it then counts for nothing).
    fn finish(&mut self, a: Attempt, outcome: Option<bool>) {
        if outcome == Some(false) {
            if let Some(w) = self.by_name.get_mut(&a.name)
                && !w.wrong.contains(&a.digest)
            {
                w.wrong.push(a.digest);
            }
            return;
        }
        if a.counted
            && let Some(w) = self.by_address.get_mut(&a.address)
        {
            w.count = w.count.saturating_sub(1);
            if w.count == 0 {
                self.by_address.remove(&a.address);
            }
        }
        if outcome == Some(true) {
            self.by_name.remove(&a.name);
        } else if a.counted
            && let Some(w) = self.by_name.get_mut(&a.name)
        {
            w.count = w.count.saturating_sub(1);
        }
    }
}

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA foreign_keys = ON;
    CREATE TABLE IF NOT EXISTS users (
        name TEXT PRIMARY KEY,
        uid INTEGER NOT NULL UNIQUE,
        password TEXT NOT NULL,
        email TEXT,
        admin INTEGER NOT NULL DEFAULT 0,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS tokens (
        hash TEXT PRIMARY KEY,
        user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        scopes INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS tokens_by_user ON tokens (user);
    CREATE TABLE IF NOT EXISTS groups (
        name TEXT PRIMARY KEY,
        owner TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS members (
        grp TEXT NOT NULL REFERENCES groups (name) ON DELETE CASCADE,
        user TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
        role TEXT NOT NULL,
        PRIMARY KEY (grp, user)
    );
    CREATE INDEX IF NOT EXISTS members_by_user ON members (user);
";

/// Data Lab numbers its users from here.
const FIRST_UID: i64 = 1001;

/// Checks a login name: a letter, then letters, digits, `_` or `-`, at most 32 in all. A
/// dot or slash would break the token's shape and the `vos://` and `mydb://` names.
pub fn check_user_name(name: &str) -> Result<()> {
    let ok = name.len() <= 32
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "user name '{name}' is not allowed: use a letter, then letters, digits, '_' or '-', \
             at most 32 characters"
        )))
    }
}

fn check_password(password: &str) -> Result<()> {
    if password.chars().count() < 8 {
        return Err(Error::Invalid(
            "the password is too short: use at least 8 characters".into(),
        ));
    }
    Ok(())
}

fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `n` characters of the md5-crypt alphabet, from the operating system's generator.
fn random_chars(n: usize) -> String {
    const ALPHABET: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..64)] as char)
        .collect()
}

impl Accounts {
    /// Opens (or creates) the account database at `path`; tokens issued at login live for
    /// `token_lifetime`.
    pub fn open(path: &Path, token_lifetime: Duration) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let db = Connection::open(path)?;
        db.busy_timeout(Duration::from_secs(5))?;
        db.execute_batch(SCHEMA)?;
        // Tokens issued on behalf of another (an OAuth client's, such as the notebook
        // hub's) name it, so that revoking the login revokes them too. Databases made
        // before that column existed gain it here.
        let has_parent: bool = db.query_row(
            "SELECT EXISTS (SELECT 1 FROM pragma_table_info('tokens') WHERE name = 'parent')",
            [],
            |r| r.get(0),
        )?;
        if !has_parent {
            db.execute_batch(
                "ALTER TABLE tokens ADD COLUMN parent TEXT;
                 CREATE INDEX IF NOT EXISTS tokens_by_parent ON tokens (parent);",
            )?;
        }
        // Made now, so that the first check of a missing user takes no longer than others.
        dummy_hash()?;
        Ok(Self {
            db: Mutex::new(db),
            token_lifetime,
            throttle: Mutex::new(Throttle::new()),
        })
    }

    fn throttle(&self) -> std::sync::MutexGuard<'_, Throttle> {
        self.throttle.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        // Every change is one statement, so a poisoned lock leaves the database whole.
        self.db.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates user `name`.
    pub fn create_user(
        &self,
        name: &str,
        password: &str,
        email: Option<&str>,
        admin: bool,
    ) -> Result<User> {
        check_user_name(name)?;
        check_password(password)?;
        let hash = hash_password(password)?;
        let db = self.gdb()?;
        let uid: i64 = db.query_row(
            "SELECT COALESCE(MAX(uid) + 1, ?1) FROM users",
            [FIRST_UID],
            |r| r.get(0),
        )?;
        let created_ms = now_ms();
        if self.user_exists(&db, name)? {
            return Err(Error::Conflict(format!("user '{name}' already exists")));
        }
        // Users and groups share one name space (both name a storage space and a schema);
        // reserved names, removed users' names and names differing only in case are refused.
        crate::groups::name_free(&db, name)?;
        let inserted = db.execute(
            "INSERT OR IGNORE INTO users (name, uid, password, email, admin, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![name, uid, hash, email, admin, created_ms],
        )?;
        if inserted == 0 {
            return Err(Error::Conflict(format!("user '{name}' already exists")));
        }
        Ok(User {
            name: name.to_string(),
            uid,
            email: email.map(str::to_string),
            admin,
            created_ms,
        })
    }

    fn user_exists(&self, db: &Connection, name: &str) -> Result<bool> {
        Ok(db.query_row(
            "SELECT EXISTS (SELECT 1 FROM users WHERE name = ?1)",
            [name],
            |r| r.get(0),
        )?)
    }

    /// User `name`, if there is one.
    pub fn user(&self, name: &str) -> Result<Option<User>> {
        Ok(self
            .db()
            .query_row(
                "SELECT name, uid, email, admin, created_ms FROM users WHERE name = ?1",
                [name],
                read_user,
            )
            .optional()?)
    }

    /// Every user, by name.
    pub fn users(&self) -> Result<Vec<User>> {
        let db = self.db();
        let mut stmt =
            db.prepare("SELECT name, uid, email, admin, created_ms FROM users ORDER BY name")?;
        let rows = stmt.query_map([], read_user)?;
        Ok(rows.collect::<std::result::Result<_, _>>()?)
    }

    /// Removes user `name` and their tokens.
    pub fn delete_user(&self, name: &str) -> Result<()> {
        let db = self.db();
        db.execute("DELETE FROM tokens WHERE user = ?1", [name])?;
        if db.execute("DELETE FROM users WHERE name = ?1", [name])? == 0 {
            return Err(Error::NotFound(format!("user '{name}'")));
        }
        Ok(())
    }

    /// Sets user `name`'s password and revokes their tokens.
    pub fn set_password(&self, name: &str, password: &str) -> Result<()> {
        check_password(password)?;
        let hash = hash_password(password)?;
        let db = self.db();
        if db.execute(
            "UPDATE users SET password = ?2 WHERE name = ?1",
            params![name, hash],
        )? == 0
        {
            return Err(Error::NotFound(format!("user '{name}'")));
        }
        db.execute("UPDATE tokens SET revoked = 1 WHERE user = ?1", [name])?;
        Ok(())
    }

    /// Whether `password` is user `name`'s, asked from client address `from` (Data Lab's
    /// `isValidPassword`). Refused (rate limited) while that name has failed
    /// [`LOGIN_ATTEMPTS`] times from that address, or the address [`ADDRESS_ATTEMPTS`]
    /// times, within [`LOGIN_WINDOW_MS`]; a wrong password is a failure, unless it is one
    /// already counted for that name from that address. A missing user is checked against
    /// a dummy hash, so the answer takes as long as for one who exists.
    pub fn check_password(&self, name: &str, password: &str, from: IpAddr) -> Result<bool> {
        self.throttled_check(name, password, from, false)
    }

    /// Every password check of the service goes through here: see
    /// [`Accounts::check_password`]. With `recount`, every wrong password counts.
    fn throttled_check(
        &self,
        name: &str,
        password: &str,
        from: IpAddr,
        recount: bool,
    ) -> Result<bool> {
        let attempt = self
            .throttle()
            .begin(name, password, from, now_ms(), recount)?;
        let result = self.verify_password(name, password);
        self.throttle()
            .finish(attempt, result.as_ref().ok().copied());
        result
    }

    /// Whether `password` is user `name`'s, unthrottled. Unknown users take as long as
    /// known ones, so that timing does not tell which names exist.
    fn verify_password(&self, name: &str, password: &str) -> Result<bool> {
        let stored: Option<String> = self
            .db()
            .query_row("SELECT password FROM users WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        let hash = match &stored {
            Some(h) => h.clone(),
            None => dummy_hash()?,
        };
        let parsed = PasswordHash::new(&hash)
            .map_err(|e| Error::Invalid(format!("stored password hash of '{name}': {e}")))?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        Ok(ok && stored.is_some())
    }

    /// Checks the password (throttled, as [`Accounts::check_password`]) and issues a
    /// token with every scope the user has. A wrong password and a missing user get the
    /// same answer.
    pub fn login(&self, name: &str, password: &str, from: IpAddr) -> Result<IssuedToken> {
        let wrong = || Error::Unauthorized(LOGIN_FAILED.to_string());
        if !self.throttled_check(name, password, from, true)? {
            return Err(wrong());
        }
        let user = self.user(name)?.ok_or_else(wrong)?;
        self.issue(&user, allowed_scopes(&user), self.token_lifetime)
    }

    /// Changes user `name`'s password from `old` to `new`, asked from `from` by the holder
    /// of a token with `scopes`: the old password is checked (throttled, as
    /// [`Accounts::check_password`]), every token of the user is revoked, and the answer is
    /// a new token with the caller's scopes (never more than the user has).
    pub fn change_password(
        &self,
        name: &str,
        old: &str,
        new: &str,
        from: IpAddr,
        scopes: Scopes,
    ) -> Result<IssuedToken> {
        check_password(new)?;
        if !self.throttled_check(name, old, from, true)? {
            return Err(Error::Forbidden("the current password is wrong".into()));
        }
        self.set_password(name, new)?;
        let user = self
            .user(name)?
            .ok_or_else(|| Error::NotFound(format!("user '{name}'")))?;
        let scopes = Scopes(scopes.0 & allowed_scopes(&user).0);
        self.issue(&user, scopes, self.token_lifetime)
    }

    /// Issues a token for user `name` without a password (the administrator's command).
    pub fn issue_for(&self, name: &str, scopes: Scopes, lifetime: Duration) -> Result<IssuedToken> {
        let user = self
            .user(name)?
            .ok_or_else(|| Error::NotFound(format!("user '{name}'")))?;
        if scopes.has(Scope::Admin) && !user.admin {
            return Err(Error::Forbidden(format!(
                "user '{name}' is not an administrator, so a token cannot carry 'admin'"
            )));
        }
        self.issue(&user, scopes, lifetime)
    }

    fn issue(&self, user: &User, scopes: Scopes, lifetime: Duration) -> Result<IssuedToken> {
        self.issue_with_parent(user, scopes, lifetime, None)
    }

    fn issue_with_parent(
        &self,
        user: &User,
        scopes: Scopes,
        lifetime: Duration,
        parent: Option<&str>,
    ) -> Result<IssuedToken> {
        let token = format!(
            "{}.{uid}.{uid}.$1${}${}",
            user.name,
            random_chars(8),
            random_chars(22),
            uid = user.uid
        );
        let now = now_ms();
        let expires_ms = now.saturating_add(lifetime.as_millis().min(i64::MAX as u128) as i64);
        self.db().execute(
            "INSERT INTO tokens (hash, user, scopes, created_ms, expires_ms, parent) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                hash_token(&token),
                user.name,
                scopes.0,
                now,
                expires_ms,
                parent.map(hash_token)
            ],
        )?;
        Ok(IssuedToken { token, expires_ms })
    }

    /// Issues a token on behalf of the holder of `parent` (an OAuth client's, such as the
    /// notebook hub's): the same user, the scopes of both but never `admin`, expiring when
    /// `parent` does at the latest; revoking `parent` (logging out) revokes it too.
    pub fn issue_delegated(&self, parent: &str, scopes: Scopes) -> Result<IssuedToken> {
        let id = self.authenticate(parent)?.ok_or_else(|| {
            Error::Unauthorized("the anonymous token cannot delegate".to_string())
        })?;
        let user = self
            .user(&id.user)?
            .ok_or_else(|| Error::Unauthorized(format!("user '{}' is gone", id.user)))?;
        let scopes = Scopes(scopes.0 & id.scopes.0 & !Scope::Admin.bit());
        let left = Duration::from_millis((id.expires_ms - now_ms()).max(0) as u64);
        self.issue_with_parent(&user, scopes, left, Some(parent.trim()))
    }

    /// The identity `token` stands for: `None` for Data Lab's anonymous token, 401 for a
    /// token that was never issued here, has been revoked or has expired.
    pub fn authenticate(&self, token: &str) -> Result<Option<Identity>> {
        let token = token.trim();
        if token == ANONYMOUS_TOKEN {
            return Ok(None);
        }
        let row: Option<(String, u8, i64, bool)> = self
            .db()
            .query_row(
                "SELECT user, scopes, expires_ms, revoked FROM tokens WHERE hash = ?1",
                [hash_token(token)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((user, scopes, expires_ms, revoked)) = row else {
            return Err(Error::Unauthorized(
                "the token is not valid: it was not issued by this service".into(),
            ));
        };
        if revoked {
            return Err(Error::Unauthorized(
                "the token has been revoked (logged out); log in again".into(),
            ));
        }
        if expires_ms <= now_ms() {
            return Err(Error::Unauthorized(format!(
                "the token expired at {}; log in again",
                crate::jobs::format_time(expires_ms)
            )));
        }
        Ok(Some(Identity {
            user,
            scopes: Scopes(scopes),
            expires_ms,
        }))
    }

    /// Revokes `token` (logout), and the tokens issued on its behalf. Revoking an unknown
    /// token is an error.
    pub fn revoke(&self, token: &str) -> Result<()> {
        let hash = hash_token(token.trim());
        let db = self.db();
        if db.execute("UPDATE tokens SET revoked = 1 WHERE hash = ?1", [&hash])? == 0 {
            return Err(Error::NotFound("token".into()));
        }
        db.execute("UPDATE tokens SET revoked = 1 WHERE parent = ?1", [&hash])?;
        Ok(())
    }

    /// Whether user `name` holds a token that is neither expired nor revoked.
    pub fn logged_in(&self, name: &str) -> Result<bool> {
        Ok(self.db().query_row(
            "SELECT EXISTS (SELECT 1 FROM tokens WHERE user = ?1 AND revoked = 0 AND expires_ms > ?2)",
            params![name, now_ms()],
            |r| r.get(0),
        )?)
    }
}

/// What a failed login says, whether the user exists or not.
pub const LOGIN_FAILED: &str = "wrong user name or password";

/// Every scope user `user` may hold.
fn allowed_scopes(user: &User) -> Scopes {
    let mut scopes = Scopes::user();
    if user.admin {
        scopes.0 |= Scope::Admin.bit();
    }
    scopes
}

fn read_user(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        name: r.get(0)?,
        uid: r.get(1)?,
        email: r.get(2)?,
        admin: r.get(3)?,
        created_ms: r.get(4)?,
    })
}

fn hash_password(password: &str) -> Result<String> {
    let mut bytes = [0u8; 16];
    rand::rng().fill(&mut bytes);
    let salt = SaltString::encode_b64(&bytes)
        .map_err(|e| Error::Invalid(format!("making a password salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Invalid(format!("hashing the password: {e}")))
}

/// A hash to verify against when the user does not exist, made once.
fn dummy_hash() -> Result<String> {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(h) = DUMMY.get() {
        return Ok(h.clone());
    }
    let h = hash_password("not a password of anyone")?;
    Ok(DUMMY.get_or_init(|| h).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const THERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));

    fn accounts(dir: &tempfile::TempDir) -> Accounts {
        Accounts::open(
            &dir.path().join("accounts.sqlite"),
            Duration::from_secs(3600),
        )
        .unwrap()
    }

    #[test]
    fn login_issues_a_data_lab_shaped_token_that_authenticates() {
        let dir = tempfile::tempdir().unwrap();
        let a = accounts(&dir);
        let alice = a
            .create_user("alice", "correct horse", None, false)
            .unwrap();
        assert_eq!(alice.uid, FIRST_UID);
        let t = a.login("alice", "correct horse", HERE).unwrap();
        // The astro-datalab client's own pattern (Util.py): user.uid.gid.$1$<22+ chars>.
        let parts: Vec<&str> = t.token.splitn(4, '.').collect();
        assert_eq!(parts[..3], ["alice", "1001", "1001"]);
        assert!(parts[3].starts_with("$1$") && parts[3].len() >= 3 + 22);
        assert!(!t.token.chars().any(char::is_whitespace));
        let id = a.authenticate(&t.token).unwrap().unwrap();
        assert_eq!(id.user, "alice");
        assert!(id.scopes.has(Scope::RunJobs) && !id.scopes.has(Scope::Admin));
        assert!(a.logged_in("alice").unwrap());
        // Stored hashed: the token's text appears nowhere in the database file.
        drop(a);
        let raw = std::fs::read(dir.path().join("accounts.sqlite")).unwrap();
        let wal = std::fs::read(dir.path().join("accounts.sqlite-wal")).unwrap_or_default();
        for bytes in [raw, wal] {
            assert!(
                !bytes
                    .windows(t.token.len())
                    .any(|w| w == t.token.as_bytes())
            );
            assert!(!bytes.windows(13).any(|w| w == b"correct horse"));
        }
    }

    #[test]
    fn delegated_tokens_end_with_their_login() {
        let dir = tempfile::tempdir().unwrap();
        let a = accounts(&dir);
        a.create_user("root", "administrator", None, true).unwrap();
        let login = a.login("root", "administrator", HERE).unwrap();
        let hub = a.issue_delegated(&login.token, Scopes(u8::MAX)).unwrap();
        let id = a.authenticate(&hub.token).unwrap().unwrap();
        assert_eq!(id.user, "root");
        // Never admin, never outliving the login.
        assert!(id.scopes.has(Scope::ReadCatalogs) && !id.scopes.has(Scope::Admin));
        assert!(hub.expires_ms <= login.expires_ms);
        let narrow = a
            .issue_delegated(&login.token, Scopes::of(&[Scope::ReadCatalogs]))
            .unwrap();
        let narrow_id = a.authenticate(&narrow.token).unwrap().unwrap();
        assert!(!narrow_id.scopes.has(Scope::WriteStorage));
        // Logging out ends both; a revoked login cannot delegate.
        a.revoke(&login.token).unwrap();
        for t in [&hub.token, &narrow.token] {
            assert!(matches!(a.authenticate(t), Err(Error::Unauthorized(_))));
        }
        assert!(a.issue_delegated(&login.token, Scopes::user()).is_err());
        assert!(a.issue_delegated("not a token", Scopes::user()).is_err());
    }

    #[test]
    fn repeated_failed_logins_are_throttled_by_name_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let a = accounts(&dir);
        a.create_user("eve", "the-right-one", None, false).unwrap();
        a.create_user("joe", "the-right-one", None, false).unwrap();
        // A success clears the count.
        a.login("joe", "guess", HERE).unwrap_err();
        a.login("joe", "the-right-one", HERE).unwrap();
        // Every failed login counts, even with the same password.
        for _ in 0..LOGIN_ATTEMPTS {
            assert!(matches!(
                a.login("eve", "guess", HERE),
                Err(Error::Unauthorized(_))
            ));
        }
        // Now even the right password waits from that address, and so do other checks of
        // the name; other users are not affected.
        assert!(matches!(
            a.login("eve", "the-right-one", HERE),
            Err(Error::RateLimited(m)) if m.contains("try again")
        ));
        assert!(matches!(
            a.check_password("eve", "another guess", HERE),
            Err(Error::RateLimited(_))
        ));
        a.login("joe", "the-right-one", HERE).unwrap();
        // A stranger's failures do not lock the user out: from elsewhere she logs in.
        a.login("eve", "the-right-one", THERE).unwrap();
    }

    #[test]
    fn one_address_cannot_try_passwords_on_many_users() {
        let dir = tempfile::tempdir().unwrap();
        let a = accounts(&dir);
        a.create_user("zoe", "zoe-password", None, false).unwrap();
        for i in 0..ADDRESS_ATTEMPTS {
            assert!(
                !a.check_password(&format!("user{i}"), "Password1", HERE)
                    .unwrap()
            );
        }
        assert!(matches!(
            a.check_password("someone-else", "Password1", HERE),
            Err(Error::RateLimited(m)) if m.contains("from your address")
        ));
        assert!(matches!(
            a.login("zoe", "zoe-password", HERE),
            Err(Error::RateLimited(_))
        ));
        // Logging in to one's own account does not reset the address's count.
        assert!(a.check_password("zoe", "zoe-password", HERE).is_err());
        a.login("zoe", "zoe-password", THERE).unwrap();
        // IPv6 addresses count by their /64.
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            address_key(v6("2001:db8:1:2:aaaa::1")),
            address_key(v6("2001:db8:1:2:bbbb::9"))
        );
        assert_ne!(
            address_key(v6("2001:db8:1:2::1")),
            address_key(v6("2001:db8:1:3::1"))
        );
        assert_eq!(address_key(v6("::ffff:192.0.2.1")), HERE);
    }

    #[test]
    fn asking_again_about_a_counted_wrong_password_is_not_another_guess() {
        let dir = tempfile::tempdir().unwrap();
        let a = accounts(&dir);
        a.create_user("ann", "ann-password", None, false).unwrap();
        // Data Lab's client asks isValidPassword with the password a login just failed
        // with: that check tells nothing new and does not count.
        for i in 0..LOGIN_ATTEMPTS - 1 {
            let typo = format!("ann-passwrod{i}");
            assert!(matches!(
                a.login("ann", &typo, HERE),
                Err(Error::Unauthorized(_))
            ));
            for _ in 0..3 {
                assert!(!a.check_password("ann", &typo, HERE).unwrap());
            }
        }
        a.login("ann", "ann-password", HERE).unwrap();
        // A new wrong password does count.
        for i in 0..LOGIN_ATTEMPTS {
            assert!(
                !a.check_password("ann", &format!("new guess {i}"), HERE)
                    .unwrap()
            );
        }
        assert!(a.check_password("ann", "ann-password", HERE).is_err());
    }

    #[test]
    fn login_failures_read_the_same_for_missing_and_existing_users() {
        let dir = tempfile::tempdir().unwrap();
        let a = accounts(&dir);
        a.create_user("ida", "ida-password", None, false).unwrap();
        let message = |name: &str| match a.login(name, "not it at all", HERE) {
            Err(Error::Unauthorized(m)) => m,
            other => panic!("{other:?}"),
        };
        assert_eq!(message("ida"), LOGIN_FAILED);
        assert_eq!(message("nobody-here"), LOGIN_FAILED);
        // And take comparable time: both verify an argon2 hash.
        let time = |name: &str| {
            let t = std::time::Instant::now();
            for _ in 0..3 {
                assert!(!a.verify_password(name, "not it at all").unwrap());
            }
            t.elapsed().as_secs_f64()
        };
        let (known, missing) = (time("ida"), time("nobody-here"));
        assert!(
            missing > known / 3.0 && known > missing / 3.0,
            "{known} s for a user, {missing} s for a missing one"
        );
    }

    #[test]
    fn changing_a_password_needs_the_old_one_and_grants_no_more_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let a = accounts(&dir);
        a.create_user("kai", "kai-password", None, false).unwrap();
        let read = Scopes::of(&[Scope::ReadCatalogs]);
        let t = a.issue_for("kai", read, Duration::from_secs(60)).unwrap();
        assert!(matches!(
            a.change_password("kai", "wrong guess", "kai-new-password", HERE, read),
            Err(Error::Forbidden(_))
        ));
        assert!(a.verify_password("kai", "kai-password").unwrap());
        assert!(a.authenticate(&t.token).unwrap().is_some());
        // A too-short new password is refused before the old one is checked.
        assert!(matches!(
            a.change_password("kai", "kai-password", "short", HERE, read),
            Err(Error::Invalid(_))
        ));
        // Even a request for more scopes than the user has gets only what they have.
        let all = Scopes::of(&Scope::ALL);
        let new = a
            .change_password("kai", "kai-password", "kai-new-password", HERE, all)
            .unwrap();
        let id = a.authenticate(&new.token).unwrap().unwrap();
        assert_eq!(id.scopes, Scopes::user());
        assert!(a.authenticate(&t.token).is_err());
        // A read-only token's holder gets a read-only token.
        let new = a
            .change_password("kai", "kai-new-password", "kai-third-password", HERE, read)
            .unwrap();
        assert_eq!(a.authenticate(&new.token).unwrap().unwrap().scopes, read);
        assert!(a.verify_password("kai", "kai-third-password").unwrap());
        // Wrong old passwords are throttled like logins.
        for i in 0..LOGIN_ATTEMPTS {
            let _ = a.change_password("kai", &format!("guess {i}"), "whatever123", HERE, read);
        }
        assert!(matches!(
            a.change_password("kai", "kai-third-password", "whatever123", HERE, read),
            Err(Error::RateLimited(_))
        ));
    }

    #[test]
    fn wrong_password_unknown_user_revoked_and_expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = accounts(&dir);
        a.create_user("bob", "hunter2hunter2", None, false).unwrap();
        assert!(matches!(
            a.login("bob", "wrong password", HERE),
            Err(Error::Unauthorized(_))
        ));
        assert!(matches!(
            a.login("nobody", "hunter2hunter2", HERE),
            Err(Error::Unauthorized(_))
        ));
        assert!(matches!(
            a.authenticate("bob.1001.1001.$1$aaaaaaaa$bbbbbbbbbbbbbbbbbbbbbb"),
            Err(Error::Unauthorized(m)) if m.contains("not issued")
        ));
        assert_eq!(a.authenticate(ANONYMOUS_TOKEN).unwrap(), None);

        let t = a.login("bob", "hunter2hunter2", HERE).unwrap();
        a.revoke(&t.token).unwrap();
        assert!(matches!(
            a.authenticate(&t.token),
            Err(Error::Unauthorized(m)) if m.contains("revoked")
        ));
        assert!(!a.logged_in("bob").unwrap());

        let t = a
            .issue_for("bob", Scopes::user(), Duration::from_millis(1))
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(matches!(
            a.authenticate(&t.token),
            Err(Error::Unauthorized(m)) if m.contains("expired")
        ));
    }

    #[test]
    fn names_passwords_and_scopes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let a = accounts(&dir);
        for bad in ["", "1abc", "a.b", "a/b", "../x", "a b", &"x".repeat(33)] {
            assert!(matches!(
                a.create_user(bad, "long enough", None, false),
                Err(Error::Invalid(_))
            ));
        }
        assert!(matches!(
            a.create_user("carol", "short", None, false),
            Err(Error::Invalid(_))
        ));
        a.create_user("carol", "long enough", None, false).unwrap();
        assert!(matches!(
            a.create_user("carol", "long enough", None, false),
            Err(Error::Conflict(_))
        ));
        assert!(matches!(
            a.issue_for(
                "carol",
                Scopes::of(&[Scope::Admin]),
                Duration::from_secs(60)
            ),
            Err(Error::Forbidden(_))
        ));
        let s = Scopes::parse("catalogs:read, jobs:run").unwrap();
        assert_eq!(s.names(), ["catalogs:read", "jobs:run"]);
        assert!(Scopes::parse("root").is_err());
        let t = a
            .issue_for(
                "carol",
                Scopes::of(&[Scope::ReadCatalogs]),
                Duration::from_secs(60),
            )
            .unwrap();
        let id = a.authenticate(&t.token).unwrap().unwrap();
        assert!(matches!(
            id.require(Scope::RunJobs),
            Err(Error::Forbidden(_))
        ));
        // A new password revokes the old tokens.
        a.set_password("carol", "another long one").unwrap();
        assert!(a.authenticate(&t.token).is_err());
        a.delete_user("carol").unwrap();
        assert!(a.user("carol").unwrap().is_none());
    }
}
