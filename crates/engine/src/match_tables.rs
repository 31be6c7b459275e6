//! Precomputed cross-match tables, kept current.
//!
//! For every catalog of a store and every configured reference catalog, the nearest (or
//! every) partner within a radius is published as a catalog of its own, named
//! `x<radius>__<catalog>__<reference>` (the radius in arcseconds, `p` for its decimal
//! point: `x1p5__gaia__tycho2`), with the columns of [`Engine::xmatch`]: `id1`, `ra1`,
//! `dec1`, `id2`, `ra2`, `dec2`, `distance_arcsec`. Users join through it instead of
//! cross-matching again, as with Data Lab's `x1p5` tables.
//!
//! The table's properties record both inputs, the version of each
//! ([`Store::version_id`]), the radius and the mode. A new version of either input makes
//! the table stale and [`Refresh::run`] recomputes exactly the stale and missing tables. A
//! recompute is published as an ingest is (a new version swapped in whole), so a reader sees
//! the old table until the new one is complete; a failed recompute leaves the old table in
//! place and a failure record (`.xmatch/<table>.failed` in the store) that [`status`]
//! reports until a recompute succeeds or an input changes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use meridian_catalog::ingest::IngestProgress;
use meridian_catalog::properties::Properties;
use meridian_catalog::{IngestOptions, Store};
use meridian_formats::ColumnMeta;

use crate::{Engine, Error, Result, XMatchMode, XMatchSpec, id_column};

/// Property naming the matched catalog (the rows of `id1`).
pub const CATALOG: &str = "meridian_xmatch_catalog";
/// Property naming the matched catalog's identifier column (`id1`'s source).
pub const CATALOG_ID: &str = "meridian_xmatch_catalog_id";
/// Property holding the matched catalog's version when the table was computed.
pub const CATALOG_VERSION: &str = "meridian_xmatch_catalog_version";
/// Property naming the reference catalog (the rows of `id2`).
pub const REFERENCE: &str = "meridian_xmatch_reference";
/// Property naming the reference's identifier column.
pub const REFERENCE_ID: &str = "meridian_xmatch_reference_id";
/// Property holding the reference's version when the table was computed.
pub const REFERENCE_VERSION: &str = "meridian_xmatch_reference_version";
/// Property holding the match radius, arcseconds.
pub const RADIUS: &str = "meridian_xmatch_radius_arcsec";
/// Property holding the mode: `nearest` or `all`.
pub const MODE: &str = "meridian_xmatch_mode";

/// The largest radius a match table may use, arcseconds.
pub const MAX_RADIUS_ARCSEC: f64 = 3600.0;

/// Which match tables a store keeps.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The reference catalogs every other catalog is matched with.
    pub references: Vec<String>,
    /// Match radius, arcseconds.
    pub radius_arcsec: f64,
    /// Nearest partner only, or every pair within the radius.
    pub mode: XMatchMode,
    /// Catalogs that get no match tables.
    pub exclude: Vec<String>,
}

impl Settings {
    /// Whether any table is to be kept.
    pub fn enabled(&self) -> bool {
        !self.references.is_empty()
    }

    /// Checks what needs no store: the radius in range.
    pub fn validate(&self) -> Result<()> {
        if !(self.radius_arcsec > 0.0 && self.radius_arcsec <= MAX_RADIUS_ARCSEC) {
            return Err(Error::Invalid(format!(
                "[xmatch] radius_arcsec of {} is out of range: use more than 0 and at most {MAX_RADIUS_ARCSEC} arcsec",
                self.radius_arcsec
            )));
        }
        Ok(())
    }

    /// Checks the settings against `store`: [`Settings::validate`], and each reference an
    /// existing catalog with numeric positions.
    pub fn check(&self, store: &Store) -> Result<()> {
        self.validate()?;
        for r in &self.references {
            let c = store.catalog(r).map_err(|e| {
                Error::Invalid(format!(
                    "[xmatch] reference catalog '{r}' cannot be used: {e}"
                ))
            })?;
            let schema = c.schema();
            for col in [c.ra_column(), c.dec_column()] {
                let numeric = schema
                    .field_with_name(col)
                    .is_ok_and(|f| f.data_type().is_numeric());
                if !numeric {
                    return Err(Error::Invalid(format!(
                        "[xmatch] reference catalog '{r}' has no positions: its position column '{col}' is missing or not numeric"
                    )));
                }
            }
        }
        Ok(())
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            XMatchMode::Nearest => "nearest",
            XMatchMode::All => "all",
        }
    }
}

