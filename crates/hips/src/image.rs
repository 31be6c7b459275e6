//! Image HiPS from a registered image collection: every tile pixel of the deepest order
//! is the value of the sky at its HEALPix cell's centre, resampled through each image's
//! WCS (bilinear, or Lanczos-3), and where images overlap the mean of theirs; BLANK and
//! NaN pixels count as no data. Lower orders average each 2 x 2 block of the order
//! below, as Hipsgen does. Tiles are computed in parallel, in HEALPix nested order, and
//! each lower-order tile is written as soon as its four children are done, so memory
//! holds a few tiles per order whatever the survey's size.
//!
//! Incremental: a build records what it was made from (`build.json`: order, tile width,
//! kernel, cut, and each image's id, path, size and time). When a later build of the same
//! collection finds every earlier image unchanged and only images added, it renders only
//! the deepest tiles the new images meet, recomputes their parents from their four
//! children on disk and the Allsky from the order-3 tiles, and keeps every other tile
//! (linked, not copied) and the earlier pixel cut, so unchanged PNG tiles stay valid.
//! Anything else (an image changed or removed, other options) builds anew.
//!
//! PNG tiles map the pixel cut (the 0.5 and 99.5 percentiles of a sample of the deepest
//! tiles, computed once before any tile is written) linearly to 0..255; pixels without
//! data are transparent.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use meridian_images::collection::{Collection, Dataset};
use meridian_images::frames::from_icrs;
use meridian_images::{ImageHdu, Wcs};
use rayon::prelude::*;

use crate::tile::{fits_image, png_of_values, write_atomic, write_new};
use crate::{Error, Properties, Result, TileGeometry, tile_path};

/// The resampling kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The four pixels about the position, weighted by distance.
    Bilinear,
    /// Lanczos with a = 3 (6 x 6 pixels): sharper, for well-sampled images.
    Lanczos3,
}

/// How to build an image HiPS.
#[derive(Debug, Clone)]
pub struct ImageHipsOptions {
    /// The HiPS's name.
    pub name: String,
    /// Deepest tile order; `None` for the order whose pixels are just finer than the
    /// collection's finest image pixels.
    pub order: Option<u8>,
    /// Tile width in pixels.
    pub tile_width: usize,
    /// The resampling kernel.
    pub kernel: Kernel,
    /// Most bytes of image pixels kept in memory at once.
    pub cache_bytes: usize,
}

/// What a build made.
#[derive(Debug, Clone, Default)]
pub struct ImageHipsReport {
    /// Deepest tile order.
    pub order: u8,
    /// Tiles written (each as FITS and PNG), all orders.
    pub tiles: usize,
    /// Images used.
    pub images: usize,
    /// Images skipped, with the reason.
    pub skipped: Vec<(String, String)>,
    /// The pixel cut of the PNG tiles.
    pub cut: (f32, f32),
}

/// One image ready for resampling.
struct Image {
    wcs: Wcs,
    width: usize,
    height: usize,
    pixels: Vec<f32>,
}

impl Image {
    fn load(d: &Dataset) -> Result<Image> {
        let bad = |e: meridian_images::Error| Error::Invalid(format!("{}: {e}", d.path.display()));
        let hdu: ImageHdu = meridian_images::image_hdus(&d.path)
            .map_err(bad)?
            .into_iter()
            .find(|h| h.index == d.hdu)
            .ok_or_else(|| {
                Error::Invalid(format!("{}: no image HDU {}", d.path.display(), d.hdu))
            })?;
        let wcs = hdu.wcs().map_err(bad)?;
        let pixels = meridian_images::preview::physical(&d.path, &hdu).map_err(bad)?;
        let (w, h) = hdu.size();
        Ok(Image {
            wcs,
            width: w as usize,
            height: h as usize,
            pixels,
        })
    }

    fn at(&self, x: isize, y: isize) -> f32 {
        // Positions past the edge take the edge's value (within half a pixel of it).
        let x = x.clamp(0, self.width as isize - 1) as usize;
        let y = y.clamp(0, self.height as isize - 1) as usize;
        self.pixels[y * self.width + x]
    }

