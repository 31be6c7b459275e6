//! `meridian images`: FITS images and their world coordinate systems.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use meridian_images::Wcs;

#[derive(Subcommand)]
pub enum ImagesCommand {
    /// Register FITS images in place as collection NAME (made if new; files new or changed
    /// since the last add are read, the others kept).
    Add {
        /// Collection name.
        name: String,
        /// FITS files and directories (plain, gzip or tile-compressed).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Look into subdirectories too.
        #[arg(long)]
        recursive: bool,
        /// Report files that cannot be registered and go on (otherwise the first one fails
        /// the add and nothing is changed).
        #[arg(long)]
        skip_bad: bool,
        /// Don't show progress.
        #[arg(long)]
        quiet: bool,
    },
    /// The collections, with their numbers of images.
    List,
    /// The images of a collection: id, size, centre, field of view, time and band.
    Show {
        /// Collection name.
        name: String,
    },
    /// Remove a collection (its files stay where they are).
    Remove {
        /// Collection name.
        name: String,
    },
    /// The image HDUs of FITS files with their sizes, frames and footprint corners.
    Info {
        /// FITS files (plain, gzip or tile-compressed).
        files: Vec<PathBuf>,
    },
    /// "x,y" lines (FITS pixel coordinates, first pixel's centre at 1) to "lon,lat"
    /// degrees in the image's own frame.
    Xy2sky {
        /// The FITS file.
        file: PathBuf,
        /// The HDU (0 is the primary); default: the first with a celestial WCS.
        #[arg(long)]
        hdu: Option<usize>,
    },
    /// Cut out the pixels of an image within a circle (or a pixel box) as a FITS file.
    Cutout {
        /// The FITS file.
        file: PathBuf,
        /// The HDU (0 is the primary); default: the first image with a celestial WCS.
        #[arg(long)]
        hdu: Option<usize>,
        /// "lon,lat,radius" in degrees, in the image's own frame.
        #[arg(long, allow_hyphen_values = true, conflicts_with = "pixels")]
        circle: Option<String>,
        /// "x1:x2,y1:y2": FITS pixel ranges, inclusive, 1-based.
        #[arg(long)]
        pixels: Option<String>,
        /// Output FITS file.
        #[arg(long)]
        out: PathBuf,
        /// Most pixels the cutout may hold (a request for more is refused before any pixel
        /// is read).
        #[arg(long, default_value_t = 100_000_000)]
        max_pixels: u64,
    },
    /// "lon,lat" lines (degrees, in the image's own frame) to "x,y" FITS pixel coordinates.
    Sky2xy {
        /// The FITS file.
        file: PathBuf,
        /// The HDU (0 is the primary); default: the first with a celestial WCS.
        #[arg(long)]
        hdu: Option<usize>,
    },
}