/// The name of the match table of `catalog` with `reference` at `radius_arcsec`:
/// `x1p5__gaia__tycho2` for 1.5".
pub fn table_name(catalog: &str, reference: &str, radius_arcsec: f64) -> String {
    format!(
        "x{}__{catalog}__{reference}",
        format!("{radius_arcsec}").replace('.', "p")
    )
}

/// Whether a catalog with these properties is a match table.
pub fn is_match_table(properties: &Properties) -> bool {
    properties.get(CATALOG).is_some()
}

/// One match table the settings call for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    /// The matched catalog.
    pub catalog: String,
    /// The reference.
    pub reference: String,
    /// The table's name.
    pub table: String,
}

/// Every table the settings call for: each catalog of the store (not a match table, not
/// excluded) with each reference other than itself.
pub fn pairs(store: &Store, settings: &Settings) -> Result<Vec<Pair>> {
    let mut out = Vec::new();
    if !settings.enabled() {
        return Ok(out);
    }
    for name in store.list()? {
        if settings.exclude.contains(&name) {
            continue;
        }
        // A catalog that does not open still gets its pairs: computing them fails, and the
        // failure is reported where the table's state is.
        if store
            .catalog(&name)
            .is_ok_and(|c| is_match_table(c.properties()))
        {
            continue;
        }
        let mut seen = Vec::new();
        for r in &settings.references {
            if *r == name || seen.contains(&r) {
                continue;
            }
            seen.push(r);
            out.push(Pair {
                catalog: name.clone(),
                reference: r.clone(),
                table: table_name(&name, r, settings.radius_arcsec),
            });
        }
    }
    Ok(out)
}

/// The state of one match table.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Computed from the current versions of both inputs with the current settings.
    Current,
    /// Never computed.
    Missing,
    /// Computed, but from an older input or other settings (why).
    Stale(String),
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Current => write!(f, "current"),
            State::Missing => write!(f, "missing"),
            State::Stale(why) => write!(f, "stale: {why}"),
        }
    }
}

/// A table's state and, when the last attempt to compute it from the current inputs
/// failed, why.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The table.
    pub pair: Pair,
    /// Its state.
    pub state: State,
    /// The last failure at the current inputs' versions.
    pub failure: Option<String>,
}

/// A match table that the settings no longer call for, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Orphan {
    /// The table's name.
    pub table: String,
    /// Why no setting calls for it.
    pub why: String,
}

/// The state of every table the settings call for, and the match tables they do not.
pub fn status(store: &Store, settings: &Settings) -> Result<(Vec<Entry>, Vec<Orphan>)> {
    let wanted = pairs(store, settings)?;
    let mut entries = Vec::new();
    for pair in &wanted {
        let (state, versions) = match versions(store, pair) {
            Ok(v) => (state_of(store, settings, pair, &v), Some(v)),
            Err(e) => (State::Stale(format!("cannot read the inputs: {e}")), None),
        };
        let failure = if state == State::Current {
            None
        } else {
            read_failure(store, &pair.table)
                .filter(|(v, _)| versions.as_ref().is_none_or(|c| c == v))
                .map(|(_, why)| why)
        };
        entries.push(Entry {
            pair: pair.clone(),
            state,
            failure,
        });
    }
    let mut orphans = Vec::new();
    let names = store.list()?;
    for name in &names {
        let Ok(c) = store.catalog(name) else {
            continue;
        };
        let p = c.properties();
        if !is_match_table(p) || wanted.iter().any(|w| w.table == *name) {
            continue;
        }
        let catalog = p.get(CATALOG).unwrap_or_default();
        let reference = p.get(REFERENCE).unwrap_or_default();
        let why = if !names.iter().any(|n| n == catalog) {
            format!("its catalog '{catalog}' no longer exists")
        } else if !names.iter().any(|n| n == reference) {
            format!("its reference '{reference}' no longer exists")
        } else if !settings.references.iter().any(|r| r == reference) {
            format!("'{reference}' is not a configured reference")
        } else if settings.exclude.iter().any(|x| x == catalog) {
            format!("'{catalog}' is excluded")
        } else {
            format!(
                "made at another radius ({} arcsec) than the configured one",
                p.get(RADIUS).unwrap_or("?")
            )
        };
        orphans.push(Orphan {
            table: name.clone(),
            why,
        });
    }
    Ok((entries, orphans))
}

