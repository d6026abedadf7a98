//! The scheduler: publishes commands on cron schedules (daily scrape,
//! weekly email flush, cache cleanup, sweeps, re-matching). It consumes no
//! topic; the clock drives it.
//!
//! Exactly one replica runs each occurrence: the occurrence's row in
//! `scheduler.runs` (primary key job + occurrence) is the lease. A failed
//! publish is retried with backoff up to the job's `max_attempts`, then the
//! run is dead-lettered (status `DEAD_LETTERED`, the error kept, the metric
//! `psymatch_scheduler_job_failures_total` raised). A replica that dies
//! while running leaves its lease to expire and another takes over; the
//! command's event id derives from job and occurrence, so a repeat is
//! dropped by its consumer.

mod events;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use events::{JobDeadLettered, JobRan, JobRetried};
use prometheus::{IntCounterVec, Opts};
use psymatch_runtime::codec::Codec;
use psymatch_runtime::contracts::Contracts;
use psymatch_runtime::envelope;
use psymatch_runtime::events::Event;
use psymatch_runtime::processor::Outgoing;
use rdkafka::producer::FutureProducer;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// What to do with an occurrence that fell into a downtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Missed {
    /// Run the latest missed occurrence once at start.
    RunOnce,
    /// Wait for the next occurrence.
    Skip,
}

/// A job as written in the schedule file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobSpec {
    name: String,
    cron: String,
    topic: String,
    event_type: String,
    payload: Value,
    #[serde(default = "default_attempts")]
    max_attempts: u32,
    #[serde(default = "default_missed")]
    missed: Missed,
}

fn default_attempts() -> u32 {
    3
}

fn default_missed() -> Missed {
    Missed::Skip
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleSpec {
    timezone: String,
    jobs: Vec<JobSpec>,
}

/// A scheduled job.
#[derive(Debug, Clone)]
pub struct Job {
    /// Name (unique).
    pub name: String,
    /// The cron expression as written.
    pub cron: String,
    schedule: cron::Schedule,
    /// Topic the command goes to.
    pub topic: String,
    /// The command's event type.
    pub event_type: String,
    /// The command's payload; `"{run_id}"` is replaced.
    pub payload: Value,
    /// Attempts before the run is dead-lettered.
    pub max_attempts: u32,
    /// Downtime policy.
    pub missed: Missed,
}

/// Every job, with the time zone their expressions are read in.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Time zone of the cron expressions.
    pub timezone: Tz,
    /// The jobs.
    pub jobs: Vec<Job>,
}

impl Schedule {
    /// Parses a schedule file; errors name the job and what is wrong.
    pub fn parse(text: &str) -> anyhow::Result<Schedule> {
        let spec: ScheduleSpec = serde_yaml_ng::from_str(text).context("schedule file")?;
        let timezone = Tz::from_str(&spec.timezone)
            .map_err(|_| anyhow::anyhow!("timezone {:?} is not an IANA zone", spec.timezone))?;
        let mut jobs = Vec::new();
        for job in spec.jobs {
            anyhow::ensure!(
                !jobs.iter().any(|j: &Job| j.name == job.name),
                "job {:?} appears twice",
                job.name
            );
            anyhow::ensure!(
                job.max_attempts >= 1,
                "job {:?}: max_attempts must be at least 1",
                job.name
            );
            let schedule = cron::Schedule::from_str(&job.cron)
                .map_err(|e| anyhow::anyhow!("job {:?}: cron {:?}: {e}", job.name, job.cron))?;
            jobs.push(Job {
                name: job.name,
                cron: job.cron,
                schedule,
                topic: job.topic,
                event_type: job.event_type,
                payload: job.payload,
                max_attempts: job.max_attempts,
                missed: job.missed,
            });
        }
        Ok(Schedule { timezone, jobs })
    }

    /// Occurrences of `job` after `from` up to and including `to`, in UTC.
    pub fn occurrences(
        &self,
        job: &Job,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        job.schedule
            .after(&from.with_timezone(&self.timezone))
            .map(|at| at.with_timezone(&Utc))
            .take_while(|at| *at <= to)
            .collect()
    }

    /// The latest occurrence of `job` at or before `now`, looking back at
    /// most `horizon`.
    pub fn latest(
        &self,
        job: &Job,
        now: DateTime<Utc>,
        horizon: chrono::Duration,
    ) -> Option<DateTime<Utc>> {
        self.occurrences(job, now - horizon, now).pop()
    }
}

