//! `meridian moc`: the coverage (MOC 2.0) of a catalog or an image collection, written as
//! FITS, JSON or ASCII.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// `meridian moc`.
#[derive(clap::Args)]
pub struct MocArgs {
    /// A catalog or an image collection.
    name: String,
    /// HEALPix order of the MOC's finest cells (0 to 29; 10 is about 3.4 arcminutes).
    #[arg(long, default_value_t = 10)]
    order: u8,
    /// Output file; its format from `--format` or else its extension (.fits, .json,
    /// .txt or .ascii).
    #[arg(long)]
    out: PathBuf,
    /// fits, json or ascii.
    #[arg(long)]
    format: Option<String>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// A MOC serialisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MocFormat {
    Fits,
    Json,
    Ascii,
}

impl MocFormat {
    /// The format a name (`fits`, `json`, `ascii`/`txt`) gives.
    pub fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "fits" | "fit" => Some(Self::Fits),
            "json" => Some(Self::Json),
            "ascii" | "txt" | "text" => Some(Self::Ascii),
            _ => None,
        }
    }
}

/// The bytes of `moc` in `format`.
pub fn moc_bytes(
    moc: &meridian_sky::Moc,
    format: MocFormat,
    name: &str,
) -> anyhow::Result<Vec<u8>> {
    Ok(match format {
        MocFormat::Fits => meridian_sky::moc_fits(moc, Some(name))?,
        MocFormat::Json => meridian_sky::moc_json(moc).into_bytes(),
        MocFormat::Ascii => meridian_sky::moc_ascii(moc)?.into_bytes(),
    })
}

/// Writes the MOC of `args.name` (a catalog of `catalogs`, else a collection of `images`).
pub fn moc(catalogs: &Path, images: &Path, args: &MocArgs) -> anyhow::Result<()> {
    let format = match &args.format {
        Some(f) => MocFormat::parse(f)
            .with_context(|| format!("--format: '{f}' is not fits, json or ascii"))?,
        None => args
            .out
            .extension()
            .and_then(|e| MocFormat::parse(&e.to_string_lossy()))
            .with_context(|| {
                format!(
                    "{}: give --format (fits, json or ascii) or a .fits, .json or .txt name",
                    args.out.display()
                )
            })?,
    };
    if args.order > 29 {
        bail!("--order: {} is not a HEALPix order (0 to 29)", args.order);
    }
    let store = meridian_catalog::Store::open(catalogs)?;
    let moc = if let Ok(catalog) = store.catalog(&args.name) {
        let rows = catalog.total_rows().unwrap_or(0);
        let bar = crate::bar(
            args.quiet,
            rows,
            "{msg} [{bar:30}] {human_pos}/{human_len} rows {per_sec} ETA {eta}",
        );
        bar.set_message(format!("MOC of {}", args.name));
        let moc = catalog.moc(args.order, &|n| bar.set_position(n))?;
        bar.finish_and_clear();
        moc
    } else if let Some(c) = meridian_images::collection::list(images)?
        .into_iter()
        .find(|c| c.name == args.name)
    {
        c.moc(args.order)?
    } else {
        bail!(
            "'{}' is neither a catalog nor an image collection",
            args.name
        );
    };
    let bytes = moc_bytes(&moc, format, &args.name)?;
    // Written then renamed: never a half-written file under the name asked for.
    let tmp = args.out.with_extension("partial");
    std::fs::write(&tmp, &bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out).with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "{}: MOC of order {} covering {:.6}% of the sky, {} bytes",
        args.out.display(),
        args.order,
        100.0 * moc.coverage_percentage(),
        bytes.len()
    );
    Ok(())
}

/// `meridian hips ...`: sky maps in HiPS, under the data directory's `hips/`, served at
/// `/hips/<name>/`.
#[derive(clap::Subcommand)]
pub enum HipsCommand {
    /// An image HiPS of a registered image collection.
    Build(BuildArgs),
    /// A density map of a catalog: rows per HEALPix cell, as a HiPS image.
    Density(DensityArgs),
    /// A catalog HiPS (progressive catalog) of a catalog's rows, best first.
    Catalog(CatalogArgs),
    /// The HiPS under the data directory, with their titles and orders.
    List,
}

