//! `meridian alerts`: alert packets (Rubin, ZTF) read from Avro and split into the tables
//! they carry.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum AlertsCommand {
    /// Split Avro alert files (object container files, as brokers and Rubin's samples
    /// ship them) into their tables: DiaSource, DiaForcedSource, DiaObject and Cutout for
    /// Rubin alerts, ZtfCandidate, ZtfUpperLimit and Cutout for ZTF's; one Parquet file
    /// per table in `--out`, each source once however many alerts repeat it.
    Convert {
        /// Avro object container files of one survey's alerts.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Directory the tables are written to (created if missing).
        #[arg(long)]
        out: PathBuf,
    },
    /// Consume alerts from Kafka into the alert database (as `load` stores files): each
    /// message one alert, in the Confluent wire format (schema id, then Avro) or an Avro
    /// container (as ZTF publishes). Offsets are committed once a batch is stored; a
    /// message that cannot be stored goes to the dead-letter table, and the stream goes
    /// on.
    Consume {
        /// Bootstrap brokers, host:port[,host:port...].
        #[arg(long)]
        kafka: String,
        /// Topic to read (repeat for several).
        #[arg(long, required = true)]
        topic: Vec<String>,
        /// Consumer group: a restart resumes after its last committed batch.
        #[arg(long, default_value = "meridian-alerts")]
        group: String,
        /// ID=FILE: the writer schema messages name by ID (Avro JSON, or an Avro file
        /// whose header holds it); repeat for several.
        #[arg(long, value_parser = schema_arg)]
        schema: Vec<(u32, String)>,
        /// Most alerts stored together.
        #[arg(long, default_value_t = 10_000)]
        batch_alerts: usize,
        /// Longest wait for a batch to fill, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        batch_ms: u64,
        /// Stop once no message has come for this many seconds (for replays); by default
        /// run until stopped.
        #[arg(long)]
        stop_when_idle_s: Option<f64>,
        /// KEY=VALUE: a librdkafka setting (security.protocol, sasl.mechanisms,
        /// session.timeout.ms, ...); repeat for several.
        #[arg(long, value_parser = setting_arg)]
        kafka_setting: Vec<(String, String)>,
    },
    /// Publish the alerts of Avro files to a Kafka topic, one message each (to replay a
    /// night, or to feed a test or a benchmark): in the Confluent wire format with
    /// `--schema-id`, else each as an Avro container of one alert (as ZTF publishes).
    Replay {
        /// Avro object container files, one uncompressed alert per block (as Rubin's and
        /// ZTF's samples and `meridian generate --alerts` write them).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Bootstrap brokers, host:port[,host:port...].
        #[arg(long)]
        kafka: String,
        /// Topic to publish to.
        #[arg(long)]
        topic: String,
        /// Frame each alert in the Confluent wire format with this schema id.
        #[arg(long)]
        schema_id: Option<u32>,
        /// Alerts a second (default: as fast as the broker takes them).
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Store Avro alert files in the alert database: their tables are appended to the
    /// store's catalogs (dia_source, dia_forced_source, dia_object, dia_cutout for Rubin;
    /// ztf_candidate, ztf_upper_limit, ztf_cutout for ZTF), which `meridian serve` serves
    /// over TAP as they grow. A source already stored is kept once; an object's newest
    /// summary replaces the stored one.
    Load {
        /// Avro object container files of one survey's alerts.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// `ID=FILE`: a writer schema (Avro JSON, or an Avro container file whose header holds it)
/// and the registry id messages name it by.
fn schema_arg(s: &str) -> Result<(u32, String), String> {
    let (id, file) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': write ID=FILE, for example 1=lsst.v10_0.alert.avsc"))?;
    let id: u32 = id
        .parse()
        .map_err(|_| format!("'{s}': '{id}' is not a schema id (an unsigned integer)"))?;
    let path = PathBuf::from(file);
    let bytes = std::fs::read(&path).map_err(|e| format!("{file}: {e}"))?;
    let json = if meridian_alerts::avro::is_container(&bytes) {
        meridian_alerts::avro::file_schema(&path).map_err(|e| e.to_string())?
    } else {
        String::from_utf8(bytes).map_err(|_| format!("{file}: not UTF-8 Avro schema JSON"))?
    };
    Ok((id, json))
}

/// `KEY=VALUE`.
fn setting_arg(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': write KEY=VALUE, for example session.timeout.ms=10000"))?;
    Ok((k.trim().to_string(), v.trim().to_string()))
}

pub fn run(cmd: AlertsCommand, config: &crate::config::Config) -> anyhow::Result<()> {
    match cmd {
        AlertsCommand::Replay {
            files,
            kafka,
            topic,
            schema_id,
            rate,
        } => {
            let framing = match schema_id {
                Some(id) => meridian_alerts::kafka::Framing::Confluent(id),
                None => meridian_alerts::kafka::Framing::Container,
            };
            let n = meridian_alerts::kafka::replay(&files, &kafka, &topic, framing, rate)?;
            println!("{n} alerts published to {topic}");
            Ok(())
        }
        AlertsCommand::Consume {
            kafka,
            topic,
            group,
            schema,
            batch_alerts,
            batch_ms,
            stop_when_idle_s,
            kafka_setting,
        } => {
            let store = meridian_catalog::Store::open(config.catalog_dir())?;
            let dead = dead_letters(config)?;
            let topics: Vec<&str> = topic.iter().map(String::as_str).collect();
            let mut opts = meridian_alerts::kafka::ConsumeOptions::new(&kafka, &topics);
            opts.group = group;
            opts.schemas = schema;
            opts.batch_alerts = batch_alerts.max(1);
            opts.batch_wait = std::time::Duration::from_millis(batch_ms.max(1));
            opts.stop_when_idle = stop_when_idle_s.map(std::time::Duration::from_secs_f64);
            opts.settings = kafka_setting;
            let stop = std::sync::atomic::AtomicBool::new(false);
            let ms = |l: &meridian_alerts::kafka::Latency, q: f64| {
                l.quantile(q).map_or("-".to_string(), |v| v.to_string())
            };
            let total = meridian_alerts::kafka::consume(&store, &dead, &opts, &stop, |b| {
                println!(
                    "batch\t{} messages\t{} alerts stored\t{} dead letters\t{:.3} s\tlatency p50 {} ms p99 {} ms",
                    b.messages,
                    b.alerts,
                    b.dead_letters,
                    b.seconds,
                    ms(&b.latency, 0.5),
                    ms(&b.latency, 0.99)
                );
            })?;
            println!(
                "consumed\t{} messages\t{} alerts stored\t{} dead letters\t{} batches\tlatency p50 {} ms p99 {} ms",
                total.messages,
                total.alerts,
                total.dead_letters,
                total.batches,
                ms(&total.latency, 0.5),
                ms(&total.latency, 0.99)
            );
            Ok(())
        }
        AlertsCommand::Load { files } => {
            let store = meridian_catalog::Store::open(config.catalog_dir())?;
            let dead = dead_letters(config)?;
            let loaded = meridian_alerts::load::load_files(&store, &files, &dead)?;
            for s in &loaded.tables {
                let a = &s.appended;
                println!(
                    "{}\t{} rows in\t{} stored\t{} replaced\t{} without a position\t{} rows in all",
                    s.catalog, a.rows_in, a.rows_added, a.rows_replaced, s.rejected, a.total_rows
                );
            }
            if loaded.dead_letters > 0 {
                println!(
                    "{} alert(s) without a valid position, in the dead-letter table {}",
                    loaded.dead_letters,
                    dead_letters_path(config).display()
                );
            }
            Ok(())
        }
        AlertsCommand::Convert { files, out } => {
            for w in meridian_alerts::convert::convert(&files, &out)? {
                println!("{}\t{} rows\t{}", w.table, w.rows, w.path.display());
            }
            Ok(())
        }
    }
}

/// Where the alerts that could not be stored are kept.
fn dead_letters_path(config: &crate::config::Config) -> PathBuf {
    config.data_dir.join("alerts").join("dead_letters.sqlite")
}

fn dead_letters(
    config: &crate::config::Config,
) -> anyhow::Result<meridian_alerts::dead_letter::DeadLetters> {
    Ok(meridian_alerts::dead_letter::DeadLetters::open(
        &dead_letters_path(config),
    )?)
}
