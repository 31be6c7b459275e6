//! Reads the real catalogs and VOTables of ../shared/data and checks row counts (from the
//! data README), types, units and a few known values.

use std::path::PathBuf;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use meridian_formats::{ColumnMeta, ReadOptions, open};

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(rel)
}

fn count(rel: &str) -> (usize, arrow::datatypes::SchemaRef) {
    let r = open(&shared(rel), &ReadOptions::default()).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let schema = r.schema();
    let mut n = 0;
    for b in r {
        let b = b.unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(b.schema().fields(), schema.fields());
        n += b.num_rows();
    }
    (n, schema)
}

#[test]
fn gaia_csv_gz() {
    let (n, schema) = count("catalogs/gaia_dr3_bright.csv.gz");
    assert_eq!(n, 482_106);
    assert_eq!(
        schema.field_with_name("source_id").unwrap().data_type(),
        &DataType::Int64
    );
    assert_eq!(
        schema.field_with_name("ra").unwrap().data_type(),
        &DataType::Float64
    );
}

#[test]
fn tycho2_fits_gz() {
    let (n, schema) = count("catalogs/tycho2_subset.fits.gz");
    assert_eq!(n, 1_871_011);
    let ra = schema
        .fields()
        .iter()
        .find(|f| f.name().eq_ignore_ascii_case("ra"))
        .unwrap();
    assert_eq!(
        ColumnMeta::of(ra)
            .unit
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("deg")
    );
}

#[test]
fn hipparcos_votable_binary2() {
    let (n, schema) = count("catalogs/hipparcos2.vot");
    assert_eq!(n, 117_955);
    let plx = schema.field_with_name("plx").unwrap();
    assert!(ColumnMeta::of(plx).unit.is_some());
}

#[test]
fn openngc_parquet_with_nulls() {
    let r = open(&shared("catalogs/openngc.parquet"), &ReadOptions::default()).unwrap();
    let mut n = 0;
    let mut null_z = 0;
    for b in r {
        let b = b.unwrap();
        n += b.num_rows();
        null_z += b.column_by_name("redshift").unwrap().null_count();
    }
    assert_eq!(n, 14_033);
    assert!(null_z > 0);
}

#[test]
fn every_shared_votable_reads() {
    let dir = shared("votable");
    let mut read = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let r = open(&path, &ReadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
        let mut rows = 0;
        for b in r {
            rows += b
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .num_rows();
        }
        assert!(rows > 0, "{}", path.display());
        read += 1;
    }
    assert!(read >= 10);
}

#[test]
fn gaia_first_row_value() {
    let mut r = open(
        &shared("catalogs/gaia_dr3_bright.csv.gz"),
        &ReadOptions::default(),
    )
    .unwrap();
    let b = r.next().unwrap().unwrap();
    let ra = b
        .column_by_name("ra")
        .unwrap()
        .as_primitive::<Float64Type>();
    assert!((0.0..360.0).contains(&ra.value(0)));
}
