//! The filter stage over the real Rubin and ZTF samples: each filter's matches are those
//! its condition selects (checked against the decoded alerts' own fields), a batch
//! filtered twice (a restart before the offsets' commit) adds nothing to the MyDB table or
//! the outbox, a filter that fails at run time is paused with its reason while the others
//! go on, and bad filters are refused before they are stored. Kafka delivery of the queued
//! matches, with its recovery of matches left in flight, runs against librdkafka's mock
//! cluster.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{Float32Type, Int64Type};
use meridian_alerts::evaluate::{Evaluator, Filtering, alert_tables};
use meridian_alerts::filters::{FilterStore, Output, Outputs, State};
use meridian_alerts::outputs::{Deliverer, DeliveryOptions};
use meridian_catalog::Store;
use meridian_engine::{Engine, EngineConfig};
use meridian_services::mydb::MyDb;

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/alerts")
        .join(rel)
}

fn alerts(name: &str) -> Vec<RecordBatch> {
    let bytes = std::fs::read(shared(name)).unwrap();
    meridian_alerts::avro::read_container(name, &bytes)
        .unwrap()
        .1
}

struct Site {
    _dir: tempfile::TempDir,
    filters: Arc<FilterStore>,
    mydb: Arc<MyDb>,
    stage: Filtering,
    evaluator: Evaluator,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("catalogs")).unwrap();
    // The Rubin sample stored, so that filters are checked against its tables.
    meridian_alerts::load::store_alerts(&store, &alerts("rubin_fink_sample_7alerts.avro")).unwrap();
    let engine = Arc::new(Engine::open(&store, &EngineConfig::default()).unwrap());
    let filters = Arc::new(FilterStore::open(&dir.path().join("filters.sqlite")).unwrap());
    let mydb = Arc::new(MyDb::new(dir.path().join("mydb"), 1 << 30));
    let stage = Filtering::new(filters.clone(), engine.clone(), Some(mydb.clone())).unwrap();
    let evaluator = Evaluator::new(engine, Some(mydb.clone()));
    Site {
        _dir: dir,
        filters,
        mydb,
        stage,
        evaluator,
    }
}

/// The alert ids (diaSourceId) and psfFlux of the Rubin sample, read from the alerts'
/// own records.
fn rubin_fluxes(batches: &[RecordBatch]) -> Vec<(i64, f32)> {
    let mut out = Vec::new();
    for b in batches {
        let ids = b.column_by_name("diaSourceId").unwrap();
        let ids = ids.as_primitive::<Int64Type>();
        let src = b.column_by_name("diaSource").unwrap().as_struct();
        let flux = src.column_by_name("psfFlux").unwrap();
        let flux = flux.as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            out.push((ids.value(i), flux.value(i)));
        }
    }
    out
}

fn mydb_ids(mydb: &MyDb, table: &str) -> Vec<i64> {
    let file = std::fs::File::open(mydb.path("ann", table).unwrap()).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut ids = Vec::new();
    for b in reader {
        let b = b.unwrap();
        let c = b.column_by_name("alertId").unwrap();
        ids.extend(c.as_primitive::<Int64Type>().iter().flatten());
    }
    ids.sort();
    ids
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Runtime::new().unwrap().block_on(f)
}

