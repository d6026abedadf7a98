//! The consume-process-produce loop with PostgreSQL as the source of truth.
//!
//! ```text
//!  consumer thread ──(per-partition bounded queues)──> partition workers ──> PostgreSQL
//!  (BaseConsumer, rebalance                           (one transaction per batch:        │
//!   callbacks, blocking calls)                         state + next offset + outbox)     │
//!                                                                                        v
//!                                         Kafka <── relay (publishes the outbox in order, deletes acknowledged rows)
//! ```
//!
//! Why it is effectively once without Kafka transactions: a batch's state
//! changes, its partition's next offset and the records it emits commit in
//! one PostgreSQL transaction, which locks the partition's offset row and
//! skips records below the stored offset, so two owners of a partition (a
//! rebalance overlap, a process presumed dead) can never both apply a
//! record. The relay may publish a record twice (crash between publish and
//! delete), always with the same event id, and every consumer drops an input
//! whose event id it has processed before. On assignment the consumer starts
//! at the offsets stored in PostgreSQL.
//!
//! The consumer runs on a thread of its own: rdkafka's polling, rebalance
//! callbacks and the database lookups they need block, and must not block
//! the async workers.

use crate::config::{Assignment, GroupProtocol, Guarantee, Relay, RuntimeConfig};
use crate::contracts::Contracts;
use crate::envelope::Envelope;
use crate::errors::ErrorCode;
use crate::processor::{
    BatchContext, Context, Incoming, Outgoing, ProcessError, Processor, Scratch,
};
use crate::surface::{Metrics, Status, Surface};
use crate::{codec, db, telemetry};
use anyhow::Context as _;
use rand::Rng;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{ClientConfig, ClientContext, Offset, Statistics, TopicPartitionList};
use serde_json::{Value as Json, json};
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

/// Runs `processor` with configuration from the environment until SIGTERM
/// or SIGINT, then drains and exits.
pub async fn run<P: Processor>(processor: P) -> anyhow::Result<()> {
    telemetry::init(processor.name());
    let config = RuntimeConfig::from_env(processor.name())?;
    run_with(processor, config, telemetry::shutdown_signal()).await
}

/// Everything the workers, the relay and the consumer thread share.
struct Shared<P> {
    processor: P,
    config: RuntimeConfig,
    contracts: &'static Contracts,
    pool: PgPool,
    codec: codec::Codec,
    metrics: Arc<Metrics>,
    status: Arc<Status>,
    relay_wake: Notify,
    /// Outbox rows one relay pass publishes: smaller after a pass the
    /// broker could not take in time, so that a slow broker still sees
    /// progress instead of the same large pass timing out again.
    relay_limit: std::sync::atomic::AtomicUsize,
    /// Outbox rows this process committed, by id, as encoded: the relay
    /// publishes these from memory instead of reading them back. The
    /// outbox stays the record of what is unpublished: a row not here (a
    /// restart, another replica's, more than [`UNSENT_MAX`]) is read.
    unsent: Mutex<BTreeMap<i64, Outgoing>>,
    /// The processor's schema name, checked to be a plain identifier.
    schema: String,
    /// Offsets committed to PostgreSQL, waiting to be stored in the consumer
    /// for the broker's group offsets (tools, lag).
    committed: Mutex<Vec<(String, i32, i64)>>,
    /// Compacted input topics: a key without a value there is an erasure.
    compacted: HashSet<String>,
    /// Producer of the relay and of the at-least-once path.
    producer: FutureProducer,
    /// The relay's transactional producer (`RELAY=transactional`), made
    /// when the relay first needs it and again after it was fenced.
    transactional: tokio::sync::Mutex<Option<FutureProducer>>,
}

/// Runs `processor` until `shutdown` completes.
pub async fn run_with<P: Processor>(
    processor: P,
    config: RuntimeConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let name = processor.name();
    anyhow::ensure!(
        name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "processor name {name} must be a plain lower-case identifier (it names a schema)"
    );
    let contracts = Contracts::embedded();
    for topic in processor.inputs() {
        contracts.topic(topic)?;
    }
    let pool = db::connect_sized(&config.database_url, config.db_pool_size).await?;
    db::ensure_migrated(&pool).await?;
    let metrics = Arc::new(Metrics::new(name));
    for collector in processor.collectors() {
        metrics.register(collector)?;
    }
    let status = Arc::new(Status::default());
    let mut producer_config =
        crate::broker::producer_config(&config.brokers, &format!("psymatch-{name}-producer"));
    with_options(&mut producer_config, &config);
    let producer: FutureProducer = producer_config.create().context("creating the producer")?;
    let compacted: HashSet<String> = contracts
        .topics
        .topics
        .iter()
        .filter(|t| t.compacted())
        .map(|t| t.name.clone())
        .collect();
    let shared = Arc::new(Shared {
        schema: name.to_string(),
        codec: codec::Codec::new(&config.registry_url),
        processor,
        config,
        contracts,
        pool,
        metrics: metrics.clone(),
        status: status.clone(),
        relay_wake: Notify::new(),
        relay_limit: std::sync::atomic::AtomicUsize::new(RELAY_PASS_MAX),
        unsent: Mutex::new(BTreeMap::new()),
        committed: Mutex::new(Vec::new()),
        compacted,
        producer,
        transactional: tokio::sync::Mutex::new(None),
    });

    let listener = tokio::net::TcpListener::bind(&shared.config.http_listen)
        .await
        .with_context(|| format!("cannot listen on {}", shared.config.http_listen))?;
    let http_address = listener.local_addr()?;
    let surface = Arc::new(Surface {
        processor: name.to_string(),
        group: shared.config.group.clone(),
        metrics,
        status,
        probes: probes(&shared),
        started: Instant::now(),
    });
    let http = tokio::spawn(async move {
        let _ = axum::serve(listener, crate::surface::router(surface)).await;
    });
    tracing::info!(processor = name, http = %http_address, group = %shared.config.group, "running");

    let stop = Arc::new(AtomicBool::new(false));
    // The relay stops only once the workers have drained and committed, so
    // that everything committed is published before the process exits.
    let drained = Arc::new(AtomicBool::new(false));
    let relay = tokio::spawn(relay_loop(shared.clone(), drained.clone()));
    let warming = Instant::now();
    match shared.processor.warm_up(&shared.pool).await {
        Ok(()) => tracing::debug!(seconds = warming.elapsed().as_secs_f64(), "warmed up"),
        Err(error) => tracing::warn!(%error, "warming up failed; the first batch loads instead"),
    }
    let consumer = {
        let shared = shared.clone();
        let stop = stop.clone();
        let handle = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name(format!("{name}-consumer"))
            .spawn(move || consumer_thread(shared, stop, handle))?
    };

    shutdown.await;
    tracing::info!("draining");
    stop.store(true, Ordering::SeqCst);
    shared.relay_wake.notify_one();
    let deadline = shared.config.shutdown_timeout;
    let finished = tokio::time::timeout(deadline, async {
        let joined = tokio::task::spawn_blocking(move || consumer.join()).await;
        drained.store(true, Ordering::SeqCst);
        shared.relay_wake.notify_one();
        if !matches!(joined, Ok(Ok(()))) {
            tracing::error!("the consumer thread ended abnormally");
        }
        let _ = relay.await;
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            seconds = deadline.as_secs(),
            "shutdown timed out; unfinished work is redone on restart"
        );
    }
    http.abort();
    shared.pool.close().await;
    tracing::info!("stopped");
    Ok(())
}

