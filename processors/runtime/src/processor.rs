//! What a processor author writes: "for this record from this topic, given my
//! state, make these state changes and emit these records".
//!
//! The example processor (`example.rs`) shows the whole API in 40 lines.
//!
//! The runtime decodes the record (or dead-letters it), opens the
//! transaction, skips records already processed, and commits the state
//! changes, the partition's next offset and the emitted records together.

use crate::contracts::Contracts;
use crate::envelope::{self, Envelope};
use crate::errors::ErrorCode;
use chrono::{DateTime, Utc};
use serde_json::{Value as Json, json};
use sqlx::{PgConnection, PgPool};
use std::future::Future;
use uuid::Uuid;

/// A stream processor: domain code only.
pub trait Processor: Send + Sync + 'static {
    /// Name: the PostgreSQL schema of its state, the consumer group and the
    /// `producer` of what it emits.
    fn name(&self) -> &'static str;

    /// Topics it consumes (logical names, as in topics.yaml).
    fn inputs(&self) -> Vec<&'static str>;

    /// Handles one record inside the transaction of its batch. Returning an
    /// error: [`ProcessError::Invalid`] dead-letters the record and goes on,
    /// [`ProcessError::Transient`] rolls the batch back and retries it.
    fn process(
        &self,
        ctx: &mut Context<'_>,
        record: &Incoming,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send;

    /// Called once at start, before the first partition is consumed: a
    /// processor that keeps its state in memory loads it here instead of
    /// in its first batch, where the load would hold up the records that
    /// are waiting. An error is logged and the processor starts anyway
    /// (its batches then load what they need themselves).
    fn warm_up(&self, pool: &PgPool) -> impl Future<Output = Result<(), ProcessError>> + Send {
        let _ = pool;
        async { Ok(()) }
    }

    /// Called once per batch, inside its transaction, before its records:
    /// load what they will need in one query (their keys' state) into the
    /// batch's [`Scratch`]. `records` are the records `process` will see.
    fn begin_batch(
        &self,
        batch: &mut BatchContext<'_>,
        records: &[&Incoming],
    ) -> impl Future<Output = Result<(), ProcessError>> + Send {
        let _ = (batch, records);
        async { Ok(()) }
    }

    /// Called once per batch after its records, before the commit: write
    /// what the records accumulated in the [`Scratch`] in one statement.
    ///
    /// A record refused with [`ProcessError::Invalid`] has its database
    /// changes rolled back but not its scratch changes: change the scratch
    /// only once a record is accepted.
    fn finish_batch(
        &self,
        batch: &mut BatchContext<'_>,
    ) -> impl Future<Output = Result<(), ProcessError>> + Send {
        let _ = batch;
        async { Ok(()) }
    }

    /// Called after the batch's transaction committed, with its
    /// [`Scratch`]: what the batch wrote is now durable. A batch that
    /// fails is not told here; its scratch is dropped.
    fn batch_committed(&self, scratch: &mut Scratch) {
        let _ = scratch;
    }

    /// The processor's own metrics, served on `/metrics` beside the
    /// runtime's with the same `psymatch_` prefix and `processor` label.
    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        Vec::new()
    }

    /// Prefixes of the processor's own settings (`SMTP_`, `KBV_`): at
    /// start a variable with one of them, or a `PSYMATCH_` one, that no
    /// setting was read as is refused by name
    /// ([`crate::config::refuse_unknown`]).
    fn settings_prefixes(&self) -> &'static [&'static str] {
        &[]
    }

    /// Whether the runtime journals the processor's batches in
    /// `<schema>.batch_journal` (a table its migration makes): each
    /// committed batch's partition, offset range and "now", so that
    /// [`crate::app::replay`] can run the same batches again in the same
    /// order at the same time and reproduce every decision.
    fn journal(&self) -> bool {
        false
    }

    /// Whether one replica at a time consumes (per consumer group), the
    /// others standing by until it stops or dies: for a processor whose
    /// every batch weighs the whole state, so that replicas would only take
    /// turns and reload each other's writes. Needs the table
    /// `<schema>.active_replica` in its migration (see `app::active`).
    fn exclusive(&self) -> bool {
        false
    }

    /// The processor's read-only query routes (`/v1/...`), answered from
    /// what it committed in `pool`; served on the surface port behind the
    /// bearer tokens of `QUERY_TOKENS` ([`crate::query`]).
    fn queries(&self, pool: &sqlx::PgPool) -> Option<axum::Router> {
        let _ = pool;
        None
    }
}

