//! The relay: publishes the outbox to Kafka in order and deletes what
//! the broker acknowledged.

use super::outbox::Outbox;
use super::retry::backoff;
use super::with_options;
use crate::config::Relay;
use crate::events::{Event, PublishFailed, RelayRetried};
use crate::processor::Outgoing;
use rdkafka::error::KafkaResult;
use rdkafka::producer::{FutureProducer, Producer};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Most outbox rows in one relay pass.
pub(super) const RELAY_PASS_MAX: usize = 5_000;

/// Records the broker did not all acknowledge: how many at the start were
/// (in order), and why the next one failed.
pub(super) struct Unpublished {
    pub(super) acknowledged: usize,
    pub(super) reason: String,
}

/// Publishes records and waits until the broker acknowledged every one.
pub(super) async fn publish(
    shared: &Outbox,
    producer: &FutureProducer,
    records: &[Outgoing],
) -> Result<(), Unpublished> {
    let sends = records
        .iter()
        .map(|record| producer.send(record.record(), Duration::from_secs(30)));
    let results = futures::future::join_all(sends).await;
    let mut per_topic: BTreeMap<&str, u64> = BTreeMap::new();
    let mut failed = None;
    for (n, (result, record)) in results.iter().zip(records).enumerate() {
        if let Err((error, _)) = result {
            // An ACL refusal names the principal and what to run.
            let reason = crate::broker::refusal(
                &shared.config.brokers,
                &record.topic,
                error,
                "run psymatch acls apply",
            );
            PublishFailed {
                topic: &record.topic,
                error: &error.to_string(),
            }
            .emit(&shared.metrics);
            failed = Some(Unpublished {
                acknowledged: n,
                reason: format!("publishing: {reason}"),
            });
            break;
        }
        *per_topic
            .entry(shared.config.logical(&record.topic))
            .or_default() += 1;
    }
    for (topic, count) in per_topic {
        shared
            .metrics
            .produced
            .with_label_values(&[topic])
            .inc_by(count);
    }
    failed.map_or(Ok(()), Err)
}

/// Publishes `records` in one Kafka transaction: all of them become
/// readable (read_committed) or none. A failed transaction is aborted and
/// counts as nothing acknowledged; a producer that cannot abort (fenced by
/// another replica's relay, or in a fatal state) is replaced next pass.
async fn publish_in_transaction(shared: &Outbox, records: &[Outgoing]) -> Result<(), Unpublished> {
    let none = |reason: String| Unpublished {
        acknowledged: 0,
        reason,
    };
    let producer = transactional_producer(shared).await.map_err(none)?;
    let p = producer.clone();
    if let Err(reason) = blocking(move || p.begin_transaction()).await {
        *shared.transactional.lock().await = None;
        return Err(none(format!("beginning a transaction: {reason}")));
    }
    let outcome = match publish(shared, &producer, records).await {
        Ok(()) => {
            let p = producer.clone();
            blocking(move || p.commit_transaction(Duration::from_secs(30)))
                .await
                .map_err(|reason| format!("committing the transaction: {reason}"))
        }
        Err(failed) => Err(failed.reason),
    };
    if let Err(reason) = outcome {
        let p = producer.clone();
        if blocking(move || p.abort_transaction(Duration::from_secs(30)))
            .await
            .is_err()
        {
            *shared.transactional.lock().await = None;
        }
        return Err(none(reason));
    }
    Ok(())
}

/// The relay's transactional producer, made and initialised (which fences
/// any earlier producer of the same transactional id and aborts its open
/// transaction) on first use.
async fn transactional_producer(shared: &Outbox) -> Result<FutureProducer, String> {
    let mut slot = shared.transactional.lock().await;
    if let Some(producer) = slot.as_ref() {
        return Ok(producer.clone());
    }
    let mut config = crate::broker::producer_config(
        &shared.config.brokers,
        &format!("psymatch-{}-relay", shared.schema),
    );
    config.set(
        "transactional.id",
        format!("psymatch-relay-{}-{}", shared.schema, shared.config.group),
    );
    with_options(&mut config, &shared.config);
    let producer: FutureProducer = config
        .create()
        .map_err(|e| format!("creating the transactional producer: {e}"))?;
    let p = producer.clone();
    blocking(move || p.init_transactions(Duration::from_secs(30)))
        .await
        .map_err(|reason| format!("initialising transactions: {reason}"))?;
    *slot = Some(producer.clone());
    Ok(producer)
}

/// Runs a blocking rdkafka call off the async workers.
async fn blocking<T: Send + 'static>(
    call: impl FnOnce() -> KafkaResult<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(call)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Publishes the outbox in order until `drained` is set and the outbox is
