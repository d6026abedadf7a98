//! Helpers for tests against the real local stack (`scripts/stack up`).
//!
//! Tests never skip for want of a service: a missing one is a failure that
//! says how to start it.

use crate::db;
use sqlx::PgPool;

/// An environment variable the stack exports, or a panic naming the fix.
pub fn stack_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the local stack with scripts/stack up and `. .stack/env`")
    })
}

/// A new, migrated database of its own for one test, on the server of
/// `DATABASE_URL`. The stack drops these on its next start.
pub async fn fresh_database() -> (PgPool, String) {
    fresh_database_on(&stack_env("DATABASE_URL")).await
}

/// [`fresh_database`] on the server of `base_url`.
pub async fn fresh_database_on(base_url: &str) -> (PgPool, String) {
    let server = base_url
        .rsplit_once('/')
        .map_or(base_url, |(server, _)| server);
    let admin = db::connect(&format!("{server}/postgres"))
        .await
        .expect("the stack's PostgreSQL answers");
    let name = format!("psymatch_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("creating a test database");
    admin.close().await;
    let url = format!("{server}/{name}");
    let pool = db::connect(&url)
        .await
        .expect("connecting to the test database");
    db::migrate(&pool)
        .await
        .expect("migrating the test database");
    (pool, url)
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A new, empty directory under the system's temporary directory.
pub fn scratch_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// A child process killed when dropped, so a failing test leaves nothing
/// running.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Starts `binary` with `env`, its stderr (the logs) appended to `log`.
    pub fn spawn(binary: &str, env: &[(String, String)], log: &std::path::Path) -> KillOnDrop {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("opening the log file");
        std::process::Command::new(binary)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map(KillOnDrop)
            .unwrap_or_else(|error| panic!("starting {binary}: {error}"))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The records of `event_type`, each event once (a relay may publish a
/// record twice, always with the same event id).
pub fn of_type<'a>(records: &'a [Received], event_type: &str) -> Vec<&'a Received> {
    let mut seen = std::collections::HashSet::new();
    records
        .iter()
        .filter(|r| {
            r.envelope
                .as_ref()
                .is_some_and(|e| e.event_type == event_type)
        })
        .filter(|r| seen.insert(r.envelope.as_ref().map(|e| e.event_id)))
        .collect()
}

/// A processor running in the test's process until [`Running::stop`].
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts `processor` with `config`.
    pub fn start<P: crate::processor::Processor>(
        processor: P,
        config: crate::config::RuntimeConfig,
    ) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::app::run_with(processor, config, async move {
            let _ = stopped.await;
        }));
        Running { stop, task }
    }

    /// Stops it (drain and exit) and fails the test if it failed.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("the processor task ended")
            .expect("the processor ran without error");
    }
}

/// Benchmarks: runs `processor` (whose state is in schema `processor`)
/// over what its inputs hold, from empty offsets, and returns the seconds
/// from its first commit until `records` are committed and its outbox is
/// published, and how many records that timing covers (start-up, the
/// connection and lease acquisition are not throughput).
pub async fn throughput<P: crate::processor::Processor>(
    bed: &TestBed,
    pool: &PgPool,
    processor: P,
    group: &str,
    records: i64,
) -> anyhow::Result<(f64, i64)> {
    let schema = processor.name();
    sqlx::query(&format!(
        "TRUNCATE {schema}.consumer_offsets, {schema}.processed_events, {schema}.outbox"
    ))
    .execute(pool)
    .await?;
    let mut config = bed.config(schema);
    config.group = format!("{}{group}", bed.prefix);
    let running = Running::start(processor, config);
    let mut first = None;
    loop {
        // Offsets start at 0 without holes: their sum is what is committed.
        let (done, pending): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT coalesce(sum(next_offset), 0)::bigint FROM {schema}.consumer_offsets),
                    (SELECT count(*) FROM {schema}.outbox)"
        ))
        .fetch_one(pool)
        .await?;
        if done > 0 && first.is_none() {
            first = Some((std::time::Instant::now(), done));
        }
        if done >= records && pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (from, already) = first.expect("records were committed");
    let seconds = from.elapsed().as_secs_f64();
    running.stop().await;
    Ok((seconds, records - already))
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Received {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<String>,
    /// Headers (text values).
    pub headers: std::collections::BTreeMap<String, String>,
    /// Raw value.
    pub value: Option<Vec<u8>>,
    /// The value decoded as an envelope, when it is one.
    pub envelope: Option<crate::envelope::Envelope>,
}

