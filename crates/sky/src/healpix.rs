//! HEALPix NESTED indexing (Gorski et al. 2005) through `cdshealpix`.
//!
//! Catalogs carry an order-29 index (`_healpix_29`); a cell at order `k` covers the
//! contiguous order-29 range `[pix << 2(29-k), (pix + 1) << 2(29-k))`, which is what makes
//! partition and row-group pruning a range comparison.

use std::ops::Range;

use crate::{Error, Result, SkyPoint};

/// Deepest order: the one of the `_healpix_29` column.
pub const MAX_ORDER: u8 = 29;

/// Validates a HEALPix order (0..=29).
pub fn check_order(order: u8) -> Result<u8> {
    if order > MAX_ORDER {
        return Err(Error::Healpix(format!("order {order} is outside 0..=29")));
    }
    Ok(order)
}

/// Number of cells at `order`: 12 * 4^order.
pub fn n_cells(order: u8) -> u64 {
    12u64 << (2 * order as u32)
}

/// Order-29 NESTED index of a position.
pub fn hpx29(p: &SkyPoint) -> u64 {
    hash(MAX_ORDER, p)
}

/// NESTED index of a position at `order` (caller guarantees `order <= 29`).
pub fn hash(order: u8, p: &SkyPoint) -> u64 {
    cdshealpix::nested::hash(order, p.ra_deg().to_radians(), p.dec_deg().to_radians())
}

/// Order-29 index from raw degrees without building a [`SkyPoint`]; the caller has
/// validated the coordinates.
pub fn hpx29_deg(ra_deg: f64, dec_deg: f64) -> u64 {
    cdshealpix::nested::hash(MAX_ORDER, ra_deg.to_radians(), dec_deg.to_radians())
}

/// The cell at `order` that contains the order-29 cell `hpx29`.
pub fn parent_of_hpx29(hpx29: u64, order: u8) -> u64 {
    hpx29 >> (2 * (MAX_ORDER - order) as u32)
}

/// The order-29 range covered by cell `pix` at `order`.
pub fn hpx29_range(order: u8, pix: u64) -> Range<u64> {
    let shift = 2 * (MAX_ORDER - order) as u32;
    (pix << shift)..((pix + 1) << shift)
}

/// Centre of a cell.
pub fn center(order: u8, pix: u64) -> SkyPoint {
    let (lon, lat) = cdshealpix::nested::center(order, pix);
    SkyPoint::new(lon.to_degrees(), lat.to_degrees()).expect("cdshealpix returns valid centres")
}

/// The four cells whose centres surround (`ra_deg`, `dec_deg`) at `order`, with their
/// bilinear interpolation weights (summing to 1).
pub fn bilinear(order: u8, ra_deg: f64, dec_deg: f64) -> [(u64, f64); 4] {
    cdshealpix::nested::bilinear_interpolation(order, ra_deg.to_radians(), dec_deg.to_radians())
}

/// The (up to 8) neighbours of a cell at the same order.
pub fn neighbours(order: u8, pix: u64) -> Vec<u64> {
    let mut out = Vec::with_capacity(8);
    cdshealpix::nested::append_bulk_neighbours(order, pix, &mut out);
    out
}

/// The deepest order at which every cone of `radius_deg` lies inside the cell holding its
/// centre and that cell's neighbours (the radius is below the smallest edge-to-opposite-edge
/// width of any cell there); `None` when even the base cells are too small (radius above
/// about 29 degrees). Cross-matching buckets positions at this order or coarser.
pub fn neighbourhood_order(radius_deg: f64) -> Option<u8> {
    let r = radius_deg.to_radians();
    ((0.0..0.5).contains(&r) && cdshealpix::has_best_starting_depth(r))
        .then(|| cdshealpix::best_starting_depth(r))
}

/// Mean cell side at `order` in degrees, sqrt(4 pi / n_cells).
pub fn mean_cell_size_deg(order: u8) -> f64 {
    (4.0 * std::f64::consts::PI / n_cells(order) as f64)
        .sqrt()
        .to_degrees()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_ranges_are_contiguous() {
        let p = SkyPoint::new(123.4, -45.6).unwrap();
        let h = hpx29(&p);
        for order in 0..=MAX_ORDER {
            let pix = parent_of_hpx29(h, order);
            assert_eq!(pix, hash(order, &p));
            assert!(hpx29_range(order, pix).contains(&h));
        }
        assert_eq!(n_cells(0), 12);
        assert_eq!(n_cells(29), 12 * (1u64 << 58));
        assert!(check_order(30).is_err());
    }

    #[test]
    fn neighbourhood_order_shrinks_with_radius() {
        assert_eq!(neighbourhood_order(1.0), Some(5));
        assert_eq!(neighbourhood_order(3.0 / 3600.0), Some(15));
        assert!(neighbourhood_order(1.0 / 3600.0).unwrap() > 15);
        assert_eq!(neighbourhood_order(60.0), None);
        assert_eq!(neighbourhood_order(f64::NAN), None);
    }

    #[test]
    fn neighbours_of_base_cell() {
        let n = neighbours(3, 100);
        assert!(n.len() >= 7 && n.len() <= 8);
        assert!(!n.contains(&100));
    }
}