/// `meridian hips build`.
#[derive(clap::Args)]
pub struct BuildArgs {
    /// The image collection.
    collection: String,
    /// Name of the HiPS (default: the collection's).
    #[arg(long)]
    out: Option<String>,
    /// Deepest tile order (default: the order whose pixels are just finer than the
    /// collection's finest image pixels).
    #[arg(long)]
    order: Option<u8>,
    /// Tile width in pixels (a power of two).
    #[arg(long, default_value_t = 512)]
    tile_width: usize,
    /// Resampling kernel: bilinear or lanczos3.
    #[arg(long, default_value = "bilinear")]
    kernel: String,
    /// Most MiB of image pixels held in memory at once.
    #[arg(long, default_value_t = 2048)]
    cache_mib: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// `meridian hips density`.
#[derive(clap::Args)]
pub struct DensityArgs {
    /// The catalog.
    catalog: String,
    /// Name of the HiPS (default: CATALOG-density).
    #[arg(long)]
    out: Option<String>,
    /// Deepest tile order (3 to 11 with 512-pixel tiles; pixels are 9 orders deeper).
    #[arg(long, default_value_t = 3)]
    order: u8,
    /// What each pixel holds: count (rows), or mean, sum, min or max of --column.
    #[arg(long, default_value = "count")]
    aggregate: String,
    /// The numeric column aggregated.
    #[arg(long)]
    column: Option<String>,
    /// Tile width in pixels (a power of two).
    #[arg(long, default_value_t = 512)]
    tile_width: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// `meridian hips catalog`.
#[derive(clap::Args)]
pub struct CatalogArgs {
    /// The catalog.
    catalog: String,
    /// Name of the HiPS (default: CATALOG-catalog).
    #[arg(long)]
    out: Option<String>,
    /// The column ranking rows, smallest first (default: the first magnitude column, or
    /// an even sample of the sky when there is none).
    #[arg(long)]
    rank: Option<String>,
    /// Rank largest first (fluxes, significances).
    #[arg(long)]
    descending: bool,
    /// Rows per HEALPix cell at each order.
    #[arg(long, default_value_t = 50)]
    per_tile: usize,
    /// Deepest order, where cells take all the rows they have left.
    #[arg(long, default_value_t = 10)]
    max_order: u8,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// Runs a `meridian hips` command.
pub fn hips(
    catalogs: &Path,
    images: &Path,
    hips_dir: &Path,
    cmd: HipsCommand,
) -> anyhow::Result<()> {
    match cmd {
        HipsCommand::Build(args) => {
            let collection = meridian_images::collection::list(images)?
                .into_iter()
                .find(|c| c.name == args.collection)
                .with_context(|| format!("no image collection named '{}'", args.collection))?;
            let name = args.out.unwrap_or_else(|| args.collection.clone());
            check_name(&name)?;
            let kernel = match args.kernel.as_str() {
                "bilinear" => meridian_hips::image::Kernel::Bilinear,
                "lanczos3" | "lanczos" => meridian_hips::image::Kernel::Lanczos3,
                other => bail!("--kernel: '{other}' is not bilinear or lanczos3"),
            };
            let opts = meridian_hips::image::ImageHipsOptions {
                name: name.clone(),
                order: args.order,
                tile_width: args.tile_width,
                kernel,
                cache_bytes: args.cache_mib << 20,
            };
            let bar = crate::bar(
                args.quiet,
                0,
                "{msg} [{bar:30}] {human_pos}/{human_len} tiles {per_sec} ETA {eta}",
            );
            bar.set_message(format!("HiPS of {}", args.collection));
            let report = meridian_hips::image::build(
                &collection,
                &hips_dir.join(&name),
                &opts,
                &|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                },
            )?;
            bar.finish_and_clear();
            for (id, why) in &report.skipped {
                eprintln!("skipped {id}: {why}");
            }
            eprintln!(
                "{name}: {} images, {} tiles to order {}, pixel cut {} {}, at {}",
                report.images,
                report.tiles,
                report.order,
                report.cut.0,
                report.cut.1,
                hips_dir.join(&name).display()
            );
        }
        HipsCommand::Density(args) => {
            let (catalog, name, bar) =
                catalog_job(catalogs, &args.catalog, args.out, "density", args.quiet)?;
            let opts = meridian_hips::density::DensityOptions {
                name: name.clone(),
                order: args.order,
                tile_width: args.tile_width,
                aggregate: meridian_hips::density::Aggregate::parse(
                    &args.aggregate,
                    args.column.as_deref(),
                )?,
            };
            let report = meridian_hips::density::build(
                &catalog,
                &hips_dir.join(&name),
                &opts,
                &|stage, n| stage_progress(&bar, stage, n),
            )?;
            bar.finish_and_clear();
            eprintln!(
                "{name}: {} rows in {} cells, {} tiles, at {}",
                report.rows,
                report.cells,
                report.tiles,
                hips_dir.join(&name).display()
            );
        }
        HipsCommand::Catalog(args) => {
            let (catalog, name, bar) =
                catalog_job(catalogs, &args.catalog, args.out, "catalog", args.quiet)?;
            let opts = meridian_hips::catalog::CatalogHipsOptions {
                name: name.clone(),
                rank: args.rank,
                descending: args.descending,
                per_tile: args.per_tile,
                max_order: args.max_order,
            };
            let report = meridian_hips::catalog::build(
                &catalog,
                &hips_dir.join(&name),
                &opts,
                &|stage, n| stage_progress(&bar, stage, n),
            )?;
            bar.finish_and_clear();
            eprintln!(
                "{name}: {} rows ranked by {} in {} tiles to order {}, at {}",
                report.rows,
                report.rank.as_deref().unwrap_or("position hash"),
                report.tiles,
                report.order,
                hips_dir.join(&name).display()
            );
        }
        HipsCommand::List => {
            for (name, p) in list(hips_dir)? {
                println!(
                    "{name}\t{}\torder {}\t{}",
                    p.get("dataproduct_type").unwrap_or("?"),
                    p.get("hips_order").unwrap_or("?"),
                    p.get("obs_title").unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

/// The catalog a HiPS is built from, the HiPS's name (`out`, else CATALOG-`kind`,
/// checked) and a progress bar over the catalog's rows.
fn catalog_job(
    catalogs: &Path,
    catalog: &str,
    out: Option<String>,
    kind: &str,
    quiet: bool,
) -> anyhow::Result<(meridian_catalog::Catalog, String, indicatif::ProgressBar)> {
    let store = meridian_catalog::Store::open(catalogs)?;
    let opened = store.catalog(catalog)?;
    let name = out.unwrap_or_else(|| format!("{catalog}-{kind}"));
    check_name(&name)?;
    let bar = crate::bar(
        quiet,
        opened.total_rows().unwrap_or(0),
        "{msg} [{bar:30}] {human_pos}/{human_len} rows {per_sec} ETA {eta}",
    );
    bar.set_message(format!("{kind} HiPS of {catalog}"));
    Ok((opened, name, bar))
}

/// Shows a build's progress: rows read on the bar, tiles written in its message.
fn stage_progress(bar: &indicatif::ProgressBar, stage: &str, n: u64) {
    if stage == "rows" {
        bar.set_position(n)
    } else {
        bar.set_message(format!("{n} tiles"))
    }
}

/// A HiPS name: letters, digits, `-`, `_` and `.`, not starting with a dot.
fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        bail!("'{name}' is not a HiPS name (letters, digits, '-', '_' and '.')");
    }
    Ok(())
}

/// The HiPS under `dir`, by name, with their properties.
pub fn list(dir: &Path) -> anyhow::Result<Vec<(String, meridian_hips::Properties)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Ok(text) = std::fs::read_to_string(e.path().join("properties")) {
            out.push((name, meridian_hips::Properties::parse(&text)));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}
