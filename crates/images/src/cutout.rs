//! Pixels of image HDUs and cutouts of them as FITS files.
//!
//! Pixels are read by CFITSIO (the `fitsio` crate, built from its bundled source), which
//! decodes tile-compressed images (RICE_1, GZIP_1, GZIP_2, HCOMPRESS_1, PLIO_1) and reads
//! only the tiles a region touches. Values are read as stored (BSCALE and BZERO not
//! applied) and written with the same BITPIX, BSCALE, BZERO and BLANK, so that a cutout's
//! pixels are the original's exactly.

use std::io::Write;
use std::ops::Range;
use std::path::Path;

use meridian_formats::{FitsHeader, HduHeader};

use crate::{Error, Result, Wcs};

/// One image HDU of a file: its header as an image (for a tile-compressed image, the
/// header of the image it holds), its size and its pixel type.
#[derive(Debug, Clone)]
pub struct ImageHdu {
    /// The HDU's index in the file (0 is the primary).
    pub index: usize,
    /// The header, raw (a compressed image's binary-table header).
    pub header: FitsHeader,
    /// BITPIX of the pixels (ZBITPIX of a compressed image).
    pub bitpix: i64,
    /// Length of each axis, NAXIS1 first.
    pub axes: Vec<u64>,
    /// Whether the image is tile-compressed.
    pub compressed: bool,
    /// Byte offset of the data unit in the file when its pixels lie there as stored (an
    /// uncompressed image in a file that is not gzipped): cutouts then copy rows of bytes
    /// straight from the file.
    pub raw_offset: Option<u64>,
}

impl ImageHdu {
    /// The image HDU of `h` (at `index`), if it holds an image of two or more axes.
    pub fn from_header(index: usize, h: &HduHeader) -> Option<Self> {
        let header = &h.header;
        let compressed = header.get("ZIMAGE") == Some("T");
        let z = if compressed { "Z" } else { "" };
        if !compressed && header.get("XTENSION").is_some_and(|x| x.trim() != "IMAGE") {
            return None;
        }
        let naxis = header.float(&format!("{z}NAXIS"))? as usize;
        let axes: Vec<u64> = (1..=naxis)
            .map(|i| header.float(&format!("{z}NAXIS{i}")).map(|v| v as u64))
            .collect::<Option<_>>()?;
        if axes.len() < 2 || axes.contains(&0) {
            return None;
        }
        Some(ImageHdu {
            index,
            header: header.clone(),
            bitpix: header.float(&format!("{z}BITPIX"))? as i64,
            axes,
            compressed,
            raw_offset: None,
        })
    }

    /// Width and height (NAXIS1, NAXIS2).
    pub fn size(&self) -> (u64, u64) {
        (self.axes[0], self.axes[1])
    }

    /// The HDU's celestial WCS.
    pub fn wcs(&self) -> Result<Wcs> {
        Wcs::from_header(&self.header)
    }
}

/// The image HDUs of the FITS file at `path`.
pub fn image_hdus(path: &Path) -> Result<Vec<ImageHdu>> {
    let headers = meridian_formats::read_fits_headers(path)?;
    let mut magic = [0u8; 2];
    let gzipped = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok()
        && magic == [0x1f, 0x8b];
    Ok(headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let mut hdu = ImageHdu::from_header(i, h)?;
            if !gzipped && !hdu.compressed {
                hdu.raw_offset = Some(h.data_offset);
            }
            Some(hdu)
        })
        .collect())
}

/// Pixel values as stored.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    /// Integer pixels (BITPIX 8, 16, 32, 64).
    Int(Vec<i64>),
    /// Floating-point pixels (BITPIX -32, -64).
    Float(Vec<f64>),
}

/// A rectangle of pixels, 0-based and end-exclusive on each axis (x along NAXIS1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PixelBox {
    pub x: Range<u64>,
    pub y: Range<u64>,
}

