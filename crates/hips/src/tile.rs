//! Tile geometry and tile files.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Where tile `npix` of `order` lies under a HiPS root: `Norder{k}/Dir{d}/Npix{n}.{ext}`,
/// with `d` the index rounded down to a multiple of 10,000.
pub fn tile_path(root: &Path, order: u8, npix: u64, ext: &str) -> PathBuf {
    root.join(format!("Norder{order}"))
        .join(format!("Dir{}", npix / 10_000 * 10_000))
        .join(format!("Npix{npix}.{ext}"))
}

/// The pixels of tiles `width` pixels wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileGeometry {
    /// Tile width (and height) in pixels, a power of two.
    pub width: usize,
    /// log2 of the width: the order of a tile's pixels is the tile's order plus this.
    pub shift: u8,
}

impl TileGeometry {
    /// Tiles `width` pixels wide (a power of two from 2 to 4096).
    pub fn new(width: usize) -> Result<Self> {
        if !width.is_power_of_two() || !(2..=4096).contains(&width) {
            return Err(Error::Invalid(format!(
                "tile width {width}: HiPS tiles are a power of two from 2 to 4096 pixels wide"
            )));
        }
        Ok(Self {
            width,
            shift: width.trailing_zeros() as u8,
        })
    }

    /// The sub-index (the cell within the tile) of the pixel at `row` (from the top of a
    /// PNG tile) and `col`.
    pub fn sub_index(&self, row: usize, col: usize) -> u64 {
        interleave(row as u32) | (interleave(col as u32) << 1)
    }

    /// The (row from the top, column) of sub-index `s`.
    pub fn pixel_of(&self, s: u64) -> (usize, usize) {
        (deinterleave(s) as usize, deinterleave(s >> 1) as usize)
    }
}

/// Spreads the bits of `v` to the even bit positions.
fn interleave(v: u32) -> u64 {
    let mut x = v as u64;
    x = (x | (x << 16)) & 0x0000_FFFF_0000_FFFF;
    x = (x | (x << 8)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x << 4)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x << 2)) & 0x3333_3333_3333_3333;
    (x | (x << 1)) & 0x5555_5555_5555_5555
}

/// Gathers the even bits of `v`.
fn deinterleave(v: u64) -> u32 {
    let mut x = v & 0x5555_5555_5555_5555;
    x = (x | (x >> 1)) & 0x3333_3333_3333_3333;
    x = (x | (x >> 2)) & 0x0F0F_0F0F_0F0F_0F0F;
    x = (x | (x >> 4)) & 0x00FF_00FF_00FF_00FF;
    x = (x | (x >> 8)) & 0x0000_FFFF_0000_FFFF;
    x = (x | (x >> 16)) & 0x0000_0000_FFFF_FFFF;
    x as u32
}

/// Writes `bytes` to `path` through a temporary name in the same directory (made as
/// needed): a reader never sees a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Writes `bytes` to a new file at `path` (made with its directory as needed), directly:
/// for files of a HiPS being built in a directory of its own, which no reader sees until
/// the whole directory is swapped in. Never for a file that may be a link to a served
/// one (an incremental build's), which [`write_atomic`] replaces instead.
pub fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    match std::fs::write(path, bytes) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
            }
            std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A FITS image of 32-bit floats, `width` x `height`, from `rows` given top row first (as
/// a PNG shows it): FITS stores the bottom row first.
pub fn fits_image(
    width: usize,
    height: usize,
    rows_from_top: &[f32],
    cards: &[(&str, String)],
) -> Vec<u8> {
    let mut head: Vec<String> = vec![
        format!("{:<8}= {:>20}", "SIMPLE", "T"),
        format!("{:<8}= {:>20}", "BITPIX", -32),
        format!("{:<8}= {:>20}", "NAXIS", 2),
        format!("{:<8}= {:>20}", "NAXIS1", width),
        format!("{:<8}= {:>20}", "NAXIS2", height),
    ];
    for (k, v) in cards {
        head.push(format!("{k:<8}= {v:>20}"));
    }
    head.push("END".into());
    let mut out: Vec<u8> = Vec::with_capacity(2880 + 4 * width * height + 2880);
    for c in head {
        let mut b = c.into_bytes();
        b.resize(80, b' ');
        out.extend_from_slice(&b[..80]);
    }
    out.resize(out.len().div_ceil(2880) * 2880, b' ');
    for row in rows_from_top.chunks(width).rev() {
        for v in row {
            out.extend_from_slice(&v.to_be_bytes());
        }
    }
    out.resize(out.len().div_ceil(2880) * 2880, 0);
    out
}

/// A PNG of `values` (`width` x `height`, top row first) mapping `cut` linearly to
/// 0..255; pixels without a value transparent.
pub fn png_of_values(
    width: usize,
    height: usize,
    values: &[f32],
    cut: (f32, f32),
) -> Result<Vec<u8>> {
    let grey: Vec<u8> = values
        .iter()
        .map(|v| {
            (((v - cut.0) / (cut.1 - cut.0)) * 255.0)
                .round()
                .clamp(0.0, 255.0) as u8
        })
        .collect();
    let alpha: Vec<u8> = values
        .iter()
        .map(|v| if v.is_finite() { 255 } else { 0 })
        .collect();
    png_image(width, height, &grey, Some(&alpha))
}

/// An 8-bit grey PNG (or grey with alpha, when `alpha` is given) of `width` x `height`
/// pixels, top row first.
pub fn png_image(
    width: usize,
    height: usize,
    grey: &[u8],
    alpha: Option<&[u8]>,
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
        enc.set_depth(png::BitDepth::Eight);
        let data: Vec<u8> = match alpha {
            Some(a) => {
                enc.set_color(png::ColorType::GrayscaleAlpha);
                grey.iter().zip(a).flat_map(|(g, a)| [*g, *a]).collect()
            }
            None => {
                enc.set_color(png::ColorType::Grayscale);
                grey.to_vec()
            }
        };
        let mut w = enc
            .write_header()
            .map_err(|e| Error::Invalid(format!("PNG: {e}")))?;
        w.write_image_data(&data)
            .map_err(|e| Error::Invalid(format!("PNG: {e}")))?;
    }
    Ok(out)
}