fn probes<P: Processor>(shared: &Arc<Shared<P>>) -> Vec<(&'static str, crate::surface::Probe)> {
    let pool = shared.pool.clone();
    let registry = shared.config.registry_url.clone();
    let brokers = shared.config.brokers.clone();
    vec![
        (
            "database",
            Box::new(move || {
                let pool = pool.clone();
                Box::pin(async move {
                    sqlx::query("SELECT 1")
                        .execute(&pool)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }),
        ),
        (
            "registry",
            Box::new(move || {
                let url = format!("{}/subjects", registry.trim_end_matches('/'));
                Box::pin(async move {
                    let response = reqwest::get(&url).await.map_err(|e| e.to_string())?;
                    response
                        .error_for_status()
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }),
        ),
        (
            "broker",
            Box::new(move || {
                let brokers = brokers.clone();
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || {
                        crate::broker::check(&brokers, Duration::from_secs(2))
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| e.to_string())?
                })
            }),
        ),
    ]
}

/// rdkafka callbacks: rebalances and statistics.
struct RuntimeContext<P: Processor> {
    shared: Arc<Shared<P>>,
    handle: tokio::runtime::Handle,
    /// Partition workers by (physical topic, partition).
    workers: Mutex<HashMap<(String, i32), Worker>>,
}

struct Worker {
    queue: mpsc::Sender<OwnedMessage>,
    task: tokio::task::JoinHandle<()>,
}

impl<P: Processor> ClientContext for RuntimeContext<P> {
    fn stats(&self, statistics: Statistics) {
        let mut lags = self.shared.status.lag.lock().expect("status lock");
        for (topic, stats) in &statistics.topics {
            for (partition, p) in &stats.partitions {
                if *partition < 0 || p.consumer_lag < 0 {
                    continue;
                }
                let logical = self.shared.config.logical(topic).to_string();
                self.shared
                    .metrics
                    .lag
                    .with_label_values(&[logical.as_str(), &partition.to_string()])
                    .set(p.consumer_lag);
                lags.insert((logical, *partition), p.consumer_lag);
            }
        }
    }
}

impl<P: Processor> ConsumerContext for RuntimeContext<P> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: rdkafka::types::RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        use rdkafka::types::RDKafkaRespErr::*;
        match err {
            // The consumer protocol (KIP-848) and cooperative-sticky hand
            // out and take back partitions a few at a time: the callback
            // adds or removes just those. The eager protocols replace the
            // whole assignment.
            RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions = partitions_in(tpl);
                self.take(consumer, &partitions, |assignment| {
                    if cooperative(consumer) {
                        consumer.incremental_assign(assignment)
                    } else {
                        consumer.assign(assignment)
                    }
                });
            }
            RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // Revoked: let each worker finish and commit what it holds.
                // Lost: another member may own them already; drop in-flight
                // work (the offset check keeps whatever commits correct).
                let finish = !consumer.assignment_lost();
                self.give_up(&partitions_in(tpl), finish, |released| {
                    if cooperative(consumer) {
                        consumer.incremental_unassign(released)
                    } else {
                        consumer.unassign()
                    }
                });
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                self.shared
                    .status
                    .error(format!("rebalance error: {other:?}"));
                let _ = consumer.unassign();
            }
        }
    }
}

/// Whether the group hands out partitions incrementally (the consumer
/// protocol or cooperative-sticky) rather than all at once.
fn cooperative<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> bool {
    matches!(
        consumer.rebalance_protocol(),
        rdkafka::consumer::RebalanceProtocol::Cooperative
    )
}

impl<P: Processor> RuntimeContext<P> {
    fn start_worker(&self, topic: String, partition: i32) {
        let (queue, receiver) = mpsc::channel(self.shared.config.queue_capacity);
        let task = self.handle.spawn(partition_worker(
            self.shared.clone(),
            receiver,
            topic.clone(),
            partition,
        ));
        let mut workers = self.workers.lock().expect("workers lock");
        if let Some(old) = workers.insert((topic, partition), Worker { queue, task }) {
            old.task.abort();
        }
    }

    /// Stops the workers of `partitions`; `finish` waits (bounded) for each
    /// to commit what it holds, otherwise they are aborted.
    fn stop_workers(&self, partitions: &[(String, i32)], finish: bool) {
        let stopping: Vec<Worker> = {
            let mut workers = self.workers.lock().expect("workers lock");
            partitions
                .iter()
                .filter_map(|key| workers.remove(key))
                .collect()
        };
        let timeout = self.shared.config.shutdown_timeout;
        for worker in stopping {
            drop(worker.queue);
            if finish {
                let task = worker.task;
                let done = self
                    .handle
                    .block_on(async { tokio::time::timeout(timeout, task).await });
                if done.is_err() {
                    tracing::warn!("a partition worker did not finish in time");
                }
            } else {
                worker.task.abort();
            }
        }
    }

    /// Retention removed records of a partition before they were processed:
    /// the consumer starts at the oldest one kept (`auto.offset.reset`), and
    /// a person should know.
    fn warn_if_removed(
        &self,
        consumer: &BaseConsumer<Self>,
        topic: &str,
        partition: i32,
        next: i64,
    ) {
        if let Ok((low, _)) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(5))
            && low > next
        {
            tracing::warn!(
                topic = self.shared.config.logical(topic),
                partition,
                next,
                low,
                "records removed by retention before they were processed"
            );
        }
    }

    fn dispatch(&self, message: OwnedMessage) {
        let key = (message.topic().to_string(), message.partition());
        let queue = self
            .workers
            .lock()
            .expect("workers lock")
            .get(&key)
            .map(|w| w.queue.clone());
        match queue {
            // A full queue blocks the consumer thread: backpressure.
            Some(queue) => {
                let _ = queue.blocking_send(message);
            }
            None => {
                tracing::debug!(topic = %key.0, partition = key.1, "record of an unassigned partition dropped")
            }
        }
    }
}

async fn stored_offsets<P: Processor>(
    shared: &Shared<P>,
    wanted: &[(String, i32)],
) -> Result<HashMap<(String, i32), i64>, sqlx::Error> {
    let topics: Vec<&str> = wanted.iter().map(|(t, _)| t.as_str()).collect();
    let partitions: Vec<i32> = wanted.iter().map(|(_, p)| *p).collect();
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(&format!(
        "SELECT o.topic, o.partition, o.next_offset FROM {}.consumer_offsets o
           JOIN unnest($2::text[], $3::int[]) AS want(topic, partition)
             ON want.topic = o.topic AND want.partition = o.partition
          WHERE o.consumer_group = $1",
        shared.schema
    ))
    .bind(&shared.config.group)
    .bind(&topics)
    .bind(&partitions)
    .fetch_all(&shared.pool)
    .await?;
    Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
}

