//! Density maps: a HiPS image of a catalog's source counts per HEALPix cell, from one pass
//! over its partitions. Each pixel of a tile of order `k` is the count of rows in its cell
//! of order `k + log2(width)`; lower orders sum their children, so every order shows the
//! same sky at its own resolution. FITS tiles hold the counts; PNG tiles a logarithmic
//! grey scale (transparent where a cell is empty) for viewers.
//!
//! Instead of counts, a map may hold an aggregate of a numeric column per cell (mean, sum,
//! minimum or maximum of its finite values; NaN where a cell has none), with a linear grey
//! scale between the deepest order's smallest and largest values.

use std::path::Path;

use meridian_catalog::{Catalog, CellStats};
use rayon::prelude::*;

use crate::tile::{fits_image, png_image, write_new};
use crate::{Error, Properties, Result, TileGeometry, tile_path};

/// How to build a density map.
#[derive(Debug, Clone)]
pub struct DensityOptions {
    /// The HiPS's name (its directory and its ID's last part).
    pub name: String,
    /// Deepest tile order (3 or more: Aladin needs order 3).
    pub order: u8,
    /// Tile width in pixels.
    pub tile_width: usize,
    /// What each pixel holds.
    pub aggregate: Aggregate,
}

/// What a density map's pixels hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Aggregate {
    /// Rows per cell.
    Count,
    /// Mean of a column's finite values.
    Mean(String),
    /// Sum of a column's finite values.
    Sum(String),
    /// Smallest of a column's values.
    Min(String),
    /// Largest of a column's values.
    Max(String),
}

impl Aggregate {
    /// `count`, or `mean|sum|min|max` of `column`.
    pub fn parse(kind: &str, column: Option<&str>) -> Result<Self> {
        let col = || {
            column
                .map(str::to_string)
                .ok_or_else(|| Error::Invalid(format!("aggregate '{kind}' needs a column")))
        };
        Ok(match kind {
            "count" => Aggregate::Count,
            "mean" => Aggregate::Mean(col()?),
            "sum" => Aggregate::Sum(col()?),
            "min" => Aggregate::Min(col()?),
            "max" => Aggregate::Max(col()?),
            other => {
                return Err(Error::Invalid(format!(
                    "aggregate '{other}' is not count, mean, sum, min or max"
                )));
            }
        })
    }

    fn column(&self) -> Option<&str> {
        match self {
            Aggregate::Count => None,
            Aggregate::Mean(c) | Aggregate::Sum(c) | Aggregate::Min(c) | Aggregate::Max(c) => {
                Some(c)
            }
        }
    }

    /// The pixel value of a cell.
    fn value(&self, s: &CellStats) -> f64 {
        let none = s.values == 0;
        match self {
            Aggregate::Count => s.rows as f64,
            _ if none => f64::NAN,
            Aggregate::Mean(_) => s.sum / s.values as f64,
            Aggregate::Sum(_) => s.sum,
            Aggregate::Min(_) => s.min,
            Aggregate::Max(_) => s.max,
        }
    }

    fn describe(&self) -> String {
        match self {
            Aggregate::Count => "rows".into(),
            Aggregate::Mean(c) => format!("mean of {c}"),
            Aggregate::Sum(c) => format!("sum of {c}"),
            Aggregate::Min(c) => format!("smallest {c}"),
            Aggregate::Max(c) => format!("largest {c}"),
        }
    }
}

/// What a build made.
#[derive(Debug, Clone, Default)]
pub struct DensityReport {
    /// Rows counted.
    pub rows: u64,
    /// Tiles written (each as FITS and PNG).
    pub tiles: usize,
    /// Non-empty cells at the deepest pixel order.
    pub cells: usize,
}

/// Finest order a density map's pixels may have.
const MAX_PIXEL_ORDER: u8 = 20;

/// Sums `counts` (cell, rows; by cell) into the cells `levels` orders coarser.
fn coarsen(counts: &[(u64, u64)], levels: u8) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(c, n) in counts {
        let p = c >> (2 * levels as u32);
        match out.last_mut() {
            Some((q, m)) if *q == p => *m += n,
            _ => out.push((p, n)),
        }
    }
    out
}

/// Merges `stats` (by cell) into the cells `levels` orders coarser.
fn coarsen_stats(stats: &[CellStats], levels: u8) -> Vec<CellStats> {
    let mut out: Vec<CellStats> =
        Vec::with_capacity((stats.len() >> (2 * levels as u32)).max(stats.len().min(1 << 20)));
    for s in stats {
        let p = s.cell >> (2 * levels as u32);
        match out.last_mut() {
            Some(q) if q.cell == p => q.merge(s),
            _ => {
                let mut q = *s;
                q.cell = p;
                out.push(q);
            }
        }
    }
    out
}

