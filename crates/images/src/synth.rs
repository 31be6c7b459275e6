//! Synthetic survey images: sources rendered with a Gaussian PSF on a noisy sky, with a
//! TAN-SIP WCS, in one of six bands at one epoch; written plain, tile-compressed (RICE_1
//! with CFITSIO's quantization and dithering) or as a multi-extension file of two
//! detectors. Each image is made from a seed alone, so a test can regenerate its truth.

use std::io::Write;
use std::path::{Path, PathBuf};

use meridian_formats::FitsHeader;

use crate::{Error, Result, Wcs};

/// A source to render: position and magnitude in the image's band.
#[derive(Debug, Clone, Copy)]
pub struct Star {
    pub ra_deg: f64,
    pub dec_deg: f64,
    pub mag: f64,
}

/// Survey bands (LSST u g r i z y): name and (min, max) wavelength, metres.
pub const BANDS: [(&str, f64, f64); 6] = [
    ("u", 320e-9, 400e-9),
    ("g", 400e-9, 552e-9),
    ("r", 552e-9, 691e-9),
    ("i", 691e-9, 818e-9),
    ("z", 818e-9, 922e-9),
    ("y", 922e-9, 1060e-9),
];

/// How an image file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One primary image.
    Plain,
    /// The image tile-compressed (RICE_1, quantized and dithered) in an extension.
    Rice,
    /// Two detectors side by side, one IMAGE extension each.
    TwoDetectors,
}

/// One synthetic exposure.
#[derive(Debug, Clone)]
pub struct Exposure {
    /// Pointing (the image centre), ICRS degrees.
    pub ra_deg: f64,
    pub dec_deg: f64,
    /// Position angle of the detector's y axis east of north, degrees.
    pub rotation_deg: f64,
    /// Index into [`BANDS`].
    pub band: usize,
    /// Start of the exposure, MJD.
    pub mjd: f64,
    pub exptime_s: f64,
    /// Pixels per side.
    pub size: u32,
    pub pixel_arcsec: f64,
    /// PSF full width at half maximum, arcseconds.
    pub fwhm_arcsec: f64,
    pub layout: Layout,
    /// Seed of the noise.
    pub seed: u64,
}

/// Photometric zero point: a source of this magnitude gives one count per second.
pub const ZERO_POINT_MAG: f64 = 28.0;
/// Sky level, counts per pixel per second.
pub const SKY_PER_S: f64 = 2.0;

/// A small deterministic generator (SplitMix64) with Gaussian deviates (Box-Muller):
/// enough for noise, and no dependency for it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn gauss(&mut self) -> f64 {
        let (a, b) = (self.uniform(), self.uniform());
        (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
    }
}

fn card(key: &str, value: &str, comment: &str) -> String {
    // Strings start at column 11, numbers end at column 30 (FITS's fixed format).
    let value = if value.starts_with('\'') {
        format!("{value:<20}")
    } else {
        format!("{value:>20}")
    };
    let c = if comment.is_empty() {
        format!("{key:<8}= {value}")
    } else {
        format!("{key:<8}= {value} / {comment}")
    };
    format!("{:<80}", &c[..c.len().min(80)])
}

fn quoted(s: &str) -> String {
    format!("'{:<8}'", s.replace('\'', "''"))
}

