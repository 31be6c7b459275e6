//! Meridian's HTTP services on axum: TAP 1.1 synchronous and asynchronous (UWS) queries
//! with table uploads, VOSI, accounts and tokens ([`auth`]), Data Lab's query service
//! ([`datalab`]), health and Prometheus metrics. Every failure's status is decided in one
//! place ([`error`]): TAP answers it as a DALI error document, Data Lab's calls as the
//! `Error: ...` text their clients expect.

pub mod alerts;
pub mod auth;
pub mod csrf;
pub mod datalab;
pub mod datalink;
pub mod error;
pub mod examples;
pub mod groups;
pub mod images;
pub mod lightcurve;
pub mod metadata;
pub mod mydb;
pub mod notebooks;
pub mod oauth;
pub mod params;
pub mod portal;
pub mod quota;
mod result;
pub mod sia;
pub mod sky_maps;
pub mod soda;
pub mod spectra;
pub mod storage;
pub mod tap;
pub mod upload;
pub mod uws;
pub mod vosi;
pub mod vospace;
pub mod window;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use meridian_engine::Engine;
use meridian_services::accounts::Accounts;
use meridian_services::jobs::{JobConfig, Jobs, Phase};
use meridian_services::mydb::MyDb;
use meridian_services::storage::Storage;

pub use error::{Error, Result};

/// Row and time limits of the service.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Rows returned when a request gives no MAXREC.
    pub default_maxrec: u64,
    /// The most rows a request may ask for.
    pub max_maxrec: u64,
    /// Time limit of a synchronous query, seconds.
    pub sync_timeout_s: u64,
    /// Largest uploaded table file, bytes.
    pub upload_max_bytes: u64,
    /// Most rows of one uploaded table.
    pub upload_max_rows: u64,
    /// Whether UPLOAD may name http(s) URLs.
    pub allow_url_uploads: bool,
    /// Whether URL uploads may read from loopback and private networks (off: the service
    /// cannot be used to reach what sits behind its firewall).
    pub url_uploads_allow_private: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            default_maxrec: 100_000,
            max_maxrec: 100_000_000,
            sync_timeout_s: 600,
            upload_max_bytes: 256 << 20,
            upload_max_rows: 10_000_000,
            allow_url_uploads: false,
            url_uploads_allow_private: false,
        }
    }
}

/// Counters exposed at `/metrics` in the Prometheus text format. Written by hand: four
/// counters do not need a metrics framework.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: AtomicU64,
    errors: AtomicU64,
    bytes_out: AtomicU64,
    latency_us_sum: AtomicU64,
}

impl Metrics {
    /// Counts result bytes sent.
    pub fn add_bytes_out(&self, n: u64) {
        self.bytes_out.fetch_add(n, Ordering::Relaxed);
    }