fn consumer_thread<P: Processor>(
    shared: Arc<Shared<P>>,
    stop: Arc<AtomicBool>,
    handle: tokio::runtime::Handle,
) {
    // Whatever is dropped on this thread (the processor itself, when this
    // thread holds the last reference) may need the runtime: a connection
    // pool's drop spawns its clean-up.
    let _runtime = handle.enter();
    let context = RuntimeContext {
        shared: shared.clone(),
        handle: handle.clone(),
        workers: Mutex::new(HashMap::new()),
    };
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &shared.config.brokers)
        .set("group.id", &shared.config.group)
        .set("client.id", format!("psymatch-{}", shared.processor.name()))
        // Offsets live in PostgreSQL; the broker's copy is only for tools
        // that show group lag, stored after each database commit.
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Records of transactions not (yet) committed are never read: a
        // transactional relay's pass cut short stays invisible.
        .set("isolation.level", "read_committed")
        .set("statistics.interval.ms", "5000")
        // The partition queues (QUEUE_CAPACITY) are the buffer; librdkafka's
        // own prefetch (64 MiB by default) need only bridge one fetch.
        .set("queued.max.messages.kbytes", "8192");
    match shared.config.group_protocol {
        // The broker decides the assignor and the session timeout.
        GroupProtocol::Consumer => config.set("group.protocol", "consumer"),
        GroupProtocol::Classic => config
            .set("group.protocol", "classic")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000"),
    };
    with_options(&mut config, &shared.config);
    let consumer: BaseConsumer<RuntimeContext<P>> = match config.create_with_context(context) {
        Ok(consumer) => consumer,
        Err(error) => {
            tracing::error!(error = %error, "cannot create the consumer");
            shared
                .status
                .error(format!("cannot create the consumer: {error}"));
            return;
        }
    };
    if !wait_for_broker(&shared, &stop) {
        return;
    }
    let topics: Vec<String> = shared
        .processor
        .inputs()
        .iter()
        .map(|t| shared.config.physical(t))
        .collect();
    let (commands, leases) = std::sync::mpsc::channel::<LeaseCommand>();
    match shared.config.assignment {
        Assignment::Group => {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            if let Err(error) = consumer.subscribe(&names) {
                tracing::error!(error = %error, "cannot subscribe");
                shared.status.error(format!("cannot subscribe: {error}"));
                return;
            }
        }
        Assignment::Lease => {
            let task = lease_loop(shared.clone(), stop.clone(), topics.clone(), commands);
            consumer.context().handle.spawn(task);
        }
    }
    while !stop.load(Ordering::SeqCst) {
        while let Ok(command) = leases.try_recv() {
            consumer.context().apply_lease(&consumer, command);
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let message = message.detach();
                consumer.context().dispatch(message);
            }
            Some(Err(error)) => {
                tracing::warn!(error = %error, "consumer error");
                shared.status.error(format!("consumer: {error}"));
            }
            None => {}
        }
        store_committed(&consumer, &shared);
    }
    // Drain: every worker finishes and commits what it holds.
    let all: Vec<(String, i32)> = consumer
        .context()
        .workers
        .lock()
        .expect("workers lock")
        .keys()
        .cloned()
        .collect();
    consumer.context().stop_workers(&all, true);
    store_committed(&consumer, &shared);
    let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    if shared.config.assignment == Assignment::Group {
        consumer.unsubscribe();
    }
}

