//! ADQL queries on a real catalog (Gaia DR3 bright stars) through DataFusion: results equal
//! the catalog's own pruned scan and a brute-force separation test on the input; spatial
//! predicates prune partitions; names resolve under ADQL's case rules with suggestions.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use meridian_catalog::Store;
use meridian_engine::{Engine, EngineConfig, Lang};
use meridian_sky::{SkyPoint, angular_separation_deg};

mod common;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    rows: Vec<(i64, f64, f64)>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let (dir, store) = common::gaia_store();
        let input = common::gaia_input();
        let mut rows = Vec::new();
        for b in meridian_formats::open(&input, &Default::default()).unwrap() {
            let b = b.unwrap();
            let id = b
                .column_by_name("source_id")
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone();
            let ra = b
                .column_by_name("ra")
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone();
            let dec = b
                .column_by_name("dec")
                .unwrap()
                .as_primitive::<Float64Type>()
                .clone();
            for i in 0..b.num_rows() {
                rows.push((id.value(i), ra.value(i), dec.value(i)));
            }
        }
        Fixture {
            _dir: dir,
            store,
            rows,
        }
    })
}

fn run(engine: &Engine, q: &str, lang: Lang) -> Vec<RecordBatch> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        engine
            .query(q, lang)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .collect()
            .await
            .unwrap()
    })
}

fn ids(batches: &[RecordBatch]) -> BTreeSet<i64> {
    batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

fn brute(ra: f64, dec: f64, r_deg: f64) -> BTreeSet<i64> {
    fixture()
        .rows
        .iter()
        .filter(|(_, a, d)| angular_separation_deg(ra, dec, *a, *d) <= r_deg)
        .map(|r| r.0)
        .collect()
}

#[test]
fn cone_queries_match_brute_force_and_prune() {
    let f = fixture();
    let engine = Engine::open(&f.store, &EngineConfig::default()).unwrap();
    for (ra, dec, r) in [(56.75, 24.12, 1.0), (0.0, 89.5, 2.0), (359.9, -10.0, 1.5)] {
        let want = brute(ra, dec, r);
        assert!(!want.is_empty());
        let q = format!(
            "SELECT source_id FROM gaia WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra}, {dec}, {r}))"
        );
        assert_eq!(ids(&run(&engine, &q, Lang::Adql)), want, "{q}");
        let p = engine.table("gaia").unwrap().last_pruning();
        assert!(p.partitions_read < p.partitions_total / 4, "{p:?}");
        let q = format!(
            "SELECT source_id FROM gaia WHERE DISTANCE(POINT(ra, dec), POINT({ra}, {dec})) <= {r}"
        );
        assert_eq!(ids(&run(&engine, &q, Lang::Adql)), want, "{q}");
        let q =
            format!("SELECT source_id FROM gaia WHERE q3c_radial_query(ra, dec, {ra}, {dec}, {r})");
        assert_eq!(ids(&run(&engine, &q, Lang::Sql)), want, "{q}");
    }
}

#[test]
fn case_rules_top_order_and_aggregates() {
    let engine = Engine::open(&fixture().store, &EngineConfig::default()).unwrap();
    let b = run(
        &engine,
        "SELECT TOP 5 SOURCE_ID, Phot_G_Mean_Mag AS g FROM GAIA ORDER BY g",
        Lang::Adql,
    );
    let n: usize = b.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 5);
    assert_eq!(b[0].schema().field(0).name(), "source_id");
    let g = b[0].column(1).as_primitive::<Float64Type>();
    assert!(g.values().windows(2).all(|w| w[0] <= w[1]));
    let b = run(
        &engine,
        "SELECT COUNT(*) AS n FROM gaia WHERE dec > 0",
        Lang::Adql,
    );
    let want = fixture().rows.iter().filter(|r| r.2 > 0.0).count() as i64;
    assert_eq!(b[0].column(0).as_primitive::<Int64Type>().value(0), want);
    let b = run(
        &engine,
        "SELECT ivo_healpix_index(0, ra, dec) AS pix, COUNT(*) AS n FROM gaia GROUP BY pix",
        Lang::Adql,
    );
    let total: i64 = b
        .iter()
        .map(|b| {
            b.column(1)
                .as_primitive::<Int64Type>()
                .values()
                .iter()
                .sum::<i64>()
        })
        .sum();
    assert_eq!(total, fixture().rows.len() as i64);
    let _ = SkyPoint::new(0.0, 0.0);
}

#[test]
fn unknown_names_get_suggestions() {
    let engine = Engine::open(&fixture().store, &EngineConfig::default()).unwrap();
    let e = engine
        .translate("SELECT sourceid FROM gaia")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 1, column 8") && e.contains("did you mean source_id?"),
        "{e}"
    );
    let e = engine
        .translate("SELECT ra FROM gaai")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown table gaai") && e.contains("did you mean gaia?"),
        "{e}"
    );
    let e = engine
        .translate("SELECT \"RA\" FROM gaia")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown column \"RA\""), "{e}");
}

#[test]
fn explain_analyze_shows_row_groups_pruned() {
    let engine = Engine::open(&fixture().store, &EngineConfig::default()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let q = "SELECT source_id FROM gaia WHERE adql_contains_circle(ra, dec, 56.75, 24.12, 0.2) = 1";
    let r = rt.block_on(engine.scan_report(q, Lang::Sql)).unwrap();
    assert!(r.partitions_read == 1 && r.partitions_total > 10, "{r}");
    assert!(
        r.row_groups_total >= 4 && r.row_groups_read * 4 <= r.row_groups_total,
        "{r}"
    );
}
