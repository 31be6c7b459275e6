//! RA/Dec boxes that cover every point within a radius of a set of positions: the region a
//! cross-match partner can lie in, as ranges a columnar reader can compare with the
//! minimum and maximum of a block of rows (Parquet row-group and page statistics).
//!
//! Positions are grouped by HEALPix cell (an order coarse enough that the groups stay
//! few), each group gives the box of its positions widened by the radius, and the boxes are
//! merged pairwise, cheapest union first, down to the number asked for.

use std::collections::HashMap;

/// A range of RA and one of Dec, degrees, both closed; RA within [0, 360], never across
/// RA = 0 (a box across it is two boxes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RaDecBox {
    /// Lowest and highest RA, degrees (0 <= lo <= hi <= 360).
    pub ra_deg: [f64; 2],
    /// Lowest and highest Dec, degrees (-90 <= lo <= hi <= 90).
    pub dec_deg: [f64; 2],
}

impl RaDecBox {
    /// Whether the box spans every RA (then only its Dec range restricts).
    pub fn all_ra(&self) -> bool {
        self.ra_deg[0] <= 0.0 && self.ra_deg[1] >= 360.0
    }

    /// Solid angle, square degrees.
    pub fn area_deg2(&self) -> f64 {
        let [lo, hi] = self.dec_deg.map(f64::to_radians);
        (self.ra_deg[1] - self.ra_deg[0]) * (hi.sin() - lo.sin()).to_degrees()
    }

    fn union(&self, other: &RaDecBox) -> RaDecBox {
        RaDecBox {
            ra_deg: [
                self.ra_deg[0].min(other.ra_deg[0]),
                self.ra_deg[1].max(other.ra_deg[1]),
            ],
            dec_deg: [
                self.dec_deg[0].min(other.dec_deg[0]),
                self.dec_deg[1].max(other.dec_deg[1]),
            ],
        }
    }
}

/// The whole sky, square degrees.
const SKY_DEG2: f64 = 41_252.96;

/// Extent of one group of positions: Dec range, and RA range both as [0, 360) and as
/// (-180, 180] (whichever is narrower is used, so a group across RA = 0 stays narrow).
#[derive(Clone, Copy)]
struct Extent {
    dec: [f64; 2],
    ra: [f64; 2],
    ra_signed: [f64; 2],
}

impl Extent {
    fn of(ra: f64, dec: f64) -> Self {
        let signed = if ra > 180.0 { ra - 360.0 } else { ra };
        Extent {
            dec: [dec, dec],
            ra: [ra, ra],
            ra_signed: [signed, signed],
        }
    }

    fn add(&mut self, o: &Extent) {
        let widen = |a: &mut [f64; 2], b: &[f64; 2]| {
            a[0] = a[0].min(b[0]);
            a[1] = a[1].max(b[1]);
        };
        widen(&mut self.dec, &o.dec);
        widen(&mut self.ra, &o.ra);
        widen(&mut self.ra_signed, &o.ra_signed);
    }

    /// The boxes (one, or two across RA = 0) holding every point within `r` degrees of
    /// the group's positions.
    fn boxes(&self, r: f64, out: &mut Vec<RaDecBox>) {
        let dec = [(self.dec[0] - r).max(-90.0), (self.dec[1] + r).min(90.0)];
        let full = |out: &mut Vec<RaDecBox>| {
            out.push(RaDecBox {
                ra_deg: [0.0, 360.0],
                dec_deg: dec,
            })
        };
        // Widest RA step of a cone of radius r centred within the Dec range: at the Dec
        // farthest from the equator, asin(sin r / cos dec); the cone holds a pole past it.
        let far = self.dec[0].abs().max(self.dec[1].abs()).to_radians();
        let s = r.to_radians().sin() / far.cos();
        if s.is_nan() || s >= 1.0 {
            return full(out);
        }
        let dra = s.asin().to_degrees();
        let [lo, hi] = if self.ra[1] - self.ra[0] <= self.ra_signed[1] - self.ra_signed[0] {
            self.ra
        } else {
            self.ra_signed
        };
        let (lo, hi) = (lo - dra, hi + dra);
        if hi - lo >= 360.0 {
            return full(out);
        }
        let mut push = |a: f64, b: f64| {
            out.push(RaDecBox {
                ra_deg: [a, b],
                dec_deg: dec,
            })
        };
        if lo < 0.0 {
            push(lo + 360.0, 360.0);
            push(0.0, hi.max(0.0));
        } else if hi > 360.0 {
            push(lo, 360.0);
            push(0.0, hi - 360.0);
        } else {
            push(lo, hi);
        }
    }
}

/// At most this many groups are boxed before merging (the merge compares every pair).
const MAX_GROUPS: usize = 64;

