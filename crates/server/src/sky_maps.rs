//! Sky maps.
//!
//! - `/moc/{name}` is the MOC 2.0 of a catalog (the cells holding its rows) or of an image
//!   collection (the cells its footprints meet), as FITS (the default), JSON or ASCII
//!   (`fmt=`), at `order=` (default 10, at most 16). Computed once for each name and
//!   order, then kept: catalogs and collections do not change while the server runs.
//! - `/hips/{name}/...` serves the HiPS under the data directory's `hips/` (tiles,
//!   `properties`, `Norder3/Allsky.*`, `Moc.fits`) with ETags, cache headers and CORS;
//!   `/hips/list` lists them in the HiPS list format.
//! - `/hips2fits` draws any part of the sky from a served HiPS, in a chosen projection, as
//!   FITS with its WCS or as PNG.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::error::{Error, Result};
use crate::params::DaliRequest;

/// Finest order a served MOC may have (order 16 cells are 3.2 arcseconds).
const MAX_ORDER: u8 = 16;

/// Order of a MOC when the request names none (3.4 arcminute cells).
const DEFAULT_ORDER: u8 = 10;

/// The sky maps served: the MOCs computed so far, by (name, order), and the HiPS
/// directory.
#[derive(Default)]
pub struct SkyMaps {
    mocs: Mutex<HashMap<(String, u8), Arc<meridian_sky::Moc>>>,
    /// Space-time MOCs computed so far, by (name, order, time order, time column).
    stmocs: Mutex<HashMap<StMocKey, bytes::Bytes>>,
    hips_dir: Option<PathBuf>,
    tiles: Mutex<TileCache>,
    /// hips2fits images drawn at once.
    drawing: Drawing,
}

/// Leave to draw a hips2fits image: two at a time, each holding the tiles it reads.
struct Drawing(Arc<tokio::sync::Semaphore>);

impl Default for Drawing {
    fn default() -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(2)))
    }
}

/// An ST-MOC's name, space order, time order and time column.
type StMocKey = (String, u8, u8, Option<String>);

/// HiPS files read lately, by path, with the ETag they were read under (a file rewritten
/// since has another), within a budget of bytes: the oldest read go first.
#[derive(Default)]
struct TileCache {
    files: HashMap<PathBuf, (String, bytes::Bytes)>,
    order: std::collections::VecDeque<PathBuf>,
    bytes: usize,
}

/// Bytes of HiPS files kept in memory.
const TILE_CACHE_BYTES: usize = 256 << 20;

/// Largest file kept.
const TILE_CACHE_FILE_BYTES: usize = 4 << 20;

impl TileCache {
    fn get(&self, path: &std::path::Path, etag: &str) -> Option<bytes::Bytes> {
        self.files
            .get(path)
            .filter(|(e, _)| e == etag)
            .map(|(_, b)| b.clone())
    }

    fn put(&mut self, path: PathBuf, etag: String, body: bytes::Bytes) {
        if body.len() > TILE_CACHE_FILE_BYTES {
            return;
        }
        self.bytes += body.len();
        if let Some((_, old)) = self.files.insert(path.clone(), (etag, body)) {
            self.bytes -= old.len();
        } else {
            self.order.push_back(path);
        }
        while self.bytes > TILE_CACHE_BYTES {
            let Some(p) = self.order.pop_front() else {
                break;
            };
            if let Some((_, b)) = self.files.remove(&p) {
                self.bytes -= b.len();
            }
        }
    }
}

impl SkyMaps {
    /// Sky maps with the HiPS under `hips_dir`.
    pub fn new(hips_dir: Option<PathBuf>) -> Self {
        Self {
            mocs: Mutex::default(),
            stmocs: Mutex::default(),
            hips_dir,
            tiles: Mutex::default(),
            drawing: Drawing::default(),
        }
    }
}

impl std::fmt::Debug for SkyMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkyMaps")
            .field("hips_dir", &self.hips_dir)
            .finish_non_exhaustive()
    }
}

