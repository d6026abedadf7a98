//! The test bed: an isolated environment on the shared stack (its own
//! database, topic prefix and consumer groups), publishing and reading
//! records as people write them.

use super::{Received, fresh_database_on, stack_env, wait_until};
use sqlx::PgPool;

/// An isolated environment on the shared stack: its own database, its own
/// topics (a unique prefix, every topic of topics.yaml created and its
/// schema registered) and its own consumer groups.
pub struct TestBed {
    /// Physical topic prefix, e.g. `t3f2a1b9c.`.
    pub prefix: String,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Schema registry URL.
    pub registry_url: String,
    /// The test's database.
    pub database_url: String,
    /// A pool on it.
    pub pool: PgPool,
    /// Kafka security settings (`KAFKA_SECURITY_PROTOCOL`, ...) the bed's
    /// clients and processors use; empty on the plaintext stack.
    pub kafka_env: Vec<(String, String)>,
    codec: crate::codec::Codec,
    producer: rdkafka::producer::FutureProducer,
}

impl TestBed {
    /// Creates the database, topics and subjects.
    pub async fn new() -> TestBed {
        Self::with(&stack_env("KAFKA_BROKERS"), &stack_env("DATABASE_URL")).await
    }

    /// [`TestBed::new`] on another broker or PostgreSQL server (tests that
    /// restart their own).
    pub async fn with(brokers: &str, database_url: &str) -> TestBed {
        Self::with_kafka(brokers, database_url, Vec::new()).await
    }

    /// A bed on the secured three-node cluster (`scripts/kafka-cluster`,
    /// started if it is not running), as its `admin` principal; processors
    /// started with [`TestBed::config`] or [`TestBed::env`] connect as it
    /// too unless a test gives them their own principal.
    pub async fn secured() -> TestBed {
        Self::secured_on(&stack_env("DATABASE_URL")).await
    }

    /// [`TestBed::secured`] with the database on `database_url`'s server
    /// (one over TLS), the ACLs of topics.yaml applied for the bed's
    /// prefix: processes started with [`TestBed::env_as_own_principal`]
    /// get exactly what the contract gives them.
    pub async fn secured_on(database_url: &str) -> TestBed {
        let bed = Self::secured_without_acls(database_url).await;
        let applied = bed.apply_acls().await;
        assert!(applied.refused.is_empty(), "{:?}", applied.refused);
        bed
    }

    /// A secured bed whose prefix has no ACLs yet (the ACL tests).
    pub async fn secured_without_acls(database_url: &str) -> TestBed {
        let cluster = super::cluster::up();
        Self::with_kafka(&cluster.brokers, database_url, cluster.env("admin")).await
    }

    /// Whether the bed is on the secured cluster.
    pub fn is_secured(&self) -> bool {
        !self.kafka_env.is_empty()
    }

    /// [`TestBed::with`] with Kafka security settings.
    pub async fn with_kafka(
        brokers: &str,
        database_url: &str,
        kafka_env: Vec<(String, String)>,
    ) -> TestBed {
        let settings = crate::broker::Settings::from_vars(&kafka_env.iter().cloned().collect())
            .expect("the cluster's settings");
        crate::broker::use_settings(brokers, settings);
        let (pool, database_url) = fresh_database_on(database_url).await;
        let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let registry_url = stack_env("SCHEMA_REGISTRY_URL");
        let contracts = crate::contracts::Contracts::embedded();
        let admin = crate::topics::Admin::connect(brokers).expect("admin client");
        let mut file = contracts.topics.with_prefix(&prefix);
        // A replicated cluster (the secured one): three replicas, two to
        // acknowledge, as in production.
        if !kafka_env.is_empty() {
            file = file.with_replication(3, Some(2));
        }
        let outcomes = crate::topics::apply(&admin, &file, false)
            .await
            .expect("topics apply");
        for outcome in outcomes {
            assert!(outcome.result.is_ok(), "{outcome:?}");
        }
        crate::codec::register_all_prefixed(&registry_url, contracts, &prefix)
            .await
            .expect("schemas registered");
        let producer = crate::broker::producer_config(brokers, "psymatch-test")
            .set("message.timeout.ms", "120000")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .expect("producer");
        TestBed {
            codec: crate::codec::Codec::new(&registry_url),
            prefix,
            brokers: brokers.to_string(),
            registry_url,
            database_url,
            pool,
            kafka_env,
            producer,
        }
    }

    /// Runtime configuration for a processor in this environment.
    pub fn config(&self, processor: &str) -> crate::config::RuntimeConfig {
        let mut vars = std::collections::BTreeMap::new();
        for (name, value) in self.env(processor) {
            vars.insert(name, value);
        }
        crate::config::RuntimeConfig::from_vars(processor, &vars).expect("valid test configuration")
    }

