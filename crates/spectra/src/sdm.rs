//! One spectrum as a file, following the IVOA Spectral Data Model (SDM 1.1): a VOTable
//! whose columns carry SDM utypes, or a FITS binary table with one row per pixel
//! (WAVELENGTH, FLUX, ERROR, IVAR, MASK, MODEL). Both are what SSA and DataLink hand out
//! and what `meridian spectra get` and `stack` write.

use std::fmt::Write as _;
use std::path::Path;

use crate::{Error, Result};

/// VOUnit of the flux columns.
pub const FLUX_VOUNIT: &str = "1e-17erg.s**-1.cm**-2.Angstrom**-1";
/// VOUnit of wavelengths.
pub const WAVE_VOUNIT: &str = "Angstrom";

/// What a spectrum file says about its spectrum besides the arrays.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// Title (`DataID.Title`).
    pub title: String,
    /// Publisher's identifier of the spectrum.
    pub did: String,
    /// Data release / collection.
    pub collection: String,
    /// Target name (here the specid).
    pub target: String,
    /// Position, degrees, when known.
    pub ra_deg: Option<f64>,
    /// Position, degrees, when known.
    pub dec_deg: Option<f64>,
    /// Redshift, when known.
    pub redshift: Option<f64>,
    /// Spectral class.
    pub spectype: Option<String>,
    /// Instrument.
    pub instrument: Option<String>,
    /// Start of the observation, ISO 8601.
    pub dateobs: Option<String>,
    /// Spectra combined, for stacks.
    pub n_combined: Option<u64>,
}

/// The arrays written (borrowed).
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    /// Wavelengths, Å.
    pub wavelength_aa: &'a [f64],
    /// Flux.
    pub flux: &'a [f32],
    /// Inverse variance.
    pub ivar: &'a [f32],
    /// Mask (0 = good), if any.
    pub mask: Option<&'a [u32]>,
    /// Model, if any.
    pub model: Option<&'a [f32]>,
    /// Spectra contributing to each pixel (stacks), if any.
    pub n: Option<&'a [u32]>,
}

impl<'a> Columns<'a> {
    /// The columns of a stored spectrum.
    pub fn of(a: crate::store::Arrays<'a>) -> Self {
        Self {
            wavelength_aa: a.wavelength_aa,
            flux: a.flux,
            ivar: a.ivar,
            mask: Some(a.mask),
            model: a.model,
            n: None,
        }
    }

    /// The columns of a stack, with the spectra combined at each pixel.
    pub fn of_stack(s: &'a crate::stack::Stacked) -> Self {
        Self {
            wavelength_aa: &s.wavelength_aa,
            flux: &s.stack.flux,
            ivar: &s.stack.ivar,
            mask: None,
            model: None,
            n: Some(&s.stack.n),
        }
    }
}

