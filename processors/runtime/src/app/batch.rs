//! One batch in one PostgreSQL transaction: its phases from claiming the
//! partition's offset row to committing state, offset and outbox together.

use super::Shared;
use super::dead_letter::dead_letter;
use super::decode::{Decoded, decode};
use super::encode::{Pending, encode_all};
use super::relay::publish;
use super::retry::{BatchError, batch_error};
use crate::config::Guarantee;
use crate::processor::{
    BatchContext, Context, Incoming, Outgoing, ProcessError, Processor, Scratch,
};
use rdkafka::message::{Message, OwnedMessage};
use sqlx::PgConnection;
use std::collections::HashSet;
use std::time::Instant;
use uuid::Uuid;

/// A decoded record the processor will see, with the message it came from.
type Work<'m> = (&'m OwnedMessage, Incoming);

/// A partition of an input topic.
struct Partition {
    topic: String,
    partition: i32,
}

/// Processes one batch of a partition in one transaction: claim the
/// partition's offset row, decode and deduplicate, the processor's
/// `begin_batch`, its records, its `finish_batch`, encode the outputs into
/// the outbox, store the next offset, commit.
///
/// `careful`: run each record under a savepoint, so that a record the
/// processor refuses leaves no state behind (the fast path skips
/// savepoints and falls back to this when a record is refused).
///
/// Records below the stored offset were committed by an earlier owner and
/// are skipped. A batch may start after the stored offset: Kafka delivers a
/// partition in order from where it was positioned, so offsets it skips do
/// not exist for this consumer (transaction markers, aborted transactions,
/// compaction, retention).
pub(super) async fn process_batch<P: Processor>(
    shared: &Shared<P>,
    batch: &[OwnedMessage],
    careful: bool,
) -> Result<(), BatchError> {
    let started = Instant::now();
    let (at, _open, mut tx, next) = open(shared, &batch[0]).await?;
    let fresh: Vec<&OwnedMessage> = batch.iter().filter(|m| m.offset() >= next).collect();
    let Some(last) = fresh.last().map(|m| m.offset()) else {
        // Everything here was committed by an earlier owner.
        return Ok(());
    };
    let mut phases = Phases::new();
    let mut outgoing: Vec<Pending> = Vec::new();
    let work = decode_new(shared, &mut tx, &fresh, &mut outgoing).await?;
    phases.decode = phases.lap();
    // The batch's one "now" (crate::clock): every decision of it reads this.
    let now = shared.config.clock.now();
    let mut scratch = Scratch::default();
    let mut batch = Batch {
        shared,
        tx: &mut tx,
        scratch: &mut scratch,
        work: &work,
        now,
        outgoing,
    };
    batch.hook(Hook::Begin).await?;
    phases.begin = phases.lap();
    batch.records(careful).await?;
    phases.process = phases.lap();
    batch.hook(Hook::Finish).await?;
    phases.finish = phases.lap();
    let outgoing = std::mem::take(&mut batch.outgoing);
    if shared.processor.journal() && !work.is_empty() {
        journal(
            shared,
            &mut tx,
            &at,
            fresh[0].offset(),
            last + 1,
            now,
            work.len(),
        )
        .await?;
    }
    let (outputs, stored) = write_outputs(shared, &mut tx, outgoing, now).await?;
    store_offset(shared, &mut tx, &at, last + 1).await?;
    phases.write = phases.lap();
    let commit = Instant::now();
    tx.commit().await?;
    committed(
        shared,
        Some(&mut scratch),
        stored,
        &at,
        last + 1,
        fresh.len(),
    );
    shared
        .metrics
        .commit_seconds
        .observe(commit.elapsed().as_secs_f64());
    tracing::debug!(
        topic = at.topic,
        partition = at.partition,
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

/// Dead-letters one record that fails even alone and carefully (its
/// batch hooks or outputs are refused for good), in a transaction of its
/// own with the partition's next offset, so that the partition moves on.
pub(super) async fn dead_letter_alone<P: Processor>(
    shared: &Shared<P>,
    message: &OwnedMessage,
    code: crate::errors::ErrorCode,
    reason: &str,
) -> Result<(), BatchError> {
    let (at, _open, mut tx, next) = open(shared, message).await?;
    if message.offset() < next {
        return Ok(());
    }
    let dead = dead_letter(shared, message, None, code, reason);
    let now = shared.config.clock.now();
    let (_, stored) = write_outputs(shared, &mut tx, vec![Pending::Done(dead)], now).await?;
    store_offset(shared, &mut tx, &at, message.offset() + 1).await?;
    tx.commit().await?;
    committed(shared, None, stored, &at, message.offset() + 1, 1);
    Ok(())
}

/// Opens the transaction of a batch starting at `first`: a permit of the
/// transaction semaphore, the transaction, and the partition's offset row
/// claimed with the next offset to process.
async fn open<'a, P: Processor>(
    shared: &'a Shared<P>,
    first: &OwnedMessage,
) -> Result<
    (
        Partition,
        tokio::sync::SemaphorePermit<'a>,
        sqlx::Transaction<'static, sqlx::Postgres>,
        i64,
    ),
    BatchError,
> {
    let at = Partition {
        topic: first.topic().to_string(),
        partition: first.partition(),
    };
    let permit = shared
        .transactions
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let mut tx = shared.pool.begin().await?;
    let next = claim_offset(shared, &mut tx, &at).await?;
    Ok((at, permit, tx, next))
}

/// Journals the batch (see [`Processor::journal`]) in its transaction: a
/// batch that commits is journaled, one that does not is not. The row's
/// sequence is taken after the processor's last hook, so for a processor
/// whose batches take turns on a lock there (the matcher) it is the order
/// they commit in.
#[allow(clippy::too_many_arguments)]
async fn journal<P: Processor>(
    shared: &Shared<P>,
    tx: &mut PgConnection,
    at: &Partition,
    first: i64,
    next: i64,
    now: chrono::DateTime<chrono::Utc>,
    records: usize,
) -> Result<(), BatchError> {
    sqlx::query(&format!(
        "INSERT INTO {}.batch_journal (topic, partition, first_offset, next_offset, decided_at, records)
         VALUES ($1, $2, $3, $4, $5, $6)",
        shared.schema
    ))
    .bind(shared.config.logical(&at.topic))
    .bind(at.partition)
    .bind(first)
    .bind(next)
    .bind(now)
    .bind(records as i32)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Locks the partition's offset row for this transaction (creating it on
/// first use) and returns the next offset to process: the lock is what
/// keeps two owners of a partition from both applying a record.
async fn claim_offset<P: Processor>(
    shared: &Shared<P>,
    tx: &mut PgConnection,
    at: &Partition,
) -> Result<i64, BatchError> {
    let schema = &shared.schema;
    sqlx::query(&format!(
        "INSERT INTO {schema}.consumer_offsets (consumer_group, topic, partition, next_offset)
         VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING"
    ))
    .bind(&shared.config.group)
    .bind(&at.topic)
    .bind(at.partition)
    .execute(&mut *tx)
    .await?;
    Ok(sqlx::query_scalar(&format!(
        "SELECT next_offset FROM {schema}.consumer_offsets
          WHERE consumer_group = $1 AND topic = $2 AND partition = $3 FOR UPDATE"
    ))
    .bind(&shared.config.group)
    .bind(&at.topic)
    .bind(at.partition)
    .fetch_one(&mut *tx)
    .await?)
}

/// Decodes the batch's fresh records and sorts them: undecodable ones to
/// the dead-letter topic (into `outgoing`), tombstones and inputs
/// processed before (same event id, e.g. a relay's re-publish) dropped,
/// the rest returned for the processor, in order.
async fn decode_new<'m, P: Processor>(
    shared: &Shared<P>,
    tx: &mut PgConnection,
    fresh: &[&'m OwnedMessage],
    outgoing: &mut Vec<Pending>,
) -> Result<Vec<Work<'m>>, BatchError> {
    let mut decoded = Vec::with_capacity(fresh.len());
    for message in fresh {
        decoded.push(decode(shared, message).await?);
    }
    let ids: Vec<Uuid> = decoded
        .iter()
        .filter_map(|d| match d {
            Decoded::Good(record) => Some(record.envelope.event_id),
            Decoded::Bad(..) | Decoded::Tombstone => None,
        })
        .collect();
    let new_ids: HashSet<Uuid> = if shared.config.guarantee == Guarantee::EffectivelyOnce {
        sqlx::query_scalar(&format!(
            "INSERT INTO {}.processed_events (event_id) SELECT unnest($1::uuid[])
             ON CONFLICT DO NOTHING RETURNING event_id",
            shared.schema
        ))
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect()
    } else {
        ids.iter().copied().collect()
    };
    let mut seen = HashSet::new();
    let mut work = Vec::with_capacity(fresh.len());
    for (message, item) in fresh.iter().zip(decoded) {
        let logical = shared.config.logical(message.topic());
        shared.metrics.consumed.with_label_values(&[logical]).inc();
        let record = match item {
            Decoded::Bad(code, reason) => {
                outgoing.push(Pending::Done(dead_letter(
                    shared, message, None, code, &reason,
                )));
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
                .with_label_values(&[logical])
                .inc();
            continue;
        }
        work.push((*message, *record));
    }
    Ok(work)
}

/// The processor's batch hooks.
#[derive(Clone, Copy)]
enum Hook {
    Begin,
    Finish,
}

/// A batch inside its transaction, while the processor works on it.
struct Batch<'b, 'm, P> {
    shared: &'b Shared<P>,
    tx: &'b mut PgConnection,
    scratch: &'b mut Scratch,
    work: &'b [Work<'m>],
    now: chrono::DateTime<chrono::Utc>,
    /// What the batch emits so far, in order.
    outgoing: Vec<Pending>,
}

impl<P: Processor> Batch<'_, '_, P> {
    /// Runs one of the processor's batch hooks; none for a batch with
    /// nothing to process.
    async fn hook(&mut self, hook: Hook) -> Result<(), BatchError> {
        if self.work.is_empty() {
            return Ok(());
        }
        let records: Vec<&Incoming> = self.work.iter().map(|(_, r)| r).collect();
        let (shared, now) = (self.shared, self.now);
        let phase = match hook {
            Hook::Begin => "begin",
            Hook::Finish => "finish",
        };
        let mut ctx = batch_context(shared, self.tx, self.scratch, self.work, now, phase);
        match hook {
            Hook::Begin => shared.processor.begin_batch(&mut ctx, &records).await,
            Hook::Finish => shared.processor.finish_batch(&mut ctx).await,
        }
        .map_err(batch_error)?;
        let emitted = std::mem::take(&mut ctx.emitted);
        self.outgoing
            .extend(emitted.into_iter().map(Pending::Batch));
        Ok(())
    }

    /// Runs the processor on each record. A record it refuses is
    /// dead-lettered when `careful` (its savepoint undoes its changes);
    /// otherwise the batch fails so that it is redone carefully.
    async fn records(&mut self, careful: bool) -> Result<(), BatchError> {
        let shared = self.shared;
        for (message, record) in self.work {
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
                sqlx::query("SAVEPOINT record")
                    .execute(&mut *self.tx)
                    .await?;
            }
            let mut ctx = Context {
                db: self.tx,
                pool: &shared.pool,
                scratch: self.scratch,
                contracts: shared.contracts,
                producer: shared.processor.name(),
                source: record,
                now: self.now,
                emitted: Vec::new(),
                tombstones: Vec::new(),
                progress: Some(crate::progress::Progress {
                    watermarks: &shared.watermarks,
                    schema: &shared.schema,
                    group: &shared.config.group,
                    prefix: &shared.config.topic_prefix,
                }),
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
                            .execute(&mut *self.tx)
                            .await?;
                    }
                    for (topic, key, envelope) in emitted {
                        self.outgoing.push(Pending::Record(topic, key, envelope));
                    }
                    for (topic, key, event_id) in tombstones {
                        let topic = shared.config.physical(&topic);
                        let tombstone = Outgoing::tombstone(event_id, topic, key);
                        self.outgoing.push(Pending::Done(tombstone));
                    }
                }
                Err(ProcessError::Transient(reason)) => return Err(BatchError::Transient(reason)),
                Err(ProcessError::Invalid { code, reason }) => {
                    if !careful {
                        // Undo this record's state changes: the worker redoes
                        // the batch with savepoints.
                        return Err(BatchError::Refused { code, reason });
                    }
                    sqlx::query("ROLLBACK TO SAVEPOINT record")
                        .execute(&mut *self.tx)
                        .await?;
                    let dead = dead_letter(shared, message, Some(id), code, &reason);
                    self.outgoing.push(Pending::Done(dead));
                }
            }
        }
        Ok(())
    }
}

