//! The geocoder's configuration, from the environment
//! (docs/processors/geocoder.md, "Geocoder configuration").

use crate::Mode;
use anyhow::bail;
use psymatch_runtime::config::Vars;
use std::collections::BTreeMap;
use std::time::Duration;

/// How to reach and treat one upstream service.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Name in metrics and logs (`nominatim`, `osrm`).
    pub name: &'static str,
    /// Base URL without a trailing slash.
    pub base_url: String,
    /// Minimum time between an answer and the next request.
    pub interval: Duration,
    /// Whether the interval holds for the whole deployment (slots shared
    /// through PostgreSQL) or only per process.
    pub shared: bool,
    /// Time allowed for one request, answer included.
    pub timeout: Duration,
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// First backoff between attempts; doubles, with jitter.
    pub backoff: Duration,
    /// A Retry-After longer than this ends the call instead of waiting.
    pub retry_after_max: Duration,
    /// Failed requests in a row that open the breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open before one probe.
    pub breaker_open_for: Duration,
}

impl UpstreamConfig {
    /// `offline` (or empty) as the URL: the service is not used; the
    /// offline fallbacks answer (postcode centres, straight lines).
    pub fn offline(&self) -> bool {
        self.base_url.is_empty() || self.base_url == "offline"
    }
}

/// Everything the geocoder reads from its environment.
#[derive(Debug, Clone)]
pub struct GeocoderConfig {
    /// Nominatim.
    pub nominatim: UpstreamConfig,
    /// OSRM.
    pub osrm: UpstreamConfig,
    /// The User-Agent sent upstream: names the application and a contact,
    /// as Nominatim's usage policy asks.
    pub user_agent: String,
    /// OSRM profile per mode.
    pub profiles: BTreeMap<Mode, String>,
    /// Public transport has no OSRM profile: its routed time with the
    /// configured profile is multiplied by this and marked estimated.
    pub public_transport_factor: f64,
    /// Destinations per OSRM table request.
    pub table_max: usize,
    /// How long a geocode stays cached.
    pub geocode_ttl: Duration,
    /// How long a travel time stays cached.
    pub travel_time_ttl: Duration,
}

impl GeocoderConfig {
    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<GeocoderConfig> {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        GeocoderConfig::from_vars(&vars)
    }

    /// Reads from a map of variables (tests pass their own).
    pub fn from_vars(vars: &BTreeMap<String, String>) -> anyhow::Result<GeocoderConfig> {
        let v = Vars(vars);
        let rate = |name: &str, default: f64| -> anyhow::Result<f64> {
            let rate: f64 = v.number(name, default)?;
            if !(rate > 0.0 && rate.is_finite()) {
                bail!("{name}={rate}: a rate must be a positive number of requests per second");
            }
            Ok(rate)
        };
        let nominatim_interval =
            Duration::from_secs_f64(1.0 / rate("NOMINATIM_RATE_PER_SECOND", 1.0)?);
        let osrm_interval = Duration::from_secs_f64(1.0 / rate("OSRM_RATE_PER_SECOND", 20.0)?);
        let timeout = Duration::from_millis(v.number("UPSTREAM_TIMEOUT_MS", 10_000u64)?);
        let attempts = v.number("UPSTREAM_ATTEMPTS", 3u32)?.max(1);
        let backoff = Duration::from_millis(v.number("UPSTREAM_BACKOFF_MS", 500u64)?);
        let retry_after_max = Duration::from_secs(v.number("RETRY_AFTER_MAX_SECS", 60u64)?);
        let breaker_failures = v.number("BREAKER_FAILURES", 5u32)?;
        let breaker_open_for = Duration::from_millis(v.number("BREAKER_OPEN_MS", 30_000u64)?);
        let upstream = |name, base_url: String, interval, shared| UpstreamConfig {
            name,
            base_url: base_url.trim_end_matches('/').to_string(),
            interval,
            shared,
            timeout,
            attempts,
            backoff,
            retry_after_max,
            breaker_failures,
            breaker_open_for,
        };
        let contact = v.text("GEOCODER_CONTACT", "");
        if contact.trim().is_empty() {
            tracing::warn!(
                "GEOCODER_CONTACT is not set: Nominatim's usage policy asks for a contact in the User-Agent"
            );
        }
        let user_agent = format!(
            "psymatch-geocoder/{} ({})",
            env!("CARGO_PKG_VERSION"),
            if contact.trim().is_empty() {
                "contact not configured"
            } else {
                contact.trim()
            }
        );
        let profiles = [
            (Mode::Car, "OSRM_PROFILE_CAR", "driving"),
            (Mode::Walking, "OSRM_PROFILE_WALKING", "foot"),
            (Mode::Bicycle, "OSRM_PROFILE_BICYCLE", "bike"),
            (
                Mode::PublicTransport,
                "OSRM_PROFILE_PUBLIC_TRANSPORT",
                "driving",
            ),
        ]
        .into_iter()
        .map(|(mode, name, default)| {
            let profile = v.text(name, default);
            if profile.is_empty()
                || !profile
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                bail!("{name}={profile}: a profile is a plain name such as driving");
            }
            Ok((mode, profile))
        })
        .collect::<anyhow::Result<_>>()?;
        let days = |name: &str, default: u64| -> anyhow::Result<Duration> {
            Ok(Duration::from_secs(86_400 * v.number(name, default)?))
        };
        Ok(GeocoderConfig {
            nominatim: upstream(
                "nominatim",
                v.text("NOMINATIM_URL", "https://nominatim.openstreetmap.org"),
                nominatim_interval,
                true,
            ),
            osrm: upstream(
                "osrm",
                v.text("OSRM_URL", "http://127.0.0.1:5000"),
                osrm_interval,
                false,
            ),
            user_agent,
            profiles,
            public_transport_factor: v.number("PUBLIC_TRANSPORT_FACTOR", 1.6f64)?,
            table_max: v.number("OSRM_TABLE_MAX", 100usize)?.max(1),
            geocode_ttl: days("GEOCODE_TTL_DAYS", 90)?,
            travel_time_ttl: days("TRAVEL_TIME_TTL_DAYS", 30)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_usage_policies() {
        let config = GeocoderConfig::from_vars(&BTreeMap::new()).unwrap();
        // One request per second, shared.
        assert_eq!(config.nominatim.interval, Duration::from_secs(1));
        assert!(config.nominatim.shared);
        assert!(!config.osrm.shared);
        assert_eq!(config.profiles[&Mode::Walking], "foot");
        assert_eq!(config.geocode_ttl, Duration::from_secs(90 * 86_400));
        assert!(config.user_agent.starts_with("psymatch-geocoder/"));
    }

    #[test]
    fn bad_values_are_named() {
        let vars = BTreeMap::from([("NOMINATIM_RATE_PER_SECOND".to_string(), "0".to_string())]);
        let error = format!("{:#}", GeocoderConfig::from_vars(&vars).unwrap_err());
        assert!(error.contains("NOMINATIM_RATE_PER_SECOND=0"), "{error}");
        let vars = BTreeMap::from([("OSRM_PROFILE_CAR".to_string(), "../x".to_string())]);
        let error = format!("{:#}", GeocoderConfig::from_vars(&vars).unwrap_err());
        assert!(error.contains("OSRM_PROFILE_CAR"), "{error}");
    }
}
