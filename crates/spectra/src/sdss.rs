//! SDSS and BOSS `spec-PLATE-MJD-FIBER.fits` files (spec-lite and full spec files, data
//! releases 8 onward): one spectrum per file.
//!
//! The spectrum comes from the `COADD` table (the first extension: one row per pixel,
//! columns `flux`, `loglam`, `ivar`, `and_mask` or `or_mask`, `model`), its description
//! from the one-row `SPECOBJ` table (the second extension). What a spectrum gets:
//! - `wavelength_aa`: 10^`loglam` (vacuum Å); `flux`, `ivar`, `model` as stored (SDSS
//!   fluxes are already in 10⁻¹⁷ erg s⁻¹ cm⁻² Å⁻¹); `mask`: `and_mask`, else `or_mask`.
//! - `specid`: `SPECOBJID` (text in DR12+ files, an unsigned 64-bit integer in others);
//!   `targetid`: the first non-zero of `BESTOBJID`, `OBJID`, `TARGETOBJID`, else `None`.
//! - `ra_deg`/`dec_deg`: `PLUG_RA`/`PLUG_DEC` (else the primary header's `PLUG_RA`/`RA`…).
//! - `redshift`, `redshift_err`, `redshift_warning`, `spectype`: `Z`, `Z_ERR`, `ZWARNING`,
//!   `CLASS`; `specprimary`: `SPECPRIMARY`; `survey`: `SURVEY`; `instrument`: `INSTRUMENT`
//!   (else `SDSS` for plates below 3510, `BOSS` above, as SDSS numbers them).
//! - `exptime_s`: the primary header's `EXPTIME`. `dateobs`: its `DATE-OBS` when that holds
//!   a time, else `TAI-BEG` (TAI seconds, converted to UTC with the leap-second table),
//!   else the date of `DATE-OBS` or of the `MJD` column.
//! - `telescope`: primary `TELESCOP`, else `SDSS 2.5-m`; `site`: `OBSERVAT`, else `APO`.
//! - `source_key`: `plate={PLATE};mjd={MJD};fiber={FIBERID}` (what SDSS names a spectrum
//!   by; `specobjid` when one is missing).

use std::path::Path;

use crate::readers::fits::{Fits, Hdu, parse_id};
use crate::readers::{Content, check_all, file_name, mjd_to_iso, sniff};
use crate::{Error, Result, Spectrum};

/// The COADD table: named so, else a first extension table with FLUX and LOGLAM columns.
fn coadd_hdu(fits: &Fits) -> Option<Hdu> {
    fits.hdu("COADD").filter(Hdu::is_table).or_else(|| {
        fits.hdus()
            .get(1)
            .filter(|h| h.is_table() && h.has("FLUX") && h.has("LOGLAM"))
            .cloned()
    })
}

/// The SPECOBJ table: named so, else a second extension table with PLUG_RA.
fn specobj_hdu(fits: &Fits) -> Option<Hdu> {
    fits.hdu("SPECOBJ").filter(Hdu::is_table).or_else(|| {
        fits.hdus()
            .get(2)
            .filter(|h| h.is_table() && h.has("PLUG_RA"))
            .cloned()
    })
}

/// Whether an open FITS file is an SDSS spec file: a COADD table and a SPECOBJ table (see
/// [`crate::readers::detect`]).
pub(crate) fn matches(fits: &Fits) -> bool {
    coadd_hdu(fits).is_some() && specobj_hdu(fits).is_some()
}

/// Whether the file at `path` is an SDSS/BOSS spec file, judged by its HDUs; `Ok(false)`
/// for any other FITS file or a VOTable.
pub fn is_sdss(path: &Path) -> Result<bool> {
    match sniff(path)? {
        Content::Fits => Ok(matches(&Fits::open(path)?)),
        Content::VoTable => Ok(false),
    }
}

/// Reads the spectrum of an SDSS/BOSS `spec-*` file (see the module documentation for
/// what each field gets).
pub fn read(path: &Path) -> Result<Vec<Spectrum>> {
    read_fits(Fits::open(path)?)
}

