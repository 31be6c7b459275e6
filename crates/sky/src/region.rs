//! Sky regions with ADQL 2.1 semantics and their HEALPix coverage.
//!
//! - CIRCLE: all points within `radius_deg` of the centre (inclusive).
//! - BOX: the STC/ADQL box, a polygon whose sides are great circles perpendicular to the
//!   arms of a cross centred on the centre, the arms running along the meridian and along the
//!   great circle at right angles to it, `width_deg / 2` and `height_deg / 2` long.
//! - POLYGON: vertices joined by great-circle arcs; either winding is accepted and the
//!   interior is the smaller of the two regions the boundary separates; self-intersecting
//!   boundaries are rejected.
//! - MOC: a HEALPix multi-order coverage map (`moc` crate).
//!
//! Coverage is computed by `moc` (and through it `cdshealpix`): it is a superset of the region
//! (every cell that overlaps it), the property partition pruning needs.

use std::ops::Range;

use cdshealpix::sph_geom::coo3d::Coo3D;
use cdshealpix::sph_geom::{ContainsSouthPoleMethod, Polygon as HpxPolygon};
use moc::moc::range::{CellSelection, RangeMOC};
use moc::qty::Hpx;

use crate::{Error, Result, SkyPoint, healpix};

/// A HEALPix MOC with u64 indices.
pub type Moc = RangeMOC<u64, Hpx<u64>>;

type Vec3 = [f64; 3];

fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn cross(a: Vec3, b: Vec3) -> Vec3 {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

fn norm(a: Vec3) -> f64 {
    dot(a, a).sqrt()
}

fn normalize(a: Vec3) -> Vec3 {
    let n = norm(a);
    [a[0] / n, a[1] / n, a[2] / n]
}

fn add_scaled(a: Vec3, b: Vec3, s: f64) -> Vec3 {
    [a[0] + s * b[0], a[1] + s * b[1], a[2] + s * b[2]]
}

/// A cone: all points within `radius_deg` of `center`.
#[derive(Debug, Clone, PartialEq)]
pub struct Circle {
    center: SkyPoint,
    radius_deg: f64,
}

impl Circle {
    /// A circle; the radius must be finite and in [0, 180] degrees.
    pub fn new(center: SkyPoint, radius_deg: f64) -> Result<Self> {
        if !radius_deg.is_finite() || !(0.0..=180.0).contains(&radius_deg) {
            return Err(Error::Region(format!(
                "circle radius {radius_deg} is outside [0, 180] degrees"
            )));
        }
        Ok(Self { center, radius_deg })
    }

    /// Centre of the circle.
    pub fn center(&self) -> SkyPoint {
        self.center
    }

    /// Radius in degrees.
    pub fn radius_deg(&self) -> f64 {
        self.radius_deg
    }
}

/// The ADQL BOX: a four-sided polygon centred on `center`.
#[derive(Debug, Clone, PartialEq)]
pub struct SkyBox {
    center: SkyPoint,
    width_deg: f64,
    height_deg: f64,
    polygon: Polygon,
}

impl SkyBox {
    /// A box of full `width_deg` (along the great circle perpendicular to the meridian) and
    /// `height_deg` (along the meridian), each in (0, 180) degrees.
    pub fn new(center: SkyPoint, width_deg: f64, height_deg: f64) -> Result<Self> {
        for (name, v) in [("width", width_deg), ("height", height_deg)] {
            if !v.is_finite() || v <= 0.0 || v >= 180.0 {
                return Err(Error::Region(format!(
                    "box {name} {v} is outside (0, 180) degrees"
                )));
            }
        }
        // In the local frame of the centre (x: centre, y: east, z: north) the corners are
        // (1, +-tan(w/2), +-tan(h/2)) normalised: the intersections of the side great circles.
        let (tw, th) = (
            (width_deg / 2.0).to_radians().tan(),
            (height_deg / 2.0).to_radians().tan(),
        );
        let c = center.to_unit_vector();
        let (sa, ca) = center.ra_deg().to_radians().sin_cos();
        let (sd, cd) = center.dec_deg().to_radians().sin_cos();
        let east = [-sa, ca, 0.0];
        let north = [-sd * ca, -sd * sa, cd];
        let corner = |e: f64, n: f64| {
            let v = add_scaled(add_scaled(c, east, e), north, n);
            SkyPoint::from_vector(normalize(v))
        };
        let vertices = vec![
            corner(tw, th),
            corner(-tw, th),
            corner(-tw, -th),
            corner(tw, -th),
        ];
        let polygon = Polygon::new(vertices)?;
        Ok(Self {
            center,
            width_deg,
            height_deg,
            polygon,
        })
    }

    /// Centre of the box.
    pub fn center(&self) -> SkyPoint {
        self.center
    }

    /// Full width in degrees.
    pub fn width_deg(&self) -> f64 {
        self.width_deg
    }

    /// Full height in degrees.
    pub fn height_deg(&self) -> f64 {
        self.height_deg
    }

    /// The equivalent polygon (ADQL: "a BOX is a special case of POLYGON").
    pub fn as_polygon(&self) -> &Polygon {
        &self.polygon
    }
}

/// A spherical polygon with great-circle edges.
#[derive(Debug, Clone)]
pub struct Polygon {
    /// Vertices as given by the user.
    vertices: Vec<SkyPoint>,
    /// A point strictly inside the smaller region, used to orient containment and coverage.
    inside: SkyPoint,
    /// Area of the interior in steradians.
    area_sr: f64,
}

impl PartialEq for Polygon {
    fn eq(&self, other: &Self) -> bool {
        self.vertices == other.vertices
    }
}

impl Polygon {
    /// A polygon from at least three vertices, in either winding.
    ///
    /// Rejects repeated consecutive vertices, antipodal consecutive vertices (the arc between
    /// them is undefined) and self-intersecting boundaries.
    pub fn new(vertices: Vec<SkyPoint>) -> Result<Self> {
        let n = vertices.len();
        if n < 3 {
            return Err(Error::Region(format!(
                "a polygon needs at least 3 vertices, got {n}"
            )));
        }
        let v: Vec<Vec3> = vertices.iter().map(SkyPoint::to_unit_vector).collect();
        for i in 0..n {
            let (a, b) = (v[i], v[(i + 1) % n]);
            let sep = norm(cross(a, b));
            if sep < 1e-15 {
                let what = if dot(a, b) > 0.0 {
                    "coincide"
                } else {
                    "are antipodal"
                };
                return Err(Error::Region(format!(
                    "polygon vertices {} and {} {what}; the edge between them is undefined",
                    i + 1,
                    (i + 1) % n + 1
                )));
            }
        }
        // A boundary that passes a point twice, or turns back along the edge it came on,
        // touches itself: its two sides are not defined (and the crossing test below
        // sees such a touch only within rounding).
        for i in 0..n {
            for j in (i + 2)..n {
                if norm(cross(v[i], v[j])) < 1e-15 && dot(v[i], v[j]) > 0.0 {
                    return Err(Error::Region(format!(
                        "polygon vertices {} and {} coincide: the polygon touches itself",
                        i + 1,
                        j + 1
                    )));
                }
            }
            let (a, b, c) = (v[(i + n - 1) % n], v[i], v[(i + 1) % n]);
            let (n1, n2) = (normalize(cross(a, b)), normalize(cross(b, c)));
            if norm(cross(n1, n2)) < 1e-12 && dot(n1, n2) < 0.0 {
                return Err(Error::Region(format!(
                    "polygon edges {}-{} and {}-{} fold back on each other: the polygon touches itself",
                    (i + n - 1) % n + 1,
                    i + 1,
                    i + 1,
                    (i + 1) % n + 1
                )));
            }
        }
        for i in 0..n {
            for j in (i + 1)..n {
                // Adjacent edges share a vertex; they are not tested against each other.
                if j == i + 1 || (i == 0 && j == n - 1) {
                    continue;
                }
                if arcs_intersect(v[i], v[(i + 1) % n], v[j], v[(j + 1) % n]) {
                    return Err(Error::Region(format!(
                        "polygon edges {}-{} and {}-{} cross: the polygon is self-intersecting",
                        i + 1,
                        (i + 1) % n + 1,
                        j + 1,
                        (j + 1) % n + 1
                    )));
                }
            }
        }
        // Area of the region on the left of the path (Girard's theorem with signed turning
        // angles): A_left = 2 pi - sum(turn). The interior is the smaller side.
        let mut turn_sum = 0.0;
        for i in 0..n {
            let (a, b, c) = (v[(i + n - 1) % n], v[i], v[(i + 1) % n]);
            let n1 = cross(a, b);
            let n2 = cross(b, c);
            turn_sum += dot(cross(n1, n2), b).atan2(dot(n1, n2));
        }
        let two_pi = 2.0 * std::f64::consts::PI;
        let left_area = two_pi - turn_sum;
        let left_is_inside = left_area <= two_pi;
        let area_sr = if left_is_inside {
            left_area
        } else {
            2.0 * two_pi - left_area
        };
        // A point just off the middle of the longest edge, on the interior side.
        let (i, len) = (0..n)
            .map(|i| (i, norm(cross(v[i], v[(i + 1) % n]))))
            .fold((0, -1.0), |acc, x| if x.1 > acc.1 { x } else { acc });
        let (a, b) = (v[i], v[(i + 1) % n]);
        let mid = normalize(add_scaled(a, b, 1.0));
        let left = normalize(cross(a, b));
        let eps = (len * 1e-6).max(1e-12);
        let inside = SkyPoint::from_vector(normalize(add_scaled(
            mid,
            left,
            if left_is_inside { eps } else { -eps },
        )));
        Ok(Self {
            vertices,
            inside,
            area_sr,
        })
    }

    /// The vertices as given.
    pub fn vertices(&self) -> &[SkyPoint] {
        &self.vertices
    }

    /// Area of the interior in steradians.
    pub fn area_sr(&self) -> f64 {
        self.area_sr
    }

    /// Centroid of the interior: the direction of the integral of the position vector over
    /// the area, which by Stokes' theorem is half the sum over edges of each edge's arc
    /// length times its unit pole (exact for great-circle edges).
    pub fn centroid(&self) -> SkyPoint {
        let v: Vec<Vec3> = self.vertices.iter().map(SkyPoint::to_unit_vector).collect();
        let n = v.len();
        let mut sum = [0.0; 3];
        for i in 0..n {
            let (a, b) = (v[i], v[(i + 1) % n]);
            let c = cross(a, b);
            let arc = norm(c).atan2(dot(a, b));
            sum = add_scaled(sum, normalize(c), arc);
        }
        // The sum points into the region on the left of the path; the interior may be
        // the right side.
        if dot(sum, self.inside.to_unit_vector()) < 0.0 {
            sum = [-sum[0], -sum[1], -sum[2]];
        }
        SkyPoint::from_vector(normalize(sum))
    }

    fn hpx_polygon(&self) -> HpxPolygon {
        let coos: Box<[Coo3D]> = self
            .vertices
            .iter()
            .map(|p| Coo3D::from_sph_coo(p.ra_deg().to_radians(), p.dec_deg().to_radians()))
            .collect();
        let control = Coo3D::from_sph_coo(
            self.inside.ra_deg().to_radians(),
            self.inside.dec_deg().to_radians(),
        );
        HpxPolygon::new_custom_vec3(coos, &ContainsSouthPoleMethod::ControlPointIn(control))
    }

    fn radians(&self) -> Vec<(f64, f64)> {
        self.vertices
            .iter()
            .map(|p| (p.ra_deg().to_radians(), p.dec_deg().to_radians()))
            .collect()
    }
}

/// Whether great-circle arcs a-b and c-d (each shorter than 180 degrees) cross.
fn arcs_intersect(a: Vec3, b: Vec3, c: Vec3, d: Vec3) -> bool {
    let n1 = cross(a, b);
    let n2 = cross(c, d);
    let line = cross(n1, n2);
    if norm(line) < 1e-15 {
        // Same great circle: overlapping if an endpoint of one lies on the other.
        let on = |p: Vec3, s: Vec3, e: Vec3| {
            let total = norm(cross(s, e)).atan2(dot(s, e));
            let d1 = norm(cross(s, p)).atan2(dot(s, p));
            let d2 = norm(cross(p, e)).atan2(dot(p, e));
            (d1 + d2 - total).abs() < 1e-12
        };
        return on(c, a, b) || on(d, a, b) || on(a, c, d) || on(b, c, d);
    }
    let p = normalize(line);
    for cand in [p, [-p[0], -p[1], -p[2]]] {
        let on_ab = dot(cross(a, cand), n1) >= 0.0 && dot(cross(cand, b), n1) >= 0.0;
        let on_cd = dot(cross(c, cand), n2) >= 0.0 && dot(cross(cand, d), n2) >= 0.0;
        if on_ab && on_cd {
            return true;
        }
    }
    false
}

/// A region of the sky.
#[derive(Debug, Clone)]
pub enum Region {
    /// A cone.
    Circle(Circle),
    /// An ADQL BOX.
    Box(SkyBox),
    /// A polygon.
    Polygon(Polygon),
    /// A multi-order coverage map.
    Moc(Box<Moc>),
}

impl Region {
    /// Area in square degrees (MOCs: the sum of their cells).
    pub fn area_deg2(&self) -> f64 {
        let sr = match self {
            Region::Circle(c) => {
                2.0 * std::f64::consts::PI * (1.0 - c.radius_deg.min(180.0).to_radians().cos())
            }
            Region::Box(b) => b.polygon.area_sr(),
            Region::Polygon(p) => p.area_sr(),
            Region::Moc(m) => 4.0 * std::f64::consts::PI * m.coverage_percentage(),
        };
        sr.to_degrees().to_degrees()
    }

    /// Centre of a circle or box, centroid of a polygon or MOC's cells' mean direction.
    pub fn centroid(&self) -> SkyPoint {
        match self {
            Region::Circle(c) => c.center,
            Region::Box(b) => b.center,
            Region::Polygon(p) => p.centroid(),
            Region::Moc(m) => {
                let mut sum = [0.0; 3];
                for cell in m.flatten_to_fixed_depth_cells() {
                    let p = healpix::center(m.depth_max(), cell);
                    sum = add_scaled(sum, p.to_unit_vector(), 1.0);
                }
                SkyPoint::from_vector(normalize(sum))
            }
        }
    }

    /// A cap (centre, radius in degrees) holding the whole region, for quick rejection of
    /// what lies far from it; `None` when no cap under 90 degrees does (or for a MOC).
    ///
    /// A polygon's boundary lies in the cap about its centroid through its farthest
    /// vertex (a cap under 90 degrees holds the great-circle arcs between its points);
    /// the rest of the sphere, then larger than a hemisphere and never touching the
    /// boundary, is wholly outside a polygon of at most a hemisphere's area.
    pub fn bounding_cap(&self) -> Option<(SkyPoint, f64)> {
        let polygon = match self {
            Region::Circle(c) => return Some((c.center, c.radius_deg)),
            Region::Box(b) => &b.polygon,
            Region::Polygon(p) => p,
            Region::Moc(_) => return None,
        };
        if polygon.area_sr() > 2.0 * std::f64::consts::PI {
            return None;
        }
        let centre = polygon.centroid();
        let radius = polygon
            .vertices()
            .iter()
            .map(|v| v.separation_deg(&centre))
            .fold(0.0, f64::max);
        (radius < 90.0).then_some((centre, radius))
    }

    /// Whether `p` lies in the region (boundaries included for circles).
    pub fn contains(&self, p: &SkyPoint) -> bool {
        match self {
            Region::Circle(c) => p.separation_deg(&c.center) <= c.radius_deg,
            Region::Box(b) => polygon_contains(&b.polygon, p),
            Region::Polygon(poly) => polygon_contains(poly, p),
            Region::Moc(m) => m.is_in(p.ra_deg().to_radians(), p.dec_deg().to_radians()),
        }
    }

    /// A MOC at `order` covering the region: every cell that overlaps it (a superset).
    pub fn coverage(&self, order: u8) -> Result<Moc> {
        let order = healpix::check_order(order)?;
        Ok(match self {
            Region::Circle(c) => {
                if c.radius_deg >= 180.0 {
                    return Ok(Moc::new_full_domain(order));
                }
                Moc::from_cone(
                    c.center.ra_deg().to_radians(),
                    c.center.dec_deg().to_radians(),
                    c.radius_deg.to_radians().max(1e-15),
                    order,
                    2,
                    CellSelection::All,
                )
            }
            Region::Box(b) => polygon_coverage(&b.polygon, order),
            Region::Polygon(p) => polygon_coverage(p, order),
            Region::Moc(m) => {
                if m.depth_max() > order {
                    m.degraded(order)
                } else {
                    (**m).clone()
                }
            }
        })
    }

    /// Order-29 `_healpix_29` index ranges covering the region at `order` (sorted, disjoint).
    pub fn hpx29_ranges(&self, order: u8) -> Result<Vec<Range<u64>>> {
        let moc = self.coverage(order)?;
        Ok(moc.moc_ranges().iter().cloned().collect())
    }
}

/// A coordinate range: right ascension from `ra_min_deg` eastward to `ra_max_deg` (across
/// 0 when `ra_min_deg > ra_max_deg`), declination from `dec_min_deg` to `dec_max_deg`, as
/// SIA's `POS=RANGE` gives it. Its sides of constant declination are small circles.
#[derive(Debug, Clone, PartialEq)]
pub struct CoordRange {
    ra_min_deg: f64,
    ra_max_deg: f64,
    dec_min_deg: f64,
    dec_max_deg: f64,
    /// The boundary as great-circle pieces, built once.
    edges: Vec<(Vec3, Vec3)>,
}

impl CoordRange {
    /// A range; right ascensions in [0, 360] (a span of 360 is every right ascension),
    /// declinations in [-90, 90] with `dec_min_deg <= dec_max_deg`.
    pub fn new(
        ra_min_deg: f64,
        ra_max_deg: f64,
        dec_min_deg: f64,
        dec_max_deg: f64,
    ) -> Result<Self> {
        let all = [ra_min_deg, ra_max_deg, dec_min_deg, dec_max_deg];
        if all.iter().any(|v| v.is_nan()) {
            return Err(Error::Region("a range's limits must be numbers".into()));
        }
        if !(-90.0..=90.0).contains(&dec_min_deg)
            || !(-90.0..=90.0).contains(&dec_max_deg)
            || dec_min_deg > dec_max_deg
        {
            return Err(Error::Region(format!(
                "range declinations {dec_min_deg} {dec_max_deg} are not an interval within \
                 [-90, 90]"
            )));
        }
        let full = ra_max_deg - ra_min_deg >= 360.0 || (ra_min_deg <= 0.0 && ra_max_deg >= 360.0);
        let (lo, hi) = if full {
            (0.0, 360.0)
        } else {
            (ra_min_deg.rem_euclid(360.0), ra_max_deg.rem_euclid(360.0))
        };
        let mut r = Self {
            ra_min_deg: lo,
            ra_max_deg: if full { 360.0 } else { hi },
            dec_min_deg,
            dec_max_deg,
            edges: Vec::new(),
        };
        r.edges = r.boundary();
        Ok(r)
    }

    /// (ra_min, ra_max, dec_min, dec_max), degrees; ra_min > ra_max across RA 0.
    pub fn limits(&self) -> (f64, f64, f64, f64) {
        (
            self.ra_min_deg,
            self.ra_max_deg,
            self.dec_min_deg,
            self.dec_max_deg,
        )
    }

    fn span_deg(&self) -> f64 {
        if self.ra_min_deg <= self.ra_max_deg {
            self.ra_max_deg - self.ra_min_deg
        } else {
            self.ra_max_deg + 360.0 - self.ra_min_deg
        }
    }

    fn full_ra(&self) -> bool {
        self.ra_max_deg - self.ra_min_deg >= 360.0
    }

    /// Whether `p` lies in the range (boundaries included).
    pub fn contains(&self, p: &SkyPoint) -> bool {
        let (ra, dec) = (p.ra_deg(), p.dec_deg());
        if dec < self.dec_min_deg || dec > self.dec_max_deg {
            return false;
        }
        if self.full_ra() || dec.abs() >= 90.0 {
            return true;
        }
        if self.ra_min_deg <= self.ra_max_deg {
            (self.ra_min_deg..=self.ra_max_deg).contains(&ra)
        } else {
            ra >= self.ra_min_deg || ra <= self.ra_max_deg
        }
    }

    /// The boundary as short great-circle pieces: the meridian sides exactly, the sides
    /// of constant declination as chords at most 0.25 degree long (their sagitta, under
    /// 1e-3 arcsec at the equator and growing with tan(dec), is the only approximation).
    fn boundary(&self) -> Vec<(Vec3, Vec3)> {
        let span = self.span_deg();
        let v = |ra: f64, dec: f64| {
            SkyPoint::new(ra.rem_euclid(360.0), dec).map(|p| p.to_unit_vector())
        };
        let mut out = Vec::new();
        let steps = ((span / 0.25).ceil() as usize).max(1);
        for dec in [self.dec_min_deg, self.dec_max_deg] {
            if dec.abs() >= 90.0 {
                continue;
            }
            for i in 0..steps {
                let a = self.ra_min_deg + span * i as f64 / steps as f64;
                let b = self.ra_min_deg + span * (i + 1) as f64 / steps as f64;
                if let (Ok(a), Ok(b)) = (v(a, dec), v(b, dec)) {
                    out.push((a, b));
                }
            }
        }
        if !self.full_ra() {
            for ra in [self.ra_min_deg, self.ra_max_deg] {
                // Meridian sides, split so that no piece reaches 180 degrees.
                let (d0, d1) = (self.dec_min_deg, self.dec_max_deg);
                let mid = (d0 + d1) / 2.0;
                for (a, b) in [(d0, mid), (mid, d1)] {
                    if let (Ok(a), Ok(b)) = (v(ra, a), v(ra, b))
                        && norm(cross(a, b)) > 1e-15
                    {
                        out.push((a, b));
                    }
                }
            }
        }
        out
    }

    fn corners(&self) -> Vec<SkyPoint> {
        let mut out = Vec::new();
        let mid = self.ra_min_deg + self.span_deg() / 2.0;
        for ra in [self.ra_min_deg, self.ra_max_deg, mid] {
            for dec in [self.dec_min_deg, self.dec_max_deg] {
                if let Ok(p) = SkyPoint::new(ra.rem_euclid(360.0), dec) {
                    out.push(p);
                }
            }
        }
        out
    }
}

/// Shortest angle, radians, from `p` to the great-circle arc a-b (unit vectors).
fn arc_distance_rad(p: Vec3, a: Vec3, b: Vec3) -> f64 {
    let angle = |u: Vec3, v: Vec3| norm(cross(u, v)).atan2(dot(u, v));
    let n = cross(a, b);
    if norm(n) > 1e-15 {
        let n = normalize(n);
        // The foot of the perpendicular lies on the arc when it is on the inner side of
        // both of the arc's end planes.
        let foot = add_scaled(p, n, -dot(p, n));
        if norm(foot) > 1e-15 {
            let f = normalize(foot);
            if dot(cross(a, f), n) >= 0.0 && dot(cross(f, b), n) >= 0.0 {
                return dot(p, n).abs().clamp(-1.0, 1.0).asin();
            }
        }
    }
    angle(p, a).min(angle(p, b))
}

impl Polygon {
    fn edges(&self) -> Vec<(Vec3, Vec3)> {
        let v: Vec<Vec3> = self.vertices.iter().map(SkyPoint::to_unit_vector).collect();
        (0..v.len()).map(|i| (v[i], v[(i + 1) % v.len()])).collect()
    }

    /// Whether the polygon and `other` share a point (boundaries included).
    pub fn intersects_polygon(&self, other: &Polygon) -> bool {
        let (a, b) = (self.hpx_polygon(), other.hpx_polygon());
        let has = |poly: &HpxPolygon, p: &SkyPoint| {
            poly.contains(&Coo3D::from_sph_coo(
                p.ra_deg().to_radians(),
                p.dec_deg().to_radians(),
            ))
        };
        if other.vertices.iter().any(|p| has(&a, p)) || self.vertices.iter().any(|p| has(&b, p)) {
            return true;
        }
        edges_cross(&self.edges(), &other.edges())
    }

    /// Whether the polygon and circle `c` share a point.
    pub fn intersects_circle(&self, c: &Circle) -> bool {
        if polygon_contains(self, &c.center) {
            return true;
        }
        let p = c.center.to_unit_vector();
        let r = c.radius_deg.to_radians();
        self.edges()
            .iter()
            .any(|(a, b)| arc_distance_rad(p, *a, *b) <= r)
    }

    /// Whether the polygon and range `r` share a point.
    pub fn intersects_range(&self, r: &CoordRange) -> bool {
        if self.vertices.iter().any(|p| r.contains(p)) {
            return true;
        }
        let poly = self.hpx_polygon();
        if r.corners().iter().any(|p| {
            poly.contains(&Coo3D::from_sph_coo(
                p.ra_deg().to_radians(),
                p.dec_deg().to_radians(),
            ))
        }) {
            return true;
        }
        edges_cross(&self.edges(), &r.edges)
    }
}

fn edges_cross(a: &[(Vec3, Vec3)], b: &[(Vec3, Vec3)]) -> bool {
    a.iter()
        .any(|(p, q)| b.iter().any(|(r, s)| arcs_intersect(*p, *q, *r, *s)))
}

impl Region {
    /// Whether the region and polygon `poly` share a point (MOCs: whether a cell of the
    /// MOC meets the polygon's coverage at the MOC's order).
    pub fn intersects_polygon(&self, poly: &Polygon) -> bool {
        match self {
            Region::Circle(c) => poly.intersects_circle(c),
            Region::Box(b) => poly.intersects_polygon(&b.polygon),
            Region::Polygon(p) => poly.intersects_polygon(p),
            Region::Moc(m) => {
                let cov = polygon_coverage(poly, m.depth_max());
                !m.intersection(&cov).is_empty()
            }
        }
    }
}

/// `moc` as the JSON Aladin and MOCPy read (`{"order":[cells...],...}`).
pub fn moc_json(moc: &Moc) -> String {
    use moc::moc::{CellMOCIterator, RangeMOCIntoIterator, RangeMOCIterator};
    let mut out = Vec::new();
    moc.into_range_moc_iter()
        .cells()
        .to_json_aladin(None, &mut out)
        .expect("writing to memory");
    String::from_utf8(out).expect("the JSON of a MOC is ASCII")
}

fn polygon_contains(poly: &Polygon, p: &SkyPoint) -> bool {
    let c = Coo3D::from_sph_coo(p.ra_deg().to_radians(), p.dec_deg().to_radians());
    poly.hpx_polygon().contains(&c)
}

fn polygon_coverage(poly: &Polygon, order: u8) -> Moc {
    let inside = (
        poly.inside.ra_deg().to_radians(),
        poly.inside.dec_deg().to_radians(),
    );
    Moc::from_polygon_with_control_point(&poly.radians(), inside, order, CellSelection::All)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pt(ra: f64, dec: f64) -> SkyPoint {
        SkyPoint::new(ra, dec).unwrap()
    }

    #[test]
    fn bounding_caps_hold_their_regions() {
        let square = Region::Polygon(
            Polygon::new(vec![
                pt(359.0, 88.0),
                pt(90.0, 88.0),
                pt(179.0, 88.0),
                pt(269.0, 88.0),
            ])
            .unwrap(),
        );
        let (c, r) = square.bounding_cap().unwrap();
        assert!(c.dec_deg() > 89.9 && (r - 2.0).abs() < 0.01, "{c:?} {r}");
        // Points of the interior and along the edges are all inside the cap.
        for ra in 0..360 {
            for dec in [88.0, 89.0, 90.0] {
                let p = pt(ra as f64, dec);
                assert!(!square.contains(&p) || p.separation_deg(&c) <= r + 1e-9);
            }
        }
        let sky_box = Region::Box(SkyBox::new(pt(0.5, -10.0), 3.0, 2.0).unwrap());
        let (c, r) = sky_box.bounding_cap().unwrap();
        assert!(
            c.separation_deg(&pt(0.5, -10.0)) < 0.01 && r > 1.5 && r < 2.0,
            "{c:?} {r}"
        );
        let circle = Region::Circle(Circle::new(pt(10.0, 20.0), 120.0).unwrap());
        assert_eq!(circle.bounding_cap().unwrap().1, 120.0);
    }

    #[test]
    fn intersections_of_polygons_circles_and_ranges() {
        let square = Polygon::new(vec![
            pt(359.0, -1.0),
            pt(1.0, -1.0),
            pt(1.0, 1.0),
            pt(359.0, 1.0),
        ])
        .unwrap();
        let circle = |ra, dec, r| Circle::new(pt(ra, dec), r).unwrap();
        // Centre inside; edge within the radius; just out of reach.
        assert!(square.intersects_circle(&circle(0.0, 0.0, 0.01)));
        assert!(square.intersects_circle(&circle(2.0, 0.0, 1.01)));
        assert!(!square.intersects_circle(&circle(2.0, 0.0, 0.99)));
        // Near a corner the closest point is the vertex, not the edge's great circle.
        let d = pt(1.0, 1.0).separation_deg(&pt(2.0, 2.0));
        assert!(square.intersects_circle(&circle(2.0, 2.0, d + 1e-9)));
        assert!(!square.intersects_circle(&circle(2.0, 2.0, d - 1e-6)));
        // A cross: no vertex of either inside the other, edges cross.
        let wide = Polygon::new(vec![
            pt(357.0, -0.5),
            pt(3.0, -0.5),
            pt(3.0, 0.5),
            pt(357.0, 0.5),
        ])
        .unwrap();
        let tall = Polygon::new(vec![
            pt(359.5, -3.0),
            pt(0.5, -3.0),
            pt(0.5, 3.0),
            pt(359.5, 3.0),
        ])
        .unwrap();
        assert!(wide.intersects_polygon(&tall));
        assert!(square.intersects_polygon(&wide));
        let far = Polygon::new(vec![pt(10.0, 10.0), pt(12.0, 10.0), pt(12.0, 12.0)]).unwrap();
        assert!(!square.intersects_polygon(&far));
        // Ranges, across RA 0 and inside out.
        let r = |a, b, c, d| CoordRange::new(a, b, c, d).unwrap();
        assert!(square.intersects_range(&r(350.0, 10.0, -5.0, 5.0)));
        assert!(square.intersects_range(&r(0.5, 0.6, -0.1, 0.1)));
        assert!(square.intersects_range(&r(0.0, 360.0, 0.5, 0.6)));
        assert!(!square.intersects_range(&r(10.0, 350.0, -5.0, 5.0)));
        assert!(!square.intersects_range(&r(0.0, 360.0, 2.0, 90.0)));
        // A polygon round the pole meets a polar cap range.
        let cap = Polygon::new(vec![pt(0.0, 85.0), pt(120.0, 85.0), pt(240.0, 85.0)]).unwrap();
        assert!(cap.intersects_range(&r(10.0, 20.0, 89.0, 90.0)));
        assert!(!cap.intersects_range(&r(10.0, 20.0, 60.0, 70.0)));
        assert!(CoordRange::new(0.0, 1.0, 5.0, 4.0).is_err());
    }

    #[test]
    fn polygon_either_winding_same_interior() {
        let ccw = Polygon::new(vec![
            pt(10.0, 10.0),
            pt(20.0, 10.0),
            pt(20.0, 20.0),
            pt(10.0, 20.0),
        ])
        .unwrap();
        let cw = Polygon::new(vec![
            pt(10.0, 20.0),
            pt(20.0, 20.0),
            pt(20.0, 10.0),
            pt(10.0, 10.0),
        ])
        .unwrap();
        for poly in [ccw, cw] {
            let r = Region::Polygon(poly.clone());
            assert!(r.contains(&pt(15.0, 15.0)));
            assert!(!r.contains(&pt(25.0, 15.0)));
            assert!(!r.contains(&pt(195.0, -15.0)));
            assert!(poly.area_sr() < 0.05, "{}", poly.area_sr());
            let moc = r.coverage(8).unwrap();
            assert!(moc.coverage_percentage() < 0.01);
            assert!(moc.is_in(15f64.to_radians(), 15f64.to_radians()));
        }
    }

    #[test]
    fn polygon_across_seam_and_pole() {
        let seam = Region::Polygon(
            Polygon::new(vec![
                pt(355.0, -5.0),
                pt(5.0, -5.0),
                pt(5.0, 5.0),
                pt(355.0, 5.0),
            ])
            .unwrap(),
        );
        assert!(seam.contains(&pt(0.0, 0.0)));
        assert!(seam.contains(&pt(359.0, 1.0)));
        assert!(!seam.contains(&pt(180.0, 0.0)));
        let cap = Region::Polygon(
            Polygon::new(vec![pt(0.0, 80.0), pt(120.0, 80.0), pt(240.0, 80.0)]).unwrap(),
        );
        assert!(cap.contains(&pt(77.0, 89.9)));
        assert!(!cap.contains(&pt(77.0, 70.0)));
    }

    #[test]
    fn polygon_rejects_bad_shapes() {
        let bowtie = Polygon::new(vec![
            pt(0.0, 0.0),
            pt(10.0, 10.0),
            pt(10.0, 0.0),
            pt(0.0, 10.0),
        ]);
        assert!(matches!(bowtie, Err(Error::Region(m)) if m.contains("self-intersecting")));
        assert!(Polygon::new(vec![pt(0.0, 0.0), pt(1.0, 1.0)]).is_err());
        assert!(Polygon::new(vec![pt(0.0, 0.0), pt(0.0, 0.0), pt(1.0, 1.0)]).is_err());
        assert!(Polygon::new(vec![pt(0.0, 0.0), pt(180.0, 0.0), pt(1.0, 1.0)]).is_err());
        // Found by fuzzing (stcs): a boundary through (10, 20) twice, with a spike along
        // it, passed the crossing test within rounding and got an area of -20,416 deg².
        let touching = [
            (0.0, 10.0),
            (60.0, 20.0),
            (10.0, 20.0),
            (20.0, 20.0),
            (10.0, 20.0),
        ];
        let e = Polygon::new(touching.iter().map(|(r, d)| pt(*r, *d)).collect());
        assert!(
            matches!(&e, Err(Error::Region(m)) if m.contains("vertices 3 and 5 coincide")),
            "{e:?}"
        );
        // A spike without a repeated vertex: back along the edge it came on.
        let spike = Polygon::new(vec![
            pt(0.0, 0.0),
            pt(10.0, 0.0),
            pt(5.0, 0.0),
            pt(5.0, 5.0),
        ]);
        assert!(
            matches!(&spike, Err(Error::Region(m)) if m.contains("fold back")),
            "{spike:?}"
        );
    }

    #[test]
    fn box_matches_stc_corners() {
        let b = SkyBox::new(pt(0.0, 0.0), 10.0, 4.0).unwrap();
        let r = Region::Box(b.clone());
        assert!(r.contains(&pt(4.9, 0.0)));
        assert!(!r.contains(&pt(5.1, 0.0)));
        assert!(r.contains(&pt(0.0, 1.99)));
        assert!(!r.contains(&pt(0.0, 2.01)));
        // Corner: (1, tan 5, tan 2) normalised.
        let c = b.as_polygon().vertices()[0];
        assert!((c.ra_deg() - 5.0).abs() < 1e-9);
        let expected_dec = (2f64.to_radians().tan()
            / (1.0 + 5f64.to_radians().tan().powi(2)).sqrt())
        .atan()
        .to_degrees();
        assert!((c.dec_deg() - expected_dec).abs() < 1e-9);
        assert!(SkyBox::new(pt(0.0, 0.0), 180.0, 1.0).is_err());
        // A box at the pole is still a proper box.
        let polar = Region::Box(SkyBox::new(pt(0.0, 90.0), 2.0, 2.0).unwrap());
        assert!(polar.contains(&pt(123.0, 89.5)));
    }

    #[test]
    fn circle_coverage_is_superset() {
        let c = Region::Circle(Circle::new(pt(359.99, 89.99), 0.5).unwrap());
        let ranges = c.hpx29_ranges(10).unwrap();
        for (ra, dec) in [(0.0, 90.0), (180.0, 89.6), (45.0, 89.51), (359.99, 89.99)] {
            let h = healpix::hpx29(&pt(ra, dec));
            assert!(ranges.iter().any(|r| r.contains(&h)), "{ra},{dec}");
        }
        assert!(Circle::new(pt(0.0, 0.0), -1.0).is_err());
        assert!(Circle::new(pt(0.0, 0.0), f64::NAN).is_err());
    }
}