/// The MOC of catalog, collection or HiPS `name` at `order` (a HiPS's own `Moc.fits`,
/// read each time since a HiPS may be rebuilt while the server runs, and coarsened to
/// `order` when it is finer).
pub(crate) fn moc_of(state: &AppState, name: &str, order: u8) -> Result<Arc<meridian_sky::Moc>> {
    if state.engine.table(name).is_none()
        && !state.images.index.has_collection(name)
        && let Some(dir) = &state.sky_maps.hips_dir
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.ends_with(".building")
        && !name.ends_with(".old")
        && let Ok(bytes) = std::fs::read(dir.join(name).join("Moc.fits"))
    {
        let moc = meridian_sky::moc_parse(&bytes)
            .map_err(|e| Error::Internal(format!("MOC of HiPS '{name}': {e}")))?;
        let moc = if moc.depth_max() > order {
            moc.degraded(order)
        } else {
            moc
        };
        return Ok(Arc::new(moc));
    }
    let key = (name.to_string(), order);
    if let Some(m) = state.sky_maps.mocs.lock().expect("MOC cache").get(&key) {
        return Ok(m.clone());
    }
    let moc = if let Some(table) = state.engine.table(name) {
        table
            .catalog()
            .moc(order, &|_| {})
            .map_err(|e| Error::Internal(format!("MOC of '{name}': {e}")))?
    } else if let Some(m) = state.images.index.collection_moc(name, order) {
        m.map_err(|e| Error::Internal(format!("MOC of '{name}': {e}")))?
    } else {
        return Err(Error::NotFound(format!(
            "no catalog, image collection or HiPS named '{name}'"
        )));
    };
    let moc = Arc::new(moc);
    state
        .sky_maps
        .mocs
        .lock()
        .expect("MOC cache")
        .insert(key, moc.clone());
    Ok(moc)
}

/// `GET /moc/{name}[?order=10][&fmt=fits|json|ascii]`.
pub async fn moc(
    State(state): State<AppState>,
    Path(name): Path<String>,
    req: DaliRequest,
) -> Result<Response> {
    let order = match req.params.get("order").or_else(|| req.params.get("ORDER")) {
        None => DEFAULT_ORDER,
        Some(v) => match v.trim().parse::<u8>() {
            Ok(o) if o <= MAX_ORDER => o,
            _ => {
                return Err(Error::Usage(format!(
                    "order: '{v}' is not a HEALPix order from 0 to {MAX_ORDER}"
                )));
            }
        },
    };
    if req
        .params
        .get("type")
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("stmoc"))
    {
        return stmoc(&state, &name, order, &req).await;
    }
    let fmt = req
        .params
        .get("fmt")
        .or_else(|| req.params.get("FORMAT"))
        .unwrap_or("fits")
        .trim()
        .to_ascii_lowercase();
    let s = state.clone();
    let n = name.clone();
    let moc = tokio::task::spawn_blocking(move || moc_of(&s, &n, order))
        .await
        .map_err(|e| Error::Internal(format!("MOC: {e}")))??;
    let (kind, body) = match fmt.as_str() {
        "fits" | "application/fits" => (
            "application/fits",
            meridian_sky::moc_fits(&moc, Some(&name))
                .map_err(|e| Error::Internal(e.to_string()))?,
        ),
        "json" | "application/json" => (
            "application/json",
            meridian_sky::moc_json(&moc).into_bytes(),
        ),
        "ascii" | "txt" | "text/plain" => (
            "text/plain; charset=utf-8",
            meridian_sky::moc_ascii(&moc)
                .map_err(|e| Error::Internal(e.to_string()))?
                .into_bytes(),
        ),
        other => {
            return Err(Error::Usage(format!(
                "fmt: '{other}' is not fits, json or ascii"
            )));
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response())
}

