//! The registered images: their files (`/images/file`, ObsCore's `#this`), headers
//! (`/images/header`, DataLink's `#auxiliary`), coverage (`/images/coverage`, a MOC) and
//! quick-look previews (`/preview`). Only registered datasets are served, found by their
//! publisher DID; no path ever comes from the request.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use meridian_images::ImageHdu;
use meridian_images::collection::Collection;
use meridian_images::preview::Stretch;
use meridian_images::sia::{Entry, ObsIndex};

use crate::AppState;
use crate::error::{Error, Result};
use crate::params::DaliRequest;

/// Bytes of previews kept in memory; the oldest go first.
const PREVIEW_CACHE_BYTES: usize = 64 << 20;

/// Default preview side, pixels.
pub const PREVIEW_SIZE: u32 = 512;

type PreviewKey = (String, u32, Stretch);

#[derive(Default)]
struct PreviewCache {
    items: HashMap<PreviewKey, Bytes>,
    order: VecDeque<PreviewKey>,
    bytes: usize,
}

/// The registered datasets with what the image services keep of them.
#[derive(Default)]
pub struct ImageService {
    /// Every dataset, for SIA, DataLink and SODA.
    pub index: ObsIndex,
    /// The most pixels one cutout may hold.
    pub max_cutout_pixels: u64,
    previews: Mutex<PreviewCache>,
    /// Image HDUs read so far, by DID: finding a HDU means reading every header before it
    /// (and, in a plain file, passing over their data), which a cutout should not repeat.
    hdus: Mutex<HashMap<String, std::sync::Arc<ImageHdu>>>,
}

/// Image HDUs kept in [`ImageService`]'s cache before it is emptied.
const HDU_CACHE_ENTRIES: usize = 4096;

impl std::fmt::Debug for ImageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageService")
            .field("datasets", &self.index.len())
            .finish()
    }
}

impl ImageService {
    /// The datasets of `collections`, with DIDs under `authority`.
    pub fn new(collections: &[Collection], authority: &str, max_cutout_pixels: u64) -> Self {
        Self {
            index: ObsIndex::new(collections, authority),
            max_cutout_pixels,
            previews: Mutex::default(),
            hdus: Mutex::default(),
        }
    }

    /// The image HDU of `entry`, read from its file the first time only.
    pub(crate) fn hdu(&self, entry: &Entry) -> Result<std::sync::Arc<ImageHdu>> {
        if let Some(h) = self
            .hdus
            .lock()
            .ok()
            .and_then(|c| c.get(&entry.did).cloned())
        {
            return Ok(h);
        }
        let h = std::sync::Arc::new(image_hdu(entry)?);
        if let Ok(mut c) = self.hdus.lock() {
            if c.len() >= HDU_CACHE_ENTRIES {
                c.clear();
            }
            c.insert(entry.did.clone(), h.clone());
        }
        Ok(h)
    }

    /// Dataset `did`, or a 404 naming it.
    pub fn entry(&self, did: &str) -> Result<&Entry> {
        self.index
            .get(did)
            .ok_or_else(|| Error::NotFound(format!("ID: no image dataset '{did}'")))
    }

    fn cached(&self, key: &PreviewKey) -> Option<Bytes> {
        self.previews.lock().ok()?.items.get(key).cloned()
    }

    fn keep(&self, key: PreviewKey, png: Bytes) {
        let Ok(mut c) = self.previews.lock() else {
            return;
        };
        if png.len() > PREVIEW_CACHE_BYTES || c.items.contains_key(&key) {
            return;
        }
        while c.bytes + png.len() > PREVIEW_CACHE_BYTES {
            let Some(old) = c.order.pop_front() else {
                break;
            };
            if let Some(b) = c.items.remove(&old) {
                c.bytes -= b.len();
            }
        }
        c.bytes += png.len();
        c.order.push_back(key.clone());
        c.items.insert(key, png);
    }
}