/// empty; one relay per processor
/// schema at a time (advisory lock), so replicas never interleave.
pub(super) async fn relay_loop(shared: Arc<Outbox>, stop: Arc<AtomicBool>) {
    let mut attempt = 0u32;
    let mut cleaned: Option<Instant> = None;
    loop {
        // Processed ids are needed only as long as a duplicate can arrive.
        if shared.forgets_processed
            && cleaned.is_none_or(|at| at.elapsed() > Duration::from_secs(600))
        {
            match forget_processed(&shared).await {
                Ok(removed) if removed > 0 => {
                    tracing::info!(removed, "old processed event ids removed")
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %error, "removing old processed event ids failed")
                }
            }
            cleaned = Some(Instant::now());
        }
        let stopping = stop.load(Ordering::SeqCst);
        match relay_pass(&shared).await {
            Ok(0) if stopping => break,
            Ok(0) => {
                attempt = 0;
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            Ok(_) => attempt = 0,
            Err(reason) => {
                attempt += 1;
                shared.status.error(reason.clone());
                let reason = reason.as_str();
                RelayRetried { attempt, reason }.emit(&shared.metrics);
                if stopping && attempt > 3 {
                    break;
                }
                tokio::time::sleep(backoff(attempt, shared.config.max_backoff)).await;
            }
        }
    }
}

/// Deletes processed event ids older than the dedupe retention.
async fn forget_processed(shared: &Outbox) -> Result<u64, sqlx::Error> {
    // A retention too long to subtract from now means: keep everything.
    let Some(cutoff) = chrono::Duration::from_std(shared.config.dedupe_retention)
        .ok()
        .and_then(|retention| chrono::Utc::now().checked_sub_signed(retention))
    else {
        return Ok(0);
    };
    let result = sqlx::query(&format!(
        "DELETE FROM {}.processed_events WHERE processed_at < $1",
        shared.schema
    ))
    .bind(cutoff)
    .execute(&shared.pool)
    .await?;
    Ok(result.rows_affected())
}

/// One pass: publish up to [`RELAY_PASS_MAX`] outbox rows (fewer after a
/// failed pass) and delete the acknowledged ones.
async fn relay_pass(shared: &Outbox) -> Result<usize, String> {
    let failed = |e: sqlx::Error| format!("relay database: {e}");
    let mut tx = shared.pool.begin().await.map_err(failed)?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext($1))")
        .bind(format!("psymatch.relay.{}", shared.schema))
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
    if !locked {
        return Ok(0);
    }
    let ids: Vec<i64> = sqlx::query_scalar(&format!(
        "SELECT id FROM {}.outbox ORDER BY id LIMIT {}",
        shared.schema,
        shared.limit.load(Ordering::SeqCst)
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(failed)?;
    shared.metrics.outbox_pending.set(ids.len() as i64);
    if ids.is_empty() {
        return Ok(0);
    }
    let mut rows: Vec<(i64, Option<Outgoing>)> = {
        let mut unsent = shared.unsent.lock().expect("unsent lock");
        // Rows before the first unpublished one were published by another
        // replica's relay: forgotten.
        *unsent = unsent.split_off(&ids[0]);
        ids.iter().map(|id| (*id, unsent.remove(id))).collect()
    };
    let missing: Vec<i64> = rows
        .iter()
        .filter(|(_, row)| row.is_none())
        .map(|(id, _)| *id)
        .collect();
    if !missing.is_empty() {
        type Row = (i64, Uuid, String, Option<String>, Option<Vec<u8>>, String);
        let read: Vec<Row> = sqlx::query_as(&format!(
            "SELECT id, event_id, topic, key, value, headers FROM {}.outbox WHERE id = ANY($1)",
            shared.schema
        ))
        .bind(&missing)
        .fetch_all(&mut *tx)
        .await
        .map_err(failed)?;
        let mut read: HashMap<i64, Outgoing> = read
            .into_iter()
            .map(|(id, event_id, topic, key, value, headers)| {
                let headers = serde_json::from_str::<Vec<(String, Option<String>)>>(&headers)
                    .unwrap_or_default();
                let row = Outgoing {
                    event_id,
                    topic,
                    key,
                    value,
                    headers,
                };
                (id, row)
            })
            .collect();
        for (id, row) in rows.iter_mut().filter(|(_, row)| row.is_none()) {
            *row = read.remove(id);
        }
    }
    // Rows are deleted only by the relay holding the lock: each one is here.
    let (ids, outgoing): (Vec<i64>, Vec<Outgoing>) = rows
        .into_iter()
        .filter_map(|(id, row)| row.map(|row| (id, row)))
        .unzip();
    // The rows the broker acknowledged, in order, go even when a later one
    // failed: the next pass starts after them (a row acknowledged after the
    // failure is published again; consumers drop it by its event id).
    let published = match shared.config.relay {
        Relay::Idempotent => publish(shared, &shared.producer(), &outgoing).await,
        Relay::Transactional => publish_in_transaction(shared, &outgoing).await,
    };
    let acknowledged = match &published {
        Ok(()) => outgoing.len(),
        Err(failed) => failed.acknowledged,
    };
    let limit = &shared.limit;
    let next = match &published {
        Ok(()) => (limit.load(Ordering::SeqCst) * 2).min(RELAY_PASS_MAX),
        Err(_) => (limit.load(Ordering::SeqCst) / 4).max(50),
    };
    limit.store(next, Ordering::SeqCst);
    sqlx::query(&format!(
        "DELETE FROM {}.outbox WHERE id = ANY($1)",
        shared.schema
    ))
    .bind(&ids[..acknowledged])
    .execute(&mut *tx)
    .await
    .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    published.map(|()| outgoing.len()).map_err(|failed| {
        format!(
            "{} ({acknowledged} of {} published; next pass at most {next})",
            failed.reason,
            outgoing.len()
        )
    })
}
