//! One task per assigned partition: takes batches from the consumer
//! thread's queue and processes them, retrying transient failures.

use super::Shared;
use super::batch::process_batch;
use super::retry::{BatchError, backoff};
use crate::events::{BatchRetried, Event};
use crate::processor::Processor;
use rdkafka::message::OwnedMessage;
use std::sync::Arc;
use tokio::sync::mpsc;

pub(super) async fn partition_worker<P: Processor>(
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
                    shared.status.error(reason.clone());
                    let pause = backoff(attempt, shared.config.max_backoff);
                    let reason = reason.as_str();
                    BatchRetried {
                        attempt,
                        reason,
                        pause,
                    }
                    .emit(&shared.metrics);
                    tokio::time::sleep(pause).await;
                }
            }
        }
        batch.clear();
        shared.outbox.wake();
    }
}
