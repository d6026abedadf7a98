//! What the scraper observes, one struct per event that logs and counts
//! (see `psymatch_runtime::events`).

use crate::metrics::ScraperMetrics;
use psymatch_runtime::events::Event;

/// A scrape run began with its areas.
pub struct RunStarted<'a> {
    /// The run.
    pub run_id: &'a str,
    /// Its areas.
    pub areas: usize,
}

impl Event<ScraperMetrics> for RunStarted<'_> {
    fn emit(self, metrics: &ScraperMetrics) {
        metrics.runs.with_label_values(&["started"]).inc();
        tracing::info!(
            run_id = self.run_id,
            areas = self.areas,
            "scrape run started"
        );
    }
}

/// A scrape run ended, completed or failed, with what it found.
pub struct RunEnded<'a> {
    /// The run.
    pub run_id: &'a str,
    /// Whether an area failed.
    pub failed: bool,
    /// Practices new to the directory.
    pub new: i32,
    /// Practices whose details changed.
    pub changed: i32,
    /// Practices no longer listed.
    pub removed: i32,
}

impl Event<ScraperMetrics> for RunEnded<'_> {
    fn emit(self, metrics: &ScraperMetrics) {
        let outcome = if self.failed { "failed" } else { "completed" };
        metrics.runs.with_label_values(&[outcome]).inc();
        tracing::info!(
            run_id = self.run_id,
            outcome,
            new = self.new,
            changed = self.changed,
            removed = self.removed,
            "scrape run ended"
        );
    }
}

/// An area was searched: `complete`, `split` (the answer was full),
/// `truncated` (full, and too small to split) or `failed`.
pub struct AreaSearched<'a> {
    /// The run.
    pub run_id: &'a str,
    /// The area's index in the run.
    pub area: i32,
    /// How it went.
    pub outcome: &'a str,
    /// Why it failed, for `failed`.
    pub reason: Option<&'a str>,
}

impl Event<ScraperMetrics> for AreaSearched<'_> {
    fn emit(self, metrics: &ScraperMetrics) {
        metrics.areas.with_label_values(&[self.outcome]).inc();
        match self.reason {
            Some(reason) => tracing::warn!(
                run_id = self.run_id,
                area = self.area,
                reason,
                "area failed"
            ),
            None => tracing::debug!(
                run_id = self.run_id,
                area = self.area,
                outcome = self.outcome,
                "area searched"
            ),
        }
    }
}

/// Practices of an answer: `seen`, `new`, `changed`, `removed`, or
/// `invalid` (a record the normalisation refused).
pub struct TherapistsFound<'a> {
    /// The run.
    pub run_id: &'a str,
    /// Which.
    pub outcome: &'a str,
    /// How many.
    pub count: u64,
}

impl Event<ScraperMetrics> for TherapistsFound<'_> {
    fn emit(self, metrics: &ScraperMetrics) {
        metrics
            .therapists
            .with_label_values(&[self.outcome])
            .inc_by(self.count);
        tracing::trace!(
            run_id = self.run_id,
            outcome = self.outcome,
            count = self.count,
            "therapists found"
        );
    }
}

/// A request to the KBV search ended: `ok`, `session` (a browser session
/// begun), or how it failed.
pub struct KbvAnswered<'a> {
    /// How it ended.
    pub outcome: &'a str,
}

impl Event<ScraperMetrics> for KbvAnswered<'_> {
    fn emit(self, metrics: &ScraperMetrics) {
        metrics.requests.with_label_values(&[self.outcome]).inc();
        tracing::debug!(outcome = self.outcome, "KBV search answered");
    }
}
