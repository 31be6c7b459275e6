//! SIA 2.0 queries over the registered images: the parameters (POS, BAND, TIME, POL, FOV,
//! SPATRES, EXPTIME, ID, COLLECTION, FACILITY, INSTRUMENT, DPTYPE, CALIB, TARGET, TIMERES,
//! SPECRP, FORMAT) parsed as DALI says, and an index that answers them.
//!
//! Each parameter may be repeated: the values of one parameter are OR-ed, different
//! parameters AND-ed. Numeric constraints are DALI intervals (`lo hi`, `-Inf`/`+Inf` for an
//! open side, one number for a single value) that a dataset's value (or its own interval,
//! for BAND and TIME) must meet. A dataset without the value never matches a constraint on
//! it.
//!
//! The index is a flat list: each dataset keeps the unit vector of its centre and the
//! angular radius that holds its corners, so that a position constraint first rejects by
//! one dot product and only then tests the footprint polygon exactly. A million datasets
//! are scanned in a few milliseconds, which is why no spatial tree is built.

use std::collections::HashMap;

use arrow::record_batch::RecordBatch;
use meridian_sky::{Circle, CoordRange, Polygon, SkyPoint};

use crate::collection::{Collection, Dataset};
use crate::{Error, Result};

/// A POS value.
#[derive(Debug, Clone)]
pub enum Pos {
    Circle(Circle),
    Range(CoordRange),
    Polygon(Polygon),
}

/// A closed DALI interval; infinite ends are open sides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub lo: f64,
    pub hi: f64,
}

impl Interval {
    fn contains(&self, v: f64) -> bool {
        self.lo <= v && v <= self.hi
    }

    fn overlaps(&self, lo: f64, hi: f64) -> bool {
        lo <= self.hi && hi >= self.lo
    }
}

/// Whether the span `lo`..`hi` meets one of `want` (true when `want` is empty; a missing
/// end never meets).
pub fn meets_any(want: &[Interval], lo: Option<f64>, hi: Option<f64>) -> bool {
    want.is_empty()
        || match (lo, hi) {
            (Some(lo), Some(hi)) => want.iter().any(|w| w.overlaps(lo, hi)),
            _ => false,
        }
}

/// The constraints of one SIA query.
#[derive(Debug, Clone, Default)]
pub struct SiaQuery {
    pub pos: Vec<Pos>,
    /// Wavelength, metres.
    pub band: Vec<Interval>,
    /// MJD.
    pub time: Vec<Interval>,
    pub pol: Vec<String>,
    /// Degrees.
    pub fov: Vec<Interval>,
    /// Arcseconds.
    pub spatres: Vec<Interval>,
    /// Seconds.
    pub exptime: Vec<Interval>,
    /// Seconds.
    pub timeres: Vec<Interval>,
    pub specrp: Vec<Interval>,
    pub id: Vec<String>,
    pub collection: Vec<String>,
    pub facility: Vec<String>,
    pub instrument: Vec<String>,
    pub dptype: Vec<String>,
    pub calib: Vec<i64>,
    pub target: Vec<String>,
    pub format: Vec<String>,
    /// The one collection the answer is limited to (a collection's own service), AND-ed
    /// with COLLECTION.
    pub within: Option<String>,
}

fn number(param: &str, text: &str) -> Result<f64> {
    let v = match text.trim() {
        "-Inf" | "-inf" | "-Infinity" => f64::NEG_INFINITY,
        "+Inf" | "Inf" | "+inf" | "inf" | "+Infinity" | "Infinity" => f64::INFINITY,
        t => t
            .parse::<f64>()
            .map_err(|_| Error::Invalid(format!("{param}: '{t}' is not a number")))?,
    };
    if v.is_nan() {
        return Err(Error::Invalid(format!("{param}: NaN is not a limit")));
    }
    Ok(v)
}

