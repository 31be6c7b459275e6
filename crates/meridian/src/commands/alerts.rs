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
        /// A directory of Rubin alert schemas as the `lsst-alert-packet` package lays them
        /// out (`<major>/<minor>/lsst.v<major>_<minor>.alert.avsc`), each registered by
        /// Rubin's id for it (v7_4 is 704, v11_1 is 1101).
        #[arg(long)]
        schema_dir: Option<PathBuf>,
        /// A Confluent schema registry (http(s)://host:port) asked for schema ids not
        /// given by `--schema` or `--schema-dir`.
        #[arg(long)]
        schema_registry: Option<String>,
        /// Most alerts stored together.
        #[arg(long, default_value_t = 10_000)]
        batch_alerts: usize,
        /// Longest wait for a batch to fill, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        batch_ms: u64,
        /// Cut a batch once no message has come for this many milliseconds (the topic is
        /// idle: a visit's alerts are all read).
        #[arg(long, default_value_t = 50)]
        batch_idle_ms: u64,
        /// Stop once no message has come for this many seconds (for replays); by default
        /// run until stopped.
        #[arg(long)]
        stop_when_idle_s: Option<f64>,
        /// KEY=VALUE: a librdkafka setting (security.protocol, sasl.mechanisms,
        /// session.timeout.ms, ...); repeat for several.
        #[arg(long, value_parser = setting_arg)]
        kafka_setting: Vec<(String, String)>,
        /// Brokers of the filters' output topics (default: those read, `--kafka`).
        #[arg(long)]
        output_kafka: Option<String>,
        /// Store alerts only: run no filters.
        #[arg(long)]
        no_filters: bool,
    },
    /// Users' alert filters (as `/api/alerts/filters` manages them): ADQL over each batch
    /// of incoming alerts, the matches sent to a Kafka topic, a webhook and a MyDB table.
    #[command(subcommand)]
    Filter(FilterCommand),
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
        /// KEY=VALUE: a librdkafka producer setting (security.protocol, linger.ms,
        /// batch.num.messages, ...); repeat for several.
        #[arg(long = "kafka-setting", value_parser = setting_arg)]
        settings: Vec<(String, String)>,
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

#[derive(Subcommand, Debug)]
pub enum FilterCommand {
    /// Add a filter; its query is checked first (ADQL over `alert.diasource`,
    /// `alert.diaobject`, `alert.prv_diasource`, `alert.prv_forced`, or ZTF's
    /// `alert.candidate` and `alert.prv_candidate`, with any served catalog and the owner's
    /// `mydb.<table>`), and must return `alertId`.
    Add {
        /// The user it belongs to (its MyDB tables are theirs).
        #[arg(long)]
        owner: String,
        /// Its name (unique per owner).
        #[arg(long)]
        name: String,
        /// The ADQL query.
        #[arg(long)]
        query: String,
        /// Kafka topic the matches go to.
        #[arg(long)]
        kafka_topic: Option<String>,
        /// URL each match is POSTed to.
        #[arg(long)]
        webhook: Option<String>,
        /// The owner's MyDB table the matching rows are appended to.
        #[arg(long)]
        mydb_table: Option<String>,
    },
    /// List filters (of one owner, or all).
    List {
        /// Only this user's.
        #[arg(long)]
        owner: Option<String>,
    },
    /// Delete a filter and its queued matches.
    Remove {
        /// The filter's number.
        id: i64,
    },
    /// Stop running a filter.
    Pause {
        /// The filter's number.
        id: i64,
    },
    /// Run a paused filter again.
    Resume {
        /// The filter's number.
        id: i64,
    },
}

