//! Ingest of real catalogs and of bad input: each bad case fails with a message naming the
//! file, the row or line and the column, and leaves no catalog behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use meridian_catalog::ingest::ingest;
use meridian_catalog::{Error, IngestOptions, Store};
use meridian_sky::{Circle, Region, SkyPoint};

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../../../shared/data")
        .join(rel)
}

fn quiet(_: &meridian_catalog::IngestProgress) {}

fn small_opts() -> IngestOptions {
    IngestOptions {
        partition_rows: 20_000,
        row_group_rows: 5_000,
        memory_budget_bytes: 64 << 20,
        ..Default::default()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn gzip(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    let mut e = flate2::write::GzEncoder::new(
        std::fs::File::create(&p).unwrap(),
        flate2::Compression::default(),
    );
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap();
    p
}

/// Ingests and expects failure; checks nothing was published or left in staging.
fn expect_error(text_file: PathBuf, opts: &IngestOptions) -> String {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("catalogs")).unwrap();
    let err = ingest(&store, "bad", &[text_file], opts, &quiet).expect_err("ingest should fail");
    assert!(store.list().unwrap().is_empty(), "nothing published");
    let staging: Vec<_> = std::fs::read_dir(dir.path().join("catalogs/.staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "staging cleaned up");
    err.to_string()
}

#[test]
fn gaia_csv_gz_ingests_and_cones_match_brute_force() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let input = shared("catalogs/gaia_dr3_bright.csv.gz");
    let opts = IngestOptions {
        partition_rows: 50_000,
        page_rows: 1_000,
        ..small_opts()
    };
    let report = ingest(&store, "gaia", std::slice::from_ref(&input), &opts, &quiet).unwrap();
    assert_eq!(report.rows, 482_106);
    assert!(report.partitions > 10);
    assert!(report.margin_rows > 0);
    let cat = store.catalog("gaia").unwrap();
    assert_eq!(cat.total_rows().unwrap(), 482_106);
    assert!(cat.margin().is_some());
    // Every row lands in exactly one partition.
    let all: usize = cat.scan(None).unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(all, 482_106);
    // Cone at the north celestial pole and across RA = 0.
    let mut input_rows = Vec::new();
    for b in meridian_formats::open(&input, &Default::default()).unwrap() {
        let b = b.unwrap();
        use arrow::array::AsArray;
        let ra = b
            .column_by_name("ra")
            .unwrap()
            .as_primitive::<arrow::datatypes::Float64Type>()
            .clone();
        let dec = b
            .column_by_name("dec")
            .unwrap()
            .as_primitive::<arrow::datatypes::Float64Type>()
            .clone();
        for i in 0..b.num_rows() {
            input_rows.push((ra.value(i), dec.value(i)));
        }
    }
    for (ra, dec, r) in [
        (0.0, 89.9, 2.0),
        (0.2, -1.0, 1.5),
        (359.9, 30.0, 0.7),
        (123.4, -89.5, 3.0),
    ] {
        let center = SkyPoint::new(ra, dec).unwrap();
        let region = Region::Circle(Circle::new(center, r).unwrap());
        let expected = input_rows
            .iter()
            .filter(|(a, d)| center.separation_deg(&SkyPoint::new(*a, *d).unwrap()) <= r)
            .count();
        let mut scan = cat.scan(Some(&region)).unwrap();
        let got: usize = scan.by_ref().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(got, expected, "cone ({ra}, {dec}, {r})");
        assert!(scan.stats().partitions_read < scan.stats().partitions_total);
    }
    // Row groups and pages have the sizes asked for, and every page is in the offset index
    // (which lets a cone decode only the pages it overlaps).
    for p in cat.partitions().iter().take(3) {
        use parquet::file::reader::FileReader;
        let file = std::fs::File::open(p.path_in(cat.local_dir().unwrap())).unwrap();
        let options = parquet::file::serialized_reader::ReadOptionsBuilder::new()
            .with_page_index()
            .build();
        let reader =
            parquet::file::serialized_reader::SerializedFileReader::new_with_options(file, options)
                .unwrap();
        let meta = reader.metadata();
        let index = meta.offset_index().expect("offset index");
        // Page statistics (the column index) on the sort key and on the position columns:
        // a cross-match with a few positions reads only the pages near them.
        let columns = meta.column_index().expect("column index");
        let schema = meta.file_metadata().schema_descr();
        for (g, _) in meta.row_groups().iter().enumerate() {
            for (c, name) in ["_healpix_29", "ra", "dec"].iter().map(|n| {
                let c = (0..schema.num_columns())
                    .find(|&i| schema.column(i).name() == *n)
                    .unwrap();
                (c, n)
            }) {
                assert!(
                    !matches!(
                        columns[g][c],
                        parquet::file::page_index::column_index::ColumnIndexMetaData::NONE
                    ),
                    "no page statistics on {name}"
                );
            }
        }
        for (g, group) in meta.row_groups().iter().enumerate() {
            assert!(group.num_rows() <= 5_000);
            for column in &index[g] {
                let starts: Vec<i64> = column
                    .page_locations()
                    .iter()
                    .map(|l| l.first_row_index)
                    .chain([group.num_rows()])
                    .collect();
                // A page ends once a write takes it to 1,000 rows.
                assert!(starts.windows(2).all(|w| w[1] - w[0] < 2_000), "{starts:?}");
                assert!(group.num_rows() <= 1_000 || starts.len() > 2, "{starts:?}");
            }
        }
    }
    // Column metadata from the input survives (CSV has none; the index column has a UCD).
    let cols = cat.columns();
    assert_eq!(cols[0].name, "_healpix_29");
    assert_eq!(cols[0].meta.ucd.as_deref(), Some("pos.healpix"));
}

#[test]
fn tycho_fits_units_survive() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let opts = IngestOptions {
        partition_rows: 200_000,
        margin_arcsec: 0.0,
        ..small_opts()
    };
    let r = ingest(
        &store,
        "tycho2",
        &[shared("catalogs/tycho2_subset.fits.gz")],
        &opts,
        &quiet,
    )
    .unwrap();
    assert_eq!(r.rows, 1_871_011);
    let cat = store.catalog("tycho2").unwrap();
    let vt = cat
        .columns()
        .into_iter()
        .find(|c| c.name == "vt_mag")
        .unwrap();
    assert_eq!(vt.meta.unit.as_deref(), Some("mag"));
    assert!(cat.margin().is_none());
}

#[test]
fn hipparcos_votable_and_openngc_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let r = ingest(
        &store,
        "hip",
        &[shared("catalogs/hipparcos2.vot")],
        &small_opts(),
        &quiet,
    )
    .unwrap();
    assert_eq!(r.rows, 117_955);
    let plx = store
        .catalog("hip")
        .unwrap()
        .columns()
        .into_iter()
        .find(|c| c.name == "plx")
        .unwrap();
    assert!(plx.meta.unit.is_some());
    // OpenNGC has 7 objects without a position: refused by default, skipped on request.
    let err = ingest(
        &store,
        "ngc",
        &[shared("catalogs/openngc.parquet")],
        &small_opts(),
        &quiet,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Position { .. }), "{err}");
    assert!(err.to_string().contains("openngc.parquet: row"), "{err}");
    let mut opts = small_opts();
    opts.read.skip_bad_rows = true;
    let r = ingest(
        &store,
        "ngc",
        &[shared("catalogs/openngc.parquet")],
        &opts,
        &quiet,
    )
    .unwrap();
    assert_eq!(r.rows, 14_026);
    assert_eq!(r.bad_rows.count, 7);
    assert!(
        r.bad_rows.examples[0].contains("null"),
        "{:?}",
        r.bad_rows.examples
    );
}