pub(crate) fn read_fits(mut fits: Fits) -> Result<Vec<Spectrum>> {
    let path = fits.path().to_path_buf();
    let path = path.as_path();
    let coadd = coadd_hdu(&fits).ok_or_else(|| {
        Error::bad_file(
            path,
            None,
            "has no COADD table (nor a first extension table with flux and loglam columns)",
        )
    })?;
    let specobj = specobj_hdu(&fits).ok_or_else(|| {
        Error::bad_file(
            path,
            None,
            "has no SPECOBJ table (nor a second extension table with PLUG_RA)",
        )
    })?;
    let primary = fits.hdus()[0].clone();

    // The pixels.
    let loglam: Vec<f64> = fits.read_scalars(&coadd, "loglam")?;
    let flux: Vec<f32> = fits.read_scalars(&coadd, "flux")?;
    let ivar: Vec<f32> = fits.read_scalars(&coadd, "ivar")?;
    let mask_col = ["and_mask", "or_mask"]
        .into_iter()
        .find(|c| coadd.has(c))
        .ok_or_else(|| {
            Error::bad_file(
                path,
                Some(&coadd.label()),
                "has neither an and_mask nor an or_mask column",
            )
        })?;
    let mask: Vec<i64> = fits.read_scalars(&coadd, mask_col)?;
    let model: Option<Vec<f32>> = if coadd.has("model") {
        Some(fits.read_scalars(&coadd, "model")?)
    } else {
        None
    };
    if loglam.is_empty() {
        return Err(Error::bad_file(path, Some(&coadd.label()), "has no rows"));
    }
    let wavelength_aa: Vec<f64> = loglam.iter().map(|l| 10f64.powf(*l)).collect();

    // The description.
    if specobj.rows() == 0 {
        return Err(Error::bad_file(path, Some(&specobj.label()), "has no rows"));
    }
    let mut row = Row {
        fits: &mut fits,
        hdu: &specobj,
    };
    let specid = row
        .id("SPECOBJID")?
        .ok_or_else(|| Error::bad_file(path, Some(&specobj.label()), "has no SPECOBJID column"))?;
    let mut targetid = None;
    for c in ["BESTOBJID", "OBJID", "TARGETOBJID"] {
        if let Some(id) = row.id(c)?.filter(|id| *id != 0) {
            targetid = Some(id);
            break;
        }
    }
    let ra = row.f64("PLUG_RA")?;
    let dec = row.f64("PLUG_DEC")?;
    let redshift = row.f64("Z")?;
    let redshift_err = row.f64("Z_ERR")?;
    let redshift_warning = row.f64("ZWARNING")?.map(|w| w as i64);
    let spectype = row.text("CLASS")?;
    let specprimary = row.f64("SPECPRIMARY")?.map(|v| v as i32);
    let survey = row.text("SURVEY")?;
    let plate = row.f64("PLATE")?.map(|v| v as i64);
    let mjd = row.f64("MJD")?.map(|v| v as i64);
    let fiber = row.f64("FIBERID")?.map(|v| v as i64);
    let instrument = row
        .text("INSTRUMENT")?
        .or_else(|| plate.map(|p| if p < 3510 { "SDSS" } else { "BOSS" }.to_string()));

    let key_f64 =
        |fits: &mut Fits, keys: &[&str]| keys.iter().find_map(|k| fits.key_f64(&primary, k));
    let (ra, dec) = match (ra, dec) {
        (Some(r), Some(d)) => (r, d),
        _ => match (
            key_f64(&mut fits, &["PLUG_RA", "RA"]),
            key_f64(&mut fits, &["PLUG_DEC", "DEC"]),
        ) {
            (Some(r), Some(d)) => (r, d),
            _ => {
                return Err(Error::bad_file(
                    path,
                    Some(&specobj.label()),
                    "has no PLUG_RA/PLUG_DEC columns and the primary header no PLUG_RA/RA, \
                     PLUG_DEC/DEC keywords",
                ));
            }
        },
    };
    if !(ra.is_finite() && dec.is_finite() && (-90.0..=90.0).contains(&dec)) {
        return Err(Error::bad_file(
            path,
            Some(&specobj.label()),
            format!("PLUG_RA, PLUG_DEC = ({ra}, {dec}) is not a position on the sky"),
        ));
    }
    let exptime_s = fits.key_f64(&primary, "EXPTIME");
    let dateobs = date_obs(
        fits.key(&primary, "DATE-OBS"),
        fits.key_f64(&primary, "TAI-BEG"),
        mjd,
    );
    let telescope = fits
        .key(&primary, "TELESCOP")
        .or_else(|| Some("SDSS 2.5-m".into()));
    let site = fits
        .key(&primary, "OBSERVAT")
        .or_else(|| Some("APO".into()));
    let source_key = match (plate, mjd, fiber) {
        (Some(p), Some(m), Some(f)) => format!("plate={p};mjd={m};fiber={f}"),
        _ => "specobjid".to_string(),
    };

    let spectra = vec![Spectrum {
        specid,
        targetid,
        ra_deg: ra,
        dec_deg: dec,
        redshift,
        redshift_err,
        redshift_warning,
        spectype,
        dateobs,
        exptime_s,
        survey,
        instrument,
        telescope,
        site,
        specprimary,
        source_key,
        file: file_name(path),
        wavelength_aa,
        flux,
        ivar,
        mask: mask.into_iter().map(|m| m as u32).collect(),
        model,
    }];
    check_all(path, &coadd.label(), &spectra)?;
    Ok(spectra)
}