    /// The environment variables that configure a processor process here.
    /// The processor connects with its own least-privilege role, as in
    /// production: every test that runs a processor shows it needs no more.
    pub fn env(&self, processor: &str) -> Vec<(String, String)> {
        let mut env = self.kafka_env.clone();
        env.extend([
            ("KAFKA_BROKERS".into(), self.brokers.clone()),
            ("SCHEMA_REGISTRY_URL".into(), self.registry_url.clone()),
            (
                "DATABASE_URL".into(),
                crate::db::with_user(&self.database_url, &crate::db::role_of(processor)),
            ),
            ("TOPIC_PREFIX".into(), self.prefix.clone()),
            (
                "CONSUMER_GROUP".into(),
                format!("{}{processor}", self.prefix),
            ),
            ("SHUTDOWN_TIMEOUT_SECS".into(), "10".into()),
        ]);
        env
    }

    /// [`TestBed::env`] for a process that connects to the secured cluster
    /// as `processor`'s own principal, as in production (the bed itself
    /// and processors run in the test's process connect as `admin`: one
    /// process has one set of Kafka settings per broker list).
    pub fn env_as_own_principal(&self, processor: &str) -> Vec<(String, String)> {
        let own = super::cluster::up().env(processor);
        let mut env: Vec<(String, String)> = self
            .env(processor)
            .into_iter()
            .filter(|(name, _)| !own.iter().any(|(o, _)| o == name))
            .collect();
        env.extend(own);
        env
    }

    /// Publishes a registration of `patient` and waits (90 s at most) until
    /// intake has answered it with `patient.registered`: the chain's first
    /// step works with whatever settings the running intake has.
    pub async fn registers(&self, patient: &str) {
        self.publish(
            "patient-commands",
            &[super::people::registration(patient, "10115")],
        )
        .await;
        let registered = |records: &[Received]| {
            super::of_type(records, "patient.registered")
                .iter()
                .any(|r| r.payload()["patient_id"] == patient)
        };
        let records = self
            .read_until(
                "patient-events",
                std::time::Duration::from_secs(90),
                registered,
            )
            .await;
        assert!(registered(&records), "{patient} was not registered");
    }

    /// What `psymatch acls plan` plans for this bed: its topic prefix, and
    /// its processors' groups (`<prefix><processor>`, see [`TestBed::env`]).
    pub fn acl_options(&self) -> crate::acls::PlanOptions {
        crate::acls::PlanOptions {
            topic_prefix: self.prefix.clone(),
            group_prefix: self.prefix.clone(),
            ..crate::acls::PlanOptions::default()
        }
    }

    /// Applies the ACLs topics.yaml plans for this bed (as the bed's
    /// principal, the cluster's super user); what was done.
    pub async fn apply_acls(&self) -> crate::acls::Applied {
        let (brokers, options) = (self.brokers.clone(), self.acl_options());
        tokio::task::spawn_blocking(move || {
            let planned =
                crate::acls::plan(&crate::contracts::Contracts::embedded().topics, &options);
            let admin = crate::acls::AclAdmin::connect(&brokers).expect("ACL admin");
            crate::acls::apply(&admin, &planned, &options, false).expect("acls apply")
        })
        .await
        .expect("acls apply task")
    }

    /// A record written as people write it, in `topic`'s wire format:
    /// its key, envelope and bytes (no check of its text: poison tests
    /// encode what the processors must refuse).
    pub async fn encode(
        &self,
        topic: &str,
        record: &serde_json::Value,
    ) -> (String, crate::envelope::Envelope, Vec<u8>) {
        let contracts = crate::contracts::Contracts::embedded();
        let (spec, schema) = contracts.topic(topic).expect("a topic with a schema");
        let (key, envelope) = crate::envelope::from_json(
            record,
            schema,
            &spec.key_fields,
            "test",
            chrono::Utc::now(),
        )
        .expect("the test record fits");
        let value = envelope.to_avro(schema).expect("an envelope");
        let bytes = self
            .codec
            .encode_with(&format!("{}{topic}", self.prefix), schema, value)
            .await
            .expect("encodes");
        (key, envelope, bytes)
    }

    /// Publishes records written as people write them (`psymatch publish`).
    pub async fn publish(&self, topic: &str, records: &[serde_json::Value]) {
        let physical = format!("{}{topic}", self.prefix);
        let mut sends = Vec::new();
        for record in records {
            let (key, envelope, bytes) = self.encode(topic, record).await;
            sends.push(crate::processor::Outgoing::of_envelope(
                &physical, key, &envelope, bytes,
            ));
        }
        // All in flight at once: librdkafka keeps each partition's order.
        let sends = sends.iter().map(|record| self.send(record));
        futures::future::join_all(sends).await;
    }

