//! A real cluster on loopback: a scheduler and two executors started from the binary
//! (`meridian cluster scheduler|executor`), and engines whose plans run on it. Every query
//! is compared with the embedded engine's answer on the same catalogs: the ADQL golden
//! files, aggregates, cross-matches at 1, 5 and 60 arcsec; then an executor is killed
//! during a query.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The tests of this file run one at a time: each starts a cluster of three processes, and
/// three clusters at once on two cores slowed queries about fivefold and heartbeats with
/// them (Ballista's recovery from a lost executor once stalled under that load).
static ONE_CLUSTER_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_CLUSTER_AT_A_TIME
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

use arrow::array::RecordBatch;
use meridian_catalog::{IngestOptions, Store};
use meridian_engine::{Engine, EngineConfig, Lang, XMatchMode, XMatchSpec};

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn shared(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(rel)
}

fn meridian(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_meridian"));
    c.arg("--data-dir")
        .arg(data)
        .env("MERIDIAN_LOG__LEVEL", "warn")
        // A lost executor is noticed after 10 s without a heartbeat.
        .env("MERIDIAN_CLUSTER__EXECUTOR_TIMEOUT_S", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    c
}

struct Cluster {
    url: String,
    _scheduler: Proc,
    executors: Vec<Proc>,
}

fn start_cluster(data: &Path, executors: usize) -> Cluster {
    let mut child = meridian(data)
        .args(["cluster", "scheduler", "--bind", "127.0.0.1:0"])
        .env("MERIDIAN_LOG__LEVEL", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let scheduler = Proc(child);
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the scheduler printed its address")
            .unwrap();
        if let Some(u) = line.strip_prefix("Cluster scheduler: ") {
            break u.trim().to_string();
        }
    };
    // Keep reading, so the scheduler never blocks on a full pipe; its log goes to
    // `scheduler.log` in the data directory, for failures.
    let log_path = data.join("scheduler.log");
    std::thread::spawn(move || {
        use std::io::Write;
        let mut log = std::fs::File::create(log_path).ok();
        for line in lines.map_while(Result::ok) {
            if let Some(f) = log.as_mut() {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    let mut procs = Vec::new();
    for i in 0..executors {
        procs.push(Proc(
            meridian(data)
                .args(["cluster", "executor", "--scheduler", &url])
                .args(["--concurrent-tasks", "2", "--id", &format!("exec-{i}")])
                .arg("--work-dir")
                .arg(data.join(format!("work-{i}")))
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n = meridian_cluster::client::executors(&url).map_or(0, |e| e.len());
        if n == executors {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {executors} executors registered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Cluster {
        url,
        _scheduler: scheduler,
        executors: procs,
    }
}

fn store(dir: &Path) -> Store {
    let store = Store::open(dir.join("catalogs")).unwrap();
    let opts = IngestOptions {
        partition_rows: 20_000,
        row_group_rows: 2_000,
        ..Default::default()
    };
    let gaia = shared("catalogs/gaia_dr3_bright.csv.gz");
    meridian_catalog::ingest::ingest(&store, "gaia", std::slice::from_ref(&gaia), &opts, &|_| {})
        .unwrap();
    // The same stars with other partitions: the cross-matches' right side.
    let opts2 = IngestOptions {
        partition_rows: 35_000,
        ..opts
    };
    meridian_catalog::ingest::ingest(&store, "gaia2", &[gaia], &opts2, &|_| {}).unwrap();
    store
}

fn config() -> EngineConfig {
    EngineConfig {
        target_partitions: 2,
        ..Default::default()
    }
}

/// A runtime for the tests' engines (with the stack the planner needs).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(meridian_engine::guard::EXECUTION_STACK_BYTES)
        .enable_all()
        .build()
        .unwrap()
}

/// An engine over `store` whose queries run on the cluster at `url`.
fn on_cluster(rt: &tokio::runtime::Runtime, store: &Store, url: &str, required: bool) -> Engine {
    let remote = rt
        .block_on(meridian_cluster::client::connect(url, &config(), required))
        .unwrap();
    Engine::open(store, &config()).unwrap().with_remote(remote)
}

/// Rows as CSV lines, sorted unless `ordered`.
fn lines(batches: &[RecordBatch], ordered: bool) -> Vec<String> {
    let mut out = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new()
            .with_header(false)
            .build(&mut out);
        for b in batches {
            w.write(b).unwrap();
        }
    }
    let mut l: Vec<String> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    if !ordered {
        l.sort();
    }
    l
}

async fn run(engine: &Engine, text: &str, lang: Lang) -> Vec<RecordBatch> {
    engine
        .query(text, lang)
        .await
        .unwrap_or_else(|e| panic!("{text}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The `query` records of the engine's golden files: (language, text).
fn golden_queries() -> Vec<(Lang, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/golden");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for block in text.split("\n\n") {
            let mut head = block.lines().filter(|l| !l.starts_with('#'));
            let Some(header) = head.next() else { continue };
            let query: Vec<&str> = head.take_while(|l| *l != "----").collect();
            match header.split_once(' ') {
                Some(("query", "sql")) => out.push((Lang::Sql, query.join("\n"))),
                Some(("query", _)) => out.push((Lang::Adql, query.join("\n"))),
                _ => {}
            }
        }
    }
    out
}

#[test]
fn queries_on_a_cluster_equal_the_embedded_engine() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let cluster = start_cluster(dir.path(), 2);
    let rt = runtime();
    let local = Engine::open(&store, &config()).unwrap();
    let distributed = on_cluster(&rt, &store, &cluster.url, true);

    let mut queries = golden_queries();
    assert!(queries.len() >= 10, "{} golden queries", queries.len());
    // Aggregates that need a shuffle between stages.
    for q in [
        "SELECT COUNT(*) AS n, AVG(phot_g_mean_mag) AS g, MIN(dec) AS lo, MAX(dec) AS hi FROM gaia",
        "SELECT ivo_healpix_index(2, ra, dec) AS cell, COUNT(*) AS n, SUM(phot_g_mean_mag) AS s \
         FROM gaia GROUP BY ivo_healpix_index(2, ra, dec)",
        "SELECT TOP 20 source_id, ra, dec FROM gaia WHERE phot_g_mean_mag < 6 ORDER BY phot_g_mean_mag, source_id",
        "SELECT COUNT(*) AS n FROM gaia AS a JOIN gaia2 AS b ON a.source_id = b.source_id \
         WHERE a.phot_g_mean_mag < 7",
    ] {
        queries.push((Lang::Adql, q.to_string()));
    }
    for (lang, q) in &queries {
        let ordered = q.to_ascii_uppercase().contains("ORDER BY");
        let want = lines(&rt.block_on(run(&local, q, *lang)), ordered);
        let got = lines(&rt.block_on(run(&distributed, q, *lang)), ordered);
        assert_eq!(got, want, "{q}");
    }

    // Cross-matches: every pair within the radius, and the nearest partner.
    for arcsec in [1.0, 5.0, 60.0] {
        for mode in [XMatchMode::All, XMatchMode::Nearest] {
            let spec = XMatchSpec {
                left: "gaia".into(),
                right: "gaia2".into(),
                left_id: None,
                right_id: None,
                radius_deg: arcsec / 3600.0,
                mode,
            };
            let batches = |e: &Engine| {
                rt.block_on(async { e.xmatch(&spec).await.unwrap().collect().await.unwrap() })
            };
            let want = lines(&batches(&local), false);
            let got = lines(&batches(&distributed), false);
            assert!(
                want.len() >= 10_000,
                "{} pairs at {arcsec} arcsec",
                want.len()
            );
            assert_eq!(got.len(), want.len(), "pairs at {arcsec} arcsec, {mode:?}");
            assert_eq!(got, want, "pairs at {arcsec} arcsec, {mode:?}");
        }
    }
    drop(cluster);
}

#[test]
fn a_query_that_cannot_go_to_the_cluster_says_why() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let cluster = start_cluster(dir.path(), 1);
    let rt = runtime();
    // A table held in this process's memory (as TAP uploads are).
    let batch = RecordBatch::try_from_iter([(
        "x",
        std::sync::Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3])) as _,
    )])
    .unwrap();
    for required in [true, false] {
        let mut engine = on_cluster(&rt, &store, &cluster.url, required);
        engine
            .add_batch_table("tap_upload", "t", batch.clone())
            .unwrap();
        let r = rt.block_on(async {
            match engine
                .query("SELECT SUM(x) AS s FROM tap_upload.t", Lang::Adql)
                .await
            {
                Ok(df) => df.collect().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        });
        if required {
            let e = r.unwrap_err();
            assert!(e.contains("cannot run on the cluster"), "{e}");
            assert!(e.contains("tap_upload.t"), "{e}");
        } else {
            assert_eq!(lines(&r.unwrap(), true), ["6"]);
        }
    }
}

#[test]
fn losing_an_executor_during_a_query_neither_hangs_nor_breaks_the_next() {
    let _serial = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path());
    let mut cluster = start_cluster(dir.path(), 2);
    let rt = runtime();
    let engine = on_cluster(&rt, &store, &cluster.url, true);
    // A query with a few stages and some work in each.
    let q = "SELECT a.source_id % 97 AS k, COUNT(*) AS n FROM gaia AS a \
             JOIN gaia2 AS b ON a.source_id % 20000 = b.source_id % 20000 \
             GROUP BY a.source_id % 97";
    let local = Engine::open(&store, &config()).unwrap();
    let t0 = Instant::now();
    let want = lines(&rt.block_on(run(&local, q, Lang::Adql)), false);
    eprintln!("the query takes {:?} embedded", t0.elapsed());
    let victim = cluster.executors.remove(1);
    let t0 = Instant::now();
    let outcome = rt.block_on(async {
        let running = async {
            match engine.query(q, Lang::Adql).await {
                Ok(df) => df.collect().await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            }
        };
        let kill = async {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            drop(victim);
        };
        match tokio::time::timeout(Duration::from_secs(240), async {
            tokio::join!(running, kill)
        })
        .await
        {
            Ok((r, ())) => r,
            Err(_) => {
                let log = std::fs::read_to_string(dir.path().join("scheduler.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                panic!(
                    "the query neither completed nor failed in 240 s; the scheduler's log ends:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    });
    match outcome {
        Ok(b) => {
            eprintln!(
                "the query survived the executor's loss ({:?})",
                t0.elapsed()
            );
            assert_eq!(lines(&b, false), want);
        }
        Err(e) => {
            eprintln!("the query failed with the executor: {e}");
            assert!(!e.trim().is_empty());
        }
    }
    // The next query runs on the executor left.
    let again = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(240), run(&engine, q, Lang::Adql)).await
    });
    assert_eq!(lines(&again.expect("the next query ended"), false), want);
}