/// Waits until the broker answers, saying so in the log (at the first
/// failed try and every 30 s after) and in `/health/status`; readiness
/// fails meanwhile (its broker probe). False if the process is stopped
/// first.
fn wait_for_broker<P: Processor>(shared: &Shared<P>, stop: &AtomicBool) -> bool {
    let brokers = &shared.config.brokers;
    let began = Instant::now();
    let mut told: Option<Instant> = None;
    loop {
        match crate::broker::check(brokers, Duration::from_secs(2)) {
            Ok(()) => {
                if told.is_some() {
                    tracing::info!(
                        brokers = %brokers,
                        waited_secs = began.elapsed().as_secs(),
                        "the Kafka broker answers; consuming"
                    );
                }
                return true;
            }
            Err(error) => {
                if told.is_none_or(|at| at.elapsed() >= Duration::from_secs(30)) {
                    tracing::warn!(
                        brokers = %brokers,
                        reason = %error.reason,
                        "waiting for the Kafka broker"
                    );
                    told = Some(Instant::now());
                }
                shared.status.error(error.to_string());
            }
        }
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// What the lease task tells the consumer thread.
enum LeaseCommand {
    /// Start consuming these partitions (their leases are held).
    Take(Vec<(String, i32)>),
    /// Stop consuming these; `finish`: commit what is held first.
    Release(Vec<(String, i32)>, bool),
}

impl<P: Processor> RuntimeContext<P> {
    fn apply_lease(&self, consumer: &BaseConsumer<Self>, command: LeaseCommand) {
        match command {
            LeaseCommand::Take(partitions) => {
                self.take(consumer, &partitions, |assignment| {
                    consumer.incremental_assign(assignment)
                });
            }
            LeaseCommand::Release(partitions, finish) => {
                self.give_up(&partitions, finish, |released| {
                    consumer.incremental_unassign(released)
                });
            }
        }
    }

    /// Starts consuming `partitions` where PostgreSQL says, not where the
    /// broker's group offsets say.
    fn take(
        &self,
        consumer: &BaseConsumer<Self>,
        partitions: &[(String, i32)],
        assign: impl FnOnce(&TopicPartitionList) -> KafkaResult<()>,
    ) {
        self.shared
            .metrics
            .rebalances
            .with_label_values(&["assign"])
            .inc();
        let positions = self
            .handle
            .block_on(stored_offsets(&self.shared, partitions));
        if let Err(error) = &positions {
            // Without stored offsets every record is read from the start
            // and skipped by the in-transaction offset check.
            tracing::warn!(error = %error, "reading stored offsets failed; starting at the beginning");
        }
        let mut assignment = TopicPartitionList::new();
        for (topic, partition) in partitions {
            let stored = positions
                .as_ref()
                .ok()
                .and_then(|p| p.get(&(topic.clone(), *partition)));
            let offset = match stored {
                Some(next) => {
                    self.warn_if_removed(consumer, topic, *partition, *next);
                    Offset::Offset(*next)
                }
                None => Offset::Beginning,
            };
            let _ = assignment.add_partition_offset(topic, *partition, offset);
            self.start_worker(topic.clone(), *partition);
        }
        if let Err(error) = assign(&assignment) {
            tracing::error!(error = %error, "assign failed");
            self.shared.status.error(format!("assign failed: {error}"));
        }
        let mut assigned = self.shared.status.assigned.lock().expect("status lock");
        for (topic, partition) in partitions {
            assigned.insert((self.shared.config.logical(topic).to_string(), *partition));
        }
        tracing::info!(partitions = partitions.len(), "partitions taken");
    }

    /// Stops consuming `partitions`; `finish` lets their workers commit
    /// what they hold first.
    fn give_up(
        &self,
        partitions: &[(String, i32)],
        finish: bool,
        unassign: impl FnOnce(&TopicPartitionList) -> KafkaResult<()>,
    ) {
        let kind = if finish { "revoke" } else { "lost" };
        self.shared
            .metrics
            .rebalances
            .with_label_values(&[kind])
            .inc();
        self.stop_workers(partitions, finish);
        let _ = unassign(&list_of(partitions));
        let mut assigned = self.shared.status.assigned.lock().expect("status lock");
        for (topic, partition) in partitions {
            assigned.remove(&(self.shared.config.logical(topic).to_string(), *partition));
        }
        tracing::info!(partitions = partitions.len(), kind, "partitions given up");
    }
}

/// The (topic, partition) pairs of a list.
fn partitions_in(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// A list of (topic, partition) pairs without offsets.
fn list_of(partitions: &[(String, i32)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

/// Shares the input partitions among the live instances of this consumer
/// group with PostgreSQL session advisory locks, one per partition, held on
/// a connection of its own. Live instances are counted by that
/// connection's application name; an instance that dies loses its
/// connection and with it its locks, so its partitions move within a tick.
/// (A consumer group moves a killed member's partitions only after its
/// session timeout, 10 s on the local stack: the reason leases remain.)
async fn lease_loop<P: Processor>(
    shared: Arc<Shared<P>>,
    stop: Arc<AtomicBool>,
    topics: Vec<String>,
    commands: std::sync::mpsc::Sender<LeaseCommand>,
) {
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;
    let group_id = Uuid::new_v5(&Uuid::NAMESPACE_OID, shared.config.group.as_bytes());
    let tag = format!("psymatch-lease-{}", &group_id.simple().to_string()[..16]);
    let lock_class = i32::from_be_bytes(group_id.as_bytes()[..4].try_into().expect("four bytes"));
    let lock_key = |entry: &(String, i32)| -> i32 {
        let topic_index = topics.iter().position(|t| *t == entry.0).unwrap_or(0) as i32;
        topic_index * 100_000 + entry.1
    };
    let options = match sqlx::postgres::PgConnectOptions::from_str(&shared.config.database_url) {
        Ok(options) => options.application_name(&tag),
        Err(error) => {
            tracing::error!(error = %error, "DATABASE_URL is not valid");
            shared
                .status
                .error(format!("DATABASE_URL is not valid: {error}"));
            return;
        }
    };
    let mut connection: Option<sqlx::PgConnection> = None;
    let mut held: std::collections::BTreeSet<(String, i32)> = Default::default();
    let mut partitions: Vec<(String, i32)> = Vec::new();
    let mut refreshed: Option<Instant> = None;
    let mut attempt = 0u32;
    while !stop.load(Ordering::SeqCst) {
        if connection.is_none() {
            match options.connect().await {
                Ok(fresh) => {
                    connection = Some(fresh);
                    attempt = 0;
                }
                Err(error) => {
                    attempt += 1;
                    shared.status.error(format!("lease connection: {error}"));
                    tokio::time::sleep(backoff(attempt, Duration::from_secs(5))).await;
                    continue;
                }
            }
        }
        if refreshed.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            match partitions_of(&shared.config.brokers, &topics).await {
                Ok(found) => {
                    partitions = found;
                    refreshed = Some(Instant::now());
                }
                Err(error) => shared.status.error(format!("reading partitions: {error}")),
            }
        }
        let db = connection.as_mut().expect("connected above");
        let tick: Result<(), sqlx::Error> = async {
            let alive: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(&tag)
            .fetch_one(&mut *db)
            .await?;
            let share = partitions.len().div_ceil(alive.max(1) as usize);
            if held.len() > share {
                let extra: Vec<(String, i32)> = held
                    .iter()
                    .rev()
                    .take(held.len() - share)
                    .cloned()
                    .collect();
                for entry in &extra {
                    held.remove(entry);
                }
                let _ = commands.send(LeaseCommand::Release(extra.clone(), true));
                for entry in &extra {
                    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                        .bind(lock_class)
                        .bind(lock_key(entry))
                        .execute(&mut *db)
                        .await?;
                }
            } else if held.len() < share {
                let mut taken = Vec::new();
                for entry in &partitions {
                    if held.len() >= share {
                        break;
                    }
                    if held.contains(entry) {
                        continue;
                    }
                    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                        .bind(lock_class)
                        .bind(lock_key(entry))
                        .fetch_one(&mut *db)
                        .await?;
                    if locked {
                        held.insert(entry.clone());
                        taken.push(entry.clone());
                    }
                }
                if !taken.is_empty() {
                    let _ = commands.send(LeaseCommand::Take(taken));
                }
            }
            Ok(())
        }
        .await;
        if let Err(error) = tick {
            // The connection is gone, and with it every lock: another
            // instance may own these partitions already.
            tracing::warn!(error = %error, "lease connection lost; releasing partitions");
            shared
                .status
                .error(format!("lease connection lost: {error}"));
            if !held.is_empty() {
                let lost: Vec<(String, i32)> = std::mem::take(&mut held).into_iter().collect();
                let _ = commands.send(LeaseCommand::Release(lost, false));
            }
            connection = None;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Shutdown: the consumer thread drains the workers; the locks go with
    // the connection.
    if let Some(db) = connection {
        let _ = db.close().await;
    }
}

/// The partitions of `topics` on the broker.
async fn partitions_of(brokers: &str, topics: &[String]) -> Result<Vec<(String, i32)>, String> {
    let brokers = brokers.to_string();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for topic in &topics {
            let metadata = client
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    out.push((t.name().to_string(), p.id()));
                }
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| e.to_string())?
}

fn store_committed<P: Processor>(consumer: &BaseConsumer<RuntimeContext<P>>, shared: &Shared<P>) {
    let pending: Vec<(String, i32, i64)> =
        std::mem::take(&mut *shared.committed.lock().expect("committed lock"));
    for (topic, partition, next) in pending {
        // A partition revoked meanwhile answers with a state error: harmless.
        let _ = consumer.store_offset(&topic, partition, next - 1);
    }
}

async fn partition_worker<P: Processor>(
    shared: Arc<Shared<P>>,
    mut queue: mpsc::Receiver<OwnedMessage>,
    topic: String,
    partition: i32,
) {
    let mut batch = Vec::with_capacity(shared.config.batch_size);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < shared.config.batch_size {
            match queue.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        let mut attempt = 0u32;
        loop {
            let span = tracing::info_span!(
                "batch",
                processor = shared.processor.name(),
                topic = shared.config.logical(&topic),
                partition,
            );
            let run = process_batch(&shared, &batch, attempt > 0);
            match tracing::Instrument::instrument(run, span).await {
                Ok(()) => break,
                Err(BatchError::Transient(reason)) => {
                    attempt += 1;
                    shared.metrics.retries.with_label_values(&["batch"]).inc();
                    shared.status.error(reason.clone());
                    let pause = backoff(attempt, shared.config.max_backoff);
                    tracing::warn!(
                        attempt,
                        reason,
                        pause_ms = pause.as_millis() as u64,
                        "batch failed; retrying"
                    );
                    tokio::time::sleep(pause).await;
                }
            }
        }
        batch.clear();
        shared.relay_wake.notify_one();
    }
}

/// A batch hook's error: the batch is retried (an invalid batch has no
/// single record to dead-letter, so a refusal there is retried too and
/// reported).
fn batch_error(error: ProcessError) -> BatchError {
    match error {
        ProcessError::Transient(reason) => BatchError::Transient(reason),
        ProcessError::Invalid { code, reason } => {
            BatchError::Transient(format!("batch hook refused the batch ({code}): {reason}"))
        }
    }
}

/// Applies the raw librdkafka options of the configuration last, so that
/// they override what the runtime sets.
fn with_options(config: &mut ClientConfig, runtime: &RuntimeConfig) {
    for (key, value) in &runtime.kafka_options {
        config.set(key, value);
    }
}

/// Capped exponential backoff with full jitter.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(50).saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let ceiling = base.min(cap).as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(ceiling / 2..=ceiling))
}

enum BatchError {
    Transient(String),
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        BatchError::Transient(format!("database: {error}"))
    }
}

/// A record of the batch after decoding: to process, or to dead-letter.
enum Decoded {
    Good(Box<Incoming>),
    Bad(ErrorCode, String),
    /// A key without a value on a compacted topic: erasure, nothing to do.
    Tombstone,
}

fn decode_error(error: codec::ReadError) -> Result<(ErrorCode, String), BatchError> {
    use codec::ReadError::*;
    match error {
        NotWireFormat => Ok((ErrorCode::NotWireFormat, error.to_string())),
        UnknownSchema(..) => Ok((ErrorCode::UnknownSchema, error.to_string())),
        Body(reason) => Ok((ErrorCode::UndecodableBody, reason)),
        Registry(reason) => Err(BatchError::Transient(format!("registry: {reason}"))),
    }
}

async fn decode<P: Processor>(
    shared: &Shared<P>,
    message: &OwnedMessage,
) -> Result<Decoded, BatchError> {
    let logical = shared.config.logical(message.topic()).to_string();
    let Some(schema) = shared.contracts.schemas.get(&logical) else {
        return Ok(Decoded::Bad(
            ErrorCode::NotAnEnvelope,
            format!("no schema for topic {logical}"),
        ));
    };
    let Some(bytes) = message.payload() else {
        if shared.compacted.contains(&logical) && message.key().is_some() {
            return Ok(Decoded::Tombstone);
        }
        return Ok(Decoded::Bad(
            ErrorCode::NotWireFormat,
            "the record has no value".into(),
        ));
    };
    if bytes.len() > shared.config.max_record_bytes {
        return Ok(Decoded::Bad(
            ErrorCode::Oversize,
            format!(
                "{} bytes; at most {} are accepted",
                bytes.len(),
                shared.config.max_record_bytes
            ),
        ));
    }
    let value = match shared.codec.decode_as(bytes, &schema.schema).await {
        Ok(value) => value,
        Err(error) => {
            let (code, reason) = decode_error(error)?;
            return Ok(Decoded::Bad(code, reason));
        }
    };
    let key = message
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let spec = shared
        .contracts
        .topics
        .topic(&logical)
        .expect("topics with schemas are declared");
    let (envelope, payload) = match crate::envelope::check(schema, &spec.key_fields, &key, value) {
        Ok(checked) => checked,
        Err((code, reason)) => return Ok(Decoded::Bad(code, reason)),
    };
    Ok(Decoded::Good(Box::new(Incoming {
        topic: logical,
        partition: message.partition(),
        offset: message.offset(),
        key,
        envelope,
        payload,
    })))
}

/// Processes a batch in one transaction. `careful`: run each record under a
/// savepoint, so that a record the processor refuses leaves no state behind
/// (the fast path skips savepoints and falls back to this when a record is
/// refused).
/// Processes one batch of a partition in one transaction.
///
/// Records below the stored offset were committed by an earlier owner and
/// are skipped. A batch may start after the stored offset: Kafka delivers a
/// partition in order from where it was positioned, so offsets it skips do
/// not exist for this consumer (transaction markers, aborted transactions,
/// compaction, retention).
async fn process_batch<P: Processor>(
    shared: &Shared<P>,
    batch: &[OwnedMessage],
    careful: bool,
) -> Result<(), BatchError> {
    let started = Instant::now();
    let first = &batch[0];
    let (topic, partition) = (first.topic().to_string(), first.partition());
    let mut tx = shared.pool.begin().await?;
    let schema = &shared.schema;
    sqlx::query(&format!(
        "INSERT INTO {schema}.consumer_offsets (consumer_group, topic, partition, next_offset)
         VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING"
    ))
    .bind(&shared.config.group)
    .bind(&topic)
    .bind(partition)
    .execute(&mut *tx)
    .await?;
    let next: i64 = sqlx::query_scalar(&format!(
        "SELECT next_offset FROM {schema}.consumer_offsets
          WHERE consumer_group = $1 AND topic = $2 AND partition = $3 FOR UPDATE"
    ))
    .bind(&shared.config.group)
    .bind(&topic)
    .bind(partition)
    .fetch_one(&mut *tx)
    .await?;
    let fresh: Vec<&OwnedMessage> = batch.iter().filter(|m| m.offset() >= next).collect();
    let Some(last) = fresh.last().map(|m| m.offset()) else {
        // Everything here was committed by an earlier owner.
        return Ok(());
    };
    // Where a batch's time goes, for the debug log (ms).
    let mut phases = Phases::default();
    let mut phase = Instant::now();
    let mut lap = |into: &mut u64| {
        *into += phase.elapsed().as_millis() as u64;
        phase = Instant::now();
    };
    let mut decoded = Vec::with_capacity(fresh.len());
    for message in &fresh {
        decoded.push(decode(shared, message).await?);
    }
    // Drop inputs processed before (same event id, e.g. a relay's re-publish).
    let ids: Vec<Uuid> = decoded
        .iter()
        .filter_map(|d| match d {
            Decoded::Good(record) => Some(record.envelope.event_id),
            Decoded::Bad(..) | Decoded::Tombstone => None,
        })
        .collect();
    let exactly = shared.config.guarantee == Guarantee::EffectivelyOnce;
    let new_ids: HashSet<Uuid> = if exactly {
        sqlx::query_scalar(&format!(
            "INSERT INTO {schema}.processed_events (event_id) SELECT unnest($1::uuid[])
             ON CONFLICT DO NOTHING RETURNING event_id"
        ))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    } else {
        ids.iter().copied().collect()
    };

    lap(&mut phases.decode);
    let mut outgoing: Vec<Pending> = Vec::new();
    let mut seen = HashSet::new();
    let now = chrono::Utc::now();
    // First the records to process (bad ones dead-lettered, duplicates
    // skipped), so the processor can prepare for all of them at once.
    let mut work: Vec<(&OwnedMessage, Incoming)> = Vec::with_capacity(fresh.len());
    for (message, item) in fresh.iter().zip(decoded) {
        let logical = shared.config.logical(message.topic()).to_string();
        shared
            .metrics
            .consumed
            .with_label_values(&[logical.as_str()])
            .inc();
        let record = match item {
            Decoded::Bad(code, reason) => {
                outgoing.push(Pending::Done(dead_letter(shared, message, code, &reason)));
                continue;
            }
            Decoded::Tombstone => continue,
            Decoded::Good(record) => record,
        };
        let id = record.envelope.event_id;
        if !new_ids.contains(&id) || !seen.insert(id) {
            shared
                .metrics
                .duplicates
                .with_label_values(&[logical.as_str()])
                .inc();
            continue;
        }
        work.push((message, *record));
    }
    let mut scratch = Scratch::default();
    if !work.is_empty() {
        let records: Vec<&Incoming> = work.iter().map(|(_, r)| r).collect();
        let mut batch_ctx = batch_context(shared, &mut tx, &mut scratch, &work, now, "begin");
        shared
            .processor
            .begin_batch(&mut batch_ctx, &records)
            .await
            .map_err(batch_error)?;
        outgoing.extend(
            std::mem::take(&mut batch_ctx.emitted)
                .into_iter()
                .map(Pending::Batch),
        );
    }
    lap(&mut phases.begin);
    for (message, record) in &work {
        let id = record.envelope.event_id;
        tracing::debug!(
            offset = message.offset(),
            event_id = %id,
            event_type = %record.envelope.event_type,
            correlation_id = record.envelope.correlation_id.as_deref().unwrap_or(""),
            "processing"
        );
        let timer = Instant::now();
        if careful {
            sqlx::query("SAVEPOINT record").execute(&mut *tx).await?;
        }
        let mut ctx = Context {
            db: &mut tx,
            pool: &shared.pool,
            scratch: &mut scratch,
            contracts: shared.contracts,
            producer: shared.processor.name(),
            source: record,
            now,
            emitted: Vec::new(),
            tombstones: Vec::new(),
        };
        let result = shared.processor.process(&mut ctx, record).await;
        let emitted = std::mem::take(&mut ctx.emitted);
        let tombstones = std::mem::take(&mut ctx.tombstones);
        shared
            .metrics
            .process_seconds
            .observe(timer.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                if careful {
                    sqlx::query("RELEASE SAVEPOINT record")
                        .execute(&mut *tx)
                        .await?;
                }
                for (topic, key, envelope) in emitted {
                    outgoing.push(Pending::Record(topic, key, envelope));
                }
                for (topic, key, event_id) in tombstones {
                    outgoing.push(Pending::Done(Outgoing {
                        event_id,
                        topic: shared.config.physical(&topic),
                        key: Some(key),
                        value: None,
                        headers: Vec::new(),
                    }));
                }
            }
            Err(ProcessError::Transient(reason)) => return Err(BatchError::Transient(reason)),
            Err(ProcessError::Invalid { code, reason }) => {
                if !careful {
                    // Undo this record's state changes: redo the batch with savepoints.
                    return Err(BatchError::Transient(format!(
                        "record refused ({code}); redoing the batch record by record"
                    )));
                }
                sqlx::query("ROLLBACK TO SAVEPOINT record")
                    .execute(&mut *tx)
                    .await?;
                tracing::warn!(code = %code, offset = message.offset(), event_id = %id, "record refused; dead-lettered");
                outgoing.push(Pending::Done(dead_letter(shared, message, code, &reason)));
            }
        }
    }
    lap(&mut phases.process);
    if !work.is_empty() {
        let mut batch_ctx = batch_context(shared, &mut tx, &mut scratch, &work, now, "finish");
        shared
            .processor
            .finish_batch(&mut batch_ctx)
            .await
            .map_err(batch_error)?;
        outgoing.extend(
            std::mem::take(&mut batch_ctx.emitted)
                .into_iter()
                .map(Pending::Batch),
        );
    }
    lap(&mut phases.finish);
    let mut outputs = 0;
    let mut unpublished = Vec::new();
    let mut stored: Vec<(i64, Outgoing)> = Vec::new();
    let mut chunks = encode_all(shared, outgoing, now).await?;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        outputs += chunk.len();
        if exactly {
            // This chunk goes in while the next ones are being encoded.
            let ids = insert_outbox(shared, &mut tx, &chunk).await?;
            stored.extend(ids.into_iter().zip(chunk));
        } else {
            unpublished.extend(chunk);
        }
    }
    if !exactly {
        // At least once: the broker acknowledges the outputs before the
        // offsets commit; a crash in between repeats them.
        publish(shared, &shared.producer, &unpublished)
            .await
            .map_err(|failed| BatchError::Transient(failed.reason))?;
    }
    sqlx::query(&format!(
        "UPDATE {schema}.consumer_offsets SET next_offset = $4, updated_at = now()
          WHERE consumer_group = $1 AND topic = $2 AND partition = $3"
    ))
    .bind(&shared.config.group)
    .bind(&topic)
    .bind(partition)
    .bind(last + 1)
    .execute(&mut *tx)
    .await?;
    lap(&mut phases.write);
    let commit = Instant::now();
    tx.commit().await?;
    shared.processor.batch_committed(&mut scratch);
    {
        let mut unsent = shared.unsent.lock().expect("unsent lock");
        if unsent.len() + stored.len() <= UNSENT_MAX {
            unsent.extend(stored);
        }
    }
    shared
        .metrics
        .commit_seconds
        .observe(commit.elapsed().as_secs_f64());
    shared.metrics.batch_records.observe(fresh.len() as f64);
    shared
        .committed
        .lock()
        .expect("committed lock")
        .push((topic.clone(), partition, last + 1));
    tracing::debug!(
        topic,
        partition,
        records = fresh.len(),
        outputs,
        ms = started.elapsed().as_millis() as u64,
        decode_ms = phases.decode,
        begin_ms = phases.begin,
        process_ms = phases.process,
        finish_ms = phases.finish,
        write_ms = phases.write,
        commit_ms = commit.elapsed().as_millis() as u64,
        "batch committed"
    );
    Ok(())
}

/// Milliseconds a batch spent in each phase (the debug log's
/// "batch committed"): decoding and deduplicating its records, the
/// processor's `begin_batch`, its records, its `finish_batch`, and
/// encoding its outputs into the outbox and writing the offsets.
#[derive(Default)]
struct Phases {
    decode: u64,
    begin: u64,
    process: u64,
    finish: u64,
    write: u64,
}

/// An output of a batch on its way to the outbox: final already (a dead
/// letter, a tombstone), a record to encode, or a batch hook's record
/// still in JSON.
enum Pending {
    Done(Outgoing),
    Record(String, String, Envelope),
    Batch(crate::processor::Deferred),
}

/// Fewer outputs than this are encoded on the batch's own thread: other
/// threads pay off only for many.
const PARALLEL_OUTPUTS: usize = 256;
/// Outputs per chunk when encoding on two threads: the outbox takes each
/// chunk while the next ones are encoded.
const CHUNK_OUTPUTS: usize = 500;

/// A chunk of encoded outputs, or why encoding failed.
type Chunk = Result<Vec<Outgoing>, BatchError>;

/// A batch's outputs, encoded in order, in chunks as they are ready.
enum Chunks {
    /// Encoded on the batch's own thread (few outputs).
    Ready(Option<Chunk>),
    /// From the encoding threads, one receiver per chunk, in order.
    Arriving(std::vec::IntoIter<tokio::sync::oneshot::Receiver<Chunk>>),
}

impl Chunks {
    /// The next chunk in order; `None` after the last.
    async fn next(&mut self) -> Option<Chunk> {
        match self {
            Chunks::Ready(chunk) => chunk.take(),
            Chunks::Arriving(receivers) => {
                let chunk = receivers.next()?.await;
                Some(chunk.unwrap_or_else(|_| {
                    Err(BatchError::Transient("an encoding thread stopped".into()))
                }))
            }
        }
    }
}

/// Encodes a batch's outputs, in order. Only the schema ids may need the
/// registry; many outputs (thousands of decisions at the end of a
/// matcher's batch) are converted and encoded on two threads, chunk by
/// chunk, so the outbox can take the first chunks while the rest are
/// encoded.
async fn encode_all<P: Processor>(
    shared: &Shared<P>,
    pending: Vec<Pending>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Chunks, BatchError> {
    let mut writers: HashMap<String, Writer> = HashMap::new();
    for item in &pending {
        let topic = match item {
            Pending::Done(_) => continue,
            Pending::Record(topic, ..) => topic.as_str(),
            Pending::Batch(deferred) => deferred.topic.as_str(),
        };
        if writers.contains_key(topic) {
            continue;
        }
        let (_, schema) = shared
            .contracts
            .topic(topic)
            .map_err(|e| BatchError::Transient(e.to_string()))?;
        let physical = shared.config.physical(topic);
        let (id, datum) = shared.codec.writer(&physical, schema).await.map_err(|e| {
            shared
                .metrics
                .errors
                .with_label_values(&[ErrorCode::Registry.as_str()])
                .inc();
            BatchError::Transient(e.to_string())
        })?;
        writers.insert(
            topic.to_string(),
            Writer {
                id,
                datum,
                schema,
                physical,
            },
        );
    }
    let encoder = Encoder {
        writers: std::sync::Arc::new(writers),
        contracts: shared.contracts,
        producer: shared.processor.name(),
        now,
    };
    if pending.len() < PARALLEL_OUTPUTS {
        let chunk = pending.into_iter().map(|p| encoder.encode(p)).collect();
        return Ok(Chunks::Ready(Some(chunk)));
    }
    // Two lanes take every other chunk, so the first chunks are ready first.
    let mut receivers = Vec::new();
    let mut lanes: [Vec<_>; 2] = [Vec::new(), Vec::new()];
    let mut pending = pending.into_iter().peekable();
    while pending.peek().is_some() {
        let (sender, receiver) = tokio::sync::oneshot::channel::<Chunk>();
        let chunk: Vec<Pending> = pending.by_ref().take(CHUNK_OUTPUTS).collect();
        lanes[receivers.len() % 2].push((sender, chunk));
        receivers.push(receiver);
    }
    for lane in lanes {
        let encoder = encoder.clone();
        tokio::task::spawn_blocking(move || {
            for (sender, chunk) in lane {
                let encoded: Chunk = chunk.into_iter().map(|p| encoder.encode(p)).collect();
                let failed = encoded.is_err();
                // The batch stops reading at the first failure.
                if sender.send(encoded).is_err() || failed {
                    break;
                }
            }
        });
    }
    Ok(Chunks::Arriving(receivers.into_iter()))
}

/// What encoding a batch's outputs needs, shared by the encoding threads.
#[derive(Clone)]
struct Encoder {
    writers: std::sync::Arc<HashMap<String, Writer>>,
    contracts: &'static crate::contracts::Contracts,
    producer: &'static str,
    now: chrono::DateTime<chrono::Utc>,
}

impl Encoder {
    fn encode(&self, item: Pending) -> Result<Outgoing, BatchError> {
        let (topic, key, envelope) = match item {
            Pending::Done(outgoing) => return Ok(outgoing),
            Pending::Record(topic, key, envelope) => (topic, key, envelope),
            Pending::Batch(deferred) => deferred
                .settle(self.contracts, self.producer, self.now)
                .map_err(batch_error)?,
        };
        let writer = &self.writers[topic.as_str()];
        let event_id = envelope.event_id;
        let headers = envelope
            .headers()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Some(v)))
            .collect();
        // Moved, not cloned: a payload can be large (an inquiry's patients).
        let value = envelope
            .into_avro(writer.schema)
            .map_err(|e| BatchError::Transient(e.to_string()))?;
        let bytes = crate::codec::write(writer.id, &writer.datum, value)
            .map_err(|e| BatchError::Transient(e.to_string()))?;
        Ok(Outgoing {
            event_id,
            topic: writer.physical.clone(),
            key: Some(key),
            value: Some(bytes),
            headers,
        })
    }
}

