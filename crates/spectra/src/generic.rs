//! Generic 1-D spectra: FITS binary (or ASCII) tables, 1-D FITS images with a spectral WCS,
//! and IVOA Spectral Data Model (SDM 1.x) VOTables as SSA services return them.
//!
//! **Tables.** The first table with a wavelength column (`WAVELENGTH`, `WAVE`, `LAMBDA`,
//! `LAM`, or `LOGLAM`/`LOGLAMBDA` holding log10 wavelengths; names case-insensitive) and a
//! `FLUX` column. Optional: `IVAR`/`INVVAR`; else `ERROR`/`ERR`/`SIGMA`/`FLUX_ERR`/… (ivar =
//! 1/σ², 0 where σ ≤ 0); else `VAR`/`VARIANCE`; `MASK`/`AND_MASK`/`OR_MASK`/`DQ`/`QUALITY`;
//! `MODEL`. Either one row per pixel (one spectrum) or array columns (one spectrum per row,
//! whose scalar columns RA/DEC, Z, SPECID… override the header's).
//!
//! **Images.** The first image HDU with a spectral WCS (`CRVAL1`, or SDSS's `COEFF0`) whose
//! axes beyond the first are all 1: λ = CRVAL1 + (p − CRPIX1)·CDELT1 (or `CD1_1`; p is the
//! 1-based pixel); with `DC-FLAG` = 1 (IRAF) log10 λ follows that formula; with a `-LOG`
//! CTYPE1 and no DC-FLAG, Paper III's λ = CRVAL1·exp(CDELT1·(p − CRPIX1)/CRVAL1); SDSS
//! `COEFF0`/`COEFF1`: log10 λ = COEFF0 + COEFF1·i (i 0-based). Companion image HDUs of the
//! same length named `IVAR`/`INVVAR`, `ERR`/`ERROR`/`SIGMA`/`UNCERTAINTY`, `VAR`/`VARIANCE`
//! and `MASK`/`DQ`/`QUALITY` give ivar and mask.
//!
//! **VOTables.** The first TABLE's FIELDs are matched by utype, case-insensitively and by
//! suffix (`…Data.SpectralAxis.Value`, `…Data.FluxAxis.Value`,
//! `…Data.FluxAxis.Accuracy.StatError`, `…Data.FluxAxis.Quality`), else by UCD (`em.wl`,
//! `em.freq`, `em.energy`; `phot.flux.density`; `stat.error`), else by the table column names
//! above. Scalar FIELDs give one spectrum, array FIELDs one per row. PARAMs give the
//! metadata: `Target.Pos` or `Char.SpatialAxis.Coverage.Location.Value` (or UCD `pos.eq`),
//! `Target.Redshift`/`Derived.Redshift.Value`, `Char.TimeAxis.Coverage.Location.Value`
//! (MJD), `Char.TimeAxis.Coverage.Bounds.Extent` (s), `DataID.Instrument`,
//! `DataID.Collection`, and any PARAM named like a header keyword below. meridian-formats
//! picks its VOTable reader by the file name, so VOTables must be named `.xml`, `.vot` or
//! `.votable` (optionally `.gz`).
//!
//! **Units.** Wavelengths are converted to vacuum Å from any length (`m`, `cm`, `mm`, `um`,
//! `micron`, `nm`, `Angstrom`/`AA`/`A`), frequency (`Hz`, `GHz`…) or energy (`eV`, `keV`…)
//! unit (a table's TUNITn; an image's CUNIT1, else IRAF's `WAT1_001 units=`; a FIELD's
//! unit); no unit means Å (`LOGLAM` columns: log10 of Å, or of the unit in `log(…)`).
//! Air wavelengths (CTYPE1 `AWAV…`, header `AIRORVAC = 'air'` or `VACUUM = F`, or a UCD with
//! `obs.atmos`) are converted to vacuum with Ciddor (1996, Applied Optics 35, 1566), as
//! IDL's `airtovac`; anything else is taken as vacuum. Flux (TUNITn, BUNIT or the FIELD's
//! unit) is converted to [`crate::FLUX_UNIT`] when it parses as a spectral flux density per
//! wavelength (`erg/s/cm2/Angstrom`, `W m-2 nm-1`, `1e-17 erg cm-2 s-1 AA-1`…) or per
//! frequency (`Jy`, `mJy`, `erg/s/cm2/Hz`: f_λ = f_ν·c/λ²); any other unit (counts, ADU,
//! none, or one not understood) is **kept as given**: the values are stored unchanged, as
//! if they were in FLUX_UNIT, since [`Spectrum`] has no unit field (a warning is logged).
//! ivar and model follow the flux's conversion; errors are taken in the flux's unit.
//! Spectra stored in descending wavelength are reversed; pixels with a non-finite flux get
//! ivar 0; with no uncertainty at all, ivar is 0 everywhere; with no mask, mask is 0.
//!
//! **Header keywords** (the data HDU's, then the primary's, except the WCS and BUNIT, which
//! are the data HDU's alone; PARAMs for VOTables):
//! position from `RA`/`DEC`, `PLUG_RA`/`PLUG_DEC`, `OBJRA`/`OBJDEC`, `RA_OBJ`/`DEC_OBJ`,
//! `RA_TARG`/`DEC_TARG`, `TARG_RA`/`TARG_DEC`, `OBJ_RA`/`OBJ_DEC` (degrees, or sexagesimal
//! text with RA in hours); a spectrum without a position fails. `redshift` from `Z` or
//! `REDSHIFT`, its error from `Z_ERR`, `ZERR` or `REDSHIFT_ERR`. `specid` from `SPECID`,
//! `SPECOBJID`, `OBJID` or `TARGETID` (integers), else a stable hash of the file's name:
//! the first 8 bytes of its SHA-256, big-endian, shifted right by one bit (so positive);
//! `targetid` from `TARGETID`. `dateobs` from `DATE-OBS` (with `TIME-OBS`/`UT` when it is a
//! date alone), else `MJD-OBS`; `exptime_s` from `EXPTIME` or `EXPOSURE`; `survey`
//! `SURVEY`; `instrument` `INSTRUME`; `telescope` `TELESCOP`; `site` `OBSERVAT`.
//! `source_key`: `file={name};hdu={EXTNAME or number}`, with `;row={i}` for tables of one
//! spectrum per row.

use std::collections::HashMap;
use std::path::Path;

use crate::readers::fits::{Fits, Hdu, parse_id};
use crate::readers::{check_all, file_name, mjd_to_iso, sniff};
use crate::{Error, Result, Spectrum};

/// Speed of light, m/s.
const C_M_S: f64 = 299_792_458.0;
/// Planck constant × speed of light, J·m.
const HC_J_M: f64 = 6.626_070_15e-34 * C_M_S;
/// [`crate::FLUX_UNIT`] in SI (W m⁻³): 10⁻¹⁷ erg s⁻¹ cm⁻² Å⁻¹.
const FLUX_UNIT_SI: f64 = 1e-10;

const WAVE_NAMES: [&str; 6] = ["WAVELENGTH", "WAVE", "LAMBDA", "LAM", "WAVELEN", "WL"];
const LOG_WAVE_NAMES: [&str; 4] = ["LOGLAM", "LOGLAMBDA", "LOGWAVE", "LOG_WAVE"];
const FLUX_NAMES: [&str; 4] = ["FLUX", "FLUX_DENSITY", "FLAM", "F_LAMBDA"];
const IVAR_NAMES: [&str; 4] = ["IVAR", "INVVAR", "INV_VAR", "FLUX_IVAR"];
const SIGMA_NAMES: [&str; 9] = [
    "ERROR",
    "ERR",
    "SIGMA",
    "FLUX_ERROR",
    "FLUX_ERR",
    "ERR_FLUX",
    "UNCERTAINTY",
    "STAT_ERR",
    "STDDEV",
];
const VAR_NAMES: [&str; 2] = ["VAR", "VARIANCE"];
const MASK_NAMES: [&str; 5] = ["MASK", "AND_MASK", "OR_MASK", "DQ", "QUALITY"];
const MODEL_NAMES: [&str; 1] = ["MODEL"];

/// (RA, Dec) keyword pairs, in order of preference.
const POSITION_KEYS: [(&str, &str); 7] = [
    ("RA", "DEC"),
    ("PLUG_RA", "PLUG_DEC"),
    ("OBJRA", "OBJDEC"),
    ("RA_OBJ", "DEC_OBJ"),
    ("RA_TARG", "DEC_TARG"),
    ("TARG_RA", "TARG_DEC"),
    ("OBJ_RA", "OBJ_DEC"),
];
const Z_KEYS: [&str; 2] = ["Z", "REDSHIFT"];
const Z_ERR_KEYS: [&str; 3] = ["Z_ERR", "ZERR", "REDSHIFT_ERR"];
const ID_KEYS: [&str; 4] = ["SPECID", "SPECOBJID", "OBJID", "TARGETID"];
/// Header keywords describing the observation, from the data HDU or else the primary.
const META_KEYS: [&str; 12] = [
    "DATE-OBS", "TIME-OBS", "UT", "MJD-OBS", "EXPTIME", "EXPOSURE", "SURVEY", "INSTRUME",
    "TELESCOP", "OBSERVAT", "AIRORVAC", "VACUUM",
];
/// Header keywords describing the data HDU's own axes and values: never inherited.
const HDU_KEYS: [&str; 11] = [
    "CTYPE1", "CRVAL1", "CRPIX1", "CDELT1", "CD1_1", "CUNIT1", "DC-FLAG", "COEFF0", "COEFF1",
    "WAT1_001", "BUNIT",
];

/// Reads every spectrum of a generic file: a FITS table or 1-D image, or an SDM VOTable
/// (see the module documentation for what is read and how).
pub fn read(path: &Path) -> Result<Vec<Spectrum>> {
    match sniff(path)? {
        crate::readers::Content::Fits => read_fits(Fits::open(path)?),
        crate::readers::Content::VoTable => read_votable(path),
    }
}

// ---------------------------------------------------------------------------------------
// Units

/// A unit as an SI scale and the powers of energy (J), length (m) and time (s).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Unit {
    scale: f64,
    energy: i32,
    length: i32,
    time: i32,
}

impl Unit {
    const ONE: Unit = Unit::new(1.0, 0, 0, 0);

    const fn new(scale: f64, energy: i32, length: i32, time: i32) -> Self {
        Self {
            scale,
            energy,
            length,
            time,
        }
    }

    fn mul(self, o: Unit) -> Unit {
        Unit::new(
            self.scale * o.scale,
            self.energy + o.energy,
            self.length + o.length,
            self.time + o.time,
        )
    }