/// A decoded input record.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Logical topic it came from.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Kafka key.
    pub key: String,
    /// The envelope (payload as Avro).
    pub envelope: Envelope,
    /// The payload as JSON, for serde-typed access.
    pub payload: Json,
}

impl Incoming {
    /// The envelope's event type.
    pub fn event_type(&self) -> &str {
        &self.envelope.event_type
    }
}

/// How processing one record failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The record can never be processed (bad domain values, a bug it
    /// triggers): it goes to the dead-letter topic with this code and reason.
    #[error("{code}: {reason}")]
    Invalid {
        /// Stable error code.
        code: ErrorCode,
        /// Why, for a person.
        reason: String,
    },
    /// Trying again later may succeed (database, broker, upstream service).
    #[error("transient: {0}")]
    Transient(String),
}

impl From<sqlx::Error> for ProcessError {
    /// Data the database refuses for good ([`crate::db::refusal`]) make the
    /// record invalid (dead-lettered after the careful retry); any other
    /// database error is transient.
    fn from(error: sqlx::Error) -> Self {
        match crate::db::refusal(&error) {
            Some(reason) => ProcessError::Invalid {
                code: ErrorCode::RefusedByDatabase,
                reason,
            },
            None => ProcessError::Transient(format!("database: {error}")),
        }
    }
}

/// A record to publish, already encoded: what every producer of psymatch
/// (the runtime's outbox and relay, the scheduler, the command line, the
/// test kit) hands to Kafka, so that an envelope's headers are written in
/// one place.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The envelope's event id (the outbox's bookkeeping; not sent).
    pub event_id: Uuid,
    /// The physical topic (with any prefix).
    pub topic: String,
    /// The record key; `None` for none.
    pub key: Option<String>,
    /// The encoded value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Kafka headers; a `None` value is a header without value.
    pub headers: Vec<(String, Option<String>)>,
}

impl Outgoing {
    /// The record of `envelope` on the physical `topic` under `key`, its
    /// value already encoded (`value`), with the envelope's headers
    /// (event id, type, producer, correlation id).
    pub fn of_envelope(
        topic: impl Into<String>,
        key: impl Into<String>,
        envelope: &crate::envelope::Envelope,
        value: Vec<u8>,
    ) -> Outgoing {
        Outgoing {
            event_id: envelope.event_id,
            topic: topic.into(),
            key: Some(key.into()),
            value: Some(value),
            headers: envelope
                .headers()
                .into_iter()
                .map(|(name, value)| (name.to_string(), Some(value)))
                .collect(),
        }
    }

    /// A tombstone for `key` on the physical `topic`: deletes the key from
    /// a compacted topic.
    pub fn tombstone(event_id: Uuid, topic: impl Into<String>, key: impl Into<String>) -> Outgoing {
        Outgoing {
            event_id,
            topic: topic.into(),
            key: Some(key.into()),
            value: None,
            headers: Vec::new(),
        }
    }

    /// The record for rdkafka's producers, borrowing from `self`.
    pub fn record(&self) -> rdkafka::producer::FutureRecord<'_, str, [u8]> {
        let mut headers = rdkafka::message::OwnedHeaders::new();
        for (name, value) in &self.headers {
            headers = headers.insert(rdkafka::message::Header {
                key: name,
                value: value.as_deref().map(str::as_bytes),
            });
        }
        let mut record = rdkafka::producer::FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = &self.key {
            record = record.key(key.as_str());
        }
        if let Some(value) = &self.value {
            record = record.payload(value.as_slice());
        }
        record
    }
}

