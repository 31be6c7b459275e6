//! `meridian spectra`: add spectra files to datasets, list and inspect them, get one
//! spectrum as a file, stack the spectra an ADQL query selects; and the synthetic spectra
//! of `meridian generate --spectra`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Subcommand;
use meridian_spectra::store::{self, Access, Dataset, Library, NewDataset, Staged};
use meridian_spectra::{readers, sdm, synth};
use rayon::prelude::*;

#[derive(Subcommand)]
pub enum SpectraCommand {
    /// Add spectra files to dataset DATASET (a data release such as DESI-EDR; made if new):
    /// DESI coadd and spectra files, SDSS/BOSS spec-lite files, 1-D FITS spectra and SDM
    /// VOTables. Bad files are reported (file, HDU, reason) and skipped; the dataset
    /// changes only once everything is written.
    Add {
        /// Dataset (data release) name.
        dataset: String,
        /// Files and directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// A Redrock redshift catalogue (zcatalog, zpix, ztile) joined by TARGETID.
        #[arg(long)]
        zcatalog: Option<PathBuf>,
        /// Group of the release (default: the name up to its first '-').
        #[arg(long)]
        group: Option<String>,
        /// Readable only by --reader users and --reader-group groups (new datasets).
        #[arg(long)]
        private: bool,
        /// A user who may read a private dataset (repeatable).
        #[arg(long = "reader")]
        readers: Vec<String>,
        /// A group whose members may read a private dataset (repeatable).
        #[arg(long = "reader-group")]
        reader_groups: Vec<String>,
        /// Look into subdirectories too.
        #[arg(long)]
        recursive: bool,
        /// Don't show progress.
        #[arg(long)]
        quiet: bool,
    },
    /// The datasets, with their numbers of spectra.
    List,
    /// A dataset's manifest, fields and sky coverage.
    Info {
        /// Dataset name.
        dataset: String,
    },
    /// One spectrum (by sparcl_id, or by specid) as an SDM FITS or VOTable file.
    Get {
        /// sparcl_id (UUID) or specid.
        id: String,
        /// Dataset to look in (default: all).
        #[arg(long)]
        dataset: Option<String>,
        /// Output file (.fits or .xml/.vot); standard output (VOTable) when absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Stack the spectra an ADQL query selects (its result needs a sparcl_id column, or
    /// specid): resampled onto --grid conserving flux, optionally in the rest frame.
    Stack {
        /// ADQL query, e.g. "SELECT sparcl_id FROM spectra.desi_edr WHERE redshift < 0.3".
        query: String,
        /// Common grid start:stop:step in Å.
        #[arg(long, default_value = "3600:9800:1")]
        grid: String,
        /// mean, ivar (inverse-variance weighted mean) or median.
        #[arg(long, default_value = "ivar")]
        method: String,
        /// Shift each spectrum to its rest frame first.
        #[arg(long)]
        rest_frame: bool,
        /// Memory the stack may hold, MiB (medians keep every value).
        #[arg(long, default_value_t = 2048)]
        memory_mib: u64,
        /// Output file (.fits or .xml/.vot).
        #[arg(long)]
        out: PathBuf,
        /// Don't show progress.
        #[arg(long)]
        quiet: bool,
    },
    /// Remove a dataset.
    Remove {
        /// Dataset name.
        dataset: String,
    },
}

fn files_of(paths: &[PathBuf], recursive: bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            for e in entries {
                if e.is_dir() {
                    if recursive {
                        out.extend(files_of(&[e], true)?);
                    }
                } else if e.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy().to_ascii_lowercase();
                    [".fits", ".fit", ".fits.gz", ".fits.fz", ".xml", ".vot"]
                        .iter()
                        .any(|s| n.ends_with(s))
                }) {
                    out.push(e);
                }
            }
        } else if p.exists() {
            out.push(p.clone());
        } else {
            bail!("{}: no such file or directory", p.display());
        }
    }
    Ok(out)
}

