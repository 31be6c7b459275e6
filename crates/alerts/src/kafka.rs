//! Alerts from Apache Kafka, as Rubin and the brokers publish them: each message one alert,
//! in the Confluent wire format (a zero byte, the writer schema's registry id, one Avro
//! record) or as an Avro object container (ZTF's, schema included).
//!
//! Delivery: messages are read in batches (up to `batch_alerts`, or what arrived within
//! `batch_wait`, or until the topic is idle for `batch_idle`); a batch is stored (appended
//! to the alert database) and its bad messages written to the dead-letter table before the
//! consumer group's offsets are committed. A crash between the two re-reads the batch on
//! restart, and the tables drop what they already hold by id (a source is kept once, an
//! object's summary replaced by the same), so nothing is lost and nothing is stored twice.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use meridian_catalog::Store;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::avro::{self, ConfluentDecoder};
use crate::dead_letter::{DeadLetter, DeadLetters};
use crate::dia;
use crate::evaluate::{Filtered, Filtering};
use crate::load::{self, Stored};
use crate::{Error, Result};

/// How alerts are consumed.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// Topics to read.
    pub topics: Vec<String>,
    /// Consumer group (its committed offsets say where a restart resumes).
    pub group: String,
    /// Writer schemas by registry id, for Confluent-framed messages.
    pub schemas: Vec<(u32, String)>,
    /// A Confluent schema registry (`http(s)://host:port`) asked for ids not in `schemas`.
    pub registry: Option<String>,
    /// Most alerts stored together.
    pub batch_alerts: usize,
    /// Longest wait for a batch to fill.
    pub batch_wait: Duration,
    /// A batch is cut as soon as no message has come for this long: the topic is idle
    /// (a visit's alerts all read), so waiting out `batch_wait` would only delay them.
    pub batch_idle: Duration,
    /// Stop after no message came for this long (a replay, a test); none: run until
    /// stopped.
    pub stop_when_idle: Option<Duration>,
    /// librdkafka settings (`security.protocol`, `sasl.*`, `session.timeout.ms`, ...).
    pub settings: Vec<(String, String)>,
}

impl ConsumeOptions {
    /// Defaults for `brokers` and `topics`: group `meridian-alerts`, batches of up to
    /// 10,000 alerts (a Rubin visit) or 1 s, cut after 50 ms without a message.
    pub fn new(brokers: &str, topics: &[&str]) -> Self {
        Self {
            brokers: brokers.into(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            group: "meridian-alerts".into(),
            schemas: Vec::new(),
            registry: None,
            batch_alerts: 10_000,
            batch_wait: Duration::from_secs(1),
            batch_idle: Duration::from_millis(50),
            stop_when_idle: None,
            settings: Vec::new(),
        }
    }
}

/// One stored batch.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// Messages read.
    pub messages: usize,
    /// Alerts stored.
    pub alerts: usize,
    /// Messages sent to the dead-letter table.
    pub dead_letters: usize,
    /// Each table's append.
    pub tables: Vec<Stored>,
    /// From the first message read to the offsets' commit.
    pub seconds: f64,
    /// Where those seconds went.
    pub stages: Stages,
    /// Milliseconds from each message's broker timestamp to its batch's commit.
    pub latency: Latency,
    /// What the filters made of it.
    pub filtered: Filtered,
}

/// Seconds of a batch spent in each stage of [`consume`].
#[derive(Debug, Default, Clone, Copy)]
pub struct Stages {
    /// Reading messages (and decoding those that are whole Avro files).
    pub read_s: f64,
    /// Decoding the Confluent-framed messages.
    pub decode_s: f64,
    /// Appending to the DIA tables.
    pub store_s: f64,
    /// Running the filters (while the batch is stored, unless a filter reads the tables
    /// alerts are stored in: the two stages' times then overlap).
    pub filter_s: f64,
    /// Queueing their matches for the outputs.
    pub queue_s: f64,
    /// Committing the offsets.
    pub commit_s: f64,
}

/// Latencies in milliseconds, counted in 1 ms bins up to a minute (the last bin holds
/// longer ones), for percentiles of any number of messages in fixed memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Latency {
    bins: Vec<u64>,
    count: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            bins: vec![0; 60_001],
            count: 0,
        }
    }
}