/// The versions of a pair's inputs now.
fn versions(store: &Store, pair: &Pair) -> Result<(String, String)> {
    Ok((
        store.version_id(&pair.catalog)?,
        store.version_id(&pair.reference)?,
    ))
}

fn state_of(store: &Store, settings: &Settings, pair: &Pair, now: &(String, String)) -> State {
    let table = match store.catalog(&pair.table) {
        Ok(t) => t,
        Err(meridian_catalog::Error::NotFound { .. }) => return State::Missing,
        Err(e) => return State::Stale(format!("the table does not open: {e}")),
    };
    let p = table.properties();
    let radius = p.get(RADIUS).and_then(|r| r.parse::<f64>().ok());
    if p.get(CATALOG) != Some(pair.catalog.as_str())
        || p.get(REFERENCE) != Some(pair.reference.as_str())
    {
        State::Stale("the table records other inputs".into())
    } else if p.get(CATALOG_VERSION) != Some(now.0.as_str()) {
        State::Stale(format!("catalog '{}' has a new version", pair.catalog))
    } else if p.get(REFERENCE_VERSION) != Some(now.1.as_str()) {
        State::Stale(format!("reference '{}' has a new version", pair.reference))
    } else if radius != Some(settings.radius_arcsec) {
        State::Stale("computed at another radius".into())
    } else if p.get(MODE) != Some(settings.mode_name()) {
        State::Stale(format!(
            "computed in mode {}, configured {}",
            p.get(MODE).unwrap_or("?"),
            settings.mode_name()
        ))
    } else {
        State::Current
    }
}

const FAILURES: &str = ".xmatch";

fn failure_path(store: &Store, table: &str) -> PathBuf {
    store.root().join(FAILURES).join(format!("{table}.failed"))
}

/// The last failure of `table`: the inputs' versions it was tried at, and why.
fn read_failure(store: &Store, table: &str) -> Option<((String, String), String)> {
    let p = Properties::read(&failure_path(store, table)).ok()?;
    Some((
        (
            p.get(CATALOG_VERSION)?.to_string(),
            p.get(REFERENCE_VERSION)?.to_string(),
        ),
        format!(
            "{} (at {})",
            p.get("reason").unwrap_or("unknown"),
            p.get("at").unwrap_or("?")
        ),
    ))
}

fn write_failure(store: &Store, table: &str, versions: &(String, String), why: &str) {
    let path = failure_path(store, table);
    let mut p = Properties::default();
    p.set(CATALOG_VERSION, &versions.0);
    p.set(REFERENCE_VERSION, &versions.1);
    p.set("reason", why.replace(['\n', '\r'], " "));
    p.set(
        "at",
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
    );
    let tmp = path.with_extension(format!("failed.{}", std::process::id()));
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::write(&tmp, p.to_text("a failed match table computation")))
        .and_then(|_| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(table, error = %e, "cannot record the failure of a match table");
    }
}

/// What a refresh did with one table.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Already current: left alone.
    Current,
    /// Computed and published.
    Built {
        /// Rows in the table.
        rows: u64,
        /// Wall time, seconds.
        seconds: f64,
    },
    /// Failed (the previous table, if any, stays).
    Failed(String),
}

/// Progress of one table's computation.
#[derive(Debug, Clone)]
pub enum Step<'a> {
    /// Matching: rows of the table so far.
    Matching(u64),
    /// Publishing the rows as a catalog.
    Publishing(&'a IngestProgress),
}

/// How the tables are computed: [`Refresh::run`].
pub struct Refresh<'a> {
    /// The engine the matches run on; it must serve the current catalogs (open it after
    /// they were ingested).
    pub engine: &'a Engine,
    /// Where the engine's futures are driven (the caller's thread blocks on them).
    pub runtime: &'a tokio::runtime::Handle,
    /// The store the tables are published in.
    pub store: &'a Store,
    /// Which tables.
    pub settings: &'a Settings,
    /// How the tables are written (partition size, threads, memory); positions, title and
    /// properties are set here.
    pub ingest: &'a IngestOptions,
    /// Whether a table whose last computation from the current inputs failed is tried
    /// again (a background pass leaves it until an input changes).
    pub retry_failed: bool,
}