impl Meta {
    /// What a stack file says of itself.
    pub fn of_stack(
        s: &crate::stack::Stacked,
        spec: &crate::stack::StackSpec,
        did: String,
    ) -> Self {
        Self {
            title: format!(
                "{} stack of {} spectra{}",
                spec.method,
                s.used,
                if spec.rest_frame { " (rest frame)" } else { "" }
            ),
            did,
            collection: "stack".into(),
            target: "stack".into(),
            n_combined: Some(s.used),
            ..Default::default()
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Shortest round-trip text of `x` (exponent notation for very small and large numbers, so
/// that 1e-300 takes 6 characters, not 300).
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:?}")
    } else {
        "NaN".into()
    }
}

/// The same for a float32 value (its own shortest text, not that of its f64 widening).
fn num32(x: f32) -> String {
    if x.is_finite() {
        format!("{x:?}")
    } else {
        "NaN".into()
    }
}

/// σ of a pixel from its inverse variance (NaN where it carries no information).
fn sigma(ivar: f32) -> f32 {
    if ivar > 0.0 {
        1.0 / ivar.sqrt()
    } else {
        f32::NAN
    }
}

/// The spectrum as an SDM VOTable (TABLEDATA).
pub fn votable(meta: &Meta, c: &Columns) -> String {
    let mut params = String::new();
    let mut param = |name: &str, utype: &str, ucd: &str, datatype: &str, value: &str| {
        let arraysize = if datatype == "char" {
            " arraysize=\"*\""
        } else {
            ""
        };
        let _ = writeln!(
            params,
            "<PARAM name=\"{name}\" utype=\"spec:Spectrum.{utype}\" ucd=\"{ucd}\" \
             datatype=\"{datatype}\"{arraysize} value=\"{}\"/>",
            esc(value)
        );
    };
    param(
        "DataModel",
        "DataModel",
        "meta.code",
        "char",
        "Spectrum-1.1",
    );
    param("Title", "DataID.Title", "meta.title", "char", &meta.title);
    param(
        "CreatorDID",
        "DataID.CreatorDID",
        "meta.id",
        "char",
        &meta.did,
    );
    param(
        "Collection",
        "DataID.Collection",
        "meta.id",
        "char",
        &meta.collection,
    );
    param(
        "TargetName",
        "Target.Name",
        "meta.id;src",
        "char",
        &meta.target,
    );
    if let (Some(ra), Some(dec)) = (meta.ra_deg, meta.dec_deg) {
        param(
            "RA",
            "Char.SpatialAxis.Coverage.Location.Value",
            "pos.eq.ra",
            "double",
            &num(ra),
        );
        param(
            "DEC",
            "Char.SpatialAxis.Coverage.Location.Value",
            "pos.eq.dec",
            "double",
            &num(dec),
        );
    }
    if let Some(z) = meta.redshift {
        param(
            "Redshift",
            "Target.Redshift",
            "src.redshift",
            "double",
            &num(z),
        );
    }
    if let Some(t) = &meta.spectype {
        param("SpecType", "Target.Class", "src.class", "char", t);
    }
    if let Some(i) = &meta.instrument {
        param(
            "Instrument",
            "DataID.Instrument",
            "meta.id;instr",
            "char",
            i,
        );
    }
    if let Some(d) = &meta.dateobs {
        param("DateObs", "DataID.Date", "time.start", "char", d);
    }
    if let Some(n) = meta.n_combined {
        param(
            "NCombined",
            "Derived.NCombined",
            "meta.number",
            "long",
            &n.to_string(),
        );
    }
    let mut fields = String::from(
        "<FIELD name=\"wavelength\" datatype=\"double\" unit=\"Angstrom\" ucd=\"em.wl\" \
         utype=\"spec:Spectrum.Data.SpectralAxis.Value\"/>\n\
         <FIELD name=\"flux\" datatype=\"float\" unit=\"1e-17erg.s**-1.cm**-2.Angstrom**-1\" \
         ucd=\"phot.flux.density;em.wl\" utype=\"spec:Spectrum.Data.FluxAxis.Value\"/>\n\
         <FIELD name=\"flux_error\" datatype=\"float\" unit=\"1e-17erg.s**-1.cm**-2.Angstrom**-1\" \
         ucd=\"stat.error;phot.flux.density;em.wl\" \
         utype=\"spec:Spectrum.Data.FluxAxis.Accuracy.StatError\"/>\n\
         <FIELD name=\"ivar\" datatype=\"float\" unit=\"1e34erg**-2.s**2.cm**4.Angstrom**2\" \
         ucd=\"stat.weight;phot.flux.density\"/>\n",
    );
    if c.mask.is_some() {
        fields.push_str(
            "<FIELD name=\"mask\" datatype=\"long\" ucd=\"meta.code.qual\" \
             utype=\"spec:Spectrum.Data.FluxAxis.Quality\"/>\n",
        );
    }
    if c.model.is_some() {
        fields.push_str(
            "<FIELD name=\"model\" datatype=\"float\" unit=\"1e-17erg.s**-1.cm**-2.Angstrom**-1\" \
             ucd=\"phot.flux.density;em.wl;meta.modelled\"/>\n",
        );
    }
    if c.n.is_some() {
        fields.push_str("<FIELD name=\"n\" datatype=\"int\" ucd=\"meta.number\"/>\n");
    }
    let mut rows = String::with_capacity(c.flux.len() * 80);
    for i in 0..c.wavelength_aa.len() {
        let _ = write!(
            rows,
            "<TR><TD>{}</TD><TD>{}</TD><TD>{}</TD><TD>{}</TD>",
            num(c.wavelength_aa[i]),
            num32(c.flux[i]),
            num32(sigma(c.ivar[i])),
            num32(c.ivar[i])
        );
        if let Some(m) = c.mask {
            let _ = write!(rows, "<TD>{}</TD>", m[i]);
        }
        if let Some(m) = c.model {
            let _ = write!(rows, "<TD>{}</TD>", num32(m[i]));
        }
        if let Some(n) = c.n {
            let _ = write!(rows, "<TD>{}</TD>", n[i]);
        }
        rows.push_str("</TR>\n");
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <VOTABLE version=\"1.4\" xmlns=\"http://www.ivoa.net/xml/VOTable/v1.3\">\n\
         <RESOURCE type=\"results\">\n\
         <INFO name=\"QUERY_STATUS\" value=\"OK\"/>\n\
         <TABLE name=\"spectrum\" utype=\"spec:Spectrum\">\n{params}{fields}\
         <DATA><TABLEDATA>\n{rows}</TABLEDATA></DATA>\n</TABLE>\n</RESOURCE>\n</VOTABLE>\n"
    )
}

fn fits_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: cannot write FITS: {e}", path.display()))
}