/// `/moc/{name}?type=stmoc[&order=10][&time_order=61][&time_column=]`: the space-time
/// MOC of an image collection (its images' footprints over their exposures) or of a
/// catalog with times (each row's instant and cell), as MOC 2.0 FITS.
async fn stmoc(state: &AppState, name: &str, order: u8, req: &DaliRequest) -> Result<Response> {
    let time_order = match req.params.get("time_order") {
        None => 61,
        Some(v) => match v.trim().parse::<u8>() {
            Ok(o) if o <= 61 => o,
            _ => {
                return Err(Error::Usage(format!(
                    "time_order: '{v}' is not a time order from 0 to 61"
                )));
            }
        },
    };
    if req
        .params
        .get("fmt")
        .is_some_and(|f| !matches!(f.trim(), "fits" | "application/fits"))
    {
        return Err(Error::Usage(
            "fmt: a space-time MOC is served as FITS only".into(),
        ));
    }
    if order > STMOC_MAX_ORDER {
        return Err(Error::Usage(format!(
            "order: a space-time MOC's space order is at most {STMOC_MAX_ORDER}"
        )));
    }
    let (s, n) = (state.clone(), name.to_string());
    let time_column = req.params.get("time_column").map(|c| c.trim().to_string());
    if time_column.is_some() && state.engine.table(name).is_none() {
        return Err(Error::Usage(
            "time_column: only a catalog's space-time MOC takes a time column".into(),
        ));
    }
    // Computed once per (name, orders, column): a catalog's is a pass over its rows.
    let key = (name.to_string(), order, time_order, time_column.clone());
    let cached = state
        .sky_maps
        .stmocs
        .lock()
        .expect("ST-MOC cache")
        .get(&key)
        .cloned();
    if let Some(body) = cached {
        return Ok(stmoc_response(body));
    }
    let moc = tokio::task::spawn_blocking(move || -> Result<Option<meridian_sky::StMoc>> {
        match s.engine.table(&n) {
            Some(table) => table
                .catalog()
                .stmoc(order, time_order, time_column.as_deref(), &|_| {})
                .map_err(|e| Error::Usage(format!("ST-MOC of '{n}': {e}"))),
            None => s
                .images
                .index
                .collection_stmoc(&n, order, time_order)
                .transpose()
                .map_err(|e| Error::Internal(e.to_string())),
        }
    })
    .await
    .map_err(|e| Error::Internal(format!("ST-MOC: {e}")))??;
    let moc = match moc {
        Some(m) => m,
        None if state.images.index.has_collection(name) || state.engine.table(name).is_some() => {
            return Err(Error::Usage(format!(
                "type: '{name}' has no times, so no space-time MOC"
            )));
        }
        None => {
            return Err(Error::NotFound(format!(
                "no catalog or image collection named '{name}'"
            )));
        }
    };
    let body =
        meridian_sky::stmoc_fits(&moc, Some(name)).map_err(|e| Error::Internal(e.to_string()))?;
    let body = bytes::Bytes::from(body);
    {
        let mut cache = state.sky_maps.stmocs.lock().expect("ST-MOC cache");
        // Kept within a few dozen: the key is the client's to choose.
        if cache.len() >= STMOC_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(key, body.clone());
    }
    Ok(stmoc_response(body))
}

/// Finest space order of a served space-time MOC (order 12 cells are 52 arcseconds).
const STMOC_MAX_ORDER: u8 = 12;

/// Space-time MOCs kept at most.
const STMOC_CACHE_ENTRIES: usize = 32;

fn stmoc_response(body: bytes::Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/fits"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// The HiPS under the served directory: (name, properties text), by name.
fn hips_list(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name.ends_with(".building") || name.ends_with(".old") {
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(e.path().join("properties")) {
                out.push((name, text));
            }
        }
    }
    out.sort();
    out
}