/// A DALI interval: `lo hi`, or one number for a single value.
pub fn parse_interval(param: &str, text: &str) -> Result<Interval> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (lo, hi) = match parts.as_slice() {
        [v] => {
            let v = number(param, v)?;
            (v, v)
        }
        [lo, hi] => (number(param, lo)?, number(param, hi)?),
        _ => {
            return Err(Error::Invalid(format!(
                "{param}: '{text}' is not an interval: give two numbers, low and high"
            )));
        }
    };
    if lo > hi {
        return Err(Error::Invalid(format!(
            "{param}: the interval '{text}' is empty (low {lo} is above high {hi})"
        )));
    }
    Ok(Interval { lo, hi })
}

fn point(param: &str, ra: f64, dec: f64) -> Result<SkyPoint> {
    if !ra.is_finite() || !dec.is_finite() {
        return Err(Error::Invalid(format!(
            "{param}: position ({ra}, {dec}) is not finite"
        )));
    }
    SkyPoint::new(ra.rem_euclid(360.0), dec).map_err(|e| Error::Invalid(format!("{param}: {e}")))
}

/// Most vertices of a POLYGON (the self-intersection check grows with their square).
pub const MAX_VERTICES: usize = 500;

/// Most values of POS (each is tested against every candidate image).
pub const MAX_POS: usize = 64;

/// Most parameter values one query may give.
pub const MAX_VALUES: usize = 1000;

/// A POS value: `CIRCLE ra dec radius`, `RANGE ra1 ra2 dec1 dec2` or
/// `POLYGON ra1 dec1 ra2 dec2 ra3 dec3 ...`, degrees (ICRS).
pub fn parse_pos(param: &str, text: &str) -> Result<Pos> {
    let mut words = text.split_whitespace();
    let shape = words.next().unwrap_or("").to_ascii_uppercase();
    let v = words
        .map(|w| number(param, w))
        .collect::<Result<Vec<f64>>>()?;
    let region = |e: meridian_sky::Error| Error::Invalid(format!("{param}: {e}"));
    match shape.as_str() {
        "CIRCLE" => {
            let [ra, dec, r] = v[..] else {
                return Err(Error::Invalid(format!(
                    "{param}: CIRCLE takes 3 numbers (ra dec radius), got {}",
                    v.len()
                )));
            };
            Circle::new(point(param, ra, dec)?, r)
                .map(Pos::Circle)
                .map_err(region)
        }
        "RANGE" => {
            let [ra1, ra2, dec1, dec2] = v[..] else {
                return Err(Error::Invalid(format!(
                    "{param}: RANGE takes 4 numbers (ra1 ra2 dec1 dec2), got {}",
                    v.len()
                )));
            };
            // An open end is the end of the circle on that side.
            let ra1 = if ra1 == f64::NEG_INFINITY { 0.0 } else { ra1 };
            let ra2 = if ra2 == f64::INFINITY { 360.0 } else { ra2 };
            let (dec1, dec2) = (dec1.max(-90.0), dec2.min(90.0));
            if !ra1.is_finite() || !ra2.is_finite() {
                return Err(Error::Invalid(format!(
                    "{param}: RANGE right ascensions {ra1} {ra2} are not an interval"
                )));
            }
            if ra2 - ra1 >= 360.0 {
                return CoordRange::new(0.0, 360.0, dec1, dec2)
                    .map(Pos::Range)
                    .map_err(region);
            }
            CoordRange::new(ra1, ra2, dec1, dec2)
                .map(Pos::Range)
                .map_err(region)
        }
        "POLYGON" => {
            if v.len() > 2 * MAX_VERTICES {
                return Err(Error::Invalid(format!(
                    "{param}: a POLYGON of {} vertices; at most {MAX_VERTICES}",
                    v.len() / 2
                )));
            }
            if v.len() < 6 || v.len() % 2 != 0 {
                return Err(Error::Invalid(format!(
                    "{param}: POLYGON takes at least 3 vertices as ra dec pairs, got {} numbers",
                    v.len()
                )));
            }
            let vertices = v
                .chunks(2)
                .map(|c| point(param, c[0], c[1]))
                .collect::<Result<Vec<_>>>()?;
            Polygon::new(vertices).map(Pos::Polygon).map_err(region)
        }
        "" => Err(Error::Invalid(format!("{param}: no shape given"))),
        other => Err(Error::Invalid(format!(
            "{param}: unknown shape '{other}': use CIRCLE, RANGE or POLYGON"
        ))),
    }
}