/// What encoding the records of one topic needs.
struct Writer {
    id: u32,
    datum: std::sync::Arc<apache_avro::writer::datum::GenericDatumWriter<'static>>,
    schema: &'static crate::schemas::TopicSchema,
    physical: String,
}

/// The original record with headers saying why, for `<topic>.dlq`.
fn dead_letter<P: Processor>(
    shared: &Shared<P>,
    message: &OwnedMessage,
    code: ErrorCode,
    reason: &str,
) -> Outgoing {
    let logical = shared.config.logical(message.topic()).to_string();
    shared
        .metrics
        .dead_letters
        .with_label_values(&[logical.as_str(), code.as_str()])
        .inc();
    shared
        .metrics
        .errors
        .with_label_values(&[code.as_str()])
        .inc();
    shared.status.error(format!(
        "{code} on {logical}/{}@{}: {reason}",
        message.partition(),
        message.offset()
    ));
    let mut headers: Vec<(String, Option<String>)> = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    (
                        h.key.to_string(),
                        h.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let source = format!(
        "{}/{}/{}",
        message.topic(),
        message.partition(),
        message.offset()
    );
    headers.extend([
        (
            "psymatch.error.code".to_string(),
            Some(code.as_str().to_string()),
        ),
        (
            "psymatch.error.class".to_string(),
            Some(code.class().to_string()),
        ),
        (
            "psymatch.error.message".to_string(),
            Some(reason.to_string()),
        ),
        (
            "psymatch.processor".to_string(),
            Some(shared.processor.name().to_string()),
        ),
        (
            "psymatch.source.topic".to_string(),
            Some(message.topic().to_string()),
        ),
        (
            "psymatch.source.partition".to_string(),
            Some(message.partition().to_string()),
        ),
        (
            "psymatch.source.offset".to_string(),
            Some(message.offset().to_string()),
        ),
        (
            "psymatch.error.timestamp".to_string(),
            Some(chrono::Utc::now().to_rfc3339()),
        ),
    ]);
    Outgoing {
        event_id: Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("dlq/{}/{source}", shared.config.group).as_bytes(),
        ),
        topic: format!("{}.dlq", message.topic()),
        key: message
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        value: message.payload().map(<[u8]>::to_vec),
        headers,
    }
}

