//! Hostile inputs: sizes declared in headers that the file does not hold, decompression
//! bombs, over-long records and too many columns are refused with a limit or format error,
//! quickly and before memory is taken for them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use meridian_formats::{Error, InputLimits, ReadOptions, open};

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).unwrap();
    p
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// gzip members that expand to `text`, then `repeat` times `chunk`: a small file that
/// expands to a large one (a decoder reads the members one after another).
fn gzip_bomb(text: &[u8], chunk: &[u8], repeat: usize) -> Vec<u8> {
    let member = gzip(chunk);
    let mut out = gzip(text);
    for _ in 0..repeat {
        out.extend_from_slice(&member);
    }
    out
}

/// Reads the whole table; the first error.
/// Options that hold a file's (decompressed) table data to `bytes`.
fn with_data_limit(bytes: u64) -> ReadOptions {
    ReadOptions {
        limits: InputLimits {
            max_data_bytes: Some(bytes),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn read_all(path: &Path, options: &ReadOptions) -> Result<usize, Error> {
    let mut rows = 0;
    for b in open(path, options)? {
        rows += b?.num_rows();
    }
    Ok(rows)
}

/// The error of reading `path`, which must come within a few seconds.
fn fails(path: &Path, options: &ReadOptions) -> Error {
    let t = Instant::now();
    let e = read_all(path, options).expect_err("a hostile input is refused");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    e
}

fn card(text: &str) -> Vec<u8> {
    let mut c = text.as_bytes().to_vec();
    assert!(c.len() <= 80);
    c.resize(80, b' ');
    c
}

fn header(cards: &[&str]) -> Vec<u8> {
    let mut h: Vec<u8> = cards.iter().flat_map(|c| card(c)).collect();
    h.extend(card("END"));
    h.resize(h.len().div_ceil(2880) * 2880, b' ');
    h
}

/// A FITS file whose table header declares `naxis1` x `naxis2` bytes and `tform1`, with
/// `data` bytes of table data after it.
fn fits(naxis1: &str, naxis2: &str, tform1: &str, data: usize) -> Vec<u8> {
    let mut f = header(&[
        "SIMPLE  =                    T",
        "BITPIX  =                    8",
        "NAXIS   =                    0",
        "EXTEND  =                    T",
    ]);
    f.extend(header(&[
        "XTENSION= 'BINTABLE'",
        "BITPIX  =                    8",
        "NAXIS   =                    2",
        &format!("NAXIS1  = {naxis1:>20}"),
        &format!("NAXIS2  = {naxis2:>20}"),
        "PCOUNT  =                    0",
        "GCOUNT  =                    1",
        "TFIELDS =                    1",
        "TTYPE1  = 's'",
        &format!("TFORM1  = '{tform1}'"),
    ]));
    f.extend(std::iter::repeat_n(b'x', data));
    f
}

#[test]
fn a_fits_header_bomb_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // 8.6 kB declaring 64 GB of rows.
    let bomb = fits("1000000", "65536", "1000000A", 2880);
    assert!(bomb.len() < 9000);
    let plain = write(dir.path(), "bomb.fits", &bomb);
    let e = fails(&plain, &ReadOptions::default());
    assert!(matches!(e, Error::Format { .. }), "{e}");
    assert!(e.to_string().contains("only 2880 bytes follow"), "{e}");
    // Compressed, its size is not known in advance: the data limit refuses it at once...
    let packed = write(dir.path(), "bomb.fits.gz", &gzip(&bomb));
    let limited = with_data_limit(256 << 20);
    let e = fails(&packed, &limited);
    assert!(
        e.is_limit() && e.to_string().contains("limit of 268435456 bytes"),
        "{e}"
    );
    // ... and without one, memory follows the bytes that are there: the table is truncated.
    let e = fails(&packed, &ReadOptions::default());
    assert!(e.to_string().contains("truncated"), "{e}");
    // Rows longer than a record may be.
    let wide = write(
        dir.path(),
        "wide.fits",
        &fits("100000000", "1", "100000000A", 0),
    );
    let e = fails(&wide, &ReadOptions::default());
    assert!(e.is_limit() && e.to_string().contains("NAXIS1"), "{e}");
}

#[test]
fn fits_sizes_that_overflow_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    for (naxis1, naxis2, tform) in [
        ("8", "9223372036854775807", "1D"),
        ("8", "-5", "1D"),
        ("8", "1", "99999999999999999999999A"),
        ("8", "1", "2305843009213693952D"),
        ("8", "1", "9D"),
    ] {
        let p = write(dir.path(), "o.fits", &fits(naxis1, naxis2, tform, 2880));
        let e = fails(&p, &ReadOptions::default());
        assert!(matches!(e, Error::Format { .. }), "{naxis2} {tform}: {e}");
    }
}

#[test]
fn a_gzip_bomb_is_stopped_early() {
    let dir = tempfile::tempdir().unwrap();
    // About 300 kB expanding to 300 MB: one field of 300 million bytes.
    let bomb = gzip_bomb(b"a\n", &vec![b'x'; 1 << 20], 300);
    assert!(bomb.len() < 1 << 20, "{}", bomb.len());
    let p = write(dir.path(), "bomb.csv.gz", &bomb);
    let e = fails(&p, &ReadOptions::default());
    assert!(e.is_limit(), "{e}");
    assert!(e.to_string().contains("decompression bomb"), "{e}");
    // With an upload limit, that limit is named.
    let limited = with_data_limit(10 << 20);
    let e = fails(&p, &limited);
    assert!(
        e.is_limit() && e.to_string().contains("limit of 10485760 bytes"),
        "{e}"
    );
    // Ordinary lines, but many: bounded by the ratio as well.
    let rows = gzip_bomb(b"a,b\n", &b"1,2\n".repeat(1 << 18), 200);
    let p = write(dir.path(), "rows.csv.gz", &rows);
    let e = fails(&p, &ReadOptions::default());
    assert!(
        e.is_limit() && e.to_string().contains("expands more than 200 times"),
        "{e}"
    );
}

#[test]
fn ordinary_gzip_tables_read_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from("id,ra,name\n");
    for i in 0..200_000 {
        text.push_str(&format!("{i},{}.25,star {}\n", i % 360, i * 7919 % 10007));
    }
    let p = write(dir.path(), "t.csv.gz", &gzip(text.as_bytes()));
    assert_eq!(read_all(&p, &ReadOptions::default()).unwrap(), 200_000);
}

