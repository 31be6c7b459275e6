//! DESI spectra: `coadd-*` and per-exposure `spectra-*` files (DESI data model, as in the
//! early data release), with the B, R and Z arms merged onto one wavelength grid, and
//! Redrock redshift catalogues to fill the redshift fields.
//!
//! HDUs are found by EXTNAME, never by position. What a spectrum gets:
//! - `specid` and `targetid`: FIBERMAP `TARGETID`; `ra_deg`/`dec_deg`: `TARGET_RA` and
//!   `TARGET_DEC` (a row without a finite position on the sky fails the file).
//! - Arrays: every arm `X` with `X_WAVELENGTH`, `X_FLUX`, `X_IVAR` and `X_MASK` images is
//!   merged (see [`read`]); `model` is `None` (it needs the Redrock templates).
//! - `redshift`, `redshift_err`, `redshift_warning`, `spectype`: from the [`ZCatalog`] when
//!   one is given and holds the TARGETID, else `None`.
//! - `exptime_s`: coadds `COADD_EXPTIME`; per-exposure files `EXPTIME` (column, else the
//!   primary header's).
//! - `dateobs`: coadds the earliest exposure (FIBERMAP `MIN_MJD`, else the smallest `MJD`
//!   of the target's EXP_FIBERMAP rows with FIBERSTATUS 0, the exposures the coadd used, or
//!   of all its rows when none is good); per-exposure files the row's `MJD` (column, else
//!   the primary header's `MJD-OBS`); as ISO 8601 UTC.
//! - `survey`: primary `SURVEY`; `instrument` "DESI", `telescope` "Mayall", `site` "KPNO";
//!   `specprimary` `None`; `file`: the file's name.
//! - `source_key`: `{SPGRP}={SPGRPVAL}`, then `tile={TILEID}` for groupings other than
//!   healpix (tile-based files can repeat a night across tiles), then `{SURVEY}` and
//!   `{PROGRAM}` (empty when absent), then `coadd` for coadds, or `night={NIGHT};expid={EXPID}`
//!   (`row={i}` when the FIBERMAP has no EXPID) for per-exposure files, joined by `;`:
//!   `healpix=26065;sv3;dark;coadd`, `healpix=26065;sv3;dark;night=20210406;expid=83734`.

use std::collections::HashMap;
use std::path::Path;

use crate::readers::fits::{Fits, Hdu};
use crate::readers::{Content, check_all, file_name, mjd_to_iso, sniff};
use crate::{Error, Result, Spectrum};

/// A Redrock redshift of one target.
#[derive(Debug, Clone, PartialEq)]
pub struct Redshift {
    /// Redshift (`Z`).
    pub z: f64,
    /// Its uncertainty (`ZERR`).
    pub z_err: f64,
    /// Redrock warning bits (`ZWARN`, 0: none).
    pub zwarn: i64,
    /// `SPECTYPE`: GALAXY, QSO or STAR.
    pub spectype: String,
}

/// Redrock redshifts by TARGETID.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ZCatalog(pub HashMap<i64, Redshift>);

