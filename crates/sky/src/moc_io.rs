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

/// Most ranges a MOC read from outside may have.
pub const MOC_MAX_RANGES: usize = 1_000_000;

/// Reads a space MOC from any of its serialisations: MOC 2.0 FITS (NUNIQ or RANGE, any
/// integer width), ASCII (`order/cells ...`) or Aladin's JSON (`{"order": [cells]}`).
/// Orders past 29, cells past the sphere's and more than [`MOC_MAX_RANGES`] ranges are
/// refused.
pub fn moc_parse(bytes: &[u8]) -> Result<Moc> {
    let moc = moc_parse_unchecked(bytes)?;
    if moc.depth_max() > 29 {
        return Err(Error::Moc(format!(
            "order {} is past 29, the deepest HEALPix order",
            moc.depth_max()
        )));
    }
    let end = 12u64 << 58;
    let ranges = moc.moc_ranges();
    if ranges.iter().count() > MOC_MAX_RANGES {
        return Err(Error::Moc(format!(
            "more than {MOC_MAX_RANGES} ranges of cells"
        )));
    }
    if ranges.iter().any(|r| r.start >= r.end || r.end > end) {
        return Err(Error::Moc("a cell is not on the sphere".into()));
    }
    Ok(moc)
}

fn moc_parse_unchecked(bytes: &[u8]) -> Result<Moc> {
    use moc::deser::fits::{MocIdxType, MocQtyType, MocType, from_fits_ivoa};
    use moc::idx::Idx;
    use moc::moc::{CellMOCIntoIterator, CellMOCIterator, CellOrCellRangeMOCIntoIterator};
    use moc::moc::{CellOrCellRangeMOCIterator, RangeMOCIterator};
    use moc::qty::{Hpx, MocQty};

    /// A MOC of narrower indices as one of u64 (the cells' order-29 ranges).
    fn widen<T: Idx, I: RangeMOCIterator<T, Qty = Hpx<T>>>(it: I) -> Moc {
        let depth = it.depth_max();
        let shift = 2 * (Hpx::<u64>::MAX_DEPTH - Hpx::<T>::MAX_DEPTH) as u32;
        let ranges = it
            .map(|r| (r.start.to_u64() << shift)..(r.end.to_u64() << shift))
            .collect();
        RangeMOC::new(depth, MocRanges::new_from(ranges))
    }
    fn space<T: Idx, R: std::io::BufRead>(q: MocQtyType<T, R>) -> Result<Moc> {
        match q {
            MocQtyType::Hpx(MocType::Ranges(r)) => Ok(widen(r)),
            MocQtyType::Hpx(MocType::Cells(c)) => Ok(widen(c.into_cell_moc_iter().ranges())),
            _ => Err(Error::Moc(
                "the FITS file holds a time or frequency MOC, not a space MOC".into(),
            )),
        }
    }
    let head = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(0);
    if bytes.starts_with(b"SIMPLE  =") {
        return match from_fits_ivoa(std::io::Cursor::new(bytes))
            .map_err(|e| Error::Moc(format!("reading a FITS MOC: {e}")))?
        {
            MocIdxType::U16(q) => space(q),
            MocIdxType::U32(q) => space(q),
            MocIdxType::U64(q) => space(q),
        };
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Error::Moc("a MOC is FITS, ASCII or JSON, not binary data".into()))?;
    if bytes.get(head) == Some(&b'{') {
        let cells = moc::deser::json::from_json_aladin::<u64, Hpx<u64>>(text)
            .map_err(|e| Error::Moc(format!("reading a JSON MOC: {e}")))?;
        return Ok(widen(cells.into_cell_moc_iter().ranges()));
    }
    let cells = moc::deser::ascii::from_ascii_ivoa::<u64, Hpx<u64>>(text.trim())
        .map_err(|e| Error::Moc(format!("reading an ASCII MOC: {e}")))?;
    Ok(widen(cells.into_cellcellrange_moc_iter().ranges()))
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn every_serialisation_reads_back() {
        let moc = moc_from_cells(9, [5u64, 6, 7, 100, 3_000_000]).unwrap();
        let fits = moc_fits(&moc, Some("t")).unwrap();
        let ascii = moc_ascii(&moc).unwrap();
        let json = crate::moc_json(&moc);
        for (what, bytes) in [
            ("fits", fits),
            ("ascii", ascii.into_bytes()),
            ("json", json.into_bytes()),
        ] {
            let back = moc_parse(&bytes).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(back.moc_ranges(), moc.moc_ranges(), "{what}");
        }
        // Mixed orders, written by hand.
        let m = moc_parse(b" 3/1-2 4/40 ").unwrap();
        assert_eq!(m.depth_max(), 4);
        assert!(moc_parse(b"3/abc").is_err());
        assert!(moc_parse(&[0u8, 159, 146, 150]).is_err());
    }
}