#[test]
fn matches_are_what_the_condition_selects_and_are_kept_once() {
    let s = site();
    let rubin = alerts("rubin_fink_sample_7alerts.avro");
    let ztf = alerts("ztf_fink_sample_31alerts.avro");
    let query = "SELECT a.alertId, a.psfFlux FROM alert.diasource AS a WHERE a.psfFlux > 5000";
    run(s.evaluator.validate("ann", query)).unwrap();
    let outputs = Outputs {
        mydb_table: Some("bright".into()),
        kafka_topic: Some("ann.bright".into()),
        ..Default::default()
    };
    let bright = s.filters.add("ann", "bright", query, &outputs).unwrap();
    let ztf_query = "SELECT c.alertId, c.magpsf FROM alert.candidate AS c WHERE c.magpsf < 18.5";
    let faint = s
        .filters
        .add("ann", "faint", ztf_query, &Outputs::default())
        .unwrap();
    let mut want: Vec<i64> = rubin_fluxes(&rubin)
        .into_iter()
        .filter(|(_, f)| *f > 5000.0)
        .map(|(id, _)| id)
        .collect();
    want.sort();
    assert!(!want.is_empty() && want.len() < 7);

    // Both surveys in one batch, as a consumer of two topics gets them.
    let mut batch = rubin.clone();
    batch.extend(ztf.clone());
    let done = s.stage.apply(&batch).unwrap();
    assert_eq!(done.paused, 0);
    assert_eq!(mydb_ids(&s.mydb, "bright"), want);
    let queued: Vec<i64> = {
        let mut v: Vec<i64> = s
            .filters
            .after(bright.id, 0, 100)
            .unwrap()
            .iter()
            .map(|q| q.alert_id)
            .collect();
        v.sort();
        v
    };
    assert_eq!(queued, want);
    // ZTF: the candidates' own magnitudes.
    let mut want_ztf = Vec::new();
    for b in &ztf {
        let cand = b.column_by_name("candidate").unwrap().as_struct();
        let candid = cand.column_by_name("candid").unwrap();
        let mag = cand.column_by_name("magpsf").unwrap();
        let mag = mag.as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            if mag.is_valid(i) && mag.value(i) < 18.5 {
                want_ztf.push(candid.as_primitive::<Int64Type>().value(i));
            }
        }
    }
    assert_eq!(
        s.filters.get(faint.id).unwrap().unwrap().matches,
        want_ztf.len() as u64
    );
    assert_eq!(done.matches, want.len() + want_ztf.len());

    // The same batch again: nothing new anywhere.
    let again = s.stage.apply(&batch).unwrap();
    assert_eq!((again.matches, again.mydb_rows), (0, 0));
    assert_eq!(mydb_ids(&s.mydb, "bright"), want);

    // Every alert table carries the alert's id.
    let (_, tables) = alert_tables(&rubin[0]).unwrap();
    for (name, t) in &tables {
        assert_eq!(t.schema().field(0).name(), "alertId", "{name}");
    }
}

/// The alert ids among `rows` (a filter's result).
fn result_ids(rows: &[RecordBatch]) -> Vec<i64> {
    let mut ids: Vec<i64> = rows
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name("alertId").unwrap();
            let c = arrow::compute::cast(c, &arrow::datatypes::DataType::Int64).unwrap();
            c.as_primitive::<Int64Type>()
                .iter()
                .flatten()
                .collect::<Vec<_>>()
        })
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[test]
fn filters_planned_once_run_on_each_batchs_own_rows() {
    // Plans are kept between batches and bound to each batch's tables: every batch must
    // be filtered on its own rows (also in a subquery and a join of two alert tables), and
    // a filter whose query changes is planned again.
    let s = site();
    let rubin = alerts("rubin_fink_sample_7alerts.avro");
    let all = arrow::compute::concat_batches(&rubin[0].schema(), &rubin).unwrap();
    let fluxes = rubin_fluxes(std::slice::from_ref(&all));
    let filter = |id: i64, query: &str| meridian_alerts::filters::Filter {
        id,
        owner: "ann".into(),
        name: format!("f{id}"),
        query: query.into(),
        outputs: Outputs::default(),
        state: State::Active,
        reason: None,
        last_error: None,
        matches: 0,
        created_ms: 0,
    };
    let mut filters = vec![
        filter(
            1,
            "SELECT a.alertId FROM alert.diasource AS a WHERE a.psfFlux > 5000",
        ),
        filter(
            2,
            "SELECT a.alertId FROM alert.diasource AS a JOIN alert.diaobject AS o \
             ON o.alertId = a.alertId WHERE a.alertId IN \
             (SELECT p.alertId FROM alert.diasource AS p WHERE p.psfFlux <= 5000)",
        ),
    ];
    let want = |rows: std::ops::Range<usize>, bright: bool| -> Vec<i64> {
        let mut v: Vec<i64> = fluxes[rows]
            .iter()
            .filter(|(_, f)| (*f > 5000.0) == bright)
            .map(|(id, _)| *id)
            .collect();
        v.sort();
        v
    };
    let split = [0..3, 3..7, 0..7, 2..5];
    for (i, rows) in split.iter().enumerate() {
        let batch = all.slice(rows.start, rows.len());
        let out = run(s.evaluator.run(&filters, &[batch])).unwrap();
        let got: Vec<Vec<i64>> = out
            .iter()
            .map(|o| result_ids(o.rows.as_ref().unwrap()))
            .collect();
        assert_eq!(got[0], want(rows.clone(), true), "batch {i} rows {rows:?}");
        assert_eq!(got[1], want(rows.clone(), false), "batch {i} rows {rows:?}");
    }
    assert!(!want(0..7, true).is_empty() && !want(0..7, false).is_empty());
    // The first filter edited: its new query runs.
    filters[0].query = "SELECT a.alertId FROM alert.diasource AS a WHERE a.psfFlux <= 5000".into();
    let out = run(s.evaluator.run(&filters, std::slice::from_ref(&all))).unwrap();
    assert_eq!(result_ids(out[0].rows.as_ref().unwrap()), want(0..7, false));
}

