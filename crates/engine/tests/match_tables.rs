//! Precomputed match tables: named predictably, equal to a brute-force nearest-neighbour
//! search, described (units, UCDs), recomputed exactly when an input changes, published
//! whole (a reader of the old table reads it to its end), and a failed recompute leaves the
//! old table and says why.

use std::collections::BTreeMap;
use std::path::Path;

use meridian_catalog::{IngestOptions, Store};
use meridian_engine::match_tables::{self, Outcome, Refresh, Settings, State};
use meridian_engine::{Engine, EngineConfig, XMatchMode};
use rand::{Rng, SeedableRng};

type Rows = Vec<(i64, f64, f64)>;

fn write_csv(path: &Path, rows: &Rows) {
    let mut s = String::from("id,ra,dec\n");
    for (i, r, d) in rows {
        s.push_str(&format!("{i},{r:.12},{d:.12}\n"));
    }
    std::fs::write(path, s).unwrap();
}

fn opts() -> IngestOptions {
    IngestOptions {
        partition_rows: 400,
        row_group_rows: 200,
        threads: 1,
        ..Default::default()
    }
}

fn ingest(store: &Store, dir: &Path, name: &str, rows: &Rows) {
    let path = dir.join(format!("{name}.csv"));
    // Values as the CSV holds them, so that the oracle sees the ingested positions.
    write_csv(&path, rows);
    meridian_catalog::ingest::ingest(store, name, &[path], &opts(), &|_| {}).unwrap();
}

fn exact(rows: Rows) -> Rows {
    let e = |x: f64| format!("{x:.12}").parse::<f64>().unwrap();
    rows.into_iter().map(|(i, r, d)| (i, e(r), e(d))).collect()
}

/// Angular distance, arcseconds (haversine).
fn sep_arcsec(a: (f64, f64), b: (f64, f64)) -> f64 {
    let (r1, d1, r2, d2) = (
        a.0.to_radians(),
        a.1.to_radians(),
        b.0.to_radians(),
        b.1.to_radians(),
    );
    let h = ((d2 - d1) / 2.0).sin().powi(2) + d1.cos() * d2.cos() * ((r2 - r1) / 2.0).sin().powi(2);
    2.0 * h.sqrt().min(1.0).asin().to_degrees() * 3600.0
}

/// Each row of `a`'s nearest row of `b` within `r` arcseconds: id1 -> (id2, distance).
fn nearest(a: &Rows, b: &Rows, r: f64) -> BTreeMap<i64, (i64, f64)> {
    let mut out = BTreeMap::new();
    for (i, ra, dec) in a {
        let best = b
            .iter()
            .map(|(j, rb, db)| (*j, sep_arcsec((*ra, *dec), (*rb, *db))))
            .filter(|(_, s)| *s <= r)
            .min_by(|x, y| x.1.total_cmp(&y.1));
        if let Some(b) = best {
            out.insert(*i, b);
        }
    }
    out
}

/// The rows of a published match table: id1 -> (id2, distance).
fn table_rows(store: &Store, name: &str) -> BTreeMap<i64, (i64, f64)> {
    rows_of(&store.catalog(name).unwrap())
}

fn rows_of(c: &meridian_catalog::Catalog) -> BTreeMap<i64, (i64, f64)> {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float64Type, Int64Type};
    let mut out = BTreeMap::new();
    for p in c.partitions() {
        for b in c.read_partition(p).unwrap() {
            let col = |n: &str| b.column(b.schema().index_of(n).unwrap()).clone();
            let (id1, id2, d) = (col("id1"), col("id2"), col("distance_arcsec"));
            for k in 0..b.num_rows() {
                out.insert(
                    id1.as_primitive::<Int64Type>().value(k),
                    (
                        id2.as_primitive::<Int64Type>().value(k),
                        d.as_primitive::<Float64Type>().value(k),
                    ),
                );
            }
        }
    }
    out
}

fn assert_same(got: &BTreeMap<i64, (i64, f64)>, want: &BTreeMap<i64, (i64, f64)>) {
    assert_eq!(got.len(), want.len(), "rows");
    for (k, (id2, d)) in want {
        let (gid2, gd) = got.get(k).unwrap_or_else(|| panic!("row {k} missing"));
        assert_eq!(gid2, id2, "partner of {k}");
        assert!((gd - d).abs() < 1e-6, "distance of {k}: {gd} vs {d}");
    }
}

