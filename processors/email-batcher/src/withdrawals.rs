//! Inquiries the matcher takes back (`email.withdraw_inquiry`: the
//! practice answered by phone before the email went out, or the patient
//! was placed elsewhere), and the flush that never outruns them.
//!
//! A withdrawal is keyed by the practice, like its inquiry, so on its
//! partition it follows the inquiry. A flush arrives on any partition: it
//! sends an inquiry only when every record published on the inquiry's
//! partition before the flush has been read and committed (the
//! partitions' high watermarks at the flush against the offsets committed
//! by every worker and replica), or when the inquiry came on the flush's
//! own partition. The inquiries of a partition still behind wait for a
//! later flush (the schedule's weekly one, or one a person publishes).

use crate::store::{self, Withdrawal};
use crate::{EVENTS, EmailBatcher, Scratch};
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::processor::{Context, Incoming, ProcessError};

impl EmailBatcher {
    /// `email.withdraw_inquiry`: the patients leave the inquiry if it is
    /// not sent; one left without patients is not sent at all.
    pub(crate) async fn withdraw(
        &self,
        ctx: &mut Context<'_>,
        record: &Incoming,
    ) -> Result<(), ProcessError> {
        let p = &record.payload;
        let inquiry = p["inquiry_id"].as_str().unwrap_or_default().to_string();
        let patients: Vec<String> = p["patient_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|id| id.as_str().map(str::to_string))
            .collect();
        if inquiry.trim().is_empty() || patients.is_empty() {
            return ctx.reject(
                EVENTS,
                ErrorCode::InvalidCommand,
                "a withdrawal names an inquiry and at least one patient",
            );
        }
        // Waiting in this batch: it leaves before it is stored.
        let scratch = ctx.scratch::<Scratch>();
        for waiting in scratch
            .waiting
            .iter_mut()
            .filter(|w| w.inquiry_id == inquiry)
        {
            if let Some(list) = waiting.patients.as_array_mut() {
                list.retain(|s| !patients.iter().any(|id| s["patient_id"] == id.as_str()));
            }
        }
        scratch
            .waiting
            .retain(|w| w.patients.as_array().is_some_and(|list| !list.is_empty()));
        scratch.withdrawn.push((inquiry.clone(), patients.clone()));
        // Stored by an earlier batch: withdrawn at once, outside this
        // batch's transaction, so that a flush (which claims through the
        // pool) sees it; repeated when this batch is retried, harmlessly.
        let mut conn = ctx.pool().acquire().await?;
        let outcome = store::withdraw(&mut conn, &inquiry, &patients).await?;
        let label = match outcome {
            Withdrawal::Withdrawn => "withdrawn",
            Withdrawal::Narrowed => "narrowed",
            Withdrawal::TooLate => "too_late",
            Withdrawal::Unknown => "unknown",
        };
        self.metrics.withdrawals.with_label_values(&[label]).inc();
        tracing::info!(inquiry_id = %inquiry, outcome = label, "inquiry withdrawal");
        Ok(())
    }
}

/// The partitions of the flush's topic, other than its own, not yet read
/// and committed up to where they stand now (their high watermarks against
/// the offsets every worker and replica committed): a withdrawal published
/// there before the flush may be unread, so their inquiries wait for a
/// later flush. Its own partition is read in order: what came before the
/// flush there has been processed. The flush does not wait for the
/// others: two flushes on two partitions would wait for each other.
pub(crate) async fn behind(ctx: &mut Context<'_>) -> Result<Vec<i32>, ProcessError> {
    let own = ctx.source().partition;
    let ends = ctx.source_ends().await?;
    let committed = ctx.source_committed().await?;
    let behind: Vec<i32> = ends
        .iter()
        .filter(|(p, low, high)| {
            *p != own && committed.get(p).copied().unwrap_or(0).max(*low) < *high
        })
        .map(|(p, ..)| *p)
        .collect();
    if !behind.is_empty() {
        tracing::info!(
            ?behind,
            "flush: partitions not read up to now; their inquiries wait for a later flush"
        );
    }
    Ok(behind)
}
