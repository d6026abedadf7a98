//! What the matcher observes, one struct per event that logs and counts
//! (see `psymatch_runtime::events`).

use crate::processor::Metrics;
use psymatch_runtime::events::Event;

/// Decisions of a kind: inquiries created, patients placed, declines,
/// follow-ups due, searches exhausted (each also an event on a topic).
pub struct Decided<'a> {
    /// The kind.
    pub decision: &'a str,
    /// How many.
    pub count: usize,
}

impl Event<Metrics> for Decided<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics
            .decisions
            .with_label_values(&[self.decision])
            .inc_by(self.count as u64);
        tracing::debug!(decision = self.decision, count = self.count, "decided");
    }
}

/// The whole stored state was loaded: at start, and when another replica
/// committed since this one's last batch.
pub struct StateLoaded {
    /// The version loaded.
    pub version: i64,
    /// Therapists in it.
    pub therapists: usize,
    /// Searches in it.
    pub searches: usize,
    /// Inquiries in it.
    pub inquiries: usize,
    /// How long it took.
    pub seconds: f64,
}

impl Event<Metrics> for StateLoaded {
    fn emit(self, metrics: &Metrics) {
        metrics.loads.inc();
        tracing::info!(
            version = self.version,
            therapists = self.therapists,
            searches = self.searches,
            inquiries = self.inquiries,
            seconds = self.seconds,
            "matcher state loaded"
        );
    }
}