    fn pow(self, n: i32) -> Unit {
        Unit::new(
            self.scale.powi(n),
            self.energy * n,
            self.length * n,
            self.time * n,
        )
    }

    fn dims(self) -> (i32, i32, i32) {
        (self.energy, self.length, self.time)
    }
}

/// A unit symbol (without exponent), SI prefixes included.
fn unit_symbol(s: &str) -> Option<Unit> {
    let base = |s: &str| -> Option<Unit> {
        Some(match s {
            "m" => Unit::new(1.0, 0, 1, 0),
            "s" => Unit::new(1.0, 0, 0, 1),
            "Hz" => Unit::new(1.0, 0, 0, -1),
            "J" => Unit::new(1.0, 1, 0, 0),
            "W" => Unit::new(1.0, 1, 0, -1),
            "eV" => Unit::new(1.602_176_634e-19, 1, 0, 0),
            // 1 Jy = 1e-26 W m-2 Hz-1 = 1e-26 J m-2.
            "Jy" => Unit::new(1e-26, 1, -2, 0),
            _ => return None,
        })
    };
    let exact = match s {
        "A" | "AA" | "Å" | "Ang" => Some(Unit::new(1e-10, 0, 1, 0)),
        "um" | "µm" | "μm" => Some(Unit::new(1e-6, 0, 1, 0)),
        "erg" | "ergs" => Some(Unit::new(1e-7, 1, 0, 0)),
        "min" => Some(Unit::new(60.0, 0, 0, 1)),
        "h" | "hr" => Some(Unit::new(3600.0, 0, 0, 1)),
        _ => None,
    };
    if exact.is_some() {
        return exact;
    }
    if let Some(u) = base(s) {
        return Some(u);
    }
    let word = match s.to_ascii_lowercase().as_str() {
        "angstrom" | "angstroms" | "angstroem" | "aa" | "ang" => Some(Unit::new(1e-10, 0, 1, 0)),
        "micron" | "microns" | "micrometer" | "micrometers" => Some(Unit::new(1e-6, 0, 1, 0)),
        "nanometer" | "nanometers" | "nanometre" | "nanometres" => Some(Unit::new(1e-9, 0, 1, 0)),
        "meter" | "meters" | "metre" | "metres" => Some(Unit::new(1.0, 0, 1, 0)),
        "erg" | "ergs" => Some(Unit::new(1e-7, 1, 0, 0)),
        "jansky" | "janskys" | "jy" => Some(Unit::new(1e-26, 1, -2, 0)),
        "hz" | "hertz" => Some(Unit::new(1.0, 0, 0, -1)),
        "sec" | "second" | "seconds" => Some(Unit::new(1.0, 0, 0, 1)),
        "watt" | "watts" => Some(Unit::new(1.0, 1, 0, -1)),
        "joule" | "joules" => Some(Unit::new(1.0, 1, 0, 0)),
        "ev" => Some(Unit::new(1.602_176_634e-19, 1, 0, 0)),
        _ => None,
    };
    if word.is_some() {
        return word;
    }
    const PREFIXES: [(&str, f64); 16] = [
        ("da", 1e1),
        ("Y", 1e24),
        ("Z", 1e21),
        ("E", 1e18),
        ("P", 1e15),
        ("T", 1e12),
        ("G", 1e9),
        ("M", 1e6),
        ("k", 1e3),
        ("h", 1e2),
        ("d", 1e-1),
        ("c", 1e-2),
        ("m", 1e-3),
        ("u", 1e-6),
        ("n", 1e-9),
        ("p", 1e-12),
    ];
    for (p, f) in PREFIXES
        .iter()
        .chain(&[("µ", 1e-6), ("μ", 1e-6), ("f", 1e-15)])
    {
        if let Some(rest) = s.strip_prefix(p)
            && let Some(u) = base(rest)
        {
            return Some(Unit::new(u.scale * f, u.energy, u.length, u.time));
        }
    }
    None
}

/// A recursive-descent parser of unit strings as FITS, VOUnit and common practice write
/// them: `10**-17 erg/(s cm2 Angstrom)`, `erg.s-1.cm-2.Angstrom-1`, `W m^-2 nm^-1`,
/// `1e-17 erg/cm**2/s/A`, `mJy`.
struct UnitParser {
    c: Vec<char>,
    i: usize,
}

impl UnitParser {
    fn peek(&self) -> Option<char> {
        self.c.get(self.i).copied()
    }

    fn peek2(&self) -> Option<char> {
        self.c.get(self.i + 1).copied()
    }

    fn expr(&mut self, depth: usize) -> Option<Unit> {
        if depth > 8 {
            return None;
        }
        let mut u = Unit::ONE;
        let mut divide = false;
        loop {
            while matches!(self.peek(), Some(' ' | '.' | '*' | '·' | '\t')) {
                self.i += 1;
            }
            match self.peek() {
                None | Some(')') => break,
                Some('/') => {
                    if divide {
                        return None;
                    }
                    divide = true;
                    self.i += 1;
                }
                Some(_) => {
                    let f = self.factor(depth)?;
                    u = u.mul(if divide { f.pow(-1) } else { f });
                    divide = false;
                }
            }
        }
        (!divide).then_some(u)
    }

    fn factor(&mut self, depth: usize) -> Option<Unit> {
        let c = self.peek()?;
        if c.is_ascii_digit() || (matches!(c, '+' | '-') && self.peek2()?.is_ascii_digit()) {
            let v = self.number()?;
            let v = match self.exponent()? {
                Some(e) => v.powi(e),
                None => v,
            };
            return (v.is_finite() && v != 0.0).then(|| Unit::new(v, 0, 0, 0));
        }
        if c == '(' {
            self.i += 1;
            let u = self.expr(depth + 1)?;
            if self.peek() != Some(')') {
                return None;
            }
            self.i += 1;
            return Some(match self.exponent()? {
                Some(e) => u.pow(e),
                None => u,
            });
        }
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_alphabetic() || matches!(c, 'µ' | 'μ' | 'Å'))
        {
            self.i += 1;
        }
        if self.i == start {
            return None;
        }
        let sym: String = self.c[start..self.i].iter().collect();
        let u = unit_symbol(&sym)?;
        // An exponent right after the symbol: cm2, cm-2, cm^2, cm**-2, cm^(-2).
        Some(match self.exponent()? {
            Some(e) => u.pow(e),
            None => u,
        })
    }

    /// An optional exponent: `**n`, `^n`, `n`, `-n`, `+n`, each optionally in parentheses.
    /// `None` inside when there is none; `None` outside when malformed.
    fn exponent(&mut self) -> Option<Option<i32>> {
        let save = self.i;
        let mut marked = false;
        if self.peek() == Some('*') && self.peek2() == Some('*') {
            self.i += 2;
            marked = true;
        } else if self.peek() == Some('^') {
            self.i += 1;
            marked = true;
        }
        let paren = self.peek() == Some('(');
        if paren {
            if !marked {
                self.i = save;
                return Some(None);
            }
            self.i += 1;
        }
        let start = self.i;
        if matches!(self.peek(), Some('+' | '-')) {
            self.i += 1;
        }
        let digits = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        if self.i == digits {
            if marked {
                return None;
            }
            self.i = save;
            return Some(None);
        }
        let e: i32 = self.c[start..self.i]
            .iter()
            .collect::<String>()
            .parse()
            .ok()?;
        if paren {
            if self.peek() != Some(')') {
                return None;
            }
            self.i += 1;
        }
        (e.abs() <= 99).then_some(Some(e))
    }

    /// A decimal number: `10`, `1.5`, `1e-17`, `-3`.
    fn number(&mut self) -> Option<f64> {
        let start = self.i;
        if matches!(self.peek(), Some('+' | '-')) {
            self.i += 1;
        }
        while self.peek().is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.i += 1;
        }
        if matches!(self.peek(), Some('e' | 'E' | 'd' | 'D'))
            && self
                .peek2()
                .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '+')
        {
            self.i += 2;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
        }
        self.c[start..self.i]
            .iter()
            .collect::<String>()
            .replace(['d', 'D'], "e")
            .parse()
            .ok()
    }
}

/// Parses a unit string; `None` when it is empty or not understood.
fn parse_unit(s: &str) -> Option<Unit> {
    let s = s.trim();
    if s.is_empty() || s.len() > 200 {
        return None;
    }
    let mut p = UnitParser {
        c: s.chars().collect(),
        i: 0,
    };
    let u = p.expr(0)?;
    (p.i == p.c.len() && u.scale.is_finite() && u.scale > 0.0).then(|| Unit {
        scale: tidy(u.scale),
        ..u
    })
}

/// `x` rounded to 15 significant digits, so that products of decimal prefixes come out
/// exact (1e-9 m / 1e-10 m is 10, not 10.000000000000002).
fn tidy(x: f64) -> f64 {
    format!("{x:.14e}").parse().unwrap_or(x)
}

/// The unit inside a logarithm's unit (`log(Angstrom)`, `log10(AA)`, `dex`), Å when none.
fn log_inner_unit(unit: Option<&str>) -> Option<String> {
    let u = unit?.trim();
    let lower = u.to_ascii_lowercase();
    for p in ["log10(", "log(", "[", "lg("] {
        if lower.starts_with(p) {
            let inner = u[p.len()..].trim_end_matches([')', ']']).trim();
            return (!inner.is_empty()).then(|| inner.to_string());
        }
    }
    if lower == "dex" || lower.is_empty() {
        None
    } else {
        Some(u.to_string())
    }
}

/// Converts spectral coordinates in `unit` to Å (`None`: Å already); an error string when
/// the unit is neither a length, a frequency, an energy nor a wavenumber.
fn to_angstrom(values: &mut [f64], unit: Option<&str>) -> std::result::Result<(), String> {
    let Some(unit) = unit.map(str::trim).filter(|u| !u.is_empty()) else {
        return Ok(());
    };
    let u =
        parse_unit(unit).ok_or_else(|| format!("wavelength unit {unit:?} is not understood"))?;
    let convert: Box<dyn Fn(f64) -> f64> = match u.dims() {
        (0, 1, 0) => {
            let k = tidy(u.scale * 1e10);
            Box::new(move |v| v * k)
        }
        (0, 0, -1) => Box::new(move |v| C_M_S / (v * u.scale) * 1e10),
        (1, 0, 0) => Box::new(move |v| HC_J_M / (v * u.scale) * 1e10),
        (0, -1, 0) => Box::new(move |v| 1.0 / (v * u.scale) * 1e10),
        _ => {
            return Err(format!(
                "spectral unit {unit:?} is not a length, frequency, energy or wavenumber"
            ));
        }
    };
    for v in values.iter_mut() {
        *v = convert(*v);
    }
    Ok(())
}