/// Writes the spectrum to `path` as FITS: an empty primary HDU and a binary table
/// `SPECTRUM`, one row per pixel. Written to a temporary name and renamed.
pub fn write_fits(path: &Path, meta: &Meta, c: &Columns) -> Result<()> {
    use fitsio::tables::{ColumnDataType, ColumnDescription};
    let tmp = path.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| -> std::result::Result<(), fitsio::errors::Error> {
        let mut f = fitsio::FitsFile::create(&tmp).open()?;
        let mut cols = vec![
            ColumnDescription::new("WAVELENGTH")
                .with_type(ColumnDataType::Double)
                .create()?,
            ColumnDescription::new("FLUX")
                .with_type(ColumnDataType::Float)
                .create()?,
            ColumnDescription::new("ERROR")
                .with_type(ColumnDataType::Float)
                .create()?,
            ColumnDescription::new("IVAR")
                .with_type(ColumnDataType::Float)
                .create()?,
        ];
        if c.mask.is_some() {
            cols.push(
                ColumnDescription::new("MASK")
                    .with_type(ColumnDataType::Long)
                    .create()?,
            );
        }
        if c.model.is_some() {
            cols.push(
                ColumnDescription::new("MODEL")
                    .with_type(ColumnDataType::Float)
                    .create()?,
            );
        }
        if c.n.is_some() {
            cols.push(
                ColumnDescription::new("N")
                    .with_type(ColumnDataType::Int)
                    .create()?,
            );
        }
        let hdu = f.create_table("SPECTRUM", &cols)?;
        hdu.write_col(&mut f, "WAVELENGTH", c.wavelength_aa)?;
        hdu.write_col(&mut f, "FLUX", c.flux)?;
        let err: Vec<f32> = c.ivar.iter().map(|&v| sigma(v)).collect();
        hdu.write_col(&mut f, "ERROR", &err)?;
        hdu.write_col(&mut f, "IVAR", c.ivar)?;
        if let Some(m) = c.mask {
            let m: Vec<i64> = m.iter().map(|&x| x as i64).collect();
            hdu.write_col(&mut f, "MASK", &m)?;
        }
        if let Some(m) = c.model {
            hdu.write_col(&mut f, "MODEL", m)?;
        }
        if let Some(n) = c.n {
            let n: Vec<i32> = n.iter().map(|&x| x.min(i32::MAX as u32) as i32).collect();
            hdu.write_col(&mut f, "N", &n)?;
        }
        let mut col = 1;
        for unit in [
            WAVE_VOUNIT,
            FLUX_VOUNIT,
            FLUX_VOUNIT,
            "1e34erg**-2.s**2.cm**4.Angstrom**2",
        ] {
            hdu.write_key(&mut f, &format!("TUNIT{col}"), unit)?;
            col += 1;
        }
        if c.mask.is_some() {
            col += 1;
        }
        if c.model.is_some() {
            hdu.write_key(&mut f, &format!("TUNIT{col}"), FLUX_VOUNIT)?;
        }
        hdu.write_key(&mut f, "VOCLASS", "Spectrum-1.1")?;
        hdu.write_key(&mut f, "TITLE", meta.title.as_str())?;
        hdu.write_key(&mut f, "OBJECT", meta.target.as_str())?;
        hdu.write_key(&mut f, "DATASET", meta.collection.as_str())?;
        if !meta.did.is_empty() {
            hdu.write_key(&mut f, "CREATOR_DID", meta.did.as_str())?;
        }
        if let (Some(ra), Some(dec)) = (meta.ra_deg, meta.dec_deg) {
            hdu.write_key(&mut f, "RA", ra)?;
            hdu.write_key(&mut f, "DEC", dec)?;
        }
        if let Some(z) = meta.redshift {
            hdu.write_key(&mut f, "REDSHIFT", z)?;
        }
        if let Some(t) = &meta.spectype {
            hdu.write_key(&mut f, "SPECTYPE", t.as_str())?;
        }
        if let Some(i) = &meta.instrument {
            hdu.write_key(&mut f, "INSTRUME", i.as_str())?;
        }
        if let Some(d) = &meta.dateobs {
            hdu.write_key(&mut f, "DATE-OBS", d.as_str())?;
        }
        if let Some(n) = meta.n_combined {
            hdu.write_key(&mut f, "NCOMBINE", n as i64)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(fits_err(path, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// The spectrum as FITS bytes.
pub fn fits_bytes(meta: &Meta, c: &Columns) -> Result<Vec<u8>> {
    let dir = tempfile_dir()?;
    let path = dir.join("spectrum.fits");
    write_fits(&path, meta, c)?;
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e));
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "meridian-sdm-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}
