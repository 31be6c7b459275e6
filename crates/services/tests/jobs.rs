//! The job model against a runner whose work is driven by the job's parameters.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use meridian_services::jobs::{
    ErrorSummary, JobConfig, JobResult, Jobs, ListFilter, NewJob, Phase, Runner,
};

/// Sleeps `SLEEP_MS`, then fails if `FAIL` is given, else writes `result.txt`. Counts how
/// many run at once.
#[derive(Default)]
struct TestRunner {
    now: AtomicUsize,
    peak: AtomicUsize,
}

struct Shared(Arc<TestRunner>);

struct Running(Arc<TestRunner>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Runner for Shared {
    fn run(
        &self,
        job: meridian_services::jobs::Job,
        dir: PathBuf,
    ) -> BoxFuture<'static, Result<Vec<JobResult>, ErrorSummary>> {
        let me = self.0.clone();
        async move {
            let n = me.now.fetch_add(1, Ordering::SeqCst) + 1;
            me.peak.fetch_max(n, Ordering::SeqCst);
            // Counts down when the work ends or its future is dropped (abort, time limit).
            let _running = Running(me.clone());
            let ms: u64 = job.parameter("SLEEP_MS").unwrap_or("0").parse().unwrap();
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if let Some(msg) = job.parameter("FAIL") {
                return Err(ErrorSummary::fatal(msg));
            }
            std::fs::write(dir.join("result.txt"), job.id.as_bytes()).unwrap();
            Ok(vec![JobResult {
                id: "result".into(),
                file: "result.txt".into(),
                mime_type: "text/plain".into(),
                size_bytes: job.id.len() as u64,
                rows: None,
            }])
        }
        .boxed()
    }
}