/// The WCS and other cards of detector `det` (0 or 1) of `e`: TAN with a small SIP
/// distortion (a second-order term that moves the corners by about a tenth of a pixel).
fn cards(e: &Exposure, det: u32, detectors: u32) -> Vec<String> {
    let n = f64::from(e.size);
    let scale = e.pixel_arcsec / 3600.0;
    let (s, c) = e.rotation_deg.to_radians().sin_cos();
    // Detectors side by side along x: the reference pixel of each is the pointing's,
    // shifted by its place in the row.
    let crpix1 = n / 2.0 + 0.5 - (f64::from(det) - (f64::from(detectors) - 1.0) / 2.0) * n;
    let (band, _, _) = BANDS[e.band];
    let date = crate::collection::mjd_to_iso(e.mjd);
    let k = 0.1 / (n / 2.0).powi(2);
    vec![
        card("CTYPE1", &quoted("RA---TAN-SIP"), ""),
        card("CTYPE2", &quoted("DEC--TAN-SIP"), ""),
        card("CRVAL1", &format!("{:.12}", e.ra_deg), ""),
        card("CRVAL2", &format!("{:.12}", e.dec_deg), ""),
        card("CRPIX1", &format!("{crpix1:.6}"), ""),
        card("CRPIX2", &format!("{:.6}", n / 2.0 + 0.5), ""),
        card("CD1_1", &format!("{:.15E}", -scale * c), ""),
        card("CD1_2", &format!("{:.15E}", scale * s), ""),
        card("CD2_1", &format!("{:.15E}", scale * s), ""),
        card("CD2_2", &format!("{:.15E}", scale * c), ""),
        card("RADESYS", &quoted("ICRS"), ""),
        card("A_ORDER", "2", ""),
        card("B_ORDER", "2", ""),
        card("A_2_0", &format!("{k:.10E}"), ""),
        card("A_1_1", &format!("{:.10E}", k / 2.0), ""),
        card("B_0_2", &format!("{:.10E}", -k), ""),
        card("DATE-OBS", &quoted(&date), "start of the exposure (UTC)"),
        card("MJD-OBS", &format!("{:.8}", e.mjd), "start of the exposure"),
        card("EXPTIME", &format!("{:.1}", e.exptime_s), "s"),
        card("FILTER", &quoted(band), ""),
        card("TELESCOP", &quoted("Meridian synthetic"), ""),
        card("INSTRUME", &quoted("SynthCam"), ""),
        card("BUNIT", &quoted("count"), ""),
        card(
            "MAGZERO",
            &format!("{:.4}", ZERO_POINT_MAG + 2.5 * e.exptime_s.log10()),
            "mag of 1 count",
        ),
        card(
            "SKYLEVEL",
            &format!("{:.4}", SKY_PER_S * e.exptime_s),
            "counts per pixel",
        ),
        card("PSF_FWHM", &format!("{:.4}", e.fwhm_arcsec), "arcsec"),
        card("DETECTOR", &det.to_string(), ""),
    ]
}

fn header_of(cards: &[String]) -> Result<FitsHeader> {
    let mut text = cards.concat();
    text.push_str(&format!("{:<80}", "END"));
    FitsHeader::parse(text.as_bytes()).map_err(Error::from)
}

/// Renders detector `det` of `e` with `stars` (those off the detector are skipped): the
/// sky, each star's flux spread by the PSF (integrated over each pixel by 3x3 sampling),
/// Poisson noise approximated as Gaussian. Returns the pixels, row by row, y up.
fn render(
    e: &Exposure,
    det: u32,
    detectors: u32,
    stars: &[Star],
) -> Result<(Vec<String>, Vec<f32>)> {
    let cards = cards(e, det, detectors);
    let wcs = Wcs::from_header(&header_of(&cards)?)?;
    let n = e.size as usize;
    let sky = SKY_PER_S * e.exptime_s;
    let mut img = vec![sky; n * n];
    let sigma_px = e.fwhm_arcsec / e.pixel_arcsec / 2.354_820_045;
    let reach = (5.0 * sigma_px).ceil() as i64;
    for s in stars {
        let Some([x, y]) = wcs.world_to_pixel(s.ra_deg, s.dec_deg) else {
            continue;
        };
        let (xi, yi) = (x.round() as i64, y.round() as i64);
        if xi < 1 - reach || yi < 1 - reach || xi > n as i64 + reach || yi > n as i64 + reach {
            continue;
        }
        let counts = 10f64.powf(-0.4 * (s.mag - ZERO_POINT_MAG)) * e.exptime_s;
        for py in (yi - reach).max(1)..=(yi + reach).min(n as i64) {
            for px in (xi - reach).max(1)..=(xi + reach).min(n as i64) {
                let mut f = 0.0;
                for sy in [-1.0 / 3.0, 0.0, 1.0 / 3.0] {
                    for sx in [-1.0 / 3.0, 0.0, 1.0 / 3.0] {
                        let dx = px as f64 + sx - x;
                        let dy = py as f64 + sy - y;
                        f += (-(dx * dx + dy * dy) / (2.0 * sigma_px * sigma_px)).exp();
                    }
                }
                let f = f / 9.0 / (2.0 * std::f64::consts::PI * sigma_px * sigma_px);
                img[(py as usize - 1) * n + (px as usize - 1)] += counts * f;
            }
        }
    }
    let mut rng = Rng(e.seed.wrapping_mul(31).wrapping_add(u64::from(det)));
    let pixels = img
        .iter()
        .map(|v| (v + v.max(0.0).sqrt() * rng.gauss()) as f32)
        .collect();
    Ok((cards, pixels))
}

