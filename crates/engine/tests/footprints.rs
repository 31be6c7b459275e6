//! ObsCore-like tables of image footprints, spatially indexed: every spatial query gives
//! exactly the rows of an unindexed scan of the same table, while reading only the rows
//! near its region; outlines across RA 0 and around the poles included.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Float64Builder, Int64Array, ListBuilder, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use meridian_catalog::Store;
use meridian_engine::footprint_table::FootprintTable;
use meridian_engine::{Engine, EngineConfig, Lang};
use rand::{Rng, SeedableRng};

/// `n` square-ish footprints up to 1.5 degrees across, a tenth of them near a pole and a
/// tenth across RA 0.
fn footprints(n: usize) -> RecordBatch {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let (mut ids, mut ras, mut decs) = (Vec::new(), Vec::new(), Vec::new());
    let mut region = ListBuilder::new(Float64Builder::new());
    for i in 0..n {
        let (ra, dec): (f64, f64) = match i % 10 {
            0 => (rng.random_range(0.0..360.0), rng.random_range(87.0..89.2)),
            1 => (
                rng.random_range(-1.0f64..1.0).rem_euclid(360.0),
                rng.random_range(-30.0..30.0),
            ),
            _ => (
                rng.random_range(0.0..360.0),
                rng.random_range(-1.0f64..1.0)
                    .asin()
                    .to_degrees()
                    .clamp(-88.0, 88.0),
            ),
        };
        let half = rng.random_range(0.01..0.75);
        let d = half / dec.to_radians().cos().max(0.02);
        for (sx, sy) in [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)] {
            region
                .values()
                .append_value((ra + sx * d).rem_euclid(360.0));
            region
                .values()
                .append_value((dec + sy * half).clamp(-90.0, 90.0));
        }
        region.append(true);
        ids.push(i as i64);
        ras.push(ra);
        decs.push(dec);
    }
    let schema = Schema::new(vec![
        Field::new("obs_id", DataType::Int64, false),
        Field::new("s_ra", DataType::Float64, true),
        Field::new("s_dec", DataType::Float64, true),
        Field::new(
            "s_region",
            DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
            true,
        ),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(ids)),
        Arc::new(Float64Array::from(ras)),
        Arc::new(Float64Array::from(decs)),
        Arc::new(region.finish()),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).unwrap()
}

fn ids(engine: &Engine, q: &str) -> BTreeSet<i64> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let batches = rt.block_on(async {
        engine
            .query(q, Lang::Adql)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e}"))
            .collect()
            .await
            .unwrap()
    });
    batches
        .iter()
        .flat_map(|b| {
            arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(b.column(0))
                .values()
                .to_vec()
        })
        .collect()
}

#[test]
fn spatial_queries_read_few_rows_and_lose_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let batch = footprints(20_000);
    let indexed =
        Arc::new(FootprintTable::new(batch.clone(), "s_ra", "s_dec", "s_region").unwrap());
    let mut engine = Engine::open(&store, &EngineConfig::default()).unwrap();
    engine
        .add_table("ivoa", "obscore", indexed.clone())
        .unwrap();
    engine.add_batch_table("ivoa", "plain", batch).unwrap();
    let shapes = [
        "CIRCLE('ICRS', 10, 20, 0.5)",
        "CIRCLE('ICRS', 0.2, 5, 2)",
        "CIRCLE('ICRS', 123, 89.5, 1)",
        "CIRCLE('ICRS', 300, -88.9, 3)",
        "BOX('ICRS', 359.8, -10, 3, 2)",
        "POLYGON('ICRS', 359, 10, 2, 10, 2, 14, 359, 14)",
        "POLYGON('ICRS', 0, 88, 90, 88, 180, 88, 270, 88)",
    ];
    let mut predicates: Vec<String> = Vec::new();
    for s in shapes {
        predicates.push(format!("INTERSECTS(s_region, {s}) = 1"));
        predicates.push(format!("CONTAINS(s_region, {s}) = 1"));
        predicates.push(format!("CONTAINS(POINT('ICRS', s_ra, s_dec), {s}) = 1"));
    }
    for (ra, dec) in [(10.0, 20.0), (0.1, 0.0), (45.0, 89.0), (359.95, 12.0)] {
        predicates.push(format!(
            "CONTAINS(POINT('ICRS', {ra}, {dec}), s_region) = 1"
        ));
        predicates.push(format!(
            "DISTANCE(POINT(s_ra, s_dec), POINT({ra}, {dec})) < 1.5"
        ));
    }
    let mut some = 0;
    for p in &predicates {
        let want = ids(&engine, &format!("SELECT obs_id FROM ivoa.plain WHERE {p}"));
        let got = ids(
            &engine,
            &format!("SELECT obs_id FROM ivoa.obscore WHERE {p}"),
        );
        assert_eq!(got, want, "{p}");
        some += usize::from(!want.is_empty());
        let read = indexed.last_read();
        assert_eq!(read.rows_total, 20_000);
        assert!(read.rows_read < 2_000, "{p}: {read:?}");
    }
    assert!(
        some > predicates.len() / 2,
        "too few queries found anything"
    );
    // Without a spatial filter every row is read.
    let all = ids(
        &engine,
        "SELECT obs_id FROM ivoa.obscore WHERE obs_id < 100",
    );
    assert_eq!(all.len(), 100);
    assert_eq!(indexed.last_read().rows_read, 20_000);
}
