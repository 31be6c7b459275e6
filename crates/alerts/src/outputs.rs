//! Delivery of queued matches (see [`crate::filters`]) to filters' Kafka topics and
//! webhooks, on a thread of the consumer.
//!
//! - **Kafka**: each match is one message on the filter's topic (partition 0, so a topic
//!   holds a filter's matches in order), keyed by alert id, the JSON of
//!   [`crate::filters::Queued::payload`]. Matches are marked in flight before they are
//!   sent in the outbox's order; the outbox's Kafka cursor moves past the matches the
//!   broker acknowledged, up to the first one not yet answered, and each topic keeps a
//!   mark, the offset after its last match recorded so. After a crash, the matches after
//!   the cursor are looked up in their topic from its mark on (only Meridian writes
//!   there): those found count as delivered, the others are sent. So a topic gets each
//!   match once.
//! - **Webhook**: an HTTP POST of the same JSON, with the header `Idempotency-Key:
//!   <filter>-<alertId>`; a 2xx answer delivers it, anything else is retried after a
//!   backoff doubling from one second, up to [`crate::filters::WEBHOOK_ATTEMPTS`] tries.
//!   After a crash in the middle of a request the match is posted again with the same key
//!   (a webhook cannot be asked what it received), so receivers drop repeats by the key.
//!   Webhooks may not reach this machine or private networks unless allowed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::filters::{FilterStore, Output, Progress, Queued};
use crate::{Error, Result};

/// How matches are delivered.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Brokers of the filters' topics (host:port[,...]); without them Kafka outputs wait.
    pub brokers: Option<String>,
    /// librdkafka settings of the producer.
    pub settings: Vec<(String, String)>,
    /// Whether webhooks may reach this machine and private networks.
    pub webhook_allow_private: bool,
    /// Longest wait for a webhook's answer.
    pub webhook_timeout: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            brokers: None,
            settings: Vec::new(),
            webhook_allow_private: false,
            webhook_timeout: Duration::from_secs(10),
        }
    }
}

pub use meridian_services::net::public_address;

/// Checks a webhook URL: http or https, a host that resolves, and (unless
/// `allow_private`) only to public addresses.
pub fn check_webhook(url: &str, allow_private: bool) -> Result<()> {
    let bad = |why: String| Error::Invalid(format!("webhook '{url}': {why}"));
    let uri: ureq::http::Uri = url.parse().map_err(|e| bad(format!("not a URL: {e}")))?;
    let default_port = match uri.scheme_str() {
        Some("https") => 443,
        Some("http") => 80,
        _ => {
            return Err(bad(
                "only http:// and https:// URLs can receive matches".into()
            ));
        }
    };
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(bad("credentials in the URL are not accepted".into()));
    }
    let host = uri
        .host()
        .map(|h| h.trim_matches(|c| c == '[' || c == ']'))
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("no host".into()))?;
    // The port as written (the URI parser lets some non-numeric ports through).
    let authority = uri.authority().map_or("", |a| a.as_str());
    let port = match authority.rsplit_once(':') {
        Some((_, p)) if !p.contains(']') => p
            .parse::<u16>()
            .map_err(|_| bad(format!("'{p}' is not a port number")))?,
        _ => default_port,
    };
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(format!("cannot resolve the host: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(bad("the host has no address".into()));
    }
    if !allow_private && addrs.iter().any(|a| !public_address(a.ip())) {
        return Err(bad(
            "the host is this machine or a private network, which webhooks may not reach".into(),
        ));
    }
    Ok(())
}

/// Collects the broker's acknowledgements of sent matches: outbox sequence number, topic
/// and offset.
#[derive(Default)]
struct Acks {
    done: Mutex<Vec<(i64, String, i64)>>,
    failed: Mutex<Vec<(i64, String)>>,
}

impl rdkafka::ClientContext for Acks {}

impl rdkafka::producer::ProducerContext for Acks {
    type DeliveryOpaque = Box<i64>;

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, seq: Box<i64>) {
        match result {
            Ok(m) => self.done.lock().unwrap_or_else(|p| p.into_inner()).push((
                *seq,
                m.topic().to_string(),
                m.offset(),
            )),
            Err((e, _)) => self
                .failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((*seq, e.to_string())),
        }
    }
}