impl Latency {
    /// Counts one latency.
    pub fn add(&mut self, ms: i64) {
        let i = (ms.max(0) as usize).min(self.bins.len() - 1);
        self.bins[i] += 1;
        self.count += 1;
    }

    /// Adds another's counts.
    pub fn merge(&mut self, other: &Latency) {
        for (a, b) in self.bins.iter_mut().zip(&other.bins) {
            *a += b;
        }
        self.count += other.count;
    }

    /// Latencies counted.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0 to 1) in milliseconds, if any latency was counted.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (ms, n) in self.bins.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(ms as u64);
            }
        }
        Some(self.bins.len() as u64 - 1)
    }
}

/// What a consumer did until it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consumed {
    /// Milliseconds from each message's broker timestamp to its batch's commit.
    pub latency: Latency,
    /// Messages read.
    pub messages: u64,
    /// Alerts stored.
    pub alerts: u64,
    /// Messages sent to the dead-letter table.
    pub dead_letters: u64,
    /// Batches stored.
    pub batches: u64,
}

fn kafka_err(what: &str, e: rdkafka::error::KafkaError) -> Error {
    Error::Kafka(format!("{what}: {e}"))
}

/// Decodes the Confluent-framed messages `framed` (each as the dead letter it would be):
/// runs of one schema together, a run that fails message by message to find the culprits.
/// Returns the alerts with valid positions, each batch with the messages of its rows;
/// every message that cannot be read, or has no valid position, goes to `letters`.
fn decode_framed(
    decoder: &mut ConfluentDecoder,
    framed: Vec<DeadLetter>,
    letters: &mut Vec<DeadLetter>,
) -> Result<Vec<(RecordBatch, Vec<DeadLetter>)>> {
    let dead = |l: &DeadLetter, reason: String| DeadLetter {
        reason,
        ..l.clone()
    };
    let mut out = Vec::new();
    let mut rest = framed.as_slice();
    while let Some(first) = rest.first() {
        let id = ConfluentDecoder::schema_id(&first.payload).ok();
        let run = match id {
            Some(id) => rest
                .iter()
                .take_while(|l| ConfluentDecoder::schema_id(&l.payload).ok() == Some(id))
                .count(),
            None => 1,
        };
        let (group, tail) = rest.split_at(run);
        rest = tail;
        let values: Vec<&[u8]> = group.iter().map(|l| l.payload.as_slice()).collect();
        let decoded: Vec<(RecordBatch, Vec<&DeadLetter>)> = match decoder.decode_all(&values) {
            Ok(b) => vec![(b, group.iter().collect())],
            Err(_) => group
                .iter()
                .filter_map(|l| match decoder.decode(&l.payload) {
                    Ok(b) => Some((b, vec![l])),
                    Err(e) => {
                        letters.push(dead(l, e.to_string()));
                        None
                    }
                })
                .collect(),
        };
        for (a, rows) in decoded {
            // An alert of a shape the tables cannot take (no position column at all) or
            // without a valid position is a dead letter too.
            let bad = match dia::bad_positions(&a) {
                Ok(bad) => bad,
                Err(e) if is_data_error(&e) => {
                    letters.extend(rows.iter().map(|l| dead(l, e.to_string())));
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut kept = Vec::new();
            for (l, reason) in rows.iter().zip(&bad) {
                match reason {
                    Some(r) => letters.push(dead(l, r.clone())),
                    None => kept.push((*l).clone()),
                }
            }
            if kept.is_empty() {
                continue;
            }
            let a = if kept.len() == a.num_rows() {
                a
            } else {
                let keep: arrow::array::BooleanArray =
                    bad.iter().map(|b| Some(b.is_none())).collect();
                arrow::compute::filter_record_batch(&a, &keep)?
            };
            out.push((a, kept));
        }
    }
    Ok(out)
}

/// Reads alerts from Kafka into the alert database until `stop` is set (or the stream is
/// idle for `stop_when_idle`), calling `on_batch` after each batch is stored, filtered
/// (by `filtering`, when given) and committed. While more matches wait for delivery than
/// `filtering` allows, the consumer stops reading (its partitions paused).
pub fn consume(
    store: &Store,
    dead: &DeadLetters,
    opts: &ConsumeOptions,
    filtering: Option<&Filtering>,
    stop: &AtomicBool,
    mut on_batch: impl FnMut(&Batch),
) -> Result<Consumed> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &opts.brokers)
        .set("group.id", &opts.group)
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Fetches of up to 16 MiB a partition (librdkafka's default, 1 MiB, is a dozen
        // Rubin alerts with their cutouts a round trip): the next batch is fetched while
        // one is stored and filtered. Settings given override these.
        .set("max.partition.fetch.bytes", "16777216")
        .set("fetch.max.bytes", "67108864");
    for (k, v) in &opts.settings {
        config.set(k, v);
    }
    // Offsets are committed by hand, after a batch is stored.
    config
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| kafka_err(&format!("brokers {}", opts.brokers), e))?;
    let topics: Vec<&str> = opts.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| kafka_err(&format!("topics {topics:?}"), e))?;
    let mut decoder = ConfluentDecoder::new();
    for (id, json) in &opts.schemas {
        decoder.register(*id, json)?;
    }
    if let Some(url) = &opts.registry {
        decoder.use_registry(crate::schemas::Registry::new(url)?);
    }
    tracing::info!(brokers = %opts.brokers, topics = ?opts.topics, group = %opts.group, "consuming alerts");
    let mut total = Consumed::default();
    let compactor = load::Compactor::start(store);
    // Three stages, each on a thread of its own, a batch apart (one batch waits at most
    // between two): reading and decoding; storing and filtering; queueing the matches and
    // committing the offsets (here). Batches go through them in order, so offsets are
    // committed in order.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Read>(1);
    let (filtered_tx, filtered_rx) = std::sync::mpsc::sync_channel::<FilteredBatch>(1);
    let halt = AtomicBool::new(false);
    let halted = || stop.load(Ordering::Relaxed) || halt.load(Ordering::Relaxed);
    std::thread::scope(|scope| -> Result<Consumed> {
        let reader = std::thread::Builder::new()
            .name("alert-reader".into())
            .spawn_scoped(scope, || {
                read_batches(&consumer, &mut decoder, opts, filtering, &halted, tx)
            })
            .map_err(|e| Error::Kafka(format!("starting the reader: {e}")))?;
        let filterer = std::thread::Builder::new()
            .name("alert-filter".into())
            .spawn_scoped(scope, move || -> Result<()> {
                for read in rx {
                    let done = store_and_filter(store, dead, filtering, &compactor, read)?;
                    if filtered_tx.send(done).is_err() {
                        break;
                    }
                }
                Ok(())
            })
            .map_err(|e| Error::Kafka(format!("starting the filter stage: {e}")))?;
        let committed = (|| -> Result<()> {
            for done in &filtered_rx {
                let batch = queue_and_commit(&consumer, filtering, done)?;
                total.latency.merge(&batch.latency);
                total.messages += batch.messages as u64;
                total.alerts += batch.alerts as u64;
                total.dead_letters += batch.dead_letters as u64;
                total.batches += 1;
                on_batch(&batch);
            }
            Ok(())
        })();
        // After a failure here, the other stages stop at their next check.
        halt.store(true, Ordering::Relaxed);
        drop(filtered_rx);
        let filtered = filterer
            .join()
            .map_err(|_| Error::Kafka("the alert filter stage panicked".into()))?;
        let read = reader
            .join()
            .map_err(|_| Error::Kafka("the alert reader panicked".into()))?;
        committed?;
        filtered?;
        read?;
        Ok(total)
    })
}

