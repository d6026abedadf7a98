//! What the runtime observes, declared the way vector declares its
//! internal events: one struct per event that both logs and counts, so a
//! log line and its metric cannot drift apart and a reader finds every
//! observable event of the runtime in one file. Processors declare their
//! own the same way ([`Event`]). Throughput counters of the hot path
//! (records consumed, produced, duplicates) count without a log line: a
//! line per record would drown the log.

use crate::errors::ErrorCode;
use crate::surface::Metrics;
use std::time::Duration;

/// An observable event: `emit` logs it and counts it in `M`'s metrics.
pub trait Event<M: ?Sized> {
    /// Logs and counts the event.
    fn emit(self, metrics: &M);
}

/// A batch failed for a reason that passes (database, broker, a refused
/// record in the fast path) and is tried again after `pause`.
pub struct BatchRetried<'a> {
    /// Attempts so far.
    pub attempt: u32,
    /// Why it failed.
    pub reason: &'a str,
    /// How long until the next attempt.
    pub pause: Duration,
}

impl Event<Metrics> for BatchRetried<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.retries.with_label_values(&["batch"]).inc();
        // Counted as an error too, under the dependency that failed: a
        // partition that keeps failing shows in the error rate.
        let code = if self.reason.starts_with("database") {
            ErrorCode::Database
        } else if self.reason.starts_with("registry") {
            ErrorCode::Registry
        } else if self.reason.starts_with("broker") {
            ErrorCode::Broker
        } else {
            ErrorCode::Upstream
        };
        metrics.errors.with_label_values(&[code.as_str()]).inc();
        tracing::warn!(
            attempt = self.attempt,
            reason = self.reason,
            pause_ms = self.pause.as_millis() as u64,
            "batch failed; retrying"
        );
    }
}

/// A batch was refused as a whole, even record by record (a batch hook
/// or its outputs): it is split in halves, each tried on its own, down to
/// the record that fails.
pub struct BatchSplit {
    /// Records in the batch that was split.
    pub records: usize,
    /// Its first offset.
    pub first: i64,
}

impl Event<Metrics> for BatchSplit {
    fn emit(self, metrics: &Metrics) {
        metrics.retries.with_label_values(&["split"]).inc();
        tracing::warn!(
            records = self.records,
            first_offset = self.first,
            "batch refused as a whole; trying its halves apart"
        );
    }
}

/// A relay pass failed and is tried again.
pub struct RelayRetried<'a> {
    /// Attempts so far.
    pub attempt: u32,
    /// Why it failed.
    pub reason: &'a str,
}

impl Event<Metrics> for RelayRetried<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.retries.with_label_values(&["relay"]).inc();
        tracing::warn!(
            attempt = self.attempt,
            reason = self.reason,
            "relay pass failed; retrying"
        );
    }
}

/// Partitions came to this instance.
pub struct PartitionsAssigned {
    /// How many.
    pub count: usize,
}

impl Event<Metrics> for PartitionsAssigned {
    fn emit(self, metrics: &Metrics) {
        metrics.rebalances.with_label_values(&["assign"]).inc();
        tracing::info!(partitions = self.count, "partitions assigned");
    }
}

/// Partitions left this instance: revoked (their work finished first) or
/// lost (taken without waiting).
pub struct PartitionsGivenUp {
    /// How many.
    pub count: usize,
    /// Whether the work in hand was finished (revoked) or dropped (lost).
    pub finished: bool,
}

impl Event<Metrics> for PartitionsGivenUp {
    fn emit(self, metrics: &Metrics) {
        let kind = if self.finished { "revoke" } else { "lost" };
        metrics.rebalances.with_label_values(&[kind]).inc();
        tracing::info!(partitions = self.count, kind, "partitions given up");
    }
}

/// A record went to its dead-letter topic.
pub struct DeadLettered<'a> {
    /// The logical topic it came from.
    pub topic: &'a str,
    /// Why.
    pub code: ErrorCode,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its event id, when it decoded (a record the processor refused).
    pub event_id: Option<uuid::Uuid>,
}

impl Event<Metrics> for DeadLettered<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .dead_letters
            .with_label_values(&[self.topic, self.code.as_str()])
            .inc();
        metrics
            .errors
            .with_label_values(&[self.code.as_str()])
            .inc();
        tracing::warn!(
            code = %self.code,
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            event_id = self.event_id.map(|id| id.to_string()),
            "record dead-lettered"
        );
    }
}

/// The broker did not take a record.
pub struct PublishFailed<'a> {
    /// The physical topic.
    pub topic: &'a str,
    /// The broker's or librdkafka's error.
    pub error: &'a str,
}

impl Event<Metrics> for PublishFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .errors
            .with_label_values(&[ErrorCode::Broker.as_str()])
            .inc();
        tracing::debug!(topic = self.topic, error = self.error, "publishing failed");
    }
}

/// The schema registry did not give the writer schema of a topic.
pub struct RegistryFailed<'a> {
    /// The physical topic.
    pub topic: &'a str,
    /// The registry's or the client's error.
    pub error: &'a str,
}

impl Event<Metrics> for RegistryFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .errors
            .with_label_values(&[ErrorCode::Registry.as_str()])
            .inc();
        tracing::debug!(
            topic = self.topic,
            error = self.error,
            "schema registry failed"
        );
    }
}

/// A query was answered (`crate::query`): counted by status; the
/// personal-data reads are logged where they happen.
pub struct QueryAnswered {
    /// The HTTP status.
    pub status: u16,
}

impl Event<Metrics> for QueryAnswered {
    fn emit(self, metrics: &Metrics) {
        metrics
            .queries
            .with_label_values(&[&self.status.to_string()])
            .inc();
        tracing::debug!(status = self.status, "query answered");
    }
}