fn new_job(client: &str, params: &[(&str, &str)]) -> NewJob {
    NewJob {
        run_id: Some("test".into()),
        owner: None,
        client: client.into(),
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn open(dir: &std::path::Path, config: JobConfig) -> (Arc<Jobs>, Arc<TestRunner>) {
    let runner = Arc::new(TestRunner::default());
    let jobs = Jobs::open(dir, config, Arc::new(Shared(runner.clone()))).unwrap();
    jobs.start();
    (jobs, runner)
}

#[tokio::test]
async fn a_job_runs_to_completion_and_its_result_is_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let (jobs, _) = open(tmp.path(), JobConfig::default());
    let job = jobs.create(new_job("a", &[("SLEEP_MS", "50")])).unwrap();
    assert_eq!(job.phase, Phase::Pending);
    assert_eq!(
        jobs.wait(&job.id, None, Duration::from_millis(50))
            .await
            .unwrap()
            .phase,
        Phase::Pending
    );
    jobs.set_execution_duration(&job.id, 30).unwrap();
    jobs.run(&job.id).unwrap();
    let done = jobs
        .wait(&job.id, None, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.phase, Phase::Completed);
    assert_eq!(done.execution_duration_s, 30);
    assert!(done.start_ms.unwrap() <= done.end_ms.unwrap());
    let body = std::fs::read_to_string(jobs.job_dir(&job.id).join("result.txt")).unwrap();
    assert_eq!(body, job.id);
    // A finished job cannot change or run again.
    assert!(jobs.run(&job.id).is_err());
    assert!(
        jobs.set_parameters(&job.id, &[("X".into(), "1".into())])
            .is_err()
    );
    // Aborting it changes nothing.
    assert_eq!(jobs.abort(&job.id).unwrap().phase, Phase::Completed);
}

#[tokio::test]
async fn failures_land_in_the_error_summary_and_limits_stop_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let (jobs, _) = open(tmp.path(), JobConfig::default());
    let bad = jobs
        .create(new_job("a", &[("FAIL", "no such table")]))
        .unwrap();
    jobs.run(&bad.id).unwrap();
    let bad = jobs
        .wait(&bad.id, None, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(bad.phase, Phase::Error);
    assert_eq!(bad.error.unwrap().message, "no such table");

    let slow = jobs.create(new_job("a", &[("SLEEP_MS", "60000")])).unwrap();
    jobs.set_execution_duration(&slow.id, 1).unwrap();
    jobs.run(&slow.id).unwrap();
    let slow = jobs
        .wait(&slow.id, None, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(slow.phase, Phase::Error);
    assert!(
        slow.error
            .unwrap()
            .message
            .contains("execution duration of 1 s")
    );
}

#[tokio::test]
async fn abort_stops_an_executing_job_and_wait_returns_on_the_change() {
    let tmp = tempfile::tempdir().unwrap();
    let (jobs, runner) = open(tmp.path(), JobConfig::default());
    let job = jobs.create(new_job("a", &[("SLEEP_MS", "60000")])).unwrap();
    jobs.run(&job.id).unwrap();
    let executing = jobs
        .wait(&job.id, Some(Phase::Queued), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(executing.phase, Phase::Executing);
    let waiter = {
        let jobs = jobs.clone();
        let id = job.id.clone();
        tokio::spawn(async move { jobs.wait(&id, None, Duration::from_secs(30)).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = std::time::Instant::now();
    assert_eq!(jobs.abort(&job.id).unwrap().phase, Phase::Aborted);
    assert_eq!(waiter.await.unwrap().unwrap().phase, Phase::Aborted);
    assert!(t.elapsed() < Duration::from_secs(2));
    // The worker is freed: the runner's future was dropped.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(runner.now.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_pool_bounds_running_jobs_in_all_and_per_client() {
    let tmp = tempfile::tempdir().unwrap();
    let config = JobConfig {
        max_running: 3,
        max_running_per_client: 2,
        ..JobConfig::default()
    };
    let (jobs, runner) = open(tmp.path(), config);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let j = jobs
            .create(new_job("greedy", &[("SLEEP_MS", "300")]))
            .unwrap();
        jobs.run(&j.id).unwrap();
        ids.push(j.id);
    }
    let other = jobs
        .create(new_job("polite", &[("SLEEP_MS", "10")]))
        .unwrap();
    jobs.run(&other.id).unwrap();
    // The polite client's job starts at once although five greedy jobs were queued first.
    let polite = jobs
        .wait(&other.id, None, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(polite.phase, Phase::Completed);
    let executing = jobs
        .list(&ListFilter {
            phases: vec![Phase::Executing],
            ..Default::default()
        })
        .unwrap();
    assert!(executing.len() <= 2, "{executing:?}");
    for id in &ids {
        let j = jobs.wait(id, None, Duration::from_secs(20)).await.unwrap();
        assert_eq!(j.phase, Phase::Completed);
    }
    assert!(runner.peak.load(Ordering::SeqCst) <= 3);
    let queued_then: Vec<i64> = ids
        .iter()
        .map(|id| jobs.get(id).unwrap().start_ms.unwrap())
        .collect();
    // Greedy jobs started in the order they were queued.
    assert!(queued_then.windows(2).all(|w| w[0] <= w[1]));
}

#[tokio::test]
async fn listing_filters_by_phase_creation_time_and_recency() {
    let tmp = tempfile::tempdir().unwrap();
    let (jobs, _) = open(tmp.path(), JobConfig::default());
    let a = jobs.create(new_job("a", &[])).unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b = jobs.create(new_job("a", &[])).unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let c = jobs.create(new_job("a", &[])).unwrap();
    jobs.abort(&c.id).unwrap();
    let all = jobs.list(&ListFilter::default()).unwrap();
    assert_eq!(
        all.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&a.id, &b.id, &c.id]
    );
    let pending = jobs
        .list(&ListFilter {
            phases: vec![Phase::Pending],
            ..Default::default()
        })
        .unwrap();
    assert_eq!(pending.len(), 2);
    let after = jobs
        .list(&ListFilter {
            after_ms: Some(a.creation_ms),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        after.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&b.id, &c.id]
    );
    let last = jobs
        .list(&ListFilter {
            last: Some(2),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        last.iter().map(|j| &j.id).collect::<Vec<_>>(),
        [&c.id, &b.id]
    );
    // By owner: a user's jobs, or the anonymous ones.
    let mine = jobs
        .create(NewJob {
            owner: Some("alice".into()),
            ..new_job("alice", &[])
        })
        .unwrap();
    let of = |owner: Option<&str>| {
        jobs.list(&ListFilter {
            owner: Some(owner.map(str::to_string)),
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect::<Vec<_>>()
    };
    assert_eq!(of(Some("alice")), [mine.id]);
    assert_eq!(of(Some("bob")), Vec::<String>::new());
    assert_eq!(of(None), [a.id, b.id, c.id]);
}

#[tokio::test]
async fn destruction_time_is_honoured_by_the_sweeper() {
    let tmp = tempfile::tempdir().unwrap();
    let (jobs, _) = open(
        tmp.path(),
        JobConfig {
            sweep_interval_s: 1,
            ..JobConfig::default()
        },
    );
    let job = jobs.create(new_job("a", &[])).unwrap();
    let keep = jobs.create(new_job("a", &[])).unwrap();
    let far = meridian_services::jobs::now_ms() + 100 * 365 * 86_400_000;
    // Beyond the maximum lifetime: bounded.
    let kept = jobs.set_destruction(&keep.id, far).unwrap();
    assert!(kept.destruction_ms < far);
    jobs.set_destruction(&job.id, meridian_services::jobs::now_ms())
        .unwrap();
    assert!(jobs.job_dir(&job.id).exists());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(matches!(
        jobs.get(&job.id),
        Err(meridian_services::Error::NotFound(_))
    ));
    assert!(!jobs.job_dir(&job.id).exists());
    assert!(jobs.get(&keep.id).is_ok());
}

#[test]
fn jobs_survive_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let config = JobConfig {
        max_running: 1,
        ..JobConfig::default()
    };
    // The first "process": its runtime is dropped with a job executing and one queued,
    // so nothing is finished or cleaned up, as after a kill -9.
    let first = tokio::runtime::Runtime::new().unwrap();
    let (done_id, running_id, queued_id) = first.block_on(async {
        let (jobs, _) = open(tmp.path(), config.clone());
        let done = jobs.create(new_job("a", &[])).unwrap();
        jobs.run(&done.id).unwrap();
        jobs.wait(&done.id, None, Duration::from_secs(10))
            .await
            .unwrap();
        let running = jobs.create(new_job("a", &[("SLEEP_MS", "60000")])).unwrap();
        jobs.run(&running.id).unwrap();
        let queued = jobs.create(new_job("a", &[])).unwrap();
        jobs.run(&queued.id).unwrap();
        std::fs::write(
            jobs.job_dir(&running.id).join(".result.vot.partial"),
            b"half",
        )
        .unwrap();
        assert_eq!(jobs.get(&running.id).unwrap().phase, Phase::Executing);
        assert_eq!(jobs.get(&queued.id).unwrap().phase, Phase::Queued);
        // A second service on the same directory is refused while this one lives.
        let other = Jobs::open(
            tmp.path(),
            JobConfig::default(),
            Arc::new(Shared(Arc::default())),
        );
        assert!(matches!(other, Err(meridian_services::Error::Invalid(_))));
        (done.id, running.id, queued.id)
    });
    drop(first);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let (jobs, _) = open(tmp.path(), config);
        assert_eq!(jobs.get(&done_id).unwrap().phase, Phase::Completed);
        let cut = jobs.get(&running_id).unwrap();
        assert_eq!(cut.phase, Phase::Error);
        assert!(cut.error.unwrap().message.contains("service stopped"));
        assert!(
            !jobs
                .job_dir(&running_id)
                .join(".result.vot.partial")
                .exists()
        );
        let requeued = jobs
            .wait(&queued_id, None, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(requeued.phase, Phase::Completed);
    });
}

#[test]
fn times_read_and_write_as_iso_8601() {
    use meridian_services::jobs::{format_time, parse_time};
    assert_eq!(format_time(0), "1970-01-01T00:00:00.000Z");
    assert_eq!(
        parse_time("2026-11-22T10:00:00.5Z"),
        Some(1_795_341_600_500)
    );
    assert_eq!(parse_time("2026-11-22T10:00:00"), Some(1_795_341_600_000));
    assert_eq!(
        parse_time("2026-11-22T11:00:00+01:00"),
        Some(1_795_341_600_000)
    );
    assert_eq!(parse_time("2026-11-22"), Some(1_795_305_600_000));
    assert_eq!(parse_time("yesterday"), None);
}
