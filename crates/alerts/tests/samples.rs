//! The real alert samples in ../shared/data/alerts (7 Rubin alerts with Fink's added
//! fields, 31 ZTF alerts): read, split into tables, each source once; Kafka message values
//! in the Confluent wire format decode to the same rows, and bad ones fail with a reason.
//! (tests/python/test_alerts.py checks every field against fastavro.)

use std::collections::HashSet;
use std::path::PathBuf;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use meridian_alerts::{avro, dia};

fn sample(name: &str) -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
        .join("../../../shared/data/alerts")
        .join(name)
}

fn one(batches: &[RecordBatch]) -> RecordBatch {
    arrow::compute::concat_batches(&batches[0].schema(), batches).unwrap()
}

fn ids(batch: &RecordBatch, key: &str) -> Vec<i64> {
    let c = arrow::compute::cast(
        batch.column_by_name(key).unwrap(),
        &arrow::datatypes::DataType::Int64,
    )
    .unwrap();
    c.as_primitive::<Int64Type>().iter().flatten().collect()
}

fn assert_unique(batch: &RecordBatch, key: &str) {
    let v = ids(batch, key);
    assert_eq!(v.len(), batch.num_rows(), "{key}: no null keys");
    assert_eq!(
        v.iter().collect::<HashSet<_>>().len(),
        v.len(),
        "{key} unique"
    );
}

#[test]
fn rubin_alerts_split_into_dia_tables() {
    let (schema, batches) = avro::read_file(&sample("rubin_fink_sample_7alerts.avro")).unwrap();
    assert_eq!(dia::Kind::detect(&schema).unwrap(), dia::Kind::Rubin);
    let alerts = one(&batches);
    assert_eq!(alerts.num_rows(), 7);
    let t = dia::split(&alerts).unwrap();
    let sources = t.get("DiaSource").unwrap();
    assert_unique(sources, "diaSourceId");
    // Every alert's own source is there, and the histories add many more.
    let own: HashSet<i64> = ids(&alerts, "diaSourceId").into_iter().collect();
    let all: HashSet<i64> = ids(sources, "diaSourceId").into_iter().collect();
    assert!(
        own.is_subset(&all) && all.len() > own.len(),
        "{} sources",
        all.len()
    );
    assert_unique(t.get("DiaForcedSource").unwrap(), "diaForcedSourceId");
    assert!(t.get("DiaForcedSource").unwrap().num_rows() > 100);
    let objects = t.get("DiaObject").unwrap();
    assert_unique(objects, "diaObjectId");
    assert!(objects.num_rows() >= 1 && objects.num_rows() <= 7);
    // Every source of an object in the batch names that object.
    let cutouts = t.get("Cutout").unwrap();
    assert_eq!(cutouts.num_rows(), 7);
    let science = cutouts
        .column_by_name("cutoutScience")
        .unwrap()
        .as_binary::<i32>();
    for i in 0..science.len() {
        assert!(
            science.value(i).starts_with(b"SIMPLE  ="),
            "cutout {i} is FITS"
        );
    }
}

#[test]
fn ztf_alerts_split_into_candidates_limits_and_stamps() {
    let (schema, batches) = avro::read_file(&sample("ztf_fink_sample_31alerts.avro")).unwrap();
    assert_eq!(dia::Kind::detect(&schema).unwrap(), dia::Kind::Ztf);
    let alerts = one(&batches);
    assert_eq!(alerts.num_rows(), 31);
    let t = dia::split(&alerts).unwrap();
    let cand = t.get("ZtfCandidate").unwrap();
    assert_unique(cand, "candid");
    assert!(cand.num_rows() >= 31);
    assert_eq!(cand.column_by_name("objectId").unwrap().null_count(), 0);
    let limits = t.get("ZtfUpperLimit").unwrap();
    assert!(limits.column_by_name("candid").is_none());
    assert_eq!(limits.column_by_name("objectId").unwrap().null_count(), 0);
    let cut = t.get("Cutout").unwrap();
    assert_eq!(cut.num_rows(), 31);
    let stamp = cut
        .column_by_name("cutoutScience")
        .unwrap()
        .as_binary::<i32>();
    assert!(
        stamp.value(0).starts_with(&[0x1f, 0x8b]),
        "stamps are gzipped FITS"
    );
}

#[test]
fn confluent_messages_decode_to_the_file_rows_and_bad_ones_fail_clearly() {
    use arrow_avro::schema::FingerprintStrategy;
    use arrow_avro::writer::WriterBuilder;
    use arrow_avro::writer::format::AvroSoeFormat;
    let path = sample("ztf_fink_sample_31alerts.avro");
    let (schema, batches) = avro::read_file(&path).unwrap();
    // The writer schema the encoder derives from the Arrow schema (its own union order).
    let json = arrow_avro::schema::AvroSchema::try_from(schema.as_ref())
        .unwrap()
        .json_string;
    assert!(avro::file_schema(&path).unwrap().contains("\"candidate\""));
    let alerts = one(&batches);
    let mut encoder = WriterBuilder::new(schema.as_ref().clone())
        .with_fingerprint_strategy(FingerprintStrategy::Id(42))
        .build_encoder::<AvroSoeFormat>()
        .unwrap();
    encoder.encode(&alerts).unwrap();
    let rows = encoder.flush();
    assert_eq!(rows.len(), 31);
    let mut d = avro::ConfluentDecoder::new();
    d.register(42, &json).unwrap();
    let mut decoded = Vec::new();
    for (i, msg) in rows.iter().enumerate() {
        assert_eq!(avro::ConfluentDecoder::schema_id(&msg).unwrap(), 42);
        if i == 3 {
            // A truncated message, an unknown schema, then the stream goes on.
            let e = d.decode(&msg[..msg.len() / 2]).unwrap_err().to_string();
            assert!(e.contains("schema 42"), "{e}");
            let mut other = msg.to_vec();
            other[4] = 43;
            let e = d.decode(&other).unwrap_err().to_string();
            assert!(e.contains("unknown schema id 43"), "{e}");
        }
        decoded.push(
            d.decode(&msg)
                .unwrap_or_else(|e| panic!("message {i}: {e}")),
        );
    }
    let decoded = one(&decoded);
    assert_eq!(decoded.num_rows(), 31);
    assert_eq!(ids(&decoded, "candid"), ids(&alerts, "candid"));
    for (i, f) in alerts.schema().fields().iter().enumerate() {
        let (a, b) = (alerts.column(i), decoded.column(i));
        // Nested types may differ in names and metadata the encoder's schema chose; the
        // values must not.
        let b = arrow::compute::cast(b, a.data_type()).unwrap();
        assert!(a == &b, "{}: values differ", f.name());
    }
}

#[test]
fn a_file_cut_short_is_refused_with_the_offset() {
    assert_eq!(
        avro::count_records(&sample("rubin_fink_sample_7alerts.avro")).unwrap(),
        7
    );
    let data = std::fs::read(sample("ztf_fink_sample_31alerts.avro")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cut = dir.path().join("cut.avro");
    std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
    let e = avro::read_file(&cut).unwrap_err().to_string();
    assert!(e.contains("cut.avro") && e.contains("cut short"), "{e}");
    let mut flipped = data.clone();
    let n = flipped.len();
    flipped[n - 1] ^= 0xff;
    let bad = dir.path().join("flipped.avro");
    std::fs::write(&bad, &flipped).unwrap();
    let e = avro::count_records(&bad).unwrap_err().to_string();
    assert!(e.contains("sync marker"), "{e}");
}
