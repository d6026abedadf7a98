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
//! The stages, one module each: `active` (one consuming replica for a
//! processor whose work does not divide), `consumer` (the thread, rebalances,
//! stored offsets), `lease` (partition ownership through PostgreSQL),
//! `worker` (one task per partition), `batch` (one batch's
//! transaction, phase by phase), `decode`, `dead_letter`, `encode`,
//! `outbox`, `relay` and `retry`.

mod active;
mod batch;
mod consumer;
mod dead_letter;
mod decode;
mod encode;
mod lease;
mod outbox;
mod relay;
pub mod replay;
mod retry;
mod worker;

pub use retry::backoff;

use consumer::consumer_thread;
use relay::relay_loop;

pub use outbox::Outbox;

use crate::config::RuntimeConfig;
use crate::contracts::Contracts;
use crate::processor::Processor;
use crate::surface::{Metrics, Status, Surface};
use crate::{codec, db, telemetry};
use rdkafka::ClientConfig;
use sqlx::PgPool;
use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Runs `processor` with configuration from the environment until SIGTERM
/// or SIGINT, then drains and exits.
pub async fn run<P: Processor>(processor: P) -> anyhow::Result<()> {
    telemetry::init(processor.name());
    let config = RuntimeConfig::from_env(processor.name())?;
    refuse_unknown_settings(&processor)?;
    exit(run_with(processor, config, telemetry::shutdown_signal()).await)
}

/// Ends a processor's process with `result` once [`run_with`] returned:
/// at once, so that a consumer thread or a blocking task still stuck after
/// the shutdown timeout (a broker that does not answer) cannot hold the
/// exit that the platform is waiting for; what did not commit is redone
/// by the next owner.
pub fn exit(result: anyhow::Result<()>) -> ! {
    match result {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("Error: {error:?}");
            std::process::exit(1)
        }
    }
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
    /// The outbox of the processor's schema, and its relay.
    outbox: Arc<Outbox>,
    /// The processor's schema name, checked to be a plain identifier.
    schema: String,
    /// Offsets committed to PostgreSQL, waiting to be stored in the consumer
    /// for the broker's group offsets (tools, lag).
    committed: Mutex<Vec<(String, i32, i64)>>,
    /// Compacted input topics: a key without a value there is an erasure.
    compacted: HashSet<String>,
    /// Reads the input topics' watermarks for processors that ask.
    watermarks: crate::broker::Watermarks,
    /// Batch transactions open at once: the pool's connections less two,
    /// so that the relay, the consumer thread's offset lookups and the
    /// queries always find one. A batch may hold its transaction while it
    /// waits (the matcher's for their turn, one per input partition: 30
    /// of them at once in the elastic run starved the relay for 10 s).
    transactions: tokio::sync::Semaphore,
}

impl<P: Processor> Shared<P> {
    /// What the stages of `processor` share, on `pool` (migrated).
    fn new(processor: P, config: RuntimeConfig, pool: PgPool) -> anyhow::Result<Shared<P>> {
        let name = processor.name();
        let contracts = Contracts::embedded();
        let metrics = Arc::new(Metrics::new(name));
        for collector in processor.collectors() {
            metrics.register(collector)?;
        }
        let status = Arc::new(Status::default());
        let outbox = Outbox::new(
            name,
            &config,
            pool.clone(),
            metrics.clone(),
            status.clone(),
            true,
        )?;
        let compacted: HashSet<String> = contracts
            .topics
            .topics
            .iter()
            .filter(|t| t.compacted())
            .map(|t| t.name.clone())
            .collect();
        let watermarks = crate::broker::Watermarks::connect(&config.brokers)?;
        let transactions = (config.db_pool_size as usize).saturating_sub(2).max(1);
        Ok(Shared {
            transactions: tokio::sync::Semaphore::new(transactions),
            schema: name.to_string(),
            codec: codec::Codec::new(&config.registry_url),
            processor,
            config,
            contracts,
            pool,
            metrics,
            status,
            outbox,
            committed: Mutex::new(Vec::new()),
            compacted,
            watermarks,
        })
    }
}