    /// The FITS pixel coordinates of ICRS (`ra`, `dec`) in this image.
    fn pixel_of(&self, ra: f64, dec: f64) -> Option<[f64; 2]> {
        let (lon, lat) = from_icrs(self.wcs.frame(), ra, dec);
        self.wcs.world_to_pixel(lon, lat)
    }

    /// Whether FITS pixel position (`px`, `py`) is on the image (out to the outer edges of
    /// its edge pixels).
    fn covers(&self, px: f64, py: f64) -> bool {
        px >= 0.5 && py >= 0.5 && px <= self.width as f64 + 0.5 && py <= self.height as f64 + 0.5
    }

    /// The value at FITS pixel position (`px`, `py`), or NaN off the image or where it
    /// has no data.
    fn sample_px(&self, px: f64, py: f64, kernel: Kernel) -> f32 {
        // FITS pixel coordinates: pixel centres at 1..=n, the image spans 0.5..n + 0.5.
        if !(px >= 0.5
            && py >= 0.5
            && px <= self.width as f64 + 0.5
            && py <= self.height as f64 + 0.5)
        {
            return f32::NAN;
        }
        let (x, y) = (px - 1.0, py - 1.0);
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let (x0, y0) = (x0 as isize, y0 as isize);
        let (mut sum, mut weight) = (0.0f64, 0.0f64);
        let mut add = |v: f32, w: f64| {
            if v.is_finite() && w != 0.0 {
                sum += v as f64 * w;
                weight += w;
            }
        };
        match kernel {
            Kernel::Bilinear => {
                add(self.at(x0, y0), (1.0 - fx) * (1.0 - fy));
                add(self.at(x0 + 1, y0), fx * (1.0 - fy));
                add(self.at(x0, y0 + 1), (1.0 - fx) * fy);
                add(self.at(x0 + 1, y0 + 1), fx * fy);
            }
            Kernel::Lanczos3 => {
                let wx: Vec<f64> = (-2..=3).map(|i| lanczos3(fx - i as f64)).collect();
                let wy: Vec<f64> = (-2..=3).map(|j| lanczos3(fy - j as f64)).collect();
                for (j, wyj) in wy.iter().enumerate() {
                    for (i, wxi) in wx.iter().enumerate() {
                        add(self.at(x0 - 2 + i as isize, y0 - 2 + j as isize), wxi * wyj);
                    }
                }
            }
        }
        if weight > 0.0 {
            (sum / weight) as f32
        } else {
            f32::NAN
        }
    }
}

fn lanczos3(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    if x.abs() >= 3.0 {
        return 0.0;
    }
    let px = std::f64::consts::PI * x;
    3.0 * px.sin() * (px / 3.0).sin() / (px * px)
}

/// The loaded images by dataset number, the order they were loaded in, and their bytes.
type Loaded = (
    HashMap<usize, Arc<Image>>,
    std::collections::VecDeque<usize>,
    usize,
);

/// Writes a finished tile: (order, tile, pixel values).
type WriteTile<'a> = &'a dyn Fn(u8, u64, &[f32]) -> Result<()>;

/// Loaded images, by dataset number, within a budget of bytes (the oldest loaded go first).
struct ImageCache<'a> {
    datasets: &'a [Dataset],
    budget: usize,
    state: Mutex<Loaded>,
}

impl ImageCache<'_> {
    fn get(&self, i: usize) -> Result<Arc<Image>> {
        if let Some(img) = self.state.lock().expect("image cache").0.get(&i) {
            return Ok(img.clone());
        }
        let img = Arc::new(Image::load(&self.datasets[i])?);
        let bytes = img.pixels.len() * 4;
        let mut s = self.state.lock().expect("image cache");
        while s.2 + bytes > self.budget && !s.1.is_empty() {
            let old = s.1.pop_front().expect("not empty");
            if let Some(o) = s.0.remove(&old) {
                s.2 -= o.pixels.len() * 4;
            }
        }
        s.0.insert(i, img.clone());
        s.1.push_back(i);
        s.2 += bytes;
        Ok(img)
    }
}

