//! Quick-look previews: an image binned down to a few hundred pixels a side, stretched
//! (zscale or asinh) and encoded as an 8-bit greyscale PNG, north (FITS y) up.
//!
//! The image is read in strips of rows and binned as it is read, so a preview of a large
//! image needs memory for the preview only.

use std::path::Path;

use crate::cutout::{PixelBox, PixelReader, Values, first_plane};
use crate::{Error, ImageHdu, Result};

/// How pixel values become grey levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stretch {
    /// IRAF's zscale limits, linear between them.
    Zscale,
    /// asinh between the 0.5 and 99.5 percentiles.
    Asinh,
}

impl Stretch {
    /// `zscale` or `asinh`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.to_ascii_lowercase().as_str() {
            "zscale" | "linear" => Ok(Stretch::Zscale),
            "asinh" => Ok(Stretch::Asinh),
            other => Err(Error::Invalid(format!(
                "STRETCH: '{other}' is not a stretch: use zscale or asinh"
            ))),
        }
    }
}

/// Largest preview side, pixels.
pub const MAX_SIZE: u32 = 2048;

/// Rows read at a time.
const STRIP_PIXELS: u64 = 1 << 20;

/// How stored pixel values become physical ones: BSCALE, BZERO, and BLANK (ZBLANK for a
/// compressed image) for integer pixels.
struct Physical {
    scale: f64,
    zero: f64,
    blank: Option<f64>,
}

impl Physical {
    fn of(hdu: &ImageHdu) -> Self {
        let h = &hdu.header;
        Self {
            scale: h.float("BSCALE").unwrap_or(1.0),
            zero: h.float("BZERO").unwrap_or(0.0),
            blank: if hdu.compressed {
                h.float("ZBLANK").or(h.float("BLANK"))
            } else {
                h.float("BLANK")
            },
        }
    }

    /// Calls `f(i, value)` for every pixel of `v` that has a finite physical value.
    fn each(&self, v: &Values, mut f: impl FnMut(usize, f64)) {
        let mut put = |i: usize, x: f64| {
            let y = x * self.scale + self.zero;
            if y.is_finite() {
                f(i, y)
            }
        };
        match v {
            Values::Int(v) => v.iter().enumerate().for_each(|(i, x)| {
                if self.blank != Some(*x as f64) {
                    put(i, *x as f64)
                }
            }),
            Values::Float(v) => v.iter().enumerate().for_each(|(i, x)| put(i, *x)),
        }
    }
}

/// The physical values of every pixel of `hdu`'s first plane (BSCALE, BZERO and BLANK
/// applied; NaN where a pixel has none), FITS row order (the first row is y = 1).
pub fn physical(path: &Path, hdu: &ImageHdu) -> Result<Vec<f32>> {
    let (w, h) = hdu.size();
    let mut out = vec![f32::NAN; (w * h) as usize];
    let phys = Physical::of(hdu);
    let rows = (STRIP_PIXELS / w).max(1);
    let mut reader = PixelReader::open(path, hdu)?;
    let mut y0 = 0;
    while y0 < h {
        let y1 = (y0 + rows).min(h);
        let strip = reader.read(&first_plane(hdu, &PixelBox { x: 0..w, y: y0..y1 }))?;
        let base = (y0 * w) as usize;
        phys.each(&strip, |i, v| out[base + i] = v as f32);
        y0 = y1;
    }
    Ok(out)
}

/// The binned physical values of `hdu` (BSCALE, BZERO and BLANK applied, NaN where no
/// pixel had a value), at most `size` pixels a side: (width, height, values, y up).
fn binned(path: &Path, hdu: &ImageHdu, size: u32) -> Result<(usize, usize, Vec<f64>)> {
    let (w, h) = hdu.size();
    let factor = w.max(h).div_ceil(u64::from(size.max(1))).max(1);
    let (bw, bh) = (w.div_ceil(factor) as usize, h.div_ceil(factor) as usize);
    let mut sum = vec![0.0f64; bw * bh];
    let mut count = vec![0u64; bw * bh];
    let phys = Physical::of(hdu);
    // Whole strips of binned rows.
    let rows = ((STRIP_PIXELS / w).max(1) / factor).max(1) * factor;
    // One open file for every strip: a gzip file is not decompressed again for each.
    let mut reader = PixelReader::open(path, hdu)?;
    let mut y0 = 0;
    while y0 < h {
        let y1 = (y0 + rows).min(h);
        let strip = reader.read(&first_plane(hdu, &PixelBox { x: 0..w, y: y0..y1 }))?;
        phys.each(&strip, |i, v| {
            let x = (i as u64 % w) / factor;
            let y = (y0 + i as u64 / w) / factor;
            let k = y as usize * bw + x as usize;
            sum[k] += v;
            count[k] += 1;
        });
        y0 = y1;
    }
    let values = sum
        .iter()
        .zip(&count)
        .map(|(s, n)| if *n > 0 { s / *n as f64 } else { f64::NAN })
        .collect();
    Ok((bw, bh, values))
}

