//! Configuration of a processor from environment variables.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KAFKA_BROKERS` | `127.0.0.1:9092` | bootstrap servers |
//! | `SCHEMA_REGISTRY_URL` | `http://127.0.0.1:8081` | schema registry |
//! | `DATABASE_URL` | `postgres://postgres@127.0.0.1:5432/psymatch` | PostgreSQL |
//! | `HTTP_LISTEN` | `127.0.0.1:0` | health and metrics address (port 0: any free port, logged) |
//! | `CONSUMER_GROUP` | `psymatch-<processor>` | Kafka consumer group |
//! | `TOPIC_PREFIX` | empty | prefix of every physical topic name (isolated environments, tests) |
//! | `BATCH_SIZE` | `2000` | most records per database transaction (a batch holds what has arrived; it never waits to fill) |
//! | `QUEUE_CAPACITY` | `2500` | records buffered per partition before fetching pauses (a batch and a quarter; more only costs memory) |
//! | `MAX_RECORD_BYTES` | `1048576` | larger input values are dead-lettered (PSY-D-006) |
//! | `DEDUPE_RETENTION_HOURS` | `336` | how long processed event ids are kept for dropping duplicates (longer than any re-publish can come late) |
//! | `DB_POOL_SIZE` | `8` | database connections |
//! | `SHUTDOWN_TIMEOUT_SECS` | `10` | how long SIGTERM may take |
//! | `RETRY_MAX_BACKOFF_MS` | `30000` | longest pause between retries of a failing batch |
//! | `STUCK_AFTER_SECS` | `120` | a partition whose batch has failed this long turns `/health/readiness` red (alert PartitionStuck) |
//! | `PARTITION_ASSIGNMENT` | `group` | `group`: Kafka consumer groups; `lease`: partitions are shared out with PostgreSQL leases (see docs/writing-a-processor.md) |
//! | `RELAY` | `idempotent` | `idempotent`: the relay publishes the outbox with an idempotent producer; `transactional`: each relay pass in one Kafka transaction (see docs/writing-a-processor.md, "Relay") |
//! | `GROUP_PROTOCOL` | `consumer` | `consumer`: the broker assigns (KIP-848, session timeout set on the broker); `classic`: cooperative-sticky, session timeout 10 s |
//! | `GUARANTEE` | `effectively-once` | `effectively-once`: outputs through the outbox, inputs deduplicated by event id; `at-least-once`: outputs produced directly before the commit (a crash may repeat them), no dedupe |
//! | `QUERY_TOKENS` | empty | `name:role:token,...` for the query surface (`staff` or `ops`; tokens of 16 characters or more); empty: every query is refused |
//! | `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*`, `KAFKA_SSL_*` | plaintext | TLS and SASL to Kafka, secrets from files ([`crate::broker::Settings`]) |
//! | `SCHEMA_REGISTRY_CA_FILE`, `SCHEMA_REGISTRY_USERNAME`, `SCHEMA_REGISTRY_PASSWORD_FILE`, `SCHEMA_REGISTRY_TOKEN_FILE` | | TLS and authorization to the registry ([`crate::registry_client`]) |
//! | `KAFKA_OPTION_<NAME>` | | any librdkafka option: `KAFKA_OPTION_SESSION_TIMEOUT_MS=6000` sets `session.timeout.ms` |