/// The tile order whose pixels are just finer than `pixel_arcsec`.
pub fn order_for(pixel_arcsec: f64, geometry: TileGeometry) -> u8 {
    let pixel_order = (0..=29u8)
        .find(|o| meridian_sky::healpix::mean_cell_size_deg(*o) * 3600.0 <= pixel_arcsec)
        .unwrap_or(29);
    pixel_order.saturating_sub(geometry.shift).max(3)
}

/// What a build was made from, kept as `build.json` in the HiPS.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Manifest {
    order: u8,
    tile_width: usize,
    kernel: String,
    cut: (f32, f32),
    data_range: (f32, f32),
    /// `id|path|bytes|modified` of each image.
    images: Vec<String>,
}

const MANIFEST: &str = "build.json";

fn image_key(d: &Dataset) -> String {
    format!(
        "{}|{}|{}|{}",
        d.id,
        d.path.display(),
        d.file_bytes,
        d.file_modified_s
    )
}

/// Links every file of `from` into `to` (same tree), copying where links cannot be made.
fn link_tree(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for e in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let e = e.map_err(|e| Error::io(from, e))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().map_err(|e| Error::io(&src, e))?.is_dir() {
            link_tree(&src, &dst)?;
        } else if std::fs::hard_link(&src, &dst).is_err() {
            std::fs::copy(&src, &dst).map_err(|e| Error::io(&dst, e))?;
        }
    }
    Ok(())
}

/// The values of a FITS tile this module wrote (rows from the top), if it exists.
fn read_tile(path: &Path, w: usize) -> Result<Option<Vec<f32>>> {
    if !path.exists() {
        return Ok(None);
    }
    let bad = |e: meridian_images::Error| Error::Invalid(format!("{}: {e}", path.display()));
    let hdus = meridian_images::cutout::image_hdus(path).map_err(bad)?;
    let hdu = hdus
        .first()
        .ok_or_else(|| Error::Invalid(format!("{}: no image", path.display())))?;
    let data = meridian_images::preview::physical(path, hdu).map_err(bad)?;
    if data.len() != w * w {
        return Err(Error::Invalid(format!(
            "{}: not a {w} x {w} tile",
            path.display()
        )));
    }
    Ok(Some(
        (0..w)
            .flat_map(|r| data[(w - 1 - r) * w..(w - r) * w].iter().copied())
            .collect(),
    ))
}

/// Tile `parent` of order `k`: the mean of each 2 x 2 block of its four children (order
/// `k + 1`, read from `root`).
fn parent_from_disk(root: &Path, k: u8, parent: u64, g: TileGeometry) -> Result<Vec<f32>> {
    let mut p = Pending::new(parent, g.width);
    for q in 0..4u64 {
        let child = (parent << 2) | q;
        if let Some(values) = read_tile(&tile_path(root, k + 1, child, "fits"), g.width)? {
            p.add_child(child, &values, g);
        }
    }
    Ok(p.means())
}

/// A lower-order tile being filled from its children: sums and counts of its pixels.
struct Pending {
    tile: u64,
    sum: Vec<f64>,
    count: Vec<u32>,
}

impl Pending {
    fn new(tile: u64, w: usize) -> Self {
        Self {
            tile,
            sum: vec![0.0; w * w],
            count: vec![0; w * w],
        }
    }

    /// Adds child tile `child`'s values (top row first), each 2 x 2 block of them to one
    /// pixel of its quarter of this tile.
    fn add_child(&mut self, child: u64, values: &[f32], g: TileGeometry) {
        let w = g.width;
        let quarter = (child & 3) << (2 * g.shift - 2);
        for sub in 0..(w * w) as u64 {
            let (r, c) = g.pixel_of(sub);
            let v = values[r * w + c];
            if v.is_finite() {
                let (r, c) = g.pixel_of(quarter | (sub >> 2));
                self.sum[r * w + c] += v as f64;
                self.count[r * w + c] += 1;
            }
        }
    }

