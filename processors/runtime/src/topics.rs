//! `topics.yaml`: every topic psymatch uses, and applying it to a broker.
//!
//! Applying is idempotent and never destructive: missing topics are created,
//! partition counts are raised and declared configs altered when they differ,
//! and everything that cannot or must not be changed automatically (fewer
//! partitions than the broker has, topics the file does not declare) is
//! reported as drift for a person to decide.

mod admin;

pub use admin::{Admin, Outcome, apply};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// The parsed `topics.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    /// Who reads and writes what, by client name (a processor's name, or
    /// a tool's principal): what each processor is held to and what
    /// `psymatch acls plan` grants.
    #[serde(default)]
    pub clients: BTreeMap<String, ClientSpec>,
    /// Values for topics that do not set their own.
    pub defaults: Defaults,
    /// Every topic.
    pub topics: Vec<TopicSpec>,
}

/// Defaults of `topics.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    /// Partitions of a topic that does not say.
    pub partitions: i32,
    /// Replication factor of a topic that does not say.
    pub replication_factor: i32,
}

/// One topic as declared.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Topic name.
    pub name: String,
    /// What the topic is for, for people.
    pub description: String,
    /// What the key is, for people (keys are UTF-8 strings).
    pub key: String,
    /// Payload fields the key is taken from, first present wins.
    #[serde(default)]
    pub key_fields: Vec<String>,
    /// Path of the value schema relative to the repository root; none for
    /// dead-letter topics, whose values are the original bytes.
    #[serde(default)]
    pub value_schema: Option<String>,
    /// For a dead-letter topic: the topic whose bad records it holds.
    #[serde(default)]
    pub dead_letter_of: Option<String>,
    /// Partitions (default: `defaults.partitions`).
    #[serde(default)]
    pub partitions: Option<i32>,
    /// Replication factor (default: `defaults.replication_factor`).
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// Topic configs (`cleanup.policy`, `retention.ms`, ...).
    #[serde(default)]
    pub config: BTreeMap<String, serde_yaml_ng::Value>,
}

impl TopicSpec {
    /// Whether the topic is compacted (the latest record per key is kept;
    /// a key without a value is a tombstone).
    pub fn compacted(&self) -> bool {
        self.config
            .get("cleanup.policy")
            .and_then(|v| v.as_str())
            .is_some_and(|p| p.contains("compact"))
    }
}

/// What one client reads and writes (topic names without prefix).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSpec {
    /// What the client is, for people.
    pub description: String,
    /// Topics it consumes (a processor: exactly its inputs).
    #[serde(default)]
    pub reads: Vec<String>,
    /// Topics it produces to, dead-letter topics aside (a processor writes
    /// those of its reads).
    #[serde(default)]
    pub writes: Vec<String>,
    /// A person's tool, not a processor: no consumer group, no outbox, no
    /// dead letters.
    #[serde(default)]
    pub tool: bool,
    /// Whether `psymatch acls plan` grants it anything (false for the
    /// runtime's example).
    #[serde(default = "yes")]
    pub acls: bool,
}

fn yes() -> bool {
    true
}

impl ClientSpec {
    /// Whether the client may produce to `topic` (a name without prefix):
    /// one of its writes, or a dead-letter topic of one of its reads.
    pub fn may_write(&self, file: &TopicsFile, topic: &str) -> bool {
        self.writes.iter().any(|t| t == topic) || self.dead_letters(file).any(|t| t == topic)
    }

    /// Every topic it produces to: its writes and the dead-letter topics
    /// of its reads.
    pub fn all_writes<'a>(&'a self, file: &'a TopicsFile) -> impl Iterator<Item = &'a str> + 'a {
        self.writes
            .iter()
            .map(String::as_str)
            .chain(self.dead_letters(file))
    }

    /// The dead-letter topics of its reads (a processor's; none for a tool).
    pub fn dead_letters<'a>(&'a self, file: &'a TopicsFile) -> impl Iterator<Item = &'a str> + 'a {
        file.topics
            .iter()
            .filter(move |t| {
                !self.tool
                    && t.dead_letter_of
                        .as_ref()
                        .is_some_and(|source| self.reads.contains(source))
            })
            .map(|t| t.name.as_str())
    }
}

/// A topic with defaults applied and configs as strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTopic {
    /// Topic name.
    pub name: String,
    /// Partition count.
    pub partitions: i32,
    /// Replication factor.
    pub replication_factor: i32,
    /// Declared configs.
    pub config: BTreeMap<String, String>,
}

