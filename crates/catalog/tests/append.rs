//! Appends to a catalog: every row given is stored once (by key), in the partition whose
//! HEALPix cell holds its position, partitions stay disjoint, each file sorted, partitions
//! within their size; an append writes a file of new rows per partition it touches and
//! shares every other file with the previous version; compaction merges a partition's
//! files while appends go on; a version once opened stays readable, and bad rows publish
//! nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use meridian_catalog::append::{AppendSpec, Keep};
use meridian_catalog::{Catalog, Store};
use rand::{Rng, SeedableRng};

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("ra", DataType::Float64, true),
        Field::new("dec", DataType::Float64, true),
        Field::new("mag", DataType::Float64, true),
        Field::new("note", DataType::Utf8, true),
    ]))
}

fn batch(rows: &[(i64, f64, f64, f64)]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| format!("row {}", r.0)),
            )),
        ],
    )
    .unwrap()
}

/// Random rows in a patch of sky (a few order-5 cells), ids from `first`.
fn rows(seed: u64, first: i64, n: usize) -> Vec<(i64, f64, f64, f64)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            (
                first + i as i64,
                rng.random_range(150.0..153.0),
                rng.random_range(1.0..4.0),
                rng.random_range(15.0..25.0),
            )
        })
        .collect()
}

/// Every row of a catalog by id, checking the layout on the way: each partition's rows are
/// sorted by `_healpix_29`, inside its cell, and partitions are disjoint.
fn read_all(c: &Catalog) -> BTreeMap<i64, (f64, f64, f64)> {
    let mut out = BTreeMap::new();
    let mut ranges: Vec<std::ops::Range<u64>> = Vec::new();
    for p in c.partitions() {
        let r = p.hpx29_range();
        assert!(
            ranges.iter().all(|o| o.end <= r.start || r.end <= o.start),
            "{p} overlaps another partition"
        );
        ranges.push(r.clone());
        for b in files_of(c, p) {
            let mut last = 0u64;
            let h = b.column_by_name("_healpix_29").unwrap();
            let h = h.as_primitive::<Int64Type>();
            let id = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
            let ra = b
                .column_by_name("ra")
                .unwrap()
                .as_primitive::<Float64Type>();
            let dec = b
                .column_by_name("dec")
                .unwrap()
                .as_primitive::<Float64Type>();
            let mag = b
                .column_by_name("mag")
                .unwrap()
                .as_primitive::<Float64Type>();
            for i in 0..b.num_rows() {
                let hv = h.value(i) as u64;
                assert!(r.contains(&hv), "row {} outside {p}", id.value(i));
                assert!(hv >= last, "{p} is not sorted");
                last = hv;
                assert_eq!(
                    hv,
                    meridian_sky::healpix::hpx29_deg(ra.value(i), dec.value(i)),
                    "row {}",
                    id.value(i)
                );
                let old = out.insert(id.value(i), (ra.value(i), dec.value(i), mag.value(i)));
                assert!(old.is_none(), "row {} stored twice", id.value(i));
            }
        }
    }
    assert_eq!(c.total_rows().unwrap(), out.len() as u64);
    out
}

/// The rows of each file of partition `p`, a batch per file, with the catalog's columns.
fn files_of(c: &Catalog, p: &meridian_catalog::layout::Pixel) -> Vec<RecordBatch> {
    let dir = c.local_dir().unwrap();
    c.partition_files(p)
        .iter()
        .map(|f| {
            let file = std::fs::File::open(dir.join(f)).unwrap();
            let batches: Vec<RecordBatch> =
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap()
                    .map(|b| c.conform(b.unwrap()).unwrap())
                    .collect();
            arrow::compute::concat_batches(&c.schema(), &batches).unwrap()
        })
        .collect()
}

/// Rows of partition `p`, over its files.
fn rows_in(c: &Catalog, p: &meridian_catalog::layout::Pixel) -> usize {
    c.read_partition(p)
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum()
}

fn spec(keep: Keep) -> AppendSpec {
    let mut s = AppendSpec::new("ra", "dec");
    s.key = Some("id".into());
    s.keep = keep;
    s.max_rows = 300;
    s
}