/// Vacuum wavelength (Å) of an air wavelength (Å), after Ciddor (1996, Applied Optics 35,
/// 1566) as IDL's `airtovac` computes it (two iterations); unchanged below 2000 Å.
fn air_to_vacuum_aa(air: f64) -> f64 {
    if air.is_nan() || air < 2000.0 {
        return air;
    }
    let mut vac = air;
    for _ in 0..2 {
        let sigma2 = (1e4 / vac).powi(2);
        let fact = 1.0 + 5.792_105e-2 / (238.018_5 - sigma2) + 1.679_17e-3 / (57.362 - sigma2);
        vac = air * fact;
    }
    vac
}

/// The factor that turns each pixel's flux in `unit` into [`crate::FLUX_UNIT`], or `None`
/// when `unit` is absent or not a flux density per wavelength or frequency (the values are
/// then kept as given).
fn flux_factors(unit: Option<&str>, wavelength_aa: &[f64]) -> Option<Vec<f64>> {
    let u = parse_unit(unit?)?;
    match u.dims() {
        // W m-3: per wavelength.
        (1, -3, -1) => Some(vec![tidy(u.scale / FLUX_UNIT_SI); wavelength_aa.len()]),
        // J m-2 = W m-2 Hz-1: per frequency; f_λ = f_ν c / λ².
        (1, -2, 0) => Some(
            wavelength_aa
                .iter()
                .map(|w| u.scale * C_M_S / (w * 1e-10).powi(2) / FLUX_UNIT_SI)
                .collect(),
        ),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Arrays to a spectrum

/// How the uncertainty is given.
enum Uncertainty {
    Ivar(Vec<f64>),
    Sigma(Vec<f64>),
    Variance(Vec<f64>),
}

/// One spectrum's arrays as read, before conversion.
struct RawArrays {
    wave: Vec<f64>,
    wave_unit: Option<String>,
    log10: bool,
    air: bool,
    flux: Vec<f64>,
    flux_unit: Option<String>,
    err: Option<Uncertainty>,
    mask: Option<Vec<u32>>,
    model: Option<Vec<f64>>,
}

/// Converted arrays of a spectrum, ascending in vacuum Å.
struct Arrays {
    wavelength_aa: Vec<f64>,
    flux: Vec<f32>,
    ivar: Vec<f32>,
    mask: Vec<u32>,
    model: Option<Vec<f32>>,
}

/// Converts `raw` (units, air, log, order), naming `hdu` in errors.
fn convert(path: &Path, hdu: &str, raw: RawArrays) -> Result<Arrays> {
    let bad = |reason: String| Error::bad_file(path, Some(hdu), reason);
    let n = raw.wave.len();
    if n == 0 {
        return Err(bad("the spectrum has no pixels".into()));
    }
    let lens = [
        ("flux", raw.flux.len()),
        (
            "uncertainty",
            match &raw.err {
                Some(Uncertainty::Ivar(v) | Uncertainty::Sigma(v) | Uncertainty::Variance(v)) => {
                    v.len()
                }
                None => n,
            },
        ),
        ("mask", raw.mask.as_ref().map_or(n, Vec::len)),
        ("model", raw.model.as_ref().map_or(n, Vec::len)),
    ];
    for (what, len) in lens {
        if len != n {
            return Err(bad(format!(
                "the {what} has {len} pixels but the wavelengths {n}"
            )));
        }
    }
    let mut wave = raw.wave;
    let mut unit = raw.wave_unit;
    if raw.log10 {
        for w in wave.iter_mut() {
            *w = 10f64.powf(*w);
        }
        unit = log_inner_unit(unit.as_deref());
    }
    to_angstrom(&mut wave, unit.as_deref()).map_err(bad)?;
    if raw.air {
        for w in wave.iter_mut() {
            *w = air_to_vacuum_aa(*w);
        }
    }
    if let Some(i) = wave.iter().position(|w| !w.is_finite() || *w <= 0.0) {
        return Err(bad(format!(
            "pixel {i} has wavelength {}, not a positive number",
            wave[i]
        )));
    }
    let mut ivar: Vec<f64> = match raw.err {
        None => vec![0.0; n],
        Some(Uncertainty::Ivar(v)) => v
            .into_iter()
            .map(|x| if x.is_finite() && x > 0.0 { x } else { 0.0 })
            .collect(),
        Some(Uncertainty::Sigma(v)) => v
            .into_iter()
            .map(|s| {
                if s.is_finite() && s > 0.0 {
                    1.0 / (s * s)
                } else {
                    0.0
                }
            })
            .collect(),
        Some(Uncertainty::Variance(v)) => v
            .into_iter()
            .map(|s| {
                if s.is_finite() && s > 0.0 {
                    1.0 / s
                } else {
                    0.0
                }
            })
            .collect(),
    };
    let mut flux = raw.flux;
    let mut model = raw.model;
    match flux_factors(raw.flux_unit.as_deref(), &wave) {
        Some(k) => {
            for i in 0..n {
                flux[i] *= k[i];
                ivar[i] /= k[i] * k[i];
                if let Some(m) = model.as_mut() {
                    m[i] *= k[i];
                }
            }
        }
        None => tracing::warn!(
            file = %path.display(),
            hdu,
            unit = raw.flux_unit.as_deref().unwrap_or(""),
            "flux unit is not a flux density this reader converts; values kept as given"
        ),
    }
    for (f, iv) in flux.iter().zip(ivar.iter_mut()) {
        if !f.is_finite() {
            *iv = 0.0;
        }
    }
    let mut mask = raw.mask.unwrap_or_else(|| vec![0; n]);
    if n > 1 && wave.windows(2).all(|w| w[1] < w[0]) {
        wave.reverse();
        flux.reverse();
        ivar.reverse();
        mask.reverse();
        if let Some(m) = model.as_mut() {
            m.reverse();
        }
    }
    if let Some(i) = wave.windows(2).position(|w| w[1] <= w[0]) {
        return Err(bad(format!(
            "wavelengths are not monotonic: pixel {} ({} Å) follows {} Å",
            i + 1,
            wave[i + 1],
            wave[i]
        )));
    }
    Ok(Arrays {
        wavelength_aa: wave,
        flux: flux.into_iter().map(|v| v as f32).collect(),
        ivar: ivar.into_iter().map(|v| v as f32).collect(),
        mask,
        model: model.map(|m| m.into_iter().map(|v| v as f32).collect()),
    })
}

// ---------------------------------------------------------------------------------------
// Metadata

/// Header keywords (upper case) and their values as text.
#[derive(Debug, Default, Clone)]
struct Keys(HashMap<String, String>);

impl Keys {
    fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn f64(&self, k: &str) -> Option<f64> {
        self.get(k)?
            .trim()
            .replace(['D', 'd'], "E")
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite())
    }

    fn first_f64(&self, keys: &[&str]) -> Option<f64> {
        keys.iter().find_map(|k| self.f64(k))
    }

    /// The first of `keys` holding an integer (written as text or as a number, `123.`
    /// included).
    fn first_id(&self, keys: &[&str]) -> Option<i64> {
        keys.iter().find_map(|k| {
            let v = self.get(k)?;
            parse_id(v).or_else(|| {
                let f = self.f64(k)?;
                (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
            })
        })
    }

    fn position(&self) -> Option<(f64, f64)> {
        POSITION_KEYS.iter().find_map(|(r, d)| {
            Some((
                parse_angle(self.get(r)?, true)?,
                parse_angle(self.get(d)?, false)?,
            ))
        })
    }

    fn dateobs(&self) -> Option<String> {
        let date = self.get("DATE-OBS").map(str::trim);
        if let Some(d) = date.filter(|d| d.contains('T')) {
            return Some(d.to_string());
        }
        if let Some(d) = date.filter(|d| d.len() == 10 && d.as_bytes()[4] == b'-') {
            let time = self.get("TIME-OBS").or_else(|| self.get("UT"));
            return Some(match time.map(str::trim).filter(|t| t.contains(':')) {
                Some(t) => format!("{d}T{t}"),
                None => d.to_string(),
            });
        }
        self.f64("MJD-OBS")
            .and_then(mjd_to_iso)
            .or_else(|| date.map(str::to_string))
    }

    fn text(&self, k: &str) -> Option<String> {
        self.get(k).map(|v| v.trim().to_string())
    }

    /// Whether the keywords say the wavelengths are in air.
    fn air(&self) -> bool {
        self.get("CTYPE1")
            .is_some_and(|c| c.trim().to_ascii_uppercase().starts_with("AWAV"))
            || self
                .get("AIRORVAC")
                .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("air"))
            || self.get("VACUUM").is_some_and(|v| v.trim() == "F")
    }
}

/// Degrees from a number (degrees) or sexagesimal text (`12:34:56.7`, `12 34 56.7`,
/// `12h34m56.7s`), in hours when `hours` (RA).
fn parse_angle(v: &str, hours: bool) -> Option<f64> {
    let v = v.trim();
    if let Ok(x) = v.parse::<f64>() {
        return x.is_finite().then_some(x);
    }
    let negative = v.starts_with('-');
    let parts: Vec<f64> = v
        .trim_start_matches(['-', '+'])
        .split(|c: char| c == ':' || c.is_whitespace() || "hdms°'\"".contains(c))
        .filter(|p| !p.is_empty())
        .map(str::parse)
        .collect::<std::result::Result<_, _>>()
        .ok()?;
    if parts.is_empty() || parts.len() > 3 {
        return None;
    }
    let mut x =
        parts[0] + parts.get(1).unwrap_or(&0.0) / 60.0 + parts.get(2).unwrap_or(&0.0) / 3600.0;
    if hours {
        x *= 15.0;
    }
    if negative {
        x = -x;
    }
    x.is_finite().then_some(x)
}

/// A stable specid for a file without one: the first 8 bytes of the SHA-256 of its name,
/// big-endian, shifted right one bit.
fn name_hash(name: &str) -> i64 {
    use sha2::Digest;
    let d = sha2::Sha256::digest(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    (u64::from_be_bytes(b) >> 1) as i64
}

/// Per-spectrum values that override the header's (table rows).
#[derive(Debug, Default, Clone)]
struct RowMeta {
    position: Option<(f64, f64)>,
    redshift: Option<f64>,
    redshift_err: Option<f64>,
    specid: Option<i64>,
    targetid: Option<i64>,
}

/// A spectrum from its arrays, the header and the row's overrides.
fn spectrum(
    path: &Path,
    hdu: &str,
    keys: &Keys,
    row: &RowMeta,
    source_key: String,
    a: Arrays,
) -> Result<Spectrum> {
    let file = file_name(path);
    let (ra_deg, dec_deg) = row.position.or_else(|| keys.position()).ok_or_else(|| {
        Error::bad_file(
            path,
            Some(hdu),
            "no position: none of the keywords RA/DEC, PLUG_RA/PLUG_DEC, OBJRA/OBJDEC, \
             RA_OBJ/DEC_OBJ, RA_TARG/DEC_TARG, TARG_RA/TARG_DEC, OBJ_RA/OBJ_DEC (or a \
             Target.Pos PARAM) is present",
        )
    })?;
    Ok(Spectrum {
        specid: row
            .specid
            .or_else(|| keys.first_id(&ID_KEYS))
            .unwrap_or_else(|| name_hash(&file)),
        targetid: row.targetid.or_else(|| keys.first_id(&["TARGETID"])),
        ra_deg,
        dec_deg,
        redshift: row.redshift.or_else(|| keys.first_f64(&Z_KEYS)),
        redshift_err: row.redshift_err.or_else(|| keys.first_f64(&Z_ERR_KEYS)),
        redshift_warning: None,
        spectype: None,
        dateobs: keys.dateobs(),
        exptime_s: keys.first_f64(&["EXPTIME", "EXPOSURE"]),
        survey: keys.text("SURVEY"),
        instrument: keys.text("INSTRUME"),
        telescope: keys.text("TELESCOP"),
        site: keys.text("OBSERVAT"),
        specprimary: None,
        source_key,
        file,
        wavelength_aa: a.wavelength_aa,
        flux: a.flux,
        ivar: a.ivar,
        mask: a.mask,
        model: a.model,
    })
}

// ---------------------------------------------------------------------------------------
// FITS

/// The keywords of `hdu` over those of the primary HDU (its WCS and BUNIT only from
/// `hdu`).
fn fits_keys(fits: &mut Fits, hdu: &Hdu) -> Keys {
    let primary = fits.hdus()[0].clone();
    let inherited = POSITION_KEYS
        .iter()
        .flat_map(|(r, d)| [*r, *d])
        .chain(Z_KEYS)
        .chain(Z_ERR_KEYS)
        .chain(ID_KEYS)
        .chain(META_KEYS);
    let mut keys = Keys::default();
    for k in inherited {
        let v = fits
            .key(hdu, k)
            .or_else(|| (hdu.index != 0).then(|| fits.key(&primary, k)).flatten());
        if let Some(v) = v {
            keys.0.insert(k.to_string(), v);
        }
    }
    for k in HDU_KEYS {
        if let Some(v) = fits.key(hdu, k) {
            keys.0.insert(k.to_string(), v);
        }
    }
    keys
}

fn find_column<'a>(hdu: &'a Hdu, names: &[&str]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| hdu.column(n).map(|c| c.name.as_str()))
}