#[test]
fn bad_filters_are_refused_and_failing_ones_paused() {
    let s = site();
    for (query, says) in [
        ("SELECT alertId FROM alert.diasource WHERE", "ADQL"),
        ("SELECT a.psfFlux FROM alert.diasource AS a", "alertId"),
        ("SELECT a.alertId, a.nope FROM alert.diasource AS a", "nope"),
    ] {
        let e = run(s.evaluator.validate("ann", query)).unwrap_err();
        assert!(
            matches!(e, meridian_alerts::Error::Invalid(_)) && e.to_string().contains(says),
            "{query}: {e}"
        );
    }
    // A watchlist that is dropped after the filter was made.
    let watch = s.mydb.staging_path("ann", "watch").unwrap();
    {
        let batch = alert_tables(&alerts("rubin_fink_sample_7alerts.avro")[0])
            .unwrap()
            .1
            .remove(0)
            .1;
        let f = std::fs::File::create(&watch).unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(f, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    s.mydb.commit("ann", "watch", &watch, false).unwrap();
    let q = "SELECT a.alertId FROM alert.diasource AS a JOIN mydb.watch AS w \
             ON a.diaSourceId = w.diaSourceId";
    run(s.evaluator.validate("ann", q)).unwrap();
    let breaks = s
        .filters
        .add("ann", "breaks", q, &Outputs::default())
        .unwrap();
    let fine = s
        .filters
        .add(
            "ann",
            "fine",
            "SELECT a.alertId FROM alert.diasource AS a",
            &Outputs::default(),
        )
        .unwrap();
    s.mydb.drop_table("ann", "watch").unwrap();
    let done = s
        .stage
        .apply(&alerts("rubin_fink_sample_7alerts.avro"))
        .unwrap();
    assert_eq!(done.paused, 1);
    let b = s.filters.get(breaks.id).unwrap().unwrap();
    assert_eq!(b.state, State::Paused);
    assert!(b.reason.as_deref().unwrap_or("").contains("watch"), "{b:?}");
    assert_eq!(s.filters.get(fine.id).unwrap().unwrap().matches, 7);
}

/// Outputs to Kafka topic `t`.
fn to_topic(t: &str) -> Outputs {
    Outputs {
        kafka_topic: Some(t.into()),
        ..Default::default()
    }
}

/// Filter `all` of `ann`: every Rubin alert, to Kafka topic `topic`.
fn all_to_topic(s: &Site, topic: &str) -> meridian_alerts::filters::Filter {
    s.filters
        .add(
            "ann",
            "all",
            "SELECT a.alertId FROM alert.diasource AS a",
            &to_topic(topic),
        )
        .unwrap()
}

/// Every queued match left unrecorded for Kafka, as a crash before the broker's answers
/// were recorded leaves them: the Kafka cursor and the topics' marks back at the start.
fn leave_in_flight(conn: &rusqlite::Connection) {
    conn.execute_batch(
        "UPDATE outbox_cursor SET seq = 0 WHERE output = 'kafka';
         DELETE FROM kafka_mark;
         UPDATE matches SET kafka = 1 WHERE kafka = 3;
         UPDATE outbox_backlog SET n = (SELECT count(*) FROM matches WHERE kafka = 1)
         WHERE output = 'kafka';",
    )
    .unwrap();
}

#[test]
fn every_filters_topic_is_made_before_its_first_match() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let s = site();
    for name in ["one", "two", "three"] {
        s.filters
            .add(
                "ann",
                name,
                "SELECT a.alertId FROM alert.diasource AS a",
                &to_topic(&format!("ann.{name}")),
            )
            .unwrap();
    }
    let topics = || -> Vec<String> {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let md = c.fetch_metadata(None, Duration::from_secs(10)).unwrap();
        let mut t: Vec<String> = md
            .topics()
            .iter()
            .map(|t| t.name().to_string())
            .filter(|t| t.starts_with("ann."))
            .collect();
        t.sort();
        t
    };
    assert!(topics().is_empty());
    // No alert yet, nothing queued: one round makes all three topics.
    let opts = DeliveryOptions {
        brokers: Some(brokers.clone()),
        ..Default::default()
    };
    let mut d = Deliverer::new(s.filters.clone(), opts).unwrap();
    assert_eq!(d.round().unwrap().kafka, 0);
    assert_eq!(topics(), ["ann.one", "ann.three", "ann.two"]);
}

#[test]
fn kafka_outputs_get_each_match_once_even_after_a_crash_in_flight() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message};
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let s = site();
    let all = all_to_topic(&s, "ann.all");
    let opts = DeliveryOptions {
        brokers: Some(brokers.clone()),
        ..Default::default()
    };
    s.stage
        .apply(&alerts("rubin_fink_sample_7alerts.avro"))
        .unwrap();
    {
        let mut d = Deliverer::new(s.filters.clone(), opts.clone()).unwrap();
        assert_eq!(d.settle(Duration::from_secs(30)).unwrap().kafka, 7);
    }
    // A crash as seen afterwards: the seven Rubin matches were sent but not recorded
    // (left in flight); the ZTF filter's matches were marked in flight and never sent.
    let ztf = s
        .filters
        .add(
            "ann",
            "ztf",
            "SELECT c.alertId FROM alert.candidate AS c",
            &to_topic("ann.ztf"),
        )
        .unwrap();
    s.stage
        .apply(&alerts("ztf_fink_sample_31alerts.avro"))
        .unwrap();
    {
        let conn = rusqlite::Connection::open(s.filters.path()).unwrap();
        leave_in_flight(&conn);
    }
    let keys = |topic: &str, n: usize| {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", format!("check-{topic}-{n}"))
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        c.subscribe(&[topic]).unwrap();
        let mut keys = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut quiet_until = None;
        // Until n have come and then nothing more for two seconds.
        while std::time::Instant::now() < deadline
            && quiet_until.is_none_or(|q| std::time::Instant::now() < q)
        {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                keys.push(String::from_utf8_lossy(m.key().unwrap()).into_owned());
            }
            if keys.len() >= n && quiet_until.is_none() {
                quiet_until = Some(std::time::Instant::now() + Duration::from_secs(2));
            }
        }
        keys.sort();
        keys
    };
    let want = |id: i64| {
        let mut v: Vec<String> = s
            .filters
            .after(id, 0, 100)
            .unwrap()
            .iter()
            .map(|q| q.alert_id.to_string())
            .collect();
        v.sort();
        v
    };
    // Recovery finds the Rubin matches on their topic and sends the ZTF ones.
    let mut d = Deliverer::new(s.filters.clone(), opts).unwrap();
    assert_eq!(s.filters.undelivered(Output::Kafka).unwrap().len(), 31);
    assert_eq!(d.settle(Duration::from_secs(30)).unwrap().kafka, 31);
    assert!(s.filters.undelivered(Output::Kafka).unwrap().is_empty());
    assert_eq!(s.filters.backlog().unwrap(), 0);
    assert_eq!(d.settle(Duration::from_secs(30)).unwrap().kafka, 0);
    assert_eq!(keys("ann.all", 7), want(all.id));
    assert_eq!(keys("ann.ztf", 31), want(ztf.id));
    assert_eq!(want(ztf.id).len(), 31);
}

