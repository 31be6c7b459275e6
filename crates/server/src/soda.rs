//! SODA 1.0 cutouts of the registered images at `/soda/sync`: ID (one or more) with
//! CIRCLE, POLYGON or POS (sky regions, ICRS degrees) or PIXELS (`x1:x2,y1:y2`), and BAND,
//! TIME and POL, which a 2-D image either meets whole or not at all. Every (ID, region)
//! pair that meets gives one HDU of the resulting FITS file, the first as the primary.
//! The file streams as its pixels are read; the whole request is bounded by the
//! configured pixel limit, checked before any pixel is read.
//!
//! `/soda/async` takes the same parameters as a UWS job among TAP's (its resources are
//! the job's, under `/tap/async/{id}`); its result is the FITS file.

use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use meridian_images::sia::{Interval, Pos, meets_any, parse_interval, parse_pos};
use meridian_images::soda::{parse_circle, parse_pixels, parse_polygon, region_box};
use meridian_images::{ImageHdu, PixelBox};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::images::ImageService;
use crate::params::{DaliRequest, Params};
use crate::result::BodySink;

/// What to cut from each image.
enum Cut {
    Region(Pos),
    Pixels(String),
}

/// One HDU of the answer.
pub(crate) struct Piece {
    path: PathBuf,
    hdu: std::sync::Arc<ImageHdu>,
    pixels: PixelBox,
}

/// Most IDs one request may name.
const MAX_IDS: usize = 100;

/// Most regions (CIRCLE, POLYGON, POS, PIXELS) one request may give.
const MAX_REGIONS: usize = 64;

/// Most HDUs one answer may hold.
const MAX_HDUS: usize = 256;

/// The pieces `params` ask for, each checked (IDs known, regions overlapping, the pixel
/// limit kept) before anything is read.
pub(crate) fn plan(images: &ImageService, params: &Params) -> Result<Vec<Piece>> {
    if let Some(f) = params.get("RESPONSEFORMAT")
        && !matches!(f.trim(), "application/fits" | "image/fits" | "fits")
    {
        return Err(Error::Usage(format!(
            "RESPONSEFORMAT: '{f}' is not supported; cutouts are FITS (application/fits)"
        )));
    }
    let ids: Vec<&str> = params.all("ID").map(str::trim).collect();
    if ids.is_empty() || ids.iter().any(|i| i.is_empty()) {
        return Err(Error::Usage("missing parameter ID".into()));
    }
    if ids.len() > MAX_IDS {
        return Err(Error::Usage(format!(
            "ID: {} identifiers in one request; at most {MAX_IDS}",
            ids.len()
        )));
    }
    let mut cuts = Vec::new();
    let mut bands: Vec<Interval> = Vec::new();
    let mut times: Vec<Interval> = Vec::new();
    let mut pols: Vec<&str> = Vec::new();
    for (name, value) in params.pairs() {
        if cuts.len() > MAX_REGIONS {
            return Err(Error::Usage(format!(
                "more than {MAX_REGIONS} regions (CIRCLE, POLYGON, POS, PIXELS) in one request"
            )));
        }
        match name.to_ascii_uppercase().as_str() {
            "CIRCLE" => cuts.push(Cut::Region(parse_circle(value)?)),
            "POLYGON" => cuts.push(Cut::Region(parse_polygon(value)?)),
            "POS" => cuts.push(Cut::Region(parse_pos("POS", value)?)),
            "PIXELS" => cuts.push(Cut::Pixels(value.clone())),
            "BAND" => bands.push(parse_interval("BAND", value)?),
            "TIME" => times.push(parse_interval("TIME", value)?),
            "POL" => pols.push(value.as_str()),
            _ => {}
        }
    }
    let mut pieces = Vec::new();
    let mut misses = Vec::new();
    let mut total: u64 = 0;
    for id in &ids {
        let entry = images.entry(id)?;
        let d = &entry.dataset;
        if !meets_any(&bands, d.em_min_m, d.em_max_m) {
            misses.push(format!("{id}: BAND does not meet the image's band"));
            continue;
        }
        if !meets_any(&times, d.t_min_mjd, d.t_max_mjd) {
            misses.push(format!("{id}: TIME does not meet the image's time"));
            continue;
        }
        if !pols.is_empty() {
            misses.push(format!("{id}: POL: the image has no polarization axis"));
            continue;
        }
        let hdu = images.hdu(entry)?;
        let size = hdu.size();
        let wcs = if cuts.iter().any(|c| matches!(c, Cut::Region(_))) {
            Some(hdu.wcs()?)
        } else {
            None
        };
        let mut boxes = Vec::new();
        if cuts.is_empty() {
            boxes.push(PixelBox {
                x: 0..size.0,
                y: 0..size.1,
            });
        }
        for cut in &cuts {
            match cut {
                Cut::Pixels(text) => boxes.push(parse_pixels("PIXELS", text, size)?),
                Cut::Region(pos) => {
                    let b = match &wcs {
                        Some(w) if entry.overlaps(pos) => region_box(w, size, pos),
                        _ => None,
                    };
                    match b {
                        Some(b) => boxes.push(b),
                        None => misses.push(format!("{id}: the region does not overlap the image")),
                    }
                }
            }
        }
        for b in boxes {
            if pieces.len() >= MAX_HDUS {
                return Err(Error::Usage(format!(
                    "the cutouts would make more than {MAX_HDUS} HDUs: ask for fewer IDs or \
                     regions"
                )));
            }
            total = total.saturating_add(meridian_images::cutout::cutout_pixels(&hdu, &b));
            if total > images.max_cutout_pixels {
                return Err(Error::Usage(format!(
                    "the cutouts would hold more than {} pixels, the service's limit: ask for \
                     smaller regions",
                    images.max_cutout_pixels
                )));
            }
            pieces.push(Piece {
                path: d.path.clone(),
                hdu: hdu.clone(),
                pixels: b,
            });
        }
    }
    if pieces.is_empty() {
        return Err(Error::Usage(format!(
            "NoOverlap: nothing to cut out: {}",
            misses.join("; ")
        )));
    }
    Ok(pieces)
}