/// Whether `hdu` is a table with a wavelength column and a flux column.
fn is_spectrum_table(hdu: &Hdu) -> bool {
    hdu.is_table()
        && (find_column(hdu, &WAVE_NAMES).is_some() || find_column(hdu, &LOG_WAVE_NAMES).is_some())
        && find_column(hdu, &FLUX_NAMES).is_some()
}

fn is_companion(name: &str) -> bool {
    let up = name.to_ascii_uppercase();
    IVAR_NAMES
        .iter()
        .chain(&SIGMA_NAMES)
        .chain(&VAR_NAMES)
        .chain(&MASK_NAMES)
        .any(|n| *n == up)
}

pub(crate) fn read_fits(mut fits: Fits) -> Result<Vec<Spectrum>> {
    let path = fits.path().to_path_buf();
    let mut refusal: Option<Error> = None;
    let hdus = fits.hdus().to_vec();
    for hdu in &hdus {
        if is_spectrum_table(hdu) {
            return read_table(&mut fits, hdu);
        }
        let Some(shape) = hdu.shape() else { continue };
        if shape.is_empty() || shape.contains(&0) || is_companion(&hdu.name) {
            continue;
        }
        let has_wcs = ["CRVAL1", "COEFF0"]
            .iter()
            .any(|k| fits.key(hdu, k).is_some());
        let one_d = shape[1..].iter().all(|&d| d == 1);
        if has_wcs && one_d {
            return read_image(&mut fits, hdu);
        }
        if refusal.is_none() {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            let reason = if one_d {
                "is a 1-D image without a spectral WCS (CRVAL1, CDELT1 or CD1_1, CRPIX1; or \
                 COEFF0, COEFF1)"
                    .to_string()
            } else {
                format!(
                    "is an image of {} pixels (NAXIS1 first); a 1-D spectrum image has one \
                     axis longer than 1",
                    dims.join(" × ")
                )
            };
            refusal = Some(Error::bad_file(&path, Some(&hdu.label()), reason));
        }
    }
    Err(refusal.unwrap_or_else(|| {
        Error::bad_file(
            &path,
            None,
            "holds no spectrum: no table with wavelength (WAVELENGTH, WAVE, LAMBDA, LOGLAM…) \
             and FLUX columns, and no 1-D image with a spectral WCS",
        )
    }))
}

/// Reads a column, numbers as `f64` (values × repeat per row).
fn col_f64(fits: &mut Fits, hdu: &Hdu, name: &str) -> Result<Vec<f64>> {
    fits.read_col(hdu, name)
}

fn read_table(fits: &mut Fits, hdu: &Hdu) -> Result<Vec<Spectrum>> {
    let path = fits.path().to_path_buf();
    let label = hdu.label();
    let keys = fits_keys(fits, hdu);
    let (wave_name, log10) = match find_column(hdu, &WAVE_NAMES) {
        Some(n) => (n.to_string(), false),
        None => (
            find_column(hdu, &LOG_WAVE_NAMES)
                .unwrap_or_default()
                .to_string(),
            true,
        ),
    };
    let flux_name = find_column(hdu, &FLUX_NAMES)
        .unwrap_or_default()
        .to_string();
    let column = |n: &str| hdu.column(n).cloned();
    let (Some(wave_col), Some(flux_col)) = (column(&wave_name), column(&flux_name)) else {
        return Err(Error::bad_file(
            &path,
            Some(&label),
            "lacks wavelength or flux",
        ));
    };
    let rows = hdu.rows();
    let npix = wave_col.repeat;
    // Array columns: one spectrum per row; else one row per pixel.
    let per_row = npix > 1;
    if flux_col.repeat != npix {
        return Err(Error::bad_file(
            &path,
            Some(&label),
            format!(
                "column {} holds {} values per row but {} holds {npix}",
                flux_col.name, flux_col.repeat, wave_col.name
            ),
        ));
    }
    let wave = col_f64(fits, hdu, &wave_name)?;
    let flux = col_f64(fits, hdu, &flux_name)?;
    // The first of `names` present, checked to hold `npix` values per row like the
    // wavelengths.
    let shaped = |names: &[&str]| -> Result<Option<String>> {
        let Some(c) = names.iter().find_map(|n| column(n)) else {
            return Ok(None);
        };
        if c.repeat != npix {
            return Err(Error::bad_file(
                &path,
                Some(&label),
                format!(
                    "column {} holds {} values per row but {} holds {npix}",
                    c.name, c.repeat, wave_col.name
                ),
            ));
        }
        Ok(Some(c.name))
    };
    let same_shape = |fits: &mut Fits, names: &[&str]| -> Result<Option<Vec<f64>>> {
        match shaped(names)? {
            Some(n) => Ok(Some(col_f64(fits, hdu, &n)?)),
            None => Ok(None),
        }
    };
    let err = if let Some(v) = same_shape(fits, &IVAR_NAMES)? {
        Some(Uncertainty::Ivar(v))
    } else if let Some(v) = same_shape(fits, &SIGMA_NAMES)? {
        Some(Uncertainty::Sigma(v))
    } else {
        same_shape(fits, &VAR_NAMES)?.map(Uncertainty::Variance)
    };
    let mask: Option<Vec<u32>> = match shaped(&MASK_NAMES)? {
        Some(n) => {
            let m: Vec<i64> = fits.read_col(hdu, &n)?;
            Some(m.into_iter().map(|v| v as u32).collect())
        }
        None => None,
    };
    let model = same_shape(fits, &MODEL_NAMES)?;
    let wave_unit = wave_col.unit.clone();
    let flux_unit = flux_col.unit.clone().or_else(|| keys.text("BUNIT"));
    let air = keys.air();
    let file = file_name(&path);

    if !per_row {
        let raw = RawArrays {
            wave,
            wave_unit,
            log10,
            air,
            flux,
            flux_unit,
            err,
            mask,
            model,
        };
        let a = convert(&path, &label, raw)?;
        let key = format!("file={file};hdu={}", hdu_key(hdu));
        let s = spectrum(&path, &label, &keys, &RowMeta::default(), key, a)?;
        let out = vec![s];
        check_all(&path, &label, &out)?;
        return Ok(out);
    }

    let metas = row_metas(fits, hdu, rows)?;
    let slice = |v: &[f64], r: usize| v[r * npix..(r + 1) * npix].to_vec();
    let mut out = Vec::with_capacity(rows);
    for (r, meta) in metas.iter().enumerate() {
        let raw = RawArrays {
            wave: slice(&wave, r),
            wave_unit: wave_unit.clone(),
            log10,
            air,
            flux: slice(&flux, r),
            flux_unit: flux_unit.clone(),
            err: err.as_ref().map(|e| match e {
                Uncertainty::Ivar(v) => Uncertainty::Ivar(slice(v, r)),
                Uncertainty::Sigma(v) => Uncertainty::Sigma(slice(v, r)),
                Uncertainty::Variance(v) => Uncertainty::Variance(slice(v, r)),
            }),
            mask: mask.as_ref().map(|m| m[r * npix..(r + 1) * npix].to_vec()),
            model: model.as_ref().map(|m| slice(m, r)),
        };
        let a = convert(&path, &label, raw).map_err(|e| with_row(e, r))?;
        let key = format!("file={file};hdu={};row={r}", hdu_key(hdu));
        out.push(spectrum(&path, &label, &keys, meta, key, a).map_err(|e| with_row(e, r))?);
    }
    check_all(&path, &label, &out)?;
    Ok(out)
}

/// The error `e` with "row r: " before its reason.
fn with_row(e: Error, r: usize) -> Error {
    match e {
        Error::BadFile { file, hdu, reason } => Error::BadFile {
            file,
            hdu,
            reason: format!("row {r}: {reason}"),
        },
        e => e,
    }
}

fn hdu_key(hdu: &Hdu) -> String {
    if hdu.name.is_empty() {
        hdu.index.to_string()
    } else {
        hdu.name.clone()
    }
}

