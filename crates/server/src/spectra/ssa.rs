//! IVOA Simple Spectral Access 1.1 at `/ssa` (`REQUEST=queryData`: POS, SIZE, BAND, TIME,
//! REDSHIFT, COLLECTION, TARGETNAME, FORMAT, MAXREC; `FORMAT=metadata` describes the
//! parameters), with VOSI `/ssa/capabilities` and `/ssa/availability`, and the spectra
//! themselves at `/spectra/file?ID=...&FORMAT=votable|fits` (SDM VOTable or FITS).
//!
//! TARGETNAME is matched against the target names this service gives (the specid and
//! targetid as text): there is no name resolver here.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use meridian_formats::write::xml_escape;
use meridian_spectra::sdm;
use meridian_spectra::store::{Dataset, Value as Cv, parse_iso};

use crate::AppState;
use crate::auth::Caller;
use crate::error::{Error, Result};
use crate::params::DaliRequest;
use crate::vosi::base_url;

/// Rows when the request gives no MAXREC.
const DEFAULT_MAXREC: usize = 1000;
/// The most rows a request may ask for.
const MAX_MAXREC: usize = 100_000;
/// Diameter searched when POS comes without SIZE, degrees.
const DEFAULT_SIZE_DEG: f64 = 0.1;
/// Aperture given for each spectrum (a fibre), degrees.
const APERTURE_DEG: f64 = 1.5 / 3600.0;

/// The publisher DID of a spectrum.
pub fn publisher_did(authority: &str, data_release: &str, sparcl_id: &str) -> String {
    format!("ivo://{authority}/spectra/{data_release}?{sparcl_id}")
}

/// The spectrum named by `id` among `datasets`: its publisher DID (this service's, naming
/// its dataset) or its bare sparcl_id.
pub fn resolve<'a>(
    datasets: &'a [Arc<Dataset>],
    authority: &str,
    id: &str,
) -> Option<(&'a Arc<Dataset>, u32)> {
    let key = match id.split_once('?') {
        Some((_, key)) => key,
        None => id,
    };
    datasets.iter().find_map(|d| {
        let r = d.row_of(key)?;
        (id == key || id == publisher_did(authority, d.name(), d.sparcl_id(r))).then_some((d, r))
    })
}

fn identity(caller: &Caller) -> Option<&meridian_services::accounts::Identity> {
    match caller {
        Caller::User(id) => Some(id),
        _ => None,
    }
}

fn xml(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body).into_response()
}

/// `/ssa/capabilities`.
pub async fn capabilities(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = base_url(&state, &headers);
    xml(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <vosi:capabilities xmlns:vosi=\"http://www.ivoa.net/xml/VOSICapabilities/v1.0\" \
         xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" \
         xmlns:vs=\"http://www.ivoa.net/xml/VODataService/v1.1\" \
         xmlns:ssa=\"http://www.ivoa.net/xml/SSA/v1.1\">\n\
         <capability standardID=\"ivo://ivoa.net/std/VOSI#capabilities\">\n\
         <interface xsi:type=\"vs:ParamHTTP\"><accessURL use=\"full\">{base}/ssa/capabilities</accessURL></interface>\n\
         </capability>\n\
         <capability standardID=\"ivo://ivoa.net/std/VOSI#availability\">\n\
         <interface xsi:type=\"vs:ParamHTTP\"><accessURL use=\"full\">{base}/ssa/availability</accessURL></interface>\n\
         </capability>\n\
         <capability standardID=\"ivo://ivoa.net/std/SSA\" xsi:type=\"ssa:SimpleSpectralAccess\">\n\
         <interface xsi:type=\"vs:ParamHTTP\" role=\"std\" version=\"1.1\">\
         <accessURL use=\"base\">{base}/ssa</accessURL></interface>\n\
         <complianceLevel>query</complianceLevel>\n\
         <dataSource>survey</dataSource>\n<creationType>archival</creationType>\n\
         <supportedFrame>ICRS</supportedFrame>\n\
         <maxSearchRadius>180</maxSearchRadius>\n<maxRecords>{MAX_MAXREC}</maxRecords>\n\
         <defaultMaxRecords>{DEFAULT_MAXREC}</defaultMaxRecords>\n\
         <maxAperture>{APERTURE_DEG}</maxAperture>\n\
         <testQuery><queryDataCmd>REQUEST=queryData&amp;FORMAT=metadata</queryDataCmd></testQuery>\n\
         </capability>\n</vosi:capabilities>\n"
    ))
}

