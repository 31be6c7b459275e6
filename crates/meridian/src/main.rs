//! The `meridian` command: parses flags, sets up logging and configuration, and calls the
//! libraries. No logic of its own beyond presentation.

/// `println!` that returns the write's error instead of panicking, so that output cut
/// short by a closed pipe (`meridian info gaia | head`) ends the command quietly.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod client;
mod commands;
mod config;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use meridian_catalog::{IngestOptions, IngestProgress, Stage, Store};
use meridian_formats::{ReadOptions, SchemaOverride};
use meridian_sky::{Circle, Region, SkyPoint};

use config::Config;

// Query execution allocates and frees many short-lived column buffers; glibc's allocator
// returns them to the kernel and faults them back in (about a fifth of a full-scan
// aggregation's time), mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "meridian",
    version,
    about = "An open astronomical science platform"
)]
struct Cli {
    /// Configuration file (TOML); MERIDIAN_* environment variables override it.
    #[arg(long, global = true, env = "MERIDIAN_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory (overrides the configuration).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a synthetic survey (Object, Source, ForcedSource tables).
    Generate(GenerateArgs),
    /// Ingest table files (CSV/TSV, FITS, VOTable, Parquet; .gz accepted) as a HATS catalog.
    Ingest(IngestArgs),
    /// Serve an existing HATS catalog or collection in place, without copying it.
    Register {
        /// Catalog name.
        name: String,
        /// Directory of the HATS catalog or collection, or its object-store URL
        /// (`s3://bucket/prefix`, with the `AWS_*` environment variables configuring the
        /// store).
        path: String,
    },
    /// List the catalogs.
    Catalogs,
    /// Describe a catalog: properties, partitions, columns with units and UCDs.
    Info {
        /// Catalog name.
        name: String,
    },
    /// Rows of a catalog within a cone, as CSV on standard output.
    Cone {
        /// Catalog name.
        name: String,
        /// Centre RA, degrees.
        #[arg(long, allow_hyphen_values = true)]
        ra: f64,
        /// Centre Dec, degrees.
        #[arg(long, allow_hyphen_values = true)]
        dec: f64,
        /// Radius, arcseconds.
        #[arg(long)]
        radius_arcsec: f64,
        /// Print pruning figures (partitions and row groups read) on standard error.
        #[arg(long)]
        explain: bool,
    },
    /// Run an ADQL (or SQL) query over the catalogs, streaming the result.
    Query(QueryArgs),
    /// Cross-match two catalogs: each left row's nearest partner within a radius (or every
    /// pair), as a table id1, ra1, dec1, id2, ra2, dec2, distance_arcsec; or, with
    /// `refresh` and `status`, keep the precomputed match tables with the configured
    /// reference catalogs.
    Xmatch(XMatchArgs),
    /// Serve the catalogs over HTTP: TAP (sync), VOSI, health and metrics.
    Serve {
        /// Address to listen on (default: the `[server] addr` setting).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Measure query latency in one process (warm caches), for the bench/ harness.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// FITS images: their HDUs, world coordinate systems and footprints.
    #[command(subcommand)]
    Images(commands::images::ImagesCommand),
    /// The coverage (MOC 2.0) of a catalog or image collection, as FITS, JSON or ASCII.
    Moc(commands::sky_maps::MocArgs),
    /// Sky maps (HiPS): image HiPS of image collections, density maps of catalogs.
    #[command(subcommand)]
    Hips(commands::sky_maps::HipsCommand),
    /// Spectra: add DESI, SDSS and 1-D spectra files to datasets, list, get and stack them.
    #[command(subcommand)]
    Spectra(commands::spectra::SpectraCommand),
    /// A Ballista cluster for catalogs one machine cannot serve: its scheduler, its
    /// executors, its status. `[cluster] scheduler` makes queries run on it.
    #[command(subcommand)]
    Cluster(commands::cluster::ClusterCommand),
    /// Alert packets (Rubin, ZTF): split Avro alert files into their tables.
    #[command(subcommand)]
    Alerts(commands::alerts::AlertsCommand),
    /// Find registered images by position, band, time and collection (SIA 2.0's search).
    Sia(commands::image_access::SiaArgs),
    /// Cut out a registered image (by its dataset ID) as a FITS file (SODA's cutout).
    Cutout(commands::image_access::CutoutArgs),
    /// Sky geometry utilities reading CSV lines on standard input.
    #[command(subcommand)]
    Sky(SkyCommand),
    /// Manage user accounts and tokens (administrator, on the server's data directory).
    #[command(subcommand)]
    User(UserCommand),
    /// Check the data directory: every catalog's partition files against its metadata,
    /// the SQLite databases (accounts, storage, jobs, alert filters), and what interrupted
    /// writers left. Exits with 1 when something is wrong.
    Check {
        /// Decode every page of every partition file (slower; finds corrupt pages).
        #[arg(long)]
        deep: bool,
        /// Remove what interrupted writers left.
        #[arg(long)]
        repair: bool,
    },
    /// Log in to a Meridian service; later client commands use the saved token.
    Login {
        /// User name.
        user: String,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Revoke and forget the saved token.
    Logout {
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Your tables (MyDB) on a service.
    Mydb {
        #[command(subcommand)]
        cmd: client::MyDbCommand,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Your files (VOSpace) on a service.
    Vos {
        #[command(subcommand)]
        cmd: client::VosCommand,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Your groups on a service.
    Group {
        #[command(subcommand)]
        cmd: client::GroupCommand,
        #[command(flatten)]
        remote: client::Remote,
    },
    /// Generate and ingest the demo survey, run a sample query, then serve it over TAP.
    Demo {
        /// Objects in the demo survey.
        #[arg(long, default_value_t = 200_000)]
        objects: u64,
        /// Stop after the sample query instead of serving.
        #[arg(long)]
        no_serve: bool,
    },
}

#[derive(clap::Args)]
struct QueryArgs {
    /// The query.
    query: String,
    /// Query language.
    #[arg(long, value_enum, default_value_t = LangArg::Adql)]
    lang: LangArg,
    /// Print the translated SQL, the physical plan and the partitions read on standard error.
    #[arg(long)]
    explain: bool,
    #[command(flatten)]
    output: OutputArgs,
    /// With `--out mydb://table` or `--out vos://file`, the query runs on this service
    /// (default: the one `meridian login` saved) and its result is kept there.
    #[command(flatten)]
    remote: client::Remote,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct XMatchArgs {
    #[command(subcommand)]
    tables: Option<commands::match_tables::Command>,
    /// Catalog whose rows are matched (id1, ra1, dec1).
    #[arg(required = true)]
    left: Option<String>,
    /// Catalog searched for partners (id2, ra2, dec2).
    #[arg(required = true)]
    right: Option<String>,
    /// Match radius with its unit: 1.5arcsec, 2", 0.5arcmin, 0.01deg, 50mas.
    #[arg(long, required = true)]
    radius: Option<String>,
    /// Every pair within the radius instead of each left row's nearest partner.
    #[arg(long)]
    all: bool,
    /// Identifier column of the left catalog (default: its main identifier).
    #[arg(long)]
    id1: Option<String>,
    /// Identifier column of the right catalog (default: its main identifier).
    #[arg(long)]
    id2: Option<String>,
    /// Print the physical plan on standard error.
    #[arg(long)]
    explain: bool,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(clap::Args)]
struct OutputArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = FormatArg::Csv)]
    format: FormatArg,
    /// Output file (standard output when absent); written whole or not at all. For
    /// `query`, `mydb://table` or `vos://file` keep the result on the logged-in service.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Most rows to return (MAXREC); the output says when it was reached.
    #[arg(long)]
    maxrec: Option<usize>,
    /// Time limit, seconds.
    #[arg(long, default_value_t = 600)]
    timeout_s: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum LangArg {
    Adql,
    Sql,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Csv,
    Tsv,
    Json,
    Parquet,
    /// VOTable, BINARY2 serialization.
    Votable,
    /// VOTable, TABLEDATA serialization.
    VotableTabledata,
    /// VOTable, BINARY serialization.
    VotableBinary,
    /// FITS binary table.
    Fits,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Random cone searches (uniform centres on the sphere) through the ADQL path; prints
    /// one JSON line with latency percentiles in milliseconds.
    Cone {
        /// Catalog name.
        catalog: String,
        /// Cone radius with its unit (1arcsec, 1arcmin, 0.5deg).
        #[arg(long)]
        radius: String,
        /// Measured queries.
        #[arg(long, default_value_t = 200)]
        queries: usize,
        /// Unmeasured queries first, to warm caches.
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        /// Seed of the cone centres.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// A cross-match of two catalogs in one process, through the library, as `meridian
    /// xmatch` plans it but with the pairs collected in memory rather than written: each
    /// run is timed; prints one JSON line with the seconds of each measured run and the
    /// pairs found. The native counterpart of an in-memory cross-match in LSDB or astropy.
    Xmatch {
        /// Catalog whose rows are matched.
        left: String,
        /// Catalog searched for partners.
        right: String,
        /// Match radius with its unit (1arcsec, 0.5arcmin).
        #[arg(long)]
        radius: String,
        /// Every pair within the radius instead of each left row's nearest partner.
        #[arg(long)]
        all: bool,
        /// Measured runs.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Unmeasured runs first, to warm caches.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
    },
    /// ADQL queries in one process, through the library (no HTTP, no serialization):
    /// each query is run --warmup times unmeasured, then --repeat times; prints one JSON
    /// line per query with the seconds of each measured run and the rows returned. The
    /// native counterpart of a TAP request, for comparing with peers' in-process clients.
    Query {
        /// The queries; "-" reads them from standard input, one a line.
        #[arg(required = true)]
        queries: Vec<String>,
        /// Measured runs of each query.
        #[arg(long, default_value_t = 5)]
        repeat: usize,
        /// Unmeasured runs of each query first, to warm caches.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Writes each query's result (from its last run) as CSV to `DIR/query-<n>.csv`, to
        /// check answers against other systems.
        #[arg(long, value_name = "DIR")]
        csv_dir: Option<PathBuf>,
    },
    /// Spectra in one process: retrieves of --ids random spectra (lookup and the pickle the
    /// SPARCL API sends, bytes counted and dropped) and a stack of every spectrum of the
    /// dataset; prints one JSON line with spectra per second.
    Spectra {
        /// Dataset name.
        dataset: String,
        /// Spectra per retrieve (repeatable).
        #[arg(long = "ids", default_values_t = [1000usize, 24000])]
        ids: Vec<usize>,
        /// SPARCL include (DEFAULT, ALL or field names).
        #[arg(long, default_value = "DEFAULT")]
        include: String,
        /// Measured repeats of each retrieve (the best is kept).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Grid of the stack (start:stop:step in Å); "none" skips it.
        #[arg(long, default_value = "3600:9800:2")]
        stack_grid: String,
        /// Seed of the ids picked.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Subcommand)]
enum SkyCommand {
    /// "ra,dec" lines (degrees) to HEALPix NESTED indices at `order`.
    Healpix {
        /// HEALPix order (0-29).
        #[arg(long)]
        order: u8,
    },
    /// "ra1,dec1,ra2,dec2" lines (degrees) to angular separations in degrees.
    Separation,
    /// HEALPix cells at `order` covering a cone (every cell that overlaps it).
    ConeCells {
        /// HEALPix order (0-29).
        #[arg(long)]
        order: u8,
        /// Centre RA, degrees.
        #[arg(long, allow_hyphen_values = true)]
        ra: f64,
        /// Centre Dec, degrees.
        #[arg(long, allow_hyphen_values = true)]
        dec: f64,
        /// Radius, degrees.
        #[arg(long)]
        radius_deg: f64,
    },
    /// HEALPix cells at `order` covering a polygon (either winding; the smaller side).
    PolygonCells {
        /// HEALPix order (0-29).
        #[arg(long)]
        order: u8,
        /// Vertices as "ra1,dec1,ra2,dec2,..." in degrees.
        #[arg(long, allow_hyphen_values = true)]
        vertices: String,
    },
}

#[derive(clap::Args)]
struct GenerateArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Number of objects.
    #[arg(long, default_value_t = 100_000)]
    objects: u64,
    /// Random seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutFormat::Parquet)]
    format: OutFormat,
    /// Object table columns: full (29) or narrow (10).
    #[arg(long, value_enum, default_value_t = ProfileArg::Full)]
    profile: ProfileArg,
    /// Mean Source detections per object (0: no Source table).
    #[arg(long, default_value_t = 0)]
    source_epochs: u32,
    /// ForcedSource measurements per object (0: no ForcedSource table).
    #[arg(long, default_value_t = 0)]
    forced_epochs: u32,
    /// Objects per output file.
    #[arg(long, default_value_t = 1_000_000)]
    chunk_objects: u64,
    /// Gaussian scatter of positions per axis, milliarcseconds: with the same seed, a second
    /// epoch of the same sky.
    #[arg(long, default_value_t = 0.0)]
    position_jitter_mas: f64,
    /// A survey footprint, RA,DEC,RADIUS in degrees: the objects spread over this cap of
    /// the sky instead of the whole sky (a deep survey's density from fewer objects).
    #[arg(long, value_name = "RA,DEC,RADIUS", value_parser = parse_footprint)]
    footprint: Option<meridian_synth::Footprint>,
    /// Survey images to render of the objects into OUT/images (0: none): each bright object
    /// picked gets six bands at several epochs; some images are tile-compressed (RICE_1),
    /// some hold two detectors.
    #[arg(long, default_value_t = 0)]
    images: u64,
    /// Pixels per side of each image (0.2 arcsec pixels).
    #[arg(long, default_value_t = 256)]
    image_size: u32,
    /// Synthetic spectra to make of the objects (0: none), written as spectra dataset
    /// --spectra-dataset of the data directory.
    #[arg(long, default_value_t = 0)]
    spectra: u64,
    /// Dataset the synthetic spectra go to.
    #[arg(long, default_value = "SYNTH-DR1")]
    spectra_dataset: String,
    #[command(flatten)]
    alerts: commands::alerts::NightArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutFormat {
    Csv,
    Parquet,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProfileArg {
    Full,
    Narrow,
}

#[derive(clap::Args)]
struct IngestArgs {
    /// Catalog name (letters, digits, '_').
    name: String,
    /// Input files, all with the same columns.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// RA column (default: found among ra, RAJ2000, ...).
    #[arg(long)]
    ra: Option<String>,
    /// Dec column (default: found among dec, DEJ2000, ...).
    #[arg(long)]
    dec: Option<String>,
    /// TOML schema file giving column types, units, UCDs and descriptions.
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Skip bad rows and report them instead of failing.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Maximum rows per partition.
    #[arg(long)]
    partition_rows: Option<u64>,
    /// Lowest partition order.
    #[arg(long)]
    min_order: Option<u8>,
    /// Highest partition order.
    #[arg(long)]
    max_order: Option<u8>,
    /// Rows per Parquet row group.
    #[arg(long)]
    row_group_rows: Option<usize>,
    /// Rows per Parquet data page.
    #[arg(long)]
    page_rows: Option<usize>,
    /// Margin cache width, arcseconds (0: none).
    #[arg(long)]
    margin_arcsec: Option<f64>,
    /// Worker threads (0: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Catalog title.
    #[arg(long)]
    title: Option<String>,
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user; the password is read from standard input (first line) or prompted.
    Add {
        /// Login name: a letter, then letters, digits, '_' or '-'.
        name: String,
        /// Contact address.
        #[arg(long)]
        email: Option<String>,
        /// May manage users and tokens through the service.
        #[arg(long)]
        admin: bool,
    },
    /// List the users.
    List,
    /// Remove a user and revoke their tokens.
    Remove { name: String },
    /// Set a user's password (read from standard input) and revoke their tokens.
    Passwd { name: String },
    /// Issue a token for a user without their password, printed on standard output.
    Token {
        name: String,
        /// Comma-separated scopes: catalogs:read, storage:write, jobs:run, admin.
        #[arg(long, default_value = "catalogs:read,storage:write,jobs:run")]
        scopes: String,
        /// Lifetime with its unit, for example 12h or 90days.
        #[arg(long, default_value = "30days")]
        expires: humantime::Duration,
    },
    /// Revoke a token (read from standard input).
    Revoke,
}

fn main() {
    // Panics that readers of strangers' files contain as errors are not crashes.
    meridian_formats::contain::install_hook();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => {}
        Err(e) => {
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                std::process::exit(0);
            }
            let mut shown = e.to_string();
            eprintln!("error: {shown}");
            // Libraries often repeat their cause in their own message: print only news.
            for cause in e.chain().skip(1) {
                let text = cause.to_string();
                if !shown.contains(&text) {
                    eprintln!("  caused by: {text}");
                    shown = text;
                }
            }
            std::process::exit(1);
        }
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if config.log.format == "json" {
        builder.json().init();
    } else {
        builder.compact().init();
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let (mut config, ignored) = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(d) = &cli.data_dir {
        config.data_dir = d.clone();
    }
    init_logging(&config);
    for var in ignored {
        tracing::warn!(variable = %var, "ignoring environment variable: it names no configuration key");
    }
    let quiet = cli.quiet || !std::io::IsTerminal::is_terminal(&std::io::stderr());
    match cli.command {
        Command::Generate(args) => {
            generate(&config, &args, quiet)?;
        }
        Command::Ingest(args) => {
            let store = Store::open(config.catalog_dir())?;
            ingest(&store, &config, &args, quiet)?;
            commands::match_tables::after_change(&config, &args.name, quiet)?;
        }
        Command::Register { name, path } => {
            let store = Store::open(config.catalog_dir())?;
            let c = if meridian_catalog::objects::is_url(&path) {
                store.register_remote(&name, &path)?
            } else {
                store.register_external(&name, Path::new(&path))?
            };
            out!(
                "registered '{name}' -> {path} ({} partitions, {} rows)",
                c.partitions().len(),
                c.total_rows()?
            )?;
            commands::match_tables::after_change(&config, &name, quiet)?;
        }
        Command::Catalogs => {
            let store = Store::open(config.catalog_dir())?;
            for name in store.list()? {
                let c = store.catalog(&name)?;
                out!(
                    "{name}\t{} rows\t{} partitions",
                    c.total_rows()?,
                    c.partitions().len()
                )?;
            }
        }
        Command::Info { name } => info(&Store::open(config.catalog_dir())?, &name)?,
        Command::Cone {
            name,
            ra,
            dec,
            radius_arcsec,
            explain,
        } => {
            let store = Store::open(config.catalog_dir())?;
            cone(
                &store,
                &name,
                ra,
                dec,
                radius_arcsec,
                explain,
                &mut std::io::stdout().lock(),
            )?;
        }
        Command::Query(args) => query(&config, &args, quiet)?,
        Command::Xmatch(args) => xmatch(&config, &args, quiet)?,
        Command::Serve { addr } => serve(&config, addr)?,
        Command::Sky(cmd) => sky(cmd)?,
        Command::Images(cmd) => commands::images::run(&config.data_dir.join("images"), cmd)?,
        Command::Hips(cmd) => commands::sky_maps::hips(
            &config.catalog_dir(),
            &config.data_dir.join("images"),
            &config.data_dir.join("hips"),
            cmd,
        )?,
        Command::Moc(args) => commands::sky_maps::moc(
            &config.catalog_dir(),
            &config.data_dir.join("images"),
            &args,
        )?,
        Command::Cluster(cmd) => commands::cluster::run(&config, cmd)?,
        Command::Alerts(cmd) => commands::alerts::run(cmd, &config)?,
        Command::Spectra(cmd) => commands::spectra::run(
            &config.spectra_dir(),
            cmd,
            &|| open_engine(&config),
            &|| open_accounts(&config),
        )?,
        Command::Sia(args) => {
            commands::image_access::sia(&config.data_dir.join("images"), IMAGE_AUTHORITY, &args)?
        }
        Command::Cutout(args) => {
            commands::image_access::cutout(&config.data_dir.join("images"), IMAGE_AUTHORITY, &args)?
        }
        Command::Bench(cmd) => bench(&config, cmd)?,
        Command::User(cmd) => user(&config, cmd)?,
        Command::Check { deep, repair } => check(&config, deep, repair)?,
        Command::Login { user, remote } => {
            client::login(&remote, &user, &read_secret("password")?)?
        }
        Command::Logout { remote } => client::logout(&remote)?,
        Command::Mydb { cmd, remote } => client::mydb(&remote, &cmd, quiet)?,
        Command::Vos { cmd, remote } => client::vos_command(&remote, &cmd, quiet)?,
        Command::Group { cmd, remote } => client::group(&remote, &cmd)?,
        Command::Demo { objects, no_serve } => {
            demo(&config, objects, quiet)?;
            if !no_serve {
                serve(&config, None)?;
            }
        }
    }
    Ok(())
}

pub(crate) fn bar(quiet: bool, len: u64, template: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(template)
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.enable_steady_tick(Duration::from_millis(200));
    b
}

/// `RA,DEC,RADIUS` in degrees.
fn parse_footprint(s: &str) -> Result<meridian_synth::Footprint, String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("'{s}': {e} (expected RA,DEC,RADIUS in degrees)"))?;
    let [ra, dec, r] = v[..] else {
        return Err(format!(
            "'{s}': expected three numbers, RA,DEC,RADIUS in degrees"
        ));
    };
    meridian_synth::Footprint::new(ra, dec, r).map_err(|e| e.to_string())
}

fn generate(
    config: &Config,
    args: &GenerateArgs,
    quiet: bool,
) -> anyhow::Result<meridian_synth::Generated> {
    let spec = meridian_synth::SurveySpec {
        objects: args.objects,
        seed: args.seed,
        profile: match args.profile {
            ProfileArg::Full => meridian_synth::Profile::Full,
            ProfileArg::Narrow => meridian_synth::Profile::Narrow,
        },
        source_epochs: args.source_epochs,
        forced_epochs: args.forced_epochs,
        chunk_objects: args.chunk_objects,
        position_jitter_mas: args.position_jitter_mas,
        footprint: args.footprint,
    };
    // The night's settings and schema are checked before the survey is written.
    let night = args
        .alerts
        .alerts
        .then(|| commands::alerts::plan_night(spec.clone(), &args.alerts))
        .transpose()?;
    let format = match args.format {
        OutFormat::Csv => meridian_synth::OutFormat::Csv,
        OutFormat::Parquet => meridian_synth::OutFormat::Parquet,
    };
    let pb = bar(
        quiet,
        args.objects,
        "generate [{bar:30}] {human_pos}/{human_len} objects {per_sec} ETA {eta}",
    );
    let start = Instant::now();
    let out = meridian_synth::generate(&args.out, &spec, format, &|n| pb.set_position(n))?;
    pb.finish_and_clear();
    for (name, files, rows) in &out.tables {
        eprintln!(
            "{name}: {rows} rows in {} files under {}",
            files.len(),
            args.out.display()
        );
    }
    if args.images > 0 {
        commands::survey_images::generate(
            &args.out.join("images"),
            &meridian_synth::objects(&spec),
            args.images,
            args.image_size,
            args.seed,
            quiet,
        )?;
    }
    if args.spectra > 0 {
        commands::spectra::generate(
            &config.spectra_dir(),
            &args.spectra_dataset,
            &meridian_synth::objects(&spec),
            args.spectra,
            args.seed,
            quiet,
        )?;
    }
    if let Some(night) = &night {
        commands::alerts::generate_night(&args.out.join("alerts"), night, quiet)?;
    }
    eprintln!("generated in {:.1} s", start.elapsed().as_secs_f64());
    Ok(out)
}

/// The ingest settings of the configuration (`[ingest]`).
pub(crate) fn ingest_options(config: &Config) -> IngestOptions {
    let c = &config.ingest;
    IngestOptions {
        partition_rows: c.partition_rows,
        min_order: c.min_order,
        max_order: c.max_order,
        row_group_rows: c.row_group_rows,
        page_rows: c.page_rows,
        margin_arcsec: c.margin_arcsec,
        memory_budget_bytes: c.memory_budget_mib << 20,
        threads: c.threads,
        ..Default::default()
    }
}

fn ingest(
    store: &Store,
    config: &Config,
    args: &IngestArgs,
    quiet: bool,
) -> anyhow::Result<meridian_catalog::IngestReport> {
    let c = ingest_options(config);
    let opts = IngestOptions {
        ra_column: args.ra.clone(),
        dec_column: args.dec.clone(),
        partition_rows: args.partition_rows.unwrap_or(c.partition_rows),
        min_order: args.min_order.unwrap_or(c.min_order),
        max_order: args.max_order.unwrap_or(c.max_order),
        row_group_rows: args.row_group_rows.unwrap_or(c.row_group_rows),
        page_rows: args.page_rows.unwrap_or(c.page_rows),
        margin_arcsec: args.margin_arcsec.unwrap_or(c.margin_arcsec),
        read: ReadOptions {
            schema: args
                .schema
                .as_deref()
                .map(SchemaOverride::load)
                .transpose()?,
            skip_bad_rows: args.skip_bad_rows,
            ..Default::default()
        },
        threads: args.threads.unwrap_or(c.threads),
        title: args.title.clone(),
        ..c
    };
    let bars: Mutex<Option<(Stage, ProgressBar)>> = Mutex::new(None);
    let progress = |p: &IngestProgress| {
        let mut guard = bars.lock().expect("progress lock");
        if guard.as_ref().is_none_or(|(s, _)| *s != p.stage) {
            if let Some((_, b)) = guard.take() {
                b.finish_and_clear();
            }
            let b = match p.stage {
                Stage::Reading => bar(
                    quiet,
                    p.bytes.1,
                    "read    [{bar:30}] {binary_bytes}/{binary_total_bytes} {msg} ETA {eta}",
                ),
                Stage::Writing => bar(
                    quiet,
                    p.units.1,
                    "write   [{bar:30}] {pos}/{len} buckets {msg} ETA {eta}",
                ),
                Stage::Margin => bar(
                    quiet,
                    p.units.1,
                    "margin  [{bar:30}] {pos}/{len} partitions ETA {eta}",
                ),
                Stage::Publishing => bar(quiet, 1, "publish"),
            };
            *guard = Some((p.stage, b));
        }
        let (_, b) = guard.as_ref().expect("set above");
        match p.stage {
            Stage::Reading => {
                b.set_position(p.bytes.0);
                let secs = b.elapsed().as_secs_f64().max(1e-3);
                b.set_message(format!(
                    "{} rows, {:.0} rows/s",
                    p.rows,
                    p.rows as f64 / secs
                ));
            }
            Stage::Writing => {
                b.set_position(p.units.0);
                b.set_message(format!("{} rows", p.rows));
            }
            Stage::Margin => b.set_position(p.units.0),
            Stage::Publishing => {}
        }
    };
    let report = meridian_catalog::ingest::ingest(store, &args.name, &args.files, &opts, &progress)
        .with_context(|| {
            format!(
                "ingesting '{}' into {} (nothing was published)",
                args.name,
                store.root().display()
            )
        })?;
    if let Some((_, b)) = bars.lock().expect("progress lock").take() {
        b.finish_and_clear();
    }
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
        "ingested '{}': {} rows in {} partitions (max order {}), margin {} rows, {:.1} s, {:.0} rows/s",
        report.name,
        report.rows,
        report.partitions,
        report.max_order,
        report.margin_rows,
        secs,
        report.rows as f64 / secs.max(1e-9)
    );
    if report.bad_rows.count > 0 {
        eprintln!(
            "skipped {} bad rows; the first ones:",
            report.bad_rows.count
        );
        for e in &report.bad_rows.examples {
            eprintln!("  {e}");
        }
    }
    tracing::info!(catalog = %report.name, rows = report.rows, partitions = report.partitions, seconds = secs, path = %report.path.display(), "ingest complete");
    Ok(report)
}

fn info(store: &Store, name: &str) -> anyhow::Result<()> {
    let c = store.catalog(name)?;
    out!("catalog {name} at {}", c.location())?;
    for (k, v) in c.properties().entries() {
        out!("  {k} = {v}")?;
    }
    let orders: std::collections::BTreeMap<u8, usize> =
        c.partitions().iter().fold(Default::default(), |mut m, p| {
            *m.entry(p.order).or_default() += 1;
            m
        });
    out!(
        "partitions: {} ({})",
        c.partitions().len(),
        orders
            .iter()
            .map(|(o, n)| format!("order {o}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;
    if let Some(m) = c.margin() {
        out!("margin cache: {} ({} rows)", m.location(), m.total_rows()?)?;
    }
    out!("columns:")?;
    for col in c.columns() {
        out!(
            "  {:<20} {:<10} unit={:<8} ucd={:<28} {}",
            col.name,
            col.data_type.to_string(),
            col.meta.unit.unwrap_or_default(),
            col.meta.ucd.unwrap_or_default(),
            col.meta.description.unwrap_or_default()
        )?;
    }
    Ok(())
}

fn cone(
    store: &Store,
    name: &str,
    ra: f64,
    dec: f64,
    radius_arcsec: f64,
    explain: bool,
    out: &mut dyn Write,
) -> anyhow::Result<u64> {
    let center = SkyPoint::new(ra, dec).context("cone centre")?;
    let region =
        Region::Circle(Circle::new(center, radius_arcsec / 3600.0).context("cone radius")?);
    let c = store.catalog(name)?;
    let start = Instant::now();
    let mut scan = c.scan(Some(&region))?;
    let mut rows = 0u64;
    let mut writer = arrow::csv::WriterBuilder::new()
        .with_header(true)
        .build(out);
    for batch in scan.by_ref() {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        writer.write(&batch)?;
    }
    let s = scan.stats();
    if explain {
        eprintln!(
            "cone r={radius_arcsec}\" at ({ra}, {dec}): {rows} rows; partitions read {}/{}; row groups read {}/{}; rows scanned {}; {:.1} ms",
            s.partitions_read,
            s.partitions_total,
            s.row_groups_read,
            s.row_groups_total,
            s.rows_scanned,
            start.elapsed().as_secs_f64() * 1e3
        );
    }
    Ok(rows)
}

fn sky(cmd: SkyCommand) -> anyhow::Result<()> {
    use std::io::BufRead;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let numbers = |line: &str, n: usize, no: usize| -> anyhow::Result<Vec<f64>> {
        let v: Vec<f64> = line
            .split(',')
            .map(|t| t.trim().parse::<f64>())
            .collect::<Result<_, _>>()
            .with_context(|| format!("line {no}: '{line}' is not {n} comma-separated numbers"))?;
        if v.len() != n {
            bail!("line {no}: expected {n} numbers, got {}", v.len());
        }
        Ok(v)
    };
    match cmd {
        SkyCommand::Healpix { order } => {
            meridian_sky::healpix::check_order(order)?;
            for (i, line) in std::io::stdin().lock().lines().enumerate() {
                let v = numbers(&line?, 2, i + 1)?;
                let p = SkyPoint::new(v[0], v[1]).with_context(|| format!("line {}", i + 1))?;
                writeln!(out, "{}", meridian_sky::healpix::hash(order, &p))?;
            }
        }
        SkyCommand::Separation => {
            for (i, line) in std::io::stdin().lock().lines().enumerate() {
                let v = numbers(&line?, 4, i + 1)?;
                let a = SkyPoint::new(v[0], v[1]).with_context(|| format!("line {}", i + 1))?;
                let b = SkyPoint::new(v[2], v[3]).with_context(|| format!("line {}", i + 1))?;
                writeln!(out, "{:.17e}", a.separation_deg(&b))?;
            }
        }
        SkyCommand::ConeCells {
            order,
            ra,
            dec,
            radius_deg,
        } => {
            let region = Region::Circle(Circle::new(SkyPoint::new(ra, dec)?, radius_deg)?);
            write_cells(&region, order, &mut out)?;
        }
        SkyCommand::PolygonCells { order, vertices } => {
            let n = vertices.split(',').count();
            let v = numbers(&vertices, n, 1)?;
            if n % 2 != 0 {
                bail!("--vertices needs pairs of numbers, got {n}");
            }
            let points = v
                .chunks(2)
                .map(|c| SkyPoint::new(c[0], c[1]))
                .collect::<Result<Vec<_>, _>>()?;
            let region = Region::Polygon(meridian_sky::Polygon::new(points)?);
            write_cells(&region, order, &mut out)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The engine's settings from the configuration.
pub(crate) fn engine_config(config: &Config) -> meridian_engine::EngineConfig {
    meridian_engine::EngineConfig {
        memory_limit_bytes: (config.query.memory_limit_mib as usize) << 20,
        target_partitions: config.query.target_partitions,
        // Checked when the configuration was read.
        xmatch_zones: config.query.xmatch_zones.parse().unwrap_or_default(),
        ..Default::default()
    }
}

/// The query engine over the configured catalogs, with the runtime to drive it; on the
/// cluster of `[cluster] scheduler` when one is set.
pub(crate) fn open_engine(
    config: &Config,
) -> anyhow::Result<(meridian_engine::Engine, tokio::runtime::Runtime)> {
    let store = Store::open(config.catalog_dir())?;
    let engine_config = engine_config(config);
    let mut engine = meridian_engine::Engine::open(&store, &engine_config)?;
    commands::spectra::register(&mut engine, &config.spectra_dir())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(meridian_engine::guard::EXECUTION_STACK_BYTES)
        .enable_all()
        .build()?;
    if let Some(url) = &config.cluster.scheduler {
        let remote = rt.block_on(meridian_cluster::client::connect(
            url,
            &engine_config,
            config.cluster.required,
        ))?;
        tracing::info!(scheduler = %url, required = config.cluster.required, "queries run on the cluster");
        engine = engine.with_remote(remote);
    }
    Ok((engine, rt))
}

fn query(config: &Config, args: &QueryArgs, quiet: bool) -> anyhow::Result<()> {
    if let Some(out) = args
        .output
        .out
        .as_ref()
        .and_then(|o| o.to_str())
        .filter(|o| o.contains("://"))
    {
        let format = match args.output.format {
            FormatArg::Csv => "csv",
            FormatArg::Tsv => "ascii",
            FormatArg::Json => "json",
            FormatArg::Parquet => "parquet",
            FormatArg::Fits => "fits",
            FormatArg::Votable | FormatArg::VotableTabledata | FormatArg::VotableBinary => {
                "votable"
            }
        };
        let sql = matches!(args.lang, LangArg::Sql);
        let message = client::query_out(&args.remote, &args.query, sql, out, format)?;
        if !quiet {
            eprintln!("{}", message.trim());
        }
        return Ok(());
    }
    let (engine, rt) = open_engine(config)?;
    let lang = match args.lang {
        LangArg::Adql => meridian_engine::Lang::Adql,
        LangArg::Sql => meridian_engine::Lang::Sql,
    };
    let result = rt.block_on(async {
        if args.explain && lang == meridian_engine::Lang::Adql {
            eprintln!("sql: {}", engine.translate(&args.query)?);
        }
        let df = engine.query(&args.query, lang);
        emit(&engine, df, &args.output, args.explain, quiet).await?;
        if args.explain {
            eprintln!("scan: {}", engine.scan_report(&args.query, lang).await?);
        }
        anyhow::Ok(())
    });
    // A cancelled or timed-out plan may have tasks inside a long CPU-bound poll: do not
    // wait for them to notice, the process is about to exit.
    rt.shutdown_background();
    result
}

fn xmatch(config: &Config, args: &XMatchArgs, quiet: bool) -> anyhow::Result<()> {
    if let Some(cmd) = &args.tables {
        return commands::match_tables::run(config, cmd, quiet);
    }
    let (Some(left), Some(right), Some(radius)) = (&args.left, &args.right, &args.radius) else {
        bail!("name two catalogs and --radius (or a subcommand: refresh, status)");
    };
    let (engine, rt) = open_engine(config)?;
    let spec = xmatch_spec(
        left.clone(),
        right.clone(),
        radius,
        args.all,
        args.id1.clone(),
        args.id2.clone(),
    )?;
    let result = rt.block_on(emit(
        &engine,
        engine.xmatch(&spec),
        &args.output,
        args.explain,
        quiet,
    ));
    rt.shutdown_background();
    result
}

/// A cross-match of `left` and `right` as the command line states it: the radius with its
/// unit, every pair (`all`) or the nearest, identifier columns or the catalogs' own.
fn xmatch_spec(
    left: String,
    right: String,
    radius: &str,
    all: bool,
    left_id: Option<String>,
    right_id: Option<String>,
) -> anyhow::Result<meridian_engine::XMatchSpec> {
    Ok(meridian_engine::XMatchSpec {
        left,
        right,
        radius_deg: meridian_sky::parse_angle_deg(radius).context("--radius")?,
        left_id,
        right_id,
        mode: if all {
            meridian_engine::XMatchMode::All
        } else {
            meridian_engine::XMatchMode::Nearest
        },
    })
}

/// Plans, runs and writes a result under the output options: streaming, MAXREC, time
/// limit, progress and timing on standard error.
async fn emit(
    engine: &meridian_engine::Engine,
    df: impl std::future::Future<Output = meridian_engine::Result<meridian_engine::DataFrame>>,
    args: &OutputArgs,
    explain: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    use meridian_formats::write::{OutputFormat, ResultWriter, Serialization};
    let format = match args.format {
        FormatArg::Csv => OutputFormat::Csv,
        FormatArg::Tsv => OutputFormat::Tsv,
        FormatArg::Json => OutputFormat::Json,
        FormatArg::Parquet => OutputFormat::Parquet,
        FormatArg::Votable => OutputFormat::VoTable(Serialization::Binary2),
        FormatArg::VotableTabledata => OutputFormat::VoTable(Serialization::TableData),
        FormatArg::VotableBinary => OutputFormat::VoTable(Serialization::Binary),
        FormatArg::Fits => OutputFormat::Fits,
    };
    let start = Instant::now();
    let limit = Duration::from_secs(args.timeout_s);
    let progress = bar(quiet, 0, "{spinner} {human_pos} rows ({per_sec}) {elapsed}");
    let run = async {
        let mut df = df.await?;
        // One row past MAXREC tells whether the limit cut the result.
        if let Some(m) = args.maxrec.filter(|_| !meridian_engine::is_explain(&df)) {
            df = df.limit(0, Some(m + 1))?;
        }
        let plan = engine.physical_plan(df).await?;
        if explain {
            eprintln!("plan:\n{}", datafusion_display(&plan));
        }
        let schema = plan.schema();
        let mut writer = match &args.out {
            Some(p) => ResultWriter::create(format, p, &schema)?,
            None => ResultWriter::new(
                format,
                Box::new(std::io::BufWriter::new(std::io::stdout())),
                &schema,
            )?,
        };
        if let Some(m) = args.maxrec {
            writer.set_maxrec(m as u64);
        }
        let mut stream = datafusion_execute(plan, engine)?;
        while let Some(batch) = stream.next().await {
            writer.write(&batch?)?;
            progress.set_position(writer.rows());
        }
        let overflow = writer.overflowed();
        let rows = writer.finish()?;
        anyhow::Ok((rows, overflow))
    };
    // Ctrl-C or SIGTERM cancels: the running plan is dropped, which stops its tasks, and
    // the unfinished output file is removed.
    let cancelled = interrupted();
    let (rows, overflow) = tokio::select! {
        r = run => r?,
        _ = meridian_engine::deadline(limit) => {
            progress.finish_and_clear();
            bail!(
                "the query exceeded its time limit of {} s and was stopped",
                args.timeout_s
            );
        }
        _ = cancelled => {
            progress.finish_and_clear();
            bail!("the query was cancelled");
        }
    };
    progress.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "{rows} rows in {:.1} ms ({:.0} rows/s){}",
        secs * 1e3,
        rows as f64 / secs.max(1e-9),
        if overflow {
            format!(
                " (MAXREC {} reached: more rows match)",
                args.maxrec.unwrap_or(0)
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// `meridian check`.
fn check(config: &Config, deep: bool, repair: bool) -> anyhow::Result<()> {
    let store = meridian_catalog::Store::open(config.catalog_dir())?;
    let checked = store.check(deep, repair)?;
    let mut problems: Vec<String> = checked.problems.iter().map(|p| p.to_string()).collect();
    let databases = [
        config.accounts_db(),
        config.storage_db(),
        config.jobs_dir().join("jobs.sqlite"),
        config.alert_filters_path(),
    ];
    for db in &databases {
        problems.extend(meridian_services::check_database(db));
    }
    problems.extend(check_mydb(&config.mydb_dir(), repair)?);
    problems.extend(meridian_services::jobs::Jobs::check_dir(
        &config.jobs_dir(),
        repair,
    )?);
    problems.extend(check_storage(config, repair)?);
    for p in &problems {
        println!("{p}");
    }
    println!(
        "checked {} catalogs ({} partition files, {} rows{}) and {} databases: {}",
        checked.catalogs,
        checked.files,
        checked.rows,
        if deep { ", every page decoded" } else { "" },
        databases.iter().filter(|d| d.exists()).count(),
        match problems.len() {
            0 => "no problem found".to_string(),
            n => format!("{n} problems"),
        }
    );
    if !problems.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// The file store against its records (see `Storage::check`), what interrupted uploads
/// left in a local store, and the spaces and tables of users and groups that are gone
/// (purged with `repair`, as their removal would have).
fn check_storage(config: &Config, repair: bool) -> anyhow::Result<Vec<String>> {
    if !config.accounts_db().exists() && !config.storage_db().exists() {
        return Ok(Vec::new());
    }
    let accounts = open_accounts(config)?;
    let gone = accounts.gone()?;
    let storage = open_storage(config)?;
    let mydb = meridian_services::mydb::MyDb::new(config.mydb_dir(), config.mydb.quota_mib << 20);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut problems, orphans) = rt.block_on(storage.check(&gone, repair))?;
    if config.storage.url.is_none() {
        problems.extend(meridian_services::storage::staged_leftovers(
            &config.storage_dir(),
            repair,
        ));
    }
    // MyDB spaces of names that are gone and held by no one now (a purge cut off after
    // the file store's part).
    let mut names: Vec<String> = orphans.iter().map(|g| g.name.clone()).collect();
    for g in gone.values() {
        let held = accounts.user_id(&g.name)?.is_some() || accounts.group_id(&g.name)?.is_some();
        if !held && !names.contains(&g.name) && mydb.has_space(&g.name) {
            problems.push(format!(
                "MyDB: the tables of '{}' belong to a {} that is gone",
                g.name,
                if g.group { "group" } else { "user" }
            ));
            names.push(g.name.clone());
        }
    }
    if repair {
        for g in &orphans {
            rt.block_on(meridian_services::groups::purge(&storage, &mydb, g))?;
        }
        for name in &names {
            let held = accounts.user_id(name)?.is_some() || accounts.group_id(name)?.is_some();
            if !held {
                mydb.remove_space(name)?;
            }
        }
        if !names.is_empty() {
            problems.push(format!(
                "purged the spaces and tables of {} users and groups that are gone",
                names.len()
            ));
        }
    }
    Ok(problems)
}

/// MyDB's tables (each a Parquet file that must read) and what interrupted writes left in
/// its directories: hidden files that name a process that is gone (`.NAME.PID.MS.tmp` and
/// its writer's `..NAME.PID.MS.tmp.partial`, an import's `uploads/.import-PID-MS.csv`),
/// and the staging directories of the tables' spatial indexes; removed with `repair`.
fn check_mydb(root: &std::path::Path, repair: bool) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    for user in std::fs::read_dir(root).into_iter().flatten().flatten() {
        if !user.path().is_dir() {
            continue;
        }
        let who = user.file_name().to_string_lossy().to_string();
        let dirs = [user.path(), user.path().join("uploads")];
        let files = dirs
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten());
        for f in files {
            let name = f.file_name().to_string_lossy().to_string();
            let path = f.path();
            if !path.is_file() {
                continue;
            }
            if let Some(table) = name
                .strip_suffix(".parquet")
                .filter(|_| !name.starts_with('.'))
            {
                let readable = std::fs::File::open(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|file| {
                        parquet::arrow::arrow_reader::ArrowReaderMetadata::load(
                            &file,
                            Default::default(),
                        )
                        .map(drop)
                        .map_err(|e| e.to_string())
                    });
                if let Err(e) = readable {
                    problems.push(format!(
                        "MyDB table '{table}' of {who} ({}) is not readable: {e}",
                        path.display()
                    ));
                }
            } else if name.starts_with('.')
                && writer_pid(&name).is_some_and(|p| !meridian_catalog::pid_alive(p))
            {
                let removed = repair && std::fs::remove_file(&path).is_ok();
                problems.push(format!(
                    "MyDB of {who}: an interrupted write left {}{}",
                    path.display(),
                    if removed { " (removed)" } else { "" }
                ));
            }
        }
        let index = user.path().join(".hats");
        if index.is_dir() {
            let checked = meridian_catalog::Store::open(&index)?.check(false, repair)?;
            problems.extend(
                checked
                    .problems
                    .iter()
                    .map(|p| format!("MyDB of {who}, spatial index: {p}")),
            );
        }
    }
    Ok(problems)
}

/// The process id a temporary file's name carries: the first of its last two numbers in a
/// row (process id, then time), as `.NAME.PID.MS.tmp` and `.import-PID-MS.csv` have.
fn writer_pid(name: &str) -> Option<i32> {
    let numbers: Vec<Option<u64>> = name
        .split(['.', '-'])
        .map(|t| t.parse::<u64>().ok())
        .collect();
    numbers.windows(2).rev().find_map(|w| match w {
        [Some(pid), Some(_)] => i32::try_from(*pid).ok(),
        _ => None,
    })
}

fn open_accounts(config: &Config) -> anyhow::Result<meridian_services::accounts::Accounts> {
    let path = config.accounts_db();
    let lifetime = Duration::from_secs(config.auth.token_lifetime_days * 86_400);
    meridian_services::accounts::Accounts::open(&path, lifetime)
        .with_context(|| format!("opening the account database {}", path.display()))
}

fn open_storage(config: &Config) -> anyhow::Result<meridian_services::storage::Storage> {
    use meridian_services::storage::{Collection, Storage};
    let store = match &config.storage.url {
        Some(url) => {
            // The same stores (and `AWS_*` configuration) as catalogs in object stores.
            let (_, store, prefix) = meridian_catalog::objects::parse(url)
                .with_context(|| format!("[storage] url = '{url}'"))?;
            if prefix.as_ref().is_empty() {
                store
            } else {
                std::sync::Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
            }
        }
        None => Storage::local_store(&config.storage_dir())?,
    };
    let collections = config
        .storage
        .collections
        .iter()
        .map(|(name, dir)| Collection::local(name, dir))
        .collect::<Result<Vec<_>, _>>()?;
    Storage::open(
        &config.storage_db(),
        store,
        config.storage.quota_mib << 20,
        collections,
    )
    .with_context(|| format!("opening the file store {}", config.storage_db().display()))
}

/// The first line of standard input, or a prompt when it is a terminal.
fn read_secret(what: &str) -> anyhow::Result<String> {
    let stdin = std::io::stdin();
    if std::io::IsTerminal::is_terminal(&stdin) {
        eprint!("{what}: ");
        std::io::stderr().flush()?;
    }
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let line = line.trim_end_matches(['\r', '\n']).to_string();
    if line.is_empty() {
        bail!("no {what} on standard input");
    }
    Ok(line)
}

fn user(config: &Config, cmd: UserCommand) -> anyhow::Result<()> {
    use meridian_services::accounts::Scopes;
    let accounts = open_accounts(config)?;
    match cmd {
        UserCommand::Add { name, email, admin } => {
            let password = read_secret("password")?;
            let u = accounts.create_user(&name, &password, email.as_deref(), admin)?;
            out!("created user '{}' (uid {})", u.name, u.uid)?;
        }
        UserCommand::List => {
            for u in accounts.users()? {
                out!(
                    "{}\tuid {}\t{}\t{}{}",
                    u.name,
                    u.uid,
                    meridian_services::jobs::format_time(u.created_ms),
                    u.email.as_deref().unwrap_or("-"),
                    if u.admin { "\tadmin" } else { "" }
                )?;
            }
        }
        UserCommand::Remove { name } => {
            // With their files, tables and owned groups; the name is never given again.
            let gone = accounts.remove_user(&name)?;
            let storage = open_storage(config)?;
            let mydb =
                meridian_services::mydb::MyDb::new(config.mydb_dir(), config.mydb.quota_mib << 20);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            for g in &gone {
                rt.block_on(meridian_services::groups::purge(&storage, &mydb, g))?;
            }
            out!("removed user '{name}'")?;
            for g in gone.iter().filter(|g| g.group) {
                out!("dissolved their group '{}'", g.name)?;
            }
        }
        UserCommand::Passwd { name } => {
            accounts.set_password(&name, &read_secret("new password")?)?;
            out!("password of '{name}' changed; their tokens are revoked")?;
        }
        UserCommand::Token {
            name,
            scopes,
            expires,
        } => {
            let t = accounts.issue_for(&name, Scopes::parse(&scopes)?, *expires)?;
            out!("{}", t.token)?;
            eprintln!(
                "expires {}",
                meridian_services::jobs::format_time(t.expires_ms)
            );
        }
        UserCommand::Revoke => {
            accounts.revoke(&read_secret("token")?)?;
            out!("revoked")?;
        }
    }
    Ok(())
}

/// The authority of image datasets' publisher DIDs.
pub(crate) const IMAGE_AUTHORITY: &str = "meridian";

fn serve(config: &Config, addr: Option<String>) -> anyhow::Result<()> {
    let (engine, rt) = open_engine(config)?;
    // Queries get a runtime of their own: CPU-bound operators never hold the threads that
    // accept requests, stream results and enforce time limits.
    let queries = tokio::runtime::Builder::new_multi_thread()
        .thread_name("meridian-query")
        .thread_stack_size(meridian_engine::guard::EXECUTION_STACK_BYTES)
        .enable_all()
        .build()?;
    let mut engine = engine.with_executor(queries.handle().clone());
    let s = &config.server;
    let addr = addr.unwrap_or_else(|| s.addr.clone());
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&addr))
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener.local_addr()?;
    // Image collections: ivoa.obscore, whose access URLs name the service's own address,
    // indexed by position so that spatial queries read only the images near their region.
    // Spectra join them there (dataproduct_type spectrum).
    let collections = meridian_images::collection::list(&config.data_dir.join("images"))?;
    let spectra = meridian_spectra::store::Library::open(&config.spectra_dir())?;
    if !collections.is_empty() || !spectra.datasets().is_empty() {
        let base = s
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{local}"));
        let base = base.trim_end_matches('/');
        let images = meridian_images::obscore::batch(&collections, base, IMAGE_AUTHORITY)?;
        let spectra_rows =
            meridian_server::spectra::obscore_batch(&spectra, base, IMAGE_AUTHORITY)?;
        let batch = arrow::compute::concat_batches(&images.schema(), [&images, &spectra_rows])?;
        tracing::info!(
            images = images.num_rows(),
            spectra = spectra_rows.num_rows(),
            "ivoa.obscore"
        );
        engine.add_footprint_table("ivoa", "obscore", batch, ("s_ra", "s_dec", "s_region"))?;
    }
    let mut state = meridian_server::AppState::new(
        engine,
        meridian_server::Limits {
            default_maxrec: s.default_maxrec,
            max_maxrec: s.max_maxrec,
            sync_timeout_s: s.sync_timeout_s,
            upload_max_bytes: s.upload_max_mib << 20,
            upload_max_rows: s.upload_max_rows,
            allow_url_uploads: s.allow_url_uploads,
            url_uploads_allow_private: s.url_uploads_allow_private,
        },
        &config.jobs_dir(),
        config.jobs.to_services(),
        meridian_server::Personal {
            accounts: open_accounts(config)?,
            auth: meridian_server::auth::AuthConfig {
                self_registration: config.auth.self_registration,
                anonymous_jobs: config.auth.anonymous_jobs,
            },
            mydb: meridian_services::mydb::MyDb::new(
                config.mydb_dir(),
                config.mydb.quota_mib << 20,
            ),
            storage: open_storage(config)?,
        },
        meridian_server::images::ImageService::new(
            &collections,
            IMAGE_AUTHORITY,
            s.cutout_max_pixels,
        ),
    )?;
    state.public_url = s.public_url.clone();
    state.quotas = meridian_services::quota::Quotas::new(config.quotas.to_services());
    let sc = &config.spectra;
    if sc.concurrent_stacks == 0 || sc.max_retrieve == 0 {
        bail!("[spectra] concurrent_stacks and max_retrieve must be at least 1");
    }
    state.spectra = std::sync::Arc::new(meridian_server::spectra::SpectraService {
        authority: IMAGE_AUTHORITY.to_string(),
        max_retrieve: sc.max_retrieve,
        max_find: sc.max_find,
        max_stack: sc.max_stack,
        stack_memory_bytes: sc.stack_memory_mib << 20,
        stacks: std::sync::Arc::new(tokio::sync::Semaphore::new(sc.concurrent_stacks)),
        ..meridian_server::spectra::SpectraService::new(spectra)
    });
    state.sky_maps = std::sync::Arc::new(meridian_server::sky_maps::SkyMaps::new(Some(
        config.data_dir.join("hips"),
    )));
    state.alerts = Some(std::sync::Arc::new(meridian_server::alerts::AlertFilters {
        store: std::sync::Arc::new(meridian_alerts::filters::FilterStore::open(
            &config.alert_filters_path(),
        )?),
        webhook_allow_private: config.alerts.webhook_allow_private,
    }));
    rt.block_on(async {
        // URLs the service hands out (job and transfer locations) are built on the public
        // URL, never on the Host header a client sends.
        let mut state = state;
        if state.public_url.is_none() {
            if local.ip().is_unspecified() {
                tracing::warn!(
                    "listening on every address without [server] public_url: URLs in \
                     responses follow the Host header clients send; set public_url"
                );
            } else {
                state.public_url = Some(format!("http://{local}"));
            }
        }
        let tables: Vec<String> = state.engine.tables().map(|(n, _)| n.to_string()).collect();
        commands::match_tables::spawn_background(config)?;
        tracing::info!(addr = %local, tables = ?tables, "serving");
        eprintln!("TAP service: http://{local}/tap");
        eprintln!("Portal (open in a browser): http://{local}/");
        eprintln!("  pyvo:  pyvo.dal.TAPService(\"http://{local}/tap\").search(\"SELECT TOP 10 * FROM {}\")",
            tables.first().map(String::as_str).unwrap_or("<table>"));
        eprintln!("  TOPCAT: VO > Table Access Protocol (TAP) query, TAP URL http://{local}/tap");
        if !state.spectra.library.datasets().is_empty() {
            eprintln!(
                "Spectra: sparcl.client.SparclClient(url=\"http://{local}/sparcl\"); \
                 SSA http://{local}/ssa"
            );
        }
        let hub = if config.notebooks.enabled {
            let own = state
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{local}"));
            let (provider, hub) = notebook_hub(config, &own)?;
            state.oauth = std::sync::Arc::new(provider);
            state.notebooks = Some(hub.clone());
            hub.start();
            let s = hub.status();
            match &s.problem {
                None => eprintln!("Notebooks: {}", s.url),
                Some(p) => eprintln!("Notebooks: not started: {p}"),
            }
            Some(hub)
        } else {
            None
        };
        // Ctrl-C or SIGTERM: stop accepting, finish the requests in flight.
        let served = meridian_server::serve(listener, state, interrupted()).await;
        if let Some(hub) = hub {
            tokio::task::spawn_blocking(move || hub.stop(std::time::Duration::from_secs(10)))
                .await?;
        }
        served?;
        tracing::info!("server stopped");
        anyhow::Ok(())
    })?;
    queries.shutdown_background();
    rt.shutdown_background();
    Ok(())
}

/// The notebook hub of `config`, and the OAuth provider it signs users in through, for a
/// service browsers reach at `own_url`.
fn notebook_hub(
    config: &Config,
    own_url: &str,
) -> anyhow::Result<(
    meridian_server::oauth::Provider,
    std::sync::Arc<meridian_services::notebooks::Hub>,
)> {
    use meridian_services::notebooks::{Hub, HubConfig, secret_file};
    let n = &config.notebooks;
    let dir = config.notebooks_dir();
    let secret = match &n.client_secret {
        Some(s) => s.clone(),
        None => secret_file(&dir.join("client-secret"))?,
    };
    let hub_url = n.url.trim_end_matches('/').to_string();
    let provider = meridian_server::oauth::Provider::new(vec![meridian_server::oauth::Client {
        id: "jupyterhub".into(),
        secret: secret.clone(),
        redirect_uris: vec![format!("{hub_url}/hub/oauth_callback")],
    }]);
    let kernels = n
        .kernels
        .iter()
        .filter(|k| {
            let there = k.exists();
            if !there {
                tracing::warn!(python = %k.display(), "notebook kernel not found; not offered");
            }
            there
        })
        .cloned()
        .collect();
    let examples = n.examples.clone().or_else(|| {
        let installed = n.jupyterhub.parent()?.parent()?.parent()?.join("examples");
        installed.is_dir().then_some(installed)
    });
    let own = own_url.trim_end_matches('/').to_string();
    let hub = Hub::new(HubConfig {
        command: n.jupyterhub.clone(),
        proxy_command: n.proxy.clone(),
        dir,
        public_url: hub_url,
        meridian_public_url: own.clone(),
        meridian_internal_url: n.meridian_url.clone().unwrap_or(own),
        client_id: "jupyterhub".into(),
        client_secret: secret,
        idle_timeout_s: n.idle_timeout_s,
        start_timeout_s: n.start_timeout_s,
        mem_limit_mib: n.mem_limit_mib,
        cpu_time_limit_s: n.cpu_time_limit_s,
        kernels,
        spawner: n.spawner.clone(),
        examples,
        extra_config: n.extra_config.clone(),
    });
    Ok((provider, std::sync::Arc::new(hub)))
}

/// Resolves at the first Ctrl-C or SIGTERM. The signal is caught on `ctrlc`'s own thread
/// rather than by tokio's signal driver, which only runs when a runtime worker parks and so
/// would not see it while every worker is inside a long CPU-bound poll.
fn interrupted() -> impl std::future::Future<Output = ()> {
    static SIGNALLED: std::sync::OnceLock<Option<tokio::sync::watch::Receiver<bool>>> =
        std::sync::OnceLock::new();
    let rx = SIGNALLED.get_or_init(|| {
        let (tx, rx) = tokio::sync::watch::channel(false);
        match ctrlc::set_handler(move || {
            let _ = tx.send(true);
        }) {
            Ok(()) => Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot catch Ctrl-C and SIGTERM");
                None
            }
        }
    });
    let rx = rx.clone();
    async move {
        if let Some(mut rx) = rx
            && rx.wait_for(|&fired| fired).await.is_ok()
        {
            return;
        }
        std::future::pending().await
    }
}

fn datafusion_display(plan: &std::sync::Arc<dyn meridian_engine::ExecutionPlan>) -> String {
    meridian_engine::display_plan(plan)
}

fn datafusion_execute(
    plan: std::sync::Arc<dyn meridian_engine::ExecutionPlan>,
    engine: &meridian_engine::Engine,
) -> anyhow::Result<meridian_engine::RecordBatchStream> {
    Ok(meridian_engine::execute(plan, engine)?)
}

fn bench(config: &Config, cmd: BenchCommand) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    let (catalog, radius, queries, warmup, seed) = match cmd {
        BenchCommand::Cone {
            catalog,
            radius,
            queries,
            warmup,
            seed,
        } => (catalog, radius, queries, warmup, seed),
        BenchCommand::Query {
            queries,
            repeat,
            warmup,
            csv_dir,
        } => return bench_queries(config, queries, repeat, warmup, csv_dir.as_deref()),
        BenchCommand::Xmatch {
            left,
            right,
            radius,
            all,
            repeat,
            warmup,
        } => return bench_xmatch(config, left, right, &radius, all, repeat, warmup),
        BenchCommand::Spectra {
            dataset,
            ids,
            include,
            repeats,
            stack_grid,
            seed,
        } => {
            let report = commands::spectra::bench(
                &config.spectra_dir(),
                &dataset,
                &ids,
                &include,
                repeats,
                &stack_grid,
                seed,
            )?;
            out!("{report}")?;
            return Ok(());
        }
    };
    let radius_deg = meridian_sky::parse_angle_deg(&radius).context("--radius")?;
    let (engine, rt) = open_engine(config)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut times_ms = Vec::with_capacity(queries);
    let mut rows = 0usize;
    for i in 0..warmup + queries {
        let ra = rng.random_range(0.0..360.0);
        let dec = rng.random_range(-1.0f64..1.0).asin().to_degrees();
        let q = format!(
            "SELECT * FROM {catalog} WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), \
             CIRCLE('ICRS', {ra}, {dec}, {radius_deg}))"
        );
        let start = Instant::now();
        let batches = adql_batches(&engine, &rt, &q)?;
        let elapsed = start.elapsed().as_secs_f64() * 1e3;
        if i >= warmup {
            times_ms.push(elapsed);
            rows += batches.iter().map(|b| b.num_rows()).sum::<usize>();
        }
    }
    times_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| times_ms[((times_ms.len() - 1) as f64 * p).round() as usize];
    out!(
        "{}",
        serde_json::json!({
            "catalog": catalog,
            "radius_deg": radius_deg,
            "queries": queries,
            "p50_ms": pct(0.5),
            "p99_ms": pct(0.99),
            "mean_rows": rows as f64 / queries.max(1) as f64,
        })
    )?;
    Ok(())
}

/// Prints the cells at `order` of a region's coverage, one per line.
fn write_cells(region: &Region, order: u8, out: &mut dyn Write) -> anyhow::Result<()> {
    let shift = 2 * (29 - order as u32);
    for r in region.hpx29_ranges(order)? {
        for cell in (r.start >> shift)..(r.end >> shift) {
            writeln!(out, "{cell}")?;
        }
    }
    Ok(())
}

/// Survey images the demo renders.
const DEMO_IMAGES: u64 = 120;
/// Synthetic spectra the demo makes of its objects.
const DEMO_SPECTRA: u64 = 2000;

fn demo(config: &Config, objects: u64, quiet: bool) -> anyhow::Result<()> {
    if objects == 0 {
        bail!("--objects must be positive");
    }
    let src = config.data_dir.join("demo-input");
    let generated = generate(
        config,
        &GenerateArgs {
            out: src.clone(),
            objects,
            seed: 42,
            format: OutFormat::Parquet,
            profile: ProfileArg::Full,
            source_epochs: 10,
            forced_epochs: 0,
            chunk_objects: 1_000_000,
            position_jitter_mas: 0.0,
            footprint: None,
            images: 0,
            image_size: 256,
            spectra: DEMO_SPECTRA,
            spectra_dataset: "DEMO-DR1".into(),
            alerts: Default::default(),
        },
        quiet,
    )?;
    // Survey images of the same objects, kept in place and registered as collection
    // "demo": SIA, DataLink, SODA cutouts and previews have something to serve.
    let images_dir = config.data_dir.join("demo-images");
    let spec = meridian_synth::SurveySpec {
        objects,
        seed: 42,
        ..Default::default()
    };
    commands::survey_images::generate(
        &images_dir,
        &meridian_synth::objects(&spec),
        DEMO_IMAGES,
        256,
        42,
        quiet,
    )?;
    let files = meridian_images::collection::files(std::slice::from_ref(&images_dir), false)?;
    meridian_images::collection::add(
        &config.data_dir.join("images"),
        "demo",
        Some(&images_dir),
        &files,
        false,
        |_| {},
    )?;
    let store = Store::open(config.catalog_dir())?;
    for (table, files, _) in &generated.tables {
        let args = IngestArgs {
            name: format!("demo_{table}"),
            files: files.clone(),
            ra: None,
            dec: None,
            schema: None,
            skip_bad_rows: false,
            partition_rows: Some(10_000),
            min_order: None,
            max_order: None,
            row_group_rows: None,
            page_rows: None,
            margin_arcsec: None,
            threads: None,
            title: Some(format!("Meridian demo survey: {table} table")),
        };
        ingest(&store, config, &args, quiet)?;
    }
    let _ = std::fs::remove_dir_all(&src);
    // A density map of the objects, which the portal's sky view shows (its own HiPS:
    // nothing is fetched from elsewhere).
    let density = config.data_dir.join("hips").join("demo_object-density");
    let _ = std::fs::remove_dir_all(&density);
    let report = meridian_hips::density::build(
        &store.catalog("demo_object")?,
        &density,
        &meridian_hips::density::DensityOptions {
            name: "demo_object-density".into(),
            order: 3,
            tile_width: 256,
            aggregate: meridian_hips::density::Aggregate::parse("count", None)?,
        },
        &|_, _| {},
    )?;
    eprintln!(
        "sky map: density of demo_object, {} tiles, at {}",
        report.tiles,
        density.display()
    );
    eprintln!(
        "\nsample query: objects within 30 arcmin of the Galactic centre (RA 266.405, Dec -28.936)"
    );
    let mut buf = Vec::new();
    let rows = cone(
        &store,
        "demo_object",
        266.405,
        -28.936,
        1800.0,
        true,
        &mut buf,
    )?;
    let text = String::from_utf8_lossy(&buf);
    for line in text.lines().take(6) {
        out!("{line}")?;
    }
    if rows > 5 {
        out!("... ({rows} rows)")?;
    }
    eprintln!(
        "\ncatalogs are in {}; try `meridian info demo_object`",
        config.catalog_dir().display()
    );
    Ok(())
}

/// Runs `run` `warmup` times unmeasured, then `repeat` times (at least once) timed: the
/// seconds of the timed runs and the last run's result. Each run's result is dropped
/// before the next starts, untimed: a cross-match of 10^8 rows holds gigabytes of pairs,
/// and two of them at once would not fit where one does.
fn timed_runs<T>(
    warmup: usize,
    repeat: usize,
    mut run: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<(Vec<f64>, T)> {
    for _ in 0..warmup {
        run()?;
    }
    let mut seconds = Vec::with_capacity(repeat.max(1));
    let mut last = None;
    for _ in 0..repeat.max(1) {
        drop(last.take());
        let start = Instant::now();
        last = Some(run()?);
        seconds.push(start.elapsed().as_secs_f64());
    }
    Ok((seconds, last.expect("at least one timed run")))
}

/// `meridian bench xmatch`: see [`BenchCommand::Xmatch`].
fn bench_xmatch(
    config: &Config,
    left: String,
    right: String,
    radius: &str,
    all: bool,
    repeat: usize,
    warmup: usize,
) -> anyhow::Result<()> {
    let spec = xmatch_spec(left, right, radius, all, None, None)?;
    let (engine, rt) = open_engine(config)?;
    let (seconds, batches) = timed_runs(warmup, repeat, || {
        rt.block_on(async { anyhow::Ok(engine.xmatch(&spec).await?.collect().await?) })
    })?;
    let pairs: usize = batches.iter().map(|b| b.num_rows()).sum();
    out!(
        "{}",
        serde_json::json!({ "pairs": pairs, "seconds": seconds })
    )?;
    Ok(())
}

/// `meridian bench query`: see [`BenchCommand::Query`].
fn bench_queries(
    config: &Config,
    queries: Vec<String>,
    repeat: usize,
    warmup: usize,
    csv_dir: Option<&Path>,
) -> anyhow::Result<()> {
    let queries: Vec<String> = if queries == ["-"] {
        use std::io::BufRead;
        std::io::stdin()
            .lock()
            .lines()
            .filter(|l| l.as_ref().map_or(true, |l| !l.trim().is_empty()))
            .collect::<Result<_, _>>()
            .context("reading queries from standard input")?
    } else {
        queries
    };
    if let Some(dir) = csv_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (engine, rt) = open_engine(config)?;
    for (n, q) in queries.iter().enumerate() {
        let (seconds, last) = timed_runs(warmup, repeat, || {
            adql_batches(&engine, &rt, q).with_context(|| format!("query: {q}"))
        })?;
        let rows: usize = last.iter().map(|b| b.num_rows()).sum();
        if let Some(dir) = csv_dir {
            let path = dir.join(format!("query-{n}.csv"));
            let file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(std::io::BufWriter::new(file));
            for b in &last {
                w.write(b)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        out!(
            "{}",
            serde_json::json!({ "query": n, "rows": rows, "seconds": seconds })
        )?;
    }
    Ok(())
}

/// The whole result of ADQL query `q`, in memory (the benchmarks' queries).
fn adql_batches(
    engine: &meridian_engine::Engine,
    rt: &tokio::runtime::Runtime,
    q: &str,
) -> anyhow::Result<Vec<arrow::array::RecordBatch>> {
    rt.block_on(async {
        anyhow::Ok(
            engine
                .query(q, meridian_engine::Lang::Adql)
                .await?
                .collect()
                .await?,
        )
    })
}