#[test]
fn csv_lines_and_columns_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let small = ReadOptions {
        limits: InputLimits {
            max_record_bytes: 1 << 10,
            max_columns: 100,
            ..Default::default()
        },
        ..Default::default()
    };
    // One line of 8 MB (a quoted field spanning lines counts as one record).
    let mut long = b"a,b\n1,\"".to_vec();
    long.extend(std::iter::repeat_n(b"y\n", 4 << 20).flatten());
    long.extend(b"\"\n");
    let p = write(dir.path(), "long.csv", &long);
    let e = fails(&p, &small);
    assert!(
        e.is_limit() && e.to_string().contains("limit of 1024 bytes"),
        "{e}"
    );
    let header: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    let p = write(
        dir.path(),
        "wide.csv",
        format!("{}\n", header.join(",")).as_bytes(),
    );
    let e = fails(&p, &small);
    assert!(e.is_limit() && e.to_string().contains("101 columns"), "{e}");
    // Within the limits, the same reader reads as before.
    let p = write(dir.path(), "ok.csv", b"a,b\n1,x\n2,y\n");
    assert_eq!(read_all(&p, &small).unwrap(), 2);
}

#[test]
fn csv_rows_with_very_many_fields_are_bad_rows_not_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = b"a,b\n1,2\n".to_vec();
    text.extend(std::iter::repeat_n(b',', 1 << 20));
    text.extend(b"\n3,4\n");
    let p = write(dir.path(), "fields.csv", &text);
    let skip = ReadOptions {
        skip_bad_rows: true,
        ..Default::default()
    };
    let mut reader = open(&p, &skip).unwrap();
    let rows: usize = reader.by_ref().map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 2);
    let bad = reader.bad_rows();
    assert_eq!(bad.count, 1);
    assert!(bad.examples[0].contains("1048577 fields"), "{:?}", bad);
}

fn votable(fields: &str, data: &str) -> String {
    format!(
        "<?xml version=\"1.0\"?>\n<VOTABLE version=\"1.4\"><RESOURCE><TABLE>{fields}<DATA>{data}</DATA></TABLE></RESOURCE></VOTABLE>\n"
    )
}