#[test]
fn match_tables_are_built_described_and_kept_current() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(24);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    // A patch of sky across RA 0 (so that the wrap is crossed), and two references holding
    // displaced copies of some of its sources plus sources of their own.
    let a: Rows = exact(
        (0..1500)
            .map(|i| {
                (
                    i,
                    (rng.random_range(-0.5..0.5f64) + 360.0) % 360.0,
                    rng.random_range(-0.5..0.5),
                )
            })
            .collect(),
    );
    let shifted = |rng: &mut rand_chacha::ChaCha8Rng, base: i64, keep: f64| -> Rows {
        let s = 1.0 / 3600.0;
        let mut out = Rows::new();
        for (i, r, d) in &a {
            if rng.random_bool(keep) {
                out.push((
                    base + i,
                    (r + rng.random_range(-s..s) + 360.0) % 360.0,
                    d + rng.random_range(-s..s),
                ));
            }
        }
        out.extend((0..300).map(|k| {
            (
                base + 10_000 + k,
                (rng.random_range(-0.5..0.5f64) + 360.0) % 360.0,
                rng.random_range(-0.5..0.5),
            )
        }));
        exact(out)
    };
    let r1 = shifted(&mut rng, 100_000, 0.6);
    let r2 = shifted(&mut rng, 200_000, 0.4);
    ingest(&store, dir.path(), "a", &a);
    ingest(&store, dir.path(), "r1", &r1);
    ingest(&store, dir.path(), "r2", &r2);
    let settings = Settings {
        references: vec!["r1".into(), "r2".into()],
        radius_arcsec: 1.5,
        mode: XMatchMode::Nearest,
        exclude: Vec::new(),
    };
    settings.check(&store).unwrap();
    let tables: Vec<String> = match_tables::pairs(&store, &settings)
        .unwrap()
        .into_iter()
        .map(|p| p.table)
        .collect();
    assert_eq!(
        tables,
        ["x1p5__a__r1", "x1p5__a__r2", "x1p5__r1__r2", "x1p5__r2__r1"]
    );
    let (entries, orphans) = match_tables::status(&store, &settings).unwrap();
    assert!(entries.iter().all(|e| e.state == State::Missing));
    assert!(orphans.is_empty());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = Engine::open(&store, &EngineConfig::default()).unwrap();
    let refresh = |retry_failed: bool| {
        Refresh {
            engine: &engine,
            runtime: rt.handle(),
            store: &store,
            settings: &settings,
            ingest: &opts(),
            retry_failed,
        }
        .run(None, false, &|_, _| {})
        .unwrap()
        .into_iter()
        .map(|(p, o)| (p.table, o))
        .collect::<BTreeMap<_, _>>()
    };
    let done = refresh(true);
    assert!(
        done.values().all(|o| matches!(o, Outcome::Built { .. })),
        "{done:?}"
    );
    assert_same(&table_rows(&store, "x1p5__a__r1"), &nearest(&a, &r1, 1.5));
    assert_same(&table_rows(&store, "x1p5__a__r2"), &nearest(&a, &r2, 1.5));
    assert_same(&table_rows(&store, "x1p5__r2__r1"), &nearest(&r2, &r1, 1.5));
    // The match table is no data set of its own: it gets no tables.
    assert_eq!(match_tables::pairs(&store, &settings).unwrap().len(), 4);

    // Described: units, UCDs, descriptions, its inputs and their versions.
    let t = store.catalog("x1p5__a__r1").unwrap();
    let meta = |c: &str| meridian_formats::ColumnMeta::of(t.schema().field_with_name(c).unwrap());
    assert_eq!(meta("distance_arcsec").unit.as_deref(), Some("arcsec"));
    assert_eq!(
        meta("distance_arcsec").ucd.as_deref(),
        Some("pos.angDistance")
    );
    assert_eq!(meta("id1").ucd.as_deref(), Some("meta.id;meta.main"));
    assert_eq!(meta("ra2").unit.as_deref(), Some("deg"));
    assert!(meta("id2").description.unwrap().contains("r1.id"));
    let p = t.properties();
    assert_eq!(p.get(match_tables::CATALOG), Some("a"));
    assert_eq!(p.get(match_tables::REFERENCE_ID), Some("id"));
    assert_eq!(p.get(match_tables::RADIUS), Some("1.5"));
    assert_eq!(
        p.get(match_tables::REFERENCE_VERSION),
        Some(store.version_id("r1").unwrap().as_str())
    );
    assert_eq!(t.ra_column(), "ra1");

    // Current: nothing to do.
    let again = refresh(true);
    assert!(again.values().all(|o| *o == Outcome::Current), "{again:?}");

    // A new version of r1: exactly the tables with r1 on either side are recomputed, and a
    // reader of the old x1p5__a__r1 reads it whole after the new one is published.
    // (A query opens the version current when it is planned, as here.)
    let old_table =
        meridian_catalog::Catalog::open(&store.current_version("x1p5__a__r1").unwrap().unwrap())
            .unwrap();
    let old_rows = rows_of(&old_table);
    let r1_new: Rows = r1.iter().filter(|(i, _, _)| i % 2 == 0).cloned().collect();
    ingest(&store, dir.path(), "r1", &r1_new);
    let (entries, _) = match_tables::status(&store, &settings).unwrap();
    let states: BTreeMap<_, _> = entries
        .iter()
        .map(|e| (e.pair.table.as_str(), e.state.clone()))
        .collect();
    assert_eq!(states["x1p5__a__r2"], State::Current);
    assert_eq!(
        states["x1p5__a__r1"],
        State::Stale("reference 'r1' has a new version".into())
    );
    assert_eq!(
        states["x1p5__r1__r2"],
        State::Stale("catalog 'r1' has a new version".into())
    );
    let done = refresh(true);
    assert_eq!(done["x1p5__a__r2"], Outcome::Current);
    for t in ["x1p5__a__r1", "x1p5__r1__r2", "x1p5__r2__r1"] {
        assert!(
            matches!(done[t], Outcome::Built { .. }),
            "{t}: {:?}",
            done[t]
        );
    }
    assert_same(
        &table_rows(&store, "x1p5__a__r1"),
        &nearest(&a, &r1_new, 1.5),
    );
    assert_same(&rows_of(&old_table), &old_rows);

    // A recompute that fails (r2's new version has a damaged partition file) leaves the
    // previous table and says why; a background pass does not retry it until an input
    // changes.
    let before = table_rows(&store, "x1p5__a__r2");
    let r2_new: Rows = r2.iter().filter(|(i, _, _)| i % 3 != 0).cloned().collect();
    ingest(&store, dir.path(), "r2", &r2_new);
    let r2_dir = store.current_version("r2").unwrap().unwrap();
    let part = walk_parquet(&r2_dir.join("r2"));
    std::fs::write(&part, b"not parquet").unwrap();
    let done = refresh(true);
    let Outcome::Failed(why) = &done["x1p5__a__r2"] else {
        panic!("{:?}", done["x1p5__a__r2"]);
    };
    assert!(why.contains("r2") || why.contains("parquet"), "{why}");
    assert_same(&table_rows(&store, "x1p5__a__r2"), &before);
    let (entries, _) = match_tables::status(&store, &settings).unwrap();
    let e = entries
        .iter()
        .find(|e| e.pair.table == "x1p5__a__r2")
        .unwrap();
    assert!(matches!(e.state, State::Stale(_)));
    assert!(
        e.failure
            .as_deref()
            .is_some_and(|f| f.contains(why.as_str()))
    );
    let background = refresh(false);
    assert!(matches!(background["x1p5__a__r2"], Outcome::Failed(_)));

    // A table the settings no longer call for is reported, not removed.
    let fewer = Settings {
        references: vec!["r1".into()],
        ..settings.clone()
    };
    let (_, orphans) = match_tables::status(&store, &fewer).unwrap();
    let names: Vec<&str> = orphans.iter().map(|o| o.table.as_str()).collect();
    assert_eq!(names, ["x1p5__a__r2", "x1p5__r1__r2"]);
    assert!(
        orphans[0]
            .why
            .contains("'r2' is not a configured reference")
    );
}