impl PixelBox {
    /// The pixels of an image of `size` whose areas meet the rectangle of FITS pixel
    /// coordinates `lo`..`hi` (x, y), clipped to the image; `None` when it misses the image.
    pub fn covering(lo: [f64; 2], hi: [f64; 2], size: (u64, u64)) -> Option<Self> {
        // Pixel i (1-based) spans [i - 0.5, i + 0.5): index floor(p - 0.5).
        let span = |lo: f64, hi: f64, n: u64| -> Option<Range<u64>> {
            let a = (lo - 0.5).floor().max(0.0);
            let b = ((hi - 0.5).floor() + 1.0).min(n as f64);
            (a < b).then_some(a as u64..b as u64)
        };
        Some(PixelBox {
            x: span(lo[0], hi[0], size.0)?,
            y: span(lo[1], hi[1], size.1)?,
        })
    }

    /// Pixels in the box.
    pub fn pixels(&self) -> u64 {
        (self.x.end - self.x.start) * (self.y.end - self.y.start)
    }
}

fn fits_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Pixels(format!("{}: {e}", path.display()))
}

/// An image HDU opened for reading pixels as stored (BSCALE and BZERO not applied).
pub(crate) struct PixelReader<'a> {
    path: &'a Path,
    file: fitsio::FitsFile,
    hdu: fitsio::hdu::FitsHdu,
    bitpix: i64,
}

impl<'a> PixelReader<'a> {
    pub(crate) fn open(path: &'a Path, hdu: &ImageHdu) -> Result<Self> {
        let mut file = fitsio::FitsFile::open(path).map_err(|e| fits_err(path, e))?;
        let fh = file.hdu(hdu.index).map_err(|e| fits_err(path, e))?;
        // Values as stored: CFITSIO would otherwise apply BSCALE and BZERO.
        let mut status = 0;
        // SAFETY: the file handle is open and current on this HDU (`hdu` made it current).
        unsafe {
            fitsio::sys::ffpscl(file.as_raw(), 1.0, 0.0, &mut status);
        }
        if status != 0 {
            return Err(fits_err(path, format!("CFITSIO status {status}")));
        }
        Ok(Self {
            path,
            file,
            hdu: fh,
            bitpix: hdu.bitpix,
        })
    }

    /// The pixels of `ranges` (0-based, end-exclusive, one per axis), x fastest.
    pub(crate) fn read(&mut self, ranges: &[Range<usize>]) -> Result<Values> {
        let refs: Vec<&Range<usize>> = ranges.iter().collect();
        let path = self.path;
        Ok(if self.bitpix > 0 {
            Values::Int(
                self.hdu
                    .read_region::<Vec<i64>>(&mut self.file, &refs)
                    .map_err(|e| fits_err(path, e))?,
            )
        } else {
            Values::Float(
                self.hdu
                    .read_region::<Vec<f64>>(&mut self.file, &refs)
                    .map_err(|e| fits_err(path, e))?,
            )
        })
    }
}

fn check_box(path: &Path, hdu: &ImageHdu, b: &PixelBox) -> Result<()> {
    let (w, h) = hdu.size();
    if b.x.end > w || b.y.end > h || b.x.is_empty() || b.y.is_empty() {
        return Err(Error::Pixels(format!(
            "{}: pixel box {:?} is outside the {w} x {h} image",
            path.display(),
            b
        )));
    }
    Ok(())
}

/// Reads the pixels of `b` from image `hdu` of `path`, as stored, row by row (x fastest).
/// Extra axes beyond the second are read at their first plane.
pub fn read_box(path: &Path, hdu: &ImageHdu, b: &PixelBox) -> Result<Values> {
    check_box(path, hdu, b)?;
    PixelReader::open(path, hdu)?.read(&first_plane(hdu, b))
}

/// The ranges of box `b` in the first plane of every axis past the second.
pub(crate) fn first_plane(hdu: &ImageHdu, b: &PixelBox) -> Vec<Range<usize>> {
    let mut ranges: Vec<Range<usize>> = Vec::with_capacity(hdu.axes.len());
    ranges.push(b.x.start as usize..b.x.end as usize);
    ranges.push(b.y.start as usize..b.y.end as usize);
    for _ in 2..hdu.axes.len() {
        ranges.push(0..1);
    }
    ranges
}