/// Where a batch's messages came from, carried through the stages to its commit.
struct Span {
    /// The last offset read of each partition, and the first.
    offsets: BTreeMap<(String, i32), i64>,
    firsts: BTreeMap<(String, i32), i64>,
    /// Messages' broker timestamps, ms.
    stamps: Vec<i64>,
    /// When its first message was read.
    started: Option<Instant>,
}

/// One batch as read and decoded, to be stored.
struct Read {
    batch: Batch,
    alerts: Vec<RecordBatch>,
    /// The dead letter each row of each entry of `alerts` would be (its message).
    origins: Vec<Vec<DeadLetter>>,
    letters: Vec<DeadLetter>,
    span: Span,
}

/// A batch stored and filtered, its matches to be queued and its offsets committed.
struct FilteredBatch {
    batch: Batch,
    matches: Vec<crate::filters::Match>,
    span: Span,
}

/// Reads and decodes batches, handing each to `tx`, until `halted` (or the stream is
/// idle for `stop_when_idle`, or no one takes them). Holds back while the outputs are
/// behind.
fn read_batches(
    consumer: &BaseConsumer,
    decoder: &mut ConfluentDecoder,
    opts: &ConsumeOptions,
    filtering: Option<&Filtering>,
    halted: &dyn Fn() -> bool,
    tx: std::sync::mpsc::SyncSender<Read>,
) -> Result<()> {
    let mut last_message = Instant::now();
    // The next offset expected of each partition: a message beyond it means the broker
    // skipped some (retention, compaction, or a broker that answers a fetch from inside
    // a record batch with the next batch), which the log says.
    let mut expected: BTreeMap<(String, i32), i64> = BTreeMap::new();
    while !halted() {
        // Time spent waiting for the outputs is not idle time of the stream.
        if let Some(f) = filtering
            && hold_back(consumer, f, halted)?
        {
            last_message = Instant::now();
        }
        let mut batch = Batch::default();
        let mut alerts: Vec<RecordBatch> = Vec::new();
        // The dead letter each row of each entry of `alerts` would be (its message), if it
        // fails.
        let mut origins: Vec<Vec<DeadLetter>> = Vec::new();
        // Messages in the Confluent wire format, decoded together once the batch is read
        // (a decode per message costs more than the rest of the ingest), each kept as the
        // dead letter it would be.
        let mut framed: Vec<DeadLetter> = Vec::new();
        let mut letters: Vec<DeadLetter> = Vec::new();
        let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut firsts: BTreeMap<(String, i32), i64> = BTreeMap::new();
        let mut stamps: Vec<i64> = Vec::new();
        let mut started: Option<Instant> = None;
        loop {
            let waited = started.map_or(Duration::ZERO, |s| s.elapsed());
            if batch.alerts + framed.len() >= opts.batch_alerts
                || waited >= opts.batch_wait
                || halted()
            {
                break;
            }
            // Once a batch has begun, a poll that waits `batch_idle` in vain ends it.
            let most = if started.is_some() {
                opts.batch_idle
            } else {
                Duration::from_millis(200)
            };
            let timeout = (opts.batch_wait - waited).min(most);
            let message = match consumer.poll(timeout) {
                None if started.is_some() => break,
                None => {
                    // Idle time counts from the group's assignment of partitions.
                    if !assigned(consumer) {
                        last_message = Instant::now();
                    }
                    // No batch begun here (a begun one ends at its first empty poll).
                    if opts
                        .stop_when_idle
                        .is_some_and(|idle| last_message.elapsed() >= idle)
                    {
                        break;
                    }
                    continue;
                }
                Some(Err(e)) => {
                    // librdkafka retries by itself; a fatal error ends the consumer.
                    if matches!(e.rdkafka_error_code(), Some(c) if c == rdkafka::types::RDKafkaErrorCode::Fatal)
                    {
                        return Err(kafka_err("consumer", e));
                    }
                    tracing::warn!(error = %e, "kafka");
                    continue;
                }
                Some(Ok(m)) => m,
            };
            started.get_or_insert_with(Instant::now);
            last_message = Instant::now();
            batch.messages += 1;
            let (topic, partition, offset) =
                (message.topic(), message.partition(), message.offset());
            let key = (topic.to_string(), partition);
            offsets.insert(key.clone(), offset);
            firsts.entry(key.clone()).or_insert(offset);
            let next = match expected.get(&key) {
                Some(n) => Some(*n),
                None => committed(consumer, topic, partition),
            };
            if let Some(next) = next.filter(|n| offset > *n) {
                tracing::warn!(
                    %topic,
                    partition,
                    skipped = %format!("{next}..{}", offset - 1),
                    "the broker skipped offsets: those messages were not read"
                );
            }
            expected.insert(key, offset + 1);
            if let Some(ms) = message.timestamp().to_millis() {
                stamps.push(ms);
            }
            let value = message.payload().unwrap_or(&[]);
            let letter = |reason: String| DeadLetter {
                source: topic.to_string(),
                partition: Some(partition),
                offset,
                reason,
                payload: value.to_vec(),
            };
            if !avro::is_container(value) {
                framed.push(letter(String::new()));
                continue;
            }
            match avro::read_container("message", value) {
                Ok((_, decoded)) => {
                    for a in decoded {
                        let offsets = vec![offset; a.num_rows()];
                        // An alert of a shape the tables cannot take (no position
                        // column at all) is a dead letter too.
                        let good = match load::screen(&a, &offsets, |_, r| letter(r), &mut letters)
                        {
                            Ok(good) => good,
                            Err(e) if is_data_error(&e) => {
                                letters.push(letter(e.to_string()));
                                continue;
                            }
                            Err(e) => return Err(e),
                        };
                        batch.alerts += good.num_rows();
                        if good.num_rows() > 0 {
                            origins.push(vec![letter(String::new()); good.num_rows()]);
                            alerts.push(good);
                        }
                    }
                }
                Err(e) => letters.push(letter(e.to_string())),
            }
        }
        let clock = Instant::now();
        batch.stages.read_s = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        for (a, rows) in decode_framed(decoder, framed, &mut letters)? {
            batch.alerts += a.num_rows();
            alerts.push(a);
            origins.push(rows);
        }
        if batch.messages == 0 {
            if opts
                .stop_when_idle
                .is_some_and(|idle| last_message.elapsed() >= idle)
            {
                break;
            }
            continue;
        }
        batch.stages.decode_s = clock.elapsed().as_secs_f64();
        let read = Read {
            batch,
            alerts,
            origins,
            letters,
            span: Span {
                offsets,
                firsts,
                stamps,
                started,
            },
        };
        if tx.send(read).is_err() {
            break;
        }
        // Time spent storing the batch before is not idleness.
        last_message = Instant::now();
    }
    Ok(())
}