/// Per-row position, redshift and identifiers from scalar columns, when present.
fn row_metas(fits: &mut Fits, hdu: &Hdu, rows: usize) -> Result<Vec<RowMeta>> {
    let mut metas = vec![RowMeta::default(); rows];
    let scalar = |hdu: &Hdu, n: &str| {
        hdu.column(n)
            .filter(|c| c.repeat == 1 || c.is_string())
            .map(|c| c.name.clone())
    };
    let numbers = |fits: &mut Fits, name: &str| -> Result<Vec<Option<f64>>> {
        let c = hdu.column(name).cloned();
        if c.is_some_and(|c| c.is_string()) {
            let t = fits.read_strings(hdu, name)?;
            return Ok(t.iter().map(|t| t.parse().ok()).collect());
        }
        let v: Vec<f64> = fits.read_scalars(hdu, name)?;
        Ok(v.into_iter().map(|x| x.is_finite().then_some(x)).collect())
    };
    for (r, d) in [
        ("RA", "DEC"),
        ("TARGET_RA", "TARGET_DEC"),
        ("PLUG_RA", "PLUG_DEC"),
        ("OBJRA", "OBJDEC"),
        ("RA_OBJ", "DEC_OBJ"),
    ] {
        if let (Some(r), Some(d)) = (scalar(hdu, r), scalar(hdu, d)) {
            let ra = numbers(fits, &r)?;
            let dec = numbers(fits, &d)?;
            for (m, (r, d)) in metas.iter_mut().zip(ra.into_iter().zip(dec)) {
                m.position = r.zip(d);
            }
            break;
        }
    }
    if let Some(n) = Z_KEYS.iter().find_map(|k| scalar(hdu, k)) {
        for (m, z) in metas.iter_mut().zip(numbers(fits, &n)?) {
            m.redshift = z;
        }
    }
    if let Some(n) = Z_ERR_KEYS.iter().find_map(|k| scalar(hdu, k)) {
        for (m, z) in metas.iter_mut().zip(numbers(fits, &n)?) {
            m.redshift_err = z;
        }
    }
    if let Some(n) = ID_KEYS.iter().find_map(|k| scalar(hdu, k)) {
        for (m, id) in metas.iter_mut().zip(fits.read_ids(hdu, &n)?) {
            m.specid = Some(id);
        }
    }
    if let Some(n) = scalar(hdu, "TARGETID") {
        for (m, id) in metas.iter_mut().zip(fits.read_ids(hdu, &n)?) {
            m.targetid = Some(id);
        }
    }
    Ok(metas)
}

fn read_image(fits: &mut Fits, hdu: &Hdu) -> Result<Vec<Spectrum>> {
    let path = fits.path().to_path_buf();
    let label = hdu.label();
    let bad = |reason: String| Error::bad_file(&path, Some(&label), reason);
    let keys = fits_keys(fits, hdu);
    let n = hdu.shape().and_then(|s| s.first().copied()).unwrap_or(0);
    let ctype = keys
        .get("CTYPE1")
        .map(|c| c.trim().to_ascii_uppercase())
        .unwrap_or_default();
    let axis = ctype.split('-').next().unwrap_or("");
    if !matches!(
        axis,
        "" | "WAVE" | "AWAV" | "LINEAR" | "LAMBDA" | "WAVELENGTH" | "FREQ" | "ENER" | "WAVN"
    ) {
        return Err(bad(format!(
            "CTYPE1 = {ctype:?} is not a spectral axis this reader knows (WAVE, AWAV, FREQ, \
             ENER, WAVN, LINEAR)"
        )));
    }
    let dc_flag = keys.f64("DC-FLAG").is_some_and(|f| f == 1.0);
    let wave: Vec<f64> = if let Some(crval) = keys.f64("CRVAL1") {
        let crpix = keys.f64("CRPIX1").unwrap_or(1.0);
        let delt = keys
            .f64("CDELT1")
            .or_else(|| keys.f64("CD1_1"))
            .ok_or_else(|| bad("has CRVAL1 but neither CDELT1 nor CD1_1".into()))?;
        if delt == 0.0 {
            return Err(bad("CDELT1 is 0".into()));
        }
        (1..=n)
            .map(|p| {
                let x = (p as f64 - crpix) * delt;
                if dc_flag {
                    10f64.powf(crval + x)
                } else if ctype.ends_with("-LOG") {
                    crval * (x / crval).exp()
                } else {
                    crval + x
                }
            })
            .collect()
    } else {
        let (c0, c1) = (keys.f64("COEFF0"), keys.f64("COEFF1"));
        let (Some(c0), Some(c1)) = (c0, c1) else {
            return Err(bad("has COEFF0 but no COEFF1".into()));
        };
        (0..n).map(|i| 10f64.powf(c0 + c1 * i as f64)).collect()
    };
    // CUNIT1, else IRAF's "units=" in WAT1_001, else Å.
    let wave_unit = keys.text("CUNIT1").or_else(|| {
        let wat = keys.get("WAT1_001")?;
        let u = wat
            .split_whitespace()
            .find_map(|w| w.strip_prefix("units="))?;
        Some(u.to_string())
    });
    let flux: Vec<f64> = fits.read_image(hdu)?;
    // Companion images of the same length.
    let mut err = None;
    let mut mask = None;
    let hdus = fits.hdus().to_vec();
    for h in hdus.iter().filter(|h| h.index != hdu.index) {
        let up = h.name.to_ascii_uppercase();
        let kind = if IVAR_NAMES.contains(&up.as_str()) {
            1
        } else if SIGMA_NAMES.contains(&up.as_str()) {
            2
        } else if VAR_NAMES.contains(&up.as_str()) {
            3
        } else if MASK_NAMES.contains(&up.as_str()) {
            4
        } else {
            continue;
        };
        let len: Option<usize> = h.shape().map(|s| s.iter().product());
        if len != Some(n) {
            return Err(Error::bad_file(
                &path,
                Some(&h.label()),
                format!(
                    "holds {} values but the spectrum ({label}) has {n} pixels",
                    len.map_or("table".to_string(), |l| l.to_string())
                ),
            ));
        }
        match kind {
            4 if mask.is_none() => mask = Some(fits.read_mask_image(h)?),
            1 if err.is_none() => err = Some(Uncertainty::Ivar(fits.read_image(h)?)),
            2 if err.is_none() => err = Some(Uncertainty::Sigma(fits.read_image(h)?)),
            3 if err.is_none() => err = Some(Uncertainty::Variance(fits.read_image(h)?)),
            _ => {}
        }
    }
    let raw = RawArrays {
        wave,
        wave_unit,
        log10: false,
        air: keys.air(),
        flux,
        flux_unit: keys.text("BUNIT"),
        err,
        mask,
        model: None,
    };
    let a = convert(&path, &label, raw)?;
    let key = format!("file={};hdu={}", file_name(&path), hdu_key(hdu));
    let out = vec![spectrum(&path, &label, &keys, &RowMeta::default(), key, a)?];
    check_all(&path, &label, &out)?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// VOTables

/// A PARAM of an SDM VOTable.
#[derive(Debug, Default, Clone)]
struct Param {
    name: String,
    ucd: String,
    utype: String,
    value: String,
}

/// A utype without namespace prefix or `Spectrum.`, lower case: `data.fluxaxis.value`.
fn norm_utype(u: &str) -> String {
    let u = u.trim().to_ascii_lowercase();
    let u = u.rsplit(':').next().unwrap_or("").to_string();
    u.strip_prefix("spectrum.").map(str::to_string).unwrap_or(u)
}

/// The PARAMs before the first DATA element (in the first 1 MiB of the file, decompressed).
fn votable_params(path: &Path) -> Result<Vec<Param>> {
    use quick_xml::events::Event;
    use std::io::Read;
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(1 << 20).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    let text = meridian_formats::content_head(&head, 8 << 20);
    let mut xml = quick_xml::Reader::from_reader(text.as_ref());
    let mut buf = Vec::new();
    let mut params = Vec::new();
    loop {
        match xml.read_event_into(&mut buf) {
            Ok(Event::Start(e) | Event::Empty(e)) => match e.local_name().as_ref() {
                b"PARAM" => {
                    let mut p = Param::default();
                    for a in e.attributes().flatten() {
                        let v = a
                            .unescape_value()
                            .map(|v| v.into_owned())
                            .unwrap_or_default();
                        match a.key.local_name().as_ref() {
                            b"name" => p.name = v,
                            b"ucd" => p.ucd = v,
                            b"utype" => p.utype = v,
                            b"value" => p.value = v,
                            _ => {}
                        }
                    }
                    params.push(p);
                }
                b"DATA" => break,
                _ => {}
            },
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
        buf.clear();
    }
    Ok(params)
}

/// Header-like keywords from PARAMs: by name, and by SDM utype or UCD.
fn param_keys(params: &[Param]) -> Keys {
    let mut keys = Keys::default();
    for p in params {
        if !p.name.is_empty() {
            keys.0
                .entry(p.name.trim().to_ascii_uppercase())
                .or_insert_with(|| p.value.clone());
        }
    }
    let mut set = |k: &str, v: String| {
        keys.0.insert(k.to_string(), v);
    };
    for p in params {
        let u = norm_utype(&p.utype);
        let ucd = p.ucd.to_ascii_lowercase();
        let ucd_main = ucd.split(';').next().unwrap_or("").trim();
        let v = p.value.trim().to_string();
        let pair = || {
            let mut it = v.split([' ', ',']).filter(|s| !s.is_empty());
            Some((it.next()?.to_string(), it.next()?.to_string()))
        };
        if u.ends_with("target.pos")
            || u.ends_with("char.spatialaxis.coverage.location.value")
            || (u.is_empty() && ucd_main == "pos.eq")
        {
            if let Some((r, d)) = pair() {
                set("RA", r);
                set("DEC", d);
            }
        } else if ucd_main == "pos.eq.ra" && u.is_empty() {
            set("RA", v);
        } else if ucd_main == "pos.eq.dec" && u.is_empty() {
            set("DEC", v);
        } else if u.ends_with("target.redshift")
            || u.ends_with("derived.redshift.value")
            || (u.is_empty() && ucd_main == "src.redshift")
        {
            set("Z", v);
        } else if u.ends_with("derived.redshift.staterror") {
            set("Z_ERR", v);
        } else if u.ends_with("char.timeaxis.coverage.location.value") {
            set("MJD-OBS", v);
        } else if u.ends_with("char.timeaxis.coverage.bounds.extent") {
            set("EXPTIME", v);
        } else if u.ends_with("dataid.instrument") {
            set("INSTRUME", v);
        } else if u.ends_with("dataid.collection") {
            set("SURVEY", v);
        }
    }
    keys
}

/// What a FIELD is in an SDM table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Role {
    Wave,
    Flux,
    Sigma,
    Mask,
}

/// The role of a FIELD from its utype, else its UCD, else its name.
fn role(name: &str, ucd: Option<&str>, utype: Option<&str>) -> Option<Role> {
    if let Some(u) = utype.map(norm_utype).filter(|u| !u.is_empty()) {
        if u.ends_with("data.spectralaxis.value") {
            return Some(Role::Wave);
        }
        if u.ends_with("data.fluxaxis.value") {
            return Some(Role::Flux);
        }
        if u.ends_with("data.fluxaxis.accuracy.staterror") {
            return Some(Role::Sigma);
        }
        if u.ends_with("data.fluxaxis.quality") {
            return Some(Role::Mask);
        }
    }
    if let Some(ucd) = ucd.map(str::to_ascii_lowercase).filter(|u| !u.is_empty()) {
        let words: Vec<&str> = ucd.split(';').map(str::trim).collect();
        match words[0] {
            "em.wl" | "em.freq" | "em.energy" | "em.wavenumber" => return Some(Role::Wave),
            "phot.flux.density" => return Some(Role::Flux),
            "stat.error" if words.get(1).is_some_and(|w| w.starts_with("phot.flux")) => {
                return Some(Role::Sigma);
            }
            "meta.code.qual" => return Some(Role::Mask),
            _ => {}
        }
    }
    let up = name.to_ascii_uppercase();
    let up = up.as_str();
    if WAVE_NAMES.contains(&up) {
        Some(Role::Wave)
    } else if FLUX_NAMES.contains(&up) {
        Some(Role::Flux)
    } else if SIGMA_NAMES.contains(&up) {
        Some(Role::Sigma)
    } else if MASK_NAMES.contains(&up) {
        Some(Role::Mask)
    } else {
        None
    }
}

/// A numeric column as one value per row (`Scalar`) or an array per row (`Rows`).
enum Values {
    Scalar(Vec<f64>),
    Rows(Vec<Vec<f64>>),
}

fn values(a: &arrow::array::ArrayRef) -> Option<Values> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type};
    let to_f64 = |a: &dyn Array| -> Option<Vec<f64>> {
        let c = arrow::compute::cast(a, &DataType::Float64).ok()?;
        let c = c.as_primitive::<Float64Type>();
        Some(
            (0..c.len())
                .map(|i| if c.is_null(i) { f64::NAN } else { c.value(i) })
                .collect(),
        )
    };
    let rows = |get: &dyn Fn(usize) -> Option<arrow::array::ArrayRef>, n: usize| {
        (0..n)
            .map(|i| match get(i) {
                Some(v) => to_f64(v.as_ref()),
                None => Some(Vec::new()),
            })
            .collect::<Option<Vec<_>>>()
            .map(Values::Rows)
    };
    match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            rows(&|i| (!l.is_null(i)).then(|| l.value(i)), l.len())
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            rows(&|i| (!l.is_null(i)).then(|| l.value(i)), l.len())
        }
        DataType::FixedSizeList(_, _) => {
            let l = a.as_fixed_size_list();
            rows(&|i| (!l.is_null(i)).then(|| l.value(i)), l.len())
        }
        DataType::Boolean => {
            let b = a.as_boolean();
            Some(Values::Scalar(
                (0..b.len())
                    .map(|i| f64::from(u8::from(!b.is_null(i) && b.value(i))))
                    .collect(),
            ))
        }
        _ => to_f64(a.as_ref()).map(Values::Scalar),
    }
}