/// Matches sent to Kafka and not yet answered above which no more are sent.
const MAX_IN_FLIGHT: usize = 50_000;

/// Matches read from the outbox at most per round.
const ROUND_MATCHES: usize = 10_000;

/// Webhook posts at most per round (each waits for its answer).
const ROUND_POSTS: usize = 200;

/// A match read for Kafka and not yet behind the cursor.
enum Flight {
    /// Sent; the broker's answer not yet taken.
    Sent(Queued),
    /// Acknowledged at this topic and offset.
    Acked(String, i64),
    /// Nothing more to do: no topic to send it to, or its failure recorded (a retry).
    Settled,
}

/// Where Kafka delivery stands in this process.
#[derive(Default)]
struct KafkaLane {
    /// Matches after the cursor read so far, by sequence number; the cursor moves up to
    /// the first one still sent and unanswered.
    flying: std::collections::BTreeMap<i64, Flight>,
    /// How many of `flying` are [`Flight::Sent`].
    sent: usize,
    /// The outbox was read up to this sequence number.
    read_to: i64,
    /// The cursor as last recorded.
    cursor: i64,
    /// Retries sent and not yet answered, by sequence number.
    retrying: HashMap<i64, Queued>,
}

impl KafkaLane {
    /// Matches sent and not yet answered.
    fn in_flight(&self) -> usize {
        self.sent + self.retrying.len()
    }
}

/// Delivers queued matches until stopped.
pub struct Deliverer {
    store: Arc<FilterStore>,
    opts: DeliveryOptions,
    producer: Option<BaseProducer<Acks>>,
    agent: ureq::Agent,
    /// Topics made sure to exist.
    topics: std::collections::HashSet<String>,
    kafka: KafkaLane,
    /// The webhooks' cursor as last recorded (posts are answered before a round ends).
    webhook_cursor: i64,
}

/// Matches each output received in one round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Matches published to Kafka (acknowledged by the broker).
    pub kafka: usize,
    /// Matches sent to Kafka and not yet acknowledged.
    pub kafka_in_flight: usize,
    /// Matches posted to webhooks.
    pub webhook: usize,
    /// Webhook posts that failed (to be retried, or given up).
    pub webhook_failures: usize,
}

