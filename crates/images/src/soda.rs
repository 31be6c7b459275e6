//! SODA cutouts: which pixels of an image a sky region (CIRCLE, POLYGON, POS) or a pixel
//! range (PIXELS) asks for.
//!
//! A region's pixel box is the bounding box, in the image's pixels, of points along the
//! region's boundary (converted from ICRS to the image's frame and projected by its WCS),
//! clipped to the image: SODA allows a cutout to hold more than the region, never less.

use std::ops::Range;

use meridian_sky::SkyPoint;

use crate::frames::from_icrs;
use crate::sia::{Pos, parse_pos};
use crate::{Error, PixelBox, Result, Wcs};

/// Points taken along each edge of a polygon, and around a circle.
const EDGE_POINTS: usize = 64;

/// A SODA `CIRCLE` value, `ra dec radius` (degrees, ICRS).
pub fn parse_circle(text: &str) -> Result<Pos> {
    parse_pos("CIRCLE", &format!("CIRCLE {text}"))
}

/// A SODA `POLYGON` value, `ra1 dec1 ra2 dec2 ...` (degrees, ICRS).
pub fn parse_polygon(text: &str) -> Result<Pos> {
    parse_pos("POLYGON", &format!("POLYGON {text}"))
}

fn slerp(a: [f64; 3], b: [f64; 3], t: f64) -> [f64; 3] {
    let v = [0, 1, 2].map(|i| a[i] * (1.0 - t) + b[i] * t);
    let n = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    v.map(|x| x / n)
}

/// 360 points on the circle of `radius_deg` about `centre`, built from vectors so that a
/// centre at a pole is no special case.
pub fn circle_points(centre: SkyPoint, radius_deg: f64) -> Vec<SkyPoint> {
    let c = centre.to_unit_vector();
    // Any unit vector at right angles to the centre, and a third completing the frame.
    let helper = if c[2].abs() < 0.9 {
        [0.0, 0.0, 1.0]
    } else {
        [1.0, 0.0, 0.0]
    };
    let cross = |a: [f64; 3], b: [f64; 3]| {
        [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ]
    };
    let e = cross(helper, c);
    let n = (e[0] * e[0] + e[1] * e[1] + e[2] * e[2]).sqrt();
    let e = e.map(|x| x / n);
    let f = cross(c, e);
    let (sr, cr) = radius_deg.to_radians().sin_cos();
    // The position angle advances one degree a point by rotating (cos, sin) rather than
    // calling the trigonometric functions 360 times.
    let (step_s, step_c) = 1f64.to_radians().sin_cos();
    let (mut sa, mut ca) = (0.0f64, 1.0f64);
    (0..360)
        .map(|_| {
            let p =
                SkyPoint::from_vector([0, 1, 2].map(|i| c[i] * cr + (e[i] * ca + f[i] * sa) * sr));
            (sa, ca) = (sa * step_c + ca * step_s, ca * step_c - sa * step_s);
            p
        })
        .collect()
}

/// ICRS points along the boundary of `pos`.
fn boundary(pos: &Pos) -> Vec<SkyPoint> {
    match pos {
        Pos::Circle(c) => {
            let mut out = vec![c.center()];
            out.extend(circle_points(c.center(), c.radius_deg()));
            out
        }
        Pos::Polygon(p) => {
            let v: Vec<[f64; 3]> = p.vertices().iter().map(SkyPoint::to_unit_vector).collect();
            (0..v.len())
                .flat_map(|i| {
                    let (a, b) = (v[i], v[(i + 1) % v.len()]);
                    (0..EDGE_POINTS).map(move |k| {
                        SkyPoint::from_vector(slerp(a, b, k as f64 / EDGE_POINTS as f64))
                    })
                })
                .collect()
        }
        Pos::Range(r) => {
            let (ra1, ra2, dec1, dec2) = r.limits();
            let span = if ra1 <= ra2 {
                ra2 - ra1
            } else {
                ra2 + 360.0 - ra1
            };
            let n = ((span / 0.25).ceil() as usize).clamp(EDGE_POINTS, 1440);
            let mut out = Vec::new();
            for k in 0..=n {
                let ra = (ra1 + span * k as f64 / n as f64).rem_euclid(360.0);
                for dec in [dec1, dec2] {
                    out.extend(SkyPoint::new(ra, dec).ok());
                }
            }
            for k in 0..=EDGE_POINTS {
                let dec = dec1 + (dec2 - dec1) * k as f64 / EDGE_POINTS as f64;
                for ra in [ra1, ra2] {
                    out.extend(SkyPoint::new(ra.rem_euclid(360.0), dec).ok());
                }
            }
            out
        }
    }
}

/// The pixel box of an image of `size` under `wcs` that holds region `pos` (ICRS), clipped
/// to the image; `None` when the box misses the image. A boundary point that the
/// projection cannot place (beyond a zenithal projection's horizon) widens the box to the
/// whole image.
pub fn region_box(wcs: &Wcs, size: (u64, u64), pos: &Pos) -> Option<PixelBox> {
    let mut lo = [f64::INFINITY; 2];
    let mut hi = [f64::NEG_INFINITY; 2];
    for p in boundary(pos) {
        let (lon, lat) = from_icrs(wcs.frame(), p.ra_deg(), p.dec_deg());
        match wcs.world_to_pixel(lon, lat) {
            Some(px) if px.iter().all(|v| v.is_finite()) => {
                for i in 0..2 {
                    lo[i] = lo[i].min(px[i]);
                    hi[i] = hi[i].max(px[i]);
                }
            }
            _ => {
                lo = [f64::NEG_INFINITY; 2];
                hi = [f64::INFINITY; 2];
                break;
            }
        }
    }
    PixelBox::covering(lo, hi, size)
}

/// A pixel range `x1:x2,y1:y2` (1-based, inclusive; `*` or an empty side for the whole
/// axis, as in `*,100:200`) within an image of `size`, clipped to it. Ranges that miss the
/// image are an error naming `param`.
pub fn parse_pixels(param: &str, text: &str, size: (u64, u64)) -> Result<PixelBox> {
    let t = text.trim().trim_start_matches('[').trim_end_matches(']');
    let bad = || {
        Error::Invalid(format!(
            "{param}: '{text}' is not x1:x2,y1:y2 (pixels, 1-based and inclusive)"
        ))
    };
    let (x, y) = t.split_once(',').ok_or_else(bad)?;
    let range = |s: &str, n: u64, axis: usize| -> Result<Range<u64>> {
        let s = s.trim();
        if s == "*" {
            return Ok(0..n);
        }
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let a: u64 = a.trim().parse().map_err(|_| bad())?;
        let b: u64 = b.trim().parse().map_err(|_| bad())?;
        if a < 1 || b < a {
            return Err(bad());
        }
        if a > n {
            return Err(Error::Invalid(format!(
                "{param}: {a}:{b} does not overlap axis {axis} of the image (1:{n})"
            )));
        }
        Ok(a - 1..b.min(n))
    };
    Ok(PixelBox {
        x: range(x, size.0, 1)?,
        y: range(y, size.1, 2)?,
    })
}