/// `/ssa/availability`.
pub async fn availability(State(state): State<AppState>) -> Response {
    let n: usize = state
        .spectra
        .library
        .datasets()
        .iter()
        .map(|d| d.len())
        .sum();
    xml(format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <vosi:availability xmlns:vosi=\"http://www.ivoa.net/xml/VOSIAvailability/v1.0\">\n\
         <vosi:available>true</vosi:available>\n\
         <vosi:note>Meridian SSA service: {n} public spectra</vosi:note>\n\
         </vosi:availability>\n"
    ))
}

/// (name, datatype, arraysize, unit, ucd, utype) of the response's columns.
const COLUMNS: [(&str, &str, &str, &str, &str, &str); 24] = [
    (
        "accref",
        "char",
        "*",
        "",
        "meta.ref.url",
        "ssa:Access.Reference",
    ),
    (
        "mime",
        "char",
        "*",
        "",
        "meta.code.mime",
        "ssa:Access.Format",
    ),
    (
        "accsize",
        "long",
        "",
        "byte",
        "phys.size;meta.file",
        "ssa:Access.Size",
    ),
    (
        "ssa_dstitle",
        "char",
        "*",
        "",
        "meta.title;meta.dataset",
        "ssa:DataID.Title",
    ),
    (
        "ssa_collection",
        "char",
        "*",
        "",
        "meta.id",
        "ssa:DataID.Collection",
    ),
    (
        "ssa_creatorDID",
        "char",
        "*",
        "",
        "meta.id",
        "ssa:DataID.CreatorDID",
    ),
    (
        "ssa_pubDID",
        "char",
        "*",
        "",
        "meta.ref.ivoid",
        "ssa:Curation.PublisherDID",
    ),
    (
        "ssa_dateObs",
        "char",
        "*",
        "",
        "time.start;obs",
        "ssa:DataID.Date",
    ),
    (
        "ssa_instrument",
        "char",
        "*",
        "",
        "meta.id;instr",
        "ssa:DataID.Instrument",
    ),
    (
        "ssa_publisher",
        "char",
        "*",
        "",
        "meta.curation",
        "ssa:Curation.Publisher",
    ),
    (
        "ssa_model",
        "char",
        "*",
        "",
        "meta.id",
        "ssa:Dataset.DataModel",
    ),
    (
        "ssa_dstype",
        "char",
        "*",
        "",
        "meta.code.class",
        "ssa:Dataset.Type",
    ),
    (
        "ssa_length",
        "long",
        "",
        "",
        "meta.number",
        "ssa:Dataset.Length",
    ),
    (
        "ssa_targname",
        "char",
        "*",
        "",
        "meta.id;src",
        "ssa:Target.Name",
    ),
    (
        "ssa_targclass",
        "char",
        "*",
        "",
        "src.class",
        "ssa:Target.Class",
    ),
    (
        "ssa_redshift",
        "double",
        "",
        "",
        "src.redshift",
        "ssa:Target.Redshift",
    ),
    (
        "ssa_targetpos",
        "double",
        "2",
        "deg",
        "pos.eq",
        "ssa:Target.Pos",
    ),
    (
        "ssa_location",
        "double",
        "2",
        "deg",
        "pos.eq;meta.main",
        "ssa:Char.SpatialAxis.Coverage.Location.Value",
    ),
    (
        "ssa_aperture",
        "double",
        "",
        "deg",
        "instr.fov",
        "ssa:Char.SpatialAxis.Coverage.Bounds.Extent",
    ),
    (
        "ssa_specmid",
        "double",
        "",
        "m",
        "em.wl;instr.bandpass",
        "ssa:Char.SpectralAxis.Coverage.Location.Value",
    ),
    (
        "ssa_specext",
        "double",
        "",
        "m",
        "em.wl;instr.bandwidth",
        "ssa:Char.SpectralAxis.Coverage.Bounds.Extent",
    ),
    (
        "ssa_specstart",
        "double",
        "",
        "m",
        "em.wl;stat.min",
        "ssa:Char.SpectralAxis.Coverage.Bounds.Start",
    ),
    (
        "ssa_specend",
        "double",
        "",
        "m",
        "em.wl;stat.max",
        "ssa:Char.SpectralAxis.Coverage.Bounds.Stop",
    ),
    (
        "ssa_timeext",
        "double",
        "",
        "s",
        "time.duration;obs.exposure",
        "ssa:Char.TimeAxis.Coverage.Bounds.Extent",
    ),
];

