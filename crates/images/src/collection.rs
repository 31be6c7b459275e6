//! Image collections: FITS images registered in place, one dataset per image HDU, with
//! what ObsCore says of each (footprint, time, band, facility).
//!
//! A collection is one JSON document, written to a temporary file and renamed, so that a
//! reader sees the previous collection or the new one, never a half-written one. Adding
//! to a collection again reads only the files that are new or changed (size or time).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Footprint, ImageHdu, Result};

/// One image HDU of a collection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Dataset {
    /// Identifier within the collection: the file's path relative to the collection's
    /// root (or absolute), with the HDU when it is not the primary.
    pub id: String,
    pub path: PathBuf,
    pub hdu: usize,
    pub width: u64,
    pub height: u64,
    pub bitpix: i64,
    pub compressed: bool,
    pub file_bytes: u64,
    pub file_modified_s: i64,
    pub ra_deg: f64,
    pub dec_deg: f64,
    pub corners_deg: Vec<(f64, f64)>,
    pub fov_deg: f64,
    pub pixel_arcsec: f64,
    pub t_min_mjd: Option<f64>,
    pub t_max_mjd: Option<f64>,
    pub exptime_s: Option<f64>,
    pub em_min_m: Option<f64>,
    pub em_max_m: Option<f64>,
    pub filter: Option<String>,
    pub facility: Option<String>,
    pub instrument: Option<String>,
    pub target: Option<String>,
}

/// A named set of datasets.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Collection {
    pub name: String,
    pub datasets: Vec<Dataset>,
}

impl Collection {
    /// The MOC at `order` of the collection's footprints: every cell that meets one of
    /// the images (each image's polygon of its outer pixel corners, ICRS).
    pub fn moc(&self, order: u8) -> Result<meridian_sky::Moc> {
        let mut mocs = Vec::with_capacity(self.datasets.len());
        for d in &self.datasets {
            mocs.push(d.moc(order)?);
        }
        Ok(meridian_sky::moc_union(&mocs))
    }
}

impl Collection {
    /// The space-time MOC of the images with a time span (t_min to t_max, or the instant
    /// of t_min), times at `time_order` and footprints at `space_order`; `None` when no
    /// image has a time.
    pub fn stmoc(&self, space_order: u8, time_order: u8) -> Option<Result<meridian_sky::StMoc>> {
        let timed: Vec<&Dataset> = self
            .datasets
            .iter()
            .filter(|d| d.t_min_mjd.is_some())
            .collect();
        if timed.is_empty() {
            return None;
        }
        let skies: Result<Vec<meridian_sky::Moc>> =
            timed.iter().map(|d| d.moc(space_order)).collect();
        Some(skies.and_then(|skies| {
            let spans = timed.iter().zip(&skies).map(|(d, sky)| {
                let t0 = d.t_min_mjd.unwrap_or_default();
                (t0, d.t_max_mjd.unwrap_or(t0).max(t0), sky)
            });
            meridian_sky::stmoc_from_spans(time_order, space_order, spans)
                .map_err(|e| Error::Wcs(format!("space-time coverage of '{}': {e}", self.name)))
        }))
    }
}

impl Dataset {
    /// The MOC at `order` of the image's footprint.
    pub fn moc(&self, order: u8) -> Result<meridian_sky::Moc> {
        let bad = |e: meridian_sky::Error| Error::Wcs(format!("footprint of '{}': {e}", self.id));
        let vertices = self
            .corners_deg
            .iter()
            .map(|(ra, dec)| meridian_sky::SkyPoint::new(ra.rem_euclid(360.0), *dec))
            .collect::<std::result::Result<Vec<_>, _>>()
            .and_then(meridian_sky::Polygon::new)
            .map_err(bad)?;
        meridian_sky::Region::Polygon(vertices)
            .coverage(order)
            .map_err(bad)
    }
}

/// A file that could not be registered, and why.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub path: PathBuf,
    pub reason: String,
}

/// What an `add` did.
#[derive(Debug, Default)]
pub struct Added {
    /// Files read (new or changed).
    pub read: usize,
    /// Files unchanged since the last add, kept as they were.
    pub unchanged: usize,
    /// Datasets in the collection afterwards.
    pub datasets: usize,
    /// Files skipped (with `skip_bad`).
    pub rejected: Vec<Rejected>,
}