/// The id of an occurrence: job name and UTC time.
pub fn run_id(job: &str, occurrence: DateTime<Utc>) -> String {
    format!("{job}-{}", occurrence.format("%Y%m%dT%H%M%SZ"))
}

/// Replaces `"{run_id}"` in every string of `value`.
fn fill(value: &Value, run_id: &str) -> Value {
    match value {
        Value::String(s) => Value::String(s.replace("{run_id}", run_id)),
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, run_id)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), fill(v, run_id)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Schema registry.
    pub registry_url: String,
    /// Prefix of physical topic names.
    pub topic_prefix: String,
    /// This replica's name (in `scheduler.runs.owner`).
    pub owner: String,
    /// How often the clock is looked at.
    pub tick: Duration,
    /// How long a claimed run is this replica's before another may take it.
    pub lease: Duration,
    /// First pause between attempts (doubling).
    pub retry_base: Duration,
    /// How far back `missed: run_once` looks at start.
    pub catch_up: chrono::Duration,
}

/// Metrics of the scheduler, on the runtime's surface (the same
/// `psymatch_` prefix and `processor` label as every processor's).
#[derive(Clone)]
pub struct Metrics {
    /// What `/metrics` serves.
    pub surface: Arc<psymatch_runtime::surface::Metrics>,
    /// Runs by job and outcome.
    pub runs: IntCounterVec,
    /// Runs dead-lettered, by job.
    pub failures: IntCounterVec,
}

impl Metrics {
    fn new() -> Metrics {
        let surface = Arc::new(psymatch_runtime::surface::Metrics::new("scheduler"));
        let runs = IntCounterVec::new(
            Opts::new(
                "scheduler_runs_total",
                "Job runs by outcome (succeeded, retried, dead_lettered).",
            ),
            &["job_name", "outcome"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "scheduler_job_failures_total",
                "Job runs dead-lettered after every attempt failed.",
            ),
            &["job_name"],
        )
        .expect("valid metric");
        for collector in [runs.clone(), failures.clone()] {
            surface
                .register(Box::new(collector))
                .expect("the scheduler's metrics are registered once");
        }
        Metrics {
            surface,
            runs,
            failures,
        }
    }
}

/// One scheduler replica.
pub struct Scheduler {
    schedule: Schedule,
    settings: Settings,
    pool: PgPool,
    producer: FutureProducer,
    codec: Codec,
    /// Its metrics.
    pub metrics: Metrics,
}

impl Scheduler {
    /// A replica on this database and broker.
    pub fn new(schedule: Schedule, settings: Settings, pool: PgPool) -> anyhow::Result<Scheduler> {
        let producer: FutureProducer = psymatch_runtime::broker::producer_config(
            &settings.brokers,
            &format!("psymatch-scheduler-{}", settings.owner),
        )
        .create()
        .context("creating the producer")?;
        Ok(Scheduler {
            codec: Codec::new(&settings.registry_url),
            schedule,
            settings,
            pool,
            producer,
            metrics: Metrics::new(),
        })
    }

