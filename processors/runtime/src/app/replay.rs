//! Replay: a processor that journals its batches ([`Processor::journal`])
//! run again over the records those batches held, read from the topics,
//! in the journal's order and each at its journaled "now", through the
//! same batch code the live runtime runs, into a scratch database. What
//! it emits stays in the scratch database's outbox: no relay runs, no
//! record is produced, no group joins, and the live database is only
//! read, in read-only transactions. With the live processor's settings
//! a replay reproduces its outputs byte for byte (the same event ids,
//! timestamps and payloads); with others it shows what they would change.

use super::Shared;
use super::batch::process_batch;
use super::retry::backoff;
use crate::clock::ManualClock;
use crate::config::{Guarantee, RuntimeConfig};
use crate::processor::Processor;
use chrono::{DateTime, Utc};
use rdkafka::Message;
use rdkafka::message::OwnedMessage;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// One journaled batch: the records of `topic`'s `partition` from
/// `first` up to `next`, decided at `at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journaled {
    /// Its place in the journal (commit order).
    pub seq: i64,
    /// Logical topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// First offset of the batch.
    pub first: i64,
    /// The offset after its last record.
    pub next: i64,
    /// The batch's "now".
    pub at: DateTime<Utc>,
    /// Records the processor saw in it.
    pub records: i32,
}

/// A row of `batch_journal`: seq, topic, partition, first and next
/// offset, decided at, records.
type JournalRow = (i64, String, i32, i64, i64, DateTime<Utc>, i32);

/// A row of the outbox: topic, key, event id, value.
type OutboxRow = (String, Option<String>, Uuid, Option<Vec<u8>>);

/// The journal of `schema` up to `until` (all of it: `None`), in order,
/// read in a read-only transaction.
pub async fn read_journal(
    live: &PgPool,
    schema: &str,
    until: Option<DateTime<Utc>>,
) -> anyhow::Result<Vec<Journaled>> {
    anyhow::ensure!(
        schema.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "schema {schema} must be a plain lower-case identifier"
    );
    let mut tx = live.begin().await?;
    sqlx::query("SET TRANSACTION READ ONLY")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<JournalRow> = sqlx::query_as(&format!(
        "SELECT seq, topic, partition, first_offset, next_offset, decided_at, records
           FROM {schema}.batch_journal
          WHERE $1::timestamptz IS NULL OR decided_at <= $1
          ORDER BY seq"
    ))
    .bind(until)
    .fetch_all(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok(rows
        .into_iter()
        .map(
            |(seq, topic, partition, first, next, at, records)| Journaled {
                seq,
                topic,
                partition,
                first,
                next,
                at,
                records,
            },
        )
        .collect())
}

/// The input records a journal names, by logical topic and partition, in
/// offset order.
#[derive(Default)]
pub struct Inputs {
    by_partition: HashMap<(String, i32), Vec<OwnedMessage>>,
    /// Records read.
    pub records: usize,
}

impl Inputs {
    /// Reads the records of `topics` (logical; the configuration's
    /// prefix) from the topics, leaving no trace on the broker; `read`
    /// is told the count as it grows.
    pub fn fetch(
        config: &RuntimeConfig,
        topics: &[&str],
        mut read: impl FnMut(usize),
    ) -> anyhow::Result<Inputs> {
        let mut inputs = Inputs::default();
        let mut count = 0usize;
        crate::broker::read_topics(&config.brokers, &config.topic_prefix, topics, |topic, m| {
            inputs
                .by_partition
                .entry((topic.to_string(), m.partition()))
                .or_default()
                .push(m.detach());
            count += 1;
            if count.is_multiple_of(10_000) {
                read(count);
            }
        })?;
        for messages in inputs.by_partition.values_mut() {
            messages.sort_by_key(|m| m.offset());
        }
        inputs.records = count;
        Ok(inputs)
    }

    /// The records of one journaled batch; an error when the topic no
    /// longer holds all of them (retention, compaction).
    fn of(&self, batch: &Journaled) -> anyhow::Result<&[OwnedMessage]> {
        let messages = self
            .by_partition
            .get(&(batch.topic.clone(), batch.partition))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        let start = messages.partition_point(|m| m.offset() < batch.first);
        let end = messages.partition_point(|m| m.offset() < batch.next);
        let slice = &messages[start..end];
        anyhow::ensure!(
            slice.first().is_some_and(|m| m.offset() == batch.first),
            "journaled batch {} ({} partition {}, offsets {}..{}) is no longer in the topic \
             (retention or compaction removed it): a replay needs the whole history",
            batch.seq,
            batch.topic,
            batch.partition,
            batch.first,
            batch.next
        );
        Ok(slice)
    }
}

/// A record a replay emitted, as the outbox holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emitted {
    /// Logical topic.
    pub topic: String,
    /// Kafka key.
    pub key: Option<String>,
    /// The envelope's event id.
    pub event_id: Uuid,
    /// The encoded value (Confluent wire format), as it would be published.
    pub value: Vec<u8>,
}

/// How far a replay has come.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Batches replayed.
    pub batches: usize,
    /// Of this many.
    pub of_batches: usize,
    /// Records in the batches replayed.
    pub records: usize,
    /// Records in all the batches.
    pub of_records: usize,
}