/// Reads the first row of the SPECOBJ table, column by column; absent columns give `None`.
struct Row<'a> {
    fits: &'a mut Fits,
    hdu: &'a Hdu,
}

impl Row<'_> {
    fn f64(&mut self, col: &str) -> Result<Option<f64>> {
        let Some(c) = self.hdu.column(col) else {
            return Ok(None);
        };
        if c.is_string() {
            let t = self.fits.read_strings(self.hdu, col)?;
            return Ok(t.first().and_then(|t| t.parse().ok()));
        }
        let v: Vec<f64> = self.fits.read_col(self.hdu, col)?;
        Ok(v.first().copied())
    }

    fn text(&mut self, col: &str) -> Result<Option<String>> {
        let Some(c) = self.hdu.column(col) else {
            return Ok(None);
        };
        if c.is_string() {
            let t = self.fits.read_strings(self.hdu, col)?;
            return Ok(t.into_iter().next().filter(|t| !t.is_empty()));
        }
        Ok(self.f64(col)?.map(|v| v.to_string()))
    }

    fn id(&mut self, col: &str) -> Result<Option<i64>> {
        let Some(c) = self.hdu.column(col) else {
            return Ok(None);
        };
        if c.is_string() {
            let t = self.fits.read_strings(self.hdu, col)?;
            let t = t.first().map(String::as_str).unwrap_or("");
            return match parse_id(t) {
                Some(id) => Ok(Some(id)),
                None if t.is_empty() => Ok(None),
                None => Err(Error::bad_file(
                    self.fits.path(),
                    Some(&self.hdu.label()),
                    format!("{col} {t:?} is not a 64-bit integer"),
                )),
            };
        }
        Ok(self.fits.read_ids(self.hdu, col)?.first().copied())
    }
}

/// UTC start of the observation: `DATE-OBS` when it holds a time, else `TAI-BEG` (TAI
/// seconds since MJD 0), else a date alone (`DATE-OBS`'s, else the `MJD` column's).
fn date_obs(date_obs: Option<String>, tai_beg: Option<f64>, mjd: Option<i64>) -> Option<String> {
    let iso_date = date_obs
        .as_deref()
        .filter(|d| d.len() >= 10 && d.as_bytes()[4] == b'-' && d.as_bytes()[7] == b'-');
    if let Some(d) = iso_date.filter(|d| d.contains('T')) {
        return Some(d.to_string());
    }
    if let Some(tai) = tai_beg.filter(|t| t.is_finite() && *t > 0.0) {
        let mjd_tai = tai / 86_400.0;
        return mjd_to_iso(mjd_tai - tai_minus_utc_s(mjd_tai) / 86_400.0);
    }
    if let Some(d) = iso_date.and_then(|d| d.get(..10)) {
        return Some(d.to_string());
    }
    mjd.and_then(|m| mjd_to_iso(m as f64))
        .map(|s| s[..10].to_string())
}

