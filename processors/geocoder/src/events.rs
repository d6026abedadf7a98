//! What the geocoder observes, one struct per event that logs and counts
//! (see `psymatch_runtime::events`). Never an address: cache keys and
//! counts only.

use crate::metrics::GeoMetrics;
use psymatch_runtime::events::Event;

/// Cache lookups: `count` of them hit or missed `cache` (`geocode`,
/// `travel_time`).
pub struct CacheLookedUp<'a> {
    /// Which cache.
    pub cache: &'a str,
    /// Whether they hit.
    pub hit: bool,
    /// How many.
    pub count: u64,
}

impl Event<GeoMetrics> for CacheLookedUp<'_> {
    fn emit(self, metrics: &GeoMetrics) {
        let outcome = if self.hit { "hit" } else { "miss" };
        metrics
            .cache_lookups
            .with_label_values(&[self.cache, outcome])
            .inc_by(self.count);
        tracing::trace!(
            cache = self.cache,
            outcome,
            count = self.count,
            "cache looked up"
        );
    }
}

/// An offline fallback answered (`postcode_centroid`, `straight_line`):
/// the upstream could not.
pub struct FallbackUsed<'a> {
    /// Which fallback.
    pub kind: &'a str,
}

impl Event<GeoMetrics> for FallbackUsed<'_> {
    fn emit(self, metrics: &GeoMetrics) {
        metrics.fallbacks.with_label_values(&[self.kind]).inc();
        tracing::debug!(kind = self.kind, "fallback answered");
    }
}

/// Cache entries removed: `expired` (the cleanup job) or `erased` (a
/// patient's erasure).
pub struct CacheEntriesRemoved<'a> {
    /// Why.
    pub reason: &'a str,
    /// Geocodes removed.
    pub geocodes: u64,
    /// Travel times removed.
    pub travel_times: u64,
}

impl Event<GeoMetrics> for CacheEntriesRemoved<'_> {
    fn emit(self, metrics: &GeoMetrics) {
        metrics
            .cache_removed
            .with_label_values(&["geocode", self.reason])
            .inc_by(self.geocodes);
        metrics
            .cache_removed
            .with_label_values(&["travel_time", self.reason])
            .inc_by(self.travel_times);
        tracing::info!(
            reason = self.reason,
            geocodes = self.geocodes,
            travel_times = self.travel_times,
            "cache entries removed"
        );
    }
}

/// The circuit breaker refused a request to an upstream.
pub struct BreakerRefused<'a> {
    /// The upstream.
    pub upstream: &'a str,
}

impl Event<GeoMetrics> for BreakerRefused<'_> {
    fn emit(self, metrics: &GeoMetrics) {
        metrics
            .breaker_refusals
            .with_label_values(&[self.upstream])
            .inc();
        tracing::debug!(upstream = self.upstream, "breaker open; request refused");
    }
}

/// An upstream request ended: `ok`, `malformed`, or how it failed.
pub struct UpstreamAnswered<'a> {
    /// The upstream.
    pub upstream: &'a str,
    /// How it ended.
    pub outcome: &'a str,
}

impl Event<GeoMetrics> for UpstreamAnswered<'_> {
    fn emit(self, metrics: &GeoMetrics) {
        metrics
            .upstream_requests
            .with_label_values(&[self.upstream, self.outcome])
            .inc();
        tracing::debug!(
            upstream = self.upstream,
            outcome = self.outcome,
            "upstream answered"
        );
    }
}