use anyhow::{Context, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

/// Every setting a [`Vars`] was asked for in this process: what
/// [`refuse_unknown`] holds the environment against.
static READ: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// With this variable at `1`, a processor reads its settings, refuses
/// what it does not know as always, and then prints the settings it read
/// as one JSON line and exits 0 before touching the broker or the
/// database: `PSYMATCH_CHECK_SETTINGS=1 psymatch-matcher` checks a
/// deployment's environment (the Kubernetes manifests' test does).
pub const CHECK_SETTINGS: &str = "PSYMATCH_CHECK_SETTINGS";

/// Notes that `name` is a setting read outside [`Vars`] (`RUST_LOG`, which
/// the log filter reads itself).
pub fn note_read(name: &str) {
    READ.lock().expect("settings lock").insert(name.to_string());
}

/// Prefixes of Kafka settings a processor must know (not `KAFKA_OPTION_`,
/// any librdkafka option, nor others such as Kafka's own `KAFKA_HEAP_OPTS`).
const KAFKA_CHECKED: [&str; 4] = [
    "KAFKA_SECURITY_",
    "KAFKA_SASL_",
    "KAFKA_SSL_",
    "SCHEMA_REGISTRY_",
];

/// The project's variables that are no processor's setting: the scripts',
/// the benchmarks' and the command line's (a test keeps the list complete).
pub const PROJECT_VARS: &[&str] = &[
    "PSYMATCH_BENCH_PHASES",
    "PSYMATCH_CHECK_SETTINGS",
    "PSYMATCH_CLUSTER_DIR",
    "PSYMATCH_CLUSTER_HEAP",
    "PSYMATCH_CLUSTER_PORT",
    "PSYMATCH_CONTRACTS",
    "PSYMATCH_FAKE_KBV_PORT",
    "PSYMATCH_FUZZ_DIR",
    "PSYMATCH_INTAKE_URL",
    "PSYMATCH_KAFKA_CONTROLLER_PORT",
    "PSYMATCH_KAFKA_HEAP",
    "PSYMATCH_KAFKA_JAVA_OPTS",
    "PSYMATCH_KAFKA_PORT",
    "PSYMATCH_KEEP_STACK",
    "PSYMATCH_MATCHER_URL",
    "PSYMATCH_MAIL_WEB_PORT",
    "PSYMATCH_PG_PORT",
    "PSYMATCH_PYTHON",
    "PSYMATCH_REGISTRY_PORT",
    "PSYMATCH_SMTP_PORT",
    "PSYMATCH_STACK",
    "PSYMATCH_TOKEN",
    "PSYMATCH_TOOLS",
];

/// Refuses variables of `vars` in psymatch's namespaces that no setting
/// was read as: `PSYMATCH_*` beyond [`PROJECT_VARS`], and names starting
/// with one of the processor's `prefixes` (`SMTP_`, `KBV_`, ...). A
/// misspelt setting would otherwise leave its default in force without a
/// word; the error names the variable and the setting it most resembles.
/// Call it once every setting has been read.
pub fn refuse_unknown(
    processor: &str,
    vars: &BTreeMap<String, String>,
    prefixes: &[&str],
) -> anyhow::Result<()> {
    let read = READ.lock().expect("settings lock");
    let known = |name: &str| read.contains(name) || PROJECT_VARS.contains(&name);
    // Kafka's security settings are checked too: a misspelt one would
    // otherwise leave the connection in plaintext.
    let checked = |name: &str| {
        name.starts_with("PSYMATCH_")
            || KAFKA_CHECKED.iter().any(|p| name.starts_with(p))
            || prefixes.iter().any(|p| name.starts_with(p))
    };
    let unknown: Vec<String> = vars
        .keys()
        .filter(|name| checked(name) && !known(name))
        .map(|name| {
            let nearest = read
                .iter()
                .map(String::as_str)
                .chain(PROJECT_VARS.iter().copied())
                .map(|candidate| (strsim::levenshtein(name, candidate), candidate))
                .min();
            match nearest {
                Some((distance, candidate)) if distance <= 3 => {
                    format!("{name} (did you mean {candidate}?)")
                }
                _ => name.to_string(),
            }
        })
        .collect();
    if unknown.is_empty() {
        if vars.get(CHECK_SETTINGS).is_some_and(|v| v == "1") {
            // Checking a deployment's settings (a manifest, an .env file):
            // say which settings were read, and stop before touching
            // anything.
            let mut read: Vec<&String> = read.iter().collect();
            read.sort();
            println!(
                "{}",
                serde_json::json!({"processor": processor, "settings": "ok", "read": read})
            );
            std::process::exit(0);
        }
        return Ok(());
    }
    bail!(
        "{processor} has no setting {}: unset it or correct its name (settings: docs/operations.md)",
        unknown.join(", ")
    )
}

/// The runtime's configuration.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Kafka bootstrap servers (`KAFKA_BROKERS`).
    pub brokers: String,
    /// Schema registry URL (`SCHEMA_REGISTRY_URL`).
    pub registry_url: String,
    /// PostgreSQL URL (`DATABASE_URL`).
    pub database_url: String,
    /// Address of the health and metrics server (`HTTP_LISTEN`).
    pub http_listen: String,
    /// Consumer group (`CONSUMER_GROUP`).
    pub group: String,
    /// Prefix of physical topic names (`TOPIC_PREFIX`).
    pub topic_prefix: String,
    /// Most records per transaction (`BATCH_SIZE`).
    pub batch_size: usize,
    /// Records buffered per partition (`QUEUE_CAPACITY`).
    pub queue_capacity: usize,
    /// Largest input value accepted (`MAX_RECORD_BYTES`).
    pub max_record_bytes: usize,
    /// How long processed event ids are kept (`DEDUPE_RETENTION_HOURS`).
    pub dedupe_retention: Duration,
    /// Database connections (`DB_POOL_SIZE`).
    pub db_pool_size: u32,
    /// The clock decisions read ([`crate::clock`]): the machine's, or a
    /// test's [`crate::clock::ManualClock`].
    pub clock: std::sync::Arc<dyn crate::clock::Clock>,
    /// Bound on a graceful shutdown (`SHUTDOWN_TIMEOUT_SECS`).
    pub shutdown_timeout: Duration,
    /// Longest retry pause (`RETRY_MAX_BACKOFF_MS`).
    pub max_backoff: Duration,
    /// How long a partition's batch may keep failing before readiness
    /// turns red (`STUCK_AFTER_SECS`).
    pub stuck_after: Duration,
    /// What a crash may cost (`GUARANTEE`).
    pub guarantee: Guarantee,
    /// How partitions are shared among instances (`PARTITION_ASSIGNMENT`).
    pub assignment: Assignment,
    /// The consumer group protocol (`GROUP_PROTOCOL`).
    pub group_protocol: GroupProtocol,
    /// How the relay publishes the outbox (`RELAY`).
    pub relay: Relay,
    /// Security settings and raw librdkafka options (`KAFKA_SECURITY_PROTOCOL`,
    /// `KAFKA_SASL_*`, `KAFKA_SSL_*`, `KAFKA_OPTION_*`; secrets only as
    /// `<secret>` in its Debug).
    pub kafka: crate::broker::Settings,
    /// TLS and authorization to the schema registry
    /// (`SCHEMA_REGISTRY_CA_FILE`, `SCHEMA_REGISTRY_USERNAME`, ...).
    pub registry: crate::registry_client::RegistrySettings,
    /// Bearer tokens of the query surface (`QUERY_TOKENS`, names and roles
    /// only in its Debug).
    pub query_tokens: crate::query::Tokens,
}