    fn render(&self) -> String {
        let r = self.requests.load(Ordering::Relaxed);
        format!(
            "# HELP meridian_http_requests_total HTTP requests served.\n\
             # TYPE meridian_http_requests_total counter\n\
             meridian_http_requests_total {r}\n\
             # HELP meridian_http_errors_total HTTP requests answered with a 4xx or 5xx status.\n\
             # TYPE meridian_http_errors_total counter\n\
             meridian_http_errors_total {}\n\
             # HELP meridian_http_request_seconds_sum Time to the response head, summed.\n\
             # TYPE meridian_http_request_seconds_sum counter\n\
             meridian_http_request_seconds_sum {}\n\
             # HELP meridian_result_bytes_total Result bytes sent.\n\
             # TYPE meridian_result_bytes_total counter\n\
             meridian_result_bytes_total {}\n",
            self.errors.load(Ordering::Relaxed),
            self.latency_us_sum.load(Ordering::Relaxed) as f64 / 1e6,
            self.bytes_out.load(Ordering::Relaxed),
        )
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The query engine over the served catalogs.
    pub engine: Arc<Engine>,
    /// Row and time limits.
    pub limits: Arc<Limits>,
    /// Request counters.
    pub metrics: Arc<Metrics>,
    /// The URL clients reach the service at, when it differs from the Host they send.
    pub public_url: Option<String>,
    /// Asynchronous (UWS) jobs.
    pub jobs: Arc<Jobs>,
    /// Table metadata (VOSI, TAP_SCHEMA).
    pub model: Arc<Vec<metadata::SchemaMeta>>,
    /// The registered image datasets (SIA, DataLink, SODA, previews).
    pub images: Arc<images::ImageService>,
    /// Users and tokens.
    pub accounts: Arc<Accounts>,
    /// Account settings.
    pub auth: Arc<auth::AuthConfig>,
    /// Users' own tables.
    pub mydb: Arc<MyDb>,
    /// Users' files.
    pub storage: Arc<Storage>,
    /// Open transfer URLs.
    pub tickets: Arc<storage::Tickets>,
    /// VOSpace transfers.
    pub transfers: Arc<vospace::Transfers>,
    /// Coverage maps and HiPS.
    pub sky_maps: Arc<sky_maps::SkyMaps>,
    /// Spectra (SPARCL, SSA, stacks).
    pub spectra: Arc<spectra::SpectraService>,
    /// Users' alert filters, when the service runs them.
    pub alerts: Option<Arc<alerts::AlertFilters>>,
    /// Per-client limits on requests (none unless set).
    pub quotas: Arc<meridian_services::quota::Quotas>,
    /// The OAuth clients that sign users in through Meridian (the notebook hub).
    pub oauth: Arc<oauth::Provider>,
    /// The notebook hub, when the service runs one.
    pub notebooks: Option<Arc<meridian_services::notebooks::Hub>>,
}

/// What belongs to users: accounts, their settings, tables and files.
pub struct Personal {
    /// Users, tokens and groups.
    pub accounts: Accounts,
    /// Account settings.
    pub auth: auth::AuthConfig,
    /// Users' own tables.
    pub mydb: MyDb,
    /// Users' files.
    pub storage: Storage,
}

impl AppState {
    /// State for `engine` under `limits`, with asynchronous jobs kept in `jobs_dir`,
    /// users with their tables and files in `personal`, and the registered `images`.
    /// Queued jobs start once [`serve`] runs.
    pub fn new(
        engine: Engine,
        limits: Limits,
        jobs_dir: &std::path::Path,
        job_config: JobConfig,
        personal: Personal,
        images: images::ImageService,
    ) -> Result<Self> {
        let Personal {
            accounts,
            auth,
            mydb,
            storage,
        } = personal;
        let mut engine = engine;
        let model = metadata::model(&engine);
        metadata::register_tap_schema(&mut engine, &model)?;
        let engine = Arc::new(engine);
        let limits = Arc::new(limits);
        let mydb = Arc::new(mydb);
        let accounts = Arc::new(accounts);
        let images = Arc::new(images);
        let runner = Arc::new(uws::TapRunner {
            engine: engine.clone(),
            limits: limits.clone(),
            mydb: mydb.clone(),
            accounts: accounts.clone(),
            images: images.clone(),
        });
        Ok(Self {
            engine,
            limits,
            metrics: Arc::new(Metrics::default()),
            public_url: None,
            jobs: Jobs::open(jobs_dir, job_config, runner)?,
            model: Arc::new(model),
            images,
            accounts,
            auth: Arc::new(auth),
            mydb,
            storage: Arc::new(storage),
            tickets: Arc::new(storage::Tickets::default()),
            transfers: Arc::new(vospace::Transfers::default()),
            sky_maps: Arc::default(),
            spectra: Arc::default(),
            alerts: None,
            quotas: meridian_services::quota::Quotas::new(
                meridian_services::quota::QuotaConfig::UNLIMITED,
            ),
            oauth: Arc::default(),
            notebooks: None,
        })
    }
}

/// A plain-text answer with `status` (UWS resources, Data Lab's calls).
pub(crate) fn text_with(status: axum::http::StatusCode, body: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

/// A plain-text 200 answer.
pub(crate) fn text(body: impl Into<String>) -> Response {
    text_with(axum::http::StatusCode::OK, body)
}

async fn health() -> &'static str {
    "ok\n"
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.metrics.render();
    text.push_str("# HELP meridian_jobs Asynchronous jobs by phase.\n# TYPE meridian_jobs gauge\n");
    let counts = state.jobs.counts().unwrap_or_default();
    for phase in Phase::ALL {
        let n = counts
            .iter()
            .find(|(p, _)| *p == phase)
            .map_or(0, |(_, n)| *n);
        text.push_str(&format!(
            "meridian_jobs{{phase=\"{}\"}} {n}\n",
            phase.as_str()
        ));
    }
    let refused = state.quotas.refused();
    text.push_str(
        "# HELP meridian_quota_refused_total Requests refused with 429 by a per-client limit.\n\
         # TYPE meridian_quota_refused_total counter\n",
    );
    for (limit, n) in meridian_services::quota::Limit::ALL.iter().zip(refused) {
        text.push_str(&format!(
            "meridian_quota_refused_total{{limit=\"{}\"}} {n}\n",
            limit.as_str()
        ));
    }
    let (clients, running) = state.quotas.clients();
    text.push_str(&format!(
        "# HELP meridian_quota_clients Clients (users, anonymous addresses) the limits follow.\n\
         # TYPE meridian_quota_clients gauge\n\
         meridian_quota_clients {clients}\n\
         # HELP meridian_queries_running Queries running, over all clients.\n\
         # TYPE meridian_queries_running gauge\n\
         meridian_queries_running {running}\n"
    ));
    if let Some(remote) = state.engine.remote() {
        // The scheduler's executors, jobs and stages (a blocking call with a timeout).
        let render = remote.metrics.clone();
        if let Ok(cluster) = tokio::task::spawn_blocking(move || render()).await {
            text.push_str(&cluster);
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// Structured request log line and counters.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let has_body = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || req.headers().contains_key(header::TRANSFER_ENCODING);
    let mut response = next.run(req).await;
    // A refusal may come before the request's body is read, and the connection then closes
    // after the answer: say so, so that a client does not send its next request on it.
    if has_body && (response.status().is_client_error() || response.status().is_server_error()) {
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response.headers_mut().insert(
        header::SERVER,
        header::HeaderValue::from_static(concat!("Meridian/", env!("CARGO_PKG_VERSION"))),
    );
    let elapsed = start.elapsed();
    let m = &state.metrics;
    m.requests.fetch_add(1, Ordering::Relaxed);
    if response.status().is_client_error() || response.status().is_server_error() {
        m.errors.fetch_add(1, Ordering::Relaxed);
    }
    m.latency_us_sum
        .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    tracing::info!(
        %method,
        route,
        status = response.status().as_u16(),
        ms = elapsed.as_secs_f64() * 1e3,
        "request"
    );
    response
}

/// The routes of the service.
pub fn router(state: AppState) -> Router {
    use axum::middleware::{from_fn, from_fn_with_state};
    use axum::routing::post;
    // One job's resources: only its owner reaches them.
    let job = Router::new()
        .route(
            "/tap/async/{id}",
            get(uws::job).post(uws::post_job).delete(uws::delete),
        )
        .route(
            "/tap/async/{id}/phase",
            get(uws::phase).post(uws::post_phase),
        )
        .route(
            "/tap/async/{id}/executionduration",
            get(uws::execution_duration).post(uws::post_execution_duration),
        )
        .route(
            "/tap/async/{id}/destruction",
            get(uws::destruction).post(uws::post_destruction),
        )
        .route("/tap/async/{id}/quote", get(uws::quote))
        .route("/tap/async/{id}/owner", get(uws::owner))
        .route("/tap/async/{id}/error", get(uws::error))
        .route(
            "/tap/async/{id}/parameters",
            get(uws::parameters).post(uws::post_parameters),
        )
        .route("/tap/async/{id}/results", get(uws::results))
        .route("/tap/async/{id}/results/{name}", get(uws::result))
        .route("/tap/async/{id}/results/{name}/window", get(window::window))
        .route("/tap/async/{id}/results/{name}/stats", get(window::stats))
        .route("/tap/async/{id}/results/{name}/as", get(window::download))
        .route_layer(from_fn_with_state(state.clone(), uws::owner_only));
    // The image services take small requests: their bodies are held to 1 MiB (a parameter
    // list costs far more memory than its bytes).
    let image_access = Router::new()
        .route("/sia/query", get(sia::query).post(sia::query))
        .route("/sia/capabilities", get(sia::capabilities))
        .route("/sia/availability", get(sia::availability))
        .route(
            "/sia/{collection}/query",
            get(sia::collection_query).post(sia::collection_query),
        )
        .route(
            "/sia/{collection}/capabilities",
            get(sia::collection_capabilities),
        )
        .route(
            "/sia/{collection}/availability",
            get(sia::collection_availability),
        )
        .route("/datalink", get(datalink::links).post(datalink::links))
        .route(
            "/lightcurve",
            get(lightcurve::lightcurve).post(lightcurve::lightcurve),
        )
        .route("/ssa", get(spectra::ssa::query).post(spectra::ssa::query))
        .route("/ssa/capabilities", get(spectra::ssa::capabilities))
        .route("/ssa/availability", get(spectra::ssa::availability))
        .route("/spectra/file", get(spectra::ssa::file))
        .route(
            "/spectra/stack",
            get(spectra::stack::stack).post(spectra::stack::stack),
        )
        .route("/soda/sync", get(soda::sync).post(soda::sync))
        .route("/soda/async", get(uws::list).post(soda::create_async))
        .route("/images/header", get(images::header_text))
        .route("/images/coverage", get(images::coverage))
        .route("/preview", get(images::preview))
        .route("/moc/{name}", get(sky_maps::moc))
        .route("/hips/list", get(sky_maps::list))
        .route(
            "/hips2fits",
            get(sky_maps::hips2fits).post(sky_maps::hips2fits),
        )
        .route("/hips/{name}/{*path}", get(sky_maps::file))
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20));
    // Everything that serves data: an invalid token is refused rather than taken for
    // anonymous.
    let protected = Router::new()
        .route("/tap/sync", get(tap::sync).post(tap::sync))
        .route("/tap/availability", get(vosi::availability))
        .route("/tap/capabilities", get(vosi::capabilities))
        .route("/tap/tables", get(vosi::tables))
        .route("/tap/tables/{name}", get(vosi::table))
        .route("/tap/examples", get(examples::examples_document))
        .route("/tap/async", get(uws::list).post(uws::create))
        .merge(image_access)
        .merge(job)
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/auth/whoami", get(auth::whoami))
        .route("/oauth/userinfo", get(oauth::userinfo))
        .route("/api/jobs", get(uws::list_json))
        .route("/storage/{call}", get(storage::call))
        .route("/api/groups", get(groups::list).post(groups::create))
        .route(
            "/api/alerts/filters",
            get(alerts::list).post(alerts::create),
        )
        .route(
            "/api/alerts/filters/{id}",
            get(alerts::get).delete(alerts::remove),
        )
        .route("/api/alerts/filters/{id}/pause", post(alerts::pause))
        .route("/api/alerts/filters/{id}/resume", post(alerts::resume))
        .route("/api/alerts/filters/{id}/matches", get(alerts::matches))
        .route("/api/alerts/filters/{id}/events", get(alerts::events))
        .route(
            "/api/groups/{name}",
            get(groups::show).delete(groups::dissolve),
        )
        .route("/api/groups/{name}/members", post(groups::set_member))
        .route(
            "/api/groups/{name}/members/{user}",
            axum::routing::delete(groups::remove_member),
        )
        .route("/vospace/availability", get(vospace::availability))
        .route("/vospace/capabilities", get(vospace::capabilities))
        .route("/vospace/protocols", get(vospace::protocols))
        .route("/vospace/views", get(vospace::views))
        .route("/vospace/properties", get(vospace::property_list))
        .route(
            "/vospace/nodes/{*path}",
            get(vospace::get_node)
                .put(vospace::put_node)
                .post(vospace::post_node)
                .delete(vospace::delete_node),
        )
        .route("/vospace/files/{*path}", get(vospace::get_file))
        .route(
            "/vospace/synctrans",
            post(vospace::synctrans).get(vospace::synctrans),
        )
        .route("/vospace/synctrans/{id}", get(vospace::transfer_details))
        .route("/vospace/transfers", post(vospace::create_transfer))
        .route("/vospace/transfers/{id}", get(vospace::transfer_job))
        .route(
            "/vospace/transfers/{id}/phase",
            get(vospace::transfer_phase).post(vospace::post_transfer_phase),
        )
        .route(
            "/vospace/transfers/{id}/error",
            get(vospace::transfer_error),
        )
        .route(
            "/vospace/transfers/{id}/results/transferDetails",
            get(vospace::transfer_details),
        )
        .route_layer(from_fn(auth::reject_invalid_token));
    Router::new()
        .route("/health", get(health))
        .route("/images/file", get(images::file))
        .route("/metrics", get(metrics))
        .route("/api/auth/login", post(auth::login))
        .route("/oauth/authorize", get(oauth::authorize))
        .route("/oauth/token", post(oauth::token))
        .route("/.well-known/openid-configuration", get(oauth::discovery))
        .route("/api/notebooks", get(notebooks::status))
        .route("/api/auth/register", post(auth::register))
        .route("/auth", get(auth::dl_alive))
        .route("/auth/", get(auth::dl_alive))
        .route("/auth/{call}", get(auth::dl_call))
        .route("/query", get(datalab::alive))
        .route("/query/", get(datalab::alive))
        .route("/query/{call}", get(datalab::call).post(datalab::call))
        .route("/storage", get(datalab::storage_alive))
        .route("/storage/xfer", post(datalab::xfer))
        // Transfer URLs carry their own permission and work without a token.
        .route(
            "/storage/xfer/{ticket}",
            get(storage::xfer_get).put(storage::xfer_put),
        )
        .merge(protected)
        // The web portal at `/`: its files are public; what it shows comes from the
        // services above, with the caller's rights.
        .route("/", get(portal::file))
        .fallback(portal::file)
        // SPARCL's client sends its own token form; its handlers check it.
        .merge(spectra::sparcl::routes())
        // Uploads travel in request bodies: allow the upload limit plus the form around it.
        .layer(axum::extract::DefaultBodyLimit::max(
            (state.limits.upload_max_bytes as usize).saturating_add(1 << 20),
        ))
        .layer(from_fn_with_state(state.clone(), quota::limit))
        .layer(from_fn_with_state(state.clone(), auth::identify))
        .layer(from_fn_with_state(state.clone(), csrf::cross_site_cookies))
        .layer(from_fn_with_state(state.clone(), observe))
        .layer(tower_http::cors::CorsLayer::permissive())
        .with_state(state)
}

/// Serves `state` on `listener` until `shutdown` resolves, then finishes the requests in
/// flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    state.jobs.start();
    // Without TCP_NODELAY a response's head and its first body chunk go out as two small
    // segments and the second waits for the client's delayed ACK (40 ms on Linux), which
    // would dominate every small query.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        router(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