impl Refresh<'_> {
    /// Computes the missing and stale tables (all of them with `force`), only those with
    /// `only` as catalog or reference when given. One table's failure does not stop the
    /// others: each outcome is returned.
    pub fn run(
        &self,
        only: Option<&str>,
        force: bool,
        progress: &(dyn Fn(&Pair, Step<'_>) + Sync),
    ) -> Result<Vec<(Pair, Outcome)>> {
        let mut out = Vec::new();
        for pair in pairs(self.store, self.settings)? {
            if only.is_some_and(|n| n != pair.catalog && n != pair.reference) {
                continue;
            }
            let now = match versions(self.store, &pair) {
                Ok(v) => v,
                Err(e) => {
                    out.push((pair, Outcome::Failed(e.to_string())));
                    continue;
                }
            };
            if !force && state_of(self.store, self.settings, &pair, &now) == State::Current {
                out.push((pair, Outcome::Current));
                continue;
            }
            if !self.retry_failed
                && let Some((tried, why)) = read_failure(self.store, &pair.table)
                && tried == now
            {
                out.push((pair, Outcome::Failed(why)));
                continue;
            }
            let start = Instant::now();
            let outcome = match self.build(&pair, &now, &|s| progress(&pair, s)) {
                Ok(rows) => {
                    let _ = std::fs::remove_file(failure_path(self.store, &pair.table));
                    let seconds = start.elapsed().as_secs_f64();
                    tracing::info!(table = %pair.table, rows, seconds, "match table published");
                    Outcome::Built { rows, seconds }
                }
                Err(e) => {
                    let why = e.to_string();
                    tracing::warn!(table = %pair.table, error = %why, "match table not computed: the previous one, if any, stays");
                    write_failure(self.store, &pair.table, &now, &why);
                    Outcome::Failed(why)
                }
            };
            out.push((pair, outcome));
        }
        Ok(out)
    }

    /// Computes one table from the inputs at `versions` and publishes it.
    fn build(
        &self,
        pair: &Pair,
        versions: &(String, String),
        progress: &(dyn Fn(Step<'_>) + Sync),
    ) -> Result<u64> {
        let id_of = |name: &str| -> Result<String> {
            let t = self.engine.table(name).ok_or_else(|| {
                Error::Invalid(format!(
                    "catalog '{name}' is not open in this process (it appeared after the engine was opened)"
                ))
            })?;
            id_column(&datafusion::datasource::TableProvider::schema(t.as_ref()))
                .ok_or_else(|| Error::Invalid(format!("catalog '{name}' has no identifier column")))
        };
        // The engine serves the version recorded, unless that one cannot be served (it does
        // not open, or its columns changed): then the table would be made from another.
        for (name, version) in [(&pair.catalog, &versions.0), (&pair.reference, &versions.1)] {
            let served = self.engine.table(name).and_then(|t| t.version());
            if let Some(served) = served
                && served
                    .file_name()
                    .is_some_and(|f| f.to_string_lossy() != **version)
            {
                return Err(Error::Invalid(format!(
                    "the current version of catalog '{name}' cannot be served ({version}: it does \
                     not open, or its columns changed; see the log): re-ingest it, or restart \
                     after a change of columns"
                )));
            }
        }
        let spec = XMatchSpec {
            left: pair.catalog.clone(),
            right: pair.reference.clone(),
            radius_deg: self.settings.radius_arcsec / 3600.0,
            left_id: Some(id_of(&pair.catalog)?),
            right_id: Some(id_of(&pair.reference)?),
            mode: self.settings.mode,
        };
        // The match's batches go straight to the ingest: computed on the engine's runtime,
        // handed over through a short queue, so matching and partitioning overlap.
        let (schema, mut batches) = self.runtime.block_on(match_batches(
            self.engine,
            &spec,
            &describe(pair, &spec, self.settings),
        ))?;
        let mut matched = 0u64;
        let mut counted = std::iter::from_fn(|| {
            let batch = batches.blocking_recv()?;
            if let Ok(b) = &batch {
                matched += b.num_rows() as u64;
                progress(Step::Matching(matched));
            }
            Some(batch.map_err(|e| meridian_catalog::Error::Invalid(e.to_string())))
        });
        let s = self.settings;
        let mut opts = self.ingest.clone();
        opts.ra_column = Some("ra1".into());
        // A query that opened the previous table reads it to its end.
        opts.keep_superseded = true;
        opts.dec_column = Some("dec1".into());
        opts.title = Some(format!(
            "Cross-match of {} with {}: {} within {} arcsec",
            pair.catalog,
            pair.reference,
            match s.mode {
                XMatchMode::Nearest => "nearest partner",
                XMatchMode::All => "every pair",
            },
            s.radius_arcsec
        ));
        opts.properties = vec![
            (CATALOG.into(), pair.catalog.clone()),
            (CATALOG_ID.into(), spec.left_id.clone().unwrap_or_default()),
            (CATALOG_VERSION.into(), versions.0.clone()),
            (REFERENCE.into(), pair.reference.clone()),
            (
                REFERENCE_ID.into(),
                spec.right_id.clone().unwrap_or_default(),
            ),
            (REFERENCE_VERSION.into(), versions.1.clone()),
            (RADIUS.into(), s.radius_arcsec.to_string()),
            (MODE.into(), s.mode_name().into()),
        ];
        let label = format!(
            "the cross-match of {} with {}",
            pair.catalog, pair.reference
        );
        let report = meridian_catalog::ingest::ingest_batches(
            self.store,
            &pair.table,
            schema,
            &mut counted,
            &label,
            &opts,
            &|p| progress(Step::Publishing(p)),
        )?;
        Ok(report.rows)
    }
}

/// Units, UCDs and descriptions of the table's columns, in their order.
fn describe(pair: &Pair, spec: &XMatchSpec, s: &Settings) -> [ColumnMeta; 7] {
    let m = |unit: Option<&str>, ucd: &str, description: String| ColumnMeta {
        unit: unit.map(str::to_string),
        ucd: Some(ucd.to_string()),
        utype: None,
        description: Some(description),
    };
    let (c, r) = (&pair.catalog, &pair.reference);
    let (cid, rid) = (
        spec.left_id.as_deref().unwrap_or_default(),
        spec.right_id.as_deref().unwrap_or_default(),
    );
    let partner = match s.mode {
        XMatchMode::Nearest => "nearest",
        XMatchMode::All => "a",
    };
    [
        m(
            None,
            "meta.id;meta.main",
            format!("Identifier of the {c} source ({c}.{cid})"),
        ),
        m(
            Some("deg"),
            "pos.eq.ra;meta.main",
            format!("Right ascension of the {c} source"),
        ),
        m(
            Some("deg"),
            "pos.eq.dec;meta.main",
            format!("Declination of the {c} source"),
        ),
        m(
            None,
            "meta.id.cross",
            format!(
                "Identifier of the {partner} {r} source within {} arcsec ({r}.{rid})",
                s.radius_arcsec
            ),
        ),
        m(
            Some("deg"),
            "pos.eq.ra",
            format!("Right ascension of the {r} source"),
        ),
        m(
            Some("deg"),
            "pos.eq.dec",
            format!("Declination of the {r} source"),
        ),
        m(
            Some("arcsec"),
            "pos.angDistance",
            "Angular distance between the two sources".into(),
        ),
    ]
}

/// Starts the cross-match on the current runtime: its schema, with `meta` on its columns,
/// and its batches (under that schema) as they come.
async fn match_batches(
    engine: &Engine,
    spec: &XMatchSpec,
    meta: &[ColumnMeta; 7],
) -> Result<(SchemaRef, tokio::sync::mpsc::Receiver<Result<RecordBatch>>)> {
    use futures::StreamExt;
    let df = engine.xmatch(spec).await?;
    let plan = engine.physical_plan(df).await?;
    let schema: SchemaRef = Arc::new(Schema::new(
        plan.schema()
            .fields()
            .iter()
            .zip(meta)
            .map(|(f, m)| Field::clone(f).with_metadata(m.to_map()))
            .collect::<Vec<_>>(),
    ));
    let mut stream = crate::execute(plan, engine)?;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    // The batches go as the plan makes them: the ingest puts their columns under `schema`
    // (the plan's fields carry the inputs' own metadata, which the description replaces).
    tokio::spawn(async move {
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(Error::from);
            let failed = batch.is_err();
            // The ingest stopped (an error of its own): nothing more to compute.
            if tx.send(batch).await.is_err() || failed {
                break;
            }
        }
    });
    Ok((schema, rx))
}