/// The pixel box of `hdu` that covers the circle of `radius_deg` about (`lon_deg`,
/// `lat_deg`) (in the image's frame), clipped to the image; `None` when they do not meet.
pub fn circle_box(
    wcs: &Wcs,
    size: (u64, u64),
    lon_deg: f64,
    lat_deg: f64,
    radius_deg: f64,
) -> Option<PixelBox> {
    // The circle's edge (and centre) in pixels: a small circle projects to a convex shape
    // whose bounding box these points give to well under a pixel.
    let mut points = vec![wcs.world_to_pixel(lon_deg, lat_deg)];
    if let Ok(centre) = meridian_sky::SkyPoint::new(lon_deg.rem_euclid(360.0), lat_deg) {
        for p in crate::soda::circle_points(centre, radius_deg) {
            points.push(wcs.world_to_pixel(p.ra_deg(), p.dec_deg()));
        }
    }
    let points: Vec<[f64; 2]> = points.into_iter().flatten().collect();
    if points.is_empty() {
        return None;
    }
    let min = |i: usize| points.iter().map(|p| p[i]).fold(f64::INFINITY, f64::min);
    let max = |i: usize| {
        points
            .iter()
            .map(|p| p[i])
            .fold(f64::NEG_INFINITY, f64::max)
    };
    PixelBox::covering([min(0), min(1)], [max(0), max(1)], size)
}

/// Keywords of a header that describe the HDU's structure or its compression, rewritten
/// or dropped in a cutout.
fn structural(key: &str) -> bool {
    const EXACT: [&str; 16] = [
        "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "TFIELDS", "ZIMAGE",
        "ZSIMPLE", "ZBITPIX", "ZNAXIS", "ZCMPTYPE", "ZQUANTIZ", "ZDITHER0", "END",
    ];
    const PREFIXES: [&str; 12] = [
        "NAXIS", "ZNAXIS", "ZTILE", "ZNAME", "ZVAL", "TTYPE", "TFORM", "TUNIT", "CHECKSUM",
        "DATASUM", "ZHECKSUM", "ZDATASUM",
    ];
    EXACT.contains(&key)
        || PREFIXES.iter().any(|p| key.starts_with(p))
        || matches!(
            key,
            "ZEXTEND" | "ZBLOCKED" | "ZPCOUNT" | "ZGCOUNT" | "ZTENSION"
        )
}

/// A FITS card: `key = value` with the value as FITS writes it.
fn card(key: &str, value: &str) -> String {
    let c = format!("{key:<8}= {value:>20}");
    format!("{c:<80}")
}

fn number(v: f64) -> String {
    let s = format!("{v:?}");
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s.replace('e', "E")
    } else {
        format!("{s}.0")
    }
}

/// Refuses (before any pixel is read) a box of more than `max_pixels` pixels (in each plane
/// of an image with more than two axes; see [`check_cutout_size`] for all of them).
pub fn check_size(b: &PixelBox, max_pixels: u64) -> Result<()> {
    if b.pixels() > max_pixels {
        return Err(Error::Invalid(format!(
            "the cutout would hold {} x {} = {} pixels, over the limit of {max_pixels}",
            b.x.end - b.x.start,
            b.y.end - b.y.start,
            b.pixels()
        )));
    }
    Ok(())
}

/// The pixels a cutout of `b` holds: the box in every plane of the extra axes.
pub fn cutout_pixels(hdu: &ImageHdu, b: &PixelBox) -> u64 {
    b.pixels() * hdu.axes[2..].iter().product::<u64>()
}

/// Refuses (before any pixel is read) a cutout of more than `max_pixels` pixels, every
/// plane of the extra axes counted.
pub fn check_cutout_size(hdu: &ImageHdu, b: &PixelBox, max_pixels: u64) -> Result<()> {
    check_size(b, max_pixels)?;
    let n = cutout_pixels(hdu, b);
    if n > max_pixels {
        return Err(Error::Invalid(format!(
            "the cutout would hold {n} pixels in its {} planes, over the limit of {max_pixels}",
            n / b.pixels().max(1)
        )));
    }
    Ok(())
}

