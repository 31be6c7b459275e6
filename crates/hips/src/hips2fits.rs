//! hips2fits: an image of any part of the sky, in any projection Meridian's WCS knows,
//! sampled from a HiPS's FITS tiles, with its WCS header.
//!
//! Each output pixel's centre is taken to the sky through the output WCS, to ICRS, and
//! sampled from the HiPS at the order whose pixels are just finer than the output's (or
//! the deepest there is), interpolating bilinearly between the four nearest HEALPix cell
//! centres (cdshealpix's weights); cells without data are left out of the weights, and a
//! pixel with none is NaN.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use meridian_images::frames::to_icrs;
use meridian_images::wcs::{Frame, Wcs};

use crate::{Error, Properties, Result, TileGeometry, tile_path};

/// What to draw.
#[derive(Debug, Clone)]
pub struct Request {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Projection code (TAN, SIN, AIT, CAR, ZEA, STG, ARC, MER, CEA, SFL).
    pub projection: String,
    /// Galactic coordinates rather than ICRS.
    pub galactic: bool,
    /// Centre longitude, degrees (RA, or l when galactic).
    pub lon_deg: f64,
    /// Centre latitude, degrees.
    pub lat_deg: f64,
    /// Field of view along the longer side, degrees.
    pub fov_deg: f64,
    /// Rotation of the image's y axis from north through east, degrees.
    pub rotation_deg: f64,
}

/// Projections offered (all of them checked by the WCS's own tests against wcslib's).
pub const PROJECTIONS: [&str; 10] = [
    "TAN", "SIN", "AIT", "CAR", "ZEA", "STG", "ARC", "MER", "CEA", "SFL",
];

