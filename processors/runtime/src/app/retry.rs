//! Retrying: the backoff between attempts and the errors that decide
//! whether a batch is retried.

use crate::processor::ProcessError;
use rand::Rng;
use std::time::Duration;

/// A batch hook's error: the batch is retried (an invalid batch has no
/// single record to dead-letter, so a refusal there is retried too and
/// reported).
pub(super) fn batch_error(error: ProcessError) -> BatchError {
    match error {
        ProcessError::Transient(reason) => BatchError::Transient(reason),
        ProcessError::Invalid { code, reason } => {
            BatchError::Transient(format!("batch hook refused the batch ({code}): {reason}"))
        }
    }
}

/// Capped exponential backoff with full jitter.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(50).saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let ceiling = base.min(cap).as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(ceiling / 2..=ceiling))
}

pub(super) enum BatchError {
    Transient(String),
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        BatchError::Transient(format!("database: {error}"))
    }
}
