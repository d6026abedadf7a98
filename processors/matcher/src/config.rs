//! The matcher's settings: its rules file (`MATCHER_RULES`, else the
//! built-in baseline, [`crate::rulebook`]).

use crate::rulebook::Rulebook;
use psymatch_runtime::config::Vars;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The matcher's settings.
#[derive(Debug, Clone)]
pub struct MatcherConfig {
    /// The rules every decision is made under.
    pub rules: Arc<Rulebook>,
}

impl MatcherConfig {
    /// The settings under `rules`.
    pub fn with_rules(rules: Rulebook) -> MatcherConfig {
        MatcherConfig {
            rules: Arc::new(rules),
        }
    }

    /// Reads the settings: the rules file `MATCHER_RULES` names, checked
    /// (the error names the file, the field and the reason), else the
    /// baseline.
    pub fn from_vars(vars: Vars<'_>) -> anyhow::Result<MatcherConfig> {
        let path: String = vars.text("MATCHER_RULES", "");
        let rules = if path.is_empty() {
            Rulebook::default()
        } else {
            Rulebook::load(std::path::Path::new(&path))?
        };
        Ok(MatcherConfig::with_rules(rules))
    }

    /// The settings from the process environment.
    pub fn from_env() -> anyhow::Result<MatcherConfig> {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        MatcherConfig::from_vars(Vars(&vars))
    }
}

impl Default for MatcherConfig {
    fn default() -> Self {
        MatcherConfig::with_rules(Rulebook::default())
    }
}