    /// Its database pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Runs until `stop` is set: each tick claims the occurrences that came
    /// due and the runs whose lease expired, and runs them.
    pub async fn run(self: Arc<Self>, stop: Arc<tokio::sync::Notify>) -> anyhow::Result<()> {
        let mut last = Utc::now();
        self.catch_up(last).await?;
        let mut running = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.notified() => break,
                _ = tokio::time::sleep(self.settings.tick) => {}
            }
            let now = Utc::now();
            for job in &self.schedule.jobs {
                for occurrence in self.schedule.occurrences(job, last, now) {
                    let me = self.clone();
                    let job = job.clone();
                    running.spawn(async move { me.claim_and_run(&job, occurrence).await });
                }
            }
            last = now;
            match self.expired().await {
                Ok(taken) => {
                    for (job, occurrence, attempts) in taken {
                        let me = self.clone();
                        running.spawn(async move { me.execute(&job, occurrence, attempts).await });
                    }
                }
                Err(error) => tracing::warn!(%error, "looking for expired runs failed"),
            }
            while let Some(done) = running.try_join_next() {
                if let Ok(Err(error)) = done {
                    tracing::warn!(error = %format!("{error:#}"), "a run could not be recorded");
                }
            }
        }
        // Runs in flight finish (they are short: one publish each).
        while running.join_next().await.is_some() {}
        Ok(())
    }

    /// `missed: run_once`: the latest occurrence inside the catch-up window
    /// that no replica ran (only for jobs that ran before: a new
    /// deployment starts with the next occurrence).
    async fn catch_up(self: &Arc<Self>, now: DateTime<Utc>) -> anyhow::Result<()> {
        for job in self
            .schedule
            .jobs
            .iter()
            .filter(|j| j.missed == Missed::RunOnce)
        {
            let Some(latest) = self.schedule.latest(job, now, self.settings.catch_up) else {
                continue;
            };
            let last: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT max(occurrence) FROM scheduler.runs WHERE job = $1")
                    .bind(&job.name)
                    .fetch_one(&self.pool)
                    .await?;
            if last.is_some_and(|last| last < latest) {
                tracing::info!(job = job.name, occurrence = %latest, "running a missed occurrence");
                self.claim_and_run(job, latest).await?;
            }
        }
        Ok(())
    }

    /// Claims an occurrence (one replica wins) and runs it.
    pub async fn claim_and_run(&self, job: &Job, occurrence: DateTime<Utc>) -> anyhow::Result<()> {
        let claimed = sqlx::query(
            "INSERT INTO scheduler.runs (job, occurrence, run_id, status, owner, lease_until)
             VALUES ($1, $2, $3, 'RUNNING', $4, now() + $5 * interval '1 millisecond')
             ON CONFLICT (job, occurrence) DO NOTHING",
        )
        .bind(&job.name)
        .bind(occurrence)
        .bind(run_id(&job.name, occurrence))
        .bind(&self.settings.owner)
        .bind(self.settings.lease.as_millis() as f64)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        if claimed {
            self.execute(&job.name, occurrence, 0).await?;
        }
        Ok(())
    }

    /// Runs whose owner's lease expired, taken over by this replica.
    async fn expired(&self) -> anyhow::Result<Vec<(String, DateTime<Utc>, i32)>> {
        Ok(sqlx::query_as(
            "UPDATE scheduler.runs SET owner = $1, lease_until = now() + $2 * interval '1 millisecond'
              WHERE status = 'RUNNING' AND lease_until < now()
              RETURNING job, occurrence, attempts",
        )
        .bind(&self.settings.owner)
        .bind(self.settings.lease.as_millis() as f64)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Publishes the occurrence's command, retrying, and records the
    /// outcome.
    async fn execute(
        &self,
        job_name: &str,
        occurrence: DateTime<Utc>,
        done: i32,
    ) -> anyhow::Result<()> {
        let Some(job) = self.schedule.jobs.iter().find(|j| j.name == job_name) else {
            // A job removed from the schedule since the run was claimed.
            return self
                .finish(
                    job_name,
                    occurrence,
                    "DEAD_LETTERED",
                    done,
                    "job no longer scheduled",
                )
                .await;
        };
        let id = run_id(&job.name, occurrence);
        let mut attempts = done;
        loop {
            attempts += 1;
            match self.publish(job, &id).await {
                Ok(outcome) => {
                    JobRan {
                        job: &job.name,
                        run_id: &id,
                        attempts,
                    }
                    .emit(&self.metrics);
                    return self
                        .finish(&job.name, occurrence, "SUCCEEDED", attempts, &outcome)
                        .await;
                }
                Err(error) if attempts as u32 >= job.max_attempts => {
                    let reason = format!("{error:#}");
                    JobDeadLettered {
                        job: &job.name,
                        run_id: &id,
                        attempts,
                        reason: &reason,
                    }
                    .emit(&self.metrics);
                    return self
                        .finish(&job.name, occurrence, "DEAD_LETTERED", attempts, &reason)
                        .await;
                }
                Err(error) => {
                    JobRetried {
                        job: &job.name,
                        run_id: &id,
                        attempts,
                        error: &format!("{error:#}"),
                    }
                    .emit(&self.metrics);
                    sqlx::query(
                        "UPDATE scheduler.runs SET attempts = $3, outcome = $4,
                                lease_until = now() + $5 * interval '1 millisecond'
                          WHERE job = $1 AND occurrence = $2",
                    )
                    .bind(&job.name)
                    .bind(occurrence)
                    .bind(attempts)
                    .bind(format!("{error:#}"))
                    .bind(self.settings.lease.as_millis() as f64)
                    .execute(&self.pool)
                    .await?;
                    let pause = self.settings.retry_base * 2u32.saturating_pow(attempts as u32 - 1);
                    tokio::time::sleep(pause.min(Duration::from_secs(300))).await;
                }
            }
        }
    }

    async fn finish(
        &self,
        job: &str,
        occurrence: DateTime<Utc>,
        status: &str,
        attempts: i32,
        outcome: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE scheduler.runs SET status = $3, attempts = $4, outcome = $5, finished_at = now()
              WHERE job = $1 AND occurrence = $2",
        )
        .bind(job)
        .bind(occurrence)
        .bind(status)
        .bind(attempts)
        .bind(outcome)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Encodes and publishes the command; its event id derives from the
    /// run id, so a repeat after a takeover is the same event.
    async fn publish(&self, job: &Job, run_id: &str) -> anyhow::Result<String> {
        let contracts = Contracts::embedded();
        let (spec, schema) = contracts.topic(&job.topic)?;
        let event_id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("psymatch-scheduler/{run_id}").as_bytes(),
        );
        let record = json!({
            "event_type": job.event_type,
            "event_id": event_id.to_string(),
            "correlation_id": run_id,
            "payload": fill(&job.payload, run_id),
        });
        let (key, envelope) =
            envelope::from_json(&record, schema, &spec.key_fields, "scheduler", Utc::now())?;
        let physical = format!("{}{}", self.settings.topic_prefix, job.topic);
        let bytes = self
            .codec
            .encode_with(&physical, schema, envelope.to_avro(schema)?)
            .await?;
        let record = Outgoing::of_envelope(&physical, key, &envelope, bytes);
        let delivery = self
            .producer
            .send(record.record(), Duration::from_secs(30))
            .await
            .map_err(|(error, _)| anyhow::anyhow!("publishing to {physical}: {error}"))?;
        Ok(format!(
            "published {} to {} partition {} offset {}",
            job.event_type, job.topic, delivery.partition, delivery.offset
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_times_in_berlin_are_stored_in_utc() {
        let schedule = Schedule::parse(include_str!("../schedule.yaml")).unwrap();
        let scrape = schedule
            .jobs
            .iter()
            .find(|j| j.name == "daily-scrape")
            .unwrap();
        // 02:00 in Berlin: 01:00 UTC in winter, 00:00 UTC in summer.
        let winter = schedule.occurrences(
            scrape,
            "2026-11-26T00:00:00Z".parse().unwrap(),
            "2026-11-27T00:00:00Z".parse().unwrap(),
        );
        assert_eq!(
            winter,
            vec!["2026-11-26T01:00:00Z".parse::<DateTime<Utc>>().unwrap()]
        );
        let summer = schedule.occurrences(
            scrape,
            "2026-07-01T00:00:00Z".parse().unwrap(),
            "2026-07-02T00:00:00Z".parse().unwrap(),
        );
        assert_eq!(
            summer,
            vec!["2026-07-02T00:00:00Z".parse::<DateTime<Utc>>().unwrap()]
        );
        let flush = schedule
            .jobs
            .iter()
            .find(|j| j.name == "weekly-email-flush")
            .unwrap();
        let week = schedule.occurrences(
            flush,
            "2026-11-23T00:00:00Z".parse().unwrap(),
            "2026-11-30T12:00:00Z".parse().unwrap(),
        );
        assert_eq!(week.len(), 2, "{week:?}");
        assert_eq!(week[0].to_rfc3339(), "2026-11-23T08:00:00+00:00");
    }

    #[test]
    fn bad_schedules_say_what_is_wrong() {
        let error = Schedule::parse("timezone: Mars/Base\njobs: []")
            .unwrap_err()
            .to_string();
        assert!(error.contains("Mars/Base"), "{error}");
        let job = |cron: &str| {
            format!(
                "timezone: Europe/Berlin\njobs:\n  - {{name: x, cron: \"{cron}\", topic: email-commands, event_type: email.flush_batches, payload: {{}}}}\n"
            )
        };
        let error = Schedule::parse(&job("not a cron")).unwrap_err().to_string();
        assert!(
            error.contains("job \"x\"") && error.contains("not a cron"),
            "{error}"
        );
        assert!(Schedule::parse(&job("0 0 9 * * MON")).is_ok());
        let line = "  - {name: x, cron: \"0 0 9 * * MON\", topic: email-commands, event_type: email.flush_batches, payload: {}}\n";
        let twice = format!("timezone: Europe/Berlin\njobs:\n{line}{line}");
        let error = Schedule::parse(&twice).unwrap_err().to_string();
        assert!(error.contains("twice"), "{error}");
    }

    #[test]
    fn the_run_id_fills_the_payload() {
        let filled = fill(
            &json!({"run_id": "{run_id}", "nested": ["a-{run_id}"], "n": 1}),
            "job-1",
        );
        assert_eq!(
            filled,
            json!({"run_id": "job-1", "nested": ["a-job-1"], "n": 1})
        );
    }
}