#[test]
fn reingest_replaces_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = write(dir.path(), "a.csv", "id,ra,dec\n1,10,10\n2,20,20\n");
    let b = write(
        dir.path(),
        "b.csv",
        "id,ra,dec\n1,10,10\n2,20,20\n3,30,30\n",
    );
    ingest(&store, "t", &[a], &small_opts(), &quiet).unwrap();
    let first = std::fs::read_link(dir.path().join("t")).unwrap();
    assert_eq!(store.catalog("t").unwrap().total_rows().unwrap(), 2);
    ingest(&store, "t", std::slice::from_ref(&b), &small_opts(), &quiet).unwrap();
    assert_eq!(store.catalog("t").unwrap().total_rows().unwrap(), 3);
    assert!(!dir.path().join(&first).exists(), "old version removed");
    // A failed re-ingest leaves the current version in place.
    let bad = write(dir.path(), "c.csv", "id,ra,dec\n1,10,100\n");
    assert!(ingest(&store, "t", &[bad], &small_opts(), &quiet).is_err());
    assert_eq!(store.catalog("t").unwrap().total_rows().unwrap(), 3);
    // Unknown names get a suggestion.
    let e = store.catalog("T").unwrap_err().to_string();
    assert!(e.contains("did you mean 't'"), "{e}");
}