/// Runs an `images` command; collections live in `dir`.
pub fn run(dir: &Path, cmd: ImagesCommand) -> anyhow::Result<()> {
    use meridian_images::collection;
    match cmd {
        ImagesCommand::Add {
            name,
            paths,
            recursive,
            skip_bad,
            quiet,
        } => {
            collection::check_name(&name)?;
            let files = collection::files(&paths, recursive)?;
            if files.is_empty() {
                bail!(
                    "no FITS files in {}",
                    paths
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let root = paths.first().filter(|p| p.is_dir() && paths.len() == 1);
            let progress = crate::bar(
                quiet,
                files.len() as u64,
                "{spinner} {pos}/{len} files ({per_sec}, ETA {eta}) {wide_msg}",
            );
            let added = collection::add(
                dir,
                &name,
                root.map(PathBuf::as_path),
                &files,
                skip_bad,
                |f| {
                    progress.set_message(f.display().to_string());
                    progress.inc(1);
                },
            )?;
            progress.finish_and_clear();
            for r in &added.rejected {
                eprintln!("skipped {}: {}", r.path.display(), r.reason);
            }
            out!(
                "{name}: {} images ({} files read, {} unchanged, {} skipped)",
                added.datasets,
                added.read,
                added.unchanged,
                added.rejected.len()
            )?;
            Ok(())
        }
        ImagesCommand::List => {
            for c in collection::list(dir)? {
                out!("{}\t{} images", c.name, c.datasets.len())?;
            }
            Ok(())
        }
        ImagesCommand::Show { name } => {
            let c = collection::open(dir, &name)?
                .with_context(|| format!("no image collection '{name}'"))?;
            out!("id\twidth\theight\tra\tdec\tfov_deg\tpixel_arcsec\tt_min_mjd\tfilter")?;
            for d in &c.datasets {
                out!(
                    "{}\t{}\t{}\t{:.6}\t{:.6}\t{:.5}\t{:.4}\t{}\t{}",
                    d.id,
                    d.width,
                    d.height,
                    d.ra_deg,
                    d.dec_deg,
                    d.fov_deg,
                    d.pixel_arcsec,
                    d.t_min_mjd.map(|t| format!("{t:.6}")).unwrap_or_default(),
                    d.filter.as_deref().unwrap_or("")
                )?;
            }
            Ok(())
        }
        ImagesCommand::Remove { name } => {
            if !collection::remove(dir, &name)? {
                bail!("no image collection '{name}'");
            }
            out!("removed image collection '{name}' (its files are untouched)")?;
            Ok(())
        }
        ImagesCommand::Info { files } => {
            for file in files {
                info(&file)?;
            }
            Ok(())
        }
        ImagesCommand::Xy2sky { file, hdu } => {
            let wcs = wcs_of(&file, hdu)?;
            convert(|x, y| wcs.pixel_to_world([x, y]))
        }
        ImagesCommand::Cutout {
            file,
            hdu,
            circle,
            pixels,
            out,
            max_pixels,
        } => cutout(
            &file,
            hdu,
            circle.as_deref(),
            pixels.as_deref(),
            &out,
            max_pixels,
        ),
        ImagesCommand::Sky2xy { file, hdu } => {
            let wcs = wcs_of(&file, hdu)?;
            convert(|lon, lat| wcs.world_to_pixel(lon, lat).map(|p| (p[0], p[1])))
        }
    }
}

/// The WCS of HDU `hdu` of `file`, or of its first HDU that has one.
fn wcs_of(file: &Path, hdu: Option<usize>) -> anyhow::Result<Wcs> {
    let hdus = meridian_formats::read_fits_headers(file)?;
    if let Some(i) = hdu {
        let h = hdus
            .get(i)
            .with_context(|| format!("{}: no HDU {i} ({} HDUs)", file.display(), hdus.len()))?;
        return Wcs::from_header(&h.header).with_context(|| format!("{}, HDU {i}", file.display()));
    }
    let mut last = None;
    for h in &hdus {
        match Wcs::from_header(&h.header) {
            Ok(w) => return Ok(w),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => {
            Err(e).with_context(|| format!("{}: no HDU with a celestial WCS", file.display()))
        }
        None => bail!("{}: no HDU", file.display()),
    }
}

/// Reads "a,b" lines on standard input and writes `f(a, b)` as "c,d" (or "nan,nan" where
/// `f` has no answer).
fn convert(f: impl Fn(f64, f64) -> Option<(f64, f64)>) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line?;
        let v: Vec<f64> = line
            .split(',')
            .map(|t| t.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| {
                format!(
                    "line {}: '{line}' is not two comma-separated numbers",
                    i + 1
                )
            })?;
        if v.len() != 2 {
            bail!("line {}: expected 2 numbers, got {}", i + 1, v.len());
        }
        match f(v[0], v[1]) {
            Some((a, b)) => writeln!(out, "{a:.15e},{b:.15e}")?,
            None => writeln!(out, "nan,nan")?,
        }
    }
    out.flush()?;
    Ok(())
}

fn info(file: &Path) -> anyhow::Result<()> {
    let hdus = meridian_formats::read_fits_headers(file)?;
    for (i, h) in hdus.iter().enumerate() {
        let header = &h.header;
        let compressed = header.get("ZIMAGE") == Some("T");
        let axis = |k: &str| {
            header
                .float(&format!("{}{k}", if compressed { "Z" } else { "" }))
                .unwrap_or(0.0) as u64
        };
        let (nx, ny) = (axis("NAXIS1"), axis("NAXIS2"));
        if nx == 0 || ny == 0 {
            continue;
        }
        let wcs = match Wcs::from_header(header) {
            Ok(w) => w,
            Err(e) => {
                out!(
                    "{}[{i}]: {nx} x {ny}, no celestial WCS ({e})",
                    file.display()
                )?;
                continue;
            }
        };
        let corners: Vec<String> = [
            [0.5, 0.5],
            [nx as f64 + 0.5, 0.5],
            [nx as f64 + 0.5, ny as f64 + 0.5],
            [0.5, ny as f64 + 0.5],
        ]
        .iter()
        .filter_map(|p| wcs.pixel_to_world(*p))
        .map(|(a, b)| format!("({a:.6}, {b:.6})"))
        .collect();
        out!(
            "{}[{i}]: {nx} x {ny}{}, {:?}, corners {}",
            file.display(),
            if compressed { " (tile-compressed)" } else { "" },
            wcs.frame(),
            corners.join(" ")
        )?;
    }
    Ok(())
}

fn cutout(
    file: &Path,
    hdu: Option<usize>,
    circle: Option<&str>,
    pixels: Option<&str>,
    out: &Path,
    max_pixels: u64,
) -> anyhow::Result<()> {
    let hdus = meridian_images::image_hdus(file)?;
    let image = match hdu {
        Some(i) => hdus
            .iter()
            .find(|h| h.index == i)
            .with_context(|| format!("{}: HDU {i} is not an image", file.display()))?,
        None => hdus
            .iter()
            .find(|h| h.wcs().is_ok())
            .or(hdus.first())
            .with_context(|| format!("{}: no image HDU", file.display()))?,
    };
    let size = image.size();
    let b = match (circle, pixels) {
        (Some(c), _) => {
            let v: Vec<f64> = c
                .split(',')
                .map(|t| t.trim().parse::<f64>())
                .collect::<Result<_, _>>()
                .with_context(|| format!("--circle '{c}' is not lon,lat,radius in degrees"))?;
            let [lon, lat, r] = v[..] else {
                bail!("--circle '{c}' is not lon,lat,radius in degrees");
            };
            if !((-90.0..=90.0).contains(&lat) && r > 0.0 && r <= 180.0) {
                bail!(
                    "--circle '{c}': latitude must be within [-90, 90] and the radius within (0, 180]"
                );
            }
            let wcs = image
                .wcs()
                .with_context(|| format!("{}[{}]", file.display(), image.index))?;
            meridian_images::circle_box(&wcs, size, lon, lat, r).with_context(|| {
                format!(
                    "the circle {c} does not meet {}[{}]",
                    file.display(),
                    image.index
                )
            })?
        }
        (None, Some(p)) => parse_pixels(p, size)?,
        (None, None) => bail!("give --circle or --pixels"),
    };
    meridian_images::cutout::check_size(&b, max_pixels)?;
    write_cutout_file(file, image, &b, out, "")
}

/// Writes the cutout `b` of image `hdu` of `file` to `out` (a temporary file, synced and
/// renamed) and says so on standard error, `source` appended.
pub(crate) fn write_cutout_file(
    file: &Path,
    hdu: &meridian_images::ImageHdu,
    b: &meridian_images::PixelBox,
    out: &Path,
    source: &str,
) -> anyhow::Result<()> {
    let tmp = out.with_extension("partial");
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
    );
    meridian_images::write_cutout(file, hdu, b, &mut w)?;
    w.into_inner()
        .map_err(|e| e.into_error())
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    eprintln!(
        "{}: {} x {} pixels [{}:{},{}:{}]{source}",
        out.display(),
        b.x.end - b.x.start,
        b.y.end - b.y.start,
        b.x.start + 1,
        b.x.end,
        b.y.start + 1,
        b.y.end
    );
    Ok(())
}

/// "x1:x2,y1:y2" (1-based, inclusive) as a pixel box within `size`.
fn parse_pixels(p: &str, size: (u64, u64)) -> anyhow::Result<meridian_images::PixelBox> {
    let bad = || anyhow::anyhow!("--pixels '{p}' is not x1:x2,y1:y2 (1-based, inclusive)");
    let (x, y) = p.split_once(',').ok_or_else(bad)?;
    let range = |s: &str, n: u64| -> anyhow::Result<std::ops::Range<u64>> {
        let (a, b) = s.split_once(':').ok_or_else(bad)?;
        let (a, b): (u64, u64) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a < 1 || b < a || b > n {
            bail!("--pixels '{p}': {a}:{b} is not within 1:{n}");
        }
        Ok(a - 1..b)
    };
    Ok(meridian_images::PixelBox {
        x: range(x, size.0)?,
        y: range(y, size.1)?,
    })
}