/// `meridian generate --alerts`: a night of alerts over the generated survey.
#[derive(clap::Args, Default)]
pub struct NightArgs {
    /// Also make a night of Rubin alerts of the survey's variable objects into OUT/alerts
    /// (one Avro file per visit, one alert per block, for `meridian alerts load` or
    /// `meridian alerts replay`), in the schema `--alert-schema` of `--alert-schema-dir`.
    #[arg(long)]
    pub alerts: bool,
    /// Rubin's alert schemas as the `lsst-alert-packet` package lays them out
    /// (`<major>/<minor>/lsst.v<major>_<minor>.alert.avsc`; `pip install
    /// lsst-alert-packet`, then its `lsst/alert/packet/schema` directory).
    #[arg(long, requires = "alerts")]
    pub alert_schema_dir: Option<PathBuf>,
    /// Schema version to write, MAJOR.MINOR (default: the newest in the directory).
    #[arg(long, requires = "alert_schema_dir")]
    pub alert_schema: Option<String>,
    /// Visits in the night.
    #[arg(long, default_value_t = 100, requires = "alerts")]
    pub alert_visits: u32,
    /// Fields the visits cycle through (centred on objects picked at random).
    #[arg(long, default_value_t = 20, requires = "alerts")]
    pub alert_fields: u32,
    /// Radius of a field, degrees.
    #[arg(long, default_value_t = meridian_synth::night::RUBIN_FIELD_RADIUS_DEG, requires = "alerts")]
    pub alert_field_radius_deg: f64,
    /// Fraction of the objects that vary.
    #[arg(long, default_value_t = 0.05, requires = "alerts")]
    pub variable_fraction: f64,
    /// Earlier visits of each field (about 3 days apart) whose detections and forced
    /// photometry the alerts carry.
    #[arg(long, default_value_t = 30, requires = "alerts")]
    pub alert_history: u32,
    /// Start of the night, MJD (TAI); default 400 days after the survey's start.
    #[arg(long, requires = "alerts")]
    pub night_mjd: Option<f64>,
}

/// A night to write: its description and the writer schema (registry id, JSON).
pub struct NightPlan {
    spec: meridian_synth::night::NightSpec,
    id: u32,
    schema: String,
}

/// The night of `args` over `survey`, its schema read and its settings checked (before
/// anything is generated).
pub fn plan_night(
    survey: meridian_synth::SurveySpec,
    args: &NightArgs,
) -> anyhow::Result<NightPlan> {
    use anyhow::Context;
    let root = args.alert_schema_dir.as_ref().context(
        "--alerts needs --alert-schema-dir: Rubin's alert schemas (pip install \
         lsst-alert-packet; its lsst/alert/packet/schema directory)",
    )?;
    let tree = meridian_alerts::schemas::lsst_schema_tree(root)?;
    let (id, schema) = match &args.alert_schema {
        None => tree.last().cloned().context("no schema")?,
        Some(v) => {
            let (major, minor) = v
                .split_once('.')
                .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                .with_context(|| format!("--alert-schema '{v}': write MAJOR.MINOR, as 9.0"))?;
            let id = meridian_alerts::schemas::lsst_schema_id(major, minor);
            tree.into_iter().find(|(i, _)| *i == id).with_context(|| {
                format!(
                    "--alert-schema {v}: no lsst.v{major}_{minor} under {}",
                    root.display()
                )
            })?
        }
    };
    let spec = meridian_synth::night::NightSpec {
        survey,
        night_mjd: args
            .night_mjd
            .unwrap_or(meridian_synth::night::NightSpec::default().night_mjd),
        visits: args.alert_visits,
        fields: args.alert_fields,
        field_radius_deg: args.alert_field_radius_deg,
        variable_fraction: args.variable_fraction,
        history_visits: args.alert_history,
    };
    spec.check()?;
    Ok(NightPlan { spec, id, schema })
}