#[test]
fn appends_store_every_row_once_and_split_partitions_that_grow() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let spec = spec(Keep::First);
    // An empty table first: served with its columns before any row arrives.
    let a = store.append("t", &schema(), &[], &spec).unwrap();
    assert_eq!((a.total_rows, a.partitions), (0, 0));
    let c = store.catalog("t").unwrap();
    assert_eq!(c.schema().field(0).name(), "_healpix_29");
    assert!(c.schema().field_with_name("note").is_ok());

    let mut want = BTreeMap::new();
    let mut first = 0;
    for round in 0..6u64 {
        let new = rows(round, first, 400);
        first += 400;
        // Half of the previous round comes again (a history repeated by later alerts).
        let mut given = new.clone();
        if round > 0 {
            given.extend(rows(round - 1, first - 800, 200));
        }
        for r in &new {
            want.insert(r.0, (r.1, r.2, r.3));
        }
        let a = store
            .append("t", &schema(), &[batch(&given)], &spec)
            .unwrap();
        assert_eq!(a.rows_in, given.len());
        assert_eq!(a.rows_added, 400, "round {round}");
        assert_eq!(a.total_rows, want.len() as u64);
        let c = store.catalog("t").unwrap();
        assert_eq!(read_all(&c), want, "round {round}");
        for p in c.partitions() {
            let n = rows_in(&c, p);
            assert!(n <= 300, "{p} holds {n} rows");
        }
    }
    let c = store.catalog("t").unwrap();
    assert!(
        c.partitions().iter().any(|p| p.order > 5),
        "no partition was split"
    );
}

#[test]
fn an_append_writes_only_its_new_rows_and_old_versions_stay_readable() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut spec = spec(Keep::First);
    spec.max_rows = 100_000;
    // Two far-apart patches.
    let mut far = rows(1, 10_000, 50);
    for r in &mut far {
        r.1 += 100.0;
        r.2 -= 40.0;
    }
    store
        .append(
            "t",
            &schema(),
            &[batch(&rows(0, 0, 50)), batch(&far)],
            &spec,
        )
        .unwrap();
    let v1 = store.current_version("t").unwrap().unwrap();
    let old = Catalog::open(&v1).unwrap();
    let before = read_all(&old);
    // New rows in the first patch, and rows already stored (dropped by key).
    let mut given = rows(2, 100, 20);
    given.extend(rows(0, 0, 10));
    let a = store
        .append("t", &schema(), &[batch(&given)], &spec)
        .unwrap();
    let v2 = store.current_version("t").unwrap().unwrap();
    assert_ne!(v1, v2);
    assert_eq!((a.rows_in, a.rows_added), (30, 20));
    assert!(a.partitions_written < a.partitions, "{a:?}");
    assert_eq!(a.files_written, a.partitions_written, "{a:?}");
    // Every file of the first version is in the second, the same file (a hard link); the
    // second has one more file in each partition the append touched, holding only new rows.
    use std::os::unix::fs::MetadataExt;
    let new = Catalog::open(&v2).unwrap();
    let (mut shared, mut written) = (0, 0);
    for p in new.partitions() {
        for f in new.partition_files(p) {
            let (a, b) = (v1.join(&f), v2.join(&f));
            if a.exists() {
                assert_eq!(
                    std::fs::metadata(&a).unwrap().ino(),
                    std::fs::metadata(&b).unwrap().ino()
                );
                shared += 1;
            } else {
                written += 1;
            }
        }
    }
    let old_files: usize = old
        .partitions()
        .iter()
        .map(|p| old.partition_files(p).len())
        .sum();
    assert_eq!((shared, written), (old_files, a.files_written));
    let added: usize = new
        .partitions()
        .iter()
        .flat_map(|p| files_of(&new, p).into_iter().skip(1))
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(added, 20);
    // A reader of the old version still reads it whole.
    assert_eq!(read_all(&Catalog::open(&v1).unwrap()), before);
    assert_eq!(read_all(&new).len(), before.len() + 20);
}

