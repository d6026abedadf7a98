//! Compatibility levels and the checks behind them, as pure functions.
//!
//! The rules are Confluent's: BACKWARD means consumers using the new schema
//! can read data written with the old one (the new schema is the reader),
//! FORWARD the opposite, FULL both. The plain levels compare with the latest
//! version only, the `_TRANSITIVE` ones with every earlier version. The
//! resolution rules themselves are apache-avro's; a result that apache-avro
//! calls only "partially" compatible (a union branch or enum symbol the
//! reader lacks) counts as incompatible, as in Confluent's registry.

use apache_avro::Schema;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use serde::{Deserialize, Serialize};

/// A subject's (or the registry's) compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Level {
    /// New schema reads data of the latest version.
    Backward,
    /// New schema reads data of every version.
    BackwardTransitive,
    /// The latest version reads data of the new schema.
    Forward,
    /// Every version reads data of the new schema.
    ForwardTransitive,
    /// Backward and forward with the latest version.
    Full,
    /// Backward and forward with every version.
    FullTransitive,
    /// No check.
    None,
}

impl Level {
    /// Parses the level as written in the REST API (`"BACKWARD"`, ...).
    pub fn parse(text: &str) -> Option<Level> {
        serde_json::from_value(serde_json::Value::String(text.to_ascii_uppercase())).ok()
    }

    /// The name the REST API and the database use.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Backward => "BACKWARD",
            Level::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Level::Forward => "FORWARD",
            Level::ForwardTransitive => "FORWARD_TRANSITIVE",
            Level::Full => "FULL",
            Level::FullTransitive => "FULL_TRANSITIVE",
            Level::None => "NONE",
        }
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Level::BackwardTransitive | Level::ForwardTransitive | Level::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Level::Backward | Level::BackwardTransitive | Level::Full | Level::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Level::Forward | Level::ForwardTransitive | Level::Full | Level::FullTransitive
        )
    }
}

/// Checks `candidate` against `existing` (oldest first) under `level`.
///
/// Returns the reasons it is incompatible; an empty list means compatible.
pub fn check(level: Level, candidate: &Schema, existing: &[(i32, Schema)]) -> Vec<String> {
    let against: &[(i32, Schema)] = if level.transitive() {
        existing
    } else {
        existing.last().map(std::slice::from_ref).unwrap_or(&[])
    };
    let mut reasons = Vec::new();
    for (version, old) in against {
        if level.backward()
            && let Some(why) = can_read(old, candidate)
        {
            reasons.push(format!(
                "BACKWARD: the new schema cannot read data written with version {version}: {why}"
            ));
        }
        if level.forward()
            && let Some(why) = can_read(candidate, old)
        {
            reasons.push(format!(
                "FORWARD: version {version} cannot read data written with the new schema: {why}"
            ));
        }
    }
    reasons
}

/// `None` when `reader` can always read what `writer` wrote, else why not.
fn can_read(writer: &Schema, reader: &Schema) -> Option<String> {
    match SchemaCompatibility::can_read(writer, reader) {
        Ok(Compatibility::Full) => None,
        Ok(Compatibility::Partial) => Some(
            "only partially compatible: some values (a union branch or an enum symbol) cannot be read"
                .to_string(),
        ),
        Err(error) => Some(error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema(fields: &str) -> Schema {
        Schema::parse_str(&format!(
            r#"{{"type":"record","name":"R","fields":[{fields}]}}"#
        ))
        .unwrap()
    }

    fn v1() -> Schema {
        schema(r#"{"name":"a","type":"string"}"#)
    }

    fn with_default() -> Schema {
        schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int","default":0}"#)
    }

    fn without_default() -> Schema {
        schema(r#"{"name":"a","type":"string"},{"name":"b","type":"int"}"#)
    }

    #[test]
    fn added_field_with_default_is_backward_and_forward() {
        let existing = vec![(1, v1())];
        assert!(check(Level::Backward, &with_default(), &existing).is_empty());
        assert!(check(Level::Forward, &with_default(), &existing).is_empty());
        assert!(check(Level::Full, &with_default(), &existing).is_empty());
    }

    #[test]
    fn added_field_without_default_breaks_backward_only() {
        let existing = vec![(1, v1())];
        let reasons = check(Level::Backward, &without_default(), &existing);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].starts_with("BACKWARD"));
        assert!(check(Level::Forward, &without_default(), &existing).is_empty());
        assert_eq!(check(Level::Full, &without_default(), &existing).len(), 1);
        assert!(check(Level::None, &without_default(), &existing).is_empty());
    }

    #[test]
    fn transitive_levels_look_at_every_version() {
        // v1 -> v2 (b without default) -> v3 (b dropped again): v3 reads v2,
        // but removing a field is forward-incompatible with v2 only if v2 had
        // no default; FORWARD_TRANSITIVE must see the v2 it skips otherwise.
        let existing = vec![(1, v1()), (2, without_default())];
        let candidate = v1();
        assert!(check(Level::Backward, &candidate, &existing).is_empty());
        let forward = check(Level::Forward, &candidate, &existing);
        assert_eq!(forward.len(), 1, "{forward:?}");
        assert!(forward[0].contains("version 2"));
        let backward_transitive = check(Level::BackwardTransitive, &without_default(), &existing);
        assert_eq!(backward_transitive.len(), 1, "{backward_transitive:?}");
        assert!(backward_transitive[0].contains("version 1"));
    }

    #[test]
    fn levels_parse_case_insensitively_and_reject_unknown() {
        assert_eq!(Level::parse("full_transitive"), Some(Level::FullTransitive));
        assert_eq!(Level::parse("NONE"), Some(Level::None));
        assert_eq!(Level::parse("SIDEWAYS"), None);
        assert_eq!(Level::FullTransitive.as_str(), "FULL_TRANSITIVE");
    }
}
