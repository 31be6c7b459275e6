//! Density maps: a HiPS image of a catalog's source counts per HEALPix cell, from one pass
//! over its partitions. Each pixel of a tile of order `k` is the count of rows in its cell
//! of order `k + log2(width)`; lower orders sum their children, so every order shows the
//! same sky at its own resolution. FITS tiles hold the counts; PNG tiles a logarithmic
//! grey scale (transparent where a cell is empty) for viewers.

use std::path::Path;

use meridian_catalog::Catalog;

use crate::tile::{fits_image, png_image, write_atomic};
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

/// Builds the density map of `catalog` into directory `out` (replacing what was there
/// only once the new one is complete). `progress` hears (stage, count).
pub fn build(
    catalog: &Catalog,
    out: &Path,
    opts: &DensityOptions,
    progress: &dyn Fn(&str, u64),
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
    let counts = catalog.cell_counts(pixel_order, &|n| progress("rows", n))?;
    let rows: u64 = counts.iter().map(|c| c.1).sum();
    let building = out.with_extension("building");
    if building.exists() {
        std::fs::remove_dir_all(&building).map_err(|e| Error::io(&building, e))?;
    }
    std::fs::create_dir_all(&building).map_err(|e| Error::io(&building, e))?;
    let w = geometry.width;
    let mut tiles = 0usize;
    let mut cut_max = 0.0f64;
    for order in (3..=opts.order).rev() {
        let cells = coarsen(&counts, opts.order - order);
        let max = cells.iter().map(|c| c.1).max().unwrap_or(1).max(1) as f64;
        if order == opts.order {
            cut_max = max;
        }
        let mut i = 0;
        while i < cells.len() {
            let tile = cells[i].0 >> (2 * geometry.shift as u32);
            let mut values = vec![0f32; w * w];
            let mut grey = vec![0u8; w * w];
            let mut alpha = vec![0u8; w * w];
            while i < cells.len() && cells[i].0 >> (2 * geometry.shift as u32) == tile {
                let (cell, n) = cells[i];
                let (r, c) = geometry.pixel_of(cell & ((1u64 << (2 * geometry.shift)) - 1));
                let k = r * w + c;
                values[k] = n as f32;
                grey[k] = (((n as f64).ln_1p() / max.ln_1p()) * 255.0)
                    .round()
                    .clamp(1.0, 255.0) as u8;
                alpha[k] = 255;
                i += 1;
            }
            let cards = [("BUNIT", "'count'".to_string())];
            write_atomic(
                &tile_path(&building, order, tile, "fits"),
                &fits_image(w, w, &values, &cards),
            )?;
            write_atomic(
                &tile_path(&building, order, tile, "png"),
                &png_image(w, w, &grey, Some(&alpha))?,
            )?;
            tiles += 1;
            progress("tiles", tiles as u64);
        }
    }
    allsky(&building, &counts, pixel_order, geometry)?;
    // Coverage: the cells with rows, at the tile order plus 3 (cells of an eighth of a tile).
    let moc_order = (opts.order + 3).min(pixel_order);
    let moc_cells = coarsen(&counts, pixel_order - moc_order);
    let moc = meridian_sky::moc_from_cells(moc_order, moc_cells.iter().map(|c| c.0))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    write_atomic(
        &building.join("Moc.fits"),
        &meridian_sky::moc_fits(&moc, Some(&opts.name))
            .map_err(|e| Error::Invalid(e.to_string()))?,
    )?;
    let (ra, dec) = densest(&counts, pixel_order);
    let mut p = Properties::default();
    p.set("creator_did", format!("ivo://meridian/hips/{}", opts.name))
        .set("obs_title", format!("{}: source density", opts.name))
        .set(
            "obs_description",
            format!(
                "Rows of catalog {} per HEALPix cell of order {pixel_order} (tiles of order {})",
                opts.name, opts.order
            ),
        )
        .set("dataproduct_type", "image")
        .set("hips_version", "1.4")
        .set(
            "hips_builder",
            format!("Meridian {}", env!("CARGO_PKG_VERSION")),
        )
        .set("hips_creator", "Meridian")
        .set("hips_status", "public master clonableOnce")
        .set("hips_frame", "equatorial")
        .set("hips_order", opts.order.to_string())
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
        .set("hips_pixel_cut", format!("0 {cut_max}"))
        .set("hips_data_range", format!("0 {cut_max}"))
        .set("hips_initial_ra", format!("{ra:.6}"))
        .set("hips_initial_dec", format!("{dec:.6}"))
        .set("hips_initial_fov", "60")
        .set(
            "moc_sky_fraction",
            format!("{:.6}", moc.coverage_percentage()),
        )
        .set("hips_nb_tiles", tiles.to_string())
        .set("data_pixel_bitpix", "-32")
        .set("bunit", "count");
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

/// `Norder3/Allsky.{fits,png}`: the 768 tiles of order 3 at 64 pixels (or the tile width,
/// if smaller), 27 to a row, as Aladin reads them.
fn allsky(root: &Path, counts: &[(u64, u64)], pixel_order: u8, tile: TileGeometry) -> Result<()> {
    let sub = TileGeometry::new(tile.width.min(64))?;
    let sub_order = 3 + sub.shift;
    let cells = if pixel_order >= sub_order {
        coarsen(counts, pixel_order - sub_order)
    } else {
        counts.to_vec()
    };
    let s = sub.width;
    let (cols, rows) = (27usize, 29usize);
    let (width, height) = (cols * s, rows * s);
    let mut values = vec![0f32; width * height];
    let max = cells.iter().map(|c| c.1).max().unwrap_or(1).max(1) as f64;
    let mut grey = vec![0u8; width * height];
    let mut alpha = vec![0u8; width * height];
    for &(cell, n) in &cells {
        let t = (cell >> (2 * sub.shift as u32)) as usize;
        let (r, c) = sub.pixel_of(cell & ((1u64 << (2 * sub.shift)) - 1));
        let k = ((t / cols) * s + r) * width + (t % cols) * s + c;
        values[k] = n as f32;
        grey[k] = (((n as f64).ln_1p() / max.ln_1p()) * 255.0)
            .round()
            .clamp(1.0, 255.0) as u8;
        alpha[k] = 255;
    }
    let dir = root.join("Norder3");
    write_atomic(
        &dir.join("Allsky.fits"),
        &fits_image(width, height, &values, &[]),
    )?;
    write_atomic(
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
