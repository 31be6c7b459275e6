//! Spectra for Meridian.
//!
//! - [`Spectrum`]: one 1-D spectrum with its core fields, as every reader produces it.
//! - Readers: [`desi`] (coadd and per-exposure files, B/R/Z arms merged), [`sdss`]
//!   (spec-lite files) and [`generic`] (1-D FITS tables and images with a spectral WCS,
//!   SDM VOTables).
//! - [`store`]: datasets stored column-wise: the core fields as a HATS catalog (queried
//!   over TAP like any other table), the arrays in memory-mapped Arrow IPC files.
//! - [`pickle`]: SPARCL's retrieve answers, Python pickles of numpy arrays, streamed.
//! - [`ops`]: flux-conserving resampling, rest-frame shifts and stacks.
//! - [`synth`]: reproducible synthetic spectra for tests and benchmarks.

pub mod desi;
mod error;
pub mod generic;
pub mod ops;
pub mod pickle;
pub mod readers;
pub mod sdm;
pub mod sdss;
pub mod stack;
pub mod store;
pub mod synth;

pub use error::{Error, Result};

/// Unit of flux and model arrays (SPARCL's spelling).
pub const FLUX_UNIT: &str = "10**-17 erg cm-2 s-1 AA-1";
/// Unit of inverse variances.
pub const IVAR_UNIT: &str = "10**+34 cm4 s2 AA2 erg-2";
/// Unit of wavelengths (vacuum).
pub const WAVELENGTH_UNIT: &str = "AA";

/// One 1-D spectrum as read from a file, before it is stored.
///
/// Arrays share one length: `wavelength_aa[i]` is the vacuum wavelength of pixel `i`, in
/// ascending order. Flux and model are in [`FLUX_UNIT`], `ivar` its inverse variance (0 where
/// a pixel carries no information) and `mask` a bit mask (0 = good).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spectrum {
    /// The survey's identifier of the spectrum (DESI: TARGETID; SDSS: SPECOBJID).
    pub specid: i64,
    /// The target's identifier, when the survey has one.
    pub targetid: Option<i64>,
    /// Right ascension, degrees (ICRS).
    pub ra_deg: f64,
    /// Declination, degrees (ICRS).
    pub dec_deg: f64,
    /// Redshift.
    pub redshift: Option<f64>,
    /// Its uncertainty.
    pub redshift_err: Option<f64>,
    /// Redshift warning bits (0: none).
    pub redshift_warning: Option<i64>,
    /// GALAXY, QSO or STAR.
    pub spectype: Option<String>,
    /// Start of the observation, ISO 8601 (UTC).
    pub dateobs: Option<String>,
    /// Exposure time, seconds.
    pub exptime_s: Option<f64>,
    /// Survey (e.g. sv3, main, boss).
    pub survey: Option<String>,
    /// Instrument (DESI, BOSS, SDSS).
    pub instrument: Option<String>,
    /// Telescope.
    pub telescope: Option<String>,
    /// Observatory site.
    pub site: Option<String>,
    /// 1 when this is the primary spectrum of its target.
    pub specprimary: Option<i32>,
    /// What makes this spectrum unique within its data release beyond `specid` (for
    /// example `healpix=26065;coadd` or `healpix=26065;expid=1234`): part of the
    /// deterministic `sparcl_id`.
    pub source_key: String,
    /// The file the spectrum came from (its name, not a path).
    pub file: String,
    /// Vacuum wavelengths, Å, ascending.
    pub wavelength_aa: Vec<f64>,
    /// Flux density, [`FLUX_UNIT`].
    pub flux: Vec<f32>,
    /// Inverse variance of `flux`.
    pub ivar: Vec<f32>,
    /// Bit mask, 0 = good.
    pub mask: Vec<u32>,
    /// Best-fit model, [`FLUX_UNIT`], when the file has one.
    pub model: Option<Vec<f32>>,
}

impl Spectrum {
    /// Checks that the arrays agree in length, wavelengths ascend and the position is on
    /// the sky; the error says which.
    pub fn check(&self) -> std::result::Result<(), String> {
        let n = self.wavelength_aa.len();
        if n == 0 {
            return Err("the spectrum has no pixels".into());
        }
        for (name, len) in [
            ("flux", self.flux.len()),
            ("ivar", self.ivar.len()),
            ("mask", self.mask.len()),
            ("model", self.model.as_ref().map_or(n, Vec::len)),
        ] {
            if len != n {
                return Err(format!(
                    "{name} has {len} pixels but the wavelength array has {n}"
                ));
            }
        }
        if let Some(i) = self
            .wavelength_aa
            .windows(2)
            .position(|w| w[1].partial_cmp(&w[0]) != Some(std::cmp::Ordering::Greater))
        {
            return Err(format!(
                "wavelengths do not ascend at pixel {} ({} then {})",
                i + 1,
                self.wavelength_aa[i],
                self.wavelength_aa[i + 1]
            ));
        }
        if !self.wavelength_aa[0].is_finite() || self.wavelength_aa[0] <= 0.0 {
            return Err(format!(
                "wavelength {} is not a positive number",
                self.wavelength_aa[0]
            ));
        }
        if !(self.ra_deg.is_finite()
            && self.dec_deg.is_finite()
            && (-90.0..=90.0).contains(&self.dec_deg))
        {
            return Err(format!(
                "position ({}, {}) is not on the sky",
                self.ra_deg, self.dec_deg
            ));
        }
        Ok(())
    }

    /// The deterministic SPARCL identifier of this spectrum in `data_release`: a UUID
    /// (version 8, name-based on SHA-256) of the release, `specid` and `source_key`, so
    /// that ingesting the same file twice gives the same ids.
    pub fn sparcl_id(&self, data_release: &str) -> String {
        uuid_of(&format!(
            "{data_release}\u{1f}{}\u{1f}{}",
            self.specid, self.source_key
        ))
    }
}

/// A name-based UUID (RFC 9562 version 8) of `name`: the first 16 bytes of its SHA-256 with
/// the version and variant bits set.
pub fn uuid_of(name: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(name.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparcl_ids_are_uuids_and_deterministic() {
        let s = Spectrum {
            specid: -2713437,
            source_key: "healpix=26065;coadd".into(),
            ..Default::default()
        };
        let a = s.sparcl_id("DESI-EDR");
        assert_eq!(a, s.sparcl_id("DESI-EDR"));
        assert_ne!(a, s.sparcl_id("DESI-DR1"));
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "8");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn check_names_what_is_wrong() {
        let mut s = Spectrum {
            wavelength_aa: vec![4000.0, 4001.0],
            flux: vec![1.0, 2.0],
            ivar: vec![1.0, 1.0],
            mask: vec![0, 0],
            ..Default::default()
        };
        assert!(s.check().is_ok());
        s.ivar.pop();
        assert!(s.check().unwrap_err().contains("ivar has 1 pixels"));
        s.ivar.push(1.0);
        s.wavelength_aa[1] = 3999.0;
        assert!(s.check().unwrap_err().contains("do not ascend"));
    }
}