/// A parsed `lo/hi` range; either end may be open.
fn range(name: &str, v: &str, parse: &dyn Fn(&str) -> Option<f64>) -> Result<(f64, f64)> {
    let bad = || {
        Error::Usage(format!(
            "{name}: '{v}' is not a value or a range lo/hi (either end may be left open)"
        ))
    };
    let v = v.trim();
    let (lo, hi) = match v.split_once('/') {
        Some((a, b)) => (a.trim(), b.trim()),
        None => (v, v),
    };
    let lo = if lo.is_empty() {
        f64::NEG_INFINITY
    } else {
        parse(lo).ok_or_else(bad)?
    };
    let hi = if hi.is_empty() {
        f64::INFINITY
    } else {
        parse(hi).ok_or_else(bad)?
    };
    if lo > hi {
        return Err(Error::Usage(format!(
            "{name}: '{v}' has its low end above its high end"
        )));
    }
    Ok((lo, hi))
}

fn number(s: &str) -> Option<f64> {
    s.parse::<f64>().ok().filter(|x| x.is_finite())
}

struct Query {
    pos: Option<(f64, f64, f64)>, // ra, dec, radius (deg)
    band_m: Option<(f64, f64)>,
    time_s: Option<(f64, f64)>,
    redshift: Option<(f64, f64)>,
    collections: Option<Vec<String>>,
    target: Option<String>,
    fits: bool,
    maxrec: usize,
}

fn parse_query(req: &DaliRequest) -> Result<Query> {
    let p = &req.params;
    let pos = match p.get("POS") {
        None => None,
        Some(v) => {
            let mut it = v.split(';');
            let coords = it.next().unwrap_or("");
            if let Some(frame) = it.next()
                && !frame.trim().eq_ignore_ascii_case("icrs")
            {
                return Err(Error::Usage(format!(
                    "POS: frame '{frame}' is not supported; give ICRS degrees"
                )));
            }
            let xs: Vec<f64> = coords.split(',').filter_map(|s| number(s.trim())).collect();
            if xs.len() != 2 || !(-90.0..=90.0).contains(&xs[1]) {
                return Err(Error::Usage(format!(
                    "POS: '{v}' is not 'ra,dec' in degrees with dec in [-90, 90]"
                )));
            }
            let size = match p.get("SIZE") {
                Some(s) => number(s.trim())
                    .filter(|s| *s > 0.0 && *s <= 360.0)
                    .ok_or_else(|| {
                        Error::Usage(format!("SIZE: '{s}' is not a diameter in (0, 360] degrees"))
                    })?,
                None => DEFAULT_SIZE_DEG,
            };
            Some((xs[0].rem_euclid(360.0), xs[1], size / 2.0))
        }
    };
    let band_m = p
        .get("BAND")
        .map(|v| range("BAND", v, &number))
        .transpose()?;
    let time_s = p
        .get("TIME")
        .map(|v| range("TIME", v, &|s| parse_iso(s).map(|t| t as f64)))
        .transpose()?;
    let redshift = p
        .get("REDSHIFT")
        .map(|v| range("REDSHIFT", v, &number))
        .transpose()?;
    let fits = match p.get("FORMAT").map(|f| f.trim().to_ascii_lowercase()) {
        None => false,
        Some(f) => match f.as_str() {
            ""
            | "all"
            | "compliant"
            | "native"
            | "votable"
            | "application/x-votable+xml"
            | "metadata" => false,
            "fits" | "application/fits" | "image/fits" => true,
            other => {
                return Err(Error::Usage(format!(
                    "FORMAT: '{other}' is not offered; use votable, fits, all or metadata"
                )));
            }
        },
    };
    let maxrec = match p.get("MAXREC") {
        None => DEFAULT_MAXREC,
        Some(m) => m
            .trim()
            .parse::<usize>()
            .map_err(|_| Error::Usage(format!("MAXREC: '{m}' is not a whole number")))?
            .min(MAX_MAXREC),
    };
    Ok(Query {
        pos,
        band_m,
        time_s,
        redshift,
        collections: p
            .get("COLLECTION")
            .map(|c| c.split(',').map(|s| s.trim().to_string()).collect()),
        target: p.get("TARGETNAME").map(|t| t.trim().to_string()),
        fits,
        maxrec,
    })
}

