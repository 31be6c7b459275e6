//! Adaptive partitioning: the HATS rule used by `hats-import`. Starting from a histogram of
//! row counts at the highest order, four sibling cells merge into their parent whenever the
//! parent's total stays within the row threshold and every sibling could merge itself; empty
//! cells make no partition. Cells at the highest order that still exceed the threshold stay
//! as they are (they cannot be split further at that order).

use crate::layout::Pixel;

/// Row counts per cell at a fixed order.
#[derive(Debug, Clone)]
pub struct Histogram {
    order: u8,
    counts: Vec<u32>,
}

impl Histogram {
    /// An empty histogram at `order` (12 * 4^order cells).
    pub fn new(order: u8) -> Self {
        Self {
            order,
            counts: vec![0; meridian_sky::healpix::n_cells(order) as usize],
        }
    }

    /// Order of the cells.
    pub fn order(&self) -> u8 {
        self.order
    }

    /// Counts one row at order-29 index `hpx29`.
    #[inline]
    pub fn add_hpx29(&mut self, hpx29: u64) {
        let cell = meridian_sky::healpix::parent_of_hpx29(hpx29, self.order) as usize;
        self.counts[cell] = self.counts[cell].saturating_add(1);
    }

    /// Adds another histogram of the same order.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a = a.saturating_add(*b);
        }
    }

    /// Total rows counted.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| *c as u64).sum()
    }

    /// Count of a cell at this order.
    pub fn count(&self, pix: u64) -> u64 {
        self.counts[pix as usize] as u64
    }

    /// Partitions with at most `threshold` rows each (where possible), at orders between
    /// `min_order` and the histogram's order, sorted in NESTED order.
    pub fn partitions(&self, threshold: u64, min_order: u8) -> Vec<(Pixel, u64)> {
        let top = self.order;
        let min_order = min_order.min(top);
        // levels[k][pix] = Some(rows) when the cell at order top-k can be one partition.
        let mut sums: Vec<u64> = self.counts.iter().map(|c| *c as u64).collect();
        let mut mergeable: Vec<bool> = sums.iter().map(|s| *s <= threshold).collect();
        let mut levels: Vec<(Vec<u64>, Vec<bool>)> = Vec::new();
        for _ in (min_order..top).rev() {
            let n = sums.len() / 4;
            let mut psums = vec![0u64; n];
            let mut pmerge = vec![false; n];
            for p in 0..n {
                let kids = 4 * p..4 * p + 4;
                psums[p] = sums[kids.clone()].iter().sum();
                pmerge[p] = mergeable[kids].iter().all(|m| *m) && psums[p] <= threshold;
            }
            levels.push((
                std::mem::replace(&mut sums, psums),
                std::mem::replace(&mut mergeable, pmerge),
            ));
        }
        levels.push((sums, mergeable));
        // levels.last() is min_order; walk down from there.
        let mut out = Vec::new();
        let n_levels = levels.len();
        let mut stack: Vec<(u8, u64)> = (0..levels[n_levels - 1].0.len() as u64)
            .rev()
            .map(|p| (min_order, p))
            .collect();
        while let Some((order, pix)) = stack.pop() {
            let (sums, mergeable) = &levels[n_levels - 1 - (order - min_order) as usize];
            let rows = sums[pix as usize];
            if rows == 0 {
                continue;
            }
            if mergeable[pix as usize] || order == top {
                out.push((Pixel { order, pix }, rows));
            } else {
                for child in (4 * pix..4 * pix + 4).rev() {
                    stack.push((order + 1, child));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_sparse_and_splits_dense() {
        let mut h = Histogram::new(3);
        // 10 rows in one order-3 cell, 1 row in another base cell.
        let dense = meridian_sky::healpix::hpx29_range(3, 5).start;
        for _ in 0..10 {
            h.add_hpx29(dense);
        }
        h.add_hpx29(meridian_sky::healpix::hpx29_range(3, 64 * 7).start);
        let parts = h.partitions(4, 0);
        let total: u64 = parts.iter().map(|p| p.1).sum();
        assert_eq!(total, 11);
        assert!(
            parts.contains(&(Pixel { order: 3, pix: 5 }, 10)),
            "{parts:?}"
        );
        assert!(
            parts.contains(&(Pixel { order: 0, pix: 7 }, 1)),
            "{parts:?}"
        );
        assert_eq!(parts.len(), 2);
        // Sorted in NESTED order and disjoint.
        for w in parts.windows(2) {
            assert!(w[0].0.hpx29_range().end <= w[1].0.hpx29_range().start);
        }
    }

    #[test]
    fn min_order_respected() {
        let mut h = Histogram::new(2);
        h.add_hpx29(0);
        let parts = h.partitions(100, 1);
        assert_eq!(parts, vec![(Pixel { order: 1, pix: 0 }, 1)]);
    }
}