/// The image HDU of `entry`, read from its file.
fn image_hdu(entry: &Entry) -> Result<ImageHdu> {
    let d = &entry.dataset;
    meridian_images::image_hdus(&d.path)?
        .into_iter()
        .find(|h| h.index == d.hdu)
        .ok_or_else(|| {
            Error::Internal(format!(
                "image dataset '{}': HDU {} of {} is no longer an image",
                entry.did,
                d.hdu,
                d.path.display()
            ))
        })
}

/// `GET /images/file?ID=...`: the file that holds the dataset, as it is registered.
pub async fn file(State(state): State<AppState>, req: DaliRequest) -> Result<Response> {
    let id = req.params.required("ID")?;
    let path = state.images.entry(id)?.dataset.path.clone();
    let fh = tokio::fs::File::open(&path)
        .await
        .map_err(|e| Error::Internal(format!("image dataset '{id}' cannot be read: {e}")))?;
    let len = fh
        .metadata()
        .await
        .map_err(|e| Error::Internal(format!("image dataset '{id}' cannot be read: {e}")))?
        .len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().replace('"', ""))
        .unwrap_or_default();
    let kind = if name.ends_with(".gz") {
        "application/gzip"
    } else {
        "image/fits"
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (header::CONTENT_LENGTH, len.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        Body::from_stream(tokio_util::io::ReaderStream::new(fh)),
    )
        .into_response())
}

/// `GET /images/header?ID=...`: the dataset's FITS header as text, one card a line.
pub async fn header_text(State(state): State<AppState>, req: DaliRequest) -> Result<Response> {
    let id = req.params.required("ID")?;
    let entry = state.images.entry(id)?.clone();
    let images = state.images.clone();
    let hdu = tokio::task::spawn_blocking(move || images.hdu(&entry))
        .await
        .map_err(|e| Error::Internal(format!("header: {e}")))??;
    let mut text = String::new();
    for (_, card) in hdu.header.card_images() {
        text.push_str(card.trim_end());
        text.push('\n');
    }
    text.push_str("END\n");
    Ok(crate::text(text))
}

/// `GET /images/coverage?ID=...`: the dataset's footprint as a MOC (Aladin's JSON), at
/// the order whose cells are about a twentieth of the field.
pub async fn coverage(State(state): State<AppState>, req: DaliRequest) -> Result<Response> {
    let id = req.params.required("ID")?;
    let d = &state.images.entry(id)?.dataset;
    let order = (0..=18u8)
        .rev()
        .find(|o| meridian_sky::healpix::mean_cell_size_deg(*o) >= d.fov_deg / 20.0)
        .unwrap_or(0);
    let moc = d
        .moc(order)
        .map_err(|e| Error::Internal(format!("coverage of '{id}': {e}")))?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        meridian_sky::moc_json(&moc),
    )
        .into_response())
}

/// `GET /preview?ID=...[&SIZE=512][&STRETCH=zscale|asinh]`: a PNG quick-look, cached.
pub async fn preview(State(state): State<AppState>, req: DaliRequest) -> Result<Response> {
    let id = req.params.required("ID")?.to_string();
    let size = match req.params.get("SIZE") {
        None => PREVIEW_SIZE,
        Some(s) => s
            .trim()
            .parse::<u32>()
            .map_err(|_| Error::Usage(format!("SIZE: '{s}' is not a number of pixels")))?,
    };
    let stretch = Stretch::parse(req.params.get("STRETCH").unwrap_or("zscale"))?;
    let entry = state.images.entry(&id)?.clone();
    let key = (id, size, stretch);
    let png = match state.images.cached(&key) {
        Some(png) => png,
        None => {
            let images = state.images.clone();
            let png = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
                let hdu = images.hdu(&entry)?;
                Ok(meridian_images::preview::png(
                    &entry.dataset.path,
                    &hdu,
                    size,
                    stretch,
                )?)
            })
            .await
            .map_err(|e| Error::Internal(format!("preview: {e}")))??;
            let png = Bytes::from(png);
            state.images.keep(key, png.clone());
            png
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "image/png"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        png,
    )
        .into_response())
}