/// Refuses a processor whose inputs are not what `topics.yaml` says it
/// reads: the contract its ACLs are derived from must be the code's.
fn check_declared(
    topics: &crate::topics::TopicsFile,
    name: &str,
    inputs: &[&str],
) -> anyhow::Result<()> {
    let client = topics.client(name).ok_or_else(|| {
        anyhow::anyhow!(
            "topics.yaml declares no client {name}: add it under clients with the topics it reads and writes"
        )
    })?;
    let inputs: std::collections::BTreeSet<&str> = inputs.iter().copied().collect();
    let reads: std::collections::BTreeSet<&str> = client.reads.iter().map(String::as_str).collect();
    anyhow::ensure!(
        inputs == reads,
        "{name} reads {inputs:?}, but topics.yaml (clients.{name}.reads) declares {reads:?}"
    );
    Ok(())
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
    // A length prefix in a record cannot make the decoder allocate more
    // than a few records' worth (the library's default is 512 MB): set
    // once per process, before anything decodes.
    crate::codec::bound_allocations(config.max_record_bytes);
    // Every Kafka client of the process (checks, watermarks, leases,
    // administration) connects as the processor's consumer does.
    config.register_clients();
    let contracts = Contracts::embedded();
    for topic in processor.inputs() {
        contracts.topic(topic)?;
    }
    check_declared(&contracts.topics, name, &processor.inputs())?;
    let pool = db::connect_sized(&config.database_url, config.db_pool_size).await?;
    db::ensure_migrated(&pool).await?;
    let shared = Arc::new(Shared::new(processor, config, pool)?);
    let (metrics, status) = (shared.metrics.clone(), shared.status.clone());

    // Asked once at start too, so that a refusal is in the log even if
    // nobody probes readiness.
    let access: Arc<crate::surface::Probe> = Arc::new(crate::acls::access_probe(
        shared.config.brokers.clone(),
        name,
        shared.config.topic_prefix.clone(),
        shared.config.group.clone(),
    ));
    tokio::spawn(access());
    let surface = Arc::new(Surface {
        processor: name.to_string(),
        group: shared.config.group.clone(),
        metrics,
        status,
        probes: {
            let mut probes = crate::surface::dependency_probes(
                shared.pool.clone(),
                shared.config.registry_url.clone(),
                shared.config.brokers.clone(),
            );
            // A partition that cannot move on is as bad as a dependency
            // that does not answer: someone has to look.
            let (failing, bound) = (shared.status.clone(), shared.config.stuck_after);
            probes.push((
                "partitions",
                Box::new(move || {
                    let verdict = failing.stuck(bound);
                    Box::pin(async move { verdict })
                }),
            ));
            // A principal without the ACLs the contract needs is refused
            // at its first fetch or produce: say so before, by name.
            probes.push(("access", Box::new(move || access())));
            probes
        },
        started: Instant::now(),
    });
    let queries = shared.processor.queries(&shared.pool).map(|routes| {
        let tokens = Arc::new(shared.config.query_tokens.clone());
        crate::query::guarded(routes, tokens, shared.metrics.clone())
    });
    let (http_address, http) =
        crate::surface::serve_with(surface, &shared.config.http_listen, queries).await?;
    tracing::info!(processor = name, http = %http_address, group = %shared.config.group, "running");

    let stop = Arc::new(AtomicBool::new(false));
    // The relay stops only once the workers have drained and committed, so
    // that everything committed is published before the process exits.
    let drained = Arc::new(AtomicBool::new(false));
    let relay = tokio::spawn(relay_loop(shared.outbox.clone(), drained.clone()));
    let mut shutdown = std::pin::pin!(shutdown);
    // A processor whose work does not divide consumes on one replica at a
    // time; the others wait here, their surface up, until it is theirs.
    let mut lease = if shared.processor.exclusive() {
        tokio::select! {
            lease = active::Lease::acquire(&shared) => Some(lease),
            () = &mut shutdown => None,
        }
    } else {
        None
    };
    let standing_by = shared.processor.exclusive() && lease.is_none();
    let mut lost = false;
    let consumer = if standing_by {
        None
    } else {
        shared.metrics.active.set(1);
        let warming = Instant::now();
        match shared.processor.warm_up(&shared.pool).await {
            Ok(()) => tracing::debug!(seconds = warming.elapsed().as_secs_f64(), "warmed up"),
            Err(error) => {
                tracing::warn!(%error, "warming up failed; the first batch loads instead")
            }
        }
        let consumer = {
            let shared = shared.clone();
            let stop = stop.clone();
            let handle = tokio::runtime::Handle::current();
            std::thread::Builder::new()
                .name(format!("{name}-consumer"))
                .spawn(move || consumer_thread(shared, stop, handle))?
        };
        match &mut lease {
            Some(lease) => tokio::select! {
                () = &mut shutdown => {}
                () = lease.lost(&shared) => {
                    tracing::error!("another replica became active while this one could not renew its lease; stopping");
                    lost = true;
                }
            },
            None => shutdown.await,
        }
        Some(consumer)
    };

    tracing::info!("draining");
    stop.store(true, Ordering::SeqCst);
    shared.outbox.wake();
    let deadline = shared.config.shutdown_timeout;
    let finished = tokio::time::timeout(deadline, async {
        if let Some(consumer) = consumer {
            let joined = tokio::task::spawn_blocking(move || consumer.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!("the consumer thread ended abnormally");
            }
        }
        drained.store(true, Ordering::SeqCst);
        shared.outbox.wake();
        let _ = relay.await;
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            seconds = deadline.as_secs(),
            "shutdown timed out; unfinished work is redone on restart"
        );
    }
    if let Some(lease) = lease.filter(|_| !lost) {
        lease.release(&shared).await;
    }
    http.abort();
    // A worker still waiting in PostgreSQL (on a lock another replica
    // holds) keeps its connection: closing waits for it at most briefly,
    // and the exit ends it (PostgreSQL rolls its transaction back).
    if tokio::time::timeout(std::time::Duration::from_secs(2), shared.pool.close())
        .await
        .is_err()
    {
        tracing::warn!("database connections still busy at exit; their transactions roll back");
    }
    tracing::info!("stopped");
    anyhow::ensure!(
        !lost,
        "another replica took over while this one could not reach PostgreSQL; restart to stand by"
    );
    Ok(())
}

/// Applies the raw librdkafka options of the configuration last, so that
/// they override what the runtime sets.
fn with_options(config: &mut ClientConfig, runtime: &RuntimeConfig) {
    runtime.kafka.apply(config);
}

#[cfg(test)]
mod contract_tests {
    use super::check_declared;

    #[test]
    fn a_processor_reads_exactly_what_topics_yaml_declares() {
        let topics = &crate::contracts::Contracts::embedded().topics;
        check_declared(topics, "email_batcher", &["email-commands"]).unwrap();
        let more = check_declared(
            topics,
            "email_batcher",
            &["email-commands", "patient-commands"],
        )
        .unwrap_err()
        .to_string();
        assert!(more.contains("clients.email_batcher.reads"), "{more}");
        let unknown = check_declared(topics, "stranger", &["email-commands"])
            .unwrap_err()
            .to_string();
        assert!(unknown.contains("declares no client stranger"), "{unknown}");
    }
}