/// IRAF's zscale limits of `sorted` (finite values, ascending): a line fitted to the
/// sorted sample with iterative 2.5-sigma rejection, its slope divided by the contrast
/// (0.25) about the median.
pub fn zscale(sorted: &[f64]) -> (f64, f64) {
    let n = sorted.len();
    if n == 0 {
        return (0.0, 1.0);
    }
    let (min, max) = (sorted[0], sorted[n - 1]);
    let median = sorted[n / 2];
    let mut keep: Vec<bool> = vec![true; n];
    let mut slope = 0.0;
    for _ in 0..5 {
        let (mut sx, mut sy, mut sxx, mut sxy, mut m) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for (i, v) in sorted.iter().enumerate() {
            if keep[i] {
                let x = i as f64;
                sx += x;
                sy += v;
                sxx += x * x;
                sxy += x * v;
                m += 1.0;
            }
        }
        if m < (n as f64 * 0.5).max(5.0) {
            break;
        }
        let den = m * sxx - sx * sx;
        if den == 0.0 {
            break;
        }
        slope = (m * sxy - sx * sy) / den;
        let icept = (sy - slope * sx) / m;
        let resid: Vec<f64> = sorted
            .iter()
            .enumerate()
            .map(|(i, v)| v - (icept + slope * i as f64))
            .collect();
        let sigma = (resid
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(r, _)| r * r)
            .sum::<f64>()
            / m)
            .sqrt();
        let mut changed = false;
        for (i, r) in resid.iter().enumerate() {
            let k = r.abs() <= 2.5 * sigma;
            if keep[i] && !k {
                keep[i] = false;
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let contrast = 0.25;
    let slope = slope / contrast;
    let centre = (n / 2) as f64;
    let z1 = (median - centre * slope).max(min);
    let z2 = (median + (n as f64 - 1.0 - centre) * slope).min(max);
    if z2 > z1 { (z1, z2) } else { (min, max) }
}

/// A PNG preview of image `hdu` of `path`, at most `size` pixels a side.
pub fn png(path: &Path, hdu: &ImageHdu, size: u32, stretch: Stretch) -> Result<Vec<u8>> {
    if size == 0 || size > MAX_SIZE {
        return Err(Error::Invalid(format!(
            "SIZE: {size} is not a preview size (1 to {MAX_SIZE} pixels)"
        )));
    }
    let (w, h, values) = binned(path, hdu, size)?;
    let mut sample: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    // A sample of at most 10,000 values, evenly spaced, as zscale takes.
    if sample.len() > 10_000 {
        let step = sample.len() as f64 / 10_000.0;
        sample = (0..10_000)
            .map(|i| sample[(i as f64 * step) as usize])
            .collect();
    }
    sample.sort_by(f64::total_cmp);
    let grey: Box<dyn Fn(f64) -> u8> = match stretch {
        Stretch::Zscale => {
            let (z1, z2) = zscale(&sample);
            Box::new(move |v| (((v - z1) / (z2 - z1)).clamp(0.0, 1.0) * 255.0).round() as u8)
        }
        Stretch::Asinh => {
            let pct = |p: f64| {
                sample
                    .get(((sample.len() as f64 - 1.0) * p) as usize)
                    .copied()
                    .unwrap_or(0.0)
            };
            let (lo, hi) = (pct(0.005), pct(0.995));
            let range = if hi > lo { hi - lo } else { 1.0 };
            let soft = 10.0f64;
            Box::new(move |v| {
                let t = ((v - lo) / range).clamp(0.0, 1.0);
                ((t * soft).asinh() / soft.asinh() * 255.0).round() as u8
            })
        }
    };
    // PNG rows run top-down; FITS y runs up.
    let mut pixels = Vec::with_capacity(w * h);
    for y in (0..h).rev() {
        pixels.extend(
            values[y * w..(y + 1) * w]
                .iter()
                .map(|v| if v.is_finite() { grey(*v) } else { 0 }),
        );
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w as u32, h as u32);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc
            .write_header()
            .map_err(|e| Error::Pixels(format!("{}: preview: {e}", path.display())))?;
        writer
            .write_image_data(&pixels)
            .map_err(|e| Error::Pixels(format!("{}: preview: {e}", path.display())))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zscale_of_a_flat_field_with_stars_ignores_the_stars() {
        // Sky of 100 +- 1 with 2% bright stars: the limits hug the sky.
        let mut v: Vec<f64> = (0..1000)
            .map(|i| 100.0 + ((i * 7919) % 200) as f64 / 100.0 - 1.0)
            .collect();
        v.extend((0..20).map(|i| 5000.0 + i as f64));
        v.sort_by(f64::total_cmp);
        let (z1, z2) = zscale(&v);
        assert!((98.9..100.0).contains(&z1), "{z1}");
        assert!(z2 > 100.0 && z2 < 200.0, "{z2}");
    }
}