/// Encodes the batch's outputs. Effectively once: into the outbox (each
/// chunk inserted while the next ones are being encoded), returned with
/// their row ids for the relay. At least once: published now, acknowledged
/// by the broker before the offsets commit (a crash in between repeats
/// them). Returns the number of outputs and the stored rows.
async fn write_outputs<P: Processor>(
    shared: &Shared<P>,
    tx: &mut PgConnection,
    outgoing: Vec<Pending>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(usize, Vec<(i64, Outgoing)>), BatchError> {
    let exactly = shared.config.guarantee == Guarantee::EffectivelyOnce;
    let mut outputs = 0;
    let mut unpublished = Vec::new();
    let mut stored: Vec<(i64, Outgoing)> = Vec::new();
    let mut chunks = encode_all(shared, outgoing, now).await?;
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        outputs += chunk.len();
        if exactly {
            let ids = shared.outbox.insert(tx, &chunk).await?;
            stored.extend(ids.into_iter().zip(chunk));
        } else {
            unpublished.extend(chunk);
        }
    }
    if !exactly {
        publish(&shared.outbox, &shared.outbox.producer(), &unpublished)
            .await
            .map_err(|failed| BatchError::Transient(format!("broker: {}", failed.reason)))?;
    }
    Ok((outputs, stored))
}