impl SiaQuery {
    /// The constraints among `params` ((name, value) pairs; names case-insensitive);
    /// other parameters are ignored, as SIA says.
    pub fn from_params<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut q = SiaQuery::default();
        for (k, (name, value)) in params.into_iter().enumerate() {
            if k >= MAX_VALUES {
                return Err(Error::Invalid(format!(
                    "more than {MAX_VALUES} parameter values in one query"
                )));
            }
            let name = name.to_ascii_uppercase();
            let text = || value.trim().to_string();
            match name.as_str() {
                "POS" if q.pos.len() >= MAX_POS => {
                    return Err(Error::Invalid(format!(
                        "POS: more than {MAX_POS} regions in one query"
                    )));
                }
                "POS" => q.pos.push(parse_pos(&name, value)?),
                "BAND" => q.band.push(parse_interval(&name, value)?),
                "TIME" => q.time.push(parse_interval(&name, value)?),
                "FOV" => q.fov.push(parse_interval(&name, value)?),
                "SPATRES" => q.spatres.push(parse_interval(&name, value)?),
                "EXPTIME" => q.exptime.push(parse_interval(&name, value)?),
                "TIMERES" => q.timeres.push(parse_interval(&name, value)?),
                "SPECRP" => q.specrp.push(parse_interval(&name, value)?),
                "POL" => q.pol.push(text()),
                "ID" => q.id.push(text()),
                "COLLECTION" => q.collection.push(text()),
                "FACILITY" => q.facility.push(text()),
                "INSTRUMENT" => q.instrument.push(text()),
                "DPTYPE" => q.dptype.push(text()),
                "TARGET" => q.target.push(text()),
                "FORMAT" => q.format.push(text()),
                "CALIB" => q.calib.push(value.trim().parse().map_err(|_| {
                    Error::Invalid(format!(
                        "CALIB: '{}' is not a calibration level (an integer 0 to 4)",
                        value.trim()
                    ))
                })?),
                _ => {}
            }
        }
        Ok(q)
    }
}

/// One dataset of the index.
#[derive(Debug, Clone)]
pub struct Entry {
    pub collection: String,
    pub dataset: Dataset,
    /// Its publisher DID.
    pub did: String,
    polygon: Option<Polygon>,
    centre: [f64; 3],
    /// Angle from the centre, radians, that holds every corner.
    radius_rad: f64,
}

impl Entry {
    fn new(collection: &str, dataset: &Dataset, authority: &str) -> Self {
        let centre = SkyPoint::new(
            dataset.ra_deg.rem_euclid(360.0),
            dataset.dec_deg.clamp(-90.0, 90.0),
        )
        .map(|p| p.to_unit_vector())
        .unwrap_or([1.0, 0.0, 0.0]);
        let corners: Vec<SkyPoint> = dataset
            .corners_deg
            .iter()
            .filter_map(|(ra, dec)| SkyPoint::new(ra.rem_euclid(360.0), *dec).ok())
            .collect();
        let radius_rad = corners
            .iter()
            .map(|c| angle(centre, c.to_unit_vector()))
            .fold(0.0, f64::max);
        Self {
            collection: collection.to_string(),
            dataset: dataset.clone(),
            did: crate::obscore::publisher_did(authority, collection, &dataset.id),
            polygon: Polygon::new(corners).ok(),
            centre,
            radius_rad,
        }
    }

    /// Whether the dataset's footprint meets `pos`.
    pub fn overlaps(&self, pos: &Pos) -> bool {
        self.meets(&Cap::of(pos))
    }

