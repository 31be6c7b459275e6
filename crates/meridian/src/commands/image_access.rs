//! `meridian sia` and `meridian cutout`: the SIA search and SODA cutouts of the service,
//! run on the data directory's collections without a server.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use meridian_images::sia::{ObsIndex, SiaQuery};

/// `meridian cutout`.
#[derive(clap::Args)]
pub struct CutoutArgs {
    /// The dataset: its publisher DID (ivo://meridian/images/COLLECTION?ID, as SIA and
    /// ObsCore give it) or COLLECTION?ID.
    id: String,
    /// "ra,dec,radius" in degrees (ICRS).
    #[arg(long, allow_hyphen_values = true, conflicts_with = "pixels")]
    circle: Option<String>,
    /// "x1:x2,y1:y2": FITS pixel ranges, inclusive, 1-based.
    #[arg(long)]
    pixels: Option<String>,
    /// Output FITS file.
    #[arg(long)]
    out: PathBuf,
    /// Most pixels the cutout may hold (a request for more is refused before any pixel is
    /// read).
    #[arg(long, default_value_t = 100_000_000)]
    max_pixels: u64,
}

/// `meridian sia`.
#[derive(clap::Args)]
pub struct SiaArgs {
    /// Region: "ra,dec,radius" degrees, or SIA's "CIRCLE ra dec r", "RANGE ra1 ra2 dec1
    /// dec2", "POLYGON ra1 dec1 ..."; repeat for any of several.
    #[arg(long, allow_hyphen_values = true)]
    pos: Vec<String>,
    /// Wavelength interval, metres: "min max".
    #[arg(long, allow_hyphen_values = true)]
    band: Vec<String>,
    /// Time interval, MJD: "min max".
    #[arg(long, allow_hyphen_values = true)]
    time: Vec<String>,
    /// Collection name.
    #[arg(long)]
    collection: Vec<String>,
    /// Most rows to print.
    #[arg(long, default_value_t = 1000)]
    maxrec: usize,
}

fn index(dir: &Path, authority: &str) -> anyhow::Result<ObsIndex> {
    let collections = meridian_images::collection::list(dir)?;
    Ok(ObsIndex::new(&collections, authority))
}

/// Prints the images that meet the constraints, one tab-separated line each.
pub fn sia(dir: &Path, authority: &str, args: &SiaArgs) -> anyhow::Result<()> {
    let mut params: Vec<(String, String)> = Vec::new();
    for p in &args.pos {
        let t = p.trim();
        let text = if t.starts_with(|c: char| c.is_ascii_alphabetic()) {
            t.to_string()
        } else {
            format!("CIRCLE {}", t.replace(',', " "))
        };
        params.push(("POS".into(), text));
    }
    for (name, values) in [
        ("BAND", &args.band),
        ("TIME", &args.time),
        ("COLLECTION", &args.collection),
    ] {
        params.extend(values.iter().map(|v| (name.to_string(), v.clone())));
    }
    let q = SiaQuery::from_params(params.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
    let index = index(dir, authority)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "obs_publisher_did\ts_ra\ts_dec\ts_fov\tfilter\tt_min\tpath"
    )?;
    let hits = index.search(&q, args.maxrec.saturating_add(1));
    for e in hits.iter().take(args.maxrec) {
        let d = &e.dataset;
        writeln!(
            out,
            "{}\t{:.7}\t{:.7}\t{:.6}\t{}\t{}\t{}",
            e.did,
            d.ra_deg,
            d.dec_deg,
            d.fov_deg,
            d.filter.as_deref().unwrap_or(""),
            d.t_min_mjd.map(|t| format!("{t:.6}")).unwrap_or_default(),
            d.path.display()
        )?;
    }
    if hits.len() > args.maxrec {
        eprintln!("more than {} images: raise --maxrec", args.maxrec);
    }
    Ok(())
}

/// Writes a cutout of one registered dataset.
pub fn cutout(dir: &Path, authority: &str, args: &CutoutArgs) -> anyhow::Result<()> {
    let index = index(dir, authority)?;
    let did = if args.id.starts_with("ivo://") {
        args.id.clone()
    } else {
        format!("ivo://{authority}/images/{}", args.id)
    };
    let Some(entry) = index.get(&did) else {
        bail!("no image dataset '{did}': see 'meridian sia' or 'meridian images show'");
    };
    let d = &entry.dataset;
    let hdu = meridian_images::image_hdus(&d.path)?
        .into_iter()
        .find(|h| h.index == d.hdu)
        .with_context(|| format!("{}: HDU {} is no longer an image", d.path.display(), d.hdu))?;
    let b = match (&args.circle, &args.pixels) {
        (Some(c), _) => {
            let pos = meridian_images::soda::parse_circle(&c.replace(',', " "))
                .with_context(|| format!("--circle '{c}' is not ra,dec,radius in degrees"))?;
            let b = if entry.overlaps(&pos) {
                meridian_images::soda::region_box(&hdu.wcs()?, hdu.size(), &pos)
            } else {
                None
            };
            b.with_context(|| format!("the circle {c} does not overlap {did}"))?
        }
        (None, Some(p)) => meridian_images::soda::parse_pixels("--pixels", p, hdu.size())?,
        (None, None) => bail!("give --circle or --pixels"),
    };
    meridian_images::cutout::check_cutout_size(&hdu, &b, args.max_pixels)?;
    super::images::write_cutout_file(&d.path, &hdu, &b, &args.out, &format!(" of {did}"))
}