/// State a processor keeps for the records of one batch (prefetched rows,
/// pending writes): any `Default` type, created empty for every attempt of
/// every batch.
#[derive(Default)]
pub struct Scratch(Option<Box<dyn std::any::Any + Send>>);

impl Scratch {
    /// The batch's value of type `T`, created with `T::default()` on first
    /// use. A processor uses one type.
    pub fn get<T: Default + Send + 'static>(&mut self) -> &mut T {
        if !self.0.as_ref().is_some_and(|value| value.is::<T>()) {
            self.0 = Some(Box::new(T::default()));
        }
        self.0
            .as_mut()
            .and_then(|value| value.downcast_mut::<T>())
            .expect("the scratch holds a T")
    }
}

/// What a processor can use at the start and end of a batch.
pub struct BatchContext<'a> {
    pub(crate) db: &'a mut PgConnection,
    pub(crate) pool: &'a PgPool,
    pub(crate) scratch: &'a mut Scratch,
    pub(crate) contracts: &'static Contracts,
    pub(crate) producer: &'static str,
    pub(crate) now: DateTime<Utc>,
    /// The event id of the batch's last record: what the ids of records
    /// emitted for the whole batch derive from.
    pub(crate) batch_id: Uuid,
    /// `begin` or `finish`: records emitted at the start and at the end of
    /// the same batch get different ids.
    pub(crate) phase: &'static str,
    /// Records emitted so far, converted and encoded by the runtime after
    /// the hook.
    pub(crate) emitted: Vec<Deferred>,
}

/// A record a batch hook emitted, still in JSON: a hook may emit thousands
/// (a matcher's decisions), and the runtime converts them on every core
/// at once. One that does not fit its schema fails the batch then, as it
/// would have at `emit`.
pub(crate) struct Deferred {
    pub(crate) topic: String,
    pub(crate) event_type: String,
    pub(crate) payload: Json,
    pub(crate) event_id: Uuid,
}

impl Deferred {
    /// The record's key and envelope, checked against its topic's schema.
    pub(crate) fn settle(
        self,
        contracts: &'static Contracts,
        producer: &str,
        now: DateTime<Utc>,
    ) -> Result<(String, String, Envelope), ProcessError> {
        envelope_for(
            contracts,
            producer,
            now,
            Outline {
                topic: &self.topic,
                event_type: &self.event_type,
                key: None,
                key_fields: None,
                event_id: self.event_id,
                correlation_id: None,
            },
            self.payload,
        )
    }
}

impl BatchContext<'_> {
    /// The batch's transaction.
    pub fn db(&mut self) -> &mut PgConnection {
        self.db
    }

    /// The connection pool (see [`Context::pool`]).
    pub fn pool(&self) -> &PgPool {
        self.pool
    }

    /// The batch's scratch.
    pub fn scratch<T: Default + Send + 'static>(&mut self) -> &mut T {
        self.scratch.get()
    }

    /// Processing time (the batch's start), as [`Context::now`].
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Emits a record for the batch as a whole (decisions that weigh all
    /// its records together), keyed like [`Context::emit`]. Its event id
    /// derives from the batch's last record: the records land in the outbox
    /// with the batch's offsets, so a batch that committed is never
    /// processed again and one that did not emitted nothing.
    pub fn emit(
        &mut self,
        topic: &str,
        event_type: &str,
        payload: Json,
    ) -> Result<(), ProcessError> {
        let index = self.emitted.len();
        let event_id = Uuid::new_v5(
            &self.batch_id,
            format!("batch/{}/{index}", self.phase).as_bytes(),
        );
        // What is cheap to check is checked now: the topic and event type.
        let bug = |reason: String| ProcessError::Invalid {
            code: ErrorCode::OutputDoesNotFit,
            reason,
        };
        let (_, schema) = self.contracts.topic(topic).map_err(|e| {
            bug(format!(
                "{} emitted a record for {topic}: {e}",
                self.producer
            ))
        })?;
        if schema.branch_for(event_type).is_none() {
            return Err(bug(format!(
                "{} emitted {event_type}, which {topic} does not carry",
                self.producer
            )));
        }
        self.emitted.push(Deferred {
            topic: topic.to_string(),
            event_type: event_type.to_string(),
            payload,
            event_id,
        });
        Ok(())
    }
}

