//! The scheduler: publishes commands on cron schedules (daily scrape,
//! weekly email flush, cache cleanup, sweeps, re-matching). It consumes no
//! topic; the clock drives it.
//!
//! Exactly one replica runs each occurrence: the occurrence's row in
//! `scheduler.runs` (primary key job + occurrence) is the lease. The
//! command goes through the runtime's outbox like every processor's
//! output: the run marked done and its command commit in one transaction,
//! and the relay publishes it. A command that cannot be made (its payload
//! does not fit, the registry is away) is retried with backoff up to the
//! job's `max_attempts`, then the run is dead-lettered (status
//! `DEAD_LETTERED`, the error kept, the metric
//! `psymatch_scheduler_job_failures_total` raised). A replica that dies
//! while running leaves its lease to expire and another takes over; the
//! command's event id derives from job and occurrence, so a repeat is
//! dropped by its consumer.

mod events;
pub mod queries;
mod schedule;

use schedule::fill;
pub use schedule::{Job, Missed, Schedule, run_id};

use chrono::{DateTime, Utc};
use events::{JobDeadLettered, JobRan, JobRetried};
use prometheus::{IntCounterVec, Opts};
use psymatch_runtime::app::Outbox;
use psymatch_runtime::codec::Codec;
use psymatch_runtime::config::RuntimeConfig;
use psymatch_runtime::contracts::Contracts;
use psymatch_runtime::envelope;
use psymatch_runtime::events::Event;
use psymatch_runtime::processor::Outgoing;
use psymatch_runtime::surface::Status;
use serde_json::json;
use sqlx::PgPool;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The runtime's settings: broker, registry, topic prefix, relay.
    pub runtime: RuntimeConfig,
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
    /// Times the schedule was looked at: a loop that stopped turning shows
    /// as a flat line (and a test knows the clock was read).
    pub ticks: prometheus::IntCounter,
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
        let ticks = prometheus::IntCounter::new(
            "scheduler_ticks_total",
            "Times the scheduler looked at its clock for occurrences come due.",
        )
        .expect("valid metric");
        for collector in [runs.clone(), failures.clone()] {
            surface
                .register(Box::new(collector))
                .expect("the scheduler's metrics are registered once");
        }
        surface
            .register(Box::new(ticks.clone()))
            .expect("the scheduler's metrics are registered once");
        Metrics {
            surface,
            runs,
            failures,
            ticks,
        }
    }
}

/// One scheduler replica.
pub struct Scheduler {
    schedule: Schedule,
    settings: Settings,
    pool: PgPool,
    outbox: Arc<Outbox>,
    codec: Codec,
    /// Its metrics.
    pub metrics: Metrics,
    /// What `/health/status` shows (the relay's last error).
    pub status: Arc<Status>,
}

impl Scheduler {
    /// A replica on this database and broker.
    pub fn new(schedule: Schedule, settings: Settings, pool: PgPool) -> anyhow::Result<Scheduler> {
        let metrics = Metrics::new();
        let status = Arc::new(Status::default());
        let outbox = Outbox::new(
            "scheduler",
            &settings.runtime,
            pool.clone(),
            metrics.surface.clone(),
            status.clone(),
            false,
        )?;
        Ok(Scheduler {
            codec: Codec::new(&settings.runtime.registry_url),
            schedule,
            settings,
            pool,
            outbox,
            metrics,
            status,
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
        let drained = Arc::new(AtomicBool::new(false));
        let relay = tokio::spawn(self.outbox.clone().relay(drained.clone()));
        let ran = self.clone().schedule_loop(stop).await;
        // Everything committed is published before the replica stops.
        drained.store(true, Ordering::SeqCst);
        self.outbox.wake();
        let _ = relay.await;
        ran
    }

    /// Each tick until `stop`: the occurrences that came due, and the runs
    /// whose lease expired.
    async fn schedule_loop(self: Arc<Self>, stop: Arc<tokio::sync::Notify>) -> anyhow::Result<()> {
        // Occurrences come due by the runtime's clock (a test moves it);
        // leases stay on the database's, which is the physical world's.
        let clock = self.settings.runtime.clock.clone();
        let mut last = clock.now();
        self.catch_up(last).await?;
        self.metrics.ticks.inc();
        let mut running = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                _ = stop.notified() => break,
                _ = tokio::time::sleep(self.settings.tick) => {}
            }
            let now = clock.now();
            for job in &self.schedule.jobs {
                for occurrence in self.schedule.occurrences(job, last, now) {
                    let me = self.clone();
                    let job = job.clone();
                    running.spawn(async move { me.claim_and_run(&job, occurrence).await });
                }
            }
            last = now;
            self.metrics.ticks.inc();
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

    /// Makes the occurrence's command, retrying, and commits it to the
    /// outbox with the run's outcome.
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
            match self.command(job, &id).await {
                Ok(command) => {
                    self.succeed(job, occurrence, attempts, command).await?;
                    JobRan {
                        job: &job.name,
                        run_id: &id,
                        attempts,
                    }
                    .emit(&self.metrics);
                    return Ok(());
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

    /// Marks the run done and puts its command in the outbox, in one
    /// transaction: a crash leaves both or neither, never a command
    /// published for a run still open (nor a run done without its command).
    async fn succeed(
        &self,
        job: &Job,
        occurrence: DateTime<Utc>,
        attempts: i32,
        command: Outgoing,
    ) -> anyhow::Result<()> {
        let outcome = format!(
            "queued {} for {} (event {})",
            job.event_type, job.topic, command.event_id
        );
        let mut tx = self.pool.begin().await?;
        let ids = self
            .outbox
            .insert(&mut tx, std::slice::from_ref(&command))
            .await?;
        sqlx::query(
            "UPDATE scheduler.runs SET status = 'SUCCEEDED', attempts = $3, outcome = $4,
                    finished_at = now()
              WHERE job = $1 AND occurrence = $2",
        )
        .bind(&job.name)
        .bind(occurrence)
        .bind(attempts)
        .bind(&outcome)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.outbox
            .committed(ids.into_iter().zip([command]).collect());
        Ok(())
    }

    /// Encodes the command; its event id derives from the run id, so a
    /// repeat after a takeover is the same event.
    async fn command(&self, job: &Job, run_id: &str) -> anyhow::Result<Outgoing> {
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
        let now = self.settings.runtime.clock.now();
        let (key, envelope) =
            envelope::from_json(&record, schema, &spec.key_fields, "scheduler", now)?;
        let physical = self.settings.runtime.physical(&job.topic);
        let bytes = self
            .codec
            .encode_with(&physical, schema, envelope.to_avro(schema)?)
            .await?;
        Ok(Outgoing::of_envelope(&physical, key, &envelope, bytes))
    }
}
