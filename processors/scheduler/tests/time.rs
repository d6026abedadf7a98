//! A month on the scheduler's clock, through the real topics: a daily job
//! fires once per day, at its hour and not in the hour before, 31 times
//! in January, each run's command published once; an hourly job beside
//! it runs every hour. Each step of the clock waits for the scheduler to
//! have looked at it (its tick counter) and for the runs due, never for a
//! duration.

use chrono::{DateTime, Duration, Utc};
use psymatch_runtime::clock::ManualClock;
use psymatch_runtime::testing::TestBed;
use psymatch_scheduler::{Schedule, Scheduler, Settings};
use std::collections::BTreeSet;
use std::sync::Arc;

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

// Berlin is UTC+1 in January: the daily job's 02:00 is 01:00 UTC.
const SCHEDULE: &str = r#"
timezone: Europe/Berlin
jobs:
  - {name: hourly, cron: "0 0 * * * *", topic: matching-commands, event_type: matching.sweep,
     payload: {run_id: "{run_id}"}}
  - {name: daily, cron: "0 0 2 * * *", topic: email-commands, event_type: email.flush_batches,
     payload: {run_id: "{run_id}"}}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_daily_job_fires_once_a_day_over_a_simulated_month() {
    let bed = TestBed::new().await;
    let start: DateTime<Utc> = "2027-01-01T00:30:00Z".parse().unwrap();
    let clock = ManualClock::at(start);
    let mut runtime = bed.config("scheduler");
    runtime.clock = Arc::new(clock.clone());
    let settings = Settings {
        runtime,
        owner: "month".into(),
        tick: std::time::Duration::from_millis(5),
        lease: std::time::Duration::from_secs(30),
        retry_base: std::time::Duration::from_millis(50),
        catch_up: Duration::days(1),
    };
    let schedule = Schedule::parse(SCHEDULE).unwrap();
    let scheduler = Arc::new(Scheduler::new(schedule, settings, bed.pool.clone()).unwrap());
    let stop = Arc::new(tokio::sync::Notify::new());
    let task = tokio::spawn(scheduler.clone().run(stop.clone()));

    let count = |job: &'static str| {
        let sql = format!(
            "SELECT count(*) FROM scheduler.runs WHERE job = '{job}' AND status = 'SUCCEEDED'"
        );
        let bed = &bed;
        async move { bed.count(&sql).await }
    };
    // The clock moves once the scheduler has read it at the start.
    bed.wait_for(
        "the scheduler's first look at the clock",
        DEADLINE,
        || async { scheduler.metrics.ticks.get() > 0 },
    )
    .await;
    let midnight: DateTime<Utc> = "2027-01-01T00:00:00Z".parse().unwrap();
    for day in 0..31 {
        // A second before 02:00 in Berlin, 02:00, and late in the day.
        for at in [
            Duration::hours(1) - Duration::seconds(1),
            Duration::hours(1),
            Duration::hours(23) + Duration::minutes(30),
        ] {
            let now = midnight + Duration::days(day) + at;
            let ticks = scheduler.metrics.ticks.get();
            clock.set(now);
            let hours = (now - midnight).num_hours();
            let days = day + (at >= Duration::hours(1)) as i64;
            bed.wait_for(&format!("the runs due at {now}"), DEADLINE, || async {
                // Two more looks: the second read the clock set here.
                scheduler.metrics.ticks.get() >= ticks + 2
                    && count("hourly").await >= hours
                    && count("daily").await >= days
            })
            .await;
            assert_eq!(
                count("daily").await,
                days,
                "at {now}: a daily run early or twice"
            );
            assert_eq!(count("hourly").await, hours, "at {now}");
        }
    }
    stop.notify_one();
    task.await.unwrap().unwrap();

    let occurrences: Vec<DateTime<Utc>> = sqlx::query_scalar(
        "SELECT occurrence FROM scheduler.runs WHERE job = 'daily' ORDER BY occurrence",
    )
    .fetch_all(&bed.pool)
    .await
    .unwrap();
    assert_eq!(occurrences.len(), 31);
    for (day, occurrence) in occurrences.iter().enumerate() {
        let expected =
            "2027-01-01T01:00:00Z".parse::<DateTime<Utc>>().unwrap() + Duration::days(day as i64);
        assert_eq!(*occurrence, expected);
    }
    let published = bed
        .read_until("email-commands", DEADLINE, |r| r.len() >= 31)
        .await;
    let runs: BTreeSet<String> = published
        .iter()
        .map(|r| r.payload()["run_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!((published.len(), runs.len()), (31, 31), "{runs:?}");
}
