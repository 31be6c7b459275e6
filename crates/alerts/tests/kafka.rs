//! Alerts consumed from Kafka (librdkafka's mock cluster: a real Kafka-protocol broker on
//! loopback TCP) land in the alert database as the files do; bad messages go to the
//! dead-letter table with their offsets and the stream goes on; offsets are committed
//! only for stored batches, so a consumer started again reads nothing twice.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use meridian_alerts::avro;
use meridian_alerts::dead_letter::DeadLetters;
use meridian_alerts::kafka::{ConsumeOptions, Framing, consume, replay};
use meridian_catalog::Store;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/alerts")
        .join(rel)
}

fn rows(store: &Store, name: &str) -> u64 {
    store.catalog(name).unwrap().total_rows().unwrap()
}

fn send(brokers: &str, topic: &str, values: &[Vec<u8>]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for v in values {
        p.send(BaseRecord::<(), [u8]>::to(topic).payload(v))
            .unwrap();
        p.poll(Duration::ZERO);
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

/// Publishes the alerts of `file` to `topic`, framed as `framing`; how many.
fn publish(file: &std::path::Path, brokers: &str, topic: &str, framing: Framing) -> u64 {
    replay(&[file.to_path_buf()], brokers, topic, framing, None, &[]).unwrap()
}

#[test]
fn alerts_from_kafka_equal_the_files_and_bad_messages_are_dead_letters() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("rubin", 2, 1).unwrap();
    cluster.create_topic("ztf", 1, 1).unwrap();
    let rubin = shared("rubin_fink_sample_7alerts.avro");
    let ztf = shared("ztf_fink_sample_31alerts.avro");
    assert_eq!(
        publish(&rubin, &brokers, "rubin", Framing::Confluent(42)),
        7
    );
    assert_eq!(publish(&ztf, &brokers, "ztf", Framing::Container), 31);
    // Bad messages among them: not Avro, an unknown schema id, one cut short.
    let data = std::fs::read(&rubin).unwrap();
    let first = avro::single_records("rubin", &data).unwrap()[0].to_vec();
    let mut cut = vec![0, 0, 0, 0, 42];
    cut.extend_from_slice(&first[..first.len() / 2]);
    send(
        &brokers,
        "rubin",
        &[b"not an alert".to_vec(), vec![0, 0, 0, 0, 7, 1, 2, 3], cut],
    );

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("catalogs")).unwrap();
    let dead = DeadLetters::open(&dir.path().join("dead.sqlite")).unwrap();
    let mut opts = ConsumeOptions::new(&brokers, &["rubin", "ztf"]);
    opts.schemas = vec![(42, avro::file_schema(&rubin).unwrap())];
    opts.batch_alerts = 10;
    opts.batch_wait = Duration::from_millis(500);
    opts.stop_when_idle = Some(Duration::from_secs(3));
    // A consumer joining again is not kept waiting for its predecessor's session.
    opts.settings = vec![
        ("session.timeout.ms".into(), "6000".into()),
        ("heartbeat.interval.ms".into(), "500".into()),
    ];
    let stop = AtomicBool::new(false);
    let mut batches = 0;
    let got = consume(&store, &dead, &opts, None, &stop, |_| batches += 1).unwrap();
    assert_eq!(got.messages, 41);
    assert_eq!(got.alerts, 38);
    assert_eq!(got.dead_letters, 3);
    assert!(batches >= 4, "{batches} batches of at most 10 alerts");

    // The same tables as loading the files.
    let files = tempfile::tempdir().unwrap();
    let by_file = Store::open(files.path()).unwrap();
    let dead_files = DeadLetters::open(&files.path().join("dead.sqlite")).unwrap();
    meridian_alerts::load::load_files(&by_file, std::slice::from_ref(&rubin), &dead_files).unwrap();
    meridian_alerts::load::load_files(&by_file, &[ztf], &dead_files).unwrap();
    for t in [
        "dia_source",
        "dia_forced_source",
        "dia_object",
        "dia_cutout",
        "ztf_candidate",
        "ztf_upper_limit",
        "ztf_cutout",
    ] {
        assert_eq!(rows(&store, t), rows(&by_file, t), "{t}");
        assert!(rows(&store, t) > 0, "{t}");
    }
    let letters = dead.recent(10).unwrap();
    assert_eq!(letters.len(), 3);
    let reasons: Vec<&str> = letters.iter().map(|l| l.reason.as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("magic byte")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("unknown schema id 7")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("schema 42")),
        "{reasons:?}"
    );
    assert!(
        letters
            .iter()
            .all(|l| l.source == "rubin" && l.partition.is_some())
    );
    assert_eq!(
        letters
            .iter()
            .find(|l| l.reason.contains("magic"))
            .unwrap()
            .payload,
        b"not an alert"
    );

    // Started again with the same group: everything was committed, nothing is read.
    let again = consume(&store, &dead, &opts, None, &stop, |_| {}).unwrap();
    assert_eq!(again.messages, 0);
    // New alerts after that are read, once; the repeated sources are not stored again.
    let before = rows(&store, "dia_source");
    publish(&rubin, &brokers, "rubin", Framing::Confluent(42));
    let more = consume(&store, &dead, &opts, None, &stop, |_| {}).unwrap();
    assert_eq!((more.messages, more.alerts), (7, 7));
    assert_eq!(rows(&store, "dia_source"), before);
    assert_eq!(dead.count().unwrap(), 3);
}

#[test]
fn a_batch_is_cut_when_the_topic_goes_idle() {
    let cluster = MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("rubin", 1, 1).unwrap();
    let rubin = shared("rubin_fink_sample_7alerts.avro");
    assert_eq!(
        publish(&rubin, &brokers, "rubin", Framing::Confluent(42)),
        7
    );
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("catalogs")).unwrap();
    let dead = DeadLetters::open(&dir.path().join("dead.sqlite")).unwrap();
    let mut opts = ConsumeOptions::new(&brokers, &["rubin"]);
    opts.schemas = vec![(42, avro::file_schema(&rubin).unwrap())];
    // Room for far more alerts than come, and a long wait for them: only the topic's
    // idleness ends the batch before a minute.
    opts.batch_alerts = 1000;
    opts.batch_wait = Duration::from_secs(60);
    opts.batch_idle = Duration::from_millis(100);
    opts.stop_when_idle = Some(Duration::from_secs(2));
    let stop = AtomicBool::new(false);
    let mut reads = Vec::new();
    let got = consume(&store, &dead, &opts, None, &stop, |b| {
        reads.push((b.alerts, b.stages.read_s))
    })
    .unwrap();
    assert_eq!(got.alerts, 7);
    assert_eq!(reads.len(), 1, "{reads:?}");
    // Read in the time the messages took to come and one idle wait: not the minute.
    assert!(reads[0].1 < 10.0, "{reads:?}");
}