/// How the relay publishes the outbox of [`Guarantee::EffectivelyOnce`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// An idempotent producer: a crash between the broker's acknowledgement
    /// and the outbox delete publishes rows again under their own event
    /// ids, which consumers drop.
    Idempotent,
    /// Each pass in one Kafka transaction (one transactional id per
    /// processor, shared by its replicas: only the holder of the relay lock
    /// publishes, and a new holder fences the one before); consumers read
    /// committed records only, so a pass cut short is never seen.
    Transactional,
}

/// The consumer group protocol of [`Assignment::Group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    /// KIP-848: the group coordinator assigns partitions and tells each
    /// member which to add or drop; no member stops for another's join.
    /// The session timeout is the broker's (`group.consumer.session.timeout.ms`).
    Consumer,
    /// The classic protocol with the cooperative-sticky assignor: members
    /// agree on the assignment through the group leader in two rounds.
    Classic,
}

/// The processing guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarantee {
    /// State, offsets and outputs (outbox) commit together; inputs are
    /// deduplicated by event id; the relay publishes.
    EffectivelyOnce,
    /// State and offsets commit together after the outputs were
    /// acknowledged by the broker: a crash in between repeats the outputs.
    AtLeastOnce,
}

/// How the instances of a processor share the partitions of its inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// Each instance holds PostgreSQL advisory locks on its partitions and
    /// takes its fair share of them; a crashed instance's locks go with its
    /// connection, so its partitions move at once. Needs no group
    /// coordinator (brokers without one, or with broken rebalances).
    Lease,
    /// Kafka consumer groups (subscribe and rebalance callbacks). A
    /// member killed without leaving loses its partitions after the
    /// session timeout.
    Group,
}

/// Configuration variables with defaults: the reading every processor's
/// configuration shares, so errors read alike.
#[derive(Debug, Clone, Copy)]
pub struct Vars<'a>(pub &'a BTreeMap<String, String>);

impl Vars<'_> {
    /// Notes that `name` is a setting (see [`refuse_unknown`]).
    fn read(&self, name: &str) {
        note_read(name);
    }

    /// The variable's text, or `default`.
    pub fn text(&self, name: &str, default: &str) -> String {
        self.read(name);
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    /// One of `choices` by its name; the first is the default. Another
    /// value is an error naming the variable and every choice.
    pub fn choice<T: Copy>(&self, name: &str, choices: &[(&str, T)]) -> anyhow::Result<T> {
        self.read(name);
        let Some(value) = self.0.get(name) else {
            return Ok(choices[0].1);
        };
        choices
            .iter()
            .find(|(word, _)| word == value)
            .map(|(_, choice)| *choice)
            .with_context(|| {
                let words: Vec<&str> = choices.iter().map(|(word, _)| *word).collect();
                format!("{name}={value}: expected {}", words.join(" or "))
            })
    }

    /// The variable parsed as a number, or `default`; an unparsable value
    /// is an error naming the variable.
    pub fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> anyhow::Result<T> {
        self.read(name);
        match self.0.get(name) {
            None => Ok(default),
            Some(value) => value
                .parse()
                .ok()
                .with_context(|| format!("{name}={value} is not a valid number")),
        }
    }
}