/// Replays `journal` with `processor` on the scratch database of
/// `config` (migrated here), the records taken from `inputs`; returns
/// what it emitted, in order. The configuration's guarantee is set to
/// effectively once (so everything lands in the outbox) and its clock to
/// each batch's journaled time; the outbox is never relayed.
pub async fn replay<P: Processor>(
    processor: P,
    mut config: RuntimeConfig,
    journal: &[Journaled],
    inputs: &Inputs,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Vec<Emitted>> {
    anyhow::ensure!(
        processor.journal(),
        "{} keeps no batch journal: it cannot be replayed",
        processor.name()
    );
    let clock = ManualClock::at(journal.first().map_or_else(Utc::now, |b| b.at));
    config.clock = Arc::new(clock.clone());
    config.guarantee = Guarantee::EffectivelyOnce;
    let pool = crate::db::connect_sized(&config.database_url, config.db_pool_size).await?;
    crate::db::migrate(&pool).await?;
    let shared = Shared::new(processor, config, pool)?;
    shared
        .processor
        .warm_up(&shared.pool)
        .await
        .map_err(|e| anyhow::anyhow!("warming up: {e:?}"))?;
    let of_records = journal.iter().map(|b| b.records.max(0) as usize).sum();
    let mut done = Progress {
        batches: 0,
        of_batches: journal.len(),
        records: 0,
        of_records,
    };
    for batch in journal {
        let messages = inputs.of(batch)?;
        clock.set(batch.at);
        let mut attempt = 0u32;
        loop {
            match process_batch(&shared, messages, attempt > 0).await {
                Ok(()) => break,
                Err(error) => {
                    let reason = error.reason();
                    attempt += 1;
                    // The first retry is the careful one a refused record
                    // asks for; more mean the scratch database is failing.
                    anyhow::ensure!(
                        attempt <= 5,
                        "journaled batch {} failed {attempt} times: {reason}",
                        batch.seq
                    );
                    if attempt > 1 {
                        tokio::time::sleep(backoff(attempt, shared.config.max_backoff)).await;
                    }
                }
            }
        }
        // The relay's in-memory copy of the outbox: nobody relays here.
        shared.outbox.unsent.lock().expect("outbox lock").clear();
        done.batches += 1;
        done.records += batch.records.max(0) as usize;
        progress(done);
    }
    let rows: Vec<OutboxRow> = sqlx::query_as(&format!(
        "SELECT topic, key, event_id, value FROM {}.outbox ORDER BY id",
        shared.schema
    ))
    .fetch_all(&shared.pool)
    .await?;
    shared.pool.close().await;
    let prefix = &shared.config.topic_prefix;
    Ok(rows
        .into_iter()
        .map(|(topic, key, event_id, value)| Emitted {
            topic: topic
                .strip_prefix(prefix.as_str())
                .unwrap_or(&topic)
                .to_string(),
            key,
            event_id,
            value: value.unwrap_or_default(),
        })
        .collect())
}

/// An emitted record decoded: what a report reads.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// Logical topic.
    pub topic: String,
    /// Event type.
    pub event_type: String,
    /// Event id.
    pub event_id: Uuid,
    /// The envelope's time.
    pub at: DateTime<Utc>,
    /// The payload as JSON.
    pub payload: serde_json::Value,
}

impl Emitted {
    /// The record decoded with its topic's schema (the writer's schema
    /// from the registry).
    pub async fn decode(&self, codec: &crate::codec::Codec) -> anyhow::Result<Decoded> {
        let contracts = crate::contracts::Contracts::embedded();
        let (spec, schema) = contracts.topic(&self.topic)?;
        let value = codec
            .decode_as(&self.value, &schema.schema)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.topic))?;
        let key = self.key.as_deref().unwrap_or_default();
        let (envelope, payload) = crate::envelope::check(schema, &spec.key_fields, key, value)
            .map_err(|(code, reason)| anyhow::anyhow!("{}: {code}: {reason}", self.topic))?;
        Ok(Decoded {
            topic: self.topic.clone(),
            event_type: envelope.event_type,
            event_id: envelope.event_id,
            at: DateTime::from_timestamp_millis(envelope.timestamp_millis).unwrap_or_default(),
            payload,
        })
    }
}

/// What `producer` published on the logical `topics` (the configuration's
/// prefix), in the order read, leaving no trace on the broker: the live
/// outputs a replay is compared with.
pub fn published_by(
    config: &RuntimeConfig,
    producer: &str,
    topics: &[&str],
) -> anyhow::Result<Vec<Emitted>> {
    use rdkafka::message::Headers;
    let mut found = Vec::new();
    crate::broker::read_topics(&config.brokers, &config.topic_prefix, topics, |topic, m| {
        let header = |name: &str| {
            m.headers().and_then(|headers| {
                headers
                    .iter()
                    .find(|h| h.key == name)
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
            })
        };
        if header(crate::envelope::header::PRODUCER).as_deref() != Some(producer) {
            return;
        }
        let Some(event_id) =
            header(crate::envelope::header::EVENT_ID).and_then(|id| Uuid::parse_str(&id).ok())
        else {
            return;
        };
        found.push(Emitted {
            topic: topic.to_string(),
            key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            event_id,
            value: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
        });
    })?;
    Ok(found)
}
