//! The cross-match operator against a brute-force oracle, on two catalogs made to stress it:
//! clusters at both poles and on RA=0/360, pairs planted at and around the radius, many
//! small partitions. Every join form (DISTANCE, CONTAINS, q3c_join, either side first,
//! explicit join or WHERE) must return exactly the brute-force pair set and run as the
//! cross-match operator; best-match mode returns each left row's nearest partner.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::sync::OnceLock;

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{Float64Type, Int64Type};
use meridian_catalog::{IngestOptions, Store};
use meridian_engine::{Engine, EngineConfig, Lang, XMatchMode, XMatchSpec, XMatchZones};
use meridian_sky::angular_separation_deg;
use rand::{Rng, SeedableRng};

type Rows = Vec<(i64, f64, f64)>;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    a: Rows,
    b: Rows,
}

/// A position at `sep_deg` from (ra, dec) towards position angle `pa` (radians).
fn offset(ra: f64, dec: f64, sep_deg: f64, pa: f64) -> (f64, f64) {
    let (a, d, s) = (ra.to_radians(), dec.to_radians(), sep_deg.to_radians());
    let p = [d.cos() * a.cos(), d.cos() * a.sin(), d.sin()];
    let east = [-a.sin(), a.cos(), 0.0];
    let north = [-d.sin() * a.cos(), -d.sin() * a.sin(), d.cos()];
    let v: Vec<f64> = (0..3)
        .map(|i| p[i] * s.cos() + s.sin() * (pa.cos() * north[i] + pa.sin() * east[i]))
        .collect();
    let ra = v[1].atan2(v[0]).to_degrees().rem_euclid(360.0);
    let dec = v[2].clamp(-1.0, 1.0).asin().to_degrees();
    (ra % 360.0, dec)
}

fn sky_points(rng: &mut impl Rng, n: usize, first_id: i64) -> Rows {
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        let (ra, dec) = match i % 5 {
            // Around the poles and the RA seam.
            0 => (rng.random_range(0.0..360.0), rng.random_range(89.98..90.0)),
            1 => (
                rng.random_range(0.0..360.0),
                rng.random_range(-90.0..-89.98),
            ),
            2 => (
                (rng.random_range(-0.02..0.02f64)).rem_euclid(360.0),
                rng.random_range(-1.0..1.0),
            ),
            _ => (
                rng.random_range(0.0..360.0),
                rng.random_range(-1.0f64..1.0).asin().to_degrees(),
            ),
        };
        rows.push((first_id + i as i64, ra % 360.0, dec));
    }
    rows
}

fn write_csv(path: &std::path::Path, rows: &Rows) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(f, "objectId,ra,dec").unwrap();
    for (id, ra, dec) in rows {
        writeln!(f, "{id},{ra:.12},{dec:.12}").unwrap();
    }
}

const RADIUS_DEG: f64 = 5.0 / 3600.0;

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261121);
        let b = sky_points(&mut rng, 12_000, 1_000_000);
        // Partners of most of b at separations spread over 0..2r, several for some.
        let mut a = Vec::new();
        let mut id = 1;
        for &(_, ra, dec) in &b {
            for _ in 0..rng.random_range(0..3) {
                let sep = rng.random_range(0.0..2.0 * RADIUS_DEG);
                let (r2, d2) = offset(ra, dec, sep, rng.random_range(0.0..std::f64::consts::TAU));
                a.push((id, r2, d2));
                id += 1;
            }
        }
        a.extend(sky_points(&mut rng, 4_000, id));
        // Positions as the CSV holds them, so that the oracle sees the ingested values.
        let exact = |x: f64| format!("{x:.12}").parse::<f64>().unwrap();
        let (a, b): (Rows, Rows) = [a, b]
            .map(|rows| {
                rows.into_iter()
                    .map(|(i, r, d)| (i, exact(r), exact(d)))
                    .collect()
            })
            .into();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let opts = IngestOptions {
            partition_rows: 1_500,
            row_group_rows: 500,
            page_rows: 100,
            ..Default::default()
        };
        for (name, rows) in [("xa", &a), ("xb", &b)] {
            let path = dir.path().join(format!("{name}.csv"));
            write_csv(&path, rows);
            meridian_catalog::ingest::ingest(&store, name, &[path], &opts, &|_| {}).unwrap();
        }
        Fixture {
            _dir: dir,
            store,
            a,
            b,
        }
    })
}

