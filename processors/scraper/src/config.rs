//! The scraper's configuration, from the environment
//! (docs/processors/scraper.md).

use psymatch_runtime::config::Vars;
use std::collections::BTreeMap;
use std::time::Duration;

/// Everything the scraper reads from its environment.
#[derive(Debug, Clone)]
pub struct ScraperConfig {
    /// Base URL of the doctor search (start page at `/`, API at `/api/data`).
    pub base_url: String,
    /// The Basic credential the site's script ships (`user:password` or
    /// already base64); configuration, never code.
    pub basic_auth: Option<String>,
    /// User-Agent naming the application and a contact.
    pub user_agent: String,
    /// Minimum time between two requests to the search, for the whole
    /// deployment.
    pub interval: Duration,
    /// Time allowed per request.
    pub timeout: Duration,
    /// Attempts per request (HTTP 500 answers start a new session).
    pub attempts: u32,
    /// First backoff between attempts; doubles, with jitter.
    pub backoff: Duration,
    /// An area is split while its answer has more results and its radius
    /// is larger than this.
    pub min_radius_km: u32,
    /// Complete scrapes of an area a therapist must be missing from before
    /// the therapist is removed.
    pub remove_after_runs: i32,
    /// Where `scraping.import_files` may read from (a directory outside it
    /// is refused).
    pub import_root: std::path::PathBuf,
}

impl ScraperConfig {
    /// Reads the process environment.
    pub fn from_env() -> anyhow::Result<ScraperConfig> {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        ScraperConfig::from_vars(&vars)
    }

    /// Reads from a map of variables (tests pass their own).
    pub fn from_vars(vars: &BTreeMap<String, String>) -> anyhow::Result<ScraperConfig> {
        let v = Vars(vars);
        let rate: f64 = v.number("KBV_RATE_PER_SECOND", 0.2)?;
        anyhow::ensure!(
            rate > 0.0 && rate.is_finite(),
            "KBV_RATE_PER_SECOND={rate}: a rate must be a positive number of requests per second"
        );
        let contact = v.text("SCRAPER_CONTACT", "");
        let user_agent = format!(
            "psymatch-scraper/{} ({})",
            env!("CARGO_PKG_VERSION"),
            if contact.trim().is_empty() {
                "contact not configured"
            } else {
                contact.trim()
            }
        );
        let basic_auth = v.text("KBV_BASIC_AUTH", "");
        Ok(ScraperConfig {
            base_url: v
                .text("KBV_URL", "https://arztsuche.116117.de")
                .trim_end_matches('/')
                .to_string(),
            basic_auth: (!basic_auth.is_empty()).then_some(basic_auth),
            user_agent,
            interval: Duration::from_secs_f64(1.0 / rate),
            timeout: Duration::from_millis(v.number("KBV_TIMEOUT_MS", 20_000u64)?),
            attempts: v.number("KBV_ATTEMPTS", 4u32)?.max(1),
            backoff: Duration::from_millis(v.number("KBV_BACKOFF_MS", 2_000u64)?),
            min_radius_km: v.number("SCRAPE_MIN_RADIUS_KM", 3u32)?.max(1),
            remove_after_runs: v.number("REMOVE_AFTER_RUNS", 2i32)?.max(1),
            import_root: v.text("IMPORT_ROOT", "/var/lib/psymatch/import").into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_polite() {
        let config = ScraperConfig::from_vars(&BTreeMap::new()).unwrap();
        assert_eq!(config.interval, Duration::from_secs(5));
        assert!(config.basic_auth.is_none());
        assert!(config.user_agent.starts_with("psymatch-scraper/"));
        let vars = BTreeMap::from([("KBV_RATE_PER_SECOND".to_string(), "-1".to_string())]);
        assert!(
            ScraperConfig::from_vars(&vars)
                .unwrap_err()
                .to_string()
                .contains("KBV_RATE_PER_SECOND")
        );
    }
}
