//! The geocoder's own metrics, served beside the runtime's.

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};

/// Cache, upstream, throttle, breaker and fallback metrics.
#[derive(Clone)]
pub struct GeoMetrics {
    /// Cache lookups by cache (`geocode`, `travel_time`) and outcome
    /// (`hit`, `miss`).
    pub cache_lookups: IntCounterVec,
    /// Upstream requests by upstream and outcome (`ok`, `rate_limited`,
    /// `server_error`, `client_error`, `timeout`, `connection`, `malformed`).
    pub upstream_requests: IntCounterVec,
    /// Calls refused by an open breaker, by upstream.
    pub breaker_refusals: IntCounterVec,
    /// Breaker state by upstream: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// Time waited for a request slot, by upstream and limiter (`local`,
    /// `shared`).
    pub throttle_wait: HistogramVec,
    /// Answers from a fallback, by kind (`postcode_centroid`,
    /// `straight_line`, `other_profile`).
    pub fallbacks: IntCounterVec,
    /// Cache entries removed, by cache and reason (`expired`, `erased`).
    pub cache_removed: IntCounterVec,
}

impl GeoMetrics {
    /// Creates the metrics (registered by the runtime).
    pub fn new() -> GeoMetrics {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
        };
        GeoMetrics {
            cache_lookups: counter(
                "geocoder_cache_lookups_total",
                "Cache lookups by cache and outcome.",
                &["cache", "outcome"],
            ),
            upstream_requests: counter(
                "geocoder_upstream_requests_total",
                "Requests to an upstream service by outcome.",
                &["upstream", "outcome"],
            ),
            breaker_refusals: counter(
                "geocoder_breaker_refusals_total",
                "Calls not made because the upstream's breaker was open.",
                &["upstream"],
            ),
            breaker_state: IntGaugeVec::new(
                Opts::new(
                    "geocoder_breaker_state",
                    "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                ),
                &["upstream"],
            )
            .expect("valid metric"),
            throttle_wait: HistogramVec::new(
                HistogramOpts::new(
                    "geocoder_throttle_wait_seconds",
                    "Time waited for a request slot.",
                )
                .buckets(vec![0.001, 0.01, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0]),
                &["upstream", "limiter"],
            )
            .expect("valid metric"),
            fallbacks: counter(
                "geocoder_fallbacks_total",
                "Answers given by a fallback instead of the upstream.",
                &["kind"],
            ),
            cache_removed: counter(
                "geocoder_cache_removed_total",
                "Cache entries removed.",
                &["cache", "reason"],
            ),
        }
    }

    /// Every metric, for [`psymatch_runtime::processor::Processor::collectors`].
    pub fn collectors(&self) -> Vec<Box<dyn Collector>> {
        vec![
            Box::new(self.cache_lookups.clone()),
            Box::new(self.upstream_requests.clone()),
            Box::new(self.breaker_refusals.clone()),
            Box::new(self.breaker_state.clone()),
            Box::new(self.throttle_wait.clone()),
            Box::new(self.fallbacks.clone()),
            Box::new(self.cache_removed.clone()),
        ]
    }
}

impl Default for GeoMetrics {
    fn default() -> Self {
        GeoMetrics::new()
    }
}