fn read_votable(path: &Path) -> Result<Vec<Spectrum>> {
    use arrow::datatypes::DataType;
    let bad = |reason: String| Error::bad_file(path, None, reason);
    let reader = meridian_formats::open(path, &meridian_formats::ReadOptions::default())
        .map_err(|e| bad(e.to_string()))?;
    let schema = reader.schema();
    let batches: Vec<_> = reader
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let batch = arrow::compute::concat_batches(&schema, &batches)?;
    let keys = param_keys(&votable_params(path)?);

    let mut cols: HashMap<Role, usize> = HashMap::new();
    let mut air = false;
    for (i, f) in schema.fields().iter().enumerate() {
        let m = meridian_formats::ColumnMeta::of(f);
        if let Some(r) = role(f.name(), m.ucd.as_deref(), m.utype.as_deref())
            && !cols.contains_key(&r)
            && !matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8)
        {
            cols.insert(r, i);
            if r == Role::Wave {
                air = m
                    .ucd
                    .is_some_and(|u| u.to_ascii_lowercase().contains("obs.atmos"));
            }
        }
    }
    let (Some(&wi), Some(&fi)) = (cols.get(&Role::Wave), cols.get(&Role::Flux)) else {
        return Err(bad(
            "the VOTable has no spectral axis and flux FIELDs (utypes …Data.SpectralAxis.Value \
             and …Data.FluxAxis.Value, UCDs em.wl and phot.flux.density, or names WAVELENGTH \
             and FLUX): it is not an SDM spectrum"
                .into(),
        ));
    };
    let unit = |i: usize| meridian_formats::ColumnMeta::of(schema.field(i)).unit;
    let get = |i: usize| {
        values(batch.column(i)).ok_or_else(|| {
            bad(format!(
                "FIELD {} does not hold numbers",
                schema.field(i).name()
            ))
        })
    };
    let wave = get(wi)?;
    let flux = get(fi)?;
    let sigma = cols.get(&Role::Sigma).map(|&i| get(i)).transpose()?;
    let mask = cols.get(&Role::Mask).map(|&i| get(i)).transpose()?;
    let (wave_unit, flux_unit) = (unit(wi), unit(fi));
    let file = file_name(path);
    let as_mask = |v: Vec<f64>| -> Vec<u32> {
        v.into_iter()
            .map(|x| if x.is_finite() { x as i64 as u32 } else { 0 })
            .collect()
    };
    let build = |wave: Vec<f64>,
                 flux: Vec<f64>,
                 sigma: Option<Vec<f64>>,
                 mask: Option<Vec<f64>>,
                 key: String,
                 row: Option<usize>|
     -> Result<Spectrum> {
        let raw = RawArrays {
            wave,
            wave_unit: wave_unit.clone(),
            log10: false,
            air,
            flux,
            flux_unit: flux_unit.clone(),
            err: sigma.map(Uncertainty::Sigma),
            mask: mask.map(as_mask),
            model: None,
        };
        let label = "TABLE";
        let a = convert(path, label, raw).map_err(|e| match row {
            Some(r) => with_row(e, r),
            None => e,
        })?;
        spectrum(path, label, &keys, &RowMeta::default(), key, a)
    };
    let pick = |v: &Option<Values>, r: usize| -> Option<Vec<f64>> {
        match v {
            Some(Values::Rows(rows)) => rows.get(r).cloned(),
            Some(Values::Scalar(s)) => s.get(r).map(|x| vec![*x]),
            None => None,
        }
    };
    let out = match (wave, flux) {
        (Values::Scalar(w), Values::Scalar(f)) => {
            let flat = |v: Option<Values>| match v {
                Some(Values::Scalar(s)) => Some(s),
                _ => None,
            };
            vec![build(
                w,
                f,
                flat(sigma),
                flat(mask),
                format!("file={file};hdu=TABLE"),
                None,
            )?]
        }
        (Values::Rows(w), Values::Rows(f)) => {
            let mut out = Vec::with_capacity(w.len());
            for (r, (w, f)) in w.into_iter().zip(f).enumerate() {
                out.push(build(
                    w,
                    f,
                    pick(&sigma, r),
                    pick(&mask, r),
                    format!("file={file};hdu=TABLE;row={r}"),
                    Some(r),
                )?);
            }
            out
        }
        _ => {
            return Err(bad(
                "the spectral axis and flux FIELDs mix scalar and array values".into(),
            ));
        }
    };
    if out.is_empty() {
        return Err(bad("the VOTable holds no rows".into()));
    }
    check_all(path, "TABLE", &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fitsio::images::{ImageDescription, ImageType};
    use fitsio::tables::{ColumnDataType, ColumnDescription};

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol * b.abs().max(1e-300)
    }

    #[test]
    fn units_parse_as_written() {
        let fu = parse_unit("10**-17 erg/(s cm2 Angstrom)").unwrap();
        assert_eq!(fu.dims(), (1, -3, -1));
        assert!(close(fu.scale, 1e-10, 1e-12));
        for s in [
            "1e-17 erg/s/cm2/Angstrom",
            "1E-17 erg.s-1.cm-2.Angstrom-1",
            "10^-17 erg cm^-2 s^-1 AA^-1",
            "1e-17 erg/cm**2/s/A",
            "10**(-17) erg / (cm**2 s Angstrom)",
        ] {
            let u = parse_unit(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(u.dims(), (1, -3, -1), "{s}");
            assert!(close(u.scale, 1e-10, 1e-12), "{s}: {}", u.scale);
        }
        // 1 W m-2 nm-1 = 1e9 W m-3 = 1e19 × FLUX_UNIT.
        let w = parse_unit("W m-2 nm-1").unwrap();
        assert!(close(w.scale / FLUX_UNIT_SI, 1e19, 1e-12));
        assert_eq!(parse_unit("mJy").unwrap().dims(), (1, -2, 0));
        assert!(close(parse_unit("mJy").unwrap().scale, 1e-29, 1e-12));
        assert!(close(parse_unit("nm").unwrap().scale, 1e-9, 1e-12));
        assert!(close(parse_unit("micron").unwrap().scale, 1e-6, 1e-12));
        assert!(close(parse_unit("GHz").unwrap().scale, 1e9, 1e-12));
        for s in ["counts", "ADU", "", "erg//s", "cm**", "(cm", "electron/s"] {
            assert_eq!(parse_unit(s), None, "{s}");
        }
    }

    #[test]
    fn spectral_units_and_air() {
        let mut v = vec![400.0, 500.0];
        to_angstrom(&mut v, Some("nm")).unwrap();
        assert_eq!(v, [4000.0, 5000.0]);
        // 1 µm = 10000 Å; 299792458 GHz... a frequency of c / 5000 Å.
        let mut f = vec![C_M_S / 5000e-10 / 1e9];
        to_angstrom(&mut f, Some("GHz")).unwrap();
        assert!(close(f[0], 5000.0, 1e-12));
        // 1 keV ↔ 12.398 419 843 Å (h c / 1 keV).
        let mut e = vec![1.0];
        to_angstrom(&mut e, Some("keV")).unwrap();
        assert!(close(e[0], 12.398_419_843_320_026, 1e-9));
        assert!(to_angstrom(&mut [1.0], Some("erg")).is_ok());
        assert!(to_angstrom(&mut [1.0], Some("s")).is_err());
        assert!(to_angstrom(&mut [1.0], Some("furlong")).is_err());
        // Hα: 6562.80 Å in air is 6564.61 Å in vacuum (NIST; Ciddor 1996).
        assert!((air_to_vacuum_aa(6562.80) - 6564.61).abs() < 0.01);
        // [O III] 5006.84 air, 5008.24 vacuum.
        assert!((air_to_vacuum_aa(5006.84) - 5008.24).abs() < 0.01);
        assert_eq!(air_to_vacuum_aa(1500.0), 1500.0);
    }

    #[test]
    fn flux_per_frequency_becomes_per_wavelength() {
        // 1 Jy at 5000 Å: f_λ = 1e-26 × c / (5e-7 m)² W m-3 = 1.199e-5 W m-3
        // = 1.199e5 × 1e-10 W m-3 (1e-23 erg/s/cm2/Hz × 3e18 Å/s / 5000² Å² = 1.2e-12
        // erg/s/cm2/Å), i.e. 119 917 × 10**-17 erg s-1 cm-2 Å-1.
        let k = flux_factors(Some("Jy"), &[5000.0]).unwrap();
        assert!(close(k[0], 1e-26 * C_M_S / 25e-14 / 1e-10, 1e-12));
        assert!(close(k[0], 119_916.983_2, 1e-9));
        let k = flux_factors(Some("erg/s/cm2/Angstrom"), &[5000.0, 6000.0]).unwrap();
        assert!(close(k[0], 1e17, 1e-12) && close(k[1], 1e17, 1e-12));
        assert!(flux_factors(Some("counts"), &[5000.0]).is_none());
        assert!(flux_factors(None, &[5000.0]).is_none());
    }

    #[test]
    fn angles() {
        assert_eq!(parse_angle("150.5", true), Some(150.5));
        assert!(close(parse_angle("10:00:00", true).unwrap(), 150.0, 1e-12));
        assert!(close(parse_angle("-02:30:00", false).unwrap(), -2.5, 1e-12));
        assert!(close(parse_angle("12h30m00s", true).unwrap(), 187.5, 1e-12));
        assert_eq!(parse_angle("abc", false), None);
    }

    #[test]
    fn name_hash_is_stable_and_positive() {
        let h = name_hash("spec.fits");
        assert_eq!(h, name_hash("spec.fits"));
        assert!(h > 0);
        assert_ne!(h, name_hash("spec2.fits"));
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    /// (a) A table with one row per spectrum and array columns: nm wavelengths, flux in
    /// 1e-16 erg/s/cm2/Angstrom, errors as sigma, a mask, per-row RA/DEC/Z.
    #[test]
    fn reads_a_table_with_array_columns() {
        let dir = tmp();
        let p = dir.path().join("table.fits");
        {
            let mut f = fitsio::FitsFile::create(&p).open().unwrap();
            let arr = |n: &str, t: ColumnDataType| {
                ColumnDescription::new(n)
                    .with_type(t)
                    .that_repeats(4)
                    .create()
                    .unwrap()
            };
            let sc = |n: &str, t: ColumnDataType| {
                ColumnDescription::new(n).with_type(t).create().unwrap()
            };
            use ColumnDataType::*;
            let h = f
                .create_table(
                    "SPECTRA".to_string(),
                    &[
                        arr("WAVE", Double),
                        arr("FLUX", Float),
                        arr("ERROR", Float),
                        arr("MASK", Int),
                        sc("RA", Double),
                        sc("DEC", Double),
                        sc("Z", Double),
                        sc("OBJID", LongLong),
                    ],
                )
                .unwrap();
            h.write_key(&mut f, "TUNIT1", "nm").unwrap();
            h.write_key(&mut f, "TUNIT2", "1e-16 erg/s/cm2/Angstrom")
                .unwrap();
            h.write_col(
                &mut f,
                "WAVE",
                &[400.0f64, 400.1, 400.2, 400.3, 500.0, 500.1, 500.2, 500.3],
            )
            .unwrap();
            h.write_col(&mut f, "FLUX", &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
                .unwrap();
            h.write_col(
                &mut f,
                "ERROR",
                &[0.5f32, 0.0, -1.0, 2.0, 1.0, 1.0, 1.0, 1.0],
            )
            .unwrap();
            h.write_col(&mut f, "MASK", &[0i32, 1, 2, 3, 0, 0, 0, -1])
                .unwrap();
            h.write_col(&mut f, "RA", &[10.0f64, 20.0]).unwrap();
            h.write_col(&mut f, "DEC", &[-5.0f64, 5.0]).unwrap();
            h.write_col(&mut f, "Z", &[0.1f64, 0.2]).unwrap();
            h.write_col(&mut f, "OBJID", &[77i64, 78]).unwrap();
        }
        assert_eq!(
            crate::readers::detect(&p).unwrap(),
            crate::readers::Kind::Generic
        );
        let s = read(&p).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].wavelength_aa, [4000.0, 4001.0, 4002.0, 4003.0]);
        // 1e-16 → 1e-17 units: × 10; ivar = 1/(10 σ)², 0 where σ <= 0.
        assert_eq!(s[0].flux, [10.0, 20.0, 30.0, 40.0]);
        assert_eq!(s[0].ivar, [0.04, 0.0, 0.0, 0.0025]);
        assert_eq!(s[0].mask, [0, 1, 2, 3]);
        assert_eq!(s[1].mask[3], u32::MAX);
        assert_eq!((s[0].ra_deg, s[0].dec_deg), (10.0, -5.0));
        assert_eq!((s[1].ra_deg, s[1].dec_deg), (20.0, 5.0));
        assert_eq!(s[1].redshift, Some(0.2));
        assert_eq!((s[0].specid, s[1].specid), (77, 78));
        assert_eq!(s[1].source_key, "file=table.fits;hdu=SPECTRA;row=1");
        assert_eq!(s[0].file, "table.fits");
    }

    /// (a) One row per pixel, LOGLAM, IVAR, descending order reversed, position from the
    /// primary header in sexagesimal, no id (the file-name hash).
    #[test]
    fn reads_a_table_with_one_row_per_pixel() {
        let dir = tmp();
        let p = dir.path().join("pixels.fits");
        {
            let mut f = fitsio::FitsFile::create(&p).open().unwrap();
            let ph = f.primary_hdu().unwrap();
            ph.write_key(&mut f, "RA", "10:00:00.0").unwrap();
            ph.write_key(&mut f, "DEC", "-02:30:00").unwrap();
            ph.write_key(&mut f, "MJD-OBS", 51544.5).unwrap();
            ph.write_key(&mut f, "EXPTIME", 900.0).unwrap();
            ph.write_key(&mut f, "TELESCOP", "Hale").unwrap();
            let c = |n: &str, t| ColumnDescription::new(n).with_type(t).create().unwrap();
            let h = f
                .create_table(
                    "".to_string(),
                    &[
                        c("loglam", ColumnDataType::Double),
                        c("flux", ColumnDataType::Float),
                        c("ivar", ColumnDataType::Float),
                        c("model", ColumnDataType::Float),
                    ],
                )
                .unwrap();
            h.write_col(&mut f, "loglam", &[3.7f64, 3.6]).unwrap();
            h.write_col(&mut f, "flux", &[f32::NAN, 2.0]).unwrap();
            h.write_col(&mut f, "ivar", &[1.0f32, 4.0]).unwrap();
            h.write_col(&mut f, "model", &[1.5f32, 2.5]).unwrap();
        }
        let s = read(&p).unwrap();
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert!(close(s.wavelength_aa[0], 10f64.powf(3.6), 1e-12));
        assert!(close(s.wavelength_aa[1], 10f64.powf(3.7), 1e-12));
        // No flux unit: values kept; reversed; NaN flux gets ivar 0.
        assert_eq!(s.flux[0], 2.0);
        assert!(s.flux[1].is_nan());
        assert_eq!(s.ivar, [4.0, 0.0]);
        assert_eq!(s.model.as_deref(), Some(&[2.5f32, 1.5][..]));
        assert!(close(s.ra_deg, 150.0, 1e-12) && close(s.dec_deg, -2.5, 1e-12));
        assert_eq!(s.specid, name_hash("pixels.fits"));
        assert_eq!(s.dateobs.as_deref(), Some("2000-01-01T12:00:00.000"));
        assert_eq!(s.exptime_s, Some(900.0));
        assert_eq!(s.telescope.as_deref(), Some("Hale"));
        assert_eq!(s.source_key, "file=pixels.fits;hdu=1");
    }

    fn write_image(p: &Path, n: usize, keys: &[(&str, f64)], skeys: &[(&str, &str)]) {
        let mut f = fitsio::FitsFile::create(p)
            .with_custom_primary(&ImageDescription {
                data_type: ImageType::Float,
                dimensions: &[n],
            })
            .open()
            .unwrap();
        let h = f.primary_hdu().unwrap();
        let flux: Vec<f32> = (0..n).map(|i| i as f32).collect();
        h.write_image(&mut f, &flux).unwrap();
        for (k, v) in keys {
            h.write_key(&mut f, k, *v).unwrap();
        }
        for (k, v) in skeys {
            h.write_key(&mut f, k, *v).unwrap();
        }
    }

    /// (b) A 1-D image with a linear CDELT1 WCS (CRPIX1 = 2), an ERR companion HDU.
    #[test]
    fn reads_a_linear_image() {
        let dir = tmp();
        let p = dir.path().join("linear.fits");
        write_image(
            &p,
            5,
            &[
                ("CRVAL1", 4000.0),
                ("CDELT1", 2.0),
                ("CRPIX1", 2.0),
                ("RA", 12.5),
                ("DEC", 45.0),
                ("Z", 0.05),
                ("SPECID", 123.0),
            ],
            &[
                ("CTYPE1", "WAVE"),
                ("CUNIT1", "Angstrom"),
                ("BUNIT", "erg/s/cm2/Angstrom"),
                ("DATE-OBS", "2020-01-02T03:04:05"),
            ],
        );
        {
            let mut f = fitsio::FitsFile::edit(&p).unwrap();
            let h = f
                .create_image(
                    "ERR".to_string(),
                    &ImageDescription {
                        data_type: ImageType::Double,
                        dimensions: &[5],
                    },
                )
                .unwrap();
            h.write_image(&mut f, &[1e-17f64, 2e-17, 0.0, 4e-17, 5e-17])
                .unwrap();
        }
        let s = read(&p).unwrap();
        let s = &s[0];
        // λ = 4000 + (p − 2) × 2 for p = 1..5.
        assert_eq!(s.wavelength_aa, [3998.0, 4000.0, 4002.0, 4004.0, 4006.0]);
        // erg/s/cm2/Angstrom → × 1e17.
        assert!(close(f64::from(s.flux[1]), 1e17, 1e-6));
        assert!(close(f64::from(s.ivar[0]), 1.0, 1e-6));
        assert!(close(f64::from(s.ivar[1]), 0.25, 1e-6));
        assert_eq!(s.ivar[2], 0.0);
        assert_eq!((s.ra_deg, s.dec_deg, s.redshift), (12.5, 45.0, Some(0.05)));
        assert_eq!(s.specid, 123);
        assert_eq!(s.dateobs.as_deref(), Some("2020-01-02T03:04:05"));
        assert_eq!(s.mask, [0; 5]);
    }

    /// (b) A 1-D image with DC-FLAG = 1 (log10 λ), in air (CTYPE1 AWAV).
    #[test]
    fn reads_a_log_image_in_air() {
        let dir = tmp();
        let p = dir.path().join("log.fits");
        write_image(
            &p,
            3,
            &[
                ("CRVAL1", 3.8),
                ("CDELT1", 1e-4),
                ("CRPIX1", 1.0),
                ("DC-FLAG", 1.0),
                ("PLUG_RA", 1.0),
                ("PLUG_DEC", 2.0),
            ],
            &[("CTYPE1", "AWAV")],
        );
        let s = read(&p).unwrap();
        let w = &s[0].wavelength_aa;
        for (i, w) in w.iter().enumerate() {
            let air = 10f64.powf(3.8 + 1e-4 * i as f64);
            assert!(close(*w, air_to_vacuum_aa(air), 1e-12));
            assert!(*w > air + 1.0);
        }
        // Without CUNIT1 or flux unit: Å and values as given; no uncertainty: ivar 0.
        assert_eq!(s[0].flux, [0.0, 1.0, 2.0]);
        assert_eq!(s[0].ivar, [0.0; 3]);
    }

    #[test]
    fn images_of_the_wrong_dimension_and_fits_without_spectra_fail() {
        let dir = tmp();
        let p = dir.path().join("square.fits");
        {
            let mut f = fitsio::FitsFile::create(&p)
                .with_custom_primary(&ImageDescription {
                    data_type: ImageType::Float,
                    dimensions: &[4, 3],
                })
                .open()
                .unwrap();
            let h = f.primary_hdu().unwrap();
            h.write_key(&mut f, "CRVAL1", 4000.0).unwrap();
        }
        let e = read(&p).unwrap_err();
        let Error::BadFile { hdu, reason, .. } = &e else {
            panic!("{e}")
        };
        assert!(hdu.is_some());
        assert!(reason.contains("3 × 4"), "{reason}");
        // An empty primary and an unrelated table.
        let p = dir.path().join("other.fits");
        {
            let mut f = fitsio::FitsFile::create(&p).open().unwrap();
            let c = ColumnDescription::new("A")
                .with_type(ColumnDataType::Int)
                .create()
                .unwrap();
            f.create_table("T".to_string(), &[c]).unwrap();
        }
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("holds no spectrum"), "{e}");
        // A 1-D image without position.
        let p = dir.path().join("nopos.fits");
        write_image(&p, 3, &[("CRVAL1", 4000.0), ("CDELT1", 1.0)], &[]);
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("no position"), "{e}");
        // Non-monotonic wavelengths in a table.
        let p = dir.path().join("zigzag.fits");
        {
            let mut f = fitsio::FitsFile::create(&p).open().unwrap();
            let ph = f.primary_hdu().unwrap();
            ph.write_key(&mut f, "RA", 1.0).unwrap();
            ph.write_key(&mut f, "DEC", 1.0).unwrap();
            let c = |n: &str| {
                ColumnDescription::new(n)
                    .with_type(ColumnDataType::Double)
                    .create()
                    .unwrap()
            };
            let h = f
                .create_table("S".to_string(), &[c("WAVELENGTH"), c("FLUX")])
                .unwrap();
            h.write_col(&mut f, "WAVELENGTH", &[1.0f64, 3.0, 2.0])
                .unwrap();
            h.write_col(&mut f, "FLUX", &[1.0f64, 1.0, 1.0]).unwrap();
        }
        let e = read(&p).unwrap_err().to_string();
        assert!(e.contains("not monotonic"), "{e}");
    }

    const SDM: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<VOTABLE version="1.3" xmlns="http://www.ivoa.net/xml/VOTable/v1.3"
  xmlns:spec="http://www.ivoa.net/xml/SpectrumModel/v1.01">
 <RESOURCE utype="spec:Spectrum">
  <TABLE utype="spec:Spectrum">
   <PARAM name="DataModel" utype="spec:Spectrum.DataModel" datatype="char" arraysize="*" value="Spectrum-1.0"/>
   <GROUP utype="spec:Spectrum.Target">
    <PARAM name="TargetName" utype="spec:Spectrum.Target.Name" datatype="char" arraysize="*" value="NGC 1234"/>
    <PARAM name="TargetPos" utype="spec:Spectrum.Target.Pos" ucd="pos.eq;src" unit="deg" datatype="double" arraysize="2" value="150.125 -2.25"/>
    <PARAM name="Redshift" utype="spec:Spectrum.Target.Redshift" ucd="src.redshift" datatype="double" value="0.0123"/>
   </GROUP>
   <PARAM name="Instrument" utype="spec:Spectrum.DataID.Instrument" datatype="char" arraysize="*" value="FOS"/>
   <PARAM name="Start" utype="spec:Spectrum.Char.TimeAxis.Coverage.Location.Value" datatype="double" unit="d" value="51544.25"/>
   <PARAM name="Exposure" utype="spec:Spectrum.Char.TimeAxis.Coverage.Bounds.Extent" datatype="double" unit="s" value="1200"/>
   <FIELD name="WAVE" utype="spec:Spectrum.Data.SpectralAxis.Value" ucd="em.wl" unit="nm" datatype="double"/>
   <FIELD name="FLUX" utype="spec:Spectrum.Data.FluxAxis.Value" ucd="phot.flux.density;em.wl" unit="W m-2 nm-1" datatype="double"/>
   <FIELD name="ERR" utype="spec:Spectrum.Data.FluxAxis.Accuracy.StatError" ucd="stat.error;phot.flux.density;em.wl" unit="W m-2 nm-1" datatype="double"/>
   <FIELD name="QUAL" utype="spec:Spectrum.Data.FluxAxis.Quality" datatype="int"/>
   <DATA><TABLEDATA>
    <TR><TD>500.0</TD><TD>2e-19</TD><TD>1e-20</TD><TD>0</TD></TR>
    <TR><TD>500.5</TD><TD>3e-19</TD><TD>2e-20</TD><TD>1</TD></TR>
    <TR><TD>501.0</TD><TD>4e-19</TD><TD>0</TD><TD>0</TD></TR>
   </TABLEDATA></DATA>
  </TABLE>
 </RESOURCE>