/// Every (a, b) pair within `r_deg`, by a sweep over Dec (|dDec| bounds the separation).
fn brute_pairs(a: &Rows, b: &Rows, r_deg: f64) -> BTreeSet<(i64, i64)> {
    let mut sorted = b.clone();
    sorted.sort_by(|x, y| x.2.total_cmp(&y.2));
    let mut out = BTreeSet::new();
    for &(ia, ra, da) in a {
        let lo = sorted.partition_point(|x| x.2 < da - r_deg);
        for &(ib, rb, db) in sorted[lo..].iter().take_while(|x| x.2 <= da + r_deg) {
            if angular_separation_deg(ra, da, rb, db) < r_deg {
                out.insert((ia, ib));
            }
        }
    }
    out
}

fn run(engine: &Engine, q: &str, lang: Lang) -> (Vec<RecordBatch>, String) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let df = engine
            .query(q, lang)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        let plan = df.clone().create_physical_plan().await.unwrap();
        let batches = meridian_engine::execute(plan.clone(), engine)
            .unwrap()
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| panic!("{q}: {e}"));
        // The plan with the metrics of its run.
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
            plan.as_ref(),
        )
        .indent(true)
        .to_string();
        (batches, shown)
    })
}

use futures::StreamExt;

fn pairs(batches: &[RecordBatch]) -> BTreeSet<(i64, i64)> {
    let mut out = BTreeSet::new();
    for b in batches {
        let x = b.column(0).as_primitive::<Int64Type>();
        let y = b.column(1).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            assert!(out.insert((x.value(i), y.value(i))), "duplicate pair");
        }
    }
    out
}

fn engine(config: &EngineConfig) -> Engine {
    Engine::open(&fixture().store, config).unwrap()
}

/// An engine that runs cross-matches with one index (`Never`) or zone by zone (`Always`).
fn engine_zones(zones: XMatchZones) -> Engine {
    engine(&EngineConfig {
        xmatch_zones: zones,
        ..Default::default()
    })
}

/// Whether a plan's cross-match runs zone by zone as `zones` asks.
fn check_zones(plan: &str, zones: XMatchZones) {
    assert!(plan.contains("XMatchExec"), "{plan}");
    let zoned = plan.contains(", zoned") && plan.contains("ZoneExec");
    assert_eq!(zoned, zones == XMatchZones::Always, "{plan}");
}

const BOTH: [XMatchZones; 2] = [XMatchZones::Never, XMatchZones::Always];

#[test]
fn every_join_form_equals_brute_force() {
    let f = fixture();
    let want = brute_pairs(&f.a, &f.b, RADIUS_DEG);
    assert!(want.len() > 8_000, "{} planted pairs", want.len());
    // The fixture puts pairs at the poles and on the seam.
    let near = |id: i64, pred: &dyn Fn(f64, f64) -> bool| {
        f.a.iter().any(|&(i, ra, dec)| i == id && pred(ra, dec))
    };
    assert!(want.iter().any(|p| near(p.0, &|_, d| d > 89.99)));
    assert!(want.iter().any(|p| near(p.0, &|_, d| d < -89.99)));
    assert!(want.iter().any(|p| near(p.0, &|r, _| r > 359.999)));
    let r = RADIUS_DEG;
    let queries = [
        (
            format!(
                "SELECT a.objectId, b.objectId FROM xa AS a JOIN xb AS b \
                 ON DISTANCE(POINT('ICRS', a.ra, a.dec), POINT('ICRS', b.ra, b.dec)) < {r}"
            ),
            Lang::Adql,
        ),
        (
            format!(
                "SELECT a.objectId, b.objectId FROM xa AS a, xb AS b WHERE \
                 1 = CONTAINS(POINT(b.ra, b.dec), CIRCLE(a.ra, a.dec, {r})) \
                 AND DISTANCE(POINT(a.ra, a.dec), POINT(b.ra, b.dec)) < {r}"
            ),
            Lang::Adql,
        ),
        (
            format!(
                "SELECT b.\"objectId\", a.\"objectId\" FROM xb b JOIN xa a \
                 ON q3c_join(a.ra, a.dec, b.ra, b.dec, {r}) AND q3c_dist(a.ra, a.dec, b.ra, b.dec) < {r}"
            ),
            Lang::Sql,
        ),
    ];
    for zones in BOTH {
        let e = engine_zones(zones);
        for (i, (q, lang)) in queries.iter().enumerate() {
            let (batches, plan) = run(&e, q, *lang);
            check_zones(&plan, zones);
            let mut got = pairs(&batches);
            if i == 2 {
                got = got.into_iter().map(|(x, y)| (y, x)).collect();
            }
            assert_eq!(got.len(), want.len(), "{zones:?} {q}");
            assert_eq!(got, want, "{zones:?} {q}");
        }
    }
}

