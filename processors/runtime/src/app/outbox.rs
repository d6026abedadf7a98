//! The outbox: the records a transaction emits, committed with its state
//! and published afterwards by the relay (`relay.rs`). Every processor's
//! batches go through one; a process that is not a consumer (the
//! scheduler) uses one the same way, so that its records and its state
//! commit together too.

use super::relay::RELAY_PASS_MAX;
use super::with_options;
use crate::config::RuntimeConfig;
use crate::processor::Outgoing;
use crate::surface::{Metrics, Status};
use anyhow::Context as _;
use rdkafka::producer::{FutureProducer, Producer as _};
use serde_json::{Value as Json, json};
use sqlx::PgPool;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use uuid::Uuid;

/// Most encoded outbox rows kept in memory for the relay: beyond this (a
/// broker away for long) the relay reads them back.
pub(super) const UNSENT_MAX: usize = 100_000;

/// The outbox of one PostgreSQL schema (`<schema>.outbox`) and its relay.
pub struct Outbox {
    pub(super) pool: PgPool,
    /// The schema, checked to be a plain identifier.
    pub(super) schema: String,
    pub(super) config: RuntimeConfig,
    pub(super) metrics: Arc<Metrics>,
    pub(super) status: Arc<Status>,
    pub(super) wake: Notify,
    /// Outbox rows one relay pass publishes: smaller after a pass the
    /// broker could not take in time, so that a slow broker still sees
    /// progress instead of the same large pass timing out again.
    pub(super) limit: AtomicUsize,
    /// Outbox rows this process committed, by id, as encoded: the relay
    /// publishes these from memory instead of reading them back. The
    /// outbox stays the record of what is unpublished: a row not here (a
    /// restart, another replica's, more than [`UNSENT_MAX`]) is read.
    pub(super) unsent: Mutex<BTreeMap<i64, Outgoing>>,
    /// Producer of the relay and of the at-least-once path (see
    /// [`Outbox::producer`]).
    producer: Mutex<FutureProducer>,
    /// The relay's transactional producer (`RELAY=transactional`), made
    /// when the relay first needs it and again after it was fenced.
    pub(super) transactional: tokio::sync::Mutex<Option<FutureProducer>>,
    /// Whether the relay also forgets processed event ids past their
    /// retention (a consumer's dedupe table).
    pub(super) forgets_processed: bool,
}

impl Outbox {
    /// The outbox of `schema` with the runtime's settings (broker, relay
    /// mode, librdkafka options, topic prefix); `consumer`: the schema
    /// also keeps processed event ids, which the relay forgets in time.
    pub fn new(
        schema: &str,
        config: &RuntimeConfig,
        pool: PgPool,
        metrics: Arc<Metrics>,
        status: Arc<Status>,
        consumer: bool,
    ) -> anyhow::Result<Arc<Outbox>> {
        anyhow::ensure!(
            schema.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "schema {schema} must be a plain lower-case identifier"
        );
        let producer = make_producer(schema, config).context("creating the producer")?;
        Ok(Arc::new(Outbox {
            pool,
            schema: schema.to_string(),
            config: config.clone(),
            metrics,
            status,
            wake: Notify::new(),
            limit: AtomicUsize::new(RELAY_PASS_MAX),
            unsent: Mutex::new(BTreeMap::new()),
            producer: Mutex::new(producer),
            transactional: tokio::sync::Mutex::new(None),
            forgets_processed: consumer,
        }))
    }

    /// The producer, made anew when librdkafka declared the last one
    /// fatally failed: a fatal error is final for a producer instance, and
    /// an idempotent producer refused its producer id (its principal
    /// started before `psymatch acls apply`) would otherwise fail every
    /// pass from then on. What it had not delivered is still in the outbox.
    pub(super) fn producer(&self) -> FutureProducer {
        let mut slot = self.producer.lock().expect("producer lock");
        if let Some((_, reason)) = slot.client().fatal_error() {
            match make_producer(&self.schema, &self.config) {
                Ok(fresh) => {
                    tracing::warn!(reason = %reason, "the producer failed fatally; a new one takes over");
                    *slot = fresh;
                }
                Err(error) => tracing::error!(error = %error, "cannot make a new producer"),
            }
        }
        slot.clone()
    }

    /// Inserts `rows` in the caller's transaction; their ids, in the order
    /// of `rows`. Hand them to [`Outbox::committed`] once it committed.
    pub async fn insert(
        &self,
        tx: &mut sqlx::PgConnection,
        rows: &[Outgoing],
    ) -> Result<Vec<i64>, sqlx::Error> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
        let topics: Vec<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
        let keys: Vec<Option<&str>> = rows.iter().map(|r| r.key.as_deref()).collect();
        let values: Vec<Option<&[u8]>> = rows.iter().map(|r| r.value.as_deref()).collect();
        let headers: Vec<String> = rows
            .iter()
            .map(|r| {
                Json::Array(r.headers.iter().map(|(k, v)| json!([k, v])).collect()).to_string()
            })
            .collect();
        let inserted: Vec<(i64, Uuid)> = sqlx::query_as(&format!(
            "INSERT INTO {}.outbox (event_id, topic, key, value, headers)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[])
             RETURNING id, event_id",
            self.schema
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
                    sqlx::Error::Protocol(format!(
                        "outbox row of event {} not returned",
                        row.event_id
                    ))
                })
            })
            .collect()
    }

    /// Rows of a committed transaction, with the ids [`Outbox::insert`]
    /// gave: the relay publishes them from memory, and now.
    pub fn committed(&self, rows: Vec<(i64, Outgoing)>) {
        {
            let mut unsent = self.unsent.lock().expect("unsent lock");
            if unsent.len() + rows.len() <= UNSENT_MAX {
                unsent.extend(rows);
            }
        }
        self.wake();
    }

    /// Wakes the relay: something was committed.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Publishes the outbox in order until `stop` is set and the outbox is
    /// empty; one relay per schema at a time across replicas.
    pub async fn relay(self: Arc<Self>, stop: Arc<std::sync::atomic::AtomicBool>) {
        super::relay::relay_loop(self, stop).await
    }
}

/// The relay's and the at-least-once path's producer for `schema`.
fn make_producer(
    schema: &str,
    config: &RuntimeConfig,
) -> rdkafka::error::KafkaResult<FutureProducer> {
    let mut producer_config =
        crate::broker::producer_config(&config.brokers, &format!("psymatch-{schema}-producer"));
    with_options(&mut producer_config, config);
    producer_config.create()
}