    fn meets(&self, cap: &Cap) -> bool {
        // Caps that do not meet cannot hold shapes that do (a margin for rounding).
        let reach = cap.radius_rad + self.radius_rad + 1e-9;
        if reach < std::f64::consts::PI && dot(cap.centre, self.centre) < reach.cos() {
            return false;
        }
        let pos = &cap.pos;
        let Some(poly) = &self.polygon else {
            let p = SkyPoint::from_vector(self.centre);
            return match pos {
                Pos::Circle(c) => p.separation_deg(&c.center()) <= c.radius_deg(),
                Pos::Range(r) => r.contains(&p),
                Pos::Polygon(q) => meridian_sky::Region::Polygon(q.clone()).contains(&p),
            };
        };
        match pos {
            Pos::Circle(c) => poly.intersects_circle(c),
            Pos::Range(r) => poly.intersects_range(r),
            Pos::Polygon(q) => poly.intersects_polygon(q),
        }
    }

    fn matches(&self, q: &SiaQuery, caps: &[Cap]) -> bool {
        // The position first: one dot product rejects nearly every dataset.
        if !caps.is_empty() && !caps.iter().any(|c| self.meets(c)) {
            return false;
        }
        let d = &self.dataset;
        let any_str = |want: &[String], have: Option<&str>| {
            want.is_empty() || have.is_some_and(|h| want.iter().any(|w| w == h))
        };
        let any_num = |want: &[Interval], have: Option<f64>| {
            want.is_empty() || have.is_some_and(|h| want.iter().any(|w| w.contains(h)))
        };
        q.within.as_ref().is_none_or(|c| *c == self.collection)
            && any_str(&q.id, Some(&self.did))
            && any_str(&q.collection, Some(&self.collection))
            && any_str(&q.dptype, Some("image"))
            && (q.calib.is_empty() || q.calib.contains(&CALIB_LEVEL))
            && any_str(&q.facility, d.facility.as_deref())
            && any_str(&q.instrument, d.instrument.as_deref())
            && any_str(&q.target, d.target.as_deref())
            && (q.format.is_empty()
                || q.format.iter().any(|f| {
                    matches!(f.as_str(), "image/fits" | "application/fits" | DATALINK_FORMAT)
                }))
            // No polarization states are recorded for these images.
            && q.pol.is_empty()
            && q.specrp.is_empty()
            && any_num(&q.fov, Some(d.fov_deg))
            && any_num(&q.spatres, Some(d.pixel_arcsec))
            && any_num(&q.exptime, d.exptime_s)
            && any_num(&q.timeres, d.exptime_s)
            && meets_any(&q.band, d.em_min_m, d.em_max_m)
            && meets_any(&q.time, d.t_min_mjd, d.t_max_mjd)
    }
}

/// A POS value with a cap (centre, angular radius) that holds it.
struct Cap {
    pos: Pos,
    centre: [f64; 3],
    radius_rad: f64,
}