fn walk_parquet(dir: &Path) -> std::path::PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                stack.push(p);
            } else if name.starts_with("Npix=") && name.ends_with(".parquet") {
                return p;
            }
        }
    }
    panic!("no partition file under {}", dir.display());
}

#[test]
fn bad_settings_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    ingest(
        &store,
        dir.path(),
        "a",
        &vec![(1, 10.0, 10.0), (2, 10.1, 10.1)],
    );
    let s = |references: &[&str], radius_arcsec: f64| Settings {
        references: references.iter().map(|r| r.to_string()).collect(),
        radius_arcsec,
        mode: XMatchMode::Nearest,
        exclude: Vec::new(),
    };
    let e = s(&["nope"], 1.5).check(&store).unwrap_err().to_string();
    assert!(e.contains("'nope'"), "{e}");
    for r in [0.0, -1.0, f64::NAN, 4000.0] {
        let e = s(&["a"], r).check(&store).unwrap_err().to_string();
        assert!(e.contains("out of range"), "{r}: {e}");
    }
    s(&["a"], 1.5).check(&store).unwrap();
    assert_eq!(
        match_tables::table_name("gaia", "tycho2", 1.5),
        "x1p5__gaia__tycho2"
    );
    assert_eq!(
        match_tables::table_name("gaia", "wise", 2.0),
        "x2__gaia__wise"
    );
    assert_eq!(match_tables::table_name("g", "w", 0.25), "x0p25__g__w");
}

#[test]
fn a_catalog_without_partners_gets_an_empty_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    ingest(
        &store,
        dir.path(),
        "a",
        &vec![(1, 10.0, 10.0), (2, 10.1, 10.1)],
    );
    ingest(&store, dir.path(), "r", &vec![(7, 200.0, -50.0)]);
    let settings = Settings {
        references: vec!["r".into()],
        radius_arcsec: 1.5,
        mode: XMatchMode::All,
        exclude: Vec::new(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = Engine::open(&store, &EngineConfig::default()).unwrap();
    let done = Refresh {
        engine: &engine,
        runtime: rt.handle(),
        store: &store,
        settings: &settings,
        ingest: &opts(),
        retry_failed: true,
    }
    .run(None, false, &|_, _| {})
    .unwrap();
    assert_eq!(done.len(), 1);
    assert!(
        matches!(done[0].1, Outcome::Built { rows: 0, .. }),
        "{done:?}"
    );
    let t = store.catalog("x1p5__a__r").unwrap();
    assert_eq!(t.total_rows().unwrap(), 0);
    assert_eq!(t.properties().get(match_tables::MODE), Some("all"));
    let (entries, _) = match_tables::status(&store, &settings).unwrap();
    assert_eq!(entries[0].state, State::Current);
}