/// What the broker has.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ActualTopic {
    /// Partition count.
    pub partitions: i32,
    /// Replicas of its least replicated partition.
    pub replicas: i32,
    /// Config values of the declared keys (others are not looked at).
    pub config: BTreeMap<String, String>,
}

/// Why `topics.yaml` is unusable.
#[derive(Debug, thiserror::Error)]
#[error("topics.yaml: {0}")]
pub struct TopicsError(pub String);

impl TopicsFile {
    /// Parses and checks the file: unique names, dead-letter topics pointing
    /// at declared topics, a schema for every topic that is not one.
    pub fn parse(text: &str) -> Result<TopicsFile, TopicsError> {
        let file: TopicsFile =
            serde_yaml_ng::from_str(text).map_err(|error| TopicsError(error.to_string()))?;
        let mut seen = std::collections::BTreeSet::new();
        for topic in &file.topics {
            if !seen.insert(topic.name.as_str()) {
                return Err(TopicsError(format!(
                    "topic {} is declared twice",
                    topic.name
                )));
            }
            match (&topic.dead_letter_of, &topic.value_schema) {
                (Some(_), Some(_)) => {
                    return Err(TopicsError(format!(
                        "{}: a dead-letter topic holds raw bytes and has no value_schema",
                        topic.name
                    )));
                }
                (None, None) => {
                    return Err(TopicsError(format!(
                        "{}: value_schema is missing",
                        topic.name
                    )));
                }
                (None, Some(_)) if topic.key_fields.is_empty() => {
                    return Err(TopicsError(format!(
                        "{}: key_fields is missing",
                        topic.name
                    )));
                }
                _ => {}
            }
            for (key, value) in &topic.config {
                config_text(value).ok_or_else(|| {
                    TopicsError(format!("{}: config {key} must be a scalar", topic.name))
                })?;
            }
        }
        for (name, client) in &file.clients {
            for topic in client.reads.iter().chain(&client.writes) {
                if !seen.contains(topic.as_str()) {
                    return Err(TopicsError(format!(
                        "client {name}: {topic} is not a declared topic"
                    )));
                }
            }
        }
        for topic in &file.topics {
            if let Some(source) = &topic.dead_letter_of
                && !file.topics.iter().any(|t| &t.name == source)
            {
                return Err(TopicsError(format!(
                    "{}: dead_letter_of names an undeclared topic {source}",
                    topic.name
                )));
            }
        }
        Ok(file)
    }

    /// The same declaration with every topic name prefixed (isolated
    /// environments and tests).
    pub fn with_prefix(&self, prefix: &str) -> TopicsFile {
        let mut file = self.clone();
        for topic in &mut file.topics {
            topic.name = format!("{prefix}{}", topic.name);
            if let Some(source) = &mut topic.dead_letter_of {
                *source = format!("{prefix}{source}");
            }
        }
        file
    }

    /// The file for an environment that asks for `replication_factor`
    /// replicas of every topic and, if given, `min_insync_replicas` of them
    /// to acknowledge a write (`acks=all`): 1 and none on the single local
    /// broker, 3 and 2 on a replicated cluster (`topics apply
    /// --replication-factor`, `TOPICS_REPLICATION_FACTOR`).
    pub fn with_replication(
        mut self,
        replication_factor: i32,
        min_insync_replicas: Option<i32>,
    ) -> TopicsFile {
        self.defaults.replication_factor = replication_factor;
        for topic in &mut self.topics {
            topic.replication_factor = Some(replication_factor);
            if let Some(min) = min_insync_replicas {
                topic.config.insert(
                    "min.insync.replicas".into(),
                    serde_yaml_ng::Value::from(min.to_string()),
                );
            }
        }
        self
    }

    /// A declared client by name.
    pub fn client(&self, name: &str) -> Option<&ClientSpec> {
        self.clients.get(name)
    }

    /// A declared topic by name.
    pub fn topic(&self, name: &str) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.name == name)
    }

    /// Every topic with defaults applied.
    pub fn desired(&self) -> Vec<DesiredTopic> {
        self.topics
            .iter()
            .map(|t| DesiredTopic {
                name: t.name.clone(),
                partitions: t.partitions.unwrap_or(self.defaults.partitions),
                replication_factor: t
                    .replication_factor
                    .unwrap_or(self.defaults.replication_factor),
                config: t
                    .config
                    .iter()
                    .filter_map(|(k, v)| config_text(v).map(|v| (k.clone(), v)))
                    .collect(),
            })
            .collect()
    }
}

