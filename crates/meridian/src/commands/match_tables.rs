//! `meridian xmatch refresh|status`, the refresh after `meridian ingest` and `register`,
//! and `meridian serve`'s background recomputes of the precomputed match tables
//! (`[xmatch]` in the configuration; `meridian_engine::match_tables` does the work).

use std::sync::Mutex;
use std::time::Duration;

use anyhow::bail;
use indicatif::ProgressBar;
use meridian_catalog::{Stage, Store};
use meridian_engine::match_tables::{self, Outcome, Pair, Refresh, Settings, Step};

use crate::config::Config;

/// `meridian xmatch` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Compute the missing and stale match tables with the configured reference catalogs
    /// (`[xmatch] references`).
    Refresh {
        /// Only the tables of this catalog (as the matched catalog or as the reference).
        #[arg(long)]
        catalog: Option<String>,
        /// Recompute the current tables too.
        #[arg(long)]
        force: bool,
    },
    /// List the match tables the configuration calls for (current, stale, missing, the last
    /// failure) and the match tables it no longer calls for.
    Status,
}

/// Runs a subcommand.
pub fn run(config: &Config, cmd: &Command, quiet: bool) -> anyhow::Result<()> {
    let store = Store::open(config.catalog_dir())?;
    let settings = settings(config, &store)?;
    if !settings.enabled() {
        bail!(
            "no reference catalogs are configured: set [xmatch] references in the configuration \
             (or MERIDIAN_XMATCH__REFERENCES='[\"gaia\"]')"
        );
    }
    match cmd {
        Command::Refresh { catalog, force } => {
            if let Some(c) = catalog {
                store.location(c)?;
            }
            let outcomes = refresh(config, &store, &settings, catalog.as_deref(), *force, quiet)?;
            let failed = outcomes
                .iter()
                .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
                .count();
            if failed > 0 {
                bail!(
                    "{failed} match table(s) could not be computed (the previous versions stay); \
                     see above and `meridian xmatch status`"
                );
            }
        }
        Command::Status => {
            let (entries, orphans) = match_tables::status(&store, &settings)?;
            for e in &entries {
                let failure = e
                    .failure
                    .as_ref()
                    .map(|f| format!("; the last attempt failed: {f}"))
                    .unwrap_or_default();
                out!("{}\t{}{failure}", e.pair.table, e.state)?;
            }
            for o in &orphans {
                out!("{}\tnot configured: {}", o.table, o.why)?;
            }
            let current = entries
                .iter()
                .filter(|e| e.state == match_tables::State::Current)
                .count();
            eprintln!(
                "{current} of {} match tables current; {} not configured",
                entries.len(),
                orphans.len()
            );
        }
    }
    Ok(())
}

/// The match table settings, checked against the store.
fn settings(config: &Config, store: &Store) -> anyhow::Result<Settings> {
    let settings = config.xmatch.settings()?;
    settings.check(store)?;
    Ok(settings)
}

/// Computes the missing and stale tables (of `only`, when given) with progress bars, and
/// prints what was done with each.
fn refresh(
    config: &Config,
    store: &Store,
    settings: &Settings,
    only: Option<&str>,
    force: bool,
    quiet: bool,
) -> anyhow::Result<Vec<(Pair, Outcome)>> {
    let (engine, rt) = crate::open_engine(config)?;
    let ingest = crate::ingest_options(config);
    let bars: Mutex<Option<(String, bool, ProgressBar)>> = Mutex::new(None);
    let progress = |pair: &Pair, step: Step<'_>| {
        let mut guard = bars.lock().expect("progress lock");
        let publishing = matches!(step, Step::Publishing(_));
        if guard
            .as_ref()
            .is_none_or(|(t, p, _)| *t != pair.table || *p != publishing)
        {
            if let Some((_, _, b)) = guard.take() {
                b.finish_and_clear();
            }
            let b = if publishing {
                crate::bar(
                    quiet,
                    1,
                    &format!(
                        "{}: publish [{{bar:30}}] {{pos}}/{{len}} partitions ETA {{eta}}",
                        pair.table
                    ),
                )
            } else {
                crate::bar(
                    quiet,
                    0,
                    &format!(
                        "{{spinner}} {}: {{human_pos}} matches ({{per_sec}}) {{elapsed}}",
                        pair.table
                    ),
                )
            };
            *guard = Some((pair.table.clone(), publishing, b));
        }
        let (_, _, b) = guard.as_ref().expect("set above");
        match step {
            Step::Matching(rows) => b.set_position(rows),
            Step::Publishing(p) if p.stage == Stage::Writing || p.stage == Stage::Margin => {
                b.set_length(p.units.1.max(1));
                b.set_position(p.units.0);
            }
            Step::Publishing(_) => {}
        }
    };
    let outcomes = Refresh {
        engine: &engine,
        runtime: rt.handle(),
        store,
        settings,
        ingest: &ingest,
        retry_failed: true,
    }
    .run(only, force, &progress)?;
    if let Some((_, _, b)) = bars.lock().expect("progress lock").take() {
        b.finish_and_clear();
    }
    rt.shutdown_background();
    for (pair, outcome) in &outcomes {
        match outcome {
            Outcome::Current => eprintln!("{}: current", pair.table),
            Outcome::Built { rows, seconds } => eprintln!(
                "{}: {rows} rows ({} with {}), {seconds:.1} s",
                pair.table, pair.catalog, pair.reference
            ),
            Outcome::Failed(why) => eprintln!(
                "{}: not computed, the previous version (if any) stays: {why}",
                pair.table
            ),
        }
    }
    Ok(outcomes)
}