#[test]
fn partitions_stay_within_their_files_and_compaction_merges_them_while_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut spec = spec(Keep::First);
    spec.max_rows = 100_000;
    spec.max_files = 6;
    spec.compact_files = 3;
    let mut want = BTreeMap::new();
    let mut most_files = 0;
    for k in 0..12i64 {
        let r = rows(k as u64, k * 100, 100);
        for x in &r {
            want.insert(x.0, (x.1, x.2, x.3));
        }
        let a = store.append("t", &schema(), &[batch(&r)], &spec).unwrap();
        let c = store.catalog("t").unwrap();
        for p in c.partitions() {
            most_files = most_files.max(c.partition_files(p).len());
        }
        assert!(a.to_compact > 0 || k < 2, "{a:?}");
        assert_eq!(read_all(&c), want);
    }
    // Without compaction, a partition reaches `max_files` and the append merges it.
    assert_eq!(most_files, 6);
    let v = store.current_version("t").unwrap().unwrap();
    let held = Catalog::open(&v).unwrap();
    let done = store.compact("t", &spec, usize::MAX).unwrap();
    assert!(done.partitions > 0 && done.skipped == 0, "{done:?}");
    let c = store.catalog("t").unwrap();
    assert!(
        c.partitions()
            .iter()
            .all(|p| c.partition_files(p).len() < 3)
    );
    assert_eq!(read_all(&c), want);
    assert_eq!(c.total_rows().unwrap(), want.len() as u64);
    // The version a reader held stays whole.
    assert_eq!(read_all(&held), want);
    // Nothing more to do.
    assert_eq!(store.compact("t", &spec, usize::MAX).unwrap().partitions, 0);

    // Compactions racing appends lose and duplicate nothing.
    let first = 10_000i64;
    std::thread::scope(|s| {
        let (st, sp) = (store.clone(), spec.clone());
        let appender = s.spawn(move || {
            for k in 0..20i64 {
                let r = rows(100 + k as u64, first + k * 50, 50);
                st.append("t", &schema(), &[batch(&r)], &sp).unwrap();
            }
        });
        while !appender.is_finished() {
            store.compact("t", &spec, usize::MAX).unwrap();
        }
    });
    for k in 0..20i64 {
        for x in rows(100 + k as u64, first + k * 50, 50) {
            want.insert(x.0, (x.1, x.2, x.3));
        }
    }
    store.compact("t", &spec, usize::MAX).unwrap();
    let c = store.catalog("t").unwrap();
    assert_eq!(read_all(&c), want);
    assert!(
        c.partitions()
            .iter()
            .all(|p| c.partition_files(p).len() < 3)
    );
}

#[test]
fn compaction_splits_a_partition_that_outgrew_its_rows_and_queries_see_one_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut spec = spec(Keep::First);
    spec.max_rows = 250;
    spec.compact_files = 2;
    let mut want = BTreeMap::new();
    for k in 0..4i64 {
        let r = rows(k as u64, k * 60, 60);
        for x in &r {
            want.insert(x.0, (x.1, x.2, x.3));
        }
        store.append("t", &schema(), &[batch(&r)], &spec).unwrap();
    }
    let before = Catalog::open(&store.current_version("t").unwrap().unwrap()).unwrap();
    assert!(!before.single_file_partitions());
    store.compact("t", &spec, usize::MAX).unwrap();
    let c = store.catalog("t").unwrap();
    assert!(c.single_file_partitions());
    assert_eq!(read_all(&c), want);
    for p in c.partitions() {
        let n = rows_in(&c, p);
        assert!(n <= 250, "{p}: {n} rows");
    }
    // A region scan reads the same rows before and after.
    let region = meridian_sky::Region::Circle(
        meridian_sky::Circle::new(meridian_sky::SkyPoint::new(151.5, 2.5).unwrap(), 1.0).unwrap(),
    );
    let ids = |c: &Catalog| {
        let mut ids: Vec<i64> = c
            .scan(Some(&region))
            .unwrap()
            .flat_map(|b| {
                let b = b.unwrap();
                b.column_by_name("id")
                    .unwrap()
                    .as_primitive::<Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        ids.sort();
        ids
    };
    let (a, b) = (ids(&before), ids(&c));
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[test]
fn the_newest_row_of_a_key_replaces_the_stored_one_even_across_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut spec = spec(Keep::Last);
    spec.order = 8;
    // An object right at the edge of an order-8 cell, which moves 2" across it.
    let cell = meridian_sky::healpix::hash(8, &meridian_sky::SkyPoint::new(151.0, 2.0).unwrap());
    let (mut ra, dec) = (151.0, 2.0);
    while meridian_sky::healpix::hash(8, &meridian_sky::SkyPoint::new(ra, dec).unwrap()) == cell {
        ra += 0.5 / 3600.0;
    }
    let inside = ra - 1.0 / 3600.0;
    let outside = ra + 1.0 / 3600.0;
    let mut others = rows(5, 100, 30);
    others.push((1, inside, dec, 20.0));
    store
        .append("t", &schema(), &[batch(&others)], &spec)
        .unwrap();
    let a = store
        .append(
            "t",
            &schema(),
            &[batch(&[(1, outside, dec, 19.5), (2, 152.0, 3.0, 18.0)])],
            &spec,
        )
        .unwrap();
    assert_eq!((a.rows_added, a.rows_replaced), (2, 1));
    let got = read_all(&store.catalog("t").unwrap());
    assert_eq!(got.len(), 32);
    assert_eq!(got[&1], (outside, dec, 19.5));
    // Within one append, the last row of a key wins.
    store
        .append(
            "t",
            &schema(),
            &[
                batch(&[(2, 152.0, 3.0, 17.0)]),
                batch(&[(2, 152.0, 3.0, 16.0)]),
            ],
            &spec,
        )
        .unwrap();
    assert_eq!(read_all(&store.catalog("t").unwrap())[&2].2, 16.0);
}

#[test]
fn bad_rows_publish_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let spec = spec(Keep::First);
    store
        .append("t", &schema(), &[batch(&rows(0, 0, 10))], &spec)
        .unwrap();
    let v = store.current_version("t").unwrap();
    let e = store
        .append("t", &schema(), &[batch(&[(99, f64::NAN, 1.0, 1.0)])], &spec)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a position") && e.contains("'t'"), "{e}");
    let e = store
        .append("t", &schema(), &[batch(&[(99, 10.0, 95.0, 1.0)])], &spec)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a position"), "{e}");
    // A value that cannot be stored in its column's type.
    let texty = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("ra", DataType::Float64, true),
        Field::new("dec", DataType::Float64, true),
        Field::new("mag", DataType::Utf8, true),
    ]));
    let b = RecordBatch::try_new(
        texty.clone(),
        vec![
            Arc::new(Int64Array::from(vec![7])),
            Arc::new(Float64Array::from(vec![151.0])),
            Arc::new(Float64Array::from(vec![2.0])),
            Arc::new(StringArray::from(vec!["bright"])),
        ],
    )
    .unwrap();
    let e = store
        .append("t", &texty, &[b], &spec)
        .unwrap_err()
        .to_string();
    assert!(e.contains("'mag'") && e.contains("cannot be stored"), "{e}");
    assert_eq!(store.current_version("t").unwrap(), v);
    assert_eq!(read_all(&store.catalog("t").unwrap()).len(), 10);
    // A catalog served in place is not appended to.
    let other = tempfile::tempdir().unwrap();
    let ext = Store::open(other.path()).unwrap();
    ext.append("e", &schema(), &[batch(&rows(0, 0, 5))], &spec)
        .unwrap();
    store
        .register_external("ext", &ext.current_version("e").unwrap().unwrap())
        .unwrap();
    let e = store
        .append("ext", &schema(), &[batch(&rows(1, 50, 5))], &spec)
        .unwrap_err()
        .to_string();
    assert!(e.contains("served in place"), "{e}");
}