#[test]
fn short_row_names_line() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "short.csv", "id,ra,dec\n1,10,10\n2,20\n");
    let e = expect_error(f, &small_opts());
    assert!(
        e.contains("short.csv") && e.contains("line 3") && e.contains("2 fields"),
        "{e}"
    );
}

#[test]
fn wrong_type_names_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("id,ra,dec\n");
    for i in 0..50 {
        text.push_str(&format!("{i},{}.5,1.0\n", i));
    }
    // Past the inference sample, a value that is not a number.
    let opts = IngestOptions {
        read: meridian_formats::ReadOptions {
            infer_rows: 10,
            ..Default::default()
        },
        ..small_opts()
    };
    text.push_str("51,abc,2.0\n");
    let f = write(dir.path(), "types.csv", &text);
    let e = expect_error(f, &opts);
    assert!(
        e.contains("types.csv") && e.contains("line 52") && e.contains("'ra'") && e.contains("abc"),
        "{e}"
    );
}

#[test]
fn nan_and_out_of_range_coordinates() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "nan.csv", "id,ra,dec\n1,10,10\n2,nan,20\n");
    let e = expect_error(f, &small_opts());
    assert!(
        e.contains("nan.csv") && e.contains("row 2") && e.contains("'ra'") && e.contains("finite"),
        "{e}"
    );
    let f = write(dir.path(), "dec.csv", "id,ra,dec\n1,10,10\n2,20,95.5\n");
    let e = expect_error(f, &small_opts());
    assert!(
        e.contains("row 2") && e.contains("'dec'") && e.contains("95.5"),
        "{e}"
    );
}

#[test]
fn missing_position_column() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "nopos.csv", "id,x,y\n1,10,10\n");
    let e = expect_error(f, &small_opts());
    assert!(
        e.contains("nopos.csv") && e.contains("missing position column") && e.contains("id, x, y"),
        "{e}"
    );
    let f = write(dir.path(), "named.csv", "id,alpha_x,dec\n1,10,10\n");
    let opts = IngestOptions {
        ra_column: Some("ra_j2000".into()),
        ..small_opts()
    };
    let e = expect_error(f, &opts);
    assert!(e.contains("'ra_j2000'"), "{e}");
}

#[test]
fn truncated_gzip() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("id,ra,dec\n");
    for i in 0..20_000 {
        text.push_str(&format!("{i},{},{}\n", i % 360, (i % 170) as f64 - 85.0));
    }
    let full = gzip(dir.path(), "full.csv.gz", &text);
    let bytes = std::fs::read(&full).unwrap();
    let cut = dir.path().join("cut.csv.gz");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = expect_error(cut, &small_opts());
    assert!(e.contains("cut.csv.gz") && e.contains("truncated"), "{e}");
}

#[test]
fn file_not_what_its_name_says() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "table.fits", "id,ra,dec\n1,2,3\n");
    let e = expect_error(f, &small_opts());
    assert!(
        e.contains("table.fits") && e.contains("looks like text"),
        "{e}"
    );
    let f = write(dir.path(), "table.csv.gz", "id,ra,dec\n1,2,3\n");
    let e = expect_error(f, &small_opts());
    assert!(e.contains("not gzip"), "{e}");
    let f = dir.path().join("table.parquet");
    std::fs::copy(shared("catalogs/tycho2_subset.fits.gz"), &f).unwrap();
    let e = expect_error(f, &small_opts());
    assert!(e.contains("table.parquet") && e.contains("gzip"), "{e}");
    let f = write(dir.path(), "notes.txt", "hello");
    let e = expect_error(f, &small_opts());
    assert!(e.contains("unknown table format"), "{e}");
}