/// The image drawn: values top row first, its FITS WCS cards, and the HiPS order used.
#[derive(Debug, Clone)]
pub struct Drawn {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Values, top row first (NaN where the HiPS has no data).
    pub rows_from_top: Vec<f32>,
    /// WCS and provenance cards for the FITS header, values as FITS writes them.
    pub cards: Vec<(&'static str, String)>,
    /// The HiPS tile order sampled.
    pub order: u8,
}

/// The FITS cards of the output WCS.
pub fn wcs_cards(r: &Request) -> Result<Vec<(&'static str, String)>> {
    let proj = r.projection.to_ascii_uppercase();
    if !PROJECTIONS.contains(&proj.as_str()) {
        return Err(Error::Invalid(format!(
            "projection: '{}' is not one of {}",
            r.projection,
            PROJECTIONS.join(", ")
        )));
    }
    let scale = r.fov_deg / r.width.max(r.height) as f64;
    let (c1, c2) = if r.galactic {
        ("GLON", "GLAT")
    } else {
        ("RA--", "DEC-")
    };
    let (s, c) = r.rotation_deg.to_radians().sin_cos();
    let q = |s: &str| format!("'{s:<8}'");
    let mut cards = vec![
        ("CTYPE1", q(&format!("{c1}-{proj}"))),
        ("CTYPE2", q(&format!("{c2}-{proj}"))),
        ("CRPIX1", format!("{:.1}", (r.width as f64 + 1.0) / 2.0)),
        ("CRPIX2", format!("{:.1}", (r.height as f64 + 1.0) / 2.0)),
        ("CRVAL1", format!("{:.12}", r.lon_deg)),
        ("CRVAL2", format!("{:.12}", r.lat_deg)),
        ("CDELT1", format!("{:.15E}", -scale)),
        ("CDELT2", format!("{:.15E}", scale)),
        ("PC1_1", format!("{c:.15}")),
        ("PC1_2", format!("{:.15}", -s)),
        ("PC2_1", format!("{s:.15}")),
        ("PC2_2", format!("{c:.15}")),
        ("CUNIT1", q("deg")),
        ("CUNIT2", q("deg")),
    ];
    if !r.galactic {
        cards.push(("RADESYS", q("ICRS")));
    }
    Ok(cards)
}

/// Most tiles one drawing holds at once.
const MAX_TILES_HELD: usize = 128;

/// FITS tiles read so far (None where the HiPS has no tile).
struct TileCache {
    root: PathBuf,
    geometry: TileGeometry,
    tiles: HashMap<(u8, u64), Option<Vec<f32>>>,
}

impl TileCache {
    /// The value of cell `cell` of pixel order `order + shift`, NaN when there is none.
    fn value(&mut self, order: u8, cell: u64) -> Result<f32> {
        let shift = 2 * self.geometry.shift as u32;
        let tile = cell >> shift;
        if !self.tiles.contains_key(&(order, tile)) {
            // A bounded set of tiles: a wide image reads its rows' tiles again rather
            // than holding every tile of the sky.
            if self.tiles.len() >= MAX_TILES_HELD {
                self.tiles.clear();
            }
            let path = tile_path(&self.root, order, tile, "fits");
            let data = if path.exists() {
                let hdus = meridian_images::cutout::image_hdus(&path)
                    .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
                let hdu = hdus.first().ok_or_else(|| {
                    Error::Invalid(format!("{}: no image in the tile", path.display()))
                })?;
                if hdu.size() != (self.geometry.width as u64, self.geometry.width as u64) {
                    return Err(Error::Invalid(format!(
                        "{}: not a {w} x {w} tile",
                        path.display(),
                        w = self.geometry.width
                    )));
                }
                Some(
                    meridian_images::preview::physical(&path, hdu)
                        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?,
                )
            } else {
                None
            };
            self.tiles.insert((order, tile), data);
        }
        let Some(data) = &self.tiles[&(order, tile)] else {
            return Ok(f32::NAN);
        };
        let w = self.geometry.width;
        let (row, col) = self.geometry.pixel_of(cell & ((1u64 << shift) - 1));
        // FITS tiles store the bottom row first.
        Ok(data[(w - 1 - row) * w + col])
    }
}

/// Draws `r` from the HiPS at `root` (its FITS tiles). `max_pixels` bounds the output.
pub fn draw(root: &Path, r: &Request, max_pixels: u64) -> Result<Drawn> {
    if r.width == 0 || r.height == 0 {
        return Err(Error::Invalid("width and height must be at least 1".into()));
    }
    if (r.width as u64) * (r.height as u64) > max_pixels {
        return Err(Error::Invalid(format!(
            "width x height: {} x {} is over the limit of {max_pixels} pixels",
            r.width, r.height
        )));
    }
    if !(r.fov_deg > 0.0 && r.fov_deg <= 360.0) {
        return Err(Error::Invalid(format!(
            "fov: {} is not in (0, 360] degrees",
            r.fov_deg
        )));
    }
    if !r.lon_deg.is_finite() || !(-90.0..=90.0).contains(&r.lat_deg) {
        return Err(Error::Invalid(format!(
            "ra, dec: ({}, {}) is not a position on the sky",
            r.lon_deg, r.lat_deg
        )));
    }
    if !r.rotation_deg.is_finite() {
        return Err(Error::Invalid("rotation_angle: not a number".into()));
    }
    let text = std::fs::read_to_string(root.join("properties"))
        .map_err(|e| Error::io(&root.join("properties"), e))?;
    let props = Properties::parse(&text);
    if props.get("dataproduct_type").is_some_and(|t| t != "image") {
        return Err(Error::Invalid(
            "hips: a catalog HiPS has no pixels to draw".into(),
        ));
    }
    if !props
        .get("hips_tile_format")
        .is_some_and(|f| f.split_whitespace().any(|f| f == "fits"))
    {
        return Err(Error::Invalid("hips: this HiPS has no FITS tiles".into()));
    }
    if props.get("hips_frame").is_some_and(|f| f != "equatorial") {
        return Err(Error::Invalid(
            "hips: only HiPS in the equatorial frame can be drawn".into(),
        ));
    }
    let number = |k: &str| -> Result<u64> {
        props
            .get(k)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Invalid(format!("the HiPS's properties lack {k}")))
    };
    let max_order = number("hips_order")? as u8;
    let min_order = props
        .get("hips_order_min")
        .and_then(|v| v.parse().ok())
        .unwrap_or(3u8);
    let geometry = TileGeometry::new(number("hips_tile_width")? as usize)?;