#[test]
fn cross_match_keeps_other_conditions_and_large_radii() {
    let f = fixture();
    let r = 60.0 / 3600.0;
    let want: BTreeSet<_> = brute_pairs(&f.a, &f.b, r)
        .into_iter()
        .filter(|&(x, y)| (x + y) % 3 == 0)
        .collect();
    let q = format!(
        "SELECT a.objectId, b.objectId FROM xa a JOIN xb b \
         ON 1 = CONTAINS(POINT(a.ra, a.dec), CIRCLE(b.ra, b.dec, {r})) WHERE MOD(a.objectId + b.objectId, 3) = 0"
    );
    for zones in BOTH {
        let (batches, plan) = run(&engine_zones(zones), &q, Lang::Adql);
        check_zones(&plan, zones);
        assert_eq!(pairs(&batches), want, "{zones:?}");
    }
}

#[test]
fn best_match_is_the_nearest_partner_within_the_radius() {
    for zones in BOTH {
        best_match_equals_brute_force(zones);
    }
}

fn best_match_equals_brute_force(zones: XMatchZones) {
    let f = fixture();
    let e = engine_zones(zones);
    let mut want: BTreeMap<i64, (f64, i64)> = BTreeMap::new();
    for (x, y) in brute_pairs(&f.a, &f.b, RADIUS_DEG) {
        let pa = f.a.iter().find(|r| r.0 == x).unwrap();
        let pb = f.b.iter().find(|r| r.0 == y).unwrap();
        let d = angular_separation_deg(pa.1, pa.2, pb.1, pb.2);
        let best = want.entry(x).or_insert((d, y));
        if d < best.0 {
            *best = (d, y);
        }
    }
    let spec = XMatchSpec {
        left: "xa".into(),
        right: "xb".into(),
        radius_deg: RADIUS_DEG,
        left_id: None,
        right_id: None,
        mode: XMatchMode::Nearest,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (batches, plan) = rt.block_on(async {
        let df = e.xmatch(&spec).await.unwrap();
        let plan = df.clone().create_physical_plan().await.unwrap();
        (
            df.collect().await.unwrap(),
            meridian_engine::display_plan(&plan),
        )
    });
    check_zones(&plan, zones);
    let mut got = BTreeMap::new();
    for b in &batches {
        assert_eq!(
            b.schema()
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>(),
            [
                "id1",
                "ra1",
                "dec1",
                "id2",
                "ra2",
                "dec2",
                "distance_arcsec"
            ]
        );
        let id1 = b.column(0).as_primitive::<Int64Type>();
        let id2 = b.column(3).as_primitive::<Int64Type>();
        let dist = b.column(6).as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            assert!(
                got.insert(id1.value(i), (dist.value(i), id2.value(i)))
                    .is_none()
            );
        }
    }
    assert_eq!(got.len(), want.len());
    for (id, (d, partner)) in &want {
        let (gd, gp) = got[id];
        assert_eq!(gp, *partner, "left row {id}");
        assert!(
            (gd - d * 3600.0).abs() < 1e-9,
            "left row {id}: {gd} vs {}",
            d * 3600.0
        );
    }
}