fn config_text(value: &serde_yaml_ng::Value) -> Option<String> {
    use serde_yaml_ng::Value;
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// One step of applying the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Create a missing topic.
    Create(DesiredTopic),
    /// Raise the partition count.
    AddPartitions {
        /// Topic.
        topic: String,
        /// Count on the broker.
        from: i32,
        /// Declared count.
        to: i32,
    },
    /// Set declared configs that differ (every declared key is set again;
    /// keys the file does not declare are left alone).
    AlterConfig {
        /// Topic.
        topic: String,
        /// Keys whose value differs: (key, broker's value, declared value).
        differing: Vec<(String, Option<String>, String)>,
        /// Every declared config.
        all: BTreeMap<String, String>,
    },
    /// A difference that is reported and left alone.
    Drift {
        /// Topic.
        topic: String,
        /// What differs and why it is left alone.
        what: String,
    },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Create(t) => write!(
                f,
                "create {} (partitions {}, replication {}{})",
                t.name,
                t.partitions,
                t.replication_factor,
                t.config
                    .iter()
                    .map(|(k, v)| format!(", {k}={v}"))
                    .collect::<String>()
            ),
            Change::AddPartitions { topic, from, to } => {
                write!(f, "partitions {topic}: {from} -> {to}")
            }
            Change::AlterConfig {
                topic, differing, ..
            } => {
                let parts: Vec<String> = differing
                    .iter()
                    .map(|(k, old, new)| {
                        format!("{k}: {} -> {new}", old.as_deref().unwrap_or("(unset)"))
                    })
                    .collect();
                write!(f, "config {topic}: {}", parts.join(", "))
            }
            Change::Drift { topic, what } => write!(f, "drift {topic}: {what}"),
        }
    }
}

