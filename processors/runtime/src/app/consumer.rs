//! The consumer thread: polling, rebalance callbacks, assignment of
//! partitions to workers and the offsets stored in PostgreSQL.

use super::lease::{LeaseCommand, lease_loop};
use super::worker::partition_worker;
use super::{Shared, with_options};
use crate::config::{Assignment, GroupProtocol};
use crate::events::{Event, PartitionsAssigned, PartitionsGivenUp};
use crate::processor::Processor;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// rdkafka callbacks: rebalances and statistics.
pub(super) struct RuntimeContext<P: Processor> {
    shared: Arc<Shared<P>>,
    handle: tokio::runtime::Handle,
    /// Partition workers by (physical topic, partition).
    workers: Mutex<HashMap<(String, i32), Worker>>,
}

pub(super) struct Worker {
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
pub(super) fn cooperative<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> bool {
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

pub(super) async fn stored_offsets<P: Processor>(
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

pub(super) fn consumer_thread<P: Processor>(
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
    let mut config = crate::broker::client(&shared.config.brokers);
    config
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
    if !wait_for_broker(&shared, &stop) || !wait_for_access(&shared, &stop) {
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

/// Waits until the principal holds the ACLs topics.yaml says the
/// processor needs (its topics and its group), before the consumer
/// subscribes: a consumer refused a topic at its first metadata request
/// would not ask again for minutes (librdkafka's metadata refresh), so a
/// processor started before `psymatch acls apply` would stall after it.
/// Readiness (`access`) and the log say what is missing meanwhile. False
/// if the process is stopped first.
fn wait_for_access<P: Processor>(shared: &Shared<P>, stop: &AtomicBool) -> bool {
    let file = &crate::contracts::Contracts::embedded().topics;
    let config = &shared.config;
    loop {
        match crate::acls::missing_access(
            &config.brokers,
            file,
            shared.processor.name(),
            &config.topic_prefix,
            &config.group,
        ) {
            // A broker that cannot be asked: the consumer's own errors and
            // the broker probe say so; subscribing does no harm.
            Ok(None) | Err(_) => return true,
            Ok(Some(missing)) => shared.status.error(missing),
        }
        for _ in 0..20 {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Waits until the broker answers, saying so in the log (at the first
/// failed try and every 30 s after) and in `/health/status`; readiness
/// fails meanwhile (its broker probe). False if the process is stopped
/// first.
pub(super) fn wait_for_broker<P: Processor>(shared: &Shared<P>, stop: &AtomicBool) -> bool {
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
        PartitionsAssigned {
            count: partitions.len(),
        }
        .emit(&self.shared.metrics);
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
        self.stop_workers(partitions, finish);
        let _ = unassign(&list_of(partitions));
        let mut assigned = self.shared.status.assigned.lock().expect("status lock");
        for (topic, partition) in partitions {
            assigned.remove(&(self.shared.config.logical(topic).to_string(), *partition));
        }
        PartitionsGivenUp {
            count: partitions.len(),
            finished: finish,
        }
        .emit(&self.shared.metrics);
    }
}

/// The (topic, partition) pairs of a list.
pub(super) fn partitions_in(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_string(), e.partition()))
        .collect()
}

/// A list of (topic, partition) pairs without offsets.
pub(super) fn list_of(partitions: &[(String, i32)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    tpl
}

pub(super) fn store_committed<P: Processor>(
    consumer: &BaseConsumer<RuntimeContext<P>>,
    shared: &Shared<P>,
) {
    let pending: Vec<(String, i32, i64)> =
        std::mem::take(&mut *shared.committed.lock().expect("committed lock"));
    for (topic, partition, next) in pending {
        // A partition revoked meanwhile answers with a state error: harmless.
        let _ = consumer.store_offset(&topic, partition, next - 1);
    }
}