    /// Publishes records for several topics at once, each topic's in order.
    pub async fn publish_all(&self, records: &[(&str, serde_json::Value)]) {
        let mut by_topic: std::collections::BTreeMap<&str, Vec<serde_json::Value>> =
            std::collections::BTreeMap::new();
        for (topic, record) in records {
            by_topic.entry(topic).or_default().push(record.clone());
        }
        let sends = by_topic
            .iter()
            .map(|(topic, records)| self.publish(topic, records));
        futures::future::join_all(sends).await;
    }

    /// Publishes raw bytes (poison records).
    pub async fn publish_raw(
        &self,
        topic: &str,
        key: Option<&str>,
        value: Option<&[u8]>,
        headers: &[(String, String)],
    ) {
        let record = crate::processor::Outgoing {
            event_id: uuid::Uuid::nil(),
            topic: format!("{}{topic}", self.prefix),
            key: key.map(str::to_string),
            value: value.map(<[u8]>::to_vec),
            headers: headers
                .iter()
                .map(|(name, value)| (name.clone(), Some(value.clone())))
                .collect(),
        };
        self.send(&record).await;
    }

    /// Publishes a record written as people write it onto one partition
    /// of `topic`, whatever its key (a test that needs two records on two
    /// different partitions).
    pub async fn publish_on(&self, topic: &str, partition: i32, record: &serde_json::Value) {
        let (key, envelope, bytes) = self.encode(topic, record).await;
        let physical = format!("{}{topic}", self.prefix);
        let outgoing = crate::processor::Outgoing::of_envelope(&physical, key, &envelope, bytes);
        self.send_record(outgoing.record().partition(partition))
            .await;
    }

    /// Publishes one record and waits for the broker's acknowledgement.
    async fn send(&self, record: &crate::processor::Outgoing) {
        self.send_record(record.record()).await;
    }

    async fn send_record(&self, record: rdkafka::producer::FutureRecord<'_, str, [u8]>) {
        self.producer
            .send(record, std::time::Duration::from_secs(60))
            .await
            .map_err(|(error, _)| error)
            .expect("published");
    }

    /// Reads `topic` from the beginning until `done` holds for what was read,
    /// or panics after `deadline`.
    pub async fn read_until(
        &self,
        topic: &str,
        deadline: std::time::Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        use rdkafka::Message;
        use rdkafka::consumer::{Consumer, StreamConsumer};
        use rdkafka::message::Headers;
        let physical = format!("{}{topic}", self.prefix);
        let consumer: StreamConsumer = crate::broker::client(&self.brokers)
            .set("group.id", format!("reader-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("consumer");
        consumer.subscribe(&[&physical]).expect("subscribe");
        let contracts = crate::contracts::Contracts::embedded();
        let reader = contracts
            .schemas
            .get(topic.trim_end_matches(".dlq"))
            .map(|s| s.schema.clone());
        let is_dlq = topic.ends_with(".dlq");
        let mut records = Vec::new();
        let until = tokio::time::Instant::now() + deadline;
        while !done(&records) {
            let message = match tokio::time::timeout_at(until, consumer.recv()).await {
                Ok(Ok(message)) => message,
                // A broker lost or restarting (the failover tests): the
                // client reconnects; keep reading.
                Ok(Err(rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                    | rdkafka::types::RDKafkaErrorCode::AllBrokersDown,
                ))) => continue,
                Ok(Err(error)) => panic!("reading {physical}: {error}"),
                Err(_) => panic!(
                    "{physical}: condition not met within {deadline:?}; read {} records",
                    records.len()
                ),
            };
            let envelope = match (message.payload(), &reader, is_dlq) {
                (Some(bytes), Some(reader), false) => self
                    .codec
                    .decode_as(bytes, reader)
                    .await
                    .ok()
                    .and_then(|value| crate::envelope::Envelope::from_avro(value).ok()),
                _ => None,
            };
            records.push(Received {
                partition: message.partition(),
                offset: message.offset(),
                key: message
                    .key()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                headers: message
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    h.value
                                        .map(|v| String::from_utf8_lossy(v).into_owned())
                                        .unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                value: message.payload().map(<[u8]>::to_vec),
                envelope,
            });
        }
        records
    }

    /// The number a counting query (`SELECT count(*) ...`) gives now.
    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"))
    }

    /// Waits until `processor` (its schema) has committed `count` records
    /// of `topic`: everything published there up to then is decided.
    pub async fn wait_consumed(&self, processor: &str, topic: &str, count: i64) {
        let sql = format!(
            "SELECT coalesce(sum(next_offset), 0)::bigint FROM {processor}.consumer_offsets
              WHERE topic = '{}{topic}'",
            self.prefix
        );
        let what = format!("{processor} read {count} of {topic}");
        wait_until(&what, std::time::Duration::from_secs(120), || async {
            self.count(&sql).await >= count
        })
        .await
    }

    /// Polls `check` until it returns true, or panics after `deadline`.
    pub async fn wait_for<F, Fut>(&self, what: &str, deadline: std::time::Duration, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        wait_until(what, deadline, check).await
    }
}