#[test]
fn skip_bad_rows_reports_count_and_places() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("c")).unwrap();
    let f = write(
        dir.path(),
        "mixed.csv",
        "id,ra,dec\n1,10,10\n2,20\n3,x,5\n4,30,-91\n5,40,40\n",
    );
    let mut opts = small_opts();
    opts.read.skip_bad_rows = true;
    let r = ingest(&store, "mixed", &[f], &opts, &quiet).unwrap();
    assert_eq!(r.rows, 2);
    assert_eq!(r.bad_rows.count, 3);
    let all = r.bad_rows.examples.join("\n");
    assert!(
        all.contains("line 3") && all.contains("line 4") && all.contains("-91"),
        "{all}"
    );
}

#[test]
fn schema_file_overrides_types_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("c")).unwrap();
    let f = write(
        dir.path(),
        "s.csv",
        "id,ra,dec,flag\n1,10,10,1\n2,20,20,0\n",
    );
    let schema = write(
        dir.path(),
        "schema.toml",
        "[[column]]\nname = \"ra\"\nunit = \"deg\"\nucd = \"pos.eq.ra\"\n\n[[column]]\nname = \"flag\"\ntype = \"int8\"\ndescription = \"quality\"\n",
    );
    let mut opts = small_opts();
    opts.read.schema = Some(meridian_formats::SchemaOverride::load(&schema).unwrap());
    ingest(&store, "s", std::slice::from_ref(&f), &opts, &quiet).unwrap();
    let cols = store.catalog("s").unwrap().columns();
    let ra = cols.iter().find(|c| c.name == "ra").unwrap();
    assert_eq!(ra.meta.unit.as_deref(), Some("deg"));
    let flag = cols.iter().find(|c| c.name == "flag").unwrap();
    assert_eq!(flag.data_type, arrow::datatypes::DataType::Int8);
    assert_eq!(flag.meta.description.as_deref(), Some("quality"));
    // A schema naming a column that is not there is an error naming both files.
    let bad = write(dir.path(), "bad.toml", "[[column]]\nname = \"nope\"\n");
    opts.read.schema = Some(meridian_formats::SchemaOverride::load(&bad).unwrap());
    let e = ingest(&store, "s2", &[f], &opts, &quiet)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.toml") && e.contains("'nope'") && e.contains("s.csv"),
        "{e}"
    );
}

#[test]
fn inputs_with_different_columns_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("c")).unwrap();
    let a = write(dir.path(), "a.csv", "id,ra,dec\n1,10,10\n");
    let b = write(dir.path(), "b.csv", "id,ra,dec,extra\n1,10,10,3\n");
    let e = ingest(&store, "ab", &[a, b], &small_opts(), &quiet)
        .unwrap_err()
        .to_string();
    assert!(e.contains("b.csv") && e.contains("columns differ"), "{e}");
}

#[test]
fn dense_input_splits_buckets_and_partitions() {
    // 60k rows in a 1-degree field with a tiny memory budget: buckets are split again and
    // partitions go deep; every row is still written exactly once.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("c")).unwrap();
    let mut text = String::from("id,ra,dec\n");
    for i in 0..60_000u64 {
        let x = (i.wrapping_mul(2654435761) % 100_000) as f64 / 100_000.0;
        let y = (i.wrapping_mul(40503) % 100_000) as f64 / 100_000.0;
        text.push_str(&format!("{i},{},{}\n", 150.0 + x, 2.0 + y));
    }
    let f = write(dir.path(), "dense.csv", &text);
    let opts = IngestOptions {
        partition_rows: 5_000,
        memory_budget_bytes: 1 << 20,
        ..small_opts()
    };
    let r = ingest(&store, "dense", &[f], &opts, &quiet).unwrap();
    assert_eq!(r.rows, 60_000);
    assert!(r.max_order >= 6, "max order {}", r.max_order);
    let cat = store.catalog("dense").unwrap();
    let n: usize = cat.scan(None).unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 60_000);
}

