//! One task per assigned partition: takes batches from the consumer
//! thread's queue and processes them, retrying transient failures and
//! narrowing a refused batch down to the record that causes it.
//!
//! A batch either commits, or fails:
//! - for a reason that passes (a connection, a deadlock, the registry):
//!   retried with backoff, carefully (record by record under savepoints);
//!   while it keeps failing, the partition shows as failing on
//!   `/health/status` and in `psymatch_partition_failing_since_timestamp_seconds`,
//!   and past `STUCK_AFTER_SECS` readiness turns red;
//! - because some record can never be processed ([`BatchError::Refused`]):
//!   first redone carefully at once, which dead-letters a record the
//!   processor or the database refuses while processing it; a refusal
//!   that names no record (a batch hook, the outputs) splits the batch in
//!   halves, each committed on its own, down to the one record that fails,
//!   which is dead-lettered alone. A poison record never stops its partition.

use super::Shared;
use super::batch::{dead_letter_alone, process_batch};
use super::retry::{BatchError, backoff};
use crate::events::{BatchRetried, BatchSplit, Event};
use crate::processor::Processor;
use rdkafka::message::{Message, OwnedMessage};
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use tokio::sync::mpsc;

pub(super) async fn partition_worker<P: Processor>(
    shared: Arc<Shared<P>>,
    mut queue: mpsc::Receiver<OwnedMessage>,
    topic: String,
    partition: i32,
) {
    let logical = shared.config.logical(&topic).to_string();
    let mut batch = Vec::with_capacity(shared.config.batch_size);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < shared.config.batch_size {
            match queue.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        let span = tracing::info_span!(
            "batch",
            processor = shared.processor.name(),
            topic = logical,
            partition,
        );
        let run = settle_all(&shared, &batch, &logical, partition);
        tracing::Instrument::instrument(run, span).await;
        batch.clear();
        shared.outbox.wake();
    }
}

/// Commits every record of `batch`, in order: the whole batch, or its
/// halves where it is refused.
async fn settle_all<P: Processor>(
    shared: &Shared<P>,
    batch: &[OwnedMessage],
    topic: &str,
    partition: i32,
) {
    let mut pending: VecDeque<Range<usize>> = VecDeque::new();
    pending.push_back(0..batch.len());
    while let Some(range) = pending.pop_front() {
        if let Some((left, right)) = settle(shared, &batch[range.clone()], topic, partition).await {
            let middle = range.start + left;
            BatchSplit {
                records: range.len(),
                first: batch[range.start].offset(),
            }
            .emit(&shared.metrics);
            pending.push_front(middle..middle + right);
            pending.push_front(range.start..middle);
        }
    }
}

/// Runs one batch until it commits (`None`), or until it is refused as a
/// whole carefully: then the sizes of its halves to run instead.
async fn settle<P: Processor>(
    shared: &Shared<P>,
    batch: &[OwnedMessage],
    topic: &str,
    partition: i32,
) -> Option<(usize, usize)> {
    let mut attempt = 0u32;
    let mut careful = false;
    loop {
        let outcome = match process_batch(shared, batch, careful).await {
            Err(BatchError::Refused { code, reason }) if careful && batch.len() == 1 => {
                match dead_letter_alone(shared, &batch[0], code, &reason).await {
                    // Nothing smaller to try: wait and retry, in sight of
                    // the PartitionStuck alert.
                    Err(BatchError::Refused { code, reason }) => Err(BatchError::Transient(
                        format!("dead-lettering a refused record failed: {code}: {reason}"),
                    )),
                    other => other,
                }
            }
            other => other,
        };
        let reason = match outcome {
            Ok(()) => {
                shared.status.recovered(&shared.metrics, topic, partition);
                return None;
            }
            Err(BatchError::Refused { .. }) if !careful => {
                // Undo the refused record's changes: redo at once, record
                // by record under savepoints.
                careful = true;
                continue;
            }
            Err(BatchError::Refused { .. }) => {
                let left = batch.len() / 2;
                return Some((left, batch.len() - left));
            }
            Err(error @ BatchError::Transient(_)) => error.reason(),
        };
        attempt += 1;
        careful = true;
        shared.status.error(reason.clone());
        shared
            .status
            .failing(&shared.metrics, topic, partition, &reason);
        let pause = backoff(attempt, shared.config.max_backoff);
        BatchRetried {
            attempt,
            reason: &reason,
            pause,
        }
        .emit(&shared.metrics);
        tokio::time::sleep(pause).await;
    }
}
