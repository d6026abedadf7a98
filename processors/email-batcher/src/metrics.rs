//! The email batcher's metrics (see docs/operations.md for the alerts on
//! them).

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts};

/// The batcher's metrics.
#[derive(Clone)]
pub struct BatcherMetrics {
    /// Emails by outcome (`sent`, `failed`, `unknown`) and kind.
    pub emails: IntCounterVec,
    /// Inquiries told to wait for their address's next window.
    pub deferred: IntCounterVec,
    /// Patients per inquiry email.
    pub batch_patients: Histogram,
    /// Withdrawals by outcome.
    pub withdrawals: IntCounterVec,
    /// How long an inquiry waited from arrival to its email.
    pub window_wait: Histogram,
}

impl BatcherMetrics {
    pub(crate) fn new() -> BatcherMetrics {
        BatcherMetrics {
            emails: IntCounterVec::new(
                Opts::new("email_batcher_emails_total", "Emails by outcome and kind."),
                &["outcome", "kind"],
            )
            .expect("valid metric"),
            deferred: IntCounterVec::new(
                Opts::new(
                    "email_batcher_deferred_total",
                    "Inquiries deferred to the next window.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            batch_patients: Histogram::with_opts(
                HistogramOpts::new(
                    "email_batcher_batch_patients",
                    "Patients per inquiry email.",
                )
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 20.0]),
            )
            .expect("valid metric"),
            withdrawals: IntCounterVec::new(
                Opts::new(
                    "email_batcher_withdrawals_total",
                    "Withdrawals of inquiries by outcome: withdrawn (nobody left), \
                     narrowed (patients left), too_late (sent already), unknown.",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            window_wait: Histogram::with_opts(
                HistogramOpts::new(
                    "email_batcher_window_wait_seconds",
                    "Time from an inquiry's arrival to its email.",
                )
                .buckets(vec![
                    60.0,
                    3600.0,
                    86_400.0,
                    3.0 * 86_400.0,
                    7.0 * 86_400.0,
                    14.0 * 86_400.0,
                ]),
            )
            .expect("valid metric"),
        }
    }
}