/// `GET /hips/list`: every served HiPS's properties with its `hips_service_url`, in the
/// HiPS list format (records separated by blank lines).
pub async fn list(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<Response> {
    let base = crate::vosi::base_url(&state, &headers);
    let mut body = String::new();
    if let Some(dir) = &state.sky_maps.hips_dir {
        for (name, text) in hips_list(dir) {
            let p = meridian_hips::Properties::parse(&text);
            let mut p = p.clone();
            p.set("hips_service_url", format!("{base}/hips/{name}"));
            p.set("moc_access_url", format!("{base}/hips/{name}/Moc.fits"));
            body.push_str(&p.text());
            body.push('\n');
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response())
}

/// `GET /hips/{name}/{*path}`: a file of a HiPS.
pub async fn file(
    State(state): State<AppState>,
    Path((name, path)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
) -> Result<Response> {
    let not_found = || Error::NotFound(format!("no file '{path}' in HiPS '{name}'"));
    let dir = state.sky_maps.hips_dir.as_ref().ok_or_else(not_found)?;
    // Only plain names: never a way out of the HiPS's directory.
    let rel = std::path::Path::new(&path);
    let plain = |p: &std::path::Path| {
        p.components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
    };
    if name.starts_with('.')
        || name.contains('/')
        || name.ends_with(".building")
        || name.ends_with(".old")
        || !plain(rel)
        || path.is_empty()
    {
        return Err(not_found());
    }
    let full = dir.join(&name).join(rel);
    // A stat of a file the page cache holds takes microseconds: no blocking-pool trip.
    let meta = std::fs::metadata(&full).map_err(|_| not_found())?;
    if !meta.is_file() {
        return Err(not_found());
    }
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let etag = format!("\"{:x}-{:x}\"", meta.len(), modified);
    let tile = path.starts_with("Norder");
    let cache = if tile {
        "public, max-age=86400, immutable"
    } else {
        "public, max-age=60"
    };
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        return Ok((
            axum::http::StatusCode::NOT_MODIFIED,
            [
                (header::ETAG, etag),
                (header::CACHE_CONTROL, cache.to_string()),
                (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".to_string()),
            ],
        )
            .into_response());
    }
    let kind = match rel.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "fits" => "application/fits",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "tsv" => "text/tab-separated-values",
        "xml" => "text/xml; charset=utf-8",
        "json" => "application/json",
        "html" => "text/html; charset=utf-8",
        _ => "text/plain; charset=utf-8",
    };
    let cached = state
        .sky_maps
        .tiles
        .lock()
        .expect("tile cache")
        .get(&full, &etag);
    let bytes = match cached {
        Some(b) => b,
        None => {
            let b = bytes::Bytes::from(tokio::fs::read(&full).await.map_err(|_| not_found())?);
            state.sky_maps.tiles.lock().expect("tile cache").put(
                full.clone(),
                etag.clone(),
                b.clone(),
            );
            b
        }
    };
    state.metrics.add_bytes_out(bytes.len() as u64);
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, cache.to_string()),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*".to_string()),
        ],
        bytes,
    )
        .into_response())
}

/// Most pixels a hips2fits image may have (4096 x 4096).
const HIPS2FITS_MAX_PIXELS: u64 = 4096 * 4096;