/// Core field `name` of row `r` as a number.
pub(crate) fn float(d: &Dataset, name: &str, r: u32) -> Option<f64> {
    match d.value(name, r)? {
        Cv::Float(x) => Some(x),
        Cv::Int(i) => Some(i as f64),
        _ => None,
    }
}

/// Core field `name` of row `r` as text.
pub(crate) fn text<'a>(d: &'a Dataset, name: &str, r: u32) -> Option<&'a str> {
    match d.value(name, r)? {
        Cv::Str(s) => Some(s),
        _ => None,
    }
}

fn matches(q: &Query, d: &Dataset, r: u32) -> bool {
    if let Some((ra0, dec0, radius)) = q.pos {
        let (Some(ra), Some(dec)) = (float(d, "ra", r), float(d, "dec", r)) else {
            return false;
        };
        let (a, b) = (dec0.to_radians(), dec.to_radians());
        let dra = (ra - ra0).to_radians();
        let h = ((b - a) / 2.0).sin().powi(2) + a.cos() * b.cos() * (dra / 2.0).sin().powi(2);
        if 2.0 * h.sqrt().min(1.0).asin() > radius.to_radians() {
            return false;
        }
    }
    if let Some((lo, hi)) = q.band_m {
        let (Some(w0), Some(w1)) = (float(d, "wavemin", r), float(d, "wavemax", r)) else {
            return false;
        };
        if w1 * 1e-10 < lo || w0 * 1e-10 > hi {
            return false;
        }
    }
    if let Some((lo, hi)) = q.time_s {
        let Some(t0) = text(d, "dateobs", r).and_then(parse_iso) else {
            return false;
        };
        let t1 = t0 as f64 + float(d, "exptime", r).unwrap_or(0.0);
        if t1 < lo || (t0 as f64) > hi {
            return false;
        }
    }
    if let Some((lo, hi)) = q.redshift
        && !float(d, "redshift", r).is_some_and(|z| z >= lo && z <= hi)
    {
        return false;
    }
    if let Some(t) = &q.target {
        let id = d.specid(r).to_string();
        let tid = d.value("targetid", r).and_then(|v| match v {
            Cv::Int(i) => Some(i.to_string()),
            _ => None,
        });
        if *t != id && tid.as_deref() != Some(t.as_str()) {
            return false;
        }
    }
    true
}