impl ZCatalog {
    /// The redshift of `targetid`.
    pub fn get(&self, targetid: i64) -> Option<&Redshift> {
        self.0.get(&targetid)
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it holds no target.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(i64, Redshift)> for ZCatalog {
    fn from_iter<I: IntoIterator<Item = (i64, Redshift)>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

/// Bit set in the merged mask of a pixel no arm covers (DESI `specmask` ALLBADPIX, "all
/// input pixels were masked or ivar=0"). DESI's arms overlap, so real files have none.
pub const MASK_NO_DATA: u32 = 1 << 1;

/// Columns a redshift catalogue must have.
const Z_COLUMNS: [&str; 5] = ["TARGETID", "Z", "ZERR", "ZWARN", "SPECTYPE"];

/// Reads a Redrock redshift catalogue: `zpix-*`, `ztile-*`, `zall-*`, `zcatalog` or
/// `redrock-*` FITS files (the binary table named REDSHIFTS or ZCATALOG, else the first
/// table with columns TARGETID, Z, ZERR, ZWARN and SPECTYPE), or a CSV, Parquet or VOTable
/// file with those columns (names case-insensitive).
///
/// When a `ZCAT_PRIMARY` column exists only its primary rows are kept; otherwise the first
/// row of a repeated TARGETID wins.
pub fn read_zcatalog(path: &Path) -> Result<ZCatalog> {
    match sniff(path) {
        Ok(Content::Fits) => read_zcatalog_fits(path),
        Err(e @ Error::Io { .. }) => Err(e),
        _ => read_zcatalog_table(path),
    }
}

fn read_zcatalog_fits(path: &Path) -> Result<ZCatalog> {
    let mut fits = Fits::open(path)?;
    let hdu = fits
        .hdus()
        .iter()
        .find(|h| {
            h.is_table()
                && (h.name.eq_ignore_ascii_case("REDSHIFTS")
                    || h.name.eq_ignore_ascii_case("ZCATALOG"))
        })
        .or_else(|| {
            fits.hdus()
                .iter()
                .find(|h| h.is_table() && Z_COLUMNS.iter().all(|c| h.has(c)))
        })
        .cloned()
        .ok_or_else(|| {
            Error::bad_file(
                path,
                None,
                "has no REDSHIFTS or ZCATALOG table, nor any table with columns TARGETID, Z, \
                 ZERR, ZWARN and SPECTYPE",
            )
        })?;
    let targetid = fits.read_ids(&hdu, "TARGETID")?;
    let z: Vec<f64> = fits.read_scalars(&hdu, "Z")?;
    let zerr: Vec<f64> = fits.read_scalars(&hdu, "ZERR")?;
    let zwarn: Vec<i64> = fits.read_scalars(&hdu, "ZWARN")?;
    let spectype = fits.read_strings(&hdu, "SPECTYPE")?;
    let primary: Option<Vec<i32>> = if hdu.has("ZCAT_PRIMARY") {
        Some(fits.read_scalars(&hdu, "ZCAT_PRIMARY")?)
    } else {
        None
    };
    let mut out = ZCatalog::default();
    for (i, &tid) in targetid.iter().enumerate() {
        if primary.as_ref().is_some_and(|p| p.get(i) == Some(&0)) {
            continue;
        }
        out.0.entry(tid).or_insert_with(|| Redshift {
            z: z.get(i).copied().unwrap_or(f64::NAN),
            z_err: zerr.get(i).copied().unwrap_or(f64::NAN),
            zwarn: zwarn.get(i).copied().unwrap_or(0),
            spectype: spectype.get(i).cloned().unwrap_or_default(),
        });
    }
    Ok(out)
}

fn read_zcatalog_table(path: &Path) -> Result<ZCatalog> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type, Int64Type};

    let bad = |reason: String| Error::bad_file(path, None, reason);
    let reader = meridian_formats::open(path, &meridian_formats::ReadOptions::default())
        .map_err(|e| bad(e.to_string()))?;
    let schema = reader.schema();
    let find = |name: &str| {
        schema
            .fields()
            .iter()
            .position(|f| f.name().eq_ignore_ascii_case(name))
    };
    let mut idx = [0usize; 5];
    for (slot, name) in idx.iter_mut().zip(Z_COLUMNS) {
        *slot = find(name).ok_or_else(|| bad(format!("has no column {name}")))?;
    }
    let primary = find("ZCAT_PRIMARY");
    let mut out = ZCatalog::default();
    for batch in reader {
        let batch = batch.map_err(|e| bad(e.to_string()))?;
        let cast = |i: usize, to: &DataType| {
            arrow::compute::cast(batch.column(i), to).map_err(|e| {
                bad(format!(
                    "column {} cannot be read as {to}: {e}",
                    batch.schema().field(i).name()
                ))
            })
        };
        let tid = cast(idx[0], &DataType::Int64)?;
        let z = cast(idx[1], &DataType::Float64)?;
        let zerr = cast(idx[2], &DataType::Float64)?;
        let zwarn = cast(idx[3], &DataType::Int64)?;
        let spectype = cast(idx[4], &DataType::Utf8)?;
        let prim = primary.map(|i| cast(i, &DataType::Boolean)).transpose()?;
        let (tid, z, zerr, zwarn) = (
            tid.as_primitive::<Int64Type>(),
            z.as_primitive::<Float64Type>(),
            zerr.as_primitive::<Float64Type>(),
            zwarn.as_primitive::<Int64Type>(),
        );
        let spectype = spectype.as_string::<i32>();
        for row in 0..batch.num_rows() {
            if tid.is_null(row) || z.is_null(row) {
                continue;
            }
            if let Some(p) = prim.as_ref().map(|p| p.as_boolean())
                && (p.is_null(row) || !p.value(row))
            {
                continue;
            }
            out.0.entry(tid.value(row)).or_insert_with(|| Redshift {
                z: z.value(row),
                z_err: if zerr.is_null(row) {
                    f64::NAN
                } else {
                    zerr.value(row)
                },
                zwarn: if zwarn.is_null(row) {
                    0
                } else {
                    zwarn.value(row)
                },
                spectype: if spectype.is_null(row) {
                    String::new()
                } else {
                    spectype.value(row).trim().to_string()
                },
            });
        }
    }
    Ok(out)
}

/// The arm prefixes (`B`, `R`, `Z`, …) that have both `X_WAVELENGTH` and `X_FLUX` HDUs.
fn arm_names(fits: &Fits) -> Vec<String> {
    fits.hdus()
        .iter()
        .filter_map(|h| {
            let upper = h.name.to_ascii_uppercase();
            let arm = upper.strip_suffix("_WAVELENGTH")?;
            (!arm.is_empty() && fits.hdu(&format!("{arm}_FLUX")).is_some()).then(|| arm.to_string())
        })
        .collect()
}

/// Whether an open FITS file is a DESI spectra file: a FIBERMAP HDU and at least one arm
/// with `X_WAVELENGTH` and `X_FLUX` HDUs.
pub(crate) fn matches(fits: &Fits) -> bool {
    fits.hdu("FIBERMAP").is_some() && !arm_names(fits).is_empty()
}

/// Whether the file at `path` is a DESI `coadd-*` or `spectra-*` file, judged by its HDUs
/// (see [`crate::readers::detect`]); `Ok(false)` for any other FITS file or a VOTable.
pub fn is_desi(path: &Path) -> Result<bool> {
    match sniff(path)? {
        Content::Fits => Ok(matches(&Fits::open(path)?)),
        Content::VoTable => Ok(false),
    }
}

/// Reads every spectrum of a DESI `coadd-*` or `spectra-*` file (one per FIBERMAP row;
/// spectra whose every ivar is 0 are kept), filling the redshift fields from `zcat` when
/// given.
///
/// The arms are merged onto the union of their grids, which must lie on one lattice: the
/// same pixel step and starting wavelengths an integral number of steps apart (within
/// 10⁻³ pixel), as DESI's 0.8 Å grids do (B 3600–5800 Å, R 5760–7620 Å, Z 7520–9824 Å give
/// 3600–9824 Å, 7781 pixels); otherwise the file fails, naming the arm's WAVELENGTH HDU.
/// Wavelengths are the arms' own values (the first arm's in an overlap). Where arms
/// overlap: `flux` is the ivar-weighted mean (the plain mean when every ivar there is 0),
/// `ivar` the sum, `mask` the bitwise OR. A negative or non-finite ivar counts as 0.
pub fn read(path: &Path, zcat: Option<&ZCatalog>) -> Result<Vec<Spectrum>> {
    read_fits(Fits::open(path)?, zcat)
}

/// One arm's arrays: `wave` has `npix` values, the others `nspec × npix`.
struct Arm {
    name: String,
    wave: Vec<f64>,
    flux: Vec<f32>,
    ivar: Vec<f32>,
    mask: Vec<u32>,
}

/// The merged grid: each arm's first pixel in it, and its wavelengths.
#[derive(Debug)]
struct Grid {
    offsets: Vec<usize>,
    wavelength: Vec<f64>,
}

/// Per-row facts that differ between coadds and per-exposure files.
struct RowMeta {
    exptime_s: Vec<Option<f64>>,
    dateobs: Vec<Option<String>>,
    source_tail: Vec<String>,
}

pub(crate) fn read_fits(mut fits: Fits, zcat: Option<&ZCatalog>) -> Result<Vec<Spectrum>> {
    let path = fits.path().to_path_buf();
    let path = path.as_path();
    let fm = fits.require("FIBERMAP")?;
    if !fm.is_table() {
        return Err(Error::bad_file(path, Some("FIBERMAP"), "is not a table"));
    }
    let nspec = fm.rows();
    let targetid = fits.read_ids(&fm, "TARGETID")?;
    let ra: Vec<f64> = fits.read_scalars(&fm, "TARGET_RA")?;
    let dec: Vec<f64> = fits.read_scalars(&fm, "TARGET_DEC")?;
    for i in 0..nspec {
        let (r, d) = (ra[i], dec[i]);
        if !(r.is_finite() && d.is_finite() && (-90.0..=90.0).contains(&d)) {
            return Err(Error::bad_file(
                path,
                Some("FIBERMAP"),
                format!(
                    "row {i} (TARGETID {}) has TARGET_RA, TARGET_DEC = ({r}, {d}), not a \
                     position on the sky",
                    targetid[i]
                ),
            ));
        }
    }

    let mut arms = Vec::new();
    for name in arm_names(&fits) {
        arms.push(read_arm(&mut fits, &name, nspec)?);
    }
    arms.sort_by(|a, b| a.wave[0].total_cmp(&b.wave[0]));
    let grid = union_grid(path, &arms)?;

    let primary = fits.hdus()[0].clone();
    let spgrp = fits.key(&primary, "SPGRP").unwrap_or_default();
    let spgrpval = fits.key(&primary, "SPGRPVAL").unwrap_or_default();
    let survey = fits.key(&primary, "SURVEY");
    let program = fits.key(&primary, "PROGRAM");
    let mut head = vec![format!("{spgrp}={spgrpval}")];
    if !spgrp.eq_ignore_ascii_case("healpix")
        && let Some(tile) = fits.key_i64(&primary, "TILEID")
    {
        head.push(format!("tile={tile}"));
    }
    head.push(survey.clone().unwrap_or_default());
    head.push(program.unwrap_or_default());
    let head = head.join(";");

    let coadd =
        fits.hdu("EXP_FIBERMAP").is_some() || fm.has("COADD_EXPTIME") || fm.has("COADD_NUMEXP");
    let meta = if coadd {
        coadd_meta(&mut fits, &fm, &targetid)?
    } else {
        exposure_meta(&mut fits, &fm, &primary)?
    };

    let file = file_name(path);
    let mut spectra = Vec::with_capacity(nspec);
    for row in 0..nspec {
        let (flux, ivar, mask) = merge_row(&arms, &grid, row);
        let z = zcat.and_then(|z| z.get(targetid[row]));
        spectra.push(Spectrum {
            specid: targetid[row],
            targetid: Some(targetid[row]),
            ra_deg: ra[row],
            dec_deg: dec[row],
            redshift: z.map(|z| z.z),
            redshift_err: z.map(|z| z.z_err),
            redshift_warning: z.map(|z| z.zwarn),
            spectype: z.map(|z| z.spectype.clone()),
            dateobs: meta.dateobs[row].clone(),
            exptime_s: meta.exptime_s[row],
            survey: survey.clone(),
            instrument: Some("DESI".into()),
            telescope: Some("Mayall".into()),
            site: Some("KPNO".into()),
            specprimary: None,
            source_key: format!("{head};{}", meta.source_tail[row]),
            file: file.clone(),
            wavelength_aa: grid.wavelength.clone(),
            flux,
            ivar,
            mask,
            model: None,
        });
    }
    check_all(path, "FIBERMAP", &spectra)?;
    Ok(spectra)
}

/// Reads arm `name`'s four images, checking their shapes against `nspec` spectra.
fn read_arm(fits: &mut Fits, name: &str, nspec: usize) -> Result<Arm> {
    let path = fits.path().to_path_buf();
    let hdu = |fits: &Fits, part: &str| -> Result<Hdu> {
        let h = fits.require(&format!("{name}_{part}"))?;
        if h.is_table() {
            return Err(Error::bad_file(
                &path,
                Some(&h.label()),
                "is a table where an image was expected",
            ));
        }
        Ok(h)
    };
    let wh = hdu(fits, "WAVELENGTH")?;
    let shape = wh.shape().unwrap_or_default();
    let npix = match shape {
        [n] if *n > 0 => *n,
        _ => {
            return Err(Error::bad_file(
                &path,
                Some(&wh.label()),
                format!("has shape {shape:?}; a 1-D array of wavelengths was expected"),
            ));
        }
    };
    let wave: Vec<f64> = fits.read_image(&wh)?;
    let mut images = Vec::with_capacity(3);
    for part in ["FLUX", "IVAR", "MASK"] {
        let h = hdu(fits, part)?;
        let shape = h.shape().unwrap_or_default();
        let ok = shape == [npix, nspec] || (nspec == 1 && shape == [npix]);
        if !ok {
            return Err(Error::bad_file(
                &path,
                Some(&h.label()),
                format!(
                    "has shape {shape:?} (NAXIS1 first) but {npix} pixels ({}) × {nspec} \
                     spectra (FIBERMAP rows) were expected",
                    wh.label()
                ),
            ));
        }
        images.push(h);
    }
    let flux: Vec<f32> = fits.read_image(&images[0])?;
    let ivar: Vec<f32> = fits.read_image(&images[1])?;
    let mask = fits.read_mask_image(&images[2])?;
    Ok(Arm {
        name: name.to_string(),
        wave,
        flux,
        ivar,
        mask,
    })
}

/// The union of the arms' grids (arms sorted by first wavelength), after checking they
/// share one lattice.
fn union_grid(path: &Path, arms: &[Arm]) -> Result<Grid> {
    let Some(first) = arms.first() else {
        return Err(Error::bad_file(path, None, "has no spectrograph arm"));
    };
    for arm in arms {
        if let Some(i) = arm.wave.iter().position(|w| !w.is_finite() || *w <= 0.0) {
            return Err(Error::bad_file(
                path,
                Some(&format!("{}_WAVELENGTH", arm.name)),
                format!(
                    "pixel {i} has wavelength {}, not a positive number",
                    arm.wave[i]
                ),
            ));
        }
    }
    // The step of the longest arm, the most precise estimate.
    let reference = arms.iter().max_by_key(|a| a.wave.len()).unwrap_or(first);
    let n = reference.wave.len();
    let step = if n >= 2 {
        (reference.wave[n - 1] - reference.wave[0]) / (n - 1) as f64
    } else {
        f64::NAN
    };
    if !(step.is_finite() && step > 0.0) {
        return Err(Error::bad_file(
            path,
            Some(&format!("{}_WAVELENGTH", reference.name)),
            "has too few pixels or non-ascending wavelengths, so no pixel step can be derived",
        ));
    }
    let base = first.wave[0];
    let total: usize = arms.iter().map(|a| a.wave.len()).sum();
    let max_len = 2 * total + 16;
    let mut offsets = Vec::with_capacity(arms.len());
    let mut len = 0usize;
    for arm in arms {
        let k0 = ((arm.wave[0] - base) / step).round();
        if k0 > max_len as f64 {
            return Err(Error::bad_file(
                path,
                Some(&format!("{}_WAVELENGTH", arm.name)),
                format!(
                    "starts {k0} pixels of {step} Å after {}_WAVELENGTH: the arms are too \
                     far apart to merge",
                    first.name
                ),
            ));
        }
        for (i, &w) in arm.wave.iter().enumerate() {
            let k = (w - base) / step;
            let off = k - (k0 + i as f64);
            if off.abs() > 1e-3 {
                return Err(Error::bad_file(
                    path,
                    Some(&format!("{}_WAVELENGTH", arm.name)),
                    format!(
                        "pixel {i} at {w} Å lies {off:+.4} pixel off the lattice of \
                         {step} Å steps from {base} Å (derived from {}_WAVELENGTH), so the \
                         arms cannot be merged without resampling",
                        reference.name
                    ),
                ));
            }
        }
        let o = k0 as usize;
        offsets.push(o);
        len = len.max(o + arm.wave.len());
    }
    if len > max_len {
        return Err(Error::bad_file(
            path,
            None,
            format!(
                "the arms span {len} pixels of {step} Å but hold only {total}: they are too \
                 far apart to merge"
            ),
        ));
    }
    let mut wavelength = vec![f64::NAN; len];
    for (arm, &o) in arms.iter().zip(&offsets) {
        for (j, &w) in arm.wave.iter().enumerate() {
            if wavelength[o + j].is_nan() {
                wavelength[o + j] = w;
            }
        }
    }
    for (k, w) in wavelength.iter_mut().enumerate() {
        if w.is_nan() {
            *w = base + k as f64 * step;
        }
    }
    Ok(Grid {
        offsets,
        wavelength,
    })
}

/// Spectrum `row` of every arm merged onto `grid`: (flux, ivar, mask).
fn merge_row(arms: &[Arm], grid: &Grid, row: usize) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    let len = grid.wavelength.len();
    let mut wsum = vec![0f64; len];
    let mut wfsum = vec![0f64; len];
    let mut fsum = vec![0f64; len];
    let mut count = vec![0u32; len];
    let mut mask = vec![0u32; len];
    for (arm, &o) in arms.iter().zip(&grid.offsets) {
        let npix = arm.wave.len();
        let lo = row * npix;
        let (flux, ivar, m) = (
            &arm.flux[lo..lo + npix],
            &arm.ivar[lo..lo + npix],
            &arm.mask[lo..lo + npix],
        );
        for j in 0..npix {
            let k = o + j;
            let iv = f64::from(ivar[j]);
            let w = if iv.is_finite() && iv > 0.0 { iv } else { 0.0 };
            let f = f64::from(flux[j]);
            wsum[k] += w;
            wfsum[k] += w * f;
            fsum[k] += f;
            count[k] += 1;
            mask[k] |= m[j];
        }
    }
    let mut flux = Vec::with_capacity(len);
    let mut ivar = Vec::with_capacity(len);
    for k in 0..len {
        let f = if wsum[k] > 0.0 {
            wfsum[k] / wsum[k]
        } else if count[k] > 0 {
            fsum[k] / f64::from(count[k])
        } else {
            mask[k] |= MASK_NO_DATA;
            0.0
        };
        flux.push(f as f32);
        ivar.push(wsum[k] as f32);
    }
    (flux, ivar, mask)
}