/// Rows computed in the process (as a cross-match's are) ingest without a file: the
/// schema's units reach the catalog, every row lands once and a cone finds what brute force
/// does; a bad position names the source and its row, and an error of the source stops the
/// ingest; neither leaves a catalog behind.
#[test]
fn batches_ingest_like_files() {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int64Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    let unit = |u: &str| std::collections::HashMap::from([("unit".to_string(), u.to_string())]);
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("ra", DataType::Float64, false).with_metadata(unit("deg")),
        Field::new("dec", DataType::Float64, false).with_metadata(unit("deg")),
    ]));
    // Deterministic positions spread over the sky (a Fibonacci lattice), 4 batches.
    let n = 20_000usize;
    let points: Vec<(f64, f64)> = (0..n)
        .map(|i| {
            let z = 1.0 - 2.0 * (i as f64 + 0.5) / n as f64;
            let ra = (i as f64 * 137.507_764_050_037_85).rem_euclid(360.0);
            (ra, z.asin().to_degrees())
        })
        .collect();
    let batch_of = |rows: &[(f64, f64)], first: usize| {
        RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    (first..first + rows.len()).map(|i| i as i64),
                )),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|p| p.0))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|p| p.1))),
            ],
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("catalogs")).unwrap();
    let mut batches = points
        .chunks(5_000)
        .enumerate()
        .map(|(k, c)| Ok(batch_of(c, k * 5_000)));
    let report = meridian_catalog::ingest::ingest_batches(
        &store,
        "computed",
        schema.clone(),
        &mut batches,
        "the test's rows",
        &small_opts(),
        &quiet,
    )
    .unwrap();
    assert_eq!(report.rows, n as u64);
    let cat = store.catalog("computed").unwrap();
    let all: usize = cat.scan(None).unwrap().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(all, n);
    let ra = cat.columns().into_iter().find(|c| c.name == "ra").unwrap();
    assert_eq!(ra.meta.unit.as_deref(), Some("deg"));
    let center = SkyPoint::new(359.5, 10.0).unwrap();
    let region = Region::Circle(Circle::new(center, 8.0).unwrap());
    let expected = points
        .iter()
        .filter(|(a, d)| center.separation_deg(&SkyPoint::new(*a, *d).unwrap()) <= 8.0)
        .count();
    assert!(expected > 50);
    let got: usize = cat
        .scan(Some(&region))
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(got, expected);

    // A NaN Dec in the second batch: named with the source and its row (from 1).
    let mut bad = points[..10].to_vec();
    bad[7].1 = f64::NAN;
    let mut batches = [batch_of(&points[10..20], 0), batch_of(&bad, 10)]
        .into_iter()
        .map(Ok);
    let e = meridian_catalog::ingest::ingest_batches(
        &store,
        "bad",
        schema.clone(),
        &mut batches,
        "the test's rows",
        &small_opts(),
        &quiet,
    )
    .expect_err("a NaN position fails")
    .to_string();
    assert!(
        e.contains("the test's rows") && e.contains("row 18") && e.contains("'dec'"),
        "{e}"
    );
    // The source fails after a batch.
    let mut batches = [
        Ok(batch_of(&points[..10], 0)),
        Err(Error::Invalid("the source broke".into())),
    ]
    .into_iter();
    let e = meridian_catalog::ingest::ingest_batches(
        &store,
        "broken",
        schema,
        &mut batches,
        "the test's rows",
        &small_opts(),
        &quiet,
    )
    .expect_err("a failing source fails the ingest")
    .to_string();
    assert!(e.contains("the source broke"), "{e}");
    assert_eq!(store.list().unwrap(), ["computed"]);
    let staging: Vec<_> = std::fs::read_dir(dir.path().join("catalogs/.staging"))
        .unwrap()
        .collect();
    assert!(staging.is_empty(), "staging cleaned up");
}