/// `/ssa` (`REQUEST=queryData`).
pub async fn query(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    req: DaliRequest,
) -> Result<Response> {
    if let Some(r) = req.params.get("REQUEST")
        && !r.trim().eq_ignore_ascii_case("queryData")
    {
        return Err(Error::Usage(format!(
            "REQUEST: '{r}' is not supported; SSA 1.1 answers queryData (capabilities are at \
             /ssa/capabilities)"
        )));
    }
    let metadata_only = req
        .params
        .get("FORMAT")
        .is_some_and(|f| f.trim().eq_ignore_ascii_case("metadata"));
    let q = parse_query(&req)?;
    let base = base_url(&state, &headers);
    let mut datasets = super::readable(&state, identity(&caller))?;
    if let Some(c) = &q.collections {
        datasets.retain(|d| c.iter().any(|n| n == d.name()));
    }
    let authority = state.spectra.authority.clone();
    let (rows, overflow) = tokio::task::spawn_blocking(move || {
        let mut rows = String::new();
        let mut n = 0usize;
        let mut overflow = false;
        if !metadata_only {
            'outer: for d in &datasets {
                for r in 0..d.len() as u32 {
                    if !matches(&q, d, r) {
                        continue;
                    }
                    if n == q.maxrec {
                        overflow = true;
                        break 'outer;
                    }
                    n += 1;
                    row(&mut rows, d, r, &base, &authority, q.fits);
                }
            }
        }
        (rows, overflow)
    })
    .await
    .map_err(|e| Error::Internal(format!("SSA query task failed: {e}")))?;
    let mut fields = String::new();
    for (name, datatype, arraysize, unit, ucd, utype) in COLUMNS {
        let _ = write!(fields, "<FIELD name=\"{name}\" datatype=\"{datatype}\"");
        if !arraysize.is_empty() {
            let _ = write!(fields, " arraysize=\"{arraysize}\"");
        }
        if !unit.is_empty() {
            let _ = write!(fields, " unit=\"{unit}\"");
        }
        let _ = writeln!(fields, " ucd=\"{ucd}\" utype=\"{utype}\"/>");
    }
    let params_doc = if metadata_only {
        "<PARAM name=\"INPUT:POS\" datatype=\"char\" arraysize=\"*\" value=\"\"><DESCRIPTION>ra,dec (ICRS degrees)</DESCRIPTION></PARAM>\n\
         <PARAM name=\"INPUT:SIZE\" datatype=\"double\" unit=\"deg\" value=\"0.1\"><DESCRIPTION>Diameter of the search</DESCRIPTION></PARAM>\n\
         <PARAM name=\"INPUT:BAND\" datatype=\"char\" arraysize=\"*\" unit=\"m\" value=\"\"><DESCRIPTION>Wavelength range lo/hi, metres</DESCRIPTION></PARAM>\n\
         <PARAM name=\"INPUT:TIME\" datatype=\"char\" arraysize=\"*\" value=\"\"><DESCRIPTION>Time range start/end, ISO 8601</DESCRIPTION></PARAM>\n\
         <PARAM name=\"INPUT:REDSHIFT\" datatype=\"char\" arraysize=\"*\" value=\"\"><DESCRIPTION>Redshift range lo/hi</DESCRIPTION></PARAM>\n\
         <PARAM name=\"INPUT:COLLECTION\" datatype=\"char\" arraysize=\"*\" value=\"\"><DESCRIPTION>Data releases, comma-separated</DESCRIPTION></PARAM>\n\
         <PARAM name=\"INPUT:TARGETNAME\" datatype=\"char\" arraysize=\"*\" value=\"\"><DESCRIPTION>Target (specid or targetid)</DESCRIPTION></PARAM>\n\
         <PARAM name=\"INPUT:FORMAT\" datatype=\"char\" arraysize=\"*\" value=\"all\"><DESCRIPTION>votable, fits, all or metadata</DESCRIPTION></PARAM>\n\
         <PARAM name=\"INPUT:MAXREC\" datatype=\"int\" value=\"1000\"><DESCRIPTION>Most rows returned</DESCRIPTION></PARAM>\n"
    } else {
        ""
    };
    let status = if overflow {
        "<INFO name=\"QUERY_STATUS\" value=\"OVERFLOW\"/>"
    } else {
        "<INFO name=\"QUERY_STATUS\" value=\"OK\"/>"
    };
    let doc = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <VOTABLE version=\"1.4\" xmlns=\"http://www.ivoa.net/xml/VOTable/v1.3\">\n\
         <RESOURCE type=\"results\">\n{status}\n\
         <INFO name=\"SERVICE_PROTOCOL\" value=\"1.1\">SSAP</INFO>\n{params_doc}\
         <TABLE>\n{fields}<DATA><TABLEDATA>\n{rows}</TABLEDATA></DATA>\n</TABLE>\n</RESOURCE>\n\
         </VOTABLE>\n"
    );
    Ok(([(header::CONTENT_TYPE, "application/x-votable+xml")], doc).into_response())
}

fn td(out: &mut String, v: Option<String>) {
    match v {
        Some(v) => {
            out.push_str("<TD>");
            out.push_str(&xml_escape(&v));
            out.push_str("</TD>");
        }
        None => out.push_str("<TD/>"),
    }
}

