//! The contracts of this build: `topics.yaml` and every schema in `schemas/`,
//! compiled into the binary (the reader schemas a processor was built with)
//! or read from a directory (to check or register edited files).

use crate::schemas::TopicSchema;
use crate::topics::{TopicSpec, TopicsFile};
use anyhow::{Context, anyhow};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

/// The file of the named types shared by several topics.
pub const COMMON_SCHEMA: &str = "schemas/common.avsc";

/// Every contract file, as compiled in. A test checks that this list and the
/// repository's `schemas/` folder agree.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("topics.yaml", include_str!("../../../topics.yaml")),
    (COMMON_SCHEMA, include_str!("../../../schemas/common.avsc")),
    (
        "schemas/patient-commands.avsc",
        include_str!("../../../schemas/patient-commands.avsc"),
    ),
    (
        "schemas/patient-events.avsc",
        include_str!("../../../schemas/patient-events.avsc"),
    ),
    (
        "schemas/therapist-commands.avsc",
        include_str!("../../../schemas/therapist-commands.avsc"),
    ),
    (
        "schemas/therapist-events.avsc",
        include_str!("../../../schemas/therapist-events.avsc"),
    ),
    (
        "schemas/matching-commands.avsc",
        include_str!("../../../schemas/matching-commands.avsc"),
    ),
    (
        "schemas/matching-events.avsc",
        include_str!("../../../schemas/matching-events.avsc"),
    ),
    (
        "schemas/email-commands.avsc",
        include_str!("../../../schemas/email-commands.avsc"),
    ),
    (
        "schemas/communication-events.avsc",
        include_str!("../../../schemas/communication-events.avsc"),
    ),
    (
        "schemas/geocoding-requests.avsc",
        include_str!("../../../schemas/geocoding-requests.avsc"),
    ),
    (
        "schemas/geocoding-results.avsc",
        include_str!("../../../schemas/geocoding-results.avsc"),
    ),
    (
        "schemas/scraping-commands.avsc",
        include_str!("../../../schemas/scraping-commands.avsc"),
    ),
    (
        "schemas/scraping-events.avsc",
        include_str!("../../../schemas/scraping-events.avsc"),
    ),
];

/// Topics and their bundled value schemas.
#[derive(Debug, Clone)]
pub struct Contracts {
    /// The parsed `topics.yaml`.
    pub topics: TopicsFile,
    /// Value schema per topic (dead-letter topics have none).
    pub schemas: BTreeMap<String, TopicSchema>,
}