/// A HiPS `properties` file: keys in the order given.
#[derive(Debug, Clone, Default)]
pub struct Properties {
    entries: Vec<(String, String)>,
}

impl Properties {
    /// Sets `key` (replacing an earlier value).
    pub fn set(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        let value = value.into();
        match self.entries.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.entries.push((key.to_string(), value)),
        }
        self
    }

    /// The keys every HiPS Meridian builds shares: its ID, title, description and kind,
    /// the builder, status and frame.
    pub fn meridian(name: &str, title: &str, description: &str, dataproduct_type: &str) -> Self {
        let mut p = Properties::default();
        p.set("creator_did", format!("ivo://meridian/hips/{name}"))
            .set("obs_title", format!("{name}: {title}"))
            .set("obs_description", description)
            .set("dataproduct_type", dataproduct_type)
            .set("hips_version", "1.4")
            .set(
                "hips_builder",
                format!("Meridian {}", env!("CARGO_PKG_VERSION")),
            )
            .set("hips_creator", "Meridian")
            .set("hips_status", "public master clonableOnce")
            .set("hips_frame", "equatorial");
        p
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The file's text: `key = value` lines.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.entries {
            s.push_str(&format!("{k:<30}= {v}\n"));
        }
        s
    }

    /// Reads a properties file's text (`key = value` lines; `#` comments).
    pub fn parse(text: &str) -> Self {
        let mut p = Properties::default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                p.set(k.trim(), v.trim());
            }
        }
        p
    }

    /// Writes the file `properties` under `root`.
    pub fn write(&self, root: &Path) -> Result<()> {
        write_atomic(&root.join("properties"), self.text().as_bytes())
    }
}

/// Writes `data` to a file, creating it (for small files written once: `index.html`).
pub fn write_text(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_indices_interleave_rows_and_columns() {
        let g = TileGeometry::new(4).unwrap();
        // The 2 x 2 case: row bits even, column bits odd.
        assert_eq!(g.sub_index(0, 0), 0);
        assert_eq!(g.sub_index(1, 0), 1);
        assert_eq!(g.sub_index(0, 1), 2);
        assert_eq!(g.sub_index(1, 1), 3);
        let mut seen = [false; 16];
        for r in 0..4 {
            for c in 0..4 {
                let s = g.sub_index(r, c);
                assert_eq!(g.pixel_of(s), (r, c));
                seen[s as usize] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
        assert!(TileGeometry::new(100).is_err());
        assert_eq!(
            tile_path(Path::new("/h"), 5, 12_345, "fits"),
            PathBuf::from("/h/Norder5/Dir10000/Npix12345.fits")
        );
    }

    #[test]
    fn fits_tiles_store_the_bottom_row_first() {
        let img = fits_image(2, 2, &[1.0, 2.0, 3.0, 4.0], &[]);
        assert_eq!(img.len(), 5760);
        let data = &img[2880..2896];
        let v: Vec<f32> = data
            .chunks(4)
            .map(|b| f32::from_be_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(v, [3.0, 4.0, 1.0, 2.0]);
    }
}
