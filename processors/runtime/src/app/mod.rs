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
//!
//! The stages, one module each: `consumer` (the thread, rebalances,
//! stored offsets), `lease` (partition ownership through PostgreSQL),
//! `worker` (one task per partition), `batch` (one batch's
//! transaction, phase by phase), `decode`, `dead_letter`, `encode`,
//! `outbox`, `relay` and `retry`.

mod batch;
mod consumer;
mod dead_letter;
mod decode;
mod encode;
mod lease;
mod outbox;
mod relay;
mod retry;
mod worker;

pub use retry::backoff;

use consumer::consumer_thread;
use relay::{RELAY_PASS_MAX, relay_loop};

use crate::config::RuntimeConfig;
use crate::contracts::Contracts;
use crate::processor::{Outgoing, Processor};
use crate::surface::{Metrics, Status, Surface};
use crate::{codec, db, telemetry};
use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::producer::FutureProducer;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

/// Runs `processor` with configuration from the environment until SIGTERM
/// or SIGINT, then drains and exits.
pub async fn run<P: Processor>(processor: P) -> anyhow::Result<()> {
    telemetry::init(processor.name());
    let config = RuntimeConfig::from_env(processor.name())?;
    refuse_unknown_settings(&processor)?;
    run_with(processor, config, telemetry::shutdown_signal()).await
}

/// Refuses the process environment's variables that look like settings of
/// `processor` (or of psymatch) but are none, once every setting has been
/// read (see [`crate::config::refuse_unknown`]).
pub fn refuse_unknown_settings<P: Processor>(processor: &P) -> anyhow::Result<()> {
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    crate::config::refuse_unknown(processor.name(), &env, processor.settings_prefixes())
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

    let surface = Arc::new(Surface {
        processor: name.to_string(),
        group: shared.config.group.clone(),
        metrics,
        status,
        probes: crate::surface::dependency_probes(
            shared.pool.clone(),
            shared.config.registry_url.clone(),
            shared.config.brokers.clone(),
        ),
        started: Instant::now(),
    });
    let (http_address, http) = crate::surface::serve(surface, &shared.config.http_listen).await?;
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

/// Applies the raw librdkafka options of the configuration last, so that
/// they override what the runtime sets.
fn with_options(config: &mut ClientConfig, runtime: &RuntimeConfig) {
    for (key, value) in &runtime.kafka_options {
        config.set(key, value);
    }
}
