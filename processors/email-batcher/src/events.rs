//! What the email batcher observes, one struct per event that logs and
//! counts (see `psymatch_runtime::events`). Ids only: an address is
//! personal data of the practice's staff and never logged.

use crate::BatcherMetrics;
use psymatch_runtime::events::Event;

/// An email's outcome was reported on `communication-events`.
pub struct EmailReported<'a> {
    /// `sent`, `failed` or `unknown` (the server's answer was lost).
    pub outcome: &'a str,
    /// `inquiry` or `templated`.
    pub kind: &'a str,
    /// The email's id.
    pub email_id: &'a str,
}

impl Event<BatcherMetrics> for EmailReported<'_> {
    fn emit(self, metrics: &BatcherMetrics) {
        metrics
            .emails
            .with_label_values(&[self.outcome, self.kind])
            .inc();
        tracing::info!(
            email_id = self.email_id,
            outcome = self.outcome,
            kind = self.kind,
            "email reported"
        );
    }
}

/// An inquiry waits for its address's next weekly window.
pub struct InquiryDeferred<'a> {
    /// The inquiry.
    pub inquiry_id: &'a str,
    /// When the window opens, RFC 3339.
    pub until: &'a str,
}

impl Event<BatcherMetrics> for InquiryDeferred<'_> {
    fn emit(self, metrics: &BatcherMetrics) {
        metrics.deferred.with_label_values(&["window"]).inc();
        tracing::debug!(
            inquiry_id = self.inquiry_id,
            until = self.until,
            "inquiry deferred to the next window"
        );
    }
}