/// Compares the declaration with the broker: the changes to make, in order.
pub fn plan(desired: &[DesiredTopic], actual: &BTreeMap<String, ActualTopic>) -> Vec<Change> {
    let mut changes = Vec::new();
    for topic in desired {
        let Some(have) = actual.get(&topic.name) else {
            changes.push(Change::Create(topic.clone()));
            continue;
        };
        if have.partitions < topic.partitions {
            changes.push(Change::AddPartitions {
                topic: topic.name.clone(),
                from: have.partitions,
                to: topic.partitions,
            });
        } else if have.partitions > topic.partitions {
            changes.push(Change::Drift {
                topic: topic.name.clone(),
                what: format!(
                    "broker has {} partitions, topics.yaml declares {}; Kafka cannot remove \
                     partitions, so change topics.yaml or recreate the topic by hand",
                    have.partitions, topic.partitions
                ),
            });
        }
        if have.replicas < topic.replication_factor {
            changes.push(Change::Drift {
                topic: topic.name.clone(),
                what: format!(
                    "{} replicas, the environment asks for {} (--replication-factor, \
                     TOPICS_REPLICATION_FACTOR); Kafka adds replicas only by reassignment \
                     (kafka-reassign-partitions), which psymatch leaves to a person",
                    have.replicas, topic.replication_factor
                ),
            });
        }
        let differing: Vec<(String, Option<String>, String)> = topic
            .config
            .iter()
            .filter(|(k, v)| have.config.get(*k) != Some(*v))
            .map(|(k, v)| (k.clone(), have.config.get(k).cloned(), v.clone()))
            .collect();
        if !differing.is_empty() {
            changes.push(Change::AlterConfig {
                topic: topic.name.clone(),
                differing,
                all: topic.config.clone(),
            });
        }
    }
    for name in actual.keys() {
        if !name.starts_with("__") && !desired.iter().any(|t| &t.name == name) {
            changes.push(Change::Drift {
                topic: name.clone(),
                what: "exists on the broker but is not declared in topics.yaml; left alone".into(),
            });
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str, partitions: i32, config: &[(&str, &str)]) -> DesiredTopic {
        DesiredTopic {
            name: name.into(),
            partitions,
            replication_factor: 1,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn actual(partitions: i32, config: &[(&str, &str)]) -> ActualTopic {
        ActualTopic {
            partitions,
            replicas: 1,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn plan_creates_raises_alters_and_reports_drift() {
        let desired = vec![
            topic("a", 3, &[("cleanup.policy", "compact")]),
            topic("b", 6, &[]),
            topic("c", 2, &[("retention.ms", "100")]),
            topic("d", 1, &[]),
        ];
        let mut have = BTreeMap::new();
        have.insert("b".to_string(), actual(3, &[]));
        have.insert("c".to_string(), actual(4, &[("retention.ms", "200")]));
        have.insert("d".to_string(), actual(1, &[]));
        have.insert("stray".to_string(), actual(1, &[]));
        have.insert("__consumer_offsets".to_string(), actual(50, &[]));
        let changes = plan(&desired, &have);
        assert_eq!(changes.len(), 5, "{changes:#?}");
        assert_eq!(changes[0], Change::Create(desired[0].clone()));
        assert_eq!(
            changes[1],
            Change::AddPartitions {
                topic: "b".into(),
                from: 3,
                to: 6
            }
        );
        assert!(matches!(&changes[2], Change::Drift { topic, .. } if topic == "c"));
        assert!(
            matches!(&changes[3], Change::AlterConfig { topic, differing, .. }
            if topic == "c" && differing == &[("retention.ms".to_string(), Some("200".to_string()), "100".to_string())])
        );
        assert!(matches!(&changes[4], Change::Drift { topic, .. } if topic == "stray"));
    }

    #[test]
    fn fewer_replicas_than_the_environment_asks_are_reported_not_changed() {
        let desired = TopicsFile::parse(
            "defaults: {partitions: 1, replication_factor: 1}\ntopics:\n  - {name: x.dlq, description: d, key: k, dead_letter_of: x}\n  - {name: x, description: d, key: k, key_fields: [id], value_schema: s.avsc}\n",
        )
        .unwrap()
        .with_replication(3, Some(2))
        .desired();
        assert_eq!(desired[0].replication_factor, 3);
        assert_eq!(desired[1].config["min.insync.replicas"], "2");
        let mut have = BTreeMap::new();
        have.insert("x".to_string(), actual(1, &[("min.insync.replicas", "2")]));
        have.insert(
            "x.dlq".to_string(),
            ActualTopic {
                replicas: 3,
                ..actual(1, &[("min.insync.replicas", "2")])
            },
        );
        let changes = plan(&desired, &have);
        assert_eq!(changes.len(), 1, "{changes:#?}");
        assert!(
            changes[0]
                .to_string()
                .starts_with("drift x: 1 replicas, the environment asks for 3"),
            "{}",
            changes[0]
        );
    }

    #[test]
    fn plan_of_a_matching_broker_is_empty() {
        let desired = vec![topic("a", 3, &[("cleanup.policy", "compact")])];
        let mut have = BTreeMap::new();
        have.insert("a".to_string(), actual(3, &[("cleanup.policy", "compact")]));
        assert!(plan(&desired, &have).is_empty());
    }

    #[test]
    fn parse_rejects_inconsistent_files() {
        let base = "defaults: {partitions: 1, replication_factor: 1}\ntopics:\n";
        let dlq_of_nothing =
            format!("{base}  - {{name: x.dlq, description: d, key: k, dead_letter_of: x}}\n");
        assert!(
            TopicsFile::parse(&dlq_of_nothing)
                .unwrap_err()
                .0
                .contains("undeclared")
        );
        let no_schema =
            format!("{base}  - {{name: x, description: d, key: k, key_fields: [id]}}\n");
        assert!(
            TopicsFile::parse(&no_schema)
                .unwrap_err()
                .0
                .contains("value_schema")
        );
        let unknown = format!("{base}  - {{name: x, description: d, key: k, colour: red}}\n");
        assert!(
            TopicsFile::parse(&unknown)
                .unwrap_err()
                .0
                .contains("colour")
        );
        let client_of_nothing = format!(
            "clients:\n  p: {{description: d, reads: [x]}}\n{base}  - {{name: y, description: d, key: k, key_fields: [id], value_schema: s}}\n"
        );
        assert_eq!(
            TopicsFile::parse(&client_of_nothing).unwrap_err().0,
            "client p: x is not a declared topic"
        );
    }

    #[test]
    fn a_client_writes_its_writes_and_the_dead_letters_of_its_reads_only() {
        let file = crate::contracts::Contracts::embedded().topics.clone();
        let matcher = file.client("matcher").unwrap();
        assert!(matcher.may_write(&file, "matching-events"));
        assert!(matcher.may_write(&file, "patient-events.dlq"));
        assert!(!matcher.may_write(&file, "patient-events"));
        assert!(!matcher.may_write(&file, "patient-commands.dlq"));
        // A tool dead-letters nothing.
        let operator = file.client("operator").unwrap();
        assert!(operator.dead_letters(&file).next().is_none());
    }
}