impl Received {
    /// The decoded payload as JSON (panics on a record that is no envelope).
    pub fn payload(&self) -> serde_json::Value {
        crate::avro_json::to_json(&self.envelope.as_ref().expect("an envelope").payload)
    }
}

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
        let (pool, database_url) = fresh_database_on(database_url).await;
        let prefix = format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let registry_url = stack_env("SCHEMA_REGISTRY_URL");
        let contracts = crate::contracts::Contracts::embedded();
        let admin = crate::topics::Admin::connect(brokers).expect("admin client");
        let file = contracts.topics.with_prefix(&prefix);
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
        vec![
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
        ]
    }

    /// Publishes records written as people write them (`psymatch publish`).
    pub async fn publish(&self, topic: &str, records: &[serde_json::Value]) {
        let contracts = crate::contracts::Contracts::embedded();
        let (spec, schema) = contracts.topic(topic).expect("a topic with a schema");
        let physical = format!("{}{topic}", self.prefix);
        let mut sends = Vec::new();
        for record in records {
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
                .encode_with(&physical, schema, value)
                .await
                .expect("encodes");
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

    /// Publishes one record and waits for the broker's acknowledgement.
    async fn send(&self, record: &crate::processor::Outgoing) {
        self.producer
            .send(record.record(), std::time::Duration::from_secs(60))
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
        let consumer: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.brokers)
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

    /// Polls `check` until it returns true, or panics after `deadline`.
    pub async fn wait_for<F, Fut>(&self, what: &str, deadline: std::time::Duration, check: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        wait_until(what, deadline, check).await
    }
}

/// Runs `records` (written as people write them, for `topic`) through
/// `processor` as one batch, in one transaction on `pool`, the way the
/// runtime does: `begin_batch`, `process` for each, `finish_batch`, commit.
/// Returns what the batch emitted as (topic, event type, payload). No
/// broker: tests that must decide which instance handles which batch.
pub async fn run_batch<P: crate::processor::Processor>(
    processor: &P,
    pool: &PgPool,
    topic: &str,
    records: &[serde_json::Value],
) -> Vec<(String, String, serde_json::Value)> {
    open_batch(processor, pool, topic, records)
        .await
        .expect("the batch runs")
        .commit(processor)
        .await
}

/// A batch run up to its commit ([`open_batch`]): its transaction is still
/// open, so a test decides whether it commits or fails, and when.
pub struct OpenBatch {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    scratch: crate::processor::Scratch,
    emitted: Vec<(String, String, crate::envelope::Envelope)>,
}

impl OpenBatch {
    /// Commits the batch and tells `processor` (the one that ran it), as
    /// the runtime does; returns what it emitted as (topic, event type,
    /// payload).
    pub async fn commit<P: crate::processor::Processor>(
        mut self,
        processor: &P,
    ) -> Vec<(String, String, serde_json::Value)> {
        self.tx.commit().await.expect("commit");
        processor.batch_committed(&mut self.scratch);
        self.emitted
            .into_iter()
            .map(|(topic, _, envelope)| {
                let payload = crate::avro_json::to_json(&envelope.payload);
                (topic, envelope.event_type, payload)
            })
            .collect()
    }

    /// Fails the batch at its commit: the transaction rolls back and the
    /// processor's scratch is dropped, as when the runtime's commit fails.
    pub async fn roll_back(self) {
        self.tx.rollback().await.expect("rollback");
    }
}

/// Runs `records` like [`run_batch`] up to the commit, which is left to the
/// caller; an error of a hook or a record is returned (the transaction is
/// rolled back then).
pub async fn open_batch<P: crate::processor::Processor>(
    processor: &P,
    pool: &PgPool,
    topic: &str,
    records: &[serde_json::Value],
) -> Result<OpenBatch, crate::processor::ProcessError> {
    use crate::processor::{Context, Incoming, Scratch};
    let contracts = crate::contracts::Contracts::embedded();
    let (spec, schema) = contracts.topic(topic).expect("a topic with a schema");
    let now = chrono::Utc::now();
    let incoming: Vec<Incoming> = records
        .iter()
        .enumerate()
        .map(|(offset, record)| {
            let (key, envelope) =
                crate::envelope::from_json(record, schema, &spec.key_fields, "test", now)
                    .expect("the test record fits");
            let payload = crate::avro_json::to_json(&envelope.payload);
            Incoming {
                topic: topic.to_string(),
                partition: 0,
                offset: offset as i64,
                key,
                envelope,
                payload,
            }
        })
        .collect();
    let mut tx = pool.begin().await.expect("a transaction");
    let mut scratch = Scratch::default();
    let mut emitted = Vec::new();
    let batch_id = incoming
        .last()
        .map(|r| r.envelope.event_id)
        .unwrap_or_default();
    let refs: Vec<&Incoming> = incoming.iter().collect();
    let name = processor.name();
    let mut batch = hook(&mut tx, pool, &mut scratch, name, now, batch_id, "begin");
    processor.begin_batch(&mut batch, &refs).await?;
    let settle = |deferred: crate::processor::Deferred| {
        deferred
            .settle(contracts, name, now)
            .expect("what the batch hook emitted fits")
    };
    emitted.extend(batch.emitted.drain(..).map(settle));
    for record in &incoming {
        let mut ctx = Context {
            db: &mut tx,
            pool,
            scratch: &mut scratch,
            contracts,
            producer: processor.name(),
            source: record,
            now,
            emitted: Vec::new(),
            tombstones: Vec::new(),
        };
        processor.process(&mut ctx, record).await?;
        emitted.append(&mut ctx.emitted);
    }
    let mut batch = hook(&mut tx, pool, &mut scratch, name, now, batch_id, "finish");
    processor.finish_batch(&mut batch).await?;
    emitted.extend(batch.emitted.drain(..).map(settle));
    Ok(OpenBatch {
        tx,
        scratch,
        emitted,
    })
}

/// Polls `check` until it returns true, or panics after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: std::time::Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: not reached within {deadline:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The context of a batch hook, as the runtime builds it ([`run_batch`]).
fn hook<'a>(
    db: &'a mut sqlx::PgConnection,
    pool: &'a PgPool,
    scratch: &'a mut crate::processor::Scratch,
    producer: &'static str,
    now: chrono::DateTime<chrono::Utc>,
    batch_id: uuid::Uuid,
    phase: &'static str,
) -> crate::processor::BatchContext<'a> {
    crate::processor::BatchContext {
        db,
        pool,
        scratch,
        contracts: crate::contracts::Contracts::embedded(),
        producer,
        now,
        batch_id,
        phase,
        emitted: Vec::new(),
    }
}

