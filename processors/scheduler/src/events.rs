//! What the scheduler observes, one struct per event that logs and counts
//! (see `psymatch_runtime::events`).

use crate::Metrics;
use psymatch_runtime::events::Event;

/// A job's occurrence published its command.
pub struct JobRan<'a> {
    /// The job.
    pub job: &'a str,
    /// The occurrence's run id.
    pub run_id: &'a str,
    /// Attempts it took.
    pub attempts: i32,
}

impl Event<Metrics> for JobRan<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .runs
            .with_label_values(&[self.job, "succeeded"])
            .inc();
        tracing::info!(
            job = self.job,
            run_id = self.run_id,
            attempts = self.attempts,
            "job ran"
        );
    }
}

/// An attempt failed; the run is tried again.
pub struct JobRetried<'a> {
    /// The job.
    pub job: &'a str,
    /// The occurrence's run id.
    pub run_id: &'a str,
    /// Attempts so far.
    pub attempts: i32,
    /// Why it failed.
    pub error: &'a str,
}

impl Event<Metrics> for JobRetried<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.runs.with_label_values(&[self.job, "retried"]).inc();
        tracing::warn!(
            job = self.job,
            run_id = self.run_id,
            attempts = self.attempts,
            error = self.error,
            "job failed; retrying"
        );
    }
}

/// Every attempt failed: the run is dead-lettered (alert
/// `ScheduledJobDeadLettered`).
pub struct JobDeadLettered<'a> {
    /// The job.
    pub job: &'a str,
    /// The occurrence's run id.
    pub run_id: &'a str,
    /// Attempts made.
    pub attempts: i32,
    /// Why the last failed.
    pub reason: &'a str,
}

impl Event<Metrics> for JobDeadLettered<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .runs
            .with_label_values(&[self.job, "dead_lettered"])
            .inc();
        metrics.failures.with_label_values(&[self.job]).inc();
        tracing::error!(
            job = self.job,
            run_id = self.run_id,
            attempts = self.attempts,
            reason = self.reason,
            "job dead-lettered"
        );
    }
}