/// The Tansu broker (Kafka protocol, in-memory storage) on a free loopback port, from
/// `MERIDIAN_TANSU` (scripts/test.sh installs it and sets the variable).
struct Tansu {
    brokers: String,
    child: std::process::Child,
}

impl Tansu {
    fn start() -> Option<Self> {
        let exe = std::env::var_os("MERIDIAN_TANSU")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let brokers = format!("127.0.0.1:{port}");
        let url = format!("tcp://{brokers}");
        let child = std::process::Command::new(exe)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/", "--silent"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("MERIDIAN_TANSU names the Tansu broker");
        let t = Self { brokers, child };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&t.brokers).is_err() {
            assert!(std::time::Instant::now() < deadline, "Tansu did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(t)
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Tansu answers a fetch that starts inside a record batch with the next batch. Matches
/// left in flight at the end of one large batch, whose start is before the window read
/// at recovery, must still be found there, not sent twice.
#[test]
fn kafka_recovery_finds_matches_inside_a_batch_a_broker_skips_into() {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Message, Offset, TopicPartitionList};
    let Some(tansu) = Tansu::start() else {
        eprintln!("MERIDIAN_TANSU is not set: skipping the Tansu recovery test");
        return;
    };
    let s = site();
    let all = all_to_topic(&s, "ann.all");
    s.stage
        .apply(&alerts("rubin_fink_sample_7alerts.avro"))
        .unwrap();
    let queued = s.filters.after(all.id, 0, 100).unwrap();
    assert_eq!(queued.len(), 7);
    // An earlier run's 300 matches and then these 7, all in one record batch; the crash
    // came before the broker's answer, so the 7 are in flight.
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &tansu.brokers)
        .set("linger.ms", "2000")
        .set("batch.num.messages", "100000")
        .create()
        .unwrap();
    meridian_alerts::kafka::ensure_topic(p.client(), &tansu.brokers, "ann.all");
    let keys: Vec<String> = (0..300)
        .map(|i| format!("earlier-{i}"))
        .chain(queued.iter().map(|q| q.alert_id.to_string()))
        .collect();
    for k in &keys {
        p.send(
            BaseRecord::<str, str>::to("ann.all")
                .partition(0)
                .key(k)
                .payload("{}"),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
    // The broker does skip into the next batch from inside this one.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &tansu.brokers)
        .set("group.id", "probe")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("ann.all", 0, Offset::Offset(200))
        .unwrap();
    c.assign(&tpl).unwrap();
    let first = loop {
        match c.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => break Some(m.offset()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) | None => break None,
            Some(Err(_)) => {}
        }
    };
    assert!(
        first.is_none_or(|f| f > 200),
        "Tansu now reads from inside a batch ({first:?}): this test no longer tests that"
    );
    // Acknowledged up to offset 199 (a mark inside the batch) as far as the store knows.
    {
        let conn = rusqlite::Connection::open(s.filters.path()).unwrap();
        leave_in_flight(&conn);
        conn.execute("INSERT INTO kafka_mark VALUES ('ann.all', 200)", [])
            .unwrap();
    }
    let opts = DeliveryOptions {
        brokers: Some(tansu.brokers.clone()),
        ..Default::default()
    };
    let mut d = Deliverer::new(s.filters.clone(), opts).unwrap();
    assert!(s.filters.undelivered(Output::Kafka).unwrap().is_empty());
    assert_eq!(
        d.settle(Duration::from_secs(30)).unwrap().kafka,
        0,
        "in-flight matches sent again"
    );
    tpl.set_partition_offset("ann.all", 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let mut n = 0;
    while let Some(Ok(_)) = c.poll(Duration::from_secs(10)) {
        n += 1;
    }
    assert_eq!(n, 307);
}

/// A filter that would run for hours on one batch (a twelve-fold cross join of the batch's
/// sources) is stopped at its time limit and paused with that reason; the other filters'
/// matches are made, and the next batch is filtered without it.
#[test]
fn a_filter_past_its_time_limit_is_stopped_and_paused() {
    let mut s = site();
    s.stage.set_filter_time_limit(Duration::from_secs(1));
    let from: Vec<String> = (0..12)
        .map(|i| format!("alert.diasource AS t{i}"))
        .collect();
    let sum: Vec<String> = (0..12).map(|i| format!("t{i}.psfFlux")).collect();
    let q = format!(
        "SELECT t0.alertId FROM {} WHERE {} < -1e30",
        from.join(", "),
        sum.join(" + ")
    );
    run(s.evaluator.validate("ann", &q)).unwrap();
    let slow = s
        .filters
        .add("ann", "slow", &q, &Outputs::default())
        .unwrap();
    let fine = s
        .filters
        .add(
            "ann",
            "fine",
            "SELECT a.alertId FROM alert.diasource AS a",
            &Outputs::default(),
        )
        .unwrap();
    let batch = alerts("rubin_fink_sample_7alerts.avro");
    let started = std::time::Instant::now();
    let done = s.stage.apply(&batch).unwrap();
    // Stopped at its limit, not when done (hours): the bound leaves room for a loaded
    // machine.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(done.paused, 1);
    let f = s.filters.get(slow.id).unwrap().unwrap();
    assert_eq!(f.state, State::Paused);
    assert!(
        f.reason.as_deref().unwrap_or("").contains("limit of 1 s"),
        "{f:?}"
    );
    assert_eq!(s.filters.get(fine.id).unwrap().unwrap().matches, 7);
    // The next batch: the paused filter is not run (no wait for its limit).
    let again = std::time::Instant::now();
    let done = s.stage.apply(&batch).unwrap();
    assert_eq!(done.paused, 0);
    assert!(again.elapsed() < started.elapsed(), "{:?}", again.elapsed());
}

/// A mock Kafka cluster whose topic `rubin` holds the seven Rubin sample alerts (schema id
/// 42), replayed with producer `settings`: the cluster, its brokers and the sample's file.
fn rubin_on_mock_kafka(
    settings: &[(String, String)],
) -> (
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    String,
    PathBuf,
) {
    use meridian_alerts::kafka::{Framing, replay};
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let brokers = cluster.bootstrap_servers();
    cluster.create_topic("rubin", 1, 1).unwrap();
    let rubin = shared("rubin_fink_sample_7alerts.avro");
    let n = replay(
        std::slice::from_ref(&rubin),
        &brokers,
        "rubin",
        Framing::Confluent(42),
        None,
        settings,
    )
    .unwrap();
    assert_eq!(n, 7);
    (cluster, brokers, rubin)
}

/// Backpressure: while more matches wait for delivery than the stage allows, the consumer
/// reads no further (and loses nothing it had fetched); once the outputs catch up it goes
/// on, and every alert is read and matched once.
#[test]
fn a_slow_output_holds_the_stream_back_without_losing_alerts() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use meridian_alerts::dead_letter::DeadLetters;
    use meridian_alerts::kafka::{ConsumeOptions, consume};
    // All seven in one record batch: the consumer holds them fetched while it waits.
    let (_cluster, brokers, rubin) = rubin_on_mock_kafka(&[("linger.ms".into(), "200".into())]);
    let mut s = site();
    let all = all_to_topic(&s, "ann.all");
    s.stage.max_backlog = 2;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("catalogs")).unwrap();
    let dead = DeadLetters::open(&dir.path().join("dead.sqlite")).unwrap();
    let mut opts = ConsumeOptions::new(&brokers, &["rubin"]);
    opts.schemas = vec![(42, meridian_alerts::avro::file_schema(&rubin).unwrap())];
    opts.batch_alerts = 1;
    opts.batch_wait = Duration::from_millis(200);
    let stop = AtomicBool::new(false);
    let read = AtomicUsize::new(0);
    let consumed = std::thread::scope(|scope| {
        let consumer = scope.spawn(|| {
            consume(&store, &dead, &opts, Some(&s.stage), &stop, |b| {
                read.fetch_add(b.alerts, Ordering::SeqCst);
            })
        });
        let wait_for = |n: usize| {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while read.load(Ordering::SeqCst) < n && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            read.load(Ordering::SeqCst)
        };
        // A failed check below must not leave the consumer running (the scope would wait
        // for it for ever).
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let _stop = StopOnDrop(&stop);
        // Matches queued and none delivered: past the limit of 2, reading stops. The
        // stages hold up to four batches between the read and the queue (the one being
        // read, one waiting to be filtered, the one being filtered, one waiting to be
        // queued), so reading stops within four batches (alerts, here) of the limit.
        assert!(wait_for(3) >= 3);
        std::thread::sleep(Duration::from_secs(2));
        let held = read.load(Ordering::SeqCst);
        assert!(
            (3..=7).contains(&held),
            "read {held} alerts past the backlog's limit"
        );
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(
            read.load(Ordering::SeqCst),
            held,
            "read on past the backlog's limit"
        );
        assert_eq!(s.filters.backlog().unwrap(), held as u64);
        // The outputs catch up: the stream goes on to its end.
        let mut d = Deliverer::new(
            s.filters.clone(),
            DeliveryOptions {
                brokers: Some(brokers.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        let mut delivered = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while delivered < 7 && std::time::Instant::now() < deadline {
            delivered += d.settle(Duration::from_secs(5)).unwrap().kafka;
        }
        assert_eq!(delivered, 7);
        assert_eq!(wait_for(7), 7);
        stop.store(true, Ordering::SeqCst);
        consumer.join().unwrap().unwrap()
    });
    assert_eq!(consumed.alerts, 7);
    assert_eq!(s.filters.get(all.id).unwrap().unwrap().matches, 7);
    assert_eq!(s.filters.backlog().unwrap(), 0);
}

/// Filters run while their batch is stored, except those that read the tables alerts are
/// stored in: they run after the batch is stored, and see it.
#[test]
fn a_filter_over_the_stored_alerts_sees_its_own_batch() {
    use std::sync::atomic::AtomicBool;

    use meridian_alerts::dead_letter::DeadLetters;
    use meridian_alerts::kafka::{ConsumeOptions, consume};
    let (_cluster, brokers, rubin) = rubin_on_mock_kafka(&[]);
    let sample = alerts("rubin_fink_sample_7alerts.avro");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("catalogs")).unwrap();
    // One alert of the sample stored already: its tables exist, without the other six.
    meridian_alerts::load::store_alerts(&store, &[sample[0].slice(0, 1)]).unwrap();
    let engine = Arc::new(Engine::open(&store, &EngineConfig::default()).unwrap());
    let filters = Arc::new(FilterStore::open(&dir.path().join("filters.sqlite")).unwrap());
    let stage = Filtering::new(filters.clone(), engine, None).unwrap();
    let none = Outputs::default();
    let stored = filters
        .add(
            "ann",
            "stored",
            "SELECT a.alertId FROM alert.diasource AS a \
             JOIN dia_source AS d ON d.diaSourceId = a.diaSourceId",
            &none,
        )
        .unwrap();
    let all = filters
        .add(
            "ann",
            "all",
            "SELECT a.alertId FROM alert.diasource AS a",
            &none,
        )
        .unwrap();
    assert!(Filtering::read_stored_alerts(std::slice::from_ref(&stored)));
    assert!(!Filtering::read_stored_alerts(std::slice::from_ref(&all)));

    let dead = DeadLetters::open(&dir.path().join("dead.sqlite")).unwrap();
    let mut opts = ConsumeOptions::new(&brokers, &["rubin"]);
    opts.schemas = vec![(42, meridian_alerts::avro::file_schema(&rubin).unwrap())];
    opts.batch_wait = Duration::from_millis(500);
    opts.stop_when_idle = Some(Duration::from_secs(2));
    let stop = AtomicBool::new(false);
    let got = consume(&store, &dead, &opts, Some(&stage), &stop, |_| {}).unwrap();
    assert_eq!(got.alerts, 7);
    // Every alert's source was stored before the filter joined them.
    assert_eq!(filters.get(stored.id).unwrap().unwrap().matches, 7);
    assert_eq!(filters.get(all.id).unwrap().unwrap().matches, 7);
}
