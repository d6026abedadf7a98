//! The matcher's settings, from the environment.

use chrono::Duration;
use psymatch_runtime::config::Vars;
use std::collections::BTreeMap;

/// The matcher's settings.
#[derive(Debug, Clone)]
pub struct MatcherConfig {
    /// Practices each search is offered to at once (`INQUIRIES_PER_PATIENT`).
    pub per_patient: usize,
    /// Cooling period after any answer (`COOLING_DAYS`).
    pub cooling: Duration,
    /// No answer this long after the email: phone (`FOLLOW_UP_DAYS`).
    pub follow_up: Duration,
}

impl MatcherConfig {
    /// Reads the settings (defaults: 3 practices, 28 days, 7 days).
    pub fn from_vars(vars: Vars<'_>) -> anyhow::Result<MatcherConfig> {
        let per_patient = vars.number("INQUIRIES_PER_PATIENT", 3usize)?;
        anyhow::ensure!(
            (1..=50).contains(&per_patient),
            "INQUIRIES_PER_PATIENT must be 1 to 50"
        );
        Ok(MatcherConfig {
            per_patient,
            cooling: Duration::days(vars.number("COOLING_DAYS", 28i64)?),
            follow_up: Duration::days(vars.number("FOLLOW_UP_DAYS", 7i64)?),
        })
    }

    /// The settings from the process environment.
    pub fn from_env() -> anyhow::Result<MatcherConfig> {
        let vars: std::collections::BTreeMap<String, String> = std::env::vars().collect();
        MatcherConfig::from_vars(Vars(&vars))
    }
}

impl Default for MatcherConfig {
    fn default() -> Self {
        MatcherConfig::from_vars(Vars(&BTreeMap::new())).expect("defaults are valid")
    }
}