fn base64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[test]
fn votable_binary_lengths_are_checked_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    // A variable-length string claiming 4 GB, in a few bytes.
    let mut row = vec![0u8]; // BINARY2 null mask
    row.extend(u32::MAX.to_be_bytes());
    row.extend(b"abc");
    let doc = votable(
        "<FIELD name=\"s\" datatype=\"char\" arraysize=\"*\"/>",
        &format!(
            "<BINARY2><STREAM encoding=\"base64\">{}</STREAM></BINARY2>",
            base64(&row)
        ),
    );
    let p = write(dir.path(), "v.vot", doc.as_bytes());
    let e = fails(&p, &ReadOptions::default());
    assert!(
        e.is_limit() && e.to_string().contains("4294967295 bytes"),
        "{e}"
    );
    // Within the limit but more than the stream holds: truncated, not a 1 MB buffer.
    let mut row = vec![0u8];
    row.extend(1_000_000u32.to_be_bytes());
    row.extend(b"abc");
    let doc = votable(
        "<FIELD name=\"s\" datatype=\"char\" arraysize=\"*\"/>",
        &format!(
            "<BINARY2><STREAM encoding=\"base64\">{}</STREAM></BINARY2>",
            base64(&row)
        ),
    );
    let p = write(dir.path(), "t.vot", doc.as_bytes());
    let e = fails(&p, &ReadOptions::default());
    assert!(e.to_string().contains("truncated"), "{e}");
    // A fixed arraysize too large for a row, and one too large to exist.
    for size in ["100000x100000", "99999999999x99999999999x99999999999"] {
        let doc = votable(
            &format!("<FIELD name=\"a\" datatype=\"double\" arraysize=\"{size}\"/>"),
            "<TABLEDATA></TABLEDATA>",
        );
        let p = write(dir.path(), "a.vot", doc.as_bytes());
        let e = fails(&p, &ReadOptions::default());
        assert!(
            matches!(e, Error::Limit { .. } | Error::Format { .. }),
            "{size}: {e}"
        );
    }
}

#[test]
fn votable_columns_nesting_and_cells_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let small = ReadOptions {
        limits: InputLimits {
            max_columns: 10,
            max_xml_depth: 20,
            max_record_bytes: 1 << 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let fields: String = (0..11)
        .map(|i| format!("<FIELD name=\"c{i}\" datatype=\"int\"/>"))
        .collect();
    let p = write(
        dir.path(),
        "wide.vot",
        votable(&fields, "<TABLEDATA></TABLEDATA>").as_bytes(),
    );
    let e = fails(&p, &small);
    assert!(e.is_limit() && e.to_string().contains("FIELD"), "{e}");
    let deep = format!(
        "<?xml version=\"1.0\"?><VOTABLE>{}",
        "<RESOURCE>".repeat(1000)
    );
    let p = write(dir.path(), "deep.vot", deep.as_bytes());
    let e = fails(&p, &small);
    assert!(e.is_limit() && e.to_string().contains("nested"), "{e}");
    // A TABLEDATA row of 8 MB, and a row of a million empty cells.
    let big = format!(
        "<TABLEDATA><TR><TD>{}</TD></TR></TABLEDATA>",
        "z".repeat(8 << 20)
    );
    let doc = votable(
        "<FIELD name=\"s\" datatype=\"char\" arraysize=\"*\"/>",
        &big,
    );
    let p = write(dir.path(), "cell.vot", doc.as_bytes());
    let e = fails(&p, &small);
    assert!(
        e.is_limit() && e.to_string().contains("limit of 1024 bytes"),
        "{e}"
    );
    let many = format!(
        "<TABLEDATA><TR>{}</TR></TABLEDATA>",
        "<TD/>".repeat(1_000_000)
    );
    let doc = votable(
        "<FIELD name=\"s\" datatype=\"char\" arraysize=\"*\"/>",
        &many,
    );
    let p = write(dir.path(), "cells.vot", doc.as_bytes());
    let e = fails(&p, &ReadOptions::default());
    assert!(e.to_string().contains("1000000 TD cells"), "{e}");
}

#[test]
fn parquet_declared_sizes_are_checked_against_the_limits() {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.parquet");
    let fields: Vec<Field> = (0..20)
        .map(|i| Field::new(format!("c{i}"), DataType::Int64, false))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let cols: Vec<ArrayRef> = (0..20)
        .map(|_| Arc::new(Int64Array::from_iter_values(0..100_000)) as ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(schema.clone(), cols).unwrap();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(std::fs::File::create(&p).unwrap(), schema, None)
            .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    assert_eq!(read_all(&p, &ReadOptions::default()).unwrap(), 100_000);
    let few = ReadOptions {
        limits: InputLimits {
            max_columns: 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let e = fails(&p, &few);
    assert!(e.is_limit() && e.to_string().contains("20 columns"), "{e}");
    let small = with_data_limit(100_000);
    let e = fails(&p, &small);
    assert!(
        e.is_limit() && e.to_string().contains("limit of 100000 bytes"),
        "{e}"
    );
}

#[test]
fn limit_errors_can_be_told_without_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "bomb.fits",
        &fits("1000000", "65536", "1000000A", 0),
    );
    let e = fails(&p, &ReadOptions::default());
    assert!(e.to_string().contains(&dir.path().display().to_string()));
    assert!(
        !e.detail().contains(&dir.path().display().to_string()),
        "{}",
        e.detail()
    );
}
