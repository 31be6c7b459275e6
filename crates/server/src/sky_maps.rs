//! Coverage maps: `/moc/{name}` is the MOC 2.0 of a catalog (the cells holding its rows)
//! or of an image collection (the cells its footprints meet), as FITS (the default), JSON
//! or ASCII (`fmt=`), at `order=` (default 10, at most 16). Computed once for each name
//! and order, then kept: catalogs and collections do not change while the server runs.

use std::collections::HashMap;
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

/// The MOCs computed so far, by (name, order).
#[derive(Default)]
pub struct MocCache {
    mocs: Mutex<HashMap<(String, u8), Arc<meridian_sky::Moc>>>,
}

impl std::fmt::Debug for MocCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MocCache").finish_non_exhaustive()
    }
}

/// The MOC of catalog or collection `name` at `order`.
pub(crate) fn moc_of(state: &AppState, name: &str, order: u8) -> Result<Arc<meridian_sky::Moc>> {
    let key = (name.to_string(), order);
    if let Some(m) = state.mocs.mocs.lock().expect("MOC cache").get(&key) {
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
            "no catalog or image collection named '{name}'"
        )));
    };
    let moc = Arc::new(moc);
    state
        .mocs
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