/// Pixels read and written at a time: a cutout streams in strips of rows, so memory stays
/// flat however large the cutout.
const STRIP_PIXELS: u64 = 1 << 18;

/// Writes the pixels of `b` of image `hdu` of `path` to `out` as a FITS file with one
/// image HDU: see [`write_cutout_hdu`].
pub fn write_cutout(path: &Path, hdu: &ImageHdu, b: &PixelBox, out: &mut dyn Write) -> Result<()> {
    write_cutout_hdu(path, hdu, b, true, out)
}

/// Writes the pixels of `b` of image `hdu` of `path` to `out` as one HDU (the primary, or
/// an IMAGE extension that follows others): the original header with the structure
/// rewritten, CRPIX (and a DSS plate's CNPIX) shifted so that every pixel keeps its world
/// coordinates (distortion terms are relative to CRPIX and stay as they are), extra axes
/// kept whole, and a HISTORY card. Pixels go out in strips of rows as they are read.
pub fn write_cutout_hdu(
    path: &Path,
    hdu: &ImageHdu,
    b: &PixelBox,
    primary: bool,
    out: &mut dyn Write,
) -> Result<()> {
    check_box(path, hdu, b)?;
    let mut source = match hdu.raw_offset {
        Some(offset) => Source::Raw(RawRows::open(path, hdu, offset)?),
        None => Source::Cfitsio(PixelReader::open(path, hdu)?),
    };
    let (nx, ny) = (b.x.end - b.x.start, b.y.end - b.y.start);
    let mut cards = if primary {
        vec![card("SIMPLE", "T")]
    } else {
        vec![card("XTENSION", "'IMAGE   '")]
    };
    cards.push(card("BITPIX", &hdu.bitpix.to_string()));
    cards.push(card("NAXIS", &hdu.axes.len().to_string()));
    cards.push(card("NAXIS1", &nx.to_string()));
    cards.push(card("NAXIS2", &ny.to_string()));
    for (i, n) in hdu.axes.iter().enumerate().skip(2) {
        cards.push(card(&format!("NAXIS{}", i + 1), &n.to_string()));
    }
    if primary {
        cards.push(card("EXTEND", "T"));
    } else {
        cards.push(card("PCOUNT", "0"));
        cards.push(card("GCOUNT", "1"));
    }
    let shift = [b.x.start as f64, b.y.start as f64];
    let h = &hdu.header;
    for (key, image) in h.card_images() {
        if structural(key) || (hdu.compressed && key == "EXTNAME") {
            continue;
        }
        let shifted = match key {
            "CRPIX1" => Some(0),
            "CRPIX2" => Some(1),
            _ => None,
        };
        if let Some(axis) = shifted {
            let v = h.float(key).unwrap_or(0.0) - shift[axis];
            cards.push(card(key, &number(v)));
        } else if key == "CNPIX1" || key == "CNPIX2" {
            let axis = usize::from(key == "CNPIX2");
            let v = h.float(key).unwrap_or(0.0) + shift[axis];
            cards.push(card(key, &number(v)));
        } else {
            cards.push(image.to_string());
        }
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let history = format!(
        "Meridian cutout of {name}[{}] pixels [{}:{},{}:{}]",
        hdu.index,
        b.x.start + 1,
        b.x.end,
        b.y.start + 1,
        b.y.end
    );
    for chunk in history.as_bytes().chunks(70) {
        cards.push(format!(
            "{:<80}",
            format!("HISTORY {}", String::from_utf8_lossy(chunk))
        ));
    }
    cards.push(format!("{:<80}", "END"));
    // Every card exactly 80 ASCII bytes, whatever a file name or a damaged header holds.
    let mut head: Vec<u8> = Vec::with_capacity(cards.len() * 80);
    for c in &cards {
        let mut b: Vec<u8> = c
            .chars()
            .map(|ch| {
                if ch.is_ascii() && !ch.is_ascii_control() {
                    ch as u8
                } else {
                    b'?'
                }
            })
            .collect();
        b.resize(80, b' ');
        head.extend_from_slice(&b);
    }
    head.resize(head.len().div_ceil(2880) * 2880, b' ');
    out.write_all(&head).map_err(|e| fits_err(path, e))?;
    let planes: u64 = hdu.axes[2..].iter().product();
    let rows_per_strip = (STRIP_PIXELS / nx).max(1);
    let mut written: u64 = 0;
    let mut data: Vec<u8> = Vec::new();
    for plane in 0..planes {
        let mut ranges: Vec<Range<usize>> = vec![b.x.start as usize..b.x.end as usize, 0..0];
        let mut rest = plane;
        for n in &hdu.axes[2..] {
            let i = (rest % n) as usize;
            rest /= n;
            ranges.push(i..i + 1);
        }
        let mut y = b.y.start;
        while y < b.y.end {
            let y_end = (y + rows_per_strip).min(b.y.end);
            ranges[1] = y as usize..y_end as usize;
            data.clear();
            match &mut source {
                Source::Raw(raw) => raw.read(plane, &b.x, y..y_end, &mut data)?,
                Source::Cfitsio(reader) => {
                    let values = reader.read(&ranges)?;
                    encode(&values, hdu.bitpix, &mut data).map_err(|e| fits_err(path, e))?;
                }
            }
            out.write_all(&data).map_err(|e| fits_err(path, e))?;
            written += data.len() as u64;
            y = y_end;
        }
    }
    let pad = written.div_ceil(2880) * 2880 - written;
    out.write_all(&vec![0u8; pad as usize])
        .map_err(|e| fits_err(path, e))?;
    Ok(())
}

/// Where a cutout's pixels come from.
enum Source<'a> {
    /// Rows of bytes copied from an uncompressed data unit.
    Raw(RawRows<'a>),
    /// Pixels decoded by CFITSIO (tile-compressed or gzipped files).
    Cfitsio(PixelReader<'a>),
}

/// Rows of an uncompressed image read as stored, straight from the file: the bytes a
/// cutout writes are those of the original, with no decoding and no conversion.
struct RawRows<'a> {
    path: &'a Path,
    file: std::fs::File,
    offset: u64,
    pixel_bytes: u64,
    width: u64,
    height: u64,
}

impl<'a> RawRows<'a> {
    fn open(path: &'a Path, hdu: &ImageHdu, offset: u64) -> Result<Self> {
        let pixel_bytes = match hdu.bitpix {
            8 | 16 | 32 | 64 | -32 | -64 => hdu.bitpix.unsigned_abs() / 8,
            other => {
                return Err(fits_err(
                    path,
                    format!("BITPIX {other} is not a FITS pixel type"),
                ));
            }
        };
        Ok(Self {
            path,
            file: std::fs::File::open(path).map_err(|e| fits_err(path, e))?,
            offset,
            pixel_bytes,
            width: hdu.axes[0],
            height: hdu.axes[1],
        })
    }

    /// Appends to `out` the bytes of columns `x` of rows `y` of `plane` (the planes of the
    /// axes past the second, counted as FITS orders them). Reading past the end of the file
    /// (one truncated since it was registered) is an error, never a short cutout.
    fn read(&mut self, plane: u64, x: &Range<u64>, y: Range<u64>, out: &mut Vec<u8>) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let row_bytes = (x.end - x.start) * self.pixel_bytes;
        let at = |row: u64| {
            self.offset + ((plane * self.height + row) * self.width + x.start) * self.pixel_bytes
        };
        let start = out.len();
        let rows = y.end - y.start;
        out.resize(start + (rows * row_bytes) as usize, 0);
        let err = |e: std::io::Error| fits_err(self.path, format!("reading pixels: {e}"));
        if x.start == 0 && x.end == self.width {
            // Whole rows lie one after another: one read.
            self.file
                .read_exact_at(&mut out[start..], at(y.start))
                .map_err(err)?;
        } else {
            for (i, row) in y.enumerate() {
                let a = start + i * row_bytes as usize;
                self.file
                    .read_exact_at(&mut out[a..a + row_bytes as usize], at(row))
                    .map_err(err)?;
            }
        }
        Ok(())
    }
}