/// The context of a batch hook; `work` is not empty.
fn batch_context<'a, P: Processor>(
    shared: &'a Shared<P>,
    tx: &'a mut PgConnection,
    scratch: &'a mut Scratch,
    work: &[(&OwnedMessage, Incoming)],
    now: chrono::DateTime<chrono::Utc>,
    phase: &'static str,
) -> BatchContext<'a> {
    BatchContext {
        db: tx,
        pool: &shared.pool,
        scratch,
        contracts: shared.contracts,
        producer: shared.processor.name(),
        now,
        batch_id: work
            .last()
            .map(|(_, r)| r.envelope.event_id)
            .unwrap_or_default(),
        phase,
        emitted: Vec::new(),
    }
}

/// Inserts `rows` into the outbox; their ids, in the order of `rows`.
async fn insert_outbox<P: Processor>(
    shared: &Shared<P>,
    tx: &mut sqlx::PgConnection,
    rows: &[Outgoing],
) -> Result<Vec<i64>, BatchError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let topics: Vec<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.key.as_deref()).collect();
    let values: Vec<Option<&[u8]>> = rows.iter().map(|r| r.value.as_deref()).collect();
    let headers: Vec<String> = rows
        .iter()
        .map(|r| Json::Array(r.headers.iter().map(|(k, v)| json!([k, v])).collect()).to_string())
        .collect();
    let inserted: Vec<(i64, Uuid)> = sqlx::query_as(&format!(
        "INSERT INTO {}.outbox (event_id, topic, key, value, headers)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[])
         RETURNING id, event_id",
        shared.schema
    ))
    .bind(&ids)
    .bind(&topics)
    .bind(&keys)
    .bind(&values)
    .bind(&headers)
    .fetch_all(&mut *tx)
    .await?;
    // Matched by event id: the order of RETURNING is not promised.
    let by_event: HashMap<Uuid, i64> = inserted.into_iter().map(|(id, e)| (e, id)).collect();
    rows.iter()
        .map(|row| {
            by_event.get(&row.event_id).copied().ok_or_else(|| {
                BatchError::Transient(format!("outbox row of event {} not returned", row.event_id))
            })
        })
        .collect()
}

