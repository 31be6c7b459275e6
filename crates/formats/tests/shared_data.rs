//! Reads the real catalogs and VOTables of ../shared/data and checks row counts (from the
//! data README), types, units and a few known values.

use std::path::PathBuf;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float64Type};
use meridian_formats::{ColumnMeta, ReadOptions, open};

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
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

fn read_all(path: &std::path::Path) -> meridian_formats::Result<usize> {
    let mut n = 0;
    for b in open(path, &ReadOptions::default())? {
        n += b?.num_rows();
    }
    Ok(n)
}

#[test]
fn tsv_with_comments_and_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.tsv");
    std::fs::write(
        &p,
        "# a comment line\nid\tra\tdec\tname\n1\t10.5\t-3\tfoo\n2\t\t4.25\t\n",
    )
    .unwrap();
    let mut r = open(&p, &ReadOptions::default()).unwrap();
    let b = r.next().unwrap().unwrap();
    assert_eq!(b.num_rows(), 2);
    assert_eq!(b.schema().field(1).data_type(), &DataType::Float64);
    assert_eq!(b.column(1).null_count(), 1);
    assert_eq!(b.column(3).null_count(), 1);
}

#[test]
fn plain_fits_and_truncated_fits() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = Vec::new();
    flate2::read::MultiGzDecoder::new(
        std::fs::File::open(shared("catalogs/tycho2_subset.fits.gz")).unwrap(),
    )
    .read_to_end(&mut bytes)
    .unwrap();
    let plain = dir.path().join("tycho.fits");
    std::fs::write(&plain, &bytes).unwrap();
    assert_eq!(read_all(&plain).unwrap(), 1_871_011);
    // Cut inside the data: the error says which row the table stops at.
    let cut = dir.path().join("cut.fits");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let e = read_all(&cut).unwrap_err().to_string();
    assert!(
        e.contains("cut.fits") && e.contains("truncated") && e.contains("row"),
        "{e}"
    );
    // Cut inside the header.
    let head = dir.path().join("head.fits");
    std::fs::write(&head, &bytes[..1000]).unwrap();
    let e = read_all(&head).unwrap_err().to_string();
    assert!(e.contains("head.fits") && e.contains("truncated"), "{e}");
}

#[test]
fn malformed_and_truncated_votables() {
    let dir = tempfile::tempdir().unwrap();
    let header = r#"<?xml version="1.0"?><VOTABLE version="1.4"><RESOURCE><TABLE>
<FIELD name="ra" datatype="double" unit="deg"/><FIELD name="n" datatype="int"/>"#;
    let bad_value = dir.path().join("bad.vot");
    std::fs::write(&bad_value, format!("{header}<DATA><TABLEDATA><TR><TD>1.5</TD><TD>2</TD></TR><TR><TD>2.5</TD><TD>x7</TD></TR></TABLEDATA></DATA></TABLE></RESOURCE></VOTABLE>")).unwrap();
    let e = read_all(&bad_value).unwrap_err().to_string();
    assert!(
        e.contains("bad.vot") && e.contains("row 2") && e.contains("'n'") && e.contains("x7"),
        "{e}"
    );
    let cut = dir.path().join("cut.vot");
    std::fs::write(
        &cut,
        format!("{header}<DATA><TABLEDATA><TR><TD>1.5</TD><TD>2</TD></TR><TR><TD>2"),
    )
    .unwrap();
    let e = read_all(&cut).unwrap_err().to_string();
    assert!(e.contains("cut.vot") && e.contains("truncated"), "{e}");
    let broken = dir.path().join("broken.xml");
    std::fs::write(
        &broken,
        format!("{header}<DATA><TABLEDATA><TR><TD>1</TD></TX></TABLEDATA>"),
    )
    .unwrap();
    let e = read_all(&broken).unwrap_err().to_string();
    assert!(e.contains("broken.xml"), "{e}");
    // BINARY2 cut mid-row: base64 of a 12-byte row plus a null mask, then half a row.
    let b2 = dir.path().join("b2.vot");
    std::fs::write(&b2, format!("{header}<DATA><BINARY2><STREAM encoding=\"base64\">AD/4AAAAAAAAAAAAAgBABAAA</STREAM></BINARY2></DATA></TABLE></RESOURCE></VOTABLE>")).unwrap();
    let e = read_all(&b2).unwrap_err().to_string();
    assert!(
        e.contains("b2.vot") && e.contains("row 2") && e.contains("truncated"),
        "{e}"
    );
}