#[test]
fn unknown_names_in_a_cross_match_are_clear_errors() {
    let e = engine(&EngineConfig::default());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let spec = XMatchSpec {
        left: "xa".into(),
        right: "xbb".into(),
        radius_deg: RADIUS_DEG,
        left_id: None,
        right_id: None,
        mode: XMatchMode::Nearest,
    };
    let err = rt.block_on(e.xmatch(&spec)).err().unwrap().to_string();
    assert!(
        err.contains("no catalog named 'xbb'; did you mean xb?"),
        "{err}"
    );
    let spec = XMatchSpec {
        right: "xb".into(),
        left_id: Some("idd".into()),
        ..spec
    };
    let err = rt.block_on(e.xmatch(&spec)).err().unwrap().to_string();
    assert!(err.contains("no column 'idd'"), "{err}");
    let spec = XMatchSpec {
        left_id: None,
        radius_deg: 40.0,
        ..spec
    };
    let err = rt.block_on(e.xmatch(&spec)).err().unwrap().to_string();
    assert!(err.contains("radius"), "{err}");
}

#[test]
fn a_build_side_over_the_memory_budget_fails_cleanly_with_one_index() {
    let e = engine(&EngineConfig {
        memory_limit_bytes: 64 << 10,
        xmatch_zones: XMatchZones::Never,
        ..Default::default()
    });
    let q = format!(
        "SELECT a.objectId, b.objectId FROM xa a JOIN xb b ON DISTANCE(POINT(a.ra, a.dec), POINT(b.ra, b.dec)) < {RADIUS_DEG}"
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let err = rt
        .block_on(async { e.query(&q, Lang::Adql).await.unwrap().collect().await })
        .unwrap_err()
        .to_string();
    assert!(err.contains("Resources exhausted"), "{err}");
    // The engine still answers afterwards.
    let (batches, _) = run(&engine(&EngineConfig::default()), &q, Lang::Adql);
    assert!(!batches.is_empty());
}

/// Zone by zone, a cross-match whose indexed side (with its index) is larger than the
/// memory budget succeeds, with the brute-force pair set, where one index fails; the automatic
/// choice goes zone by zone for it, and keeps one index under an ample budget.
#[test]
fn a_build_side_over_the_memory_budget_succeeds_zone_by_zone() {
    // 400,000 rows a side in a 6 x 6 degree field; most of b are a's rows moved by up to
    // 2 arcsec. The index of either side takes about 45 MiB, the budget is 32 MiB.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20261202);
    let n = 400_000;
    let field = |rng: &mut rand_chacha::ChaCha8Rng| {
        (rng.random_range(150.0..156.0), rng.random_range(-3.0..3.0))
    };
    let a: Rows = (0..n)
        .map(|i| {
            let (ra, dec) = field(&mut rng);
            (i as i64, ra, dec)
        })
        .collect();
    let b: Rows = a
        .iter()
        .map(|&(i, ra, dec)| {
            let (ra, dec) = if i % 4 == 0 {
                field(&mut rng)
            } else {
                let sep = rng.random_range(0.0..2.0 / 3600.0);
                offset(ra, dec, sep, rng.random_range(0.0..std::f64::consts::TAU))
            };
            (1_000_000 + i, ra, dec)
        })
        .collect();
    let exact = |x: f64| format!("{x:.12}").parse::<f64>().unwrap();
    let [a, b] = [a, b].map(|rows| -> Rows {
        rows.into_iter()
            .map(|(i, r, d)| (i, exact(r), exact(d)))
            .collect()
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    for (name, rows) in [("la", &a), ("lb", &b)] {
        let path = dir.path().join(format!("{name}.csv"));
        write_csv(&path, rows);
        let opts = IngestOptions {
            partition_rows: 50_000,
            ..Default::default()
        };
        meridian_catalog::ingest::ingest(&store, name, &[path], &opts, &|_| {}).unwrap();
    }
    let r = 1.0 / 3600.0;
    let want = brute_pairs(&a, &b, r);
    assert!(want.len() > 130_000, "{} pairs", want.len());
    let q = format!(
        "SELECT a.objectId, b.objectId FROM la a JOIN lb b ON DISTANCE(POINT(a.ra, a.dec), POINT(b.ra, b.dec)) < {r}"
    );
    let budget = 32 << 20;
    let open = |zones| {
        Engine::open(
            &store,
            &EngineConfig {
                memory_limit_bytes: budget,
                xmatch_zones: zones,
                ..Default::default()
            },
        )
        .unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let one_index = open(XMatchZones::Never);
    let err = rt
        .block_on(async {
            one_index
                .query(&q, Lang::Adql)
                .await
                .unwrap()
                .collect()
                .await
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("Resources exhausted"), "{err}");
    let (batches, plan) = run(&open(XMatchZones::Auto), &q, Lang::Adql);
    check_zones(&plan, XMatchZones::Always);
    assert_eq!(pairs(&batches), want);
    // The partitions went to disk by bucket of zones.
    let xmatch = plan.lines().find(|l| l.contains("XMatchExec")).unwrap();
    let spills: usize = xmatch
        .split("spill_count=")
        .nth(1)
        .and_then(|m| m.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{xmatch}"));
    assert!(spills > 0, "{xmatch}");
    let ample = Engine::open(&store, &EngineConfig::default()).unwrap();
    let (_, plan) = run(&ample, &q, Lang::Adql);
    check_zones(&plan, XMatchZones::Never);
}

/// A plan made in one session, sent as bytes and run by another (as a Ballista executor
/// would): the cross-match operator, its position expressions, Meridian's UDFs and the HATS
/// scans survive, and the answer is still the brute-force pair set.
#[test]
fn cross_match_plans_survive_serialization_to_another_session() {
    let f = fixture();
    let planner = engine(&EngineConfig::default());
    let executor = engine(&EngineConfig::default());
    let r = RADIUS_DEG;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let run_elsewhere = |df: meridian_engine::DataFrame| {
        rt.block_on(async {
            let plan = df.create_physical_plan().await.unwrap();
            let bytes = meridian_engine::plan_to_bytes(plan).unwrap();
            let task = executor.session().task_ctx();
            let plan = meridian_engine::plan_from_bytes(&bytes, &task).unwrap();
            let shown = meridian_engine::display_plan(&plan);
            let batches = meridian_engine::execute(plan, &executor)
                .unwrap()
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            (batches, shown)
        })
    };
    // Every pair, with the index on either side, the pair filter using a Meridian UDF.
    let q = format!(
        "SELECT a.objectId, b.objectId FROM xa AS a JOIN xb AS b \
         ON DISTANCE(POINT(a.ra, a.dec), POINT(b.ra, b.dec)) < {r}"
    );
    let df = rt.block_on(planner.query(&q, Lang::Adql)).unwrap();
    let (batches, shown) = run_elsewhere(df);
    assert!(shown.contains("XMatchExec: mode=All"), "{shown}");
    assert_eq!(pairs(&batches), brute_pairs(&f.a, &f.b, r));
    // Zone by zone: the zone operators travel too.
    let zoned = engine_zones(XMatchZones::Always);
    let df = rt.block_on(zoned.query(&q, Lang::Adql)).unwrap();
    let (batches, shown) = run_elsewhere(df);
    check_zones(&shown, XMatchZones::Always);
    assert_eq!(pairs(&batches), brute_pairs(&f.a, &f.b, r));
    // Best match.
    let spec = XMatchSpec {
        left: "xa".into(),
        right: "xb".into(),
        radius_deg: r,
        left_id: None,
        right_id: None,
        mode: XMatchMode::Nearest,
    };
    let df = rt.block_on(planner.xmatch(&spec)).unwrap();
    let (batches, shown) = run_elsewhere(df);
    assert!(shown.contains("XMatchExec: mode=Nearest"), "{shown}");
    let matched: BTreeSet<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    let want: BTreeSet<i64> = brute_pairs(&f.a, &f.b, r)
        .into_iter()
        .map(|p| p.0)
        .collect();
    assert_eq!(matched, want);
    // A cone search: the pruned scan and the spatial UDF in its filter.
    let q = "SELECT objectId FROM xb WHERE 1 = CONTAINS(POINT(ra, dec), CIRCLE(10, 20, 5))";
    let df = rt.block_on(planner.query(q, Lang::Adql)).unwrap();
    let (batches, _) = run_elsewhere(df);
    let got: BTreeSet<i64> = batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    let want: BTreeSet<i64> =
        f.b.iter()
            .filter(|p| angular_separation_deg(10.0, 20.0, p.1, p.2) < 5.0)
            .map(|p| p.0)
            .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);
}

/// A small in-memory side cross-matched with a catalog (a batch of alerts, an upload):
/// the catalog's reader gets the boxes holding every possible partner once the small side
/// is indexed, and skips row groups outside them; the pairs stay exactly the brute-force
/// ones, also across RA = 0 and at the pole, and with no partner at all.
#[test]
fn a_small_side_prunes_the_catalog_it_is_matched_with() {
    use arrow::array::{Float64Array, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    let f = fixture();
    let r = RADIUS_DEG;
    // Near some of b's rows on the RA seam and at the north pole, and a few anywhere.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let mut near = |keep: &dyn Fn(usize) -> bool| -> Rows {
        let mut out = Vec::new();
        for (k, &(_, ra, dec)) in f.b.iter().enumerate() {
            if keep(k) {
                let sep = rng.random_range(0.0..1.5 * r);
                let (ra, dec) = offset(ra, dec, sep, rng.random_range(0.0..std::f64::consts::TAU));
                out.push((out.len() as i64 + 1, ra, dec));
            }
        }
        out
    };
    let spread = near(&|k| match k % 5 {
        0 => k % 400 == 0,
        2 => k % 200 == 2,
        _ => k % 3_000 == 3,
    });
    // On the seam only: most row groups hold no partner.
    let seam = near(&|k| k % 5 == 2 && k % 1_000 == 2);
    let table = |rows: &Rows| {
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("objectId", DataType::Int64, false),
            Field::new("ra", DataType::Float64, false),
            Field::new("dec", DataType::Float64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                std::sync::Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                std::sync::Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
                std::sync::Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap();
        let t = datafusion::datasource::MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        std::sync::Arc::new(t) as std::sync::Arc<dyn datafusion::datasource::TableProvider>
    };
    let q = format!(
        "SELECT s.objectId, b.objectId FROM up.near AS s JOIN xb AS b \
         ON 1 = CONTAINS(POINT(s.ra, s.dec), CIRCLE(b.ra, b.dec, {r}))"
    );
    let read = |plan: &str, metric: &str| -> (usize, usize) {
        // "<metric>=N total → M matched" of the catalog's scan.
        let m = plan
            .split(&format!("{metric}="))
            .nth(1)
            .unwrap_or_else(|| panic!("no {metric} in {plan}"));
        // "12", or "1.20 K" and "3.4 M" for row counts.
        let num = |s: &str| {
            let mut words = s.trim().split(' ');
            let x = words.next().unwrap().parse::<f64>().unwrap();
            let scale = match words.next() {
                Some("K") => 1e3,
                Some("M") => 1e6,
                _ => 1.0,
            };
            (x * scale).round() as usize
        };
        let total = num(m);
        let matched = num(m.split('→').nth(1).unwrap());
        (total, matched)
    };
    let base = engine(&EngineConfig::default());
    for (rows, pruned) in [(spread, false), (seam, true), (vec![], true)] {
        let e = base
            .with_tables(vec![("up".into(), "near".into(), table(&rows))])
            .unwrap();
        let (batches, plan) = run(&e, &q, Lang::Adql);
        assert!(plan.contains("build=left"), "{plan}");
        let want = brute_pairs(&rows, &f.b, r);
        if !pruned {
            assert!(want.len() > 20, "{} pairs", want.len());
        }
        assert_eq!(pairs(&batches), want, "{plan}");
        let (total, matched) = read(&plan, "files_ranges_pruned_statistics");
        assert!(total >= 10, "{plan}");
        assert!(
            !pruned || matched * 2 < total,
            "{matched} of {total} files read for {} rows: {plan}",
            rows.len()
        );
        // Within the files read, pages (100 rows) outside the boxes' Dec or RA ranges are
        // skipped (this catalog is sparse, so a page spans much sky and few are skipped).
        if pruned && !rows.is_empty() {
            let (total, matched) = read(&plan, "page_index_rows_pruned");
            assert!(
                matched < total,
                "{matched} of {total} rows' pages read: {plan}"
            );
        }
    }
}