/// A processor that consumes one topic and does nothing: the runtime's own
/// cost, the baseline benchmarks measure a processor against. It runs
/// under the name (and PostgreSQL schema) of the processor it stands for.
pub struct Noop {
    /// The processor it stands for.
    pub name: &'static str,
    /// The topic it consumes.
    pub input: &'static str,
}

impl crate::processor::Processor for Noop {
    fn name(&self) -> &'static str {
        self.name
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec![self.input]
    }

    async fn process(
        &self,
        _ctx: &mut crate::processor::Context<'_>,
        _record: &crate::processor::Incoming,
    ) -> Result<(), crate::processor::ProcessError> {
        Ok(())
    }
}

/// An Apache Kafka broker of the test's own (`scripts/kafka-broker`), its
/// data in a scratch directory so that it survives a restart.
pub struct OwnBroker {
    process: Option<std::process::Child>,
    port: u16,
    controller_port: u16,
    dir: std::path::PathBuf,
}

impl OwnBroker {
    /// Starts it on a free port and waits until it answers metadata
    /// requests (a JVM broker listens some seconds before it is ready).
    pub fn start() -> OwnBroker {
        let mut broker = OwnBroker {
            process: None,
            port: free_port(),
            controller_port: free_port(),
            dir: scratch_dir("kafka"),
        };
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/kafka-broker");
        // Its log stays beside its data, across restarts, for a look after a run.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("broker.log"))
            .expect("the broker's log file");
        let child = std::process::Command::new(script)
            .arg(self.dir.join("broker"))
            .arg(self.port.to_string())
            .arg(self.controller_port.to_string())
            .stdout(log.try_clone().expect("the broker's log file"))
            .stderr(log)
            .spawn()
            .expect("scripts/kafka-broker (Kafka from scripts/install-tools)");
        self.process = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            if crate::broker::check(&self.address(), std::time::Duration::from_secs(1)).is_ok() {
                break;
            }
            if let Some(status) = self
                .process
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "the broker exited ({status}); see {}",
                    self.dir.join("broker.log").display()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the broker did not answer within 120 s; see {}",
                self.dir.join("broker.log").display()
            );
        }
    }

    /// Kills it (SIGKILL) and starts it again on the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// Kills it (SIGKILL); its data stays for [`OwnBroker::resume`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Starts it again on its port and data after [`OwnBroker::kill`].
    pub fn resume(&mut self) {
        assert!(self.process.is_none(), "the broker runs already");
        self.launch();
    }

    /// Its bootstrap address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A PostgreSQL cluster of the test's own (initdb as the postgres user).
pub struct OwnPostgres {
    bin: String,
    dir: std::path::PathBuf,
    port: u16,
}

impl OwnPostgres {
    /// Creates and starts it on a free port.
    pub fn start() -> OwnPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .max()
            .unwrap()
            .display()
            .to_string();
        let port = free_port();
        let dir = scratch_dir("pg");
        std::process::Command::new("chown")
            .args(["postgres", dir.to_str().unwrap()])
            .status()
            .unwrap();
        let initdb = std::process::Command::new("runuser")
            .args([
                "-u",
                "postgres",
                "--",
                &format!("{bin}/initdb"),
                "-D",
                dir.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(initdb.success());
        let cluster = OwnPostgres { bin, dir, port };
        cluster.pg_ctl("start");
        cluster
    }

    /// Runs `pg_ctl <action>` on it (`restart`, `stop`, `start`).
    pub fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.display()
        );
        let status = self
            .pg_ctl_command()
            .args([
                "-l",
                &format!("{}/log", self.dir.display()),
                "-w",
                "-m",
                "fast",
                "-o",
                &options,
                action,
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {action}");
    }

    /// `pg_ctl -D <dir>` run as the postgres user (it refuses root).
    fn pg_ctl_command(&self) -> std::process::Command {
        let mut command = std::process::Command::new("runuser");
        command.args([
            "-u",
            "postgres",
            "--",
            &format!("{}/pg_ctl", self.bin),
            "-D",
            self.dir.to_str().unwrap(),
        ]);
        command
    }

    /// URL of its `postgres` database (superuser, trust).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self
            .pg_ctl_command()
            .args(["-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