/// Builds the density map of `catalog` into directory `out` (replacing what was there
/// only once the new one is complete). `progress` hears (stage, count).
pub fn build(
    catalog: &Catalog,
    out: &Path,
    opts: &DensityOptions,
    progress: &(dyn Fn(&str, u64) + Sync),
) -> Result<DensityReport> {
    let geometry = TileGeometry::new(opts.tile_width)?;
    if opts.order < 3 || opts.order + geometry.shift > MAX_PIXEL_ORDER {
        return Err(Error::Invalid(format!(
            "order {}: a density map's tile order is from 3 to {} with {}-pixel tiles",
            opts.order,
            MAX_PIXEL_ORDER - geometry.shift,
            opts.tile_width
        )));
    }
    let pixel_order = opts.order + geometry.shift;
    let agg = &opts.aggregate;
    let stats: Vec<CellStats> = match agg.column() {
        None => catalog
            .cell_counts(pixel_order, &|n| progress("rows", n))?
            .into_iter()
            .map(|(cell, n)| CellStats {
                rows: n,
                ..CellStats::new(cell)
            })
            .collect(),
        Some(c) => catalog.cell_stats(pixel_order, c, &|n| progress("rows", n))?,
    };
    let counts: Vec<(u64, u64)> = stats.iter().map(|s| (s.cell, s.rows)).collect();
    let rows: u64 = counts.iter().map(|c| c.1).sum();
    // The grey scale of each order: log(1 + n) up to its largest count, or linear between
    // its smallest and largest values.
    let range = |cells: &[CellStats]| -> (f64, f64) {
        let finite = cells.iter().map(|s| agg.value(s)).filter(|v| v.is_finite());
        let (lo, hi) = match agg {
            Aggregate::Count => (0.0, finite.fold(1.0f64, f64::max)),
            _ => finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            }),
        };
        if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) }
    };
    let paint = |s: &CellStats, (lo, hi): (f64, f64)| -> (f32, u8, u8) {
        let v = agg.value(s);
        if !v.is_finite() {
            return (f32::NAN, 0, 0);
        }
        let t = match agg {
            Aggregate::Count => v.ln_1p() / hi.ln_1p(),
            _ if hi > lo => (v - lo) / (hi - lo),
            _ => 1.0,
        };
        (v as f32, (t * 255.0).round().clamp(1.0, 255.0) as u8, 255)
    };
    let (lo, hi) = range(&stats);
    let empty = if *agg == Aggregate::Count {
        0.0
    } else {
        f32::NAN
    };
    let building = crate::fresh_building(out)?;
    let w = geometry.width;
    let written = std::sync::atomic::AtomicUsize::new(0);
    let unit = match agg {
        Aggregate::Count => Some("count".to_string()),
        _ => agg
            .column()
            .and_then(|c| catalog.columns().into_iter().find(|x| x.name == c))
            .and_then(|c| c.meta.unit),
    };
    for order in (3..=opts.order).rev() {
        let cells: std::borrow::Cow<[CellStats]> = if order == opts.order {
            std::borrow::Cow::Borrowed(&stats)
        } else {
            std::borrow::Cow::Owned(coarsen_stats(&stats, opts.order - order))
        };
        let cut = range(&cells);
        // The cells of each tile (cells are in order, so a tile's are consecutive).
        let tile_of = |i: usize| cells[i].cell >> (2 * geometry.shift as u32);
        let mut starts: Vec<usize> = (0..cells.len())
            .filter(|&i| i == 0 || tile_of(i) != tile_of(i - 1))
            .collect();
        starts.push(cells.len());
        let cells: &[CellStats] = &cells;
        starts
            .par_windows(2)
            .map(|span| -> Result<()> {
                let tile = tile_of(span[0]);
                let mut values = vec![empty; w * w];
                let mut grey = vec![0u8; w * w];
                let mut alpha = vec![0u8; w * w];
                for st in &cells[span[0]..span[1]] {
                    let (r, c) = geometry.pixel_of(st.cell & ((1u64 << (2 * geometry.shift)) - 1));
                    let k = r * w + c;
                    (values[k], grey[k], alpha[k]) = paint(st, cut);
                }
                let cards: Vec<(&str, String)> = unit
                    .iter()
                    .map(|u| ("BUNIT", format!("'{}'", u.replace('\'', "''"))))
                    .collect();
                write_new(
                    &tile_path(&building, order, tile, "fits"),
                    &fits_image(w, w, &values, &cards),
                )?;
                write_new(
                    &tile_path(&building, order, tile, "png"),
                    &png_image(w, w, &grey, Some(&alpha))?,
                )?;
                let n = written.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                progress("tiles", n as u64);
                Ok(())
            })
            .collect::<Result<()>>()?;
    }
    let tiles = written.load(std::sync::atomic::Ordering::Relaxed);
    allsky(&building, &stats, pixel_order, geometry, empty, &|cells| {
        let cut = range(cells);
        cells.iter().map(|c| paint(c, cut)).collect()
    })?;
    // Coverage: the cells with rows, at the tile order plus 3 (cells of an eighth of a tile).
    let moc_order = (opts.order + 3).min(pixel_order);
    let moc_cells = coarsen(&counts, pixel_order - moc_order);
    let moc = meridian_sky::moc_from_cells(moc_order, moc_cells.iter().map(|c| c.0))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    write_new(
        &building.join("Moc.fits"),
        &crate::moc_file(&moc, &opts.name)?,
    )?;
    let (ra, dec) = densest(&counts, pixel_order);
    let mut p = Properties::meridian(
        &opts.name,
        &agg.describe(),
        &format!(
            "{} per HEALPix cell of order {pixel_order} (tiles of order {}), of catalog {}",
            agg.describe(),
            opts.order,
            opts.name
        ),
        "image",
    );
    p.set("hips_order", opts.order.to_string())
        .set("hips_order_min", "3")
        .set("hips_tile_width", w.to_string())
        .set("hips_tile_format", "png fits")
        .set("hips_pixel_bitpix", "-32")
        .set(
            "hips_pixel_scale",
            format!(
                "{:.6}",
                meridian_sky::healpix::mean_cell_size_deg(pixel_order)
            ),
        )
        .set("hips_pixel_cut", format!("{lo} {hi}"))
        .set("hips_data_range", format!("{lo} {hi}"))
        .set("hips_initial_ra", format!("{ra:.6}"))
        .set("hips_initial_dec", format!("{dec:.6}"))
        .set("hips_initial_fov", "60")
        .set(
            "moc_sky_fraction",
            format!("{:.6}", moc.coverage_percentage()),
        )
        .set("hips_nb_tiles", tiles.to_string())
        .set("data_pixel_bitpix", "-32");
    if let Some(u) = &unit {
        p.set("bunit", u.clone());
    }
    p.write(&building)?;
    crate::swap_in(&building, out)?;
    Ok(DensityReport {
        rows,
        tiles,
        cells: counts.len(),
    })
}