/// Exposure time, start and source key tail of each row of a coadd.
fn coadd_meta(fits: &mut Fits, fm: &Hdu, targetid: &[i64]) -> Result<RowMeta> {
    let n = targetid.len();
    let exptime_s: Vec<Option<f64>> = if fm.has("COADD_EXPTIME") {
        let v: Vec<f64> = fits.read_scalars(fm, "COADD_EXPTIME")?;
        v.into_iter().map(|t| t.is_finite().then_some(t)).collect()
    } else {
        vec![None; n]
    };
    let first_mjd: Vec<Option<f64>> = if fm.has("MIN_MJD") {
        let v: Vec<f64> = fits.read_scalars(fm, "MIN_MJD")?;
        v.into_iter()
            .map(|m| (m.is_finite() && m > 0.0).then_some(m))
            .collect()
    } else if let Some(exp) = fits
        .hdu("EXP_FIBERMAP")
        .filter(|h| h.has("MJD") && h.has("TARGETID"))
    {
        let tid = fits.read_ids(&exp, "TARGETID")?;
        let mjd: Vec<f64> = fits.read_scalars(&exp, "MJD")?;
        let status: Vec<i64> = if exp.has("FIBERSTATUS") {
            fits.read_scalars(&exp, "FIBERSTATUS")?
        } else {
            vec![0; tid.len()]
        };
        // The first exposure the coadd used (FIBERSTATUS 0), else the target's first.
        let mut good: HashMap<i64, f64> = HashMap::new();
        let mut any: HashMap<i64, f64> = HashMap::new();
        for ((t, m), st) in tid.into_iter().zip(mjd).zip(status) {
            if !(m.is_finite() && m > 0.0) {
                continue;
            }
            let e = any.entry(t).or_insert(m);
            *e = e.min(m);
            if st == 0 {
                let e = good.entry(t).or_insert(m);
                *e = e.min(m);
            }
        }
        targetid
            .iter()
            .map(|t| good.get(t).or_else(|| any.get(t)).copied())
            .collect()
    } else {
        vec![None; n]
    };
    Ok(RowMeta {
        exptime_s,
        dateobs: first_mjd
            .into_iter()
            .map(|m| m.and_then(mjd_to_iso))
            .collect(),
        source_tail: vec!["coadd".to_string(); n],
    })
}