impl Cap {
    fn of(pos: &Pos) -> Self {
        let (centre, radius_rad) = match pos {
            Pos::Circle(c) => (c.center().to_unit_vector(), c.radius_deg().to_radians()),
            Pos::Polygon(p) => bounding_cap(p),
            Pos::Range(r) => {
                // A cap about the pole nearer the band's middle, reaching its far edge:
                // a band of declinations, which is what the index filters on.
                let (_, _, lo, hi) = r.limits();
                if lo + hi >= 0.0 {
                    ([0.0, 0.0, 1.0], (90.0 - lo).to_radians())
                } else {
                    ([0.0, 0.0, -1.0], (90.0 + hi).to_radians())
                }
            }
        };
        Self {
            pos: pos.clone(),
            centre,
            radius_rad,
        }
    }
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The calibration level of registered images (ObsCore: 2, science-ready).
pub const CALIB_LEVEL: i64 = 2;

/// ObsCore `access_format` of a DataLink document.
pub const DATALINK_FORMAT: &str = "application/x-votable+xml;content=datalink";

fn angle(a: [f64; 3], b: [f64; 3]) -> f64 {
    let c = [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ];
    let sin = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
    sin.atan2(a[0] * b[0] + a[1] * b[1] + a[2] * b[2])
}

/// A cap holding polygon `p`: its centroid and the largest angle to a vertex. Edges are
/// great-circle arcs, so for a polygon smaller than a hemisphere the cap through its
/// farthest vertex holds it.
fn bounding_cap(p: &Polygon) -> ([f64; 3], f64) {
    let c = p.centroid().to_unit_vector();
    let r = p
        .vertices()
        .iter()
        .map(|v| angle(c, v.to_unit_vector()))
        .fold(0.0, f64::max);
    if p.area_sr() >= 2.0 * std::f64::consts::PI {
        (c, std::f64::consts::PI)
    } else {
        (c, r)
    }
}

/// Every registered dataset, for SIA, DataLink and SODA.
#[derive(Debug, Default)]
pub struct ObsIndex {
    entries: Vec<Entry>,
    by_did: HashMap<String, usize>,
    /// Entry numbers sorted by the declination of their centres, and those declinations
    /// (radians): a position constraint reads only the band of declinations it can reach.
    by_dec: Vec<u32>,
    decs_rad: Vec<f64>,
    /// The largest angle from an entry's centre to its corners, radians.
    max_radius_rad: f64,
    collections: std::collections::HashSet<String>,
}

impl ObsIndex {
    /// The datasets of `collections`, with DIDs under `authority`.
    pub fn new(collections: &[Collection], authority: &str) -> Self {
        let entries: Vec<Entry> = collections
            .iter()
            .flat_map(|c| c.datasets.iter().map(|d| Entry::new(&c.name, d, authority)))
            .collect();
        let by_did = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.did.clone(), i))
            .collect();
        let dec = |e: &Entry| e.centre[2].clamp(-1.0, 1.0).asin();
        let mut by_dec: Vec<u32> = (0..entries.len() as u32).collect();
        by_dec.sort_by(|a, b| dec(&entries[*a as usize]).total_cmp(&dec(&entries[*b as usize])));
        let decs_rad = by_dec.iter().map(|i| dec(&entries[*i as usize])).collect();
        let max_radius_rad = entries.iter().map(|e| e.radius_rad).fold(0.0, f64::max);
        Self {
            entries,
            by_did,
            by_dec,
            decs_rad,
            max_radius_rad,
            collections: collections.iter().map(|c| c.name.clone()).collect(),
        }
    }

    /// Entry numbers whose centres lie in the declination bands `caps` reach, in
    /// registration order; `None` when a cap reaches every declination.
    fn candidates(&self, caps: &[Cap]) -> Option<Vec<u32>> {
        let mut out = Vec::new();
        for c in caps {
            let (lo, hi) = match &c.pos {
                Pos::Range(r) => {
                    let (_, _, lo, hi) = r.limits();
                    let m = self.max_radius_rad + 1e-9;
                    (lo.to_radians() - m, hi.to_radians() + m)
                }
                _ => {
                    let reach = c.radius_rad + self.max_radius_rad + 1e-9;
                    let dec = c.centre[2].clamp(-1.0, 1.0).asin();
                    (dec - reach, dec + reach)
                }
            };
            if lo <= -std::f64::consts::FRAC_PI_2 && hi >= std::f64::consts::FRAC_PI_2 {
                return None;
            }
            let a = self.decs_rad.partition_point(|d| *d < lo);
            let b = self.decs_rad.partition_point(|d| *d <= hi);
            out.extend_from_slice(&self.by_dec[a..b]);
        }
        out.sort_unstable();
        out.dedup();
        Some(out)
    }

    /// The dataset with publisher DID `did`.
    pub fn get(&self, did: &str) -> Option<&Entry> {
        self.by_did.get(did).map(|&i| &self.entries[i])
    }

    /// The MOC at `order` of collection `name`'s footprints; `None` when there is no such
    /// collection.
    pub fn collection_moc(&self, name: &str, order: u8) -> Option<Result<meridian_sky::Moc>> {
        if !self.has_collection(name) {
            return None;
        }
        let mocs: Result<Vec<_>> = self
            .entries
            .iter()
            .filter(|e| e.collection == name)
            .map(|e| e.dataset.moc(order))
            .collect();
        Some(mocs.map(|m| meridian_sky::moc_union(&m)))
    }

    /// The space-time MOC of collection `name` (see [`Collection::stmoc`]); `None` when
    /// there is no such collection or none of its images has a time.
    pub fn collection_stmoc(
        &self,
        name: &str,
        space_order: u8,
        time_order: u8,
    ) -> Option<Result<meridian_sky::StMoc>> {
        if !self.has_collection(name) {
            return None;
        }
        crate::collection::Collection {
            name: name.to_string(),
            datasets: self
                .entries
                .iter()
                .filter(|e| e.collection == name)
                .map(|e| e.dataset.clone())
                .collect(),
        }
        .stmoc(space_order, time_order)
    }

    /// Whether a collection of this name is indexed.
    pub fn has_collection(&self, name: &str) -> bool {
        self.collections.contains(name)
    }

    /// Number of datasets.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no dataset is registered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The datasets that meet `q`, in registration order, at most `limit` of them.
    pub fn search(&self, q: &SiaQuery, limit: usize) -> Vec<&Entry> {
        let caps: Vec<Cap> = q.pos.iter().map(Cap::of).collect();
        match (caps.is_empty(), self.candidates(&caps)) {
            (false, Some(ids)) => ids
                .into_iter()
                .map(|i| &self.entries[i as usize])
                .filter(|e| e.matches(q, &caps))
                .take(limit)
                .collect(),
            _ => self
                .entries
                .iter()
                .filter(|e| e.matches(q, &caps))
                .take(limit)
                .collect(),
        }
    }

    /// The ObsCore rows of `entries` (see [`crate::obscore::rows`]).
    pub fn batch(&self, entries: &[&Entry], base_url: &str) -> Result<RecordBatch> {
        let rows: Vec<(&str, &Dataset, &str)> = entries
            .iter()
            .map(|e| (e.collection.as_str(), &e.dataset, e.did.as_str()))
            .collect();
        crate::obscore::rows(&rows, base_url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dali_values() {
        assert_eq!(
            parse_interval("BAND", "4e-7 5e-7").unwrap(),
            Interval { lo: 4e-7, hi: 5e-7 }
        );
        assert_eq!(
            parse_interval("TIME", "-Inf 55000").unwrap().lo,
            f64::NEG_INFINITY
        );
        assert_eq!(
            parse_interval("FOV", "2").unwrap(),
            Interval { lo: 2.0, hi: 2.0 }
        );
        for bad in ["", "1 2 3", "x 1", "2 1", "NaN 1"] {
            let e = parse_interval("BAND", bad).unwrap_err().to_string();
            assert!(e.starts_with("BAND:"), "{e}");
        }
        assert!(matches!(
            parse_pos("POS", "CIRCLE 10 20 0.5").unwrap(),
            Pos::Circle(_)
        ));
        assert!(matches!(
            parse_pos("POS", "range 350 10 -5 5").unwrap(),
            Pos::Range(_)
        ));
        assert!(matches!(
            parse_pos("POS", "RANGE -Inf +Inf -Inf +Inf").unwrap(),
            Pos::Range(_)
        ));
        assert!(matches!(
            parse_pos("POS", "POLYGON 0 0 1 0 1 1").unwrap(),
            Pos::Polygon(_)
        ));
        for (bad, says) in [
            ("CIRCLE 10 20", "3 numbers"),
            ("CIRCLE 10 95 1", "POS:"),
            ("CIRCLE 10 20 -1", "radius"),
            ("BOX 1 2 3 4", "unknown shape"),
            ("POLYGON 0 0 1 1", "3 vertices"),
            ("RANGE 0 1 5 4", "interval"),
            ("", "no shape"),
        ] {
            let e = parse_pos("POS", bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