impl RuntimeConfig {
    /// Makes every Kafka and registry client of this process connect with
    /// these settings (the checks, watermarks, leases, codecs and probes
    /// find them by broker list and registry URL).
    pub fn register_clients(&self) {
        crate::broker::use_settings(&self.brokers, self.kafka.clone());
        crate::registry_client::use_settings(&self.registry_url, self.registry.clone());
    }

    /// Reads the process environment.
    pub fn from_env(processor: &str) -> anyhow::Result<RuntimeConfig> {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        RuntimeConfig::from_vars(processor, &vars)
    }

    /// Reads from a map of variables (tests pass their own).
    pub fn from_vars(
        processor: &str,
        vars: &BTreeMap<String, String>,
    ) -> anyhow::Result<RuntimeConfig> {
        let v = Vars(vars);
        let text = |name: &str, default: &str| v.text(name, default);
        let batch_size = v.number("BATCH_SIZE", 2000usize)?;
        if batch_size == 0 {
            bail!("BATCH_SIZE must be at least 1");
        }
        let kafka = crate::broker::Settings::from_vars(vars)?;
        let registry = crate::registry_client::RegistrySettings::from_vars(vars)?;
        Ok(RuntimeConfig {
            registry,
            clock: crate::clock::system(),
            brokers: text("KAFKA_BROKERS", "127.0.0.1:9092"),
            registry_url: text("SCHEMA_REGISTRY_URL", crate::codec::DEFAULT_REGISTRY_URL),
            database_url: text("DATABASE_URL", crate::db::DEFAULT_DATABASE_URL),
            http_listen: text("HTTP_LISTEN", "127.0.0.1:0"),
            group: text("CONSUMER_GROUP", &format!("psymatch-{processor}")),
            topic_prefix: text("TOPIC_PREFIX", ""),
            batch_size,
            queue_capacity: v.number("QUEUE_CAPACITY", 2_500usize)?.max(1),
            max_record_bytes: v.number("MAX_RECORD_BYTES", 1_048_576usize)?,
            dedupe_retention: Duration::from_secs(
                3600 * v.number("DEDUPE_RETENTION_HOURS", 336u64)?,
            ),
            db_pool_size: v.number("DB_POOL_SIZE", 8u32)?.max(2),
            shutdown_timeout: Duration::from_secs(v.number("SHUTDOWN_TIMEOUT_SECS", 10u64)?),
            max_backoff: Duration::from_millis(v.number("RETRY_MAX_BACKOFF_MS", 30_000u64)?),
            stuck_after: Duration::from_secs(v.number("STUCK_AFTER_SECS", 120u64)?),
            guarantee: v.choice(
                "GUARANTEE",
                &[
                    ("effectively-once", Guarantee::EffectivelyOnce),
                    ("at-least-once", Guarantee::AtLeastOnce),
                ],
            )?,
            assignment: v.choice(
                "PARTITION_ASSIGNMENT",
                &[("group", Assignment::Group), ("lease", Assignment::Lease)],
            )?,
            relay: v.choice(
                "RELAY",
                &[
                    ("idempotent", Relay::Idempotent),
                    ("transactional", Relay::Transactional),
                ],
            )?,
            group_protocol: v.choice(
                "GROUP_PROTOCOL",
                &[
                    ("consumer", GroupProtocol::Consumer),
                    ("classic", GroupProtocol::Classic),
                ],
            )?,
            kafka,
            query_tokens: crate::query::Tokens::parse(&v.text("QUERY_TOKENS", ""))
                .map_err(|e| anyhow::anyhow!(e))?,
        })
    }

    /// The physical name of a logical topic.
    pub fn physical(&self, topic: &str) -> String {
        format!("{}{topic}", self.topic_prefix)
    }