/// Writes `pieces` as one FITS file to `out`.
pub(crate) fn write(pieces: &[Piece], out: &mut dyn std::io::Write) -> Result<()> {
    for (i, p) in pieces.iter().enumerate() {
        meridian_images::cutout::write_cutout_hdu(&p.path, &p.hdu, &p.pixels, i == 0, out)?;
    }
    Ok(())
}

/// `/soda/sync`, GET or POST.
pub async fn sync(State(state): State<AppState>, req: DaliRequest) -> Result<Response> {
    let images = state.images.clone();
    let params = req.params;
    // One blocking task plans the cutouts (answering at once whether they can be made)
    // and then writes them: one hand-off between threads rather than two.
    let (planned, is_planned) = tokio::sync::oneshot::channel::<Result<()>>();
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(4);
    let mut sink = BodySink::new(tx.clone(), state.metrics.clone());
    tokio::task::spawn_blocking(move || {
        let pieces = match plan(&images, &params) {
            Ok(p) => p,
            Err(e) => {
                let _ = planned.send(Err(e));
                return;
            }
        };
        tracing::info!(hdus = pieces.len(), "SODA cutout");
        let _ = planned.send(Ok(()));
        match write(&pieces, &mut sink) {
            Ok(()) => sink.send_rest_blocking(),
            Err(e) if tx.is_closed() => tracing::debug!(error = %e, "the client went away"),
            Err(e) => {
                tracing::error!(error = %e, "cutout failed");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    is_planned
        .await
        .map_err(|e| Error::Internal(format!("SODA: {e}")))??;
    let body = crate::result::body(rx);
    Ok((
        [
            (header::CONTENT_TYPE, "application/fits"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"cutout.fits\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// The parameter that marks a UWS job as a SODA cutout (TAP refuses it, so the two kinds
/// of job never mix).
pub(crate) const JOB_REQUEST: &str = "SODA-cutout";

/// Runs the cutout job of `params`: its FITS file written to `dir` (through a temporary
/// name); returns the result's file name and size.
pub(crate) fn run_job(
    images: &ImageService,
    params: &Params,
    dir: &std::path::Path,
) -> Result<(String, u64)> {
    let pieces = plan(images, params)?;
    let file = "cutout.fits";
    let tmp = dir.join(".cutout.fits.partial");
    let io = |e: std::io::Error| Error::Internal(format!("cutout file: {e}"));
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    let written = write(&pieces, &mut out);
    let done = written.and_then(|()| {
        let f = out.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, dir.join(file)).map_err(io)
    });
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let size = std::fs::metadata(dir.join(file)).map_err(io)?.len();
    Ok((file.to_string(), size))
}

/// `POST /soda/async`: a cutout job. The request is checked first (unknown IDs, bad
/// regions and the pixel limit are refused at once), then queued like a TAP job; PHASE=RUN
/// starts it.
pub async fn create_async(
    State(state): State<AppState>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    axum::extract::Extension(caller): axum::extract::Extension<Caller>,
    headers: axum::http::HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    caller.allows(meridian_services::accounts::Scope::RunJobs)?;
    let run = crate::uws::run_on_create(&req.params)?;
    let images = state.images.clone();
    let params = req.params.clone();
    tokio::task::spawn_blocking(move || plan(&images, &params).map(drop))
        .await
        .map_err(|e| Error::Internal(format!("SODA: {e}")))??;
    let mut parameters: Vec<(String, String)> = req
        .params
        .pairs()
        .iter()
        .filter(|(k, _)| {
            !["PHASE", "RUNID", "REQUEST"]
                .iter()
                .any(|c| c.eq_ignore_ascii_case(k))
        })
        .cloned()
        .collect();
    parameters.push(("REQUEST".into(), JOB_REQUEST.into()));
    let run_id = req.params.get("RUNID").map(str::to_string);
    let job = crate::uws::new_job(&state, &caller, peer, run_id, parameters)?;
    tracing::info!(job = %job.id, run, "SODA job created");
    if run {
        state.jobs.run(&job.id)?;
    }
    Ok(crate::uws::to_job(&state, &headers, &job.id))
}