/// Where an emitted record goes and what identifies it.
struct Outline<'a> {
    topic: &'a str,
    event_type: &'a str,
    /// The key, when not taken from the payload's key fields.
    key: Option<String>,
    /// The payload fields the key comes from; the topic's by default.
    key_fields: Option<&'a [String]>,
    event_id: Uuid,
    correlation_id: Option<String>,
}

/// The envelope of an emitted record, checked against its topic's schema.
fn envelope_for(
    contracts: &'static Contracts,
    producer: &str,
    now: DateTime<Utc>,
    outline: Outline<'_>,
    payload: Json,
) -> Result<(String, String, Envelope), ProcessError> {
    let Outline {
        topic,
        event_type,
        key,
        key_fields,
        event_id,
        correlation_id,
    } = outline;
    let bug = |reason: String| ProcessError::Invalid {
        code: ErrorCode::OutputDoesNotFit,
        reason,
    };
    // The contract names what each processor writes; its ACLs allow no
    // more, so a write outside it is a bug, caught here with its name.
    if let Some(client) = contracts.topics.client(producer)
        && !client.may_write(&contracts.topics, topic)
    {
        return Err(bug(format!(
            "{producer} emitted a record for {topic}, which topics.yaml does not let it write (clients.{producer}.writes)"
        )));
    }
    let (spec, schema) = contracts.topic(topic).map_err(|e| bug(e.to_string()))?;
    let key_fields = key_fields.unwrap_or(&spec.key_fields);
    let converted = envelope::payload_of(schema, event_type, &payload)
        .map_err(|e| bug(format!("{producer} emitted a record that {e}")))?;
    let key = key
        .or_else(|| envelope::key_of(&payload, key_fields))
        .ok_or_else(|| {
            bug(format!(
                "{producer} emitted a {event_type} without any of {key_fields:?}"
            ))
        })?;
    let envelope = Envelope {
        event_id,
        event_type: event_type.to_string(),
        version: 1,
        timestamp_millis: now.timestamp_millis(),
        producer: producer.to_string(),
        correlation_id,
        payload: converted,
    };
    Ok((topic.to_string(), key, envelope))
}

/// What a processor can do while handling a record.
pub struct Context<'a> {
    pub(crate) db: &'a mut PgConnection,
    pub(crate) pool: &'a PgPool,
    pub(crate) scratch: &'a mut Scratch,
    pub(crate) contracts: &'static Contracts,
    pub(crate) producer: &'static str,
    pub(crate) source: &'a Incoming,
    pub(crate) now: DateTime<Utc>,
    /// Records emitted so far, encoded by the runtime after `process` returns.
    pub(crate) emitted: Vec<(String, String, Envelope)>,
    /// Tombstones (key, no value) for compacted topics: (topic, key, id).
    pub(crate) tombstones: Vec<(String, String, Uuid)>,
    /// Where the source topic's progress is read; `None` in unit tests.
    pub(crate) progress: Option<crate::progress::Progress<'a>>,
}

impl<'a> Context<'a> {
    /// The transaction of this batch: state changes go here.
    pub fn db(&mut self) -> &mut PgConnection {
        self.db
    }

    /// The connection pool, for writes that must outlive a rolled-back
    /// batch (caches of upstream answers, shared rate limits). Never for
    /// state that depends on the input: that belongs in [`Context::db`].
    pub fn pool(&self) -> &PgPool {
        self.pool
    }

