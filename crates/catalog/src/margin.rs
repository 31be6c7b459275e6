//! Margin caches: for each partition, the rows of other partitions that lie within the
//! margin threshold of it, so a cross-match inside one partition loses no pair across its
//! edge. Stored as a HATS catalog of type `margin` with the primary's partitions.
//!
//! For partition Q the candidate area is Q's cells at an order M whose cells are wider than
//! the threshold, grown by one ring of neighbours (a MOC expansion), minus Q. Candidate rows
//! are read with row-group pruning and kept when a cone of the threshold radius around them
//! touches Q (cdshealpix cone coverage at Q's order: a superset, as a margin may be).

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type, Int64Type, SchemaRef};
use meridian_sky::healpix;
use meridian_sky::region::Moc;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;
use parquet::file::statistics::Statistics;
use rayon::prelude::*;

use crate::catalog::overlaps;
use crate::ingest::{HPX_COLUMN, IngestProgress, Stage, set_provenance};
use crate::layout::{Pixel, write_partition_info};
use crate::properties::Properties;
use crate::write::{PartitionWriter, Written, write_summary_files};
use crate::{Error, Result};

pub(crate) struct MarginSpec<'a> {
    pub name: &'a str,
    pub primary: &'a str,
    pub pixels: &'a [Pixel],
    pub schema: &'a SchemaRef,
    pub ra: &'a str,
    pub dec: &'a str,
    pub threshold_arcsec: f64,
    pub props: &'a Arc<WriterProperties>,
}

/// The deepest order whose cells are safely wider than `threshold_deg` (HEALPix cells are
/// at least about half the mean size across).
fn margin_order(threshold_deg: f64) -> u8 {
    (0..=20u8)
        .rev()
        .find(|o| healpix::mean_cell_size_deg(*o) / 2.5 >= threshold_deg)
        .unwrap_or(0)
}

/// Order-29 ranges to search for margin rows of `q`.
fn search_ranges(q: Pixel, order: u8) -> Vec<std::ops::Range<u64>> {
    let cells: Vec<u64> = if order >= q.order {
        let shift = 2 * (order - q.order) as u32;
        ((q.pix << shift)..((q.pix + 1) << shift)).collect()
    } else {
        vec![q.pix >> (2 * (q.order - order) as u32)]
    };
    let moc = Moc::from_fixed_depth_cells(order, cells.into_iter(), None);
    let own = Moc::from_fixed_depth_cells(q.order, std::iter::once(q.pix), None);
    moc.expanded()
        .minus(&own)
        .moc_ranges()
        .iter()
        .cloned()
        .collect()
}

/// Whether a cone of `radius_rad` around (lon, lat) in radians touches pixel `q`.
fn cone_touches(lon: f64, lat: f64, radius_rad: f64, q: Pixel) -> bool {
    let bmoc = cdshealpix::nested::cone_coverage_approx_custom(q.order, 2, lon, lat, radius_rad);
    (&bmoc).into_iter().any(|c| {
        if c.depth >= q.order {
            c.hash >> (2 * (c.depth - q.order) as u32) == q.pix
        } else {
            q.pix >> (2 * (q.order - c.depth) as u32) == c.hash
        }
    })
}

/// Builds the margin catalog in `margin_dir` from the partitions in `main_dir`; returns
/// the number of margin rows.
pub(crate) fn build(
    main_dir: &Path,
    margin_dir: &Path,
    spec: &MarginSpec,
    progress: &(dyn Fn(&IngestProgress) + Sync),
) -> Result<u64> {
    std::fs::create_dir_all(margin_dir).map_err(|e| Error::io(margin_dir, e))?;
    let threshold_deg = spec.threshold_arcsec / 3600.0;
    let order = margin_order(threshold_deg);
    let done = AtomicU64::new(0);
    let total = spec.pixels.len() as u64;
    let results: Vec<Option<Written>> = spec
        .pixels
        .par_iter()
        .map(|q| {
            let w = margin_of(
                main_dir,
                margin_dir,
                spec,
                *q,
                order,
                threshold_deg.to_radians(),
            );
            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
            progress(&IngestProgress {
                stage: Stage::Margin,
                rows: 0,
                bytes: (0, 0),
                units: (d, total),
            });
            w
        })
        .collect::<Result<_>>()?;
    let written: Vec<Written> = results.into_iter().flatten().collect();
    let pixels: Vec<Pixel> = written.iter().map(|w| w.pixel).collect();
    let rows: u64 = written.iter().map(|w| w.rows).sum();
    write_summary_files(margin_dir, spec.schema, spec.props, &written)?;
    write_partition_info(margin_dir, &pixels)?;
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
    p.set("hats_margin_threshold", spec.threshold_arcsec);
    p.set(
        "hats_order",
        pixels.iter().map(|p| p.order).max().unwrap_or(0),
    );
    set_provenance(&mut p);
    p.write(&margin_dir.join("hats.properties"), "HATS catalog")?;
    p.write(&margin_dir.join("properties"), "HATS catalog")?;
    Ok(rows)
}