/// `GET|POST /hips2fits?hips=&width=&height=&projection=&coordsys=&ra=&dec=&fov=
/// [&rotation_angle=][&format=fits|png][&min_cut=&max_cut=][&stretch=linear|sqrt|log|asinh]`:
/// an image of the sky drawn from a served HiPS (named by its name or its `creator_did`).
pub async fn hips2fits(State(state): State<AppState>, req: DaliRequest) -> Result<Response> {
    let p = &req.params;
    let dir = state
        .sky_maps
        .hips_dir
        .clone()
        .ok_or_else(|| Error::NotFound("no HiPS are served".into()))?;
    let wanted = p.required("hips")?.trim().to_string();
    let name = hips_list(&dir)
        .into_iter()
        .find(|(name, text)| {
            *name == wanted
                || meridian_hips::Properties::parse(text).get("creator_did")
                    == Some(wanted.as_str())
        })
        .map(|(name, _)| name)
        .ok_or_else(|| Error::Usage(format!("hips: no HiPS named '{wanted}' is served")))?;
    let number = |k: &str| -> Result<f64> {
        let v = p.required(k)?;
        v.trim()
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| Error::Usage(format!("{k}: '{v}' is not a number")))
    };
    let size = |k: &str| -> Result<usize> {
        let v = p.required(k)?;
        v.trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=16_384).contains(n))
            .ok_or_else(|| Error::Usage(format!("{k}: '{v}' is not a size from 1 to 16384 pixels")))
    };
    let galactic = match p.get("coordsys").map(|c| c.trim().to_ascii_lowercase()) {
        None => false,
        Some(c) if c == "icrs" || c.is_empty() => false,
        Some(c) if c == "galactic" => true,
        Some(c) => {
            return Err(Error::Usage(format!(
                "coordsys: '{c}' is not icrs or galactic"
            )));
        }
    };
    let request = meridian_hips::hips2fits::Request {
        width: size("width")?,
        height: size("height")?,
        projection: p.get("projection").unwrap_or("TAN").trim().to_string(),
        galactic,
        lon_deg: number("ra")?.rem_euclid(360.0),
        lat_deg: number("dec")?,
        fov_deg: number("fov")?,
        rotation_deg: match p.get("rotation_angle") {
            Some(_) => number("rotation_angle")?,
            None => 0.0,
        },
    };
    let format = p
        .get("format")
        .unwrap_or("fits")
        .trim()
        .to_ascii_lowercase();
    if !matches!(format.as_str(), "fits" | "png") {
        return Err(Error::Usage(format!(
            "format: '{format}' is not fits or png"
        )));
    }
    let cut = |k: &str| -> Result<Option<f64>> {
        match p.get(k) {
            Some(_) => number(k).map(Some),
            None => Ok(None),
        }
    };
    let (min_cut, max_cut) = (cut("min_cut")?, cut("max_cut")?);
    let stretch = p
        .get("stretch")
        .unwrap_or("linear")
        .trim()
        .to_ascii_lowercase();
    if !matches!(stretch.as_str(), "linear" | "sqrt" | "log" | "asinh") {
        return Err(Error::Usage(format!(
            "stretch: '{stretch}' is not linear, sqrt, log or asinh"
        )));
    }
    let root = dir.join(&name);
    // Two images drawn at a time: each holds the tiles it reads.
    let permit = state
        .sky_maps
        .drawing
        .0
        .clone()
        .acquire_owned()
        .await
        .map_err(|e| Error::Internal(format!("hips2fits: {e}")))?;
    let body = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, &'static str)> {
        let _permit = permit;
        let drawn =
            meridian_hips::hips2fits::draw(&root, &request, HIPS2FITS_MAX_PIXELS).map_err(|e| {
                match e {
                    // The HiPS's files, not the request: no path to the client.
                    meridian_hips::Error::Io { .. } | meridian_hips::Error::Catalog(_) => {
                        tracing::warn!(error = %e, "hips2fits");
                        Error::Internal("hips2fits: the HiPS could not be read".into())
                    }
                    meridian_hips::Error::Invalid(m) => Error::Usage(m),
                }
            })?;
        if format == "fits" {
            let mut cards: Vec<(&str, String)> =
                drawn.cards.iter().map(|(k, v)| (*k, v.clone())).collect();
            cards.push(("HIPS", format!("'{}'", name.replace('\'', "''"))));
            return Ok((
                meridian_hips::tile::fits_image(
                    drawn.width,
                    drawn.height,
                    &drawn.rows_from_top,
                    &cards,
                ),
                "application/fits",
            ));
        }
        // PNG: the cuts asked for, else the HiPS's own, else the image's range.
        let props = std::fs::read_to_string(root.join("properties"))
            .map(|t| meridian_hips::Properties::parse(&t))
            .unwrap_or_default();
        let own: Vec<f64> = props
            .get("hips_pixel_cut")
            .map(|c| {
                c.split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let finite = drawn.rows_from_top.iter().filter(|v| v.is_finite());
        let lo = min_cut
            .or(own.first().copied())
            .unwrap_or_else(|| finite.clone().fold(f64::INFINITY, |a, &v| a.min(v as f64)));
        let hi = max_cut
            .or(own.get(1).copied())
            .unwrap_or_else(|| finite.fold(f64::NEG_INFINITY, |a, &v| a.max(v as f64)));
        let span = if hi > lo { hi - lo } else { 1.0 };
        let f = |t: f64| match stretch.as_str() {
            "sqrt" => t.sqrt(),
            "log" => (1.0 + 1000.0 * t).ln() / 1001f64.ln(),
            "asinh" => (10.0 * t).asinh() / 10f64.asinh(),
            _ => t,
        };
        let mut grey = Vec::with_capacity(drawn.rows_from_top.len());
        let mut alpha = Vec::with_capacity(drawn.rows_from_top.len());
        for v in &drawn.rows_from_top {
            if v.is_finite() {
                let t = ((*v as f64 - lo) / span).clamp(0.0, 1.0);
                grey.push((f(t) * 255.0).round() as u8);
                alpha.push(255);
            } else {
                grey.push(0);
                alpha.push(0);
            }
        }
        let png = meridian_hips::tile::png_image(drawn.width, drawn.height, &grey, Some(&alpha))
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok((png, "image/png"))
    })
    .await
    .map_err(|e| Error::Internal(format!("hips2fits: {e}")))??;
    state.metrics.add_bytes_out(body.0.len() as u64);
    Ok((
        [
            (header::CONTENT_TYPE, body.1),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body.0,
    )
        .into_response())
}
