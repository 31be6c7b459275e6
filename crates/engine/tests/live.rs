//! A served catalog that grows: each query reads the version current when it is planned,
//! so rows appended after the engine opened are seen without reopening it, with the same
//! spatial pruning, and a query's result is that of one version.

use std::sync::Arc;

use arrow::array::{AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use meridian_catalog::Store;
use meridian_catalog::append::AppendSpec;
use meridian_engine::{Engine, EngineConfig, Lang};

fn batch(first: i64, n: i64, ra0: f64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("ra", DataType::Float64, false),
        Field::new("dec", DataType::Float64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(first..first + n)),
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| ra0 + (i % 50) as f64 * 0.01),
            )),
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|i| 10.0 + (i / 50) as f64 * 0.01),
            )),
        ],
    )
    .unwrap()
}

fn count(rt: &tokio::runtime::Runtime, e: &Engine, q: &str) -> i64 {
    rt.block_on(async {
        let b = e
            .query(q, Lang::Adql)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        b[0].column(0).as_primitive::<Int64Type>().value(0)
    })
}

#[test]
fn appended_rows_are_queryable_without_reopening_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let spec = AppendSpec::new("ra", "dec");
    let b = batch(0, 500, 40.0);
    store.append("live", &b.schema(), &[b], &spec).unwrap();
    let engine = Engine::open(&store, &EngineConfig::default()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let all = "SELECT COUNT(*) FROM live";
    let cone = "SELECT COUNT(*) FROM live \
                WHERE 1 = CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 140.2, 10.2, 0.5))";
    assert_eq!(count(&rt, &engine, all), 500);
    assert_eq!(count(&rt, &engine, cone), 0);

    // Rows far away: a new partition, seen by the next query.
    let b = batch(500, 300, 140.0);
    store.append("live", &b.schema(), &[b], &spec).unwrap();
    assert_eq!(count(&rt, &engine, all), 800);
    // All of the new rows are within the cone, none of the old.
    assert_eq!(count(&rt, &engine, cone), 300);
    let t = engine.table("live").unwrap();
    let p = t.last_pruning();
    assert!(
        p.partitions_read >= 1 && p.partitions_read < p.partitions_total,
        "{p:?}"
    );
    assert_eq!(t.catalog().total_rows().unwrap(), 800);
}