impl Contracts {
    /// The contracts compiled into this build.
    pub fn embedded() -> &'static Contracts {
        static CONTRACTS: OnceLock<Contracts> = OnceLock::new();
        CONTRACTS.get_or_init(|| {
            Contracts::build(|path| {
                EMBEDDED
                    .iter()
                    .find(|(name, _)| *name == path)
                    .map(|(_, text)| text.to_string())
                    .ok_or_else(|| anyhow!("{path} is not compiled into this build"))
            })
            .expect("the compiled-in contracts are checked by the test suite")
        })
    }

    /// The contracts in a checkout (`root` holds `topics.yaml` and `schemas/`).
    pub fn from_dir(root: &Path) -> anyhow::Result<Contracts> {
        Contracts::build(|path| {
            let full = root.join(path);
            std::fs::read_to_string(&full).with_context(|| format!("reading {}", full.display()))
        })
    }

    fn build(read: impl Fn(&str) -> anyhow::Result<String>) -> anyhow::Result<Contracts> {
        let topics = TopicsFile::parse(&read("topics.yaml")?)?;
        let json = |path: &str| -> anyhow::Result<Value> {
            serde_json::from_str(&read(path)?).with_context(|| format!("{path}: not valid JSON"))
        };
        let common = json(COMMON_SCHEMA)?;
        let mut schemas = BTreeMap::new();
        for topic in &topics.topics {
            if let Some(path) = &topic.value_schema {
                let schema = TopicSchema::new(&topic.name, path, &common, &json(path)?)?;
                schemas.insert(topic.name.clone(), schema);
            }
        }
        Ok(Contracts { topics, schemas })
    }

    /// A topic's declaration and schema, or an error naming the known topics.
    pub fn topic(&self, name: &str) -> anyhow::Result<(&TopicSpec, &TopicSchema)> {
        let spec = self.topics.topic(name);
        match (spec, self.schemas.get(name)) {
            (Some(spec), Some(schema)) => Ok((spec, schema)),
            (Some(_), None) => Err(anyhow!(
                "{name} is a dead-letter topic: its values are raw bytes without a schema"
            )),
            _ => Err(anyhow!(
                "unknown topic {name}; topics.yaml declares {}",
                self.schemas.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// The Confluent subject of a topic's values (TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{self, Envelope};
    use serde_json::json;

    fn repo_root() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    #[test]
    fn embedded_contracts_are_the_repository_files() {
        let root = repo_root();
        let mut on_disk: Vec<String> = std::fs::read_dir(root.join("schemas"))
            .unwrap()
            .map(|entry| format!("schemas/{}", entry.unwrap().file_name().to_string_lossy()))
            .filter(|name| name.ends_with(".avsc"))
            .collect();
        on_disk.sort();
        let mut embedded: Vec<String> = EMBEDDED
            .iter()
            .map(|(name, _)| name.to_string())
            .filter(|name| name.starts_with("schemas/"))
            .collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "update contracts::EMBEDDED");
        let from_dir = Contracts::from_dir(&root).unwrap();
        let compiled = Contracts::embedded();
        assert_eq!(from_dir.schemas.len(), compiled.schemas.len());
        for (topic, schema) in &from_dir.schemas {
            assert_eq!(schema.json, compiled.schemas[topic].json, "{topic}");
        }
    }

    #[test]
    fn every_topic_of_the_design_is_declared_with_its_dead_letter_topic() {
        let contracts = Contracts::embedded();
        let consumed = [
            "patient-commands",
            "therapist-commands",
            "geocoding-results",
            "scraping-commands",
            "geocoding-requests",
            "patient-events",
            "therapist-events",
            "communication-events",
            "matching-commands",
            "email-commands",
        ];
        for topic in consumed {
            assert!(
                contracts.schemas.contains_key(topic),
                "{topic} has no schema"
            );
            let dlq = contracts
                .topics
                .topic(&format!("{topic}.dlq"))
                .expect("dead-letter topic");
            assert_eq!(dlq.dead_letter_of.as_deref(), Some(topic));
        }
        for topic in ["matching-events", "scraping-events"] {
            assert!(
                contracts.schemas.contains_key(topic),
                "{topic} has no schema"
            );
        }
        // Every payload record of every topic carries a key field.
        for (topic, schema) in &contracts.schemas {
            let spec = contracts.topics.topic(topic).unwrap();
            let apache_avro::Schema::Union(union) = schema.payload_schema() else {
                panic!()
            };
            for (branch, variant) in schema.branches.iter().zip(union.variants()) {
                let fields: Vec<String> = match variant {
                    apache_avro::Schema::Record(r) => {
                        r.fields.iter().map(|f| f.name.clone()).collect()
                    }
                    apache_avro::Schema::Ref { .. } => continue,
                    other => panic!("{topic}: payload branch is {other:?}"),
                };
                let has_key = spec.key_fields.iter().any(|k| fields.contains(k))
                    || branch.event_type == "command.rejected";
                assert!(
                    has_key,
                    "{topic}: {} has none of {:?}",
                    branch.record, spec.key_fields
                );
            }
        }
    }

    #[test]
    fn a_command_written_by_a_person_round_trips_through_avro() {
        let contracts = Contracts::embedded();
        let (spec, schema) = contracts.topic("patient-commands").unwrap();
        let command = json!({
            "event_type": "patient.register",
            "correlation_id": "c-1",
            "payload": {"patient_id": "p-1", "details": {
                "salutation": "FRAU", "first_name": "Erika", "last_name": "Beispiel",
                "address": {"street": "Musterweg", "house_number": "1", "postcode": "10115", "city": "Berlin"},
                "email": "erika@example.org", "date_of_birth": "1990-05-17", "gender": "FEMALE",
                "insurer": "Beispielkasse", "consultation_hour_attended": true,
                "transport": "PUBLIC_TRANSPORT", "consent_given_at": "2026-11-01T10:00:00Z"
            }}
        });
        let now = chrono::Utc::now();
        let (key, envelope) =
            envelope::from_json(&command, schema, &spec.key_fields, "cli", now).unwrap();
        assert_eq!(key, "p-1");
        let avro = envelope.to_avro(schema).unwrap();
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema.schema)
            .build()
            .unwrap();
        let bytes = writer.write_value_to_vec(avro).unwrap();
        let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema.schema)
            .build()
            .unwrap();
        let decoded = reader.read_value(&mut bytes.as_slice()).unwrap();
        let back = Envelope::from_avro(decoded).unwrap();
        assert_eq!(back, envelope);
        let json = back.to_json();
        assert_eq!(json["payload"]["details"]["date_of_birth"], "1990-05-17");
        assert_eq!(
            json["payload"]["details"]["preferred_therapist_gender"],
            "ANY"
        );
        assert_eq!(json["correlation_id"], "c-1");
    }

    #[test]
    fn commands_that_do_not_fit_are_refused_with_the_reason() {
        let contracts = Contracts::embedded();
        let (spec, schema) = contracts.topic("patient-commands").unwrap();
        let now = chrono::Utc::now();
        let attempt = |command: serde_json::Value| {
            envelope::from_json(&command, schema, &spec.key_fields, "cli", now)
                .unwrap_err()
                .to_string()
        };
        let unknown = attempt(json!({"event_type": "patient.teleport", "payload": {}}));
        assert!(
            unknown.contains("carries no event_type 'patient.teleport'"),
            "{unknown}"
        );
        assert!(unknown.contains("patient.register"), "{unknown}");
        let bad_field =
            attempt(json!({"event_type": "patient.pause_search", "payload": {"patient_id": 7}}));
        assert!(
            bad_field.contains("payload.patient_id: expected a string"),
            "{bad_field}"
        );
        let key_mismatch = attempt(json!({"event_type": "patient.resume_search", "key": "p-2",
                                          "payload": {"patient_id": "p-1"}}));
        assert!(key_mismatch.contains("disagrees"), "{key_mismatch}");
    }
}