/// Boxes, at most `max_boxes` (at least 2), holding every point within `radius_deg` of
/// the valid positions among `points_deg` (RA, Dec in degrees; NaN, infinite or |Dec| > 90
/// skipped). `None` when they would cover more than half the sky, where a reader would
/// prune little; an empty list when there are no valid positions (nothing can be within
/// the radius).
pub fn covering_boxes(
    points_deg: impl IntoIterator<Item = (f64, f64)>,
    radius_deg: f64,
    max_boxes: usize,
) -> Option<Vec<RaDecBox>> {
    // The radius a hair wider, so that rounding never leaves out a point on the edge.
    let r = radius_deg.max(0.0) * (1.0 + 1e-6) + 1e-9;
    let start_order: u8 = 6;
    let mut groups: HashMap<u64, Extent> = HashMap::new();
    let layer = cdshealpix::nested::get(start_order);
    for (ra, dec) in points_deg {
        if !ra.is_finite() || !(-90.0..=90.0).contains(&dec) {
            continue;
        }
        let ra = ra.rem_euclid(360.0);
        let e = Extent::of(ra, dec);
        groups
            .entry(layer.hash(ra.to_radians(), dec.to_radians()))
            .and_modify(|g| g.add(&e))
            .or_insert(e);
    }
    // Coarser cells until few enough groups remain.
    let mut order = start_order;
    while groups.len() > MAX_GROUPS && order > 0 {
        let mut parents: HashMap<u64, Extent> = HashMap::new();
        for (cell, e) in groups {
            parents
                .entry(cell >> 2)
                .and_modify(|g| g.add(&e))
                .or_insert(e);
        }
        groups = parents;
        order -= 1;
    }
    let mut cells: Vec<(u64, Extent)> = groups.into_iter().collect();
    cells.sort_unstable_by_key(|c| c.0);
    let mut boxes = Vec::with_capacity(cells.len() * 2);
    for (_, e) in &cells {
        e.boxes(r, &mut boxes);
    }
    // Merge the pair whose union adds the least area, until few enough remain.
    let max_boxes = max_boxes.max(2);
    while boxes.len() > max_boxes {
        let mut best = (f64::INFINITY, 0, 1);
        for i in 0..boxes.len() {
            for j in i + 1..boxes.len() {
                let u = boxes[i].union(&boxes[j]);
                let cost = u.area_deg2() - boxes[i].area_deg2() - boxes[j].area_deg2();
                if cost < best.0 {
                    best = (cost, i, j);
                }
            }
        }
        let (_, i, j) = best;
        let u = boxes[i].union(&boxes[j]);
        boxes[i] = u;
        boxes.swap_remove(j);
    }
    let area: f64 = boxes.iter().map(RaDecBox::area_deg2).sum();
    (area <= SKY_DEG2 / 2.0).then_some(boxes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::angular_separation_deg;
    use rand::{Rng, SeedableRng};

    /// The point `r` degrees from (`ra`, `dec`) at position angle `pa` (radians).
    fn offset(ra: f64, dec: f64, r: f64, pa: f64) -> (f64, f64) {
        let (d, r) = (dec.to_radians(), r.to_radians());
        let dec2 = (d.sin() * r.cos() + d.cos() * r.sin() * pa.cos()).asin();
        let dra = (pa.sin() * r.sin() * d.cos()).atan2(r.cos() - d.sin() * dec2.sin());
        ((ra + dra.to_degrees()).rem_euclid(360.0), dec2.to_degrees())
    }

    fn inside(boxes: &[RaDecBox], ra: f64, dec: f64) -> bool {
        let ra = ra.rem_euclid(360.0);
        boxes.iter().any(|b| {
            (b.dec_deg[0]..=b.dec_deg[1]).contains(&dec)
                && (b.ra_deg[0]..=b.ra_deg[1]).contains(&ra)
        })
    }

    /// Every point within the radius of a position lies in a box: positions near the
    /// poles, across RA = 0, in clusters and alone; partners on the radius's edge.
    #[test]
    fn every_partner_within_the_radius_is_covered() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let clusters = [
            (0.2, 10.0),
            (359.9, -5.0),
            (120.0, 89.7),
            (300.0, -89.95),
            (45.0, 60.0),
            (180.0, 0.0),
        ];
        for radius in [1.0 / 3600.0, 0.01, 0.5, 3.0] {
            let mut pts = Vec::new();
            for &(ra, dec) in &clusters {
                for _ in 0..200 {
                    let r: f64 = rng.random_range(-1.0..1.0);
                    let d: f64 = rng.random_range(-1.0..1.0);
                    pts.push((
                        (ra + r).rem_euclid(360.0),
                        (dec + d * 0.3).clamp(-90.0, 90.0),
                    ));
                }
            }
            let boxes = covering_boxes(pts.iter().copied(), radius, 8).expect("a small region");
            assert!(boxes.len() <= 8);
            for &(ra, dec) in &pts {
                for k in 0..64 {
                    // A partner just inside the radius, in 64 directions.
                    let pa = std::f64::consts::TAU * k as f64 / 64.0;
                    let (qra, qdec) = offset(ra, dec, radius * 0.999_999, pa);
                    assert!(angular_separation_deg(ra, dec, qra, qdec) <= radius * 1.000_001);
                    assert!(
                        inside(&boxes, qra, qdec),
                        "partner ({qra}, {qdec}) of ({ra}, {dec}) at {radius} deg outside {boxes:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_visit_field_gives_a_small_region_and_the_sky_none() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let field: Vec<(f64, f64)> = (0..10_000)
            .map(|_| {
                (
                    150.0 + rng.random_range(-1.75..1.75),
                    2.0 + rng.random_range(-1.75..1.75),
                )
            })
            .collect();
        let boxes = covering_boxes(field, 2.0 / 3600.0, 16).unwrap();
        let area: f64 = boxes.iter().map(RaDecBox::area_deg2).sum();
        assert!(area < 20.0, "{area} deg2 in {boxes:?}");
        let sky: Vec<(f64, f64)> = (0..10_000)
            .map(|_| {
                (
                    rng.random_range(0.0..360.0),
                    rng.random_range(-1.0f64..1.0).asin().to_degrees(),
                )
            })
            .collect();
        assert!(covering_boxes(sky, 1.0 / 3600.0, 16).is_none());
        assert_eq!(
            covering_boxes([(f64::NAN, 0.0), (1.0, 95.0)], 0.1, 16),
            Some(vec![])
        );
    }
}