fn margin_of(
    main_dir: &Path,
    margin_dir: &Path,
    spec: &MarginSpec,
    q: Pixel,
    order: u8,
    radius_rad: f64,
) -> Result<Option<Written>> {
    let ranges = search_ranges(q, order);
    let mut batches = Vec::new();
    for p in spec
        .pixels
        .iter()
        .filter(|p| **p != q && overlaps(&ranges, &p.hpx29_range()))
    {
        let path = p.path_in(main_dir);
        let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(f).map_err(|e| Error::parquet(&path, e))?;
        let md = builder.metadata().clone();
        let groups: Vec<usize> = (0..md.num_row_groups())
            .filter(|i| match md.row_group(*i).column(0).statistics() {
                Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                    (Some(lo), Some(hi)) => overlaps(&ranges, &(*lo as u64..*hi as u64 + 1)),
                    _ => true,
                },
                _ => true,
            })
            .collect();
        if groups.is_empty() {
            continue;
        }
        let reader = builder
            .with_row_groups(groups)
            .build()
            .map_err(|e| Error::parquet(&path, e))?;
        for b in reader {
            let b = b?;
            let keep = select(&b, spec, &ranges, q, radius_rad)?;
            let b = arrow::compute::filter_record_batch(&b, &keep)?;
            if b.num_rows() > 0 {
                batches.push(b);
            }
        }
    }
    if batches.is_empty() {
        return Ok(None);
    }
    let all = arrow::compute::concat_batches(spec.schema, &batches)?;
    let idx = arrow::compute::sort_to_indices(all.column(0), None, None)?;
    let sorted = arrow::compute::take_record_batch(&all, &idx)?;
    let mut w = PartitionWriter::create(margin_dir, q, spec.schema, spec.props)?;
    w.write(&sorted)?;
    Ok(Some(w.close()?))
}

fn select(
    b: &RecordBatch,
    spec: &MarginSpec,
    ranges: &[std::ops::Range<u64>],
    q: Pixel,
    radius_rad: f64,
) -> Result<BooleanArray> {
    let hpx = b.column(0).as_primitive::<Int64Type>();
    let ra = arrow::compute::cast(
        b.column_by_name(spec.ra).expect("schema has ra"),
        &DataType::Float64,
    )?;
    let dec = arrow::compute::cast(
        b.column_by_name(spec.dec).expect("schema has dec"),
        &DataType::Float64,
    )?;
    let (ra, dec) = (
        ra.as_primitive::<Float64Type>(),
        dec.as_primitive::<Float64Type>(),
    );
    Ok((0..b.num_rows())
        .map(|i| {
            let h = hpx.value(i) as u64;
            Some(
                overlaps(ranges, &(h..h + 1))
                    && cone_touches(
                        ra.value(i).to_radians(),
                        dec.value(i).to_radians(),
                        radius_rad,
                        q,
                    ),
            )
        })
        .collect())
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
    fn cone_near_edge_touches_neighbour() {
        // A point just across the boundary between two order-3 cells.
        let q = Pixel { order: 3, pix: 100 };
        let (lon, lat) = cdshealpix::nested::vertices(3, 100)[0];
        assert!(cone_touches(lon + 1e-6, lat, 1e-4, q));
        let far = cdshealpix::nested::center(3, 500);
        assert!(!cone_touches(far.0, far.1, 1e-4, q));
    }
}
