//! The scraper's own metrics, served beside the runtime's.

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts};

/// Requests, runs and therapist counts.
#[derive(Clone)]
pub struct ScraperMetrics {
    /// Requests to the doctor search by outcome (`ok`, `session`,
    /// `refused`, `http_error`, `timeout`, `connection`, `malformed`,
    /// `session_failed`).
    pub requests: IntCounterVec,
    /// Time waited for a request slot.
    pub throttle_wait: Histogram,
    /// Runs by event (`started`, `completed`, `failed`).
    pub runs: IntCounterVec,
    /// Areas finished, by outcome (`complete`, `split`, `truncated`,
    /// `failed`).
    pub areas: IntCounterVec,
    /// Therapists by what was found (`seen`, `new`, `changed`, `removed`,
    /// `invalid`).
    pub therapists: IntCounterVec,
}

impl ScraperMetrics {
    /// Creates the metrics (registered by the runtime).
    pub fn new() -> ScraperMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        ScraperMetrics {
            requests: counter(
                "scraper_requests_total",
                "Requests to the doctor search by outcome.",
                &["outcome"],
            ),
            throttle_wait: Histogram::with_opts(
                HistogramOpts::new(
                    "scraper_throttle_wait_seconds",
                    "Time waited for a request slot.",
                )
                .buckets(vec![0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
            )
            .expect("valid metric"),
            runs: counter("scraper_runs_total", "Scrape runs by event.", &["event"]),
            areas: counter(
                "scraper_areas_total",
                "Areas finished by outcome.",
                &["outcome"],
            ),
            therapists: counter(
                "scraper_therapists_total",
                "Therapists by what was found.",
                &["kind"],
            ),
        }
    }

    /// Every metric.
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.requests.clone()),
            Box::new(self.throttle_wait.clone()),
            Box::new(self.runs.clone()),
            Box::new(self.areas.clone()),
            Box::new(self.therapists.clone()),
        ]
    }
}

impl Default for ScraperMetrics {
    fn default() -> Self {
        ScraperMetrics::new()
    }
}
