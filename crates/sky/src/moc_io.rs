//! MOC 2.0 (IVOA Multi-Order Coverage maps) of sky coverage: built from HEALPix cells or
//! ranges, written as FITS, JSON (Aladin's) and ASCII, through the `moc` crate (CDS's).

use std::ops::Range;

use moc::elemset::range::MocRanges;
use moc::moc::range::RangeMOC;
use moc::moc::{RangeMOCIntoIterator, RangeMOCIterator};

use crate::{Error, Moc, Result};

/// The MOC at `order` of `cells` (HEALPix nested cells at that order, in any order).
pub fn moc_from_cells(order: u8, cells: impl IntoIterator<Item = u64>) -> Result<Moc> {
    let order = crate::healpix::check_order(order)?;
    let shift = 2 * (29 - order as u32);
    let ranges: Vec<Range<u64>> = cells
        .into_iter()
        .map(|c| (c << shift)..((c + 1) << shift))
        .collect();
    Ok(moc_from_ranges(order, ranges))
}

/// The MOC at `order` of order-29 `ranges` (in any order, overlapping or not), which must
/// already be aligned on cells of that order.
pub fn moc_from_ranges(order: u8, ranges: Vec<Range<u64>>) -> Moc {
    RangeMOC::new(order, MocRanges::new_from(ranges))
}

/// The union of `mocs`, at the largest of their orders, in one sort rather than one merge
/// a MOC.
pub fn moc_union<'a>(mocs: impl IntoIterator<Item = &'a Moc>) -> Moc {
    let mut order = 0;
    let mut ranges = Vec::new();
    for m in mocs {
        order = order.max(m.depth_max());
        ranges.extend(m.moc_ranges().iter().cloned());
    }
    moc_from_ranges(order, ranges)
}

/// The MOC as a MOC 2.0 FITS file (a binary table of NUNIQ cells), with `name` as its
/// MOCID when given.
pub fn moc_fits(moc: &Moc, name: Option<&str>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    moc.into_range_moc_iter()
        .to_fits_ivoa(name.map(str::to_string), None, &mut out)
        .map_err(|e| Error::Moc(format!("writing it as FITS: {e}")))?;
    Ok(out)
}

/// The MOC in the MOC 2.0 ASCII serialisation (`order/cells ...`), lines folded at 80.
pub fn moc_ascii(moc: &Moc) -> Result<String> {
    moc.to_ascii()
        .map_err(|e| Error::Moc(format!("writing it as ASCII: {e}")))
}

/// Fraction of the sky the MOC covers.
pub fn moc_sky_fraction(moc: &Moc) -> f64 {
    moc.coverage_percentage()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_to_moc_and_back() {
        // Four siblings at order 3 merge into their parent in the cell listing.
        let moc = moc_from_cells(3, [8, 9, 10, 11, 100, 7]).unwrap();
        let ascii = moc_ascii(&moc).unwrap();
        assert!(ascii.starts_with("2/2"), "{ascii}");
        assert!(ascii.contains("3/7 100"), "{ascii}");
        let fits = moc_fits(&moc, Some("test")).unwrap();
        assert_eq!(fits.len() % 2880, 0);
        assert!(fits.starts_with(b"SIMPLE  ="));
        let json: String = crate::moc_json(&moc).split_whitespace().collect();
        assert!(
            json.contains("\"2\":[2]") && json.contains("\"3\":[7,100]"),
            "{json}"
        );
        let union = moc_union([&moc, &moc_from_cells(4, [0]).unwrap()]);
        assert_eq!(union.depth_max(), 4);
        assert!((moc_sky_fraction(&union) - 6.0 / 768.0 - 1.0 / 3072.0).abs() < 1e-12);
    }
}