/// Names a collection may have: a letter, then letters, digits, '_' or '-'.
pub fn check_name(name: &str) -> Result<()> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "collection name '{name}' is not allowed: use a letter, then letters, digits, \
             '_' or '-', at most 64 characters"
        )))
    }
}

fn document(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// The collections kept in `dir`, by name.
pub fn list(dir: &Path) -> Result<Vec<Collection>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries {
        let p = e.map_err(|e| io(dir, e))?.path();
        if p.extension().is_some_and(|x| x == "json") {
            out.push(read(&p)?);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Collection `name` of `dir`, if there is one.
pub fn open(dir: &Path, name: &str) -> Result<Option<Collection>> {
    check_name(name)?;
    let p = document(dir, name);
    if !p.exists() {
        return Ok(None);
    }
    read(&p).map(Some)
}

fn read(p: &Path) -> Result<Collection> {
    let text = std::fs::read_to_string(p).map_err(|e| io(p, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: not a collection document: {e}", p.display())))
}

/// Removes collection `name` of `dir` (the images stay where they are).
pub fn remove(dir: &Path, name: &str) -> Result<bool> {
    check_name(name)?;
    let p = document(dir, name);
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io(&p, e)),
    }
}

fn io(p: &Path, e: std::io::Error) -> Error {
    Error::Pixels(format!("{}: {e}", p.display()))
}

/// Whether `p` names a FITS file (by extension).
pub fn is_fits_name(p: &Path) -> bool {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    [".fits", ".fit", ".fts", ".fz"]
        .iter()
        .any(|x| name.ends_with(x))
}

/// The FITS files `paths` name: files as given, directories' FITS files (and their
/// subdirectories' with `recursive`), and the matches of glob patterns (`*`, `?`, `[...]`)
/// that the shell left unexpanded, sorted.
pub fn files(paths: &[PathBuf], recursive: bool) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<()> {
        for e in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let p = e.map_err(|e| io(dir, e))?.path();
            if p.is_dir() {
                if recursive {
                    walk(&p, recursive, out)?;
                }
            } else if is_fits_name(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        let text = p.to_string_lossy();
        if p.is_dir() {
            walk(p, recursive, &mut out)?;
        } else if p.exists() {
            out.push(p.clone());
        } else if text.contains(['*', '?', '[']) {
            // A pattern the shell did not expand (quoted): matching files and directories.
            let matches = glob::glob(&text)
                .map_err(|e| Error::Invalid(format!("{text}: not a valid pattern: {e}")))?;
            let before = out.len();
            for m in matches {
                let m = m.map_err(|e| Error::Invalid(format!("{text}: {e}")))?;
                if m.is_dir() {
                    walk(&m, recursive, &mut out)?;
                } else if is_fits_name(&m) {
                    out.push(m);
                }
            }
            if out.len() == before {
                return Err(Error::Invalid(format!("{text}: no FITS file matches")));
            }
        } else {
            return Err(Error::Invalid(format!(
                "{}: no such file or directory",
                p.display()
            )));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn modified_s(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// The datasets of one file: each image HDU with a celestial WCS (HDUs without one are
/// not images of the sky and are passed over; a file with none is refused).
pub fn datasets_of(path: &Path, id_base: &str) -> Result<Vec<Dataset>> {
    let meta = std::fs::metadata(path).map_err(|e| io(path, e))?;
    let hdus = crate::image_hdus(path)?;
    let mut out = Vec::new();
    let mut why = None;
    for h in &hdus {
        match dataset(path, id_base, h, &meta) {
            Ok(d) => out.push(d),
            Err(e) => why = Some(format!("HDU {}: {e}", h.index)),
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no image with a celestial WCS{}",
            path.display(),
            why.map(|w| format!(" ({w})")).unwrap_or_default()
        )));
    }
    Ok(out)
}

fn dataset(path: &Path, id_base: &str, h: &ImageHdu, meta: &std::fs::Metadata) -> Result<Dataset> {
    let wcs = h.wcs()?;
    let size = h.size();
    let fp = Footprint::of(&wcs, size)?;
    let header = &h.header;
    let text = |k: &str| {
        header
            .string(k)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let exptime_s = header.float("EXPTIME").or_else(|| header.float("EXPOSURE"));
    let t_min_mjd = header
        .float("MJD-OBS")
        .or_else(|| text("DATE-OBS").and_then(|d| parse_date_mjd(&d)));
    let t_max_mjd = t_min_mjd.map(|t| t + exptime_s.unwrap_or(0.0) / 86400.0);
    let filter = text("FILTER")
        .or_else(|| text("FILTER1"))
        .or_else(|| text("BAND"));
    let (em_min_m, em_max_m) = filter
        .as_deref()
        .and_then(band_of)
        .map_or((None, None), |(a, b)| (Some(a), Some(b)));
    let id = if h.index == 0 {
        id_base.to_string()
    } else {
        format!("{id_base}[{}]", h.index)
    };
    Ok(Dataset {
        id,
        path: path.to_path_buf(),
        hdu: h.index,
        width: size.0,
        height: size.1,
        bitpix: h.bitpix,
        compressed: h.compressed,
        file_bytes: meta.len(),
        file_modified_s: modified_s(meta),
        ra_deg: fp.ra_deg,
        dec_deg: fp.dec_deg,
        corners_deg: fp.corners_deg,
        fov_deg: fp.fov_deg,
        pixel_arcsec: fp.pixel_arcsec,
        t_min_mjd,
        t_max_mjd,
        exptime_s,
        em_min_m,
        em_max_m,
        filter,
        facility: text("TELESCOP").or_else(|| text("OBSERVAT")),
        instrument: text("INSTRUME"),
        target: text("OBJECT"),
    })
}

/// MJD as an ISO 8601 UTC time (`YYYY-MM-DDThh:mm:ss.sss`).
pub fn mjd_to_iso(mjd: f64) -> String {
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let ms = ((mjd - 40_587.0) * 86_400_000.0).round() as i64;
    let (days, ms_of_day) = (ms.div_euclid(86_400_000), ms.rem_euclid(86_400_000));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

/// The Modified Julian Date of a FITS date: `YYYY-MM-DD[THH:MM:SS[.s]]` or the old
/// `DD/MM/YY` (19YY).
pub fn parse_date_mjd(s: &str) -> Option<f64> {
    let s = s.trim();
    let (date, time) = s.split_once('T').unwrap_or((s, ""));
    let (y, m, d): (i64, i64, i64) = if let Some((d, rest)) = date.split_once('/') {
        let (m, y) = rest.split_once('/')?;
        (
            1900 + y.parse::<i64>().ok()?,
            m.parse().ok()?,
            d.parse().ok()?,
        )
    } else {
        let mut it = date.split('-');
        (
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
            it.next()?.parse().ok()?,
        )
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), then MJD (1858-11-17 is day 0).
    let (yy, mm) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let doy = (153 * mm + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468; // days since 1970-01-01
    let mut mjd = days as f64 + 40_587.0;
    if !time.is_empty() {
        let mut parts = time.split(':');
        let h: f64 = parts.next()?.parse().ok()?;
        let mi: f64 = parts.next().unwrap_or("0").parse().ok()?;
        let se: f64 = parts.next().unwrap_or("0").parse().ok()?;
        mjd += (h * 3600.0 + mi * 60.0 + se) / 86400.0;
    }
    Some(mjd)
}

/// Wavelength range (metres) of a common photometric band named by a FILTER value:
/// SDSS/DECam/LSST ugrizy, Johnson-Cousins UBVRI and 2MASS/UKIDSS JHK(s).
pub fn band_of(filter: &str) -> Option<(f64, f64)> {
    let f = filter.trim();
    let first = f.split([' ', '.', '_']).next().unwrap_or(f);
    let nm = |a: f64, b: f64| Some((a * 1e-9, b * 1e-9));
    match first {
        "u" => nm(300.0, 400.0),
        "g" => nm(400.0, 552.0),
        "r" => nm(552.0, 691.0),
        "i" => nm(691.0, 818.0),
        "z" => nm(818.0, 922.0),
        "y" | "Y" => nm(950.0, 1080.0),
        "U" => nm(320.0, 400.0),
        "B" => nm(390.0, 490.0),
        "V" => nm(500.0, 600.0),
        "R" => nm(560.0, 760.0),
        "I" => nm(700.0, 900.0),
        "J" => nm(1170.0, 1330.0),
        "H" => nm(1490.0, 1780.0),
        "K" | "Ks" | "KS" => nm(1990.0, 2310.0),
        _ => None,
    }
}

/// Adds `files` to collection `name` in `dir` (made if new): new and changed files are
/// read, unchanged ones kept; a file that cannot be registered fails the whole add (and
/// nothing is written) unless `skip_bad`, when it is reported and left out. `root` is
/// what dataset ids are relative to. `progress` hears of each file done.
pub fn add(
    dir: &Path,
    name: &str,
    root: Option<&Path>,
    files: &[PathBuf],
    skip_bad: bool,
    mut progress: impl FnMut(&Path),
) -> Result<Added> {
    check_name(name)?;
    let mut collection = open(dir, name)?.unwrap_or_else(|| Collection {
        name: name.to_string(),
        datasets: Vec::new(),
    });
    let mut by_path: HashMap<PathBuf, Vec<Dataset>> = HashMap::new();
    for d in std::mem::take(&mut collection.datasets) {
        by_path.entry(d.path.clone()).or_default().push(d);
    }
    let mut added = Added::default();
    let root = root.and_then(|r| std::fs::canonicalize(r).ok());
    for f in files {
        let path = std::fs::canonicalize(f).map_err(|e| io(f, e))?;
        let meta = std::fs::metadata(&path).map_err(|e| io(&path, e))?;
        if let Some(old) = by_path.get(&path)
            && old.first().is_some_and(|d| {
                d.file_bytes == meta.len() && d.file_modified_s == modified_s(&meta)
            })
        {
            added.unchanged += 1;
            progress(f);
            continue;
        }
        let id_base = root
            .as_deref()
            .and_then(|r| path.strip_prefix(r).ok().map(Path::to_path_buf))
            .unwrap_or_else(|| path.clone())
            .to_string_lossy()
            .into_owned();
        match datasets_of(&path, &id_base) {
            Ok(ds) => {
                by_path.insert(path.clone(), ds);
                added.read += 1;
            }
            Err(e) if skip_bad => added.rejected.push(Rejected {
                path: f.clone(),
                reason: e.to_string(),
            }),
            Err(e) => return Err(e),
        }
        progress(f);
    }
    let mut datasets: Vec<Dataset> = by_path.into_values().flatten().collect();
    datasets.sort_by(|a, b| a.id.cmp(&b.id));
    added.datasets = datasets.len();
    collection.datasets = datasets;
    save(dir, &collection)?;
    Ok(added)
}

/// Writes `collection` to `dir`: a temporary file, then a rename.
fn save(dir: &Path, collection: &Collection) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let target = document(dir, &collection.name);
    let tmp = dir.join(format!(".{}.json.partial", collection.name));
    let text = serde_json::to_string_pretty(collection)
        .map_err(|e| Error::Invalid(format!("collection '{}': {e}", collection.name)))?;
    std::fs::write(&tmp, text).map_err(|e| io(&tmp, e))?;
    std::fs::rename(&tmp, &target).map_err(|e| io(&target, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mjd_to_iso_inverts_parse_date_mjd() {
        assert_eq!(mjd_to_iso(51_544.5), "2000-01-01T12:00:00.000");
        for mjd in [40_587.0, 58_225.149_560_185, 60_949.25] {
            let back = parse_date_mjd(&mjd_to_iso(mjd)).unwrap();
            assert!((back - mjd).abs() < 1e-8, "{mjd}: {back}");
        }
    }

    #[test]
    fn dates_become_mjd() {
        assert_eq!(parse_date_mjd("1858-11-17"), Some(0.0));
        assert_eq!(parse_date_mjd("2000-01-01T12:00:00"), Some(51544.5));
        assert_eq!(parse_date_mjd("08/11/51"), parse_date_mjd("1951-11-08"));
        assert_eq!(parse_date_mjd("2000-13-01"), None);
        assert_eq!(parse_date_mjd("yesterday"), None);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("decals_dr10").is_ok());
        for bad in ["", "1x", "a/b", "..", "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
