//! Margin caches: for each partition, the rows of other partitions that lie within the
//! margin threshold of it, so that a cross-match done partition by partition loses no pair
//! across an edge. Stored as a HATS catalog of type `margin` with the primary's pixels.
//!
//! Margins are found while partitions are written, from the rows already in memory:
//! - the margin order M is the deepest whose cells are safely wider than the threshold, so a
//!   disc of the threshold radius around a point of an order-M cell stays inside that cell
//!   and its eight neighbours;
//! - a row whose order-M cell is not on the border of its partition (the cell's x and y in
//!   the partition's NESTED sub-grid, a Morton code, are not at an edge) has all those
//!   neighbours in its own partition and cannot be in any margin: two bit operations;
//! - a border row gets a cdshealpix cone coverage of the threshold radius; every other
//!   partition that coverage touches receives the row (a superset, as a margin may be).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, UInt32Array};
use arrow::compute::SortColumn;
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use meridian_sky::healpix;
use parquet::file::properties::WriterProperties;
use rayon::prelude::*;

use crate::ingest::{HPX_COLUMN, Spill, read_ipc, set_provenance};
use crate::layout::{Pixel, write_partition_info};
use crate::properties::Properties;
use crate::write::{PartitionWriter, Written, write_summary_files};
use crate::{Error, Result};

/// The deepest order whose cells are safely wider than `threshold_deg` (HEALPix cells are
/// at least about half the mean size across).
pub(crate) fn margin_order(threshold_deg: f64) -> u8 {
    (0..=20u8)
        .rev()
        .find(|o| healpix::mean_cell_size_deg(*o) / 2.5 >= threshold_deg)
        .unwrap_or(0)
}

/// Keeps the even bits of `x`, packed (de-interleaves one coordinate of a Morton code).
fn compact_even_bits(mut x: u64) -> u64 {
    x &= 0x5555_5555_5555_5555;
    x = (x | (x >> 1)) & 0x3333_3333_3333_3333;
    x = (x | (x >> 2)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x >> 4)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x >> 8)) & 0x0000_FFFF_0000_FFFF;
    (x | (x >> 16)) & 0x0000_0000_FFFF_FFFF
}

/// Whether order-29 index `hpx29` lies in an order-`m` cell on the border of `p`.
fn on_border(hpx29: u64, p: Pixel, m: u8) -> bool {
    if p.order >= m {
        return true;
    }
    let levels = (m - p.order) as u32;
    let cell = hpx29 >> (2 * (29 - m as u32));
    let local = cell & ((1u64 << (2 * levels)) - 1);
    let (x, y) = (compact_even_bits(local), compact_even_bits(local >> 1));
    let last = (1u64 << levels) - 1;
    x == 0 || y == 0 || x == last || y == last
}

/// Collects margin rows while partitions are written, then writes the margin catalog.
pub(crate) struct MarginBuilder {
    pixels: Arc<Vec<Pixel>>,
    order: u8,
    coverage_depth: u8,
    radius_rad: f64,
    threshold_arcsec: f64,
    schema: SchemaRef,
    tagged: SchemaRef,
    spill: Mutex<Spill>,
    ra_idx: usize,
    dec_idx: usize,
}

pub(crate) struct MarginSpec<'a> {
    pub name: &'a str,
    pub primary: &'a str,
    pub ra: &'a str,
    pub dec: &'a str,
    pub props: &'a Arc<WriterProperties>,
}