    /// The mean of each pixel's values; NaN where it has none.
    fn means(&self) -> Vec<f32> {
        mean_of(&self.sum, &self.count)
    }
}

/// Sums over counts, NaN where a count is 0.
fn mean_of(sum: &[f64], count: &[u32]) -> Vec<f32> {
    sum.iter()
        .zip(count)
        .map(|(s, n)| {
            if *n > 0 {
                (*s / *n as f64) as f32
            } else {
                f32::NAN
            }
        })
        .collect()
}

/// Builds the image HiPS of `collection` into directory `out` (swapped in whole when
/// done). `progress` hears (tiles done, tiles at the deepest order).
pub fn build(
    collection: &Collection,
    out: &Path,
    opts: &ImageHipsOptions,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<ImageHipsReport> {
    let geometry = TileGeometry::new(opts.tile_width)?;
    let s = geometry.shift;
    let w = geometry.width;
    // Images with a usable footprint; the others reported and skipped.
    let mut skipped = Vec::new();
    let mut usable: Vec<Dataset> = Vec::new();
    for d in &collection.datasets {
        let wcs = meridian_images::image_hdus(&d.path)
            .and_then(|hdus| {
                hdus.into_iter()
                    .find(|h| h.index == d.hdu)
                    .ok_or_else(|| meridian_images::Error::Wcs(format!("no image HDU {}", d.hdu)))
            })
            .and_then(|h| h.wcs());
        match wcs {
            Ok(_) => usable.push(d.clone()),
            Err(e) => skipped.push((d.id.clone(), e.to_string())),
        }
    }
    if usable.is_empty() {
        return Err(Error::Invalid(format!(
            "collection '{}' has no image with a usable WCS",
            collection.name
        )));
    }
    let finest = usable
        .iter()
        .map(|d| d.pixel_arcsec)
        .fold(f64::INFINITY, f64::min);
    let order = match opts.order {
        Some(o) if (3..=29 - s).contains(&o) => o,
        Some(o) => {
            return Err(Error::Invalid(format!(
                "order {o}: tiles of {w} pixels have orders 3 to {}",
                29 - s
            )));
        }
        None => order_for(finest, geometry),
    };
    let pixel_order = order + s;
    // The tiles each image meets, from its footprint's MOC at the tile order.
    let mut candidates: HashMap<u64, Vec<usize>> = HashMap::new();
    for (i, d) in usable.iter().enumerate() {
        let moc = d.moc(order).map_err(|e| Error::Invalid(e.to_string()))?;
        for r in moc.moc_ranges().iter() {
            let shift = 2 * (29 - order as u32);
            for t in (r.start >> shift)..(r.end >> shift) {
                candidates.entry(t).or_default().push(i);
            }
        }
    }
    let mut tiles: Vec<u64> = candidates.keys().copied().collect();
    tiles.sort_unstable();
    let cache = ImageCache {
        datasets: &usable,
        budget: opts.cache_bytes,
        state: Mutex::new(Default::default()),
    };
    let render = |t: u64| -> Result<Vec<f32>> {
        let images: Vec<Arc<Image>> = candidates[&t]
            .iter()
            .map(|&i| cache.get(i))
            .collect::<Result<_>>()?;
        let centre = |r: usize, c: usize| {
            let p = meridian_sky::healpix::center(
                pixel_order,
                (t << (2 * s)) | geometry.sub_index(r, c),
            );
            (p.ra_deg(), p.dec_deg())
        };
        let mut sum = vec![0f64; w * w];
        let mut count = vec![0u32; w * w];
        let mut add = |r: usize, c: usize, v: f32| {
            if v.is_finite() {
                sum[r * w + c] += v as f64;
                count[r * w + c] += 1;
            }
        };
        // The image position of each tile pixel's centre, exactly at the corners of
        // blocks of GRID x GRID pixels and bilinearly between them: the map from a tile's
        // pixels to an image's is smooth, and a block where the interpolation is off by
        // more than a thousandth of a pixel at its centre is computed pixel by pixel.
        const GRID: usize = 16;
        let g = GRID.min(w - 1).max(1);
        let at = |k: usize| (k * g).min(w - 1);
        let points = w.div_ceil(g) + 1;
        let corners: Vec<(f64, f64)> = (0..points)
            .flat_map(|kr| (0..points).map(move |kc| (kr, kc)))
            .map(|(kr, kc)| centre(at(kr), at(kc)))
            .collect();
        for img in &images {
            let grid: Vec<Option<[f64; 2]>> = corners
                .iter()
                .map(|&(ra, dec)| img.pixel_of(ra, dec))
                .collect();
            for br in 0..points - 1 {
                let (r0, r1) = (at(br), at(br + 1));
                if r1 == r0 {
                    continue;
                }
                let rows = if br + 2 == points {
                    r0..=r1
                } else {
                    r0..=r1 - 1
                };
                for bc in 0..points - 1 {
                    let (c0, c1) = (at(bc), at(bc + 1));
                    if c1 == c0 {
                        continue;
                    }
                    let cols = if bc + 2 == points {
                        c0..=c1
                    } else {
                        c0..=c1 - 1
                    };
                    let q = [
                        grid[br * points + bc],
                        grid[br * points + bc + 1],
                        grid[(br + 1) * points + bc],
                        grid[(br + 1) * points + bc + 1],
                    ];
                    let interpolated = match q {
                        [Some(a), Some(b), Some(c), Some(d)] => {
                            let lerp = move |u: f64, v: f64| {
                                let x = (a[0] * (1.0 - v) + b[0] * v) * (1.0 - u)
                                    + (c[0] * (1.0 - v) + d[0] * v) * u;
                                let y = (a[1] * (1.0 - v) + b[1] * v) * (1.0 - u)
                                    + (c[1] * (1.0 - v) + d[1] * v) * u;
                                (x, y)
                            };
                            // A block wholly off the image, by more than a pixel, on one
                            // side: nothing to sample.
                            let off = |f: &dyn Fn(&[f64; 2]) -> bool| [a, b, c, d].iter().all(f);
                            let (wd, ht) = (img.width as f64, img.height as f64);
                            if off(&|p| p[0] < -0.5)
                                || off(&|p| p[1] < -0.5)
                                || off(&|p| p[0] > wd + 1.5)
                                || off(&|p| p[1] > ht + 1.5)
                            {
                                continue;
                            }
                            let (rm, cm) = ((r0 + r1) / 2, (c0 + c1) / 2);
                            let (u, v) = (
                                (rm - r0) as f64 / (r1 - r0) as f64,
                                (cm - c0) as f64 / (c1 - c0) as f64,
                            );
                            let (ra, dec) = centre(rm, cm);
                            match img.pixel_of(ra, dec) {
                                Some(e) => {
                                    let (x, y) = lerp(u, v);
                                    ((x - e[0]).abs() < 1e-3 && (y - e[1]).abs() < 1e-3)
                                        .then_some(lerp)
                                }
                                None => None,
                            }
                        }
                        _ => None,
                    };
                    for r in rows.clone() {
                        for c in cols.clone() {
                            let (x, y) = match &interpolated {
                                Some(lerp) => lerp(
                                    (r - r0) as f64 / (r1 - r0) as f64,
                                    (c - c0) as f64 / (c1 - c0) as f64,
                                ),
                                None => {
                                    let (ra, dec) = centre(r, c);
                                    match img.pixel_of(ra, dec) {
                                        Some(p) => (p[0], p[1]),
                                        None => continue,
                                    }
                                }
                            };
                            if img.covers(x, y) {
                                add(r, c, img.sample_px(x, y, opts.kernel));
                            }
                        }
                    }
                }
            }
        }
        Ok(mean_of(&sum, &count))
    };
    // An earlier build of the same images plus some: only what the new ones change.
    let kernel_name = match opts.kernel {
        Kernel::Bilinear => "bilinear",
        Kernel::Lanczos3 => "lanczos3",
    };
    let keys: Vec<String> = usable.iter().map(image_key).collect();
    let previous: Option<Manifest> = std::fs::read(out.join(MANIFEST))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|m: &Manifest| {
            let now: std::collections::HashSet<&String> = keys.iter().collect();
            m.order == order
                && m.tile_width == w
                && m.kernel == kernel_name
                && m.images.iter().all(|k| now.contains(k))
        });
    let changed: Option<Vec<u64>> = previous.as_ref().map(|m| {
        let before: std::collections::HashSet<&String> = m.images.iter().collect();
        tiles
            .iter()
            .filter(|t| candidates[t].iter().any(|&i| !before.contains(&keys[i])))
            .copied()
            .collect()
    });
    if let (Some(m), Some(changed)) = (&previous, &changed)
        && changed.is_empty()
        && m.images.len() == keys.len()
    {
        return Ok(ImageHipsReport {
            order,
            tiles: 0,
            images: usable.len(),
            skipped,
            cut: m.cut,
        });
    }
    // The pixel cut, once, from a sample of up to 64 tiles spread over the list (or the
    // earlier build's, when only adding to it).
    let step = if previous.is_some() {
        usize::MAX
    } else {
        tiles.len().div_ceil(64).max(1)
    };
    let sample: Vec<Vec<f32>> = tiles
        .iter()
        .step_by(step)
        .collect::<Vec<_>>()
        .par_iter()
        .map(|&&t| render(t))
        .collect::<Result<_>>()?;
    let mut finite: Vec<f32> = sample
        .iter()
        .flatten()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    finite.sort_unstable_by(f32::total_cmp);
    let (cut, data_range) = match &previous {
        Some(m) => (m.cut, m.data_range),
        None if finite.is_empty() => ((0.0, 1.0), (0.0, 1.0)),
        None => {
            let q = |f: f64| finite[((finite.len() - 1) as f64 * f).round() as usize];
            let (lo, hi) = (q(0.005), q(0.995));
            (
                (lo, if hi > lo { hi } else { lo + 1.0 }),
                (finite[0], finite[finite.len() - 1]),
            )
        }
    };
    let building = crate::fresh_building(out)?;
    if previous.is_some() {
        link_tree(out, &building)?;
    }
    let written = std::sync::atomic::AtomicUsize::new(0);
    let write = |k: u8, t: u64, values: &[f32]| -> Result<()> {
        // An incremental build's directory links the served files: replace them, never
        // write into them.
        let put = if previous.is_some() {
            write_atomic
        } else {
            write_new
        };
        put(
            &tile_path(&building, k, t, "fits"),
            &fits_image(w, w, values, &[]),
        )?;
        put(
            &tile_path(&building, k, t, "png"),
            &png_of_values(w, w, values, cut)?,
        )?;
        written.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    };
    // Allsky: the order-3 tiles at 64 pixels (or the tile width), 27 to a row.
    let sub = TileGeometry::new(w.min(64))?;
    let (aw, ah) = (27 * sub.width, 29 * sub.width);
    let mut allsky = vec![f32::NAN; aw * ah];
    // Levels above the deepest: the tile being filled at each order (index 0 = order 3).
    let mut pending: Vec<Option<Pending>> = (3..order).map(|_| None).collect();
    let mut done = 0u64;
    let total = tiles.len() as u64;
    // Flushes the pending tile of `k` (and, into it, nothing more will come).
    fn flush(
        pending: &mut [Option<Pending>],
        k: u8,
        w: usize,
        s: u8,
        write: WriteTile<'_>,
        allsky: &mut dyn FnMut(u64, &[f32]),
    ) -> Result<()> {
        let Some(p) = pending[(k - 3) as usize].take() else {
            return Ok(());
        };
        let values = p.means();
        write(k, p.tile, &values)?;
        if k == 3 {
            allsky(p.tile, &values);
        } else {
            push_up(pending, k - 1, p.tile, &values, w, s, write, allsky)?;
        }
        Ok(())
    }
    #[allow(clippy::too_many_arguments)]
    fn push_up(
        pending: &mut [Option<Pending>],
        k: u8,
        child: u64,
        values: &[f32],
        w: usize,
        s: u8,
        write: WriteTile<'_>,
        allsky: &mut dyn FnMut(u64, &[f32]),
    ) -> Result<()> {
        let parent = child >> 2;
        if pending[(k - 3) as usize]
            .as_ref()
            .is_some_and(|p| p.tile != parent)
        {
            flush(pending, k, w, s, write, allsky)?;
        }
        pending[(k - 3) as usize]
            .get_or_insert_with(|| Pending::new(parent, w))
            .add_child(child, values, TileGeometry { width: w, shift: s });
        Ok(())
    }
    let mut put_allsky = |t: u64, values: &[f32]| {
        let f = w / sub.width;
        let (row0, col0) = ((t as usize / 27) * sub.width, (t as usize % 27) * sub.width);
        for r in 0..sub.width {
            for c in 0..sub.width {
                let (mut sum, mut n) = (0.0f64, 0u32);
                for dr in 0..f {
                    for dc in 0..f {
                        let v = values[(r * f + dr) * w + c * f + dc];
                        if v.is_finite() {
                            sum += v as f64;
                            n += 1;
                        }
                    }
                }
                if n > 0 {
                    allsky[(row0 + r) * aw + col0 + c] = (sum / n as f64) as f32;
                }
            }
        }
    };
    if let Some(changed) = &changed {
        let total = changed.len() as u64;
        for chunk in changed.chunks(64) {
            let rendered: Vec<Vec<f32>> = chunk
                .par_iter()
                .map(|&t| render(t))
                .collect::<Result<_>>()?;
            for (&t, values) in chunk.iter().zip(&rendered) {
                write(order, t, values)?;
                done += 1;
                progress(done, total);
            }
        }
        // Their parents, from the four children each now has on disk.
        let mut level = changed.clone();
        for k in (3..order).rev() {
            level = level.iter().map(|t| t >> 2).collect();
            level.dedup();
            level
                .par_iter()
                .map(|&t| write(k, t, &parent_from_disk(&building, k, t, geometry)?))
                .collect::<Result<()>>()?;
        }
        // The Allsky from every order-3 tile.
        for t in 0..768u64 {
            if let Some(values) = read_tile(&tile_path(&building, 3, t, "fits"), w)? {
                put_allsky(t, &values);
            }
        }
    }
    for chunk in tiles.chunks(64).filter(|_| changed.is_none()) {
        let rendered: Vec<Vec<f32>> = chunk
            .par_iter()
            .map(|&t| render(t))
            .collect::<Result<_>>()?;
        for (&t, values) in chunk.iter().zip(&rendered) {
            write(order, t, values)?;
            if order == 3 {
                put_allsky(t, values);
            } else {
                push_up(
                    &mut pending,
                    order - 1,
                    t,
                    values,
                    w,
                    s,
                    &write,
                    &mut put_allsky,
                )?;
            }
            done += 1;
            progress(done, total);
        }
    }
    for k in (3..order).rev().filter(|_| changed.is_none()) {
        flush(&mut pending, k, w, s, &write, &mut put_allsky)?;
    }
    let dir = building.join("Norder3");
    write_atomic(&dir.join("Allsky.fits"), &fits_image(aw, ah, &allsky, &[]))?;
    write_atomic(
        &dir.join("Allsky.png"),
        &png_of_values(aw, ah, &allsky, cut)?,
    )?;
    let moc = collection_moc(&usable, order)?;
    write_atomic(
        &building.join("Moc.fits"),
        &crate::moc_file(&moc, &opts.name)?,
    )?;
    let (ra, dec, fov) = initial_view(&usable);
    let mut p = Properties::meridian(
        &opts.name,
        "images",
        &format!(
            "The images of collection {} resampled on HEALPix",
            collection.name
        ),
        "image",
    );
    p.set("hips_creation_date", now_iso())
        .set("hips_release_date", now_iso())
        .set("hips_order", order.to_string())
        .set("hips_order_min", "3")
        .set("hips_tile_width", w.to_string())
        .set("hips_tile_format", "png fits")
        .set("hips_pixel_bitpix", "-32")
        .set("data_pixel_bitpix", "-32")
        .set(
            "hips_pixel_scale",
            format!(
                "{:.8}",
                meridian_sky::healpix::mean_cell_size_deg(pixel_order)
            ),
        )
        .set("s_pixel_scale", format!("{:.8}", finest / 3600.0))
        .set("hips_pixel_cut", format!("{} {}", cut.0, cut.1))
        .set(
            "hips_data_range",
            format!("{} {}", data_range.0, data_range.1),
        )
        .set("hips_initial_ra", format!("{ra:.6}"))
        .set("hips_initial_dec", format!("{dec:.6}"))
        .set("hips_initial_fov", format!("{fov:.6}"))
        .set(
            "moc_sky_fraction",
            format!("{:.8}", moc.coverage_percentage()),
        )
        .set("hips_sampling", kernel_name)
        .set("hips_overlay", "mean")
        .set("hips_nb_tiles", count_tiles(&building).to_string());
    // Added to: the first build's date stays, this one is the release.
    if previous.is_some()
        && let Some(d) = std::fs::read_to_string(out.join("properties"))
            .ok()
            .and_then(|t| {
                Properties::parse(&t)
                    .get("hips_creation_date")
                    .map(str::to_string)
            })
    {
        p.set("hips_creation_date", d);
    }
    p.write(&building)?;
    let manifest = Manifest {
        order,
        tile_width: w,
        kernel: kernel_name.to_string(),
        cut,
        data_range,
        images: keys,
    };
    write_atomic(
        &building.join(MANIFEST),
        &serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Invalid(e.to_string()))?,
    )?;
    crate::swap_in(&building, out)?;
    Ok(ImageHipsReport {
        order,
        tiles: written.into_inner(),
        images: usable.len(),
        skipped,
        cut,
    })
}