/// The centre of the cell of order 3 holding the most rows.
fn densest(counts: &[(u64, u64)], pixel_order: u8) -> (f64, f64) {
    let cells = coarsen(counts, pixel_order - 3);
    let best = cells.iter().max_by_key(|c| c.1).map(|c| c.0).unwrap_or(0);
    let p = meridian_sky::healpix::center(3, best);
    (p.ra_deg(), p.dec_deg())
}

/// Gives cells their (value, grey, alpha) pixels.
type Painter<'a> = &'a dyn Fn(&[CellStats]) -> Vec<(f32, u8, u8)>;

/// `Norder3/Allsky.{fits,png}`: the 768 tiles of order 3 at 64 pixels (or the tile width,
/// if smaller), 27 to a row, as Aladin reads them.
fn allsky(
    root: &Path,
    stats: &[CellStats],
    pixel_order: u8,
    tile: TileGeometry,
    empty: f32,
    paint: Painter<'_>,
) -> Result<()> {
    let sub = TileGeometry::new(tile.width.min(64))?;
    let sub_order = 3 + sub.shift;
    let cells = if pixel_order >= sub_order {
        coarsen_stats(stats, pixel_order - sub_order)
    } else {
        stats.to_vec()
    };
    let s = sub.width;
    let (cols, rows) = (27usize, 29usize);
    let (width, height) = (cols * s, rows * s);
    let mut values = vec![empty; width * height];
    let mut grey = vec![0u8; width * height];
    let mut alpha = vec![0u8; width * height];
    for (st, px) in cells.iter().zip(paint(&cells)) {
        let t = (st.cell >> (2 * sub.shift as u32)) as usize;
        let (r, c) = sub.pixel_of(st.cell & ((1u64 << (2 * sub.shift)) - 1));
        let k = ((t / cols) * s + r) * width + (t % cols) * s + c;
        (values[k], grey[k], alpha[k]) = px;
    }
    let dir = root.join("Norder3");
    write_new(
        &dir.join("Allsky.fits"),
        &fits_image(width, height, &values, &[]),
    )?;
    write_new(
        &dir.join("Allsky.png"),
        &png_image(width, height, &grey, Some(&alpha))?,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarser_orders_sum_their_children() {
        let counts = [(0, 1), (1, 2), (3, 4), (4, 5), (17, 1)];
        assert_eq!(coarsen(&counts, 1), vec![(0, 7), (1, 5), (4, 1)]);
        assert_eq!(coarsen(&counts, 2), vec![(0, 12), (1, 1)]);
    }
}