fn catalog_progress(
    quiet: bool,
) -> impl Fn(&meridian_catalog::ingest::IngestProgress) + Sync + use<> {
    let pb = crate::bar(quiet, 0, "{msg} [{bar:30}] {pos}/{len}");
    move |p: &meridian_catalog::ingest::IngestProgress| {
        pb.set_message(format!("core table: {:?}", p.stage));
        pb.set_length(p.units.1);
        pb.set_position(p.units.0);
    }
}

/// Runs a `meridian spectra` command on the datasets under `root`.
pub fn run(
    root: &Path,
    cmd: SpectraCommand,
    open_engine: &dyn Fn() -> anyhow::Result<(meridian_engine::Engine, tokio::runtime::Runtime)>,
    open_accounts: &dyn Fn() -> anyhow::Result<meridian_services::accounts::Accounts>,
) -> anyhow::Result<()> {
    match cmd {
        SpectraCommand::Add {
            dataset,
            paths,
            zcatalog,
            group,
            private,
            readers: users,
            reader_groups,
            recursive,
            quiet,
        } => {
            let zcat = zcatalog
                .as_deref()
                .map(meridian_spectra::desi::read_zcatalog)
                .transpose()?;
            let files = files_of(&paths, recursive)?;
            if files.is_empty() {
                bail!("no spectra files found in the paths given");
            }
            let readers_named = !users.is_empty() || !reader_groups.is_empty();
            if readers_named && !private {
                bail!("--reader and --reader-group name who may read a --private dataset");
            }
            // Readers are bound to their accounts' ids: a user or group made later under
            // the same name is someone else.
            let (users, reader_groups) = if users.is_empty() && reader_groups.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                let accounts = open_accounts()?;
                let resolve = |names: Vec<String>, kind: &str| {
                    names
                        .into_iter()
                        .map(|name| {
                            let id = if kind == "user" {
                                accounts.user_id(&name)?
                            } else {
                                accounts.group_id(&name)?
                            };
                            match id {
                                Some(id) => Ok(store::Principal { name, id }),
                                None => bail!("no {kind} '{name}' in the account database"),
                            }
                        })
                        .collect::<anyhow::Result<Vec<_>>>()
                };
                (resolve(users, "user")?, resolve(reader_groups, "group")?)
            };
            let new = NewDataset {
                datasetgroup: group,
                access: Access {
                    public: !private,
                    groups: reader_groups,
                    users,
                },
                description: String::new(),
                replace: false,
            };
            let start = Instant::now();
            let mut staged = Staged::begin(root, &dataset, &new)?;
            let pb = crate::bar(
                quiet,
                files.len() as u64,
                "read [{bar:30}] {pos}/{len} files {per_sec} ETA {eta} {msg}",
            );
            let mut bad = Vec::new();
            let threads = rayon::current_num_threads().max(1);
            for chunk in files.chunks(2 * threads) {
                let read: Vec<_> = chunk
                    .par_iter()
                    .map(|f| (f, readers::read(f, zcat.as_ref())))
                    .collect();
                for (f, r) in read {
                    match r {
                        Ok(spectra) => {
                            for s in spectra {
                                match staged.push(s) {
                                    Ok(_) => {}
                                    // A spectrum that fails its checks is skipped; a failure
                                    // to write stops the add (nothing is published).
                                    Err(meridian_spectra::Error::Invalid(why)) => {
                                        bad.push(format!("{}: {why}", f.display()))
                                    }
                                    Err(e) => return Err(e.into()),
                                }
                            }
                        }
                        Err(e) => bad.push(e.to_string()),
                    }
                    pb.inc(1);
                    pb.set_message(format!("{} spectra", staged.added()));
                }
            }
            pb.finish_and_clear();
            for b in &bad {
                eprintln!("skipped: {b}");
            }
            let added = staged.added();
            let duplicates = staged.duplicates;
            if added == 0 && bad.is_empty() {
                eprintln!(
                    "{dataset}: nothing new ({duplicates} spectra already present); nothing \
                     changed"
                );
                return Ok(());
            }
            if added == 0 {
                bail!(
                    "no spectra added to {dataset} ({} files bad, {duplicates} spectra already \
                     present): nothing changed",
                    bad.len()
                );
            }
            staged.publish(&catalog_progress(quiet))?;
            eprintln!(
                "{dataset}: {added} spectra added from {} files in {:.1} s ({} bad, \
                 {duplicates} already present); table spectra.{}",
                files.len(),
                start.elapsed().as_secs_f64(),
                bad.len(),
                store::table_name(&dataset)
            );
        }
        SpectraCommand::List => {
            for name in store::list(root)? {
                let d = Dataset::open(root, &name)?;
                let m = d.manifest();
                println!(
                    "{name}\t{}\t{} spectra\t{}\tspectra.{}",
                    m.datasetgroup,
                    d.len(),
                    if m.access.public { "public" } else { "private" },
                    store::table_name(&name)
                );
            }
        }
        SpectraCommand::Info { dataset } => {
            let d = Dataset::open(root, &dataset)?;
            let m = d.manifest();
            println!("data release:  {}", m.data_release);
            println!("group:         {}", m.datasetgroup);
            println!("spectra:       {}", d.len());
            println!(
                "access:        {}",
                if m.access.public {
                    "public".to_string()
                } else {
                    format!(
                        "private (users: {:?}, groups: {:?})",
                        m.access.users.iter().map(|p| &p.name).collect::<Vec<_>>(),
                        m.access.groups.iter().map(|p| &p.name).collect::<Vec<_>>()
                    )
                }
            );
            println!("TAP table:     spectra.{}", store::table_name(&dataset));
            for p in &m.parts {
                println!(
                    "part {:>5}:    {} spectra, written {}",
                    p.id, p.rows, p.written
                );
            }
            println!("fields:");
            for f in store::FIELDS {
                println!(
                    "  {:<18} {:<9} {}{}",
                    f.name,
                    match f.storage {
                        store::Storage::Core => "core",
                        store::Storage::Aux => "aux",
                        store::Storage::Spectrum => "spectrum",
                    },
                    f.description,
                    if f.unit.is_empty() {
                        String::new()
                    } else {
                        format!(" [{}]", f.unit)
                    }
                );
            }
        }
        SpectraCommand::Get { id, dataset, out } => {
            let lib = Library::open(root)?;
            let sets: Vec<&std::sync::Arc<Dataset>> = lib
                .datasets()
                .iter()
                .filter(|d| dataset.as_deref().is_none_or(|n| n == d.name()))
                .collect();
            let found = sets.iter().find_map(|d| {
                d.row_of(&id)
                    .or_else(|| {
                        id.parse::<i64>()
                            .ok()
                            .and_then(|s| d.rows_of_specid(s).first().copied())
                    })
                    .map(|r| (*d, r))
            });
            let Some((d, r)) = found else {
                bail!("no spectrum '{id}' (give a sparcl_id or a specid)");
            };
            let a = d.arrays(r);
            let meta = meridian_server::spectra::ssa::meta_of(
                d,
                r,
                meridian_server::spectra::ssa::publisher_did(
                    crate::IMAGE_AUTHORITY,
                    d.name(),
                    d.sparcl_id(r),
                ),
            );
            let cols = sdm::Columns::of(a);
            write_spectrum(out.as_deref(), &meta, &cols)?;
        }
        SpectraCommand::Stack {
            query,
            grid,
            method,
            rest_frame,
            memory_mib,
            out,
            quiet,
        } => {
            let spec = meridian_server::spectra::stack::spec_of(
                Some(&grid),
                Some(&method),
                Some(if rest_frame { "true" } else { "false" }),
                memory_mib << 20,
            )?;
            let (engine, rt) = open_engine()?;
            let start = Instant::now();
            let batches = rt.block_on(async {
                let df = engine.query(&query, meridian_engine::Lang::Adql).await?;
                anyhow::Ok(df.collect().await?)
            })?;
            rt.shutdown_background();
            let lib = Library::open(root)?;
            let meridian_server::spectra::stack::Selected { rows, unknown, .. } =
                meridian_server::spectra::stack::rows_of(lib.datasets(), &batches)?;
            if rows.is_empty() {
                bail!("the query selects no stored spectrum ({unknown} ids matched nothing)");
            }
            let pb = crate::bar(
                quiet,
                rows.len() as u64,
                "stack [{bar:30}] {human_pos}/{human_len} spectra {per_sec} ETA {eta}",
            );
            let s = meridian_spectra::stack::stack(&rows, &spec, &|n| {
                pb.set_position(n);
                true
            })?;
            pb.finish_and_clear();
            let meta = sdm::Meta::of_stack(&s, &spec, String::new());
            let cols = sdm::Columns::of_stack(&s);
            write_spectrum(Some(&out), &meta, &cols)?;
            eprintln!(
                "stacked {} spectra ({} without a redshift left out, {unknown} ids unknown) \
                 into {} in {:.2} s",
                s.used,
                s.no_redshift,
                out.display(),
                start.elapsed().as_secs_f64()
            );
        }
        SpectraCommand::Remove { dataset } => {
            store::remove(root, &dataset)?;
            eprintln!("removed {dataset}");
        }
    }
    Ok(())
}