/// Stores a batch read, writes its dead letters and runs the filters over it.
fn store_and_filter(
    store: &Store,
    dead: &DeadLetters,
    filtering: Option<&Filtering>,
    compactor: &load::Compactor,
    read: Read,
) -> Result<FilteredBatch> {
    let Read {
        mut batch,
        mut alerts,
        origins,
        mut letters,
        span,
    } = read;
    // Filters that do not read the tables alerts are stored in run while the batch is
    // stored; the others after it.
    let filters = match filtering {
        Some(f) => f.active()?,
        None => Vec::new(),
    };
    let alongside = filtering.filter(|_| !Filtering::read_stored_alerts(&filters));
    let (first, early) = std::thread::scope(|scope| -> Result<_> {
        let early = alongside
            .map(|f| {
                std::thread::Builder::new()
                    .name("alert-filter-run".into())
                    .spawn_scoped(scope, || {
                        let clock = Instant::now();
                        (f.run(&filters, &alerts), clock.elapsed().as_secs_f64())
                    })
                    .map_err(|e| Error::Kafka(format!("starting the filters' run: {e}")))
            })
            .transpose()?;
        let clock = Instant::now();
        let first = store_by_schema(store, &alerts);
        let stored_s = clock.elapsed().as_secs_f64();
        let early = early
            .map(|h| {
                h.join()
                    .map_err(|_| Error::Kafka("the alert filters' run panicked".into()))
            })
            .transpose()?;
        Ok((first.map(|t| (t, stored_s)), early))
    })?;
    let clock = Instant::now();
    // Stored, then dead letters written (the offsets are committed in the next stage).
    let (tables, early) = match first {
        Ok((t, stored_s)) => {
            batch.stages.store_s = stored_s;
            (t, early)
        }
        Err(e) if is_data_error(&e) => {
            // One alert the tables cannot take fails its whole batch: the alerts are
            // stored one by one, and those that fail become dead letters. The filters
            // then run over the alerts kept.
            tracing::warn!(error = %e, "a batch could not be stored whole: storing its alerts one by one");
            let mut tables = Vec::new();
            let mut kept = Vec::new();
            for (a, rows) in alerts.iter().zip(origins) {
                for (i, origin) in rows.into_iter().enumerate() {
                    let one = a.slice(i, 1);
                    match store_by_schema(store, std::slice::from_ref(&one)) {
                        Ok(t) => {
                            tables.extend(t);
                            kept.push(one);
                        }
                        Err(e) if is_data_error(&e) => {
                            batch.alerts -= 1;
                            letters.push(DeadLetter {
                                reason: e.to_string(),
                                ..origin
                            });
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            alerts = kept;
            batch.stages.store_s = clock.elapsed().as_secs_f64();
            (tables, None)
        }
        Err(e) => return Err(e),
    };
    batch.tables = tables;
    compactor.after(&batch.tables);
    dead.add(&letters)?;
    batch.dead_letters = letters.len();
    let clock = Instant::now();
    let mut matches = Vec::new();
    if let Some(f) = filtering {
        // The stage's time: the filters' own run (alongside the store or now) and settling.
        let (outcomes, run_s) = match early {
            Some((outcomes, run_s)) => (outcomes?, run_s),
            None => (f.run(&filters, &alerts)?, 0.0),
        };
        (batch.filtered, matches) = f.settle(&filters, outcomes)?;
        batch.stages.filter_s = run_s;
    }
    batch.stages.filter_s += clock.elapsed().as_secs_f64();
    Ok(FilteredBatch {
        batch,
        matches,
        span,
    })
}

/// Queues a filtered batch's matches, then commits its offsets.
fn queue_and_commit(
    consumer: &BaseConsumer,
    filtering: Option<&Filtering>,
    done: FilteredBatch,
) -> Result<Batch> {
    let FilteredBatch {
        mut batch,
        matches,
        span:
            Span {
                offsets,
                firsts,
                stamps,
                started,
            },
    } = done;
    let clock = Instant::now();
    if let Some(f) = filtering {
        batch.filtered.matches = f.queue(&matches)?;
    }
    batch.stages.queue_s = clock.elapsed().as_secs_f64();
    let clock = Instant::now();
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), offset) in &offsets {
        tpl.add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
            .map_err(|e| kafka_err("offsets", e))?;
    }
    consumer
        .commit(&tpl, CommitMode::Sync)
        .map_err(|e| kafka_err("committing offsets", e))?;
    batch.stages.commit_s = clock.elapsed().as_secs_f64();
    batch.seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for t in stamps {
        batch.latency.add(now_ms - t);
    }
    let ranges: Vec<String> = offsets
        .iter()
        .map(|((t, p), last)| format!("{t}[{p}]:{}..={last}", firsts[&(t.clone(), *p)]))
        .collect();
    tracing::info!(
        offsets = %ranges.join(","),
        messages = batch.messages,
        alerts = batch.alerts,
        dead_letters = batch.dead_letters,
        seconds = batch.seconds,
        read_s = batch.stages.read_s,
        decode_s = batch.stages.decode_s,
        store_s = batch.stages.store_s,
        filter_s = batch.stages.filter_s,
        queue_s = batch.stages.queue_s,
        commit_s = batch.stages.commit_s,
        "alert batch stored"
    );
    Ok(batch)
}

/// Whether an error is the alerts' (they cannot be stored: a dead letter) rather than the
/// store's (a full disk, a lost directory: the consumer stops, nothing committed).
fn is_data_error(e: &Error) -> bool {
    match e {
        Error::Avro(_) | Error::Shape(_) | Error::Arrow(_) => true,
        Error::Catalog(c) => matches!(
            c,
            meridian_catalog::Error::Invalid(_) | meridian_catalog::Error::Arrow(_)
        ),
        Error::Io { .. }
        | Error::Kafka(_)
        | Error::Invalid(_)
        | Error::NotFound(_)
        | Error::Conflict(_)
        | Error::Query(_)
        | Error::Database(_) => false,
    }
}

/// How long [`hold_back`] waits without polling before it pauses the partitions (and polls,
/// to stay in the group): well within librdkafka's `max.poll.interval.ms` (5 minutes).
const WAIT_UNPAUSED: Duration = Duration::from_secs(60);

/// Waits while more matches wait for delivery than `f` allows; whether it waited.
///
/// The consumer stops polling: librdkafka goes on fetching only until its queue is full
/// (`queued.max.messages.kbytes`), and the messages it holds stay where they are.
/// Pausing the partitions instead would drop those and fetch again from the next offset,
/// which may lie inside a record batch (some brokers, Tansu 0.6 among them, answer such a
/// fetch with the next batch). A wait past [`WAIT_UNPAUSED`] pauses the partitions and
/// polls, so that the consumer keeps its place in the group.
fn hold_back(consumer: &BaseConsumer, f: &Filtering, halted: &dyn Fn() -> bool) -> Result<bool> {
    let mut backlog = f.backlog()?;
    if backlog <= f.max_backlog {
        return Ok(false);
    }
    tracing::warn!(
        backlog,
        limit = f.max_backlog,
        "outputs are behind: reading held back"
    );
    let start = Instant::now();
    let mut paused = None;
    while backlog > f.max_backlog && !halted() {
        if paused.is_none() && start.elapsed() >= WAIT_UNPAUSED {
            let assignment = consumer
                .assignment()
                .map_err(|e| kafka_err("assignment", e))?;
            consumer
                .pause(&assignment)
                .map_err(|e| kafka_err("pausing", e))?;
            tracing::warn!(backlog, "outputs still behind: partitions paused");
            paused = Some(assignment);
        }
        if paused.is_some() {
            // Paused partitions yield nothing; polling keeps the group membership.
            let _ = consumer.poll(Duration::from_millis(200));
        } else {
            std::thread::sleep(Duration::from_millis(20));
        }
        backlog = f.backlog()?;
    }
    if let Some(assignment) = paused {
        consumer
            .resume(&assignment)
            .map_err(|e| kafka_err("resuming", e))?;
    }
    tracing::info!(
        backlog,
        seconds = start.elapsed().as_secs_f64(),
        "reading resumed"
    );
    Ok(true)
}

/// Whether the consumer group has given this consumer partitions yet.
fn assigned(consumer: &BaseConsumer) -> bool {
    consumer.assignment().is_ok_and(|a| a.count() > 0)
}

/// Stores alerts read with different writer schemas (or of both surveys) in groups of one
/// schema each.
fn store_by_schema(store: &Store, alerts: &[RecordBatch]) -> Result<Vec<Stored>> {
    let mut groups: Vec<(arrow::datatypes::SchemaRef, Vec<RecordBatch>)> = Vec::new();
    for a in alerts.iter().filter(|a| a.num_rows() > 0) {
        match groups.iter_mut().find(|(s, _)| *s == a.schema()) {
            Some((_, v)) => v.push(a.clone()),
            None => groups.push((a.schema(), vec![a.clone()])),
        }
    }
    let mut stored = Vec::new();
    for (schema, batches) in groups {
        let one = arrow::compute::concat_batches(&schema, &batches)?;
        stored.extend(load::store_alerts(store, &[one])?);
    }
    Ok(stored)
}

/// How replayed alerts are framed in their messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The Confluent wire format with this schema id (as Rubin publishes).
    Confluent(u32),
    /// An Avro object container of one alert, schema included (as ZTF publishes).
    Container,
}

/// The group's committed offset of a partition, if it has one.
fn committed(consumer: &BaseConsumer, topic: &str, partition: i32) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(5))
        .ok()?;
    match got.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