/// FITS tiles under a HiPS root.
fn count_tiles(root: &Path) -> usize {
    let dirs = |p: &Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(p)
            .map(|r| r.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    dirs(root)
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("Norder"))
        })
        .flat_map(|o| dirs(o))
        .flat_map(|d| dirs(&d))
        .filter(|f| f.extension().is_some_and(|e| e == "fits"))
        .count()
}

fn collection_moc(datasets: &[Dataset], order: u8) -> Result<meridian_sky::Moc> {
    let mocs: Vec<_> = datasets
        .iter()
        .map(|d| d.moc(order))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(meridian_sky::moc_union(&mocs))
}

/// Where a viewer opens: the mean direction of the images' centres, and a field holding
/// them (at least one image's width).
fn initial_view(datasets: &[Dataset]) -> (f64, f64, f64) {
    let mut v = [0.0f64; 3];
    for d in datasets {
        if let Ok(p) = meridian_sky::SkyPoint::new(d.ra_deg.rem_euclid(360.0), d.dec_deg) {
            let u = p.to_unit_vector();
            (0..3).for_each(|i| v[i] += u[i]);
        }
    }
    let c = meridian_sky::SkyPoint::from_vector(v);
    let fov = datasets
        .iter()
        .map(|d| {
            meridian_sky::angular_separation_deg(c.ra_deg(), c.dec_deg(), d.ra_deg, d.dec_deg) * 2.0
                + d.fov_deg
        })
        .fold(0.0, f64::max)
        .min(180.0);
    (c.ra_deg(), c.dec_deg(), fov)
}

/// Now as an ISO 8601 UTC time to the minute (`YYYY-mm-ddTHH:MMZ`), as HiPS dates are.
fn now_iso() -> String {
    let unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let iso = meridian_images::collection::mjd_to_iso(unix_s / 86_400.0 + 40_587.0);
    format!("{}Z", &iso[..16.min(iso.len())])
}