/// A space-time MOC (MOC 2.0 ST-MOC): time ranges (microseconds since JD 0, TCB as the
/// standard says) each with the sky covered then.
pub type StMoc = moc::moc2d::range::RangeMOC2<u64, moc::qty::Time<u64>, u64, moc::qty::Hpx<u64>>;

/// Microseconds since JD 0 of an MJD (whole days in integers, as a double cannot hold
/// microseconds since JD 0; a part of a microsecond is dropped, as mocpy does).
pub fn mjd_to_us(mjd: f64) -> u64 {
    const DAY_US: u64 = 86_400_000_000;
    let days = mjd.floor();
    let frac = mjd - days + 0.5;
    let (whole, frac) = if frac >= 1.0 {
        (days as i64 + 2_400_001, frac - 1.0)
    } else {
        (days as i64 + 2_400_000, frac)
    };
    (whole.max(0) as u64) * DAY_US + (frac * DAY_US as f64) as u64
}

/// The ST-MOC of `spans` (MJD start, MJD end, the sky covered): times at `time_order`
/// (61 is one microsecond; each lower order doubles the cell), the sky at `space_order`.
pub fn stmoc_from_spans<'a>(
    time_order: u8,
    space_order: u8,
    spans: impl IntoIterator<Item = (f64, f64, &'a Moc)>,
) -> Result<StMoc> {
    let space_order = crate::healpix::check_order(space_order)?;
    if time_order > 61 {
        return Err(Error::Moc(format!(
            "time order {time_order}: time orders are from 0 to 61"
        )));
    }
    let shift = 2 * (29 - space_order as u32);
    let mut cells = Vec::new();
    for (start, end, sky) in spans {
        if !(start.is_finite() && end.is_finite()) || end < start {
            return Err(Error::Moc(format!(
                "time span {start} to {end} (MJD) is not an interval"
            )));
        }
        if start.abs() >= 1e6 || end.abs() >= 1e6 {
            return Err(Error::Moc(format!(
                "time span {start} to {end} (MJD) is not a time"
            )));
        }
        let (t0, t1) = (mjd_to_us(start), mjd_to_us(end) + 1);
        for r in sky.moc_ranges().iter() {
            for c in (r.start >> shift)..(r.end >> shift) {
                cells.push((t0..t1, c));
            }
        }
    }
    Ok(StMoc::from_ranges_and_fixed_depth_cells(
        time_order,
        space_order,
        cells.into_iter(),
        None,
    ))
}

/// The ST-MOC as a MOC 2.0 FITS file, with `name` as its MOCID when given.
pub fn stmoc_fits(moc: &StMoc, name: Option<&str>) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    moc::deser::fits::range_stmoc_to_fits_ivoa(moc, name.map(str::to_string), None, &mut out)
        .map_err(|e| Error::Moc(format!("writing an ST-MOC as FITS: {e}")))?;
    Ok(out)
}

/// Builds the ST-MOC of instants (MJD, and the cell at `space_order` where something was
/// seen then) as they come, in bounded memory: a million at a time are merged in.
pub struct StMocBuilder {
    shift: u32,
    builder: moc::moc2d::builder::maxdepths_cell::FixedDepth2DMocBuilder<
        u64,
        moc::qty::Time<u64>,
        u64,
        moc::qty::Hpx<u64>,
    >,
}

impl StMocBuilder {
    /// Times at `time_order` (61 is a microsecond), cells at `space_order`.
    pub fn new(time_order: u8, space_order: u8) -> Result<Self> {
        use moc::qty::MocQty;
        let space_order = crate::healpix::check_order(space_order)?;
        if time_order > 61 {
            return Err(Error::Moc(format!(
                "time order {time_order}: time orders are from 0 to 61"
            )));
        }
        Ok(Self {
            shift: moc::qty::Time::<u64>::shift_from_depth_max(time_order) as u32,
            builder: moc::moc2d::builder::maxdepths_cell::FixedDepth2DMocBuilder::new(
                time_order,
                space_order,
                Some(1 << 20),
            ),
        })
    }

    /// Adds an instant (an MJD that is not finite or not within a million days of MJD 0,
    /// so not a time, is left out).
    pub fn push(&mut self, mjd: f64, cell: u64) {
        if mjd.is_finite() && mjd.abs() < 1e6 {
            self.builder.push(mjd_to_us(mjd) >> self.shift, cell);
        }
    }

    /// The ST-MOC.
    pub fn finish(self) -> StMoc {
        self.builder.into_moc()
    }
}

/// The ST-MOC of instants (see [`StMocBuilder`]).
pub fn stmoc_from_points(
    time_order: u8,
    space_order: u8,
    points: impl IntoIterator<Item = (f64, u64)>,
) -> Result<StMoc> {
    let mut b = StMocBuilder::new(time_order, space_order)?;
    for (t, c) in points {
        b.push(t, c);
    }
    Ok(b.finish())
}
