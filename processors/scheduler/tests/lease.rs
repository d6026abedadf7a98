//! Two scheduler replicas against the real broker, registry and
//! PostgreSQL: one run and one command per occurrence, a failing job
//! retried and dead-lettered, a dead replica's run taken over, and the
//! downtime policy (run the latest missed occurrence once, or skip).

use chrono::{DateTime, Utc};
use psymatch_runtime::testing::TestBed;
use psymatch_scheduler::{Schedule, Scheduler, Settings};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);

const SCHEDULE: &str = r#"
timezone: Europe/Berlin
jobs:
  - {name: sweep, cron: "* * * * * *", topic: matching-commands, event_type: matching.sweep,
     payload: {run_id: "{run_id}"}, max_attempts: 3}
  # run_id must be a string: every attempt fails.
  - {name: broken, cron: "*/2 * * * * *", topic: matching-commands, event_type: matching.sweep,
     payload: {run_id: 42}, max_attempts: 3}
  - {name: daily, cron: "0 0 2 * * *", topic: email-commands, event_type: email.flush_batches,
     payload: {run_id: "{run_id}"}, missed: run_once}
  - {name: skipped, cron: "0 0 2 * * *", topic: email-commands, event_type: email.flush_batches,
     payload: {run_id: "{run_id}"}, missed: skip}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn one_run_per_occurrence_with_two_replicas() {
    let bed = TestBed::new().await;
    let schedule = Schedule::parse(SCHEDULE).unwrap();
    let now = Utc::now();
    // History: a run of `sweep` whose replica died holding it, and the
    // daily jobs last ran three days ago (a downtime since).
    let three_days_ago = now - chrono::Duration::days(3);
    sqlx::query(
        "INSERT INTO scheduler.runs (job, occurrence, run_id, status, owner, lease_until) VALUES
           ('sweep', '2026-01-01T00:00:00Z', 'sweep-20260101T000000Z', 'RUNNING', 'dead', now() - interval '1 minute'),
           ('daily', $1, 'daily-old', 'SUCCEEDED', 'old', $1),
           ('skipped', $1, 'skipped-old', 'SUCCEEDED', 'old', $1)",
    )
    .bind(three_days_ago)
    .execute(&bed.pool)
    .await
    .unwrap();

    let replicas: Vec<(Arc<Scheduler>, Arc<tokio::sync::Notify>)> = ["a", "b"]
        .iter()
        .map(|owner| {
            let settings = Settings {
                runtime: bed.config("scheduler"),
                owner: owner.to_string(),
                tick: Duration::from_millis(100),
                lease: Duration::from_secs(30),
                retry_base: Duration::from_millis(50),
                catch_up: chrono::Duration::days(7),
            };
            let scheduler = Scheduler::new(schedule.clone(), settings, bed.pool.clone()).unwrap();
            (Arc::new(scheduler), Arc::new(tokio::sync::Notify::new()))
        })
        .collect();
    let tasks: Vec<_> = replicas
        .iter()
        .map(|(s, stop)| tokio::spawn(s.clone().run(stop.clone())))
        .collect();

    bed.wait_for("five sweeps, a dead-lettered run, the takeover", DEADLINE, || async {
        bed.count("SELECT count(*) FROM scheduler.runs WHERE job = 'sweep' AND status = 'SUCCEEDED'").await >= 6
            && bed.count("SELECT count(*) FROM scheduler.runs WHERE job = 'broken' AND status = 'DEAD_LETTERED'").await >= 1
    })
    .await;
    for (_, stop) in &replicas {
        stop.notify_one();
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }

    // Every sweep occurrence ran once, in consecutive seconds.
    let rows: Vec<(DateTime<Utc>, String, String, i32)> = sqlx::query_as(
        "SELECT occurrence, status, owner, attempts FROM scheduler.runs WHERE job = 'sweep' ORDER BY occurrence",
    )
    .fetch_all(&bed.pool)
    .await
    .unwrap();
    assert!(rows.iter().all(|r| r.1 == "SUCCEEDED"), "{rows:?}");
    let taken_over = &rows[0];
    assert_eq!(taken_over.0.to_rfc3339(), "2026-01-01T00:00:00+00:00");
    assert_ne!(taken_over.2, "dead", "the expired run was taken over");
    let live = &rows[1..];
    let span = (live.last().unwrap().0 - live[0].0).num_seconds();
    assert_eq!(
        span as usize,
        live.len() - 1,
        "no occurrence skipped: {live:?}"
    );

    // One command per run: as many sweeps on the topic as runs, each once.
    let published = bed
        .read_until("matching-commands", DEADLINE, |r| r.len() >= rows.len())
        .await;
    let ids: BTreeSet<String> = published
        .iter()
        .map(|r| r.payload()["run_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(published.len(), rows.len(), "{ids:?}");
    assert_eq!(ids.len(), rows.len());
    assert!(ids.contains("sweep-20260101T000000Z"));

    // The failing job: three attempts, dead-lettered with its reason, counted.
    let (attempts, outcome): (i32, String) = sqlx::query_as(
        "SELECT attempts, outcome FROM scheduler.runs WHERE job = 'broken' AND status = 'DEAD_LETTERED' LIMIT 1",
    )
    .fetch_one(&bed.pool)
    .await
    .unwrap();
    assert_eq!(attempts, 3);
    assert!(outcome.contains("run_id"), "{outcome}");
    let failures: u64 = replicas
        .iter()
        .map(|(s, _)| s.metrics.failures.with_label_values(&["broken"]).get())
        .sum();
    let dead = bed
        .count(
            "SELECT count(*) FROM scheduler.runs WHERE job = 'broken' AND status = 'DEAD_LETTERED'",
        )
        .await;
    assert_eq!(failures as i64, dead);

    // Downtime: `daily` runs its latest missed occurrence once (two
    // replicas, one run); `skipped` waits for its next.
    let daily: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT occurrence FROM scheduler.runs WHERE job = 'daily' ORDER BY occurrence",
    )
    .fetch_all(&bed.pool)
    .await
    .unwrap();
    let job = schedule.jobs.iter().find(|j| j.name == "daily").unwrap();
    let latest = schedule
        .latest(job, Utc::now(), chrono::Duration::days(7))
        .unwrap();
    assert_eq!(
        daily,
        vec![three_days_ago.trunc_subsecs_to_micros(), latest]
    );
    assert_eq!(
        bed.count("SELECT count(*) FROM scheduler.runs WHERE job = 'skipped'")
            .await,
        1
    );
}

trait Micros {
    fn trunc_subsecs_to_micros(self) -> Self;
}

impl Micros for DateTime<Utc> {
    /// PostgreSQL keeps microseconds.
    fn trunc_subsecs_to_micros(self) -> Self {
        chrono::SubsecRound::trunc_subsecs(self, 6)
    }
}
