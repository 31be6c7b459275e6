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