/// Makes sure `topic` exists on `brokers` (one partition) before anything is produced to
/// it: see [`ensure_topics`].
pub fn ensure_topic<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    brokers: &str,
    topic: &str,
) {
    ensure_topics(client, brokers, &[topic]);
}

/// Makes sure `topics` exist on `brokers` (one partition each) before anything is produced
/// to them: brokers that do not create topics on first use (Tansu; Kafka with
/// `auto.create.topics.enable=false`) would refuse the messages. Topics the broker knows,
/// or creates when a metadata request names them, need no admin request; the others are
/// created in one request. A refusal is logged, the broker then decides on the first
/// message.
pub fn ensure_topics<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    brokers: &str,
    topics: &[&str],
) {
    let known: std::collections::HashSet<String> =
        match client.fetch_metadata(None, Duration::from_secs(10)) {
            Ok(md) => md
                .topics()
                .iter()
                .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.name().to_string())
                .collect(),
            Err(_) => Default::default(),
        };
    // A broker that creates topics on first use does so on a metadata request naming it.
    let missing: Vec<&str> = topics
        .iter()
        .copied()
        .filter(|t| !known.contains(*t))
        .filter(|t| {
            !client
                .fetch_metadata(Some(t), Duration::from_secs(10))
                .is_ok_and(|md| {
                    md.topics().iter().any(|m| {
                        m.name() == *t && m.error().is_none() && !m.partitions().is_empty()
                    })
                })
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: std::result::Result<AdminClient<rdkafka::client::DefaultClientContext>, _> =
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create();
    let Ok(admin) = admin else {
        return;
    };
    let new: Vec<NewTopic> = missing
        .iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(10)));
    match futures::executor::block_on(admin.create_topics(&new, &opts)) {
        Ok(results) => {
            for r in results {
                if let Err((t, code)) = r
                    && code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists
                {
                    tracing::warn!(topic = %t, error = %code, "creating a topic");
                }
            }
        }
        Err(e) => tracing::warn!(topics = ?missing, error = %e, "creating topics"),
    }
}

