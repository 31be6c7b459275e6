//! The small world that the query and HTTP targets run against, built once per process in
//! a temporary directory that is removed when the process exits.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use meridian_catalog::{IngestOptions, Store};
use meridian_engine::{Engine, EngineConfig};

/// The catalog the query and HTTP targets see (`SELECT ... FROM fuzz`).
pub const TABLE: &str = "fuzz";

/// Rows of [`TABLE`].
pub const ROWS: usize = 40;

/// The user the HTTP targets act as (with `$TOKEN`), and an administrator (`$ADMIN`).
pub const USER: &str = "fuzzer";
const ADMIN: &str = "keeper";
const PASSWORD: &str = "fuzz-password-1";

/// Requests an HTTP world serves before it is rebuilt: what requests create (files, tables,
/// jobs, nodes) must not pile up over a run of millions of inputs.
const REQUESTS_PER_SITE: u64 = 2_000;

static ROOT: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_root() {
    if let Some(dir) = ROOT.get() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// This process's directory, removed at exit (libFuzzer and the tests end with `exit`).
pub fn root() -> &'static Path {
    ROOT.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("meridian-fuzz-")
            .tempdir()
            .expect("a temporary directory")
            .keep();
        // SAFETY: `remove_root` is a plain function that only reads a set `OnceLock`.
        unsafe {
            libc::atexit(remove_root);
        }
        dir
    })
}

/// A scratch file path in [`root`] named `name` (one per thread, reused between inputs).
pub fn scratch(name: &str) -> PathBuf {
    let dir = root().join(format!("scratch-{:?}", std::thread::current().id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir.join(name)
}

/// The text of [`TABLE`] as CSV: `ROWS` sources over the whole sky, with an identifier, a
/// position, a magnitude (some null), a name, a flag and an epoch.
pub fn catalog_csv() -> String {
    let mut text = String::from("source_id,ra,dec,phot_g_mean_mag,name,variable,mjd\n");
    for i in 0..ROWS {
        let ra = (i as f64 * 37.3) % 360.0;
        let dec = -85.0 + i as f64 * 170.0 / ROWS as f64;
        let mag = if i % 7 == 3 {
            String::new()
        } else {
            format!("{:.3}", 8.0 + (i as f64 * 0.37) % 12.0)
        };
        text.push_str(&format!(
            "{},{ra:.6},{dec:.6},{mag},star {i},{},{:.5}\n",
            1000 + i,
            i % 3 == 0,
            59000.0 + i as f64 * 1.25
        ));
    }
    text
}

/// The catalog store holding [`TABLE`] (built on first use).
pub fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let csv = root().join("fuzz.csv");
        std::fs::write(&csv, catalog_csv()).expect("writing the catalog's CSV");
        let store = Store::open(root().join("catalogs")).expect("a catalog store");
        meridian_catalog::ingest::ingest(&store, TABLE, &[csv], &IngestOptions::default(), &|_| {})
            .expect("ingesting the fuzz catalog");
        store
    })
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        memory_limit_bytes: 256 << 20,
        target_partitions: 1,
        ..EngineConfig::default()
    }
}

/// A runtime for one target's calls (the current thread drives everything, so a run is
/// repeatable).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The query engine over [`store`], with its runtime.
pub struct Queries {
    /// Drives the engine.
    pub rt: tokio::runtime::Runtime,
    /// The engine.
    pub engine: Engine,
}

/// The process's [`Queries`] (built on first use).
pub fn queries() -> &'static Queries {
    static Q: OnceLock<Queries> = OnceLock::new();
    Q.get_or_init(|| {
        let mut engine =
            Engine::open(store(), &engine_config()).expect("an engine over the fuzz catalog");
        // TAP_SCHEMA too, as the service has it.
        let model = meridian_server::metadata::model(&engine);
        meridian_server::metadata::register_tap_schema(&mut engine, &model).expect("TAP_SCHEMA");
        Queries {
            rt: runtime(),
            engine,
        }
    })
}

/// The whole HTTP service over [`store`], as `meridian serve` assembles it, with a user
/// and an administrator and their tokens.
pub struct Site {
    /// Drives the router.
    pub rt: tokio::runtime::Runtime,
    /// Every route of the service.
    pub router: axum::Router,
    /// A token of [`USER`].
    pub token: String,
    /// A token of an administrator.
    pub admin_token: String,
    dir: PathBuf,
    requests: u64,
}

impl Site {
    fn new(n: u64) -> Self {
        use meridian_services::accounts::{Accounts, Scopes};
        let dir = root().join(format!("site-{n}"));
        let day = Duration::from_secs(86_400);
        let accounts = Accounts::open(&dir.join("accounts.db"), day).expect("accounts");
        accounts
            .create_user(USER, PASSWORD, Some("fuzzer@example.org"), false)
            .expect("the fuzz user");
        accounts
            .create_user(ADMIN, PASSWORD, None, true)
            .expect("the fuzz administrator");
        let token = accounts
            .issue_for(USER, Scopes::user(), day)
            .expect("a token");
        let admin_token = accounts
            .issue_for(ADMIN, Scopes::user(), day)
            .expect("a token");
        let storage = meridian_services::storage::Storage::open(
            &dir.join("storage.db"),
            meridian_services::storage::Storage::local_store(&dir.join("files"))
                .expect("a file store"),
            8 << 20,
            Vec::new(),
        )
        .expect("storage");
        let state = meridian_server::AppState::new(
            Engine::open(store(), &engine_config()).expect("an engine"),
            meridian_server::Limits {
                sync_timeout_s: 5,
                upload_max_bytes: 1 << 20,
                upload_max_rows: 10_000,
                allow_url_uploads: false,
                ..meridian_server::Limits::default()
            },
            &dir.join("jobs"),
            meridian_services::jobs::JobConfig::default(),
            meridian_server::Personal {
                accounts,
                auth: meridian_server::auth::AuthConfig {
                    self_registration: true,
                    anonymous_jobs: true,
                },
                mydb: meridian_services::mydb::MyDb::new(dir.join("mydb"), 8 << 20),
                storage,
            },
            meridian_server::images::ImageService::new(&[], "meridian", 1 << 20),
        )
        .expect("the service's state");
        Self {
            rt: runtime(),
            router: meridian_server::router(state),
            token: token.token,
            admin_token: admin_token.token,
            dir,
            requests: 0,
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Calls `f` with the process's [`Site`], rebuilt every `REQUESTS_PER_SITE` calls.
pub fn with_site<R>(f: impl FnOnce(&Site) -> R) -> R {
    static SITE: Mutex<(u64, Option<Site>)> = Mutex::new((0, None));
    let mut guard = SITE.lock().unwrap_or_else(|e| e.into_inner());
    let (built, site) = &mut *guard;
    if site
        .as_ref()
        .is_none_or(|s| s.requests >= REQUESTS_PER_SITE)
    {
        *site = None;
        *built += 1;
        *site = Some(Site::new(*built));
    }
    let s = site.as_mut().expect("built above");
    s.requests += 1;
    f(s)
}