fn row(out: &mut String, d: &Dataset, r: u32, base: &str, authority: &str, fits: bool) {
    let id = d.sparcl_id(r);
    let did = publisher_did(authority, d.name(), id);
    let (fmt, mime) = if fits {
        ("fits", "application/fits")
    } else {
        ("votable", "application/x-votable+xml;content=spectrum")
    };
    let npix = float(d, "npix", r).unwrap_or(0.0);
    let (w0, w1) = (
        float(d, "wavemin", r).unwrap_or(f64::NAN) * 1e-10,
        float(d, "wavemax", r).unwrap_or(f64::NAN) * 1e-10,
    );
    let (ra, dec) = (
        float(d, "ra", r).unwrap_or(f64::NAN),
        float(d, "dec", r).unwrap_or(f64::NAN),
    );
    let specid = d.specid(r);
    let spectype = text(d, "spectype", r).map(str::to_string);
    let f = |x: Option<f64>| x.filter(|x| x.is_finite()).map(|x| format!("{x:?}"));
    out.push_str("<TR>");
    td(
        out,
        Some(format!(
            "{base}/spectra/file?ID={}&FORMAT={fmt}",
            meridian_images::obscore::encode(&did)
        )),
    );
    td(out, Some(mime.into()));
    td(out, Some(format!("{}", (npix as u64) * 60 + 4000)));
    td(
        out,
        Some(format!(
            "{} {} {specid}",
            d.name(),
            spectype.as_deref().unwrap_or("spectrum")
        )),
    );
    td(out, Some(d.name().to_string()));
    td(out, Some(did.clone()));
    td(out, Some(did));
    td(out, text(d, "dateobs", r).map(|s| s.replace('T', " ")));
    td(out, text(d, "instrument", r).map(str::to_string));
    td(out, Some("Meridian".into()));
    td(out, Some("Spectrum-1.1".into()));
    td(out, Some("Spectrum".into()));
    td(out, Some(format!("{}", npix as u64)));
    td(out, Some(specid.to_string()));
    td(out, spectype);
    td(out, f(float(d, "redshift", r)));
    td(out, Some(format!("{ra:?} {dec:?}")));
    td(out, Some(format!("{ra:?} {dec:?}")));
    td(out, Some(format!("{APERTURE_DEG}")));
    td(out, f(Some((w0 + w1) / 2.0)));
    td(out, f(Some(w1 - w0)));
    td(out, f(Some(w0)));
    td(out, f(Some(w1)));
    td(out, f(float(d, "exptime", r)));
    out.push_str("</TR>\n");
}

/// SDM metadata of row `r`.
pub fn meta_of(d: &Dataset, r: u32, did: String) -> sdm::Meta {
    sdm::Meta {
        title: format!(
            "{} {} {}",
            d.name(),
            text(d, "spectype", r).unwrap_or("spectrum"),
            d.specid(r)
        ),
        did,
        collection: d.name().to_string(),
        target: d.specid(r).to_string(),
        ra_deg: float(d, "ra", r),
        dec_deg: float(d, "dec", r),
        redshift: float(d, "redshift", r),
        spectype: text(d, "spectype", r).map(str::to_string),
        instrument: text(d, "instrument", r).map(str::to_string),
        dateobs: text(d, "dateobs", r).map(str::to_string),
        n_combined: None,
    }
}

/// Whether `FORMAT` (`votable` or `fits`, or their media types) asks for FITS; `default`
/// when absent.
pub(crate) fn wants_fits(format: Option<&str>, default: bool) -> Result<bool> {
    match format.map(|f| f.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(f) if matches!(f.as_str(), "votable" | "application/x-votable+xml") => Ok(false),
        Some(f) if matches!(f.as_str(), "fits" | "application/fits") => Ok(true),
        Some(f) => Err(Error::Usage(format!(
            "FORMAT: '{f}' is not offered; use votable or fits"
        ))),
    }
}