/// Exposure time, start and source key tail of each row of a per-exposure file.
fn exposure_meta(fits: &mut Fits, fm: &Hdu, primary: &Hdu) -> Result<RowMeta> {
    let n = fm.rows();
    let per_row = |fits: &mut Fits, col: &str, key: &str| -> Result<Vec<Option<f64>>> {
        if fm.has(col) {
            let v: Vec<f64> = fits.read_scalars(fm, col)?;
            Ok(v.into_iter().map(|x| x.is_finite().then_some(x)).collect())
        } else {
            Ok(vec![fits.key_f64(primary, key); n])
        }
    };
    let exptime_s = per_row(fits, "EXPTIME", "EXPTIME")?;
    let mjd = per_row(fits, "MJD", "MJD-OBS")?;
    let source_tail = if fm.has("EXPID") {
        let expid: Vec<i64> = fits.read_scalars(fm, "EXPID")?;
        let night: Option<Vec<i64>> = if fm.has("NIGHT") {
            Some(fits.read_scalars(fm, "NIGHT")?)
        } else {
            None
        };
        (0..n)
            .map(|i| match &night {
                Some(night) => format!("night={};expid={}", night[i], expid[i]),
                None => format!("expid={}", expid[i]),
            })
            .collect()
    } else {
        (0..n).map(|i| format!("row={i}")).collect()
    };
    Ok(RowMeta {
        exptime_s,
        dateobs: mjd
            .into_iter()
            .map(|m| m.filter(|m| *m > 0.0).and_then(mjd_to_iso))
            .collect(),
        source_tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn data(name: &str) -> Option<PathBuf> {
        let p = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/spectra"
        ))
        .join(name);
        if p.exists() {
            Some(p)
        } else {
            eprintln!("skipped: {} is absent", p.display());
            None
        }
    }

    fn arm(name: &str, start: f64, n: usize, step: f64) -> Arm {
        Arm {
            name: name.into(),
            wave: (0..n).map(|i| start + i as f64 * step).collect(),
            flux: vec![1.0; n],
            ivar: vec![1.0; n],
            mask: vec![0; n],
        }
    }

    #[test]
    fn union_grid_of_desi_like_arms() {
        let arms = [
            arm("B", 3600.0, 2751, 0.8),
            arm("R", 5760.0, 2326, 0.8),
            arm("Z", 7520.0, 2881, 0.8),
        ];
        let g = union_grid(Path::new("x.fits"), &arms).unwrap();
        assert_eq!(g.offsets, [0, 2700, 4900]);
        assert_eq!(g.wavelength.len(), 7781);
        assert!((g.wavelength[7780] - 9824.0).abs() < 1e-6);
    }

    #[test]
    fn arms_off_the_lattice_fail_naming_the_hdu() {
        let arms = [arm("B", 3600.0, 100, 0.8), arm("R", 3650.3, 100, 0.8)];
        let e = union_grid(Path::new("x.fits"), &arms).unwrap_err();
        let Error::BadFile { hdu, reason, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(hdu.as_deref(), Some("R_WAVELENGTH"));
        assert!(reason.contains("lattice"), "{reason}");
        // A different step fails too.
        let arms = [arm("B", 3600.0, 100, 0.8), arm("R", 3640.0, 100, 0.7)];
        assert!(union_grid(Path::new("x.fits"), &arms).is_err());
    }

    #[test]
    fn gaps_between_arms_are_flagged() {
        let arms = [arm("B", 4000.0, 10, 1.0), arm("R", 4015.0, 10, 1.0)];
        let g = union_grid(Path::new("x.fits"), &arms).unwrap();
        assert_eq!(g.wavelength.len(), 25);
        let (flux, ivar, mask) = merge_row(&arms, &g, 0);
        assert_eq!((flux[12], ivar[12], mask[12]), (0.0, 0.0, MASK_NO_DATA));
        assert_eq!((flux[3], ivar[3], mask[3]), (1.0, 1.0, 0));
        assert_eq!(g.wavelength[12], 4012.0);
    }

    #[test]
    fn overlap_rules() {
        let mut a = arm("B", 4000.0, 4, 1.0);
        let mut b = arm("R", 4002.0, 4, 1.0);
        a.flux = vec![1.0, 1.0, 2.0, 4.0];
        a.ivar = vec![1.0, 1.0, 1.0, 0.0];
        a.mask = vec![0, 0, 1, 0];
        b.flux = vec![5.0, 8.0, 1.0, 1.0];
        b.ivar = vec![3.0, 0.0, 1.0, 1.0];
        b.mask = vec![4, 8, 0, 0];
        let arms = [a, b];
        let g = union_grid(Path::new("x.fits"), &arms).unwrap();
        let (flux, ivar, mask) = merge_row(&arms, &g, 0);
        // Pixel 2: (1*2 + 3*5) / 4; pixel 3: ivar 0 in both, plain mean of 4 and 8.
        assert_eq!(flux, [1.0, 1.0, 4.25, 6.0, 1.0, 1.0]);
        assert_eq!(ivar, [1.0, 1.0, 4.0, 0.0, 1.0, 1.0]);
        assert_eq!(mask, [0, 0, 5, 8, 0, 0]);
    }

    #[test]
    fn reads_coadd_healpix() {
        let Some(p) = data("desi_coadd-sv3-dark-26065.fits") else {
            return;
        };
        assert!(is_desi(&p).unwrap());
        let s = read(&p, None).unwrap();
        assert_eq!(s.len(), 5);
        let ids: Vec<i64> = s.iter().map(|s| s.specid).collect();
        assert_eq!(
            ids,
            [
                -2713437,
                -2713415,
                39627866878511337,
                616088619186127404,
                39627866878514741
            ]
        );
        for x in &s {
            assert_eq!(x.wavelength_aa.len(), 7781);
            assert!((x.wavelength_aa[0] - 3600.0).abs() < 1e-6);
            assert!((x.wavelength_aa[7780] - 9824.0).abs() < 1e-6);
            assert_eq!(x.flux.len(), 7781);
            assert_eq!(x.instrument.as_deref(), Some("DESI"));
            assert_eq!(x.telescope.as_deref(), Some("Mayall"));
            assert_eq!(x.site.as_deref(), Some("KPNO"));
            assert_eq!(x.survey.as_deref(), Some("sv3"));
            assert_eq!(x.file, "desi_coadd-sv3-dark-26065.fits");
            assert_eq!(x.source_key, "healpix=26065;sv3;dark;coadd");
            assert!(x.model.is_none() && x.redshift.is_none());
        }
        // FIBERMAP TARGET_RA/TARGET_DEC of row 0.
        assert!((s[0].ra_deg - 216.95198305).abs() < 1e-7);
        assert!((s[0].dec_deg - 3.30111734).abs() < 1e-7);
        // COADD_EXPTIME and the first exposure's MJD in EXP_FIBERMAP.
        assert_eq!(s[4].exptime_s, Some(f64::from(1443.6274f32)));
        // Row 4's first exposure with FIBERSTATUS 0 (83876; 83734 has 512 and was left out
        // of the coadd, COADD_NUMEXP 2). astropy: Time(59312.33228957, format='mjd').isot
        assert_eq!(s[4].dateobs.as_deref(), Some("2021-04-08T07:58:29.819"));
        // Row 0 has no good exposure: its only one. Time(59311.34644749, format='mjd').isot
        assert_eq!(s[0].dateobs.as_deref(), Some("2021-04-07T08:18:53.063"));
        assert_eq!(s[0].exptime_s, Some(0.0));
        // Every-ivar-0 spectra are kept.
        assert!(s[0].ivar.iter().all(|&v| v == 0.0));
        check_merged_pixels(&s, &COADD_26065);
    }

    /// Independent values: (row, merged pixel, flux, ivar, mask), computed with astropy
    /// and numpy from the file's arms (see each table's comment).
    type Expected = [(usize, usize, f32, f32, u32)];

    fn check_merged_pixels(s: &[Spectrum], expected: &Expected) {
        for &(row, k, flux, ivar, mask) in expected {
            let x = &s[row];
            let rel = |a: f32, b: f32| (a - b).abs() <= 1e-5 * b.abs().max(1e-30);
            assert!(
                rel(x.flux[k], flux),
                "row {row} pixel {k}: flux {} vs {flux}",
                x.flux[k]
            );
            assert!(
                rel(x.ivar[k], ivar),
                "row {row} pixel {k}: ivar {} vs {ivar}",
                x.ivar[k]
            );
            assert_eq!(x.mask[k], mask, "row {row} pixel {k}: mask");
        }
    }

    // Computed with:
    //   h = fits.open(f); arm = {a: (h[a+'_FLUX'].data.astype('f8'), h[a+'_IVAR'].data
    //       .astype('f8'), h[a+'_MASK'].data) for a in 'BRZ'}
    //   off = {'B': 0, 'R': 2700, 'Z': 4900}
    //   for merged pixel k: the arms covering it (o <= k < o + npix), then
    //   w = ivar; flux = (w*f).sum()/w.sum() if w.sum() > 0 else f.mean();
    //   ivar = w.sum(); mask = np.bitwise_or.reduce(m)
    // (k = 100: B only; 2710, 2745: B/R overlap; 4950: R/Z overlap; 7000: Z only; 2895:
    // R only, a masked pixel).
    const COADD_26065: [(usize, usize, f32, f32, u32); 11] = [
        (2, 100, 1.1012322, 0.22538611, 0),
        (2, 2710, -0.36408964, 6.9424663, 0),
        (2, 2745, 0.21978272, 7.4871387, 0),
        (2, 4950, 0.08522812, 11.354042, 0),
        (2, 7000, 0.6365294, 42.886005, 0),
        (2, 2895, 0.0, 0.0, 1),
        (4, 100, 1.6585815, 0.26786396, 0),
        (4, 2710, -0.27629513, 8.637846, 0),
        (4, 2745, 0.07390587, 11.699527, 0),
        (4, 4950, 0.4763796, 12.558226, 0),
        (4, 7000, 0.4235898, 52.904984, 0),
    ];

    #[test]
    fn reads_spectra_per_exposure() {
        let Some(p) = data("desi_spectra-sv3-dark-26065.fits") else {
            return;
        };
        let s = read(&p, None).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].specid, -2713437);
        for x in &s {
            assert_eq!(x.wavelength_aa.len(), 7781);
            assert!((x.wavelength_aa[0] - 3600.0).abs() < 1e-6);
            assert!((x.wavelength_aa[7780] - 9824.0).abs() < 1e-6);
            assert_eq!(
                x.source_key,
                "healpix=26065;sv3;dark;night=20210406;expid=83734"
            );
            // FIBERMAP EXPTIME is a double here.
            assert_eq!(x.exptime_s, Some(1009.2852));
            // astropy: Time(59311.34644749, format='mjd').isot
            assert_eq!(x.dateobs.as_deref(), Some("2021-04-07T08:18:53.063"));
        }
        check_merged_pixels(&s, &SPECTRA_26065);
    }

    // Same computation as COADD_26065, on desi_spectra-sv3-dark-26065.fits, whose *_MASK
    // HDUs are tile-compressed (astropy decompresses them). Row 4 has ivar 0 everywhere
    // (plain means, mask 512); at row 0 pixels 2723 and 4957 the arms' masks differ (B 512,
    // R 513; R 512, Z 513), so the OR is 513.
    const SPECTRA_26065: [(usize, usize, f32, f32, u32); 10] = [
        (2, 100, 1.1012322, 0.22538611, 0),
        (2, 2710, -0.36408964, 6.9424663, 0),
        (2, 4950, 0.08522812, 11.354042, 0),
        (2, 7000, 0.6365294, 42.886005, 0),
        (4, 100, -4.809708, 0.0, 512),
        (4, 2710, 0.06351116, 0.0, 512),
        (4, 4950, 0.41347504, 0.0, 512),
        (0, 2723, 0.441917, 0.0, 513),
        (0, 2724, 1.6367834, 0.0, 513),
        (0, 4957, -0.40927625, 0.0, 513),
    ];

    #[test]
    fn reads_tile_based_files() {
        let Some(coadd) = data("desi_coadd-5-169-thru20210419.fits") else {
            return;
        };
        let s = read(&coadd, None).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(s[0].specid, -1695072);
        assert_eq!(s[0].source_key, "cumulative=20210419;tile=169;;;coadd");
        assert_eq!(s[0].survey, None);
        let Some(spectra) = data("desi_spectra-5-169-thru20210419.fits") else {
            return;
        };
        let s = read(&spectra, None).unwrap();
        assert_eq!(s.len(), 5);
        assert_eq!(
            s[1].source_key,
            "cumulative=20210419;tile=169;;;night=20210419;expid=85502"
        );
        assert_eq!(s[1].specid, 39633297352951412);
        check_merged_pixels(&s, &SPECTRA_169);
    }

    // Same computation, on desi_spectra-5-169-thru20210419.fits (row 0 pixel 3198: R only,
    // mask 513 in the compressed R_MASK).
    const SPECTRA_169: [(usize, usize, f32, f32, u32); 10] = [
        (1, 100, -3.1855068, 0.0, 512),
        (1, 2710, 1.0496564, 0.0, 512),
        (4, 100, 2.1674278, 0.051649, 0),
        (4, 2710, -0.51735383, 1.9841039, 0),
        (4, 2745, -1.2426306, 2.0670447, 0),
        (4, 4950, 0.41508406, 5.9171476, 0),
        (4, 7000, 0.0663559, 26.764147, 0),
        (0, 4916, -0.26214182, 0.0, 513),
        (0, 4918, 6.432215, 0.0, 513),
        (0, 3198, -0.17364787, 0.0, 513),
    ];

    #[test]
    fn redshifts_come_from_the_zcatalog() {
        let Some(p) = data("desi_coadd-sv3-dark-26065.fits") else {
            return;
        };
        let zcat: ZCatalog = [(
            39627866878511337,
            Redshift {
                z: 0.5,
                z_err: 1e-4,
                zwarn: 4,
                spectype: "GALAXY".into(),
            },
        )]
        .into_iter()
        .collect();
        let s = read(&p, Some(&zcat)).unwrap();
        assert_eq!(s[2].redshift, Some(0.5));
        assert_eq!(s[2].redshift_err, Some(1e-4));
        assert_eq!(s[2].redshift_warning, Some(4));
        assert_eq!(s[2].spectype.as_deref(), Some("GALAXY"));
        assert_eq!(s[0].redshift, None);
    }

    fn write_zcat_fits(path: &Path, extname: &str) {
        use fitsio::tables::{ColumnDataType, ColumnDescription};
        let mut f = fitsio::FitsFile::create(path).open().unwrap();
        let cols = [
            ColumnDescription::new("TARGETID")
                .with_type(ColumnDataType::LongLong)
                .create()
                .unwrap(),
            ColumnDescription::new("Z")
                .with_type(ColumnDataType::Double)
                .create()
                .unwrap(),
            ColumnDescription::new("ZERR")
                .with_type(ColumnDataType::Double)
                .create()
                .unwrap(),
            ColumnDescription::new("ZWARN")
                .with_type(ColumnDataType::LongLong)
                .create()
                .unwrap(),
            ColumnDescription::new("SPECTYPE")
                .with_type(ColumnDataType::String)
                .that_repeats(6)
                .create()
                .unwrap(),
        ];
        let h = f.create_table(extname.to_string(), &cols).unwrap();
        h.write_col(
            &mut f,
            "TARGETID",
            &[-2713437i64, 39627866878514741, -2713437],
        )
        .unwrap();
        h.write_col(&mut f, "Z", &[1.5f64, 0.25, 9.0]).unwrap();
        h.write_col(&mut f, "ZERR", &[1e-3f64, 2e-5, 9.0]).unwrap();
        h.write_col(&mut f, "ZWARN", &[0i64, 4, 9]).unwrap();
        h.write_col(
            &mut f,
            "SPECTYPE",
            &["QSO".to_string(), "GALAXY".to_string(), "STAR".to_string()],
        )
        .unwrap();
    }

    #[test]
    fn reads_zcatalogs_in_fits_and_csv() {
        let tmp = tempfile::tempdir().unwrap();
        for ext in ["REDSHIFTS", "ZCATALOG", "OTHER"] {
            let p = tmp.path().join(format!("zpix-{ext}.fits"));
            write_zcat_fits(&p, ext);
            let z = read_zcatalog(&p).unwrap();
            assert_eq!(z.len(), 2, "{ext}");
            // The first row of a repeated TARGETID wins.
            assert_eq!(
                z.get(-2713437),
                Some(&Redshift {
                    z: 1.5,
                    z_err: 1e-3,
                    zwarn: 0,
                    spectype: "QSO".into()
                })
            );
            assert_eq!(z.get(39627866878514741).unwrap().spectype, "GALAXY");
        }
        let csv = tmp.path().join("zcat.csv");
        std::fs::write(
            &csv,
            "targetid,z,zerr,zwarn,spectype,zcat_primary\n\
             -2713437,1.5,0.001,0,QSO,true\n\
             -2713437,2.5,0.001,0,QSO,false\n\
             39627866878514741,0.25,2e-5,4,GALAXY,true\n",
        )
        .unwrap();
        let z = read_zcatalog(&csv).unwrap();
        assert_eq!(z.len(), 2);
        assert_eq!(z.get(-2713437).unwrap().z, 1.5);
        assert_eq!(z.get(39627866878514741).unwrap().zwarn, 4);
        let bad = tmp.path().join("bad.csv");
        std::fs::write(&bad, "targetid,z\n1,0.5\n").unwrap();
        let e = read_zcatalog(&bad).unwrap_err().to_string();
        assert!(e.contains("ZERR"), "{e}");
    }

    #[test]
    fn fits_without_desi_hdus_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("z.fits");
        write_zcat_fits(&p, "REDSHIFTS");
        assert!(!is_desi(&p).unwrap());
        let e = read(&p, None).unwrap_err().to_string();
        assert!(e.contains("FIBERMAP"), "{e}");
    }
}