fn hdu_bytes(
    primary: bool,
    size: u32,
    cards: &[String],
    pixels: &[f32],
    extra: &[String],
) -> Vec<u8> {
    let mut head = vec![if primary {
        card("SIMPLE", "T", "")
    } else {
        card("XTENSION", &quoted("IMAGE"), "")
    }];
    head.push(card("BITPIX", "-32", ""));
    let naxis = if pixels.is_empty() { 0 } else { 2 };
    head.push(card("NAXIS", &naxis.to_string(), ""));
    if naxis == 2 {
        head.push(card("NAXIS1", &size.to_string(), ""));
        head.push(card("NAXIS2", &size.to_string(), ""));
    }
    if primary {
        head.push(card("EXTEND", "T", ""));
    } else {
        head.push(card("PCOUNT", "0", ""));
        head.push(card("GCOUNT", "1", ""));
    }
    head.extend(extra.iter().cloned());
    head.extend(cards.iter().cloned());
    head.push(format!("{:<80}", "END"));
    let mut out = head.concat().into_bytes();
    out.resize(out.len().div_ceil(2880) * 2880, b' ');
    let start = out.len();
    for p in pixels {
        out.extend(p.to_be_bytes());
    }
    out.resize(start + (out.len() - start).div_ceil(2880) * 2880, 0);
    out
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Pixels(format!("{}: {e}", path.display()))
}

/// Writes exposure `e` with `stars` to `path` (through a temporary file renamed at the
/// end), laid out as `e.layout` says.
pub fn write(path: &Path, e: &Exposure, stars: &[Star]) -> Result<()> {
    let tmp: PathBuf = path.with_extension("partial");
    let mut bytes = Vec::new();
    match e.layout {
        Layout::Plain | Layout::Rice => {
            let (cards, pixels) = render(e, 0, 1, stars)?;
            bytes.extend(hdu_bytes(true, e.size, &cards, &pixels, &[]));
        }
        Layout::TwoDetectors => {
            let (cards, _) = render(e, 0, 2, &[])?;
            // The primary holds what both detectors share, no pixels.
            let shared: Vec<String> = cards
                .iter()
                .filter(|c| {
                    [
                        "DATE-OBS", "MJD-OBS ", "EXPTIME ", "FILTER  ", "TELESCOP", "INSTRUME",
                    ]
                    .iter()
                    .any(|k| c.starts_with(k))
                })
                .cloned()
                .collect();
            bytes.extend(hdu_bytes(true, e.size, &shared, &[], &[]));
            for det in 0..2 {
                let (cards, pixels) = render(e, det, 2, stars)?;
                let name = [card("EXTNAME", &quoted(&format!("DET{det}")), "")];
                bytes.extend(hdu_bytes(false, e.size, &cards, &pixels, &name));
            }
        }
    }
    if e.layout == Layout::Rice {
        let plain = path.with_extension("plain.partial");
        std::fs::write(&plain, &bytes).map_err(|x| io(&plain, x))?;
        let done = compress(&plain, &tmp);
        let _ = std::fs::remove_file(&plain);
        done?;
    } else {
        let mut f = std::fs::File::create(&tmp).map_err(|x| io(&tmp, x))?;
        f.write_all(&bytes).map_err(|x| io(&tmp, x))?;
    }
    std::fs::rename(&tmp, path).map_err(|x| io(path, x))
}

/// Copies the image of `plain` into `out` tile-compressed with RICE_1 (CFITSIO quantizes
/// floating-point pixels to a quarter of the noise, with subtractive dithering).
fn compress(plain: &Path, out: &Path) -> Result<()> {
    use std::ffi::CString;
    let _ = std::fs::remove_file(out);
    let name = |p: &Path| CString::new(p.to_string_lossy().as_bytes()).map_err(|x| io(p, x));
    let (inp, outp) = (name(plain)?, name(out)?);
    let mut status = 0;
    let mut fin = std::ptr::null_mut();
    let mut fout = std::ptr::null_mut();
    // SAFETY: CFITSIO calls on handles it opened here, each checked through `status`, and
    // both closed before returning.
    unsafe {
        fitsio::sys::ffopen(&mut fin, inp.as_ptr(), 0, &mut status);
        fitsio::sys::ffinit(&mut fout, outp.as_ptr(), &mut status);
        fitsio::sys::fits_set_compression_type(fout, 11, &mut status); // RICE_1
        fitsio::sys::fits_img_compress(fin, fout, &mut status);
        let mut close = 0;
        if !fout.is_null() {
            fitsio::sys::ffclos(fout, &mut close);
        }
        if !fin.is_null() {
            fitsio::sys::ffclos(fin, &mut close);
        }
    }
    if status != 0 {
        let _ = std::fs::remove_file(out);
        return Err(io(
            out,
            format!("RICE_1 compression failed, CFITSIO status {status}"),
        ));
    }
    Ok(())
}