impl Deliverer {
    /// A deliverer of `store`'s outbox; matches an earlier process may have sent without
    /// recording it are looked up first (see the module's description).
    pub fn new(store: Arc<FilterStore>, opts: DeliveryOptions) -> Result<Self> {
        let producer = match &opts.brokers {
            Some(brokers) => {
                let mut config = ClientConfig::new();
                config
                    .set("bootstrap.servers", brokers)
                    .set("enable.idempotence", "true")
                    .set("linger.ms", "5");
                for (k, v) in &opts.settings {
                    config.set(k, v);
                }
                Some(
                    config
                        .create_with_context(Acks::default())
                        .map_err(|e| Error::Kafka(format!("brokers {brokers}: {e}")))?,
                )
            }
            None => None,
        };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(opts.webhook_timeout))
            .max_redirects(0)
            .http_status_as_error(false)
            .build()
            .into();
        let cursor = store.cursor(Output::Kafka)?;
        let webhook_cursor = store.cursor(Output::Webhook)?;
        let d = Self {
            store,
            opts,
            producer,
            agent,
            topics: Default::default(),
            kafka: KafkaLane {
                read_to: cursor,
                cursor,
                ..Default::default()
            },
            webhook_cursor,
        };
        d.recover()?;
        Ok(d)
    }

    /// Looks up, on their topics, the matches an earlier process may have sent to Kafka
    /// without recording it (those after the cursor, and retries): the ones found are
    /// recorded as delivered, the others are sent as usual. Webhooks need nothing: their
    /// matches after the cursor are posted again, with the same idempotency keys.
    fn recover(&self) -> Result<()> {
        let Some(brokers) = &self.opts.brokers else {
            return Ok(());
        };
        let topics = self.topic_names()?;
        let mut wanted = std::collections::BTreeSet::new();
        let unknown = self.store.each_undelivered(Output::Kafka, |q| {
            if let Some(t) = topics.get(&q.filter) {
                wanted.insert(t.clone());
            }
        })?;
        if wanted.is_empty() {
            return Ok(());
        }
        let marks = self.store.kafka_marks()?;
        let mut keys = HashMap::new();
        for topic in wanted {
            let found = self.keys_after(brokers, &topic, marks.get(&topic).copied())?;
            keys.insert(topic, found);
        }
        let mut found = Vec::new();
        self.store.each_undelivered(Output::Kafka, |q| {
            let on_topic = topics
                .get(&q.filter)
                .and_then(|t| keys.get(t))
                .is_some_and(|k| k.contains(&q.alert_id.to_string()));
            if on_topic {
                found.push(q.seq);
            }
        })?;
        tracing::info!(
            delivered = found.len(),
            to_send = unknown - found.len(),
            "matches an earlier run may have sent to Kafka, looked up on their topics"
        );
        self.store.record(
            Output::Kafka,
            &Progress {
                delivered: found,
                ..Default::default()
            },
        )
    }

    /// The keys of partition 0 of `topic` from offset `mark` (from its start without one)
    /// to its end.
    ///
    /// A broker may answer a fetch that starts inside a record batch with the next batch
    /// (Tansu 0.6 does), which would hide the batch's messages after `mark`: reading starts
    /// further back until the first message read is at or before `mark`. The high
    /// watermark is not used (Tansu 0.6 counts batches there, not messages).
    fn keys_after(
        &self,
        brokers: &str,
        topic: &str,
        mark: Option<i64>,
    ) -> Result<std::collections::HashSet<String>> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", "meridian-outputs-recovery")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()
            .map_err(|e| Error::Kafka(format!("brokers {brokers}: {e}")))?;
        let low = match consumer.fetch_watermarks(topic, 0, Duration::from_secs(10)) {
            Ok((low, _)) => low,
            // No such topic yet: nothing was delivered to it.
            Err(_) => return Ok(Default::default()),
        };
        let wanted = mark.unwrap_or(low).max(low);
        let mut start = wanted;
        let mut back = 1000;
        loop {
            let (keys, first) = Self::read_keys(&consumer, topic, start)?;
            if first.is_some_and(|f| f <= wanted) || start == low {
                return Ok(keys);
            }
            tracing::info!(
                %topic,
                from = start,
                first_read = ?first,
                "no message read at a topic's mark; reading from further back"
            );
            start = (start - back).max(low);
            back *= 4;
        }
    }

    /// The keys of partition 0 of `topic` from offset `start` to its end, and the first
    /// offset the broker returned.
    fn read_keys(
        consumer: &BaseConsumer,
        topic: &str,
        start: i64,
    ) -> Result<(std::collections::HashSet<String>, Option<i64>)> {
        let mut keys = std::collections::HashSet::new();
        let mut first = None;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Offset(start))
            .map_err(|e| Error::Kafka(format!("topic {topic}: {e}")))?;
        consumer
            .assign(&tpl)
            .map_err(|e| Error::Kafka(format!("topic {topic}: {e}")))?;
        // A broker that says where the partition ends ends the read; one that does not
        // (Tansu 0.6 past its miscounted high watermark) is read until it has been quiet
        // for a while (only Meridian writes there, and the deliverer is not running yet).
        let quiet = Duration::from_secs(5);
        let mut heard = std::time::Instant::now();
        while heard.elapsed() < quiet {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    heard = std::time::Instant::now();
                    first.get_or_insert(m.offset());
                    if let Some(k) = m.key() {
                        keys.insert(String::from_utf8_lossy(k).into_owned());
                    }
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => tracing::warn!(error = %e, %topic, "reading a topic's end"),
                None => {}
            }
        }
        Ok((keys, first))
    }

    /// Filters' Kafka topics, by filter id.
    fn topic_names(&self) -> Result<HashMap<i64, String>> {
        Ok(self
            .store
            .list(None)?
            .into_iter()
            .filter_map(|f| f.outputs.kafka_topic.map(|t| (f.id, t)))
            .collect())
    }

    /// Delivers what is due; returns what was delivered.
    pub fn round(&mut self) -> Result<Round> {
        let mut round = Round::default();
        let filters: HashMap<i64, crate::filters::Filter> = self
            .store
            .list(None)?
            .into_iter()
            .map(|f| (f.id, f))
            .collect();
        if self.producer.is_some() {
            self.ensure_topics(&filters);
            round.kafka = self.kafka_round(&filters)?;
            round.kafka_in_flight = self.kafka.in_flight();
        }
        let (sent, failed) = self.webhook_round(&filters)?;
        round.webhook = sent;
        round.webhook_failures = failed;
        Ok(round)
    }

    /// Makes sure the Kafka topics of all `filters` exist, those not seen yet in one
    /// request: at the first round, every filter's topic at once, before its first match
    /// (creating topics one round at a time, as their first matches came, held each round
    /// up by a metadata request and an admin client's start).
    fn ensure_topics(&mut self, filters: &HashMap<i64, crate::filters::Filter>) {
        let new: std::collections::BTreeSet<&str> = filters
            .values()
            .filter_map(|f| f.outputs.kafka_topic.as_deref())
            .filter(|t| !self.topics.contains(*t))
            .collect();
        if new.is_empty() {
            return;
        }
        let (Some(brokers), Some(producer)) = (&self.opts.brokers, &self.producer) else {
            return;
        };
        let new: Vec<&str> = new.into_iter().collect();
        crate::kafka::ensure_topics(producer.client(), brokers, &new);
        self.topics.extend(new.into_iter().map(String::from));
    }

    /// Hands match `q` to the producer for `topic`; a refusal comes back as a failed
    /// answer.
    fn send(&self, topic: &str, q: &Queued) {
        let producer = self.producer.as_ref().expect("checked by the caller");
        let key = q.alert_id.to_string();
        let mut record = BaseRecord::with_opaque_to(topic, Box::new(q.seq))
            .partition(0)
            .key(&key)
            .payload(&q.payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r))
                    if e.rdkafka_error_code()
                        == Some(rdkafka::types::RDKafkaErrorCode::QueueFull) =>
                {
                    producer.poll(Duration::from_millis(5));
                    record = r;
                }
                Err((e, r)) => {
                    self.acks().failed_push(*r.delivery_opaque, e.to_string());
                    break;
                }
            }
        }
        producer.poll(Duration::ZERO);
    }

    /// Sends the matches after those read so far while fewer than [`MAX_IN_FLIGHT`] wait
    /// for the broker's answer, and the retries due; takes the answers that came within
    /// a few milliseconds; records them with the cursor moved past every match answered
    /// before the first one still unanswered. Nothing waits for every answer: matches not
    /// yet answered are answered in a later round.
    fn kafka_round(&mut self, filters: &HashMap<i64, crate::filters::Filter>) -> Result<usize> {
        let topic_of = |filter: i64| {
            filters
                .get(&filter)
                .and_then(|f| f.outputs.kafka_topic.as_deref())
        };
        let room = MAX_IN_FLIGHT.saturating_sub(self.kafka.in_flight());
        let mut sent = 0;
        let mut progress = Progress::default();
        if room > 0 {
            let (due, read_to) = self.store.pending_after(
                Output::Kafka,
                self.kafka.read_to,
                room.min(ROUND_MATCHES),
            )?;
            for q in due {
                let seq = q.seq;
                let flight = match topic_of(q.filter) {
                    Some(topic) => {
                        self.send(topic, &q);
                        sent += 1;
                        self.kafka.sent += 1;
                        Flight::Sent(q)
                    }
                    // Its filter lost its topic: nothing to send.
                    None => Flight::Settled,
                };
                self.kafka.flying.insert(seq, flight);
            }
            self.kafka.read_to = read_to;
            let retries = self.store.retries_due(Output::Kafka, room.min(1000))?;
            for q in retries {
                if self.kafka.retrying.contains_key(&q.seq) {
                    continue;
                }
                match topic_of(q.filter) {
                    Some(topic) => {
                        self.send(topic, &q);
                        sent += 1;
                        self.kafka.retrying.insert(q.seq, q);
                    }
                    // Its filter lost its topic: nothing to send.
                    None => progress.delivered.push(q.seq),
                }
            }
        }
        if let Some(producer) = self.producer.as_ref() {
            // rdkafka's poll(timeout) serves events until the timeout passes, whatever
            // comes: short polls, until this round's answers or a short wait is over.
            let wait = if sent == 0 {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(5)
            };
            let waiting = self.kafka.in_flight();
            let start = std::time::Instant::now();
            loop {
                producer.poll(Duration::ZERO);
                let answered = {
                    let acks = self.acks();
                    acks.done.lock().unwrap_or_else(|p| p.into_inner()).len()
                        + acks.failed.lock().unwrap_or_else(|p| p.into_inner()).len()
                };
                if answered >= waiting || start.elapsed() >= wait {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let acks = self.acks();
        let done: Vec<(i64, String, i64)> =
            std::mem::take(&mut *acks.done.lock().unwrap_or_else(|p| p.into_inner()));
        let failed: Vec<(i64, String)> =
            std::mem::take(&mut *acks.failed.lock().unwrap_or_else(|p| p.into_inner()));
        for (seq, topic, offset) in &done {
            if let Some(flight) = self.kafka.flying.get_mut(seq) {
                if matches!(flight, Flight::Sent(_)) {
                    self.kafka.sent -= 1;
                }
                *flight = Flight::Acked(topic.clone(), *offset);
            } else if self.kafka.retrying.remove(seq).is_some() {
                progress.delivered.push(*seq);
            }
        }
        for (seq, error) in &failed {
            if let Some(flight) = self.kafka.flying.get_mut(seq) {
                if let Flight::Sent(q) = std::mem::replace(flight, Flight::Settled) {
                    self.kafka.sent -= 1;
                    self.store.failed_attempt(Output::Kafka, &q, error)?;
                }
            } else if let Some(q) = self.kafka.retrying.remove(seq) {
                self.store.failed_attempt(Output::Kafka, &q, error)?;
            }
        }
        // The cursor moves past the answered matches before the first unanswered one;
        // the marks move past the messages of those, and only those.
        while let Some(entry) = self.kafka.flying.first_entry() {
            match entry.get() {
                Flight::Sent(_) => break,
                Flight::Acked(topic, offset) => {
                    let next = offset + 1;
                    let m = progress.marks.entry(topic.clone()).or_insert(next);
                    *m = (*m).max(next);
                }
                Flight::Settled => {}
            }
            entry.remove();
        }
        let cursor = match self.kafka.flying.first_key_value() {
            Some((seq, _)) => seq - 1,
            None => self.kafka.read_to,
        };
        if cursor > self.kafka.cursor {
            progress.cursor = Some(cursor);
        }
        if progress != Progress::default() {
            self.store.record(Output::Kafka, &progress)?;
            self.kafka.cursor = cursor.max(self.kafka.cursor);
        }
        Ok(done.len())
    }

    /// Rounds until nothing is left in flight to Kafka and a round finds nothing new to
    /// send, or `timeout` passes; what they delivered in all.
    pub fn settle(&mut self, timeout: Duration) -> Result<Round> {
        let start = std::time::Instant::now();
        let mut all = Round::default();
        loop {
            let r = self.round()?;
            all.kafka += r.kafka;
            all.webhook += r.webhook;
            all.webhook_failures += r.webhook_failures;
            all.kafka_in_flight = r.kafka_in_flight;
            let quiet = r.kafka_in_flight == 0 && r.kafka == 0 && r.webhook == 0;
            if quiet || start.elapsed() >= timeout {
                return Ok(all);
            }
        }
    }

    fn acks(&self) -> &Acks {
        self.producer
            .as_ref()
            .expect("a producer when Kafka outputs are delivered")
            .context()
    }

    /// Posts the matches after the webhooks' cursor, one by one, then the retries due;
    /// records the cursor past the posted ones (the failed ones wait for their retry).
    fn webhook_round(
        &mut self,
        filters: &HashMap<i64, crate::filters::Filter>,
    ) -> Result<(usize, usize)> {
        // No webhook to post to and none waiting: the outbox's new rows need no reading
        // (the cursor stays; rows without a webhook are never pending for one).
        if !filters.values().any(|f| f.outputs.webhook.is_some())
            && self.store.backlog_of(Output::Webhook)? == 0
        {
            return Ok((0, 0));
        }
        let (due, read_to) =
            self.store
                .pending_after(Output::Webhook, self.webhook_cursor, ROUND_POSTS)?;
        let retries = self.store.retries_due(Output::Webhook, ROUND_POSTS)?;
        let (mut sent, mut failures) = (0, 0);
        let mut progress = Progress::default();
        for (q, retry) in due
            .iter()
            .map(|q| (q, false))
            .chain(retries.iter().map(|q| (q, true)))
        {
            let Some(url) = filters
                .get(&q.filter)
                .and_then(|f| f.outputs.webhook.clone())
            else {
                // Its filter lost its webhook: nothing to post.
                if retry {
                    progress.delivered.push(q.seq);
                }
                continue;
            };
            match self.post(&url, q) {
                Ok(()) => {
                    if retry {
                        progress.delivered.push(q.seq);
                    }
                    sent += 1;
                }
                Err(why) => {
                    failures += 1;
                    let gave_up = self.store.failed_attempt(Output::Webhook, q, &why)?;
                    tracing::warn!(filter = q.filter, alert = q.alert_id, attempts = q.attempts + 1, gave_up, error = %why, "webhook delivery failed");
                }
            }
        }
        if read_to > self.webhook_cursor {
            progress.cursor = Some(read_to);
        }
        if progress != Progress::default() {
            self.store.record(Output::Webhook, &progress)?;
            self.webhook_cursor = read_to.max(self.webhook_cursor);
        }
        Ok((sent, failures))
    }

    fn post(&self, url: &str, q: &Queued) -> std::result::Result<(), String> {
        // Checked again at each post: the name may have come to point elsewhere.
        check_webhook(url, self.opts.webhook_allow_private).map_err(|e| e.to_string())?;
        let response = self
            .agent
            .post(url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", format!("{}-{}", q.filter, q.alert_id))
            .send(q.payload.as_bytes())
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }

    /// Delivers until `stop` is set, resting when nothing is due until matches are queued
    /// (or 100 ms pass: retries come due, a stop is asked); prunes old delivered matches
    /// now and then.
    pub fn run(&mut self, stop: &AtomicBool) {
        let mut last_prune = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            // Read before the round: matches queued during it end the rest at once.
            let seen = self.store.queued_count();
            match self.round() {
                Ok(r) if r.kafka + r.webhook + r.webhook_failures + r.kafka_in_flight > 0 => {
                    tracing::debug!(
                        kafka = r.kafka,
                        webhook = r.webhook,
                        failures = r.webhook_failures,
                        "matches delivered"
                    );
                }
                Ok(_) => {
                    self.store.wait_queued(seen, Duration::from_millis(100));
                }
                Err(e) => {
                    tracing::error!(error = %e, "delivering matches");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
            if last_prune.elapsed() > Duration::from_secs(600) {
                last_prune = std::time::Instant::now();
                match self.store.prune() {
                    Ok(n) if n > 0 => tracing::info!(matches = n, "old delivered matches removed"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "pruning delivered matches"),
                }
            }
        }
    }
}

impl Acks {
    fn failed_push(&self, seq: i64, error: String) {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((seq, error));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhooks_stay_out_of_private_networks() {
        assert!(check_webhook("http://127.0.0.1:9/x", false).is_err());
        assert!(check_webhook("http://127.0.0.1:9/x", true).is_ok());
        assert!(check_webhook("http://[::1]:9/x", false).is_err());
        assert!(check_webhook("http://169.254.169.254/latest", false).is_err());
        assert!(check_webhook("http://10.1.2.3/", false).is_err());
        assert!(check_webhook("ftp://example.org/", true).is_err());
        assert!(check_webhook("http://user:pw@127.0.0.1/", true).is_err());
        assert!(check_webhook("http://127.0.0.1:notaport/", true).is_err());
        assert!(public_address("8.8.8.8".parse().unwrap()));
        assert!(!public_address("::ffff:192.168.1.1".parse().unwrap()));
    }
}
