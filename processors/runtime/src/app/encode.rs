//! Encoding a batch's outputs into Kafka records, in parallel for
//! large batches.

use super::Shared;
use super::retry::{BatchError, batch_error};
use crate::envelope::Envelope;
use crate::events::{Event, RegistryFailed};
use crate::processor::{Outgoing, Processor};
use std::collections::HashMap;

/// An output of a batch on its way to the outbox: final already (a dead
/// letter, a tombstone), a record to encode, or a batch hook's record
/// still in JSON.
pub(super) enum Pending {
    Done(Outgoing),
    Record(String, String, Envelope),
    Batch(crate::processor::Deferred),
}

/// Fewer outputs than this are encoded on the batch's own thread: other
/// threads pay off only for many.
pub(super) const PARALLEL_OUTPUTS: usize = 256;
/// Outputs per chunk when encoding on two threads: the outbox takes each
/// chunk while the next ones are encoded.
pub(super) const CHUNK_OUTPUTS: usize = 500;

/// A chunk of encoded outputs, or why encoding failed.
pub(super) type Chunk = Result<Vec<Outgoing>, BatchError>;

/// A batch's outputs, encoded in order, in chunks as they are ready.
pub(super) enum Chunks {
    /// Encoded on the batch's own thread (few outputs).
    Ready(Option<Chunk>),
    /// From the encoding threads, one receiver per chunk, in order.
    Arriving(std::vec::IntoIter<tokio::sync::oneshot::Receiver<Chunk>>),
}

impl Chunks {
    /// The next chunk in order; `None` after the last.
    pub(super) async fn next(&mut self) -> Option<Chunk> {
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
pub(super) async fn encode_all<P: Processor>(
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
            let error = e.to_string();
            RegistryFailed {
                topic: &physical,
                error: &error,
            }
            .emit(&shared.metrics);
            BatchError::Transient(error)
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
pub(super) struct Encoder {
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
        // The headers first: the envelope is consumed by its encoding.
        let mut record = Outgoing::of_envelope(writer.physical.clone(), key, &envelope, Vec::new());
        // Moved, not cloned: a payload can be large (an inquiry's patients).
        let value = envelope
            .into_avro(writer.schema)
            .map_err(|e| BatchError::Transient(e.to_string()))?;
        let bytes = crate::codec::write(writer.id, &writer.datum, value)
            .map_err(|e| BatchError::Transient(e.to_string()))?;
        record.value = Some(bytes);
        Ok(record)
    }
}

/// What encoding the records of one topic needs.
pub(super) struct Writer {
    id: u32,
    datum: std::sync::Arc<apache_avro::writer::datum::GenericDatumWriter<'static>>,
    schema: &'static crate::schemas::TopicSchema,
    physical: String,
}