#[test]
fn concurrent_appenders_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let spec = spec(Keep::First);
    std::thread::scope(|s| {
        for t in 0..4i64 {
            let (store, spec) = (store.clone(), spec.clone());
            s.spawn(move || {
                for k in 0..5i64 {
                    let first = (t * 5 + k) * 100;
                    store
                        .append(
                            "t",
                            &schema(),
                            &[batch(&rows((t * 5 + k) as u64, first, 100))],
                            &spec,
                        )
                        .unwrap();
                }
            });
        }
    });
    let got = read_all(&store.catalog("t").unwrap());
    assert_eq!(got.len(), 2000);
    assert!(got.keys().copied().eq(0..2000));
    // Nothing left behind in staging.
    let staging: Vec<_> = std::fs::read_dir(dir.path().join(".staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty());
}

#[test]
fn rows_with_a_new_column_widen_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let spec = spec(Keep::First);
    store
        .append("t", &schema(), &[batch(&rows(0, 0, 200))], &spec)
        .unwrap();
    // Newer rows (a newer alert schema) carry a column more, in one of the partitions.
    let mut fields: Vec<Field> = schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("flux", DataType::Float64, true));
    let wider = Arc::new(Schema::new(fields));
    let base = batch(&[(1000, 151.0, 2.0, 20.0)]);
    let mut columns = base.columns().to_vec();
    columns.push(Arc::new(Float64Array::from(vec![42.0])));
    let b = RecordBatch::try_new(wider.clone(), columns).unwrap();
    let a = store.append("t", &wider, &[b], &spec).unwrap();
    assert_eq!(a.total_rows, 201);
    let c = store.catalog("t").unwrap();
    assert_eq!(c.schema().fields().last().unwrap().name(), "flux");
    let mut seen = 0;
    for p in c.partitions() {
        for b in c.read_partition(p).unwrap() {
            let id = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
            // Partitions written before may lack the column (readers see nulls).
            if let Some(flux) = b.column_by_name("flux") {
                let flux = flux.as_primitive::<Float64Type>();
                for i in 0..b.num_rows() {
                    if id.value(i) == 1000 {
                        assert_eq!(flux.value(i), 42.0);
                        seen += 1;
                    } else {
                        assert!(flux.is_null(i));
                    }
                }
            }
        }
    }
    assert_eq!(seen, 1);
    assert_eq!(read_all(&c).len(), 201);
}