/// A spectrum as an Arrow IPC stream (for the portal's plot): columns `wavelength` (Å),
/// `flux`, `ivar`, `mask` and `model` (when there is one); the metadata (title, did,
/// redshift, spectype, ra, dec) in the schema's metadata.
fn arrow_bytes(meta: &sdm::Meta, cols: &sdm::Columns) -> Result<Vec<u8>> {
    use arrow::array::{ArrayRef, Float32Array, Float64Array, UInt32Array};
    use arrow::datatypes::{DataType, Field, Schema};
    let unit = |f: Field, u: &str| f.with_metadata([("unit".to_string(), u.to_string())].into());
    let mut fields = vec![
        unit(
            Field::new("wavelength", DataType::Float64, false),
            "Angstrom",
        ),
        Field::new("flux", DataType::Float32, false),
        Field::new("ivar", DataType::Float32, false),
    ];
    let mut arrays: Vec<ArrayRef> = vec![
        std::sync::Arc::new(Float64Array::from(cols.wavelength_aa.to_vec())),
        std::sync::Arc::new(Float32Array::from(cols.flux.to_vec())),
        std::sync::Arc::new(Float32Array::from(cols.ivar.to_vec())),
    ];
    if let Some(m) = cols.mask {
        fields.push(Field::new("mask", DataType::UInt32, false));
        arrays.push(std::sync::Arc::new(UInt32Array::from(m.to_vec())));
    }
    if let Some(m) = cols.model {
        fields.push(Field::new("model", DataType::Float32, false));
        arrays.push(std::sync::Arc::new(Float32Array::from(m.to_vec())));
    }
    let mut md = std::collections::HashMap::new();
    md.insert("title".to_string(), meta.title.clone());
    md.insert("did".to_string(), meta.did.clone());
    md.insert("collection".to_string(), meta.collection.clone());
    for (k, v) in [
        ("redshift", meta.redshift),
        ("ra", meta.ra_deg),
        ("dec", meta.dec_deg),
    ] {
        if let Some(v) = v {
            md.insert(k.to_string(), v.to_string());
        }
    }
    if let Some(t) = &meta.spectype {
        md.insert("spectype".to_string(), t.clone());
    }
    let schema = std::sync::Arc::new(Schema::new_with_metadata(fields, md));
    let batch = arrow::record_batch::RecordBatch::try_new(schema.clone(), arrays)
        .map_err(|e| Error::Internal(format!("spectrum as Arrow: {e}")))?;
    let mut out = Vec::new();
    let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut out, &schema)
        .map_err(|e| Error::Internal(format!("spectrum as Arrow: {e}")))?;
    w.write(&batch)
        .and_then(|_| w.finish())
        .map_err(|e| Error::Internal(format!("spectrum as Arrow: {e}")))?;
    drop(w);
    Ok(out)
}

/// A spectrum file as FITS or SDM VOTable, with its media type.
pub(crate) fn render(
    meta: &sdm::Meta,
    cols: &sdm::Columns,
    fits: bool,
) -> Result<(Vec<u8>, &'static str)> {
    Ok(if fits {
        (sdm::fits_bytes(meta, cols)?, "application/fits")
    } else {
        (
            sdm::votable(meta, cols).into_bytes(),
            "application/x-votable+xml;content=spectrum",
        )
    })
}

/// `/spectra/file?ID=...&FORMAT=votable|fits`: one spectrum as an SDM VOTable (the
/// default) or FITS table.
pub async fn file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    req: DaliRequest,
) -> Result<Response> {
    let id = req.params.required("ID")?.to_string();
    if req.params.all("ID").count() > 1 {
        return Err(Error::Usage(
            "ID: one spectrum per request (DataLink lists the links of several)".into(),
        ));
    }
    let arrow = req.params.get("FORMAT").is_some_and(|f| {
        matches!(
            f.trim().to_ascii_lowercase().as_str(),
            "arrow" | "application/vnd.apache.arrow.stream"
        )
    });
    let fits = if arrow {
        false
    } else {
        wants_fits(req.params.get("FORMAT"), false)?
    };
    let datasets = super::readable(&state, identity(&caller))?;
    let authority = state.spectra.authority.clone();
    let (body, mime) = tokio::task::spawn_blocking(move || -> Result<(Vec<u8>, &str)> {
        let (d, r) = resolve(&datasets, &authority, &id)
            .ok_or_else(|| Error::NotFound(format!("no spectrum '{id}'")))?;
        let a = d.arrays(r);
        let meta = meta_of(d, r, publisher_did(&authority, d.name(), d.sparcl_id(r)));
        let cols = sdm::Columns::of(a);
        if arrow {
            return Ok((
                arrow_bytes(&meta, &cols)?,
                "application/vnd.apache.arrow.stream",
            ));
        }
        render(&meta, &cols, fits)
    })
    .await
    .map_err(|e| Error::Internal(format!("spectrum task failed: {e}")))??;
    Ok(([(header::CONTENT_TYPE, mime)], body).into_response())
}