    let cards = wcs_cards(r)?;
    let mut head = String::new();
    for (k, v) in [
        ("SIMPLE", "T".to_string()),
        ("BITPIX", "-32".to_string()),
        ("NAXIS", "2".to_string()),
        ("NAXIS1", r.width.to_string()),
        ("NAXIS2", r.height.to_string()),
    ]
    .iter()
    .chain(cards.iter())
    {
        head.push_str(&format!("{:<80}", format!("{k:<8}= {v:>20}")));
    }
    head.push_str(&format!("{:<80}", "END"));
    let header = meridian_formats::FitsHeader::parse(head.as_bytes())
        .map_err(|e| Error::Invalid(format!("output header: {e}")))?;
    let wcs = Wcs::from_header(&header).map_err(|e| Error::Invalid(format!("output WCS: {e}")))?;

    // The order whose pixels are just finer than the output's.
    let scale = r.fov_deg / r.width.max(r.height) as f64;
    let mut order = min_order.max(3).min(max_order);
    while order < max_order
        && meridian_sky::healpix::mean_cell_size_deg(order + geometry.shift) > scale
    {
        order += 1;
    }
    let pixel_order = order + geometry.shift;
    let mut cache = TileCache {
        root: root.to_path_buf(),
        geometry,
        tiles: HashMap::new(),
    };
    let frame = if r.galactic {
        Frame::Galactic
    } else {
        Frame::Icrs
    };
    let mut out = vec![f32::NAN; r.width * r.height];
    for top in 0..r.height {
        let y = (r.height - top) as f64;
        for x in 0..r.width {
            let Some((lon, lat)) = wcs.pixel_to_world([x as f64 + 1.0, y]) else {
                continue;
            };
            if !lon.is_finite() || !lat.is_finite() {
                continue;
            }
            let (ra, dec) = to_icrs(frame, lon, lat);
            let mut sum = 0.0f64;
            let mut weight = 0.0f64;
            for (cell, w) in meridian_sky::healpix::bilinear(pixel_order, ra, dec) {
                let v = cache.value(order, cell)?;
                if v.is_finite() && w > 0.0 {
                    sum += w * v as f64;
                    weight += w;
                }
            }
            if weight > 0.0 {
                out[top * r.width + x] = (sum / weight) as f32;
            }
        }
    }
    let mut all = cards;
    all.push(("HIPSORD", order.to_string()));
    Ok(Drawn {
        width: r.width,
        height: r.height,
        rows_from_top: out,
        cards: all,
        order,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_wcs_puts_the_centre_at_the_centre() {
        let r = Request {
            width: 300,
            height: 200,
            projection: "tan".into(),
            galactic: false,
            lon_deg: 250.4,
            lat_deg: 36.46,
            fov_deg: 0.3,
            rotation_deg: 30.0,
        };
        let cards = wcs_cards(&r).unwrap();
        let mut head = String::new();
        for (k, v) in [
            ("NAXIS", "2".to_string()),
            ("NAXIS1", "300".into()),
            ("NAXIS2", "200".into()),
        ]
        .iter()
        .chain(cards.iter())
        {
            head.push_str(&format!("{:<80}", format!("{k:<8}= {v:>20}")));
        }
        head.push_str(&format!("{:<80}", "END"));
        let h = meridian_formats::FitsHeader::parse(head.as_bytes()).unwrap();
        let wcs = Wcs::from_header(&h).unwrap();
        let (ra, dec) = wcs.pixel_to_world([150.5, 100.5]).unwrap();
        assert!((ra - 250.4).abs() < 1e-9 && (dec - 36.46).abs() < 1e-9);
        // One pixel up goes 30 degrees east of north, 0.001 degree away.
        let (ra2, dec2) = wcs.pixel_to_world([150.5, 101.5]).unwrap();
        let east = (ra2 - ra) * dec.to_radians().cos();
        assert!((east.hypot(dec2 - dec) - 0.001).abs() < 1e-8);
        assert!((east.atan2(dec2 - dec).to_degrees() - 30.0).abs() < 1e-3);
        let bad = Request {
            projection: "XYZ".into(),
            ..r
        };
        assert!(wcs_cards(&bad).is_err());
    }
}