    /// The batch's scratch (see [`Processor::begin_batch`]).
    pub fn scratch<T: Default + Send + 'static>(&mut self) -> &mut T {
        self.scratch.get()
    }

    /// The record being processed.
    pub fn source(&self) -> &Incoming {
        self.source
    }

    /// Processing time: the runtime's clock at the batch's start
    /// ([`crate::clock`]), the same for every record of the batch.
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// The record's own time: its envelope's timestamp (when it happened,
    /// or when a scheduled command was due).
    pub fn event_time(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(self.source.envelope.timestamp_millis).unwrap_or(self.now)
    }

    /// Emits a record of `event_type` on `topic` with a JSON payload, keyed
    /// by the payload's key field. Its event id is derived from the input's
    /// and the emit's position, so reprocessing emits the same id. The
    /// correlation id is carried over from the input.
    pub fn emit(
        &mut self,
        topic: &str,
        event_type: &str,
        payload: Json,
    ) -> Result<(), ProcessError> {
        self.push(topic, event_type, payload, None, None)
    }

    /// Writes a tombstone for `key` on a compacted `topic`: once the topic
    /// is compacted, nothing of what was published under the key remains
    /// (erasure).
    pub fn tombstone(&mut self, topic: &str, key: &str) {
        let index = self.emitted.len() + self.tombstones.len();
        let id = Uuid::new_v5(
            &self.source.envelope.event_id,
            format!("tombstone/{index}").as_bytes(),
        );
        self.tombstones
            .push((topic.to_string(), key.to_string(), id));
    }

    /// Emits `command.rejected` on `topic` for the record being processed:
    /// the way to answer a well-formed but refused command.
    pub fn reject(
        &mut self,
        topic: &str,
        code: ErrorCode,
        reason: &str,
    ) -> Result<(), ProcessError> {
        let payload = json!({
            "subject_id": self.source.key,
            "command_event_id": self.source.envelope.event_id.to_string(),
            "command_type": self.source.envelope.event_type,
            "error_code": code.as_str(),
            "reason": reason,
        });
        // On a compacted topic the subject's own key holds its latest state
        // (a patient's profile): a rejection under that key would replace
        // it when the topic is compacted. It goes under `<subject>/rejected`.
        let compacted = self
            .contracts
            .topics
            .topic(topic)
            .is_some_and(|spec| spec.compacted());
        let key = compacted.then(|| rejection_key(&self.source.key));
        self.push(
            topic,
            "command.rejected",
            payload,
            Some(&["subject_id".to_string()]),
            key,
        )
    }

    fn push(
        &mut self,
        topic: &str,
        event_type: &str,
        payload: Json,
        key_fields: Option<&[String]>,
        key: Option<String>,
    ) -> Result<(), ProcessError> {
        let event_id = derived_event_id(&self.source.envelope.event_id, self.emitted.len());
        let record = envelope_for(
            self.contracts,
            self.producer,
            self.now,
            Outline {
                topic,
                event_type,
                key,
                key_fields,
                event_id,
                correlation_id: self.source.envelope.correlation_id.clone(),
            },
            payload,
        )?;
        self.emitted.push(record);
        Ok(())
    }
}

/// The key of rejections about `subject` on a compacted topic, beside the
/// subject's own key (erasure tombstones both).
pub fn rejection_key(subject: &str) -> String {
    format!("{subject}/rejected")
}

/// The id of the `index`-th record emitted while processing `input`:
/// deterministic, so a retried or replayed input emits the same ids.
pub fn derived_event_id(input: &Uuid, index: usize) -> Uuid {
    Uuid::new_v5(input, format!("emit/{index}").as_bytes())
}

/// An event a consumer cannot fold into its state: dead-lettered with
/// [`ErrorCode::InvalidEvent`] and `reason`.
pub fn invalid_event(reason: impl Into<String>) -> ProcessError {
    ProcessError::Invalid {
        code: ErrorCode::InvalidEvent,
        reason: reason.into(),
    }
}