    /// The logical name of a physical topic.
    pub fn logical<'a>(&self, topic: &'a str) -> &'a str {
        topic.strip_prefix(&self.topic_prefix).unwrap_or(topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelt_setting_is_refused_with_the_name_it_resembles() {
        // Spelt out in pieces: the project's scan for PSYMATCH_ names
        // (tests/settings.rs) must not find the misspelling here.
        let misspelt = format!("PSYMATCH_{}", "CONTRACT");
        let mut vars = BTreeMap::new();
        for (name, value) in [
            ("TESTCFG_RATE", "2"),
            ("TESTCFG_RAET", "3"),
            (misspelt.as_str(), "/etc/psymatch"),
            ("PSYMATCH_TOOLS", "/var/tmp/psymatch-tools"),
            ("SMTP_HOST", "127.0.0.1"),
            ("PATH", "/usr/bin"),
        ] {
            vars.insert(name.to_string(), value.to_string());
        }
        assert_eq!(Vars(&vars).number("TESTCFG_RATE", 1u32).unwrap(), 2);
        let error = refuse_unknown("test", &vars, &["TESTCFG_"])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("TESTCFG_RAET (did you mean TESTCFG_RATE?)"),
            "{error}"
        );
        assert!(
            error.contains(&format!("{misspelt} (did you mean {misspelt}S?)")),
            "{error}"
        );
        // Known project variables, other processors' prefixes and the
        // rest of the environment pass.
        for name in ["PSYMATCH_TOOLS", "SMTP_HOST", "PATH", "TESTCFG_RATE"] {
            assert!(!error.contains(&format!("{name} ")), "{error}");
        }
        vars.remove("TESTCFG_RAET");
        vars.remove(&misspelt);
        refuse_unknown("test", &vars, &["TESTCFG_"]).unwrap();
        // A misspelt Kafka security setting would leave the connection in
        // plaintext: refused too; Kafka's own variables and raw options pass.
        crate::broker::Settings::from_vars(&vars).unwrap();
        vars.insert(
            "KAFKA_SASL_PASWORD_FILE".into(),
            "/run/secrets/kafka".into(),
        );
        vars.insert("KAFKA_HEAP_OPTS".into(), "-Xmx1g".into());
        vars.insert("KAFKA_OPTION_LINGER_MS".into(), "5".into());
        let error = refuse_unknown("test", &vars, &["TESTCFG_"])
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with(
                "has no setting KAFKA_SASL_PASWORD_FILE (did you mean KAFKA_SASL_PASSWORD_FILE?): unset it or correct its name (settings: docs/operations.md)"
            ),
            "{error}"
        );
    }

    #[test]
    fn defaults_overrides_and_raw_kafka_options() {
        let mut vars = BTreeMap::new();
        let config = RuntimeConfig::from_vars("intake", &vars).unwrap();
        assert_eq!(config.group, "psymatch-intake");
        assert_eq!(config.batch_size, 2000);
        vars.insert("BATCH_SIZE".into(), "50".into());
        vars.insert("TOPIC_PREFIX".into(), "t1.".into());
        vars.insert("KAFKA_OPTION_SESSION_TIMEOUT_MS".into(), "6000".into());
        let config = RuntimeConfig::from_vars("intake", &vars).unwrap();
        assert_eq!(config.batch_size, 50);
        assert_eq!(config.physical("patient-commands"), "t1.patient-commands");
        assert_eq!(config.logical("t1.patient-commands"), "patient-commands");
        assert_eq!(config.kafka.option("session.timeout.ms"), Some("6000"));
        vars.insert("BATCH_SIZE".into(), "many".into());
        let error = RuntimeConfig::from_vars("intake", &vars)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "BATCH_SIZE=many is not a valid number");
    }

    #[test]
    fn choices_default_to_the_first_and_name_every_choice_when_wrong() {
        let mut vars = BTreeMap::new();
        let config = RuntimeConfig::from_vars("intake", &vars).unwrap();
        assert_eq!(config.assignment, Assignment::Group);
        assert_eq!(config.group_protocol, GroupProtocol::Consumer);
        assert_eq!(config.relay, Relay::Idempotent);
        assert_eq!(config.guarantee, Guarantee::EffectivelyOnce);
        vars.insert("RELAY".into(), "transactional".into());
        vars.insert("PARTITION_ASSIGNMENT".into(), "lease".into());
        let config = RuntimeConfig::from_vars("intake", &vars).unwrap();
        assert_eq!(config.relay, Relay::Transactional);
        assert_eq!(config.assignment, Assignment::Lease);
        vars.insert("GROUP_PROTOCOL".into(), "eager".into());
        let error = RuntimeConfig::from_vars("intake", &vars)
            .unwrap_err()
            .to_string();
        assert_eq!(error, "GROUP_PROTOCOL=eager: expected consumer or classic");
    }
}