/// Writes the night `plan` into `dir`.
pub fn generate_night(dir: &std::path::Path, plan: &NightPlan, quiet: bool) -> anyhow::Result<()> {
    let (id, schema) = (plan.id, &plan.schema);
    let night = meridian_synth::night::Night::plan(&plan.spec)?;
    let pb = crate::bar(
        quiet,
        0,
        "alerts {spinner} {human_pos} alerts {per_sec} ({elapsed})",
    );
    let written =
        meridian_alerts::synthetic::write_night(&night, schema, dir, &|n| pb.set_position(n))?;
    pb.finish_and_clear();
    eprintln!(
        "alerts: {} alerts of {} variables in {} visits ({} files, schema lsst.v{}_{}, id {id}) under {}",
        written.alerts,
        night.variables(),
        written.visits,
        written.files.len(),
        id / 100,
        id % 100,
        dir.display()
    );
    Ok(())
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
            settings,
        } => {
            let framing = match schema_id {
                Some(id) => meridian_alerts::kafka::Framing::Confluent(id),
                None => meridian_alerts::kafka::Framing::Container,
            };
            let n =
                meridian_alerts::kafka::replay(&files, &kafka, &topic, framing, rate, &settings)?;
            println!("{n} alerts published to {topic}");
            Ok(())
        }
        AlertsCommand::Consume {
            kafka,
            topic,
            group,
            schema,
            schema_dir,
            schema_registry,
            batch_alerts,
            batch_ms,
            batch_idle_ms,
            stop_when_idle_s,
            kafka_setting,
            output_kafka,
            no_filters,
        } => {
            let output_brokers = output_kafka.unwrap_or_else(|| kafka.clone());
            let output_settings = kafka_setting.clone();
            let store = meridian_catalog::Store::open(config.catalog_dir())?;
            let dead = dead_letters(config)?;
            let topics: Vec<&str> = topic.iter().map(String::as_str).collect();
            let mut opts = meridian_alerts::kafka::ConsumeOptions::new(&kafka, &topics);
            opts.group = group;
            if let Some(dir) = &schema_dir {
                let tree = meridian_alerts::schemas::lsst_schema_tree(dir)?;
                tracing::info!(dir = %dir.display(), ids = ?tree.iter().map(|(i, _)| *i).collect::<Vec<_>>(), "alert schemas");
                opts.schemas = tree;
            }
            // Schemas given one by one take precedence over the tree's.
            for (id, json) in schema {
                opts.schemas.retain(|(i, _)| *i != id);
                opts.schemas.push((id, json));
            }
            opts.registry = schema_registry;
            opts.batch_alerts = batch_alerts.max(1);
            opts.batch_wait = std::time::Duration::from_millis(batch_ms.max(1));
            opts.batch_idle = std::time::Duration::from_millis(batch_idle_ms.max(1));
            opts.stop_when_idle = stop_when_idle_s.map(std::time::Duration::from_secs_f64);
            opts.settings = kafka_setting;
            let stop = std::sync::atomic::AtomicBool::new(false);
            let ms = |l: &meridian_alerts::kafka::Latency, q: f64| {
                l.quantile(q).map_or("-".to_string(), |v| v.to_string())
            };
            let filters = if no_filters {
                None
            } else {
                Some(open_filtering(config)?)
            };
            // Matches are delivered on a thread of their own while alerts are read.
            let delivering = std::sync::atomic::AtomicBool::new(false);
            let delivery = meridian_alerts::outputs::DeliveryOptions {
                brokers: Some(output_brokers),
                settings: output_settings,
                webhook_allow_private: config.alerts.webhook_allow_private,
                webhook_timeout: std::time::Duration::from_secs(config.alerts.webhook_timeout_s),
            };
            let total = std::thread::scope(|scope| -> anyhow::Result<_> {
                let deliverer = match &filters {
                    Some((fstore, _, _)) => {
                        let mut d =
                            meridian_alerts::outputs::Deliverer::new(fstore.clone(), delivery)?;
                        let delivering = &delivering;
                        Some(
                            std::thread::Builder::new()
                                .name("alert-deliver".into())
                                .spawn_scoped(scope, move || {
                                    d.run(delivering);
                                    d
                                })?,
                        )
                    }
                    None => None,
                };
                let stage = filters.as_ref().map(|(_, f, _)| f);
                let result = meridian_alerts::kafka::consume(
                    &store,
                    &dead,
                    &opts,
                    stage,
                    &stop,
                    |b| {
                        println!(
                            "batch\t{} messages\t{} alerts stored\t{} dead letters\t{} matches\t{:.3} s\tlatency p50 {} ms p99 {} ms\tread {:.3} s decode {:.3} s store {:.3} s filter {:.3} s queue {:.3} s commit {:.3} s",
                            b.messages,
                            b.alerts,
                            b.dead_letters,
                            b.filtered.matches,
                            b.seconds,
                            ms(&b.latency, 0.5),
                            ms(&b.latency, 0.99),
                            b.stages.read_s,
                            b.stages.decode_s,
                            b.stages.store_s,
                            b.stages.filter_s,
                            b.stages.queue_s,
                            b.stages.commit_s,
                        );
                    },
                );
                delivering.store(true, std::sync::atomic::Ordering::Relaxed);
                if let (Some(handle), Some((fstore, _, _))) = (deliverer, &filters) {
                    let mut d = handle
                        .join()
                        .map_err(|_| anyhow::anyhow!("the delivery thread panicked"))?;
                    if result.is_ok() {
                        drain(&mut d, fstore)?;
                    }
                }
                Ok(result?)
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
        AlertsCommand::Filter(cmd) => filter(cmd, config),
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

/// The filter stage of a consumer: the filters' database, the stage over the catalogs,
/// and the runtime the engine was opened with (kept while it is used).
fn open_filtering(
    config: &crate::config::Config,
) -> anyhow::Result<(
    std::sync::Arc<meridian_alerts::filters::FilterStore>,
    meridian_alerts::evaluate::Filtering,
    tokio::runtime::Runtime,
)> {
    let store = std::sync::Arc::new(meridian_alerts::filters::FilterStore::open(
        &config.alert_filters_path(),
    )?);
    let (engine, rt) = crate::open_engine(config)?;
    let mydb = std::sync::Arc::new(meridian_services::mydb::MyDb::new(
        config.mydb_dir(),
        config.mydb.quota_mib << 20,
    ));
    let mut stage = meridian_alerts::evaluate::Filtering::new(
        store.clone(),
        std::sync::Arc::new(engine),
        Some(mydb),
    )?;
    stage.max_backlog = config.alerts.max_backlog;
    stage.set_filter_time_limit(std::time::Duration::from_secs(
        config.alerts.filter_time_limit_s,
    ));
    Ok((store, stage, rt))
}

/// Delivers what is left once the stream has ended: until nothing is due, or nothing
/// more could be delivered for 10 s (webhooks waiting to be retried).
fn drain(
    d: &mut meridian_alerts::outputs::Deliverer,
    store: &meridian_alerts::filters::FilterStore,
) -> anyhow::Result<()> {
    let mut idle_since = std::time::Instant::now();
    while store.backlog()? > 0 && idle_since.elapsed() < std::time::Duration::from_secs(10) {
        let r = d.round()?;
        if r.kafka + r.webhook > 0 {
            idle_since = std::time::Instant::now();
        } else if r.kafka_in_flight == 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let left = store.backlog()?;
    if left > 0 {
        eprintln!("{left} match(es) still waiting for their outputs; a later run delivers them");
    }
    Ok(())
}

fn filter(cmd: FilterCommand, config: &crate::config::Config) -> anyhow::Result<()> {
    use meridian_alerts::filters::{FilterStore, Outputs, State};
    let store = FilterStore::open(&config.alert_filters_path())?;
    match cmd {
        FilterCommand::Add {
            owner,
            name,
            query,
            kafka_topic,
            webhook,
            mydb_table,
        } => {
            meridian_services::accounts::check_user_name(&owner)?;
            if let Some(t) = &mydb_table {
                meridian_services::mydb::check_table_name(t)?;
            }
            if let Some(url) = &webhook {
                meridian_alerts::outputs::check_webhook(url, config.alerts.webhook_allow_private)?;
            }
            let (engine, rt) = crate::open_engine(config)?;
            let mydb = std::sync::Arc::new(meridian_services::mydb::MyDb::new(
                config.mydb_dir(),
                config.mydb.quota_mib << 20,
            ));
            let evaluator =
                meridian_alerts::evaluate::Evaluator::new(std::sync::Arc::new(engine), Some(mydb));
            rt.block_on(evaluator.validate(&owner, &query))?;
            let outputs = Outputs {
                kafka_topic,
                webhook,
                mydb_table,
            };
            let f = store.add(&owner, &name, &query, &outputs)?;
            println!("{}", f.id);
        }
        FilterCommand::List { owner } => {
            println!("id\towner\tname\tstate\tmatches\toutputs\tquery\treason");
            for f in store.list(owner.as_deref())? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    f.id,
                    f.owner,
                    f.name,
                    f.state.as_str(),
                    f.matches,
                    serde_json::to_string(&f.outputs)?,
                    f.query.replace(['\n', '\t'], " "),
                    f.reason.unwrap_or_default()
                );
            }
        }
        FilterCommand::Remove { id } => {
            store
                .get(id)?
                .ok_or_else(|| anyhow::anyhow!("no alert filter {id}"))?;
            store.remove(id)?;
        }
        FilterCommand::Pause { id } | FilterCommand::Resume { id } => {
            store
                .get(id)?
                .ok_or_else(|| anyhow::anyhow!("no alert filter {id}"))?;
            let state = if matches!(cmd, FilterCommand::Pause { .. }) {
                State::Paused
            } else {
                State::Active
            };
            store.set_state(id, state, None)?;
        }
    }
    Ok(())
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
