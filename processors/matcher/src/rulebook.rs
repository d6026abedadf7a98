//! The matcher's tunable rules, in one versioned YAML file
//! (`processors/matcher/rules.yaml` is the baseline, built in): the
//! default distance limit, inquiries per patient, patients per inquiry,
//! cooling and follow-up days, and the ranking order. The file is read
//! once at start and refused whole, with the field and the reason, when a
//! field is unknown, of the wrong type or out of bounds: a matcher never
//! runs on rules it half understood.

use chrono::Duration;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The built-in rules file.
pub const BASELINE: &str = include_str!("../rules.yaml");

/// One key of the ranking, compared in the order the file lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RankKey {
    /// A place free today first.
    FreePlace,
    /// Shorter travel first (time when known, else 2 minutes per km).
    Travel,
    /// Practices with an email address first.
    Email,
    /// Longest without contact first (never contacted before all).
    LastContact,
}

impl RankKey {
    /// Every key, in the baseline order.
    pub const ALL: [RankKey; 4] = [
        RankKey::FreePlace,
        RankKey::Travel,
        RankKey::Email,
        RankKey::LastContact,
    ];
}

/// The matcher's rules, as the file states them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rulebook {
    /// Named in every decision made under these rules.
    pub version: String,
    /// Rule 1's limit for a patient who set no distance and no travel time.
    pub default_distance_km: f64,
    /// Practices a search is offered to at once.
    pub inquiries_per_patient: usize,
    /// Patients in one inquiry, at most.
    pub max_patients_per_inquiry: usize,
    /// Days without contact after any answer.
    pub cooling_days: i64,
    /// Days after an unanswered email before a phone call.
    pub follow_up_days: i64,
    /// The ranking order, most important first.
    pub ranking: Vec<RankKey>,
}

impl Default for Rulebook {
    fn default() -> Self {
        Rulebook::parse(BASELINE).expect("the built-in rules are valid")
    }
}

impl Rulebook {
    /// Reads and checks the rules file at `path`; the error names the
    /// file, the field and the reason.
    pub fn load(path: &Path) -> anyhow::Result<Rulebook> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("rules file {}: {e}", path.display()))?;
        Rulebook::parse(&text).map_err(|e| anyhow::anyhow!("rules file {}: {e}", path.display()))
    }

    /// Parses and checks rules; the error names the field and the reason.
    pub fn parse(text: &str) -> anyhow::Result<Rulebook> {
        let rules: Rulebook = serde_yaml_ng::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        rules.check()?;
        Ok(rules)
    }

    /// The bounds of every field.
    fn check(&self) -> anyhow::Result<()> {
        let field = |name: &str, reason: String| anyhow::anyhow!("{name}: {reason}");
        let version = self.version.trim();
        if version.is_empty() || version.len() > 64 || version.chars().any(char::is_control) {
            return Err(field(
                "version",
                "must be 1 to 64 printable characters".into(),
            ));
        }
        if !(self.default_distance_km.is_finite()
            && (1.0..=500.0).contains(&self.default_distance_km))
        {
            return Err(field(
                "default_distance_km",
                format!("{} is outside 1 to 500 km", self.default_distance_km),
            ));
        }
        let within = |name: &str, value: i64, low: i64, high: i64| {
            if (low..=high).contains(&value) {
                Ok(())
            } else {
                Err(field(name, format!("{value} is outside {low} to {high}")))
            }
        };
        within(
            "inquiries_per_patient",
            self.inquiries_per_patient as i64,
            1,
            50,
        )?;
        within(
            "max_patients_per_inquiry",
            self.max_patients_per_inquiry as i64,
            1,
            20,
        )?;
        within("cooling_days", self.cooling_days, 0, 365)?;
        within("follow_up_days", self.follow_up_days, 1, 90)?;
        // A key twice first (the likelier slip), then one left out.
        let twice = self
            .ranking
            .iter()
            .find(|key| self.ranking.iter().filter(|k| k == key).count() > 1);
        let missing = RankKey::ALL.iter().find(|key| !self.ranking.contains(key));
        if let Some(key) = twice.or(missing) {
            let times = self.ranking.iter().filter(|k| *k == key).count();
            let name = serde_yaml_ng::to_string(key).unwrap_or_default();
            return Err(field(
                "ranking",
                format!(
                    "lists {} {times} times; every key once: free_place, travel, email, last_contact",
                    name.trim()
                ),
            ));
        }
        Ok(())
    }

    /// The cooling period.
    pub fn cooling(&self) -> Duration {
        Duration::days(self.cooling_days)
    }

    /// The follow-up delay.
    pub fn follow_up(&self) -> Duration {
        Duration::days(self.follow_up_days)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(line: &str, value: &str) -> String {
        BASELINE
            .lines()
            .map(|l| {
                if l.starts_with(&format!("{line}:")) {
                    format!("{line}: {value}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn the_baseline_is_the_rules_of_the_design() {
        let rules = Rulebook::default();
        assert_eq!(rules.default_distance_km, crate::rules::DEFAULT_LIMIT_KM);
        assert_eq!(
            rules.max_patients_per_inquiry,
            crate::inquiries::MAX_PATIENTS
        );
        assert_eq!(
            (
                rules.inquiries_per_patient,
                rules.cooling_days,
                rules.follow_up_days
            ),
            (3, 28, 7)
        );
        assert_eq!(rules.ranking, RankKey::ALL.to_vec());
    }

    #[test]
    fn a_bad_file_is_refused_with_the_field_and_the_reason() {
        let cases = [
            (format!("{BASELINE}\nspeed: 3\n"), "unknown field `speed`"),
            (with("cooling_days", "\"four weeks\""), "cooling_days"),
            (
                with("cooling_days", "400"),
                "cooling_days: 400 is outside 0 to 365",
            ),
            (
                with("inquiries_per_patient", "0"),
                "inquiries_per_patient: 0 is outside 1 to 50",
            ),
            (
                with("default_distance_km", "0.5"),
                "default_distance_km: 0.5 is outside",
            ),
            (
                with("ranking", "[travel, travel, email, last_contact]"),
                "ranking: lists travel 2 times",
            ),
            (
                with("ranking", "[travel, nearest]"),
                "unknown variant `nearest`",
            ),
            (with("version", "\"\""), "version: must be"),
            (
                BASELINE.replace("follow_up_days: 7", ""),
                "missing field `follow_up_days`",
            ),
        ];
        for (text, expected) in cases {
            let error = Rulebook::parse(&text).expect_err(expected).to_string();
            assert!(error.contains(expected), "{expected:?} not in {error:?}");
        }
    }

    #[test]
    fn a_missing_file_is_named() {
        let error = Rulebook::load(Path::new("/nonexistent/rules.yaml")).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("rules file /nonexistent/rules.yaml: ")
        );
    }
}