</VOTABLE>
"#;

    /// (c) An SDM VOTable: utypes, nm and W m-2 nm-1 converted, PARAM metadata.
    #[test]
    fn reads_an_sdm_votable() {
        let dir = tmp();
        let p = dir.path().join("ssa-spectrum.xml");
        std::fs::write(&p, SDM).unwrap();
        assert_eq!(
            crate::readers::detect(&p).unwrap(),
            crate::readers::Kind::Generic
        );
        let s = crate::readers::read(&p, None).unwrap();
        assert_eq!(s.len(), 1);
        let s = &s[0];
        assert_eq!(s.wavelength_aa, [5000.0, 5005.0, 5010.0]);
        // 1 W m-2 nm-1 = 1e19 × 1e-17 erg s-1 cm-2 Å-1.
        assert!(close(f64::from(s.flux[0]), 2.0, 1e-6));
        assert!(close(f64::from(s.flux[2]), 4.0, 1e-6));
        assert!(close(f64::from(s.ivar[0]), 1.0 / (0.1 * 0.1), 1e-5));
        assert_eq!(s.ivar[2], 0.0);
        assert_eq!(s.mask, [0, 1, 0]);
        assert_eq!((s.ra_deg, s.dec_deg), (150.125, -2.25));
        assert_eq!(s.redshift, Some(0.0123));
        assert_eq!(s.instrument.as_deref(), Some("FOS"));
        assert_eq!(s.exptime_s, Some(1200.0));
        assert_eq!(s.dateobs.as_deref(), Some("2000-01-01T06:00:00.000"));
        assert_eq!(s.specid, name_hash("ssa-spectrum.xml"));
    }

    /// (c) UCDs alone, array FIELDs (one spectrum per row), air wavelengths.
    #[test]
    fn reads_a_votable_by_ucd_with_array_fields() {
        let dir = tmp();
        let p = dir.path().join("arrays.vot");
        std::fs::write(
            &p,
            r#"<?xml version="1.0"?>
<VOTABLE version="1.4"><RESOURCE><TABLE>
 <PARAM name="RA" ucd="pos.eq.ra" datatype="double" value="30.0"/>
 <PARAM name="DEC" ucd="pos.eq.dec" datatype="double" value="40.0"/>
 <FIELD name="lam" ucd="em.wl;obs.atmos" unit="Angstrom" datatype="double" arraysize="*"/>
 <FIELD name="f" ucd="phot.flux.density;em.wl" datatype="float" arraysize="*"/>
 <DATA><TABLEDATA>
  <TR><TD>6562.80 6563.80</TD><TD>1 2</TD></TR>
  <TR><TD>5006.84 5007.84</TD><TD>3 4</TD></TR>
 </TABLEDATA></DATA>
</TABLE></RESOURCE></VOTABLE>"#,
        )
        .unwrap();
        let s = read(&p).unwrap();
        assert_eq!(s.len(), 2);
        assert!((s[0].wavelength_aa[0] - 6564.61).abs() < 0.01);
        assert!((s[1].wavelength_aa[0] - 5008.24).abs() < 0.01);
        assert_eq!(s[1].flux, [3.0, 4.0]);
        assert_eq!((s[1].ra_deg, s[1].dec_deg), (30.0, 40.0));
        assert_eq!(s[1].source_key, "file=arrays.vot;hdu=TABLE;row=1");
    }

    #[test]
    fn an_ssa_query_result_is_not_a_spectrum() {
        let p = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/votable/dal_tests_data_ssa_result.xml"
        ));
        if !p.exists() {
            eprintln!("skipped: {} is absent", p.display());
            return;
        }
        let e = read(p).unwrap_err().to_string();
        assert!(e.contains("not an SDM spectrum"), "{e}");
    }
}