/// Most encoded outbox rows kept in memory for the relay ([`Shared`]'s
/// `unsent`): beyond this (a broker away for long) the relay reads them.
const UNSENT_MAX: usize = 100_000;

/// Most outbox rows in one relay pass.
const RELAY_PASS_MAX: usize = 5_000;

/// Records the broker did not all acknowledge: how many at the start were
/// (in order), and why the next one failed.
struct Unpublished {
    acknowledged: usize,
    reason: String,
}

/// Publishes records and waits until the broker acknowledged every one.
async fn publish<P: Processor>(
    shared: &Shared<P>,
    producer: &FutureProducer,
    records: &[Outgoing],
) -> Result<(), Unpublished> {
    let sends = records.iter().map(|record| {
        let mut owned = OwnedHeaders::new();
        for (name, value) in &record.headers {
            owned = owned.insert(Header {
                key: name,
                value: value.as_deref().map(str::as_bytes),
            });
        }
        let mut future: FutureRecord<'_, str, [u8]> =
            FutureRecord::to(&record.topic).headers(owned);
        if let Some(key) = &record.key {
            future = future.key(key.as_str());
        }
        if let Some(value) = &record.value {
            future = future.payload(value.as_slice());
        }
        producer.send(future, Duration::from_secs(30))
    });
    let results = futures::future::join_all(sends).await;
    let mut per_topic: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failed = None;
    for (n, (result, record)) in results.iter().zip(records).enumerate() {
        if let Err((error, _)) = result {
            shared
                .metrics
                .errors
                .with_label_values(&[ErrorCode::Broker.as_str()])
                .inc();
            failed = Some(Unpublished {
                acknowledged: n,
                reason: format!("publishing to {}: {error}", record.topic),
            });
            break;
        }
        *per_topic
            .entry(shared.config.logical(&record.topic))
            .or_default() += 1;
    }
    for (topic, count) in per_topic {
        shared
            .metrics
            .produced
            .with_label_values(&[topic])
            .inc_by(count);
    }
    failed.map_or(Ok(()), Err)
}