/// Pixel values as FITS stores them (big-endian, BITPIX's type).
fn encode(values: &Values, bitpix: i64, data: &mut Vec<u8>) -> std::result::Result<(), String> {
    match (values, bitpix) {
        (Values::Int(v), 8) => data.extend(v.iter().map(|x| *x as u8)),
        (Values::Int(v), 16) => v
            .iter()
            .for_each(|x| data.extend((*x as i16).to_be_bytes())),
        (Values::Int(v), 32) => v
            .iter()
            .for_each(|x| data.extend((*x as i32).to_be_bytes())),
        (Values::Int(v), 64) => v.iter().for_each(|x| data.extend(x.to_be_bytes())),
        (Values::Float(v), -32) => v
            .iter()
            .for_each(|x| data.extend((*x as f32).to_be_bytes())),
        (Values::Float(v), -64) => v.iter().for_each(|x| data.extend(x.to_be_bytes())),
        (_, bitpix) => return Err(format!("BITPIX {bitpix} is not a FITS pixel type")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FITS file of a 3-axis 16-bit image (`w` x `h` x `planes`) whose pixels count up
    /// from 0, with BZERO so that stored and physical values differ.
    fn cube(dir: &Path, w: u64, h: u64, planes: u64) -> std::path::PathBuf {
        let cards = [
            "SIMPLE  =                    T".to_string(),
            "BITPIX  =                   16".into(),
            "NAXIS   =                    3".into(),
            format!("NAXIS1  = {w:>20}"),
            format!("NAXIS2  = {h:>20}"),
            format!("NAXIS3  = {planes:>20}"),
            "BZERO   =                32768".into(),
            "END".into(),
        ];
        let mut bytes: Vec<u8> = Vec::new();
        for c in &cards {
            bytes.extend(format!("{c:<80}").as_bytes());
        }
        bytes.resize(bytes.len().div_ceil(2880) * 2880, b' ');
        for i in 0..w * h * planes {
            bytes.extend(((i % 30000) as i16 - 1000).to_be_bytes());
        }
        bytes.resize(bytes.len().div_ceil(2880) * 2880, 0);
        let path = dir.join("cube.fits");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn cut(path: &Path, hdu: &ImageHdu, b: &PixelBox) -> Vec<u8> {
        let mut out = Vec::new();
        write_cutout_hdu(path, hdu, b, true, &mut out).unwrap();
        out
    }

    #[test]
    fn rows_copied_from_the_file_equal_cfitsio_pixels() {
        let dir = tempfile::tempdir().unwrap();
        let path = cube(dir.path(), 37, 23, 3);
        let raw = image_hdus(&path).unwrap().remove(0);
        assert_eq!(raw.raw_offset, Some(2880));
        let decoded = ImageHdu {
            raw_offset: None,
            ..raw.clone()
        };
        for b in [
            PixelBox { x: 0..37, y: 0..23 },
            PixelBox { x: 5..6, y: 22..23 },
            PixelBox { x: 3..30, y: 4..17 },
            PixelBox {
                x: 0..37,
                y: 10..12,
            },
        ] {
            let (a, c) = (cut(&path, &raw, &b), cut(&path, &decoded, &b));
            assert_eq!(a.len() % 2880, 0);
            assert!(
                a == c,
                "box {b:?}: copied rows differ from CFITSIO's pixels"
            );
        }
    }

    #[test]
    fn a_file_truncated_after_registration_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = cube(dir.path(), 40, 40, 1);
        let hdu = image_hdus(&path).unwrap().remove(0);
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(2880 + 40 * 20 * 2).unwrap();
        let b = PixelBox {
            x: 0..10,
            y: 30..40,
        };
        let err = write_cutout_hdu(&path, &hdu, &b, true, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("reading pixels"), "{err}");
    }
}