fn write_spectrum(out: Option<&Path>, meta: &sdm::Meta, cols: &sdm::Columns) -> anyhow::Result<()> {
    match out {
        None => {
            use std::io::Write;
            std::io::stdout().write_all(sdm::votable(meta, cols).as_bytes())?;
        }
        Some(p) => {
            let name = p.to_string_lossy().to_ascii_lowercase();
            if name.ends_with(".xml") || name.ends_with(".vot") || name.ends_with(".votable") {
                let tmp = p.with_extension("partial");
                std::fs::write(&tmp, sdm::votable(meta, cols))
                    .with_context(|| format!("cannot write {}", tmp.display()))?;
                std::fs::rename(&tmp, p)?;
            } else {
                sdm::write_fits(p, meta, cols)?;
            }
        }
    }
    Ok(())
}

/// Makes `n` synthetic spectra of `objects` (evenly picked through the list) into dataset
/// `dataset` under `root`, reproducibly from `seed`.
pub fn generate(
    root: &Path,
    dataset: &str,
    objects: &[meridian_synth::SkyObject],
    n: u64,
    seed: u64,
    quiet: bool,
) -> anyhow::Result<()> {
    if objects.is_empty() {
        bail!("no objects to make spectra of");
    }
    let n = n.min(objects.len() as u64);
    let stride = objects.len() as f64 / n as f64;
    let targets: Vec<synth::Target> = (0..n)
        .map(|i| {
            let o = &objects[((i as f64 * stride) as usize).min(objects.len() - 1)];
            synth::Target {
                id: o.id,
                ra_deg: o.ra_deg,
                dec_deg: o.dec_deg,
                r_mag: o.mags[2],
                is_galaxy: o.is_galaxy,
            }
        })
        .collect();
    let grid = synth::SynthGrid::default();
    let start = Instant::now();
    let mut staged = Staged::begin(
        root,
        dataset,
        &NewDataset {
            description: format!("Synthetic spectra (seed {seed})"),
            replace: true,
            ..Default::default()
        },
    )?;
    let pb = crate::bar(
        quiet,
        n,
        "spectra [{bar:30}] {human_pos}/{human_len} {per_sec} ETA {eta}",
    );
    for chunk in targets.chunks(4096) {
        let spectra: Vec<_> = chunk
            .par_iter()
            .map(|t| synth::spectrum(t, &grid, seed))
            .collect();
        for s in spectra {
            staged.push(s)?;
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    let added = staged.added();
    staged.publish(&catalog_progress(quiet))?;
    eprintln!(
        "{dataset}: {added} synthetic spectra in {:.1} s (table spectra.{})",
        start.elapsed().as_secs_f64(),
        store::table_name(dataset)
    );
    Ok(())
}

/// Registers the public spectra datasets under `root` as tables `spectra.<name>` of
/// `engine` (the private ones are reached only through the spectra services, which check
/// the caller). Only their manifests and core catalogs are read.
pub fn register(engine: &mut meridian_engine::Engine, root: &Path) -> anyhow::Result<()> {
    for (name, dir) in store::public_catalogs(root)? {
        let catalog = meridian_catalog::Catalog::open(&dir)
            .with_context(|| format!("the core table of spectra dataset {name}"))?;
        engine.add_table(
            "spectra",
            &store::table_name(&name),
            std::sync::Arc::new(meridian_engine::hats_table::HatsTable::new(catalog)),
        )?;
    }
    Ok(())
}

/// `meridian bench spectra`: in-process retrieve and stack rates (see the command's help).
pub fn bench(
    root: &Path,
    dataset: &str,
    sizes: &[usize],
    include: &str,
    repeats: usize,
    stack_grid: &str,
    seed: u64,
) -> anyhow::Result<serde_json::Value> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    use std::sync::Arc;
    let lib = Library::open(root)?;
    let d = lib
        .dataset(dataset)
        .with_context(|| format!("no spectra dataset '{dataset}'"))?
        .clone();
    let include = meridian_server::spectra::sparcl::include_fields(include)?;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut retrieves = Vec::new();
    let sets = [&d];
    for &n in sizes {
        let mut rows: Vec<u32> = (0..d.len() as u32).collect();
        rows.shuffle(&mut rng);
        rows.truncate(n);
        let ids: Vec<String> = rows.iter().map(|&r| d.sparcl_id(r).to_string()).collect();
        let mut best = f64::INFINITY;
        let mut bytes = 0u64;
        for _ in 0..repeats.max(1) {
            let start = Instant::now();
            // What the retrieve handler does: look every id up, then pickle the records.
            let found: Vec<(Arc<Dataset>, u32)> = ids
                .iter()
                .filter_map(|id| lib.locate(&sets, id).map(|(d, r)| ((*d).clone(), r)))
                .collect();
            let mut total = 0u64;
            meridian_server::spectra::sparcl::encode_retrieve(
                "bench",
                &[],
                None,
                &found,
                &include,
                &mut |chunk| {
                    total += chunk.len() as u64;
                    true
                },
            )?;
            best = best.min(start.elapsed().as_secs_f64());
            bytes = total;
        }
        retrieves.push(serde_json::json!({
            "spectra": ids.len(),
            "seconds": best,
            "spectra_per_s": ids.len() as f64 / best,
            "pickle_bytes": bytes,
            "mb_per_s": bytes as f64 / best / 1e6,
        }));
    }
    let mut report = serde_json::json!({
        "dataset": dataset,
        "spectra_in_dataset": d.len(),
        "include": include,
        "threads": rayon::current_num_threads(),
        "retrieve": retrieves,
    });
    if stack_grid != "none" {
        let spec = meridian_server::spectra::stack::spec_of(
            Some(stack_grid),
            Some("ivar"),
            Some("false"),
            4 << 30,
        )?;
        let rows: Vec<(&Dataset, u32)> = (0..d.len() as u32).map(|r| (d.as_ref(), r)).collect();
        let start = Instant::now();
        let s = meridian_spectra::stack::stack(&rows, &spec, &|_| true)?;
        let seconds = start.elapsed().as_secs_f64();
        report["stack"] = serde_json::json!({
            "spectra": s.used,
            "grid": stack_grid,
            "pixels": s.wavelength_aa.len(),
            "seconds": seconds,
            "spectra_per_s": s.used as f64 / seconds,
        });
    }
    Ok(report)
}
