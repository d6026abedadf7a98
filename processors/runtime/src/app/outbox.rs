//! The outbox table: a batch's outputs, committed with its state.

use super::Shared;
use super::retry::BatchError;
use crate::processor::{Outgoing, Processor};
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use uuid::Uuid;

/// Inserts `rows` into the outbox; their ids, in the order of `rows`.
pub(super) async fn insert_outbox<P: Processor>(
    shared: &Shared<P>,
    tx: &mut sqlx::PgConnection,
    rows: &[Outgoing],
) -> Result<Vec<i64>, BatchError> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let topics: Vec<&str> = rows.iter().map(|r| r.topic.as_str()).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.key.as_deref()).collect();
    let values: Vec<Option<&[u8]>> = rows.iter().map(|r| r.value.as_deref()).collect();
    let headers: Vec<String> = rows
        .iter()
        .map(|r| Json::Array(r.headers.iter().map(|(k, v)| json!([k, v])).collect()).to_string())
        .collect();
    let inserted: Vec<(i64, Uuid)> = sqlx::query_as(&format!(
        "INSERT INTO {}.outbox (event_id, topic, key, value, headers)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::text[])
         RETURNING id, event_id",
        shared.schema
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
                BatchError::Transient(format!("outbox row of event {} not returned", row.event_id))
            })
        })
        .collect()
}

/// Most encoded outbox rows kept in memory for the relay ([`Shared`]'s
/// `unsent`): beyond this (a broker away for long) the relay reads them.
pub(super) const UNSENT_MAX: usize = 100_000;