/// Publishes `records` in one Kafka transaction: all of them become
/// readable (read_committed) or none. A failed transaction is aborted and
/// counts as nothing acknowledged; a producer that cannot abort (fenced by
/// another replica's relay, or in a fatal state) is replaced next pass.
async fn publish_in_transaction<P: Processor>(
    shared: &Shared<P>,
    records: &[Outgoing],
) -> Result<(), Unpublished> {
    let none = |reason: String| Unpublished {
        acknowledged: 0,
        reason,
    };
    let producer = transactional_producer(shared).await.map_err(none)?;
    let p = producer.clone();
    if let Err(reason) = blocking(move || p.begin_transaction()).await {
        *shared.transactional.lock().await = None;
        return Err(none(format!("beginning a transaction: {reason}")));
    }
    let outcome = match publish(shared, &producer, records).await {
        Ok(()) => {
            let p = producer.clone();
            blocking(move || p.commit_transaction(Duration::from_secs(30)))
                .await
                .map_err(|reason| format!("committing the transaction: {reason}"))
        }
        Err(failed) => Err(failed.reason),
    };
    if let Err(reason) = outcome {
        let p = producer.clone();
        if blocking(move || p.abort_transaction(Duration::from_secs(30)))
            .await
            .is_err()
        {
            *shared.transactional.lock().await = None;
        }
        return Err(none(reason));
    }
    Ok(())
}

/// The relay's transactional producer, made and initialised (which fences
/// any earlier producer of the same transactional id and aborts its open
/// transaction) on first use.
async fn transactional_producer<P: Processor>(
    shared: &Shared<P>,
) -> Result<FutureProducer, String> {
    let mut slot = shared.transactional.lock().await;
    if let Some(producer) = slot.as_ref() {
        return Ok(producer.clone());
    }
    let mut config = crate::broker::producer_config(
        &shared.config.brokers,
        &format!("psymatch-{}-relay", shared.schema),
    );
    config.set(
        "transactional.id",
        format!("psymatch-relay-{}-{}", shared.schema, shared.config.group),
    );
    with_options(&mut config, &shared.config);
    let producer: FutureProducer = config
        .create()
        .map_err(|e| format!("creating the transactional producer: {e}"))?;
    let p = producer.clone();
    blocking(move || p.init_transactions(Duration::from_secs(30)))
        .await
        .map_err(|reason| format!("initialising transactions: {reason}"))?;
    *slot = Some(producer.clone());
    Ok(producer)
}

/// Runs a blocking rdkafka call off the async workers.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> KafkaResult<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Publishes the outbox in order until `drained` is set and the outbox is
/// empty; one relay per processor
/// schema at a time (advisory lock), so replicas never interleave.
async fn relay_loop<P: Processor>(shared: Arc<Shared<P>>, stop: Arc<AtomicBool>) {
    let mut attempt = 0u32;
    let mut cleaned: Option<Instant> = None;
    loop {
        // Processed ids are needed only as long as a duplicate can arrive.
        if cleaned.is_none_or(|at| at.elapsed() > Duration::from_secs(600)) {
            match forget_processed(&shared).await {
                Ok(removed) if removed > 0 => {
                    tracing::info!(removed, "old processed event ids removed")
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %error, "removing old processed event ids failed")
                }
            }
            cleaned = Some(Instant::now());
        }
        let stopping = stop.load(Ordering::SeqCst);
        match relay_pass(&shared).await {
            Ok(0) if stopping => break,
            Ok(0) => {
                attempt = 0;
                tokio::select! {
                    _ = shared.relay_wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            Ok(_) => attempt = 0,
            Err(reason) => {
                attempt += 1;
                shared.metrics.retries.with_label_values(&["relay"]).inc();
                shared.status.error(reason.clone());
                tracing::warn!(attempt, reason, "relay pass failed; retrying");
                if stopping && attempt > 3 {
                    break;
                }
                tokio::time::sleep(backoff(attempt, shared.config.max_backoff)).await;
            }
        }
    }
}

/// Deletes processed event ids older than the dedupe retention.
async fn forget_processed<P: Processor>(shared: &Shared<P>) -> Result<u64, sqlx::Error> {
    // A retention too long to subtract from now means: keep everything.
    let Some(cutoff) = chrono::Duration::from_std(shared.config.dedupe_retention)
        .ok()
        .and_then(|retention| chrono::Utc::now().checked_sub_signed(retention))
    else {
        return Ok(0);
    };
    let result = sqlx::query(&format!(
        "DELETE FROM {}.processed_events WHERE processed_at < $1",
        shared.schema
    ))
    .bind(cutoff)
    .execute(&shared.pool)
    .await?;
    Ok(result.rows_affected())
}

/// One pass: publish up to [`RELAY_PASS_MAX`] outbox rows (fewer after a
/// failed pass) and delete the acknowledged ones.
async fn relay_pass<P: Processor>(shared: &Shared<P>) -> Result<usize, String> {
    let failed = |e: sqlx::Error| format!("relay database: {e}");
    let mut tx = shared.pool.begin().await.map_err(failed)?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
        .bind(format!("psymatch.relay.{}", shared.schema))
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
    if !locked {
        return Ok(0);
    }
    let ids: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT id FROM {}.outbox ORDER BY id LIMIT {}",
        shared.schema,
        shared.relay_limit.load(Ordering::SeqCst)
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(failed)?;
    shared.metrics.outbox_pending.set(ids.len() as i64);
    if ids.is_empty() {
        return Ok(0);
    }
    let mut rows: Vec<(i64, Option<Outgoing>)> = {
        let mut unsent = shared.unsent.lock().expect("unsent lock");
        // Rows before the first unpublished one were published by another
        // replica's relay: forgotten.
        *unsent = unsent.split_off(&ids[0]);
        ids.iter().map(|id| (*id, unsent.remove(id))).collect()
    };
    let missing: Vec<i64> = rows
        .iter()
        .filter(|(_, row)| row.is_none())
        .map(|(id, _)| *id)
        .collect();
    if !missing.is_empty() {
        type Row = (i64, Uuid, String, Option<String>, Option<Vec<u8>>, String);
        let read: Vec<Row> = sqlx::query_as(&format!(
            "SELECT id, event_id, topic, key, value, headers FROM {}.outbox WHERE id = ANY($1)",
            shared.schema
        ))
        .bind(&missing)
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
        let mut read: HashMap<i64, Outgoing> = read
            .into_iter()
            .map(|(id, event_id, topic, key, value, headers)| {
                let headers = serde_json::from_str::<Vec<(String, Option<String>)>>(&headers)
                    .unwrap_or_default();
                let row = Outgoing {
                    event_id,
                    topic,
                    key,
                    value,
                    headers,
                };
                (id, row)
            })
            .collect();
        for (id, row) in rows.iter_mut().filter(|(_, row)| row.is_none()) {
            *row = read.remove(id);
        }
    }
    // Rows are deleted only by the relay holding the lock: each one is here.
    let (ids, outgoing): (Vec<i64>, Vec<Outgoing>) = rows
        .into_iter()
        .filter_map(|(id, row)| row.map(|row| (id, row)))
        .unzip();
    // The rows the broker acknowledged, in order, go even when a later one
    // failed: the next pass starts after them (a row acknowledged after the
    // failure is published again; consumers drop it by its event id).
    let published = match shared.config.relay {
        Relay::Idempotent => publish(shared, &shared.producer, &outgoing).await,
        Relay::Transactional => publish_in_transaction(shared, &outgoing).await,
    };
    let acknowledged = match &published {
        Ok(()) => outgoing.len(),
        Err(failed) => failed.acknowledged,
    };
    let limit = &shared.relay_limit;
    let next = match &published {
        Ok(()) => (limit.load(Ordering::SeqCst) * 2).min(RELAY_PASS_MAX),
        Err(_) => (limit.load(Ordering::SeqCst) / 4).max(50),
    };
    limit.store(next, Ordering::SeqCst);
    sqlx::query(&format!(
        "DELETE FROM {}.outbox WHERE id = ANY($1)",
        shared.schema
    ))
    .bind(&ids[..acknowledged])
    .execute(&mut *tx)
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    published.map(|()| outgoing.len()).map_err(|failed| {
        format!(
            "{} ({acknowledged} of {} published; next pass at most {next})",
            failed.reason,
            outgoing.len()
        )
    })
}
