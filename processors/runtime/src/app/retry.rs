//! Retrying: the backoff between attempts and the errors that decide
//! whether a batch is retried.

use crate::errors::ErrorCode;
use crate::processor::ProcessError;
use rand::Rng;
use std::time::Duration;

/// A batch hook's error. A refusal there names no record: the worker
/// narrows the batch down to the record that causes it (see
/// [`super::worker`]).
pub(super) fn batch_error(error: ProcessError) -> BatchError {
    match error {
        ProcessError::Transient(reason) => BatchError::Transient(reason),
        ProcessError::Invalid { code, reason } => BatchError::Refused { code, reason },
    }
}

/// Capped exponential backoff with full jitter.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(50).saturating_mul(2u32.saturating_pow(attempt.min(16)));
    let ceiling = base.min(cap).as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(ceiling / 2..=ceiling))
}

/// Why a batch did not commit.
pub(super) enum BatchError {
    /// Trying again later may succeed (a connection, a deadlock, the
    /// registry, the broker).
    Transient(String),
    /// Some record of the batch can never be processed (the processor or
    /// the database refuses it for good): redone record by record, then
    /// narrowed down by halves to that record, which is dead-lettered.
    Refused {
        /// Stable error code for the dead letter.
        code: ErrorCode,
        /// Why, naming no value.
        reason: String,
    },
}

impl BatchError {
    /// The reason, for the status page and the log.
    pub(super) fn reason(&self) -> String {
        match self {
            BatchError::Transient(reason) => reason.clone(),
            BatchError::Refused { code, reason } => format!("{code}: {reason}"),
        }
    }
}

impl From<sqlx::Error> for BatchError {
    fn from(error: sqlx::Error) -> Self {
        match crate::db::refusal(&error) {
            Some(reason) => BatchError::Refused {
                code: ErrorCode::RefusedByDatabase,
                reason,
            },
            None => BatchError::Transient(format!("database: {error}")),
        }
    }
}