/// Stores the partition's next offset in the batch's transaction.
async fn store_offset<P: Processor>(
    shared: &Shared<P>,
    tx: &mut PgConnection,
    at: &Partition,
    next: i64,
) -> Result<(), BatchError> {
    sqlx::query(&format!(
        "UPDATE {}.consumer_offsets SET next_offset = $4, updated_at = now()
          WHERE consumer_group = $1 AND topic = $2 AND partition = $3",
        shared.schema
    ))
    .bind(&shared.config.group)
    .bind(&at.topic)
    .bind(at.partition)
    .bind(next)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// After the commit: the processor's `batch_committed` (for a batch the
/// processor saw), the stored rows handed to the relay from memory (unless
/// too many wait already), and the offset queued for the consumer to store
/// in Kafka.
fn committed<P: Processor>(
    shared: &Shared<P>,
    scratch: Option<&mut Scratch>,
    stored: Vec<(i64, Outgoing)>,
    at: &Partition,
    next: i64,
    records: usize,
) {
    if let Some(scratch) = scratch {
        shared.processor.batch_committed(scratch);
    }
    shared.outbox.committed(stored);
    shared.metrics.batch_records.observe(records as f64);
    shared
        .committed
        .lock()
        .expect("committed lock")
        .push((at.topic.clone(), at.partition, next));
}

/// Milliseconds a batch spent in each phase (the debug log's
/// "batch committed"): decoding and deduplicating its records, the
/// processor's `begin_batch`, its records, its `finish_batch`, and
/// encoding its outputs into the outbox and writing the offsets.
struct Phases {
    since: Instant,
    decode: u64,
    begin: u64,
    process: u64,
    finish: u64,
    write: u64,
}

impl Phases {
    fn new() -> Self {
        Phases {
            since: Instant::now(),
            decode: 0,
            begin: 0,
            process: 0,
            finish: 0,
            write: 0,
        }
    }

    /// Milliseconds since the last lap.
    fn lap(&mut self) -> u64 {
        let ms = self.since.elapsed().as_millis() as u64;
        self.since = Instant::now();
        ms
    }
}

/// The context of a batch hook; `work` is not empty.
fn batch_context<'a, P: Processor>(
    shared: &'a Shared<P>,
    tx: &'a mut PgConnection,
    scratch: &'a mut Scratch,
    work: &[Work<'_>],
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
