//! The example processor: the whole processor API in one screen. It counts
//! matching runs per patient (state in `example.counts`) and answers each run
//! with the count; a run without a patient is rejected, and a patient id
//! starting with `invalid-` shows what a refused record does. Tests and the
//! benchmark run it; `psymatch-example` is its binary.

use crate::errors::ErrorCode;
use crate::processor::{Context, Incoming, ProcessError, Processor};
use serde_json::json;

/// Counts `matching.run` commands per patient.
pub struct Counter;

impl Processor for Counter {
    fn name(&self) -> &'static str {
        "example"
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec!["matching-commands"]
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
        let count: i64 = sqlx::query_scalar(
            "INSERT INTO example.counts (key, count) VALUES ($1, 1)
             ON CONFLICT (key) DO UPDATE SET count = counts.count + 1 RETURNING count",
        )
        .bind(patient)
        .fetch_one(ctx.db())
        .await?;
        let payload = json!({"patient_id": patient, "candidates_considered": count});
        ctx.emit("matching-events", "matching.search_exhausted", payload)
    }
}