/// After catalog `name` was ingested or registered: its match tables (as catalog or as
/// reference) are computed again. A failure is reported but does not fail the ingest,
/// which is complete.
pub fn after_change(config: &Config, name: &str, quiet: bool) -> anyhow::Result<()> {
    let store = Store::open(config.catalog_dir())?;
    let settings = config.xmatch.settings()?;
    if !settings.enabled() {
        return Ok(());
    }
    if let Err(e) = settings.check(&store) {
        eprintln!("match tables not refreshed: {e}");
        return Ok(());
    }
    let outcomes = refresh(config, &store, &settings, Some(name), false, quiet)?;
    if outcomes
        .iter()
        .any(|(_, o)| matches!(o, Outcome::Failed(_)))
    {
        eprintln!("some match tables of '{name}' were not computed: see `meridian xmatch status`");
    }
    Ok(())
}

/// `meridian serve`'s background recomputes: every `[xmatch] check_interval_s`, the stale
/// and missing tables are computed on a thread of their own at low CPU priority, with
/// `background_threads` worker threads, so that queries keep the cores they need.
pub fn spawn_background(config: &Config) -> anyhow::Result<()> {
    let x = &config.xmatch;
    if x.references.is_empty() || x.check_interval_s == 0 {
        return Ok(());
    }
    let store = Store::open(config.catalog_dir())?;
    let settings = settings(config, &store)?;
    let mut config = config.clone();
    let threads = x.background_threads;
    config.query.target_partitions = threads;
    config.ingest.threads = threads;
    let interval = Duration::from_secs(x.check_interval_s);
    std::thread::Builder::new()
        .name("meridian-xmatch".into())
        .spawn(move || {
            // Threads made from this one (the query runtime's, the ingest's) inherit its
            // priority.
            // SAFETY: setpriority on this thread's own id.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 10) } != 0 {
                tracing::warn!("cannot lower the priority of the match table thread");
            }
            loop {
                if let Err(e) = background_pass(&config, &store, &settings, threads) {
                    tracing::warn!(error = %e, "match table check failed");
                }
                std::thread::sleep(interval);
            }
        })?;
    tracing::info!(
        references = ?x.references,
        radius_arcsec = x.radius_arcsec,
        interval_s = x.check_interval_s,
        threads,
        "match tables kept current in the background"
    );
    Ok(())
}

fn background_pass(
    config: &Config,
    store: &Store,
    settings: &Settings,
    threads: usize,
) -> anyhow::Result<()> {
    let (entries, _) = match_tables::status(store, settings)?;
    if entries
        .iter()
        .all(|e| e.state == match_tables::State::Current || e.failure.is_some())
    {
        return Ok(());
    }
    // An engine of its own, opened now so that it serves the catalogs there are now.
    let engine = meridian_engine::Engine::open(store, &crate::engine_config(config))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("meridian-xmatch-worker")
        .thread_stack_size(meridian_engine::guard::EXECUTION_STACK_BYTES)
        .enable_all()
        .build()?;
    let ingest = crate::ingest_options(config);
    let outcomes = Refresh {
        engine: &engine,
        runtime: rt.handle(),
        store,
        settings,
        ingest: &ingest,
        retry_failed: false,
    }
    .run(None, false, &|_, _| {})?;
    rt.shutdown_background();
    for (pair, outcome) in outcomes {
        if let Outcome::Built { rows, seconds } = outcome {
            tracing::info!(table = %pair.table, rows, seconds, "match table recomputed in the background");
        }
    }
    Ok(())
}