impl MarginBuilder {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        pixels: Arc<Vec<Pixel>>,
        threshold_arcsec: f64,
        schema: SchemaRef,
        ra_idx: usize,
        dec_idx: usize,
        spill_dir: &Path,
        spill_order: u8,
        budget: u64,
    ) -> Result<Self> {
        let threshold_deg = threshold_arcsec / 3600.0;
        let order = margin_order(threshold_deg);
        let mut fields = vec![Arc::new(Field::new(
            "_margin_target",
            DataType::Int64,
            false,
        ))];
        fields.extend(schema.fields().iter().cloned());
        let tagged: SchemaRef = Arc::new(Schema::new(fields));
        let dir = spill_dir.join("margin");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        Ok(Self {
            pixels,
            order,
            coverage_depth: (order + 3).min(29),
            radius_rad: threshold_deg.to_radians(),
            threshold_arcsec,
            schema,
            spill: Mutex::new(Spill::new(dir, spill_order, tagged.clone(), budget)),
            tagged,
            ra_idx,
            dec_idx,
        })
    }

    /// Partitions other than `own` that a disc of the threshold around (ra, dec) touches.
    fn targets(&self, ra_deg: f64, dec_deg: f64, own: usize, out: &mut Vec<usize>) {
        out.clear();
        let bmoc = cdshealpix::nested::cone_coverage_approx_custom(
            self.coverage_depth,
            2,
            ra_deg.to_radians(),
            dec_deg.to_radians(),
            self.radius_rad,
        );
        for cell in &bmoc {
            let r = healpix::hpx29_range(cell.depth, cell.hash);
            let mut i = self
                .pixels
                .partition_point(|p| p.hpx29_range().end <= r.start);
            while i < self.pixels.len() && self.pixels[i].hpx29_range().start < r.end {
                if i != own && !out.contains(&i) {
                    out.push(i);
                }
                i += 1;
            }
        }
    }

    /// Finds the margin rows in `rows` (all in partition `own`, sorted by `_healpix_29`).
    pub(crate) fn collect(&self, own: usize, rows: &RecordBatch) -> Result<()> {
        let p = self.pixels[own];
        let hpx = rows.column(0).as_primitive::<Int64Type>();
        let ra = arrow::compute::cast(rows.column(self.ra_idx), &DataType::Float64)?;
        let dec = arrow::compute::cast(rows.column(self.dec_idx), &DataType::Float64)?;
        let (ra, dec) = (
            ra.as_primitive::<Float64Type>(),
            dec.as_primitive::<Float64Type>(),
        );
        let mut take = Vec::new();
        let mut tags = Vec::new();
        let mut targets = Vec::new();
        for (i, h) in hpx.values().iter().enumerate() {
            if !on_border(*h as u64, p, self.order) {
                continue;
            }
            self.targets(
                ra.value(i).rem_euclid(360.0),
                dec.value(i),
                own,
                &mut targets,
            );
            for t in &targets {
                take.push(i as u32);
                tags.push(self.pixels[*t].hpx29_range().start as i64);
            }
        }
        if take.is_empty() {
            return Ok(());
        }
        let picked = arrow::compute::take_record_batch(rows, &UInt32Array::from(take))?;
        let mut cols: Vec<ArrayRef> = vec![Arc::new(Int64Array::from(tags))];
        cols.extend(picked.columns().iter().cloned());
        let batch = RecordBatch::try_new(self.tagged.clone(), cols)?;
        self.spill.lock().expect("margin spill lock").push(batch)
    }

    /// Writes the margin catalog into `dir`; returns its row count.
    pub(crate) fn finish(self, dir: &Path, spec: &MarginSpec) -> Result<u64> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let buckets: BTreeMap<u64, std::path::PathBuf> = self
            .spill
            .into_inner()
            .expect("margin spill lock")
            .finish()?;
        let by_start: BTreeMap<u64, Pixel> = self
            .pixels
            .iter()
            .map(|p| (p.hpx29_range().start, *p))
            .collect();
        let schema = self.schema.clone();
        let written: Vec<Written> = buckets
            .par_iter()
            .map(|(_, path)| -> Result<Vec<Written>> {
                let batches = read_ipc(path)?;
                let all = arrow::compute::concat_batches(&self.tagged, &batches)?;
                let order = arrow::compute::lexsort_to_indices(
                    &[
                        SortColumn {
                            values: all.column(0).clone(),
                            options: None,
                        },
                        SortColumn {
                            values: all.column(1).clone(),
                            options: None,
                        },
                    ],
                    None,
                )?;
                let sorted = arrow::compute::take_record_batch(&all, &order)?;
                let tags = sorted
                    .column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .clone();
                let rows = sorted.project(&(1..sorted.num_columns()).collect::<Vec<_>>())?;
                let mut out = Vec::new();
                let mut start = 0;
                while start < tags.len() {
                    let tag = tags[start];
                    let end = start + tags[start..].partition_point(|t| *t == tag);
                    let pixel = by_start[&(tag as u64)];
                    let mut w = PartitionWriter::create(dir, pixel, &schema, spec.props)?;
                    w.write(&rows.slice(start, end - start).with_schema(schema.clone())?)?;
                    out.push(w.close()?);
                    start = end;
                }
                Ok(out)
            })
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .flatten()
            .collect();
        let mut written = written;
        written.sort_by_key(|w| w.pixel.hpx29_range().start);
        let pixels: Vec<Pixel> = written.iter().map(|w| w.pixel).collect();
        let rows: u64 = written.iter().map(|w| w.rows).sum();
        write_summary_files(dir, &self.schema, spec.props, &written)?;
        write_partition_info(dir, &pixels)?;
        let mut p = Properties::default();
        p.set("obs_collection", spec.name);
        p.set("dataproduct_type", "margin");
        p.set("hats_nrows", rows);
        p.set("hats_col_ra", spec.ra);
        p.set("hats_col_dec", spec.dec);
        p.set("hats_col_healpix", HPX_COLUMN);
        p.set("hats_col_healpix_order", 29);
        p.set("hats_npix_suffix", ".parquet");
        p.set("hats_primary_table_url", spec.primary);
        p.set("hats_margin_threshold", self.threshold_arcsec);
        p.set(
            "hats_order",
            pixels.iter().map(|p| p.order).max().unwrap_or(0),
        );
        set_provenance(&mut p);
        p.write(&dir.join("hats.properties"), "HATS catalog")?;
        p.write(&dir.join("properties"), "HATS catalog")?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_for_ten_arcsec() {
        let o = margin_order(10.0 / 3600.0);
        assert!(healpix::mean_cell_size_deg(o) >= 2.5 * 10.0 / 3600.0);
        assert!(healpix::mean_cell_size_deg(o + 1) < 2.5 * 10.0 / 3600.0);
    }

    #[test]
    fn border_cells_by_morton_code() {
        let p = Pixel { order: 2, pix: 7 };
        // At order 4 the partition has a 4x4 grid of cells: 12 on the border, 4 inside.
        let border = (0..16u64)
            .filter(|sub| on_border(healpix::hpx29_range(4, (7 << 4) | sub).start, p, 4))
            .count();
        assert_eq!(border, 12);
        // Same order: everything is border.
        assert!(on_border(healpix::hpx29_range(2, 7).start, p, 2));
    }

    #[test]
    fn interior_cells_have_all_neighbours_inside() {
        // Independent check with cdshealpix neighbours: a non-border cell's neighbours all
        // belong to the partition.
        let p = Pixel { order: 3, pix: 300 };
        let m = 7;
        let shift = 2 * (m - p.order) as u32;
        for sub in 0..(1u64 << shift) {
            let cell = (p.pix << shift) | sub;
            let inside = !on_border(healpix::hpx29_range(m, cell).start, p, m);
            let all_in = healpix::neighbours(m, cell)
                .iter()
                .all(|n| n >> shift == p.pix);
            assert_eq!(inside, all_in, "cell {cell}");
        }
    }
}