/// Publishes the alerts of Avro files (one record per block, uncompressed: see
/// [`avro::single_records`]) to a Kafka topic, one message each, keyed by nothing, at
/// `rate` alerts a second if given; returns the messages sent once all are acknowledged.
pub fn replay(
    files: &[std::path::PathBuf],
    brokers: &str,
    topic: &str,
    framing: Framing,
    rate: Option<f64>,
    settings: &[(String, String)],
) -> Result<u64> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .set("message.max.bytes", "10000000");
    for (k, v) in settings {
        config.set(k, v);
    }
    let producer: BaseProducer<Deliveries> = config
        .create_with_context(Deliveries::default())
        .map_err(|e| kafka_err(&format!("brokers {brokers}"), e))?;
    ensure_topic(producer.client(), brokers, topic);
    let start = Instant::now();
    let mut sent = 0u64;
    for f in files {
        let name = f.display().to_string();
        let data = std::fs::read(f).map_err(|source| Error::Io {
            path: name.clone(),
            source,
        })?;
        for record in avro::single_records(&name, &data)? {
            let value = match framing {
                Framing::Confluent(id) => {
                    let mut v = Vec::with_capacity(record.len() + 5);
                    v.push(0);
                    v.extend_from_slice(&id.to_be_bytes());
                    v.extend_from_slice(record);
                    v
                }
                Framing::Container => avro::single_record_container(&name, &data, record)?,
            };
            if let Some(rate) = rate.filter(|r| *r > 0.0) {
                let due = Duration::from_secs_f64(sent as f64 / rate);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            loop {
                match producer.send(BaseRecord::<(), [u8]>::to(topic).payload(&value)) {
                    Ok(()) => break,
                    Err((e, _))
                        if e.rdkafka_error_code()
                            == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                    {
                        producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => return Err(kafka_err(&format!("topic {topic}"), e)),
                }
            }
            producer.poll(Duration::ZERO);
            sent += 1;
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| kafka_err(&format!("topic {topic}"), e))?;
    let ctx = producer.context();
    let failed = ctx.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = ctx
            .first_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        return Err(Error::Kafka(format!(
            "topic {topic}: {failed} of {sent} alerts were not delivered (the first: {first})"
        )));
    }
    Ok(sent)
}

/// Counts the messages the brokers did not acknowledge.
#[derive(Default)]
struct Deliveries {
    failed: std::sync::atomic::AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl rdkafka::ClientContext for Deliveries {}

impl rdkafka::producer::ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            self.first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert_with(|| e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Latency;

    #[test]
    fn latency_quantiles_count_in_milliseconds() {
        let mut l = Latency::default();
        assert_eq!(l.quantile(0.5), None);
        for ms in 1..=100 {
            l.add(ms);
        }
        l.add(-5);
        l.add(10_000_000);
        assert_eq!(l.count(), 102);
        assert_eq!(l.quantile(0.5), Some(50));
        assert_eq!(l.quantile(0.99), Some(100));
        assert_eq!(l.quantile(1.0), Some(60_000));
        assert_eq!(l.quantile(0.0), Some(0));
        let mut m = Latency::default();
        m.merge(&l);
        assert_eq!(m, l);
    }
}
