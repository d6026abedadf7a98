//! The example processor: the whole processor API in one screen. It counts
//! matching runs per patient (state in `example.counts`) and answers each run
//! with the count; a run without a patient is rejected, and a patient id
//! starting with `invalid-` shows what a refused record does. Tests and the
//! benchmark run it; `psymatch-example` is its binary.
//!
//! State is read once per batch (`begin_batch`), kept in the batch's
//! scratch while the records are processed, and written once per batch
//! (`finish_batch`): two statements per batch instead of one per record.

use crate::errors::ErrorCode;
use crate::processor::{BatchContext, Context, Incoming, ProcessError, Processor};
use serde_json::json;
use std::collections::HashMap;

/// Counts `matching.run` commands per patient.
pub struct Counter;

/// The counts of a batch's patients: (count, changed by this batch).
type Counts = HashMap<String, (i64, bool)>;

impl Processor for Counter {
    fn name(&self) -> &'static str {
        "example"
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec!["matching-commands"]
    }

    async fn begin_batch(
        &self,
        batch: &mut BatchContext<'_>,
        records: &[&Incoming],
    ) -> Result<(), ProcessError> {
        let patients: Vec<&str> = records
            .iter()
            .filter_map(|r| r.payload["patient_id"].as_str())
            .collect();
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, count FROM example.counts WHERE key = ANY($1)")
                .bind(&patients)
                .fetch_all(batch.db())
                .await?;
        let counts = batch.scratch::<Counts>();
        counts.extend(rows.into_iter().map(|(key, count)| (key, (count, false))));
        Ok(())
    }

    async fn process(&self, ctx: &mut Context<'_>, record: &Incoming) -> Result<(), ProcessError> {
        let Some(patient) = record.payload["patient_id"].as_str() else {
            return ctx.reject(
                "matching-events",
                ErrorCode::InvalidCommand,
                "patient_id is required",
            );
        };
        if patient.starts_with("invalid-") {
            let reason = format!("{patient} is refused by the example");
            return Err(ProcessError::Invalid {
                code: ErrorCode::InvalidCommand,
                reason,
            });
        }
        let entry = ctx
            .scratch::<Counts>()
            .entry(patient.to_string())
            .or_insert((0, false));
        *entry = (entry.0 + 1, true);
        let payload = json!({"patient_id": patient, "candidates_considered": entry.0});
        ctx.emit("matching-events", "matching.search_exhausted", payload)
    }

    async fn finish_batch(&self, batch: &mut BatchContext<'_>) -> Result<(), ProcessError> {
        let (keys, counts): (Vec<String>, Vec<i64>) = batch
            .scratch::<Counts>()
            .iter()
            .filter(|(_, (_, changed))| *changed)
            .map(|(key, (count, _))| (key.clone(), *count))
            .unzip();
        sqlx::query(
            "INSERT INTO example.counts (key, count) SELECT * FROM unnest($1::text[], $2::bigint[])
             ON CONFLICT (key) DO UPDATE SET count = excluded.count",
        )
        .bind(&keys)
        .bind(&counts)
        .execute(batch.db())
        .await?;
        Ok(())
    }
}