/// TAI − UTC in seconds at `mjd` (IERS Bulletin C; 10 s before 1972 is not exact, but no
/// SDSS data is that old).
fn tai_minus_utc_s(mjd: f64) -> f64 {
    // MJD at which each leap second took effect, from 1972-07-01 to 2017-01-01.
    const STEPS: [f64; 27] = [
        41499.0, 41683.0, 42048.0, 42413.0, 42778.0, 43144.0, 43509.0, 43874.0, 44239.0, 44786.0,
        45151.0, 45516.0, 46247.0, 47161.0, 47892.0, 48257.0, 48804.0, 49169.0, 49534.0, 50083.0,
        50630.0, 51179.0, 53736.0, 54832.0, 56109.0, 57204.0, 57754.0,
    ];
    10.0 + STEPS.iter().filter(|&&s| mjd >= s).count() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use fitsio::tables::{ColumnDataType, ColumnDescription};

    fn col(name: &str, t: ColumnDataType) -> fitsio::tables::ConcreteColumnDescription {
        ColumnDescription::new(name).with_type(t).create().unwrap()
    }

    fn text(name: &str, n: usize) -> fitsio::tables::ConcreteColumnDescription {
        ColumnDescription::new(name)
            .with_type(ColumnDataType::String)
            .that_repeats(n)
            .create()
            .unwrap()
    }

    const LOGLAM: [f32; 4] = [3.5797, 3.5798, 3.5799, 3.5800];

    /// A small spec-lite-shaped file: COADD (4 pixels) and a one-row SPECOBJ, SPECOBJID as
    /// text (DR12+) or as an unsigned 64-bit integer.
    fn write_spec_lite(path: &Path, specobjid_as_text: bool) {
        let mut f = fitsio::FitsFile::create(path).open().unwrap();
        let p = f.primary_hdu().unwrap();
        p.write_key(&mut f, "EXPTIME", 2700.0).unwrap();
        p.write_key(&mut f, "TAI-BEG", 4_838_500_800.0).unwrap();
        p.write_key(&mut f, "DATE-OBS", "2012-03-15").unwrap();
        p.write_key(&mut f, "TELESCOP", "SDSS 2-.5m").unwrap();
        p.write_key(&mut f, "OBSERVAT", "APO").unwrap();
        use ColumnDataType::*;
        let coadd = f
            .create_table(
                "COADD".to_string(),
                &[
                    col("flux", Float),
                    col("loglam", Float),
                    col("ivar", Float),
                    col("and_mask", Int),
                    col("or_mask", Int),
                    col("wdisp", Float),
                    col("sky", Float),
                    col("model", Float),
                ],
            )
            .unwrap();
        coadd
            .write_col(&mut f, "flux", &[1.0f32, 2.0, 3.0, 4.0])
            .unwrap();
        coadd.write_col(&mut f, "loglam", &LOGLAM).unwrap();
        coadd
            .write_col(&mut f, "ivar", &[0.5f32, 0.0, 1.5, 2.0])
            .unwrap();
        // A negative int32 keeps its bits: -2147483648 is bit 31.
        coadd
            .write_col(&mut f, "and_mask", &[0i32, 16, 0, i32::MIN])
            .unwrap();
        coadd
            .write_col(&mut f, "or_mask", &[1i32, 16, 1, 1])
            .unwrap();
        coadd
            .write_col(&mut f, "model", &[1.1f32, 2.1, 3.1, 4.1])
            .unwrap();
        let id_col = if specobjid_as_text {
            text("SPECOBJID", 19)
        } else {
            col("SPECOBJID", UnsignedLongLong)
        };
        let so = f
            .create_table(
                "SPECOBJ".to_string(),
                &[
                    col("PLUG_RA", Double),
                    col("PLUG_DEC", Double),
                    col("Z", Float),
                    col("Z_ERR", Float),
                    col("ZWARNING", Int),
                    text("CLASS", 6),
                    id_col,
                    text("BESTOBJID", 19),
                    col("MJD", Int),
                    col("PLATE", Int),
                    col("FIBERID", Int),
                    col("SPECPRIMARY", Short),
                    text("SURVEY", 4),
                    text("INSTRUMENT", 4),
                ],
            )
            .unwrap();
        so.write_col(&mut f, "PLUG_RA", &[150.25f64]).unwrap();
        so.write_col(&mut f, "PLUG_DEC", &[2.5f64]).unwrap();
        so.write_col(&mut f, "Z", &[0.125f32]).unwrap();
        so.write_col(&mut f, "Z_ERR", &[2.5e-5f32]).unwrap();
        so.write_col(&mut f, "ZWARNING", &[4i32]).unwrap();
        so.write_col(&mut f, "CLASS", &["GALAXY".to_string()])
            .unwrap();
        if specobjid_as_text {
            so.write_col(&mut f, "SPECOBJID", &["4327408596823066624".to_string()])
                .unwrap();
        } else {
            so.write_col(&mut f, "SPECOBJID", &[4327408596823066624u64])
                .unwrap();
        }
        so.write_col(&mut f, "BESTOBJID", &["1237651753997172768".to_string()])
            .unwrap();
        so.write_col(&mut f, "MJD", &[56001i32]).unwrap();
        so.write_col(&mut f, "PLATE", &[3843i32]).unwrap();
        so.write_col(&mut f, "FIBERID", &[17i32]).unwrap();
        so.write_col(&mut f, "SPECPRIMARY", &[1i16]).unwrap();
        so.write_col(&mut f, "SURVEY", &["boss".to_string()])
            .unwrap();
        so.write_col(&mut f, "INSTRUMENT", &["BOSS".to_string()])
            .unwrap();
    }

    #[test]
    fn reads_a_spec_lite_file_with_text_specobjid() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("spec-3843-56001-0017.fits");
        write_spec_lite(&p, true);
        assert!(is_sdss(&p).unwrap());
        assert_eq!(
            crate::readers::detect(&p).unwrap(),
            crate::readers::Kind::Sdss
        );
        let s = read(&p).unwrap();
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(s.specid, 4327408596823066624);
        assert_eq!(s.targetid, Some(1237651753997172768));
        assert_eq!((s.ra_deg, s.dec_deg), (150.25, 2.5));
        assert_eq!(s.redshift, Some(0.125));
        assert_eq!(s.redshift_err, Some(f64::from(2.5e-5f32)));
        assert_eq!(s.redshift_warning, Some(4));
        assert_eq!(s.spectype.as_deref(), Some("GALAXY"));
        assert_eq!(s.specprimary, Some(1));
        assert_eq!(s.survey.as_deref(), Some("boss"));
        assert_eq!(s.instrument.as_deref(), Some("BOSS"));
        assert_eq!(s.telescope.as_deref(), Some("SDSS 2-.5m"));
        assert_eq!(s.site.as_deref(), Some("APO"));
        assert_eq!(s.exptime_s, Some(2700.0));
        // DATE-OBS holds no time, so TAI-BEG (TAI − UTC = 34 s then). astropy:
        // Time(4838500800/86400, format='mjd', scale='tai').utc.isot
        assert_eq!(s.dateobs.as_deref(), Some("2012-03-15T03:59:26.000"));
        assert_eq!(s.source_key, "plate=3843;mjd=56001;fiber=17");
        assert_eq!(s.file, "spec-3843-56001-0017.fits");
        for (w, l) in s.wavelength_aa.iter().zip(LOGLAM) {
            assert!((w - 10f64.powf(f64::from(l))).abs() < 1e-9);
        }
        assert_eq!(s.flux, [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(s.ivar, [0.5, 0.0, 1.5, 2.0]);
        assert_eq!(s.mask, [0, 16, 0, 1 << 31]);
        assert_eq!(s.model.as_deref(), Some(&[1.1f32, 2.1, 3.1, 4.1][..]));
    }

    #[test]
    fn reads_uint64_specobjid() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("spec.fits");
        write_spec_lite(&p, false);
        let s = read(&p).unwrap();
        assert_eq!(s[0].specid, 4327408596823066624);
    }

    #[test]
    fn dates() {
        assert_eq!(
            date_obs(Some("2010-01-19T04:38:13".into()), Some(1.0), None).as_deref(),
            Some("2010-01-19T04:38:13")
        );
        assert_eq!(
            date_obs(Some("2010-01-19".into()), None, Some(55215)).as_deref(),
            Some("2010-01-19")
        );
        assert_eq!(
            date_obs(None, None, Some(51544)).as_deref(),
            Some("2000-01-01")
        );
        assert_eq!(date_obs(Some("19/01/10".into()), None, None), None);
        assert_eq!(tai_minus_utc_s(57754.0), 37.0);
        assert_eq!(tai_minus_utc_s(56000.0), 34.0);
    }

    #[test]
    fn missing_columns_name_the_hdu() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("spec.fits");
        {
            let mut f = fitsio::FitsFile::create(&p).open().unwrap();
            let c = f
                .create_table(
                    "COADD".to_string(),
                    &[
                        col("flux", ColumnDataType::Float),
                        col("loglam", ColumnDataType::Float),
                    ],
                )
                .unwrap();
            c.write_col(&mut f, "flux", &[1.0f32]).unwrap();
            c.write_col(&mut f, "loglam", &[3.6f32]).unwrap();
            let s = f
                .create_table(
                    "SPECOBJ".to_string(),
                    &[col("PLUG_RA", ColumnDataType::Double)],
                )
                .unwrap();
            s.write_col(&mut f, "PLUG_RA", &[1.0f64]).unwrap();
        }
        let e = read(&p).unwrap_err();
        let Error::BadFile { hdu, reason, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(hdu.as_deref(), Some("COADD"));
        assert!(reason.contains("ivar"), "{reason}");
    }
}
