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
//! own partition. A flush that finds partitions behind waits for them
//! (retried, up to `FLUSH_CATCH_UP_SECS`): the other partitions' workers
//! read on meanwhile, so an inquiry published just before the flush goes
//! with it. The inquiries of a partition still behind after that wait for
//! a later flush (the schedule's weekly one, or one a person publishes).

use crate::store::{self, Withdrawal};
use crate::{EVENTS, EmailBatcher, Scratch};
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::processor::{Context, Incoming, ProcessError};
use std::time::{Duration, Instant};

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

/// A flush waiting for partitions behind it ([`EmailBatcher::flush_behind`]).
pub(crate) struct WaitingFlush {
    /// Since when (process time: a wait for this process's progress).
    since: Instant,
    /// Each other partition's low and high watermark when the flush was
    /// first read: what was published there before it.
    ends: Vec<(i32, i64, i64)>,
}

impl EmailBatcher {
    /// The partitions of the flush's topic, other than its own, not yet
    /// read and committed up to where they stood when the flush was first
    /// read (their high watermarks then against the offsets every worker
    /// and replica committed): a withdrawal published there before the
    /// flush may be unread. Its own partition is read in order.
    ///
    /// While some are behind, the flush is retried (a transient error)
    /// until they catch up, for at most `FLUSH_CATCH_UP_SECS`; then it goes
    /// on and their inquiries wait for a later flush. One flush waits at a
    /// time in a process: a second one, which might be what the first
    /// waits for, goes on at once (two waiting for each other's partitions
    /// would stall both).
    pub(crate) async fn flush_behind(
        &self,
        ctx: &mut Context<'_>,
    ) -> Result<Vec<i32>, ProcessError> {
        let id = ctx.source().envelope.event_id;
        let own = ctx.source().partition;
        let known = self
            .waiting_flushes
            .lock()
            .expect("flush lock")
            .get(&id)
            .map(|w| w.ends.clone());
        let ends = match known {
            Some(ends) => ends,
            None => ctx.source_ends().await?,
        };
        let committed = ctx.source_committed().await?;
        let behind: Vec<i32> = ends
            .iter()
            .filter(|(p, low, high)| {
                *p != own && committed.get(p).copied().unwrap_or(0).max(*low) < *high
            })
            .map(|(p, ..)| *p)
            .collect();
        let mut waiting = self.waiting_flushes.lock().expect("flush lock");
        if behind.is_empty() {
            waiting.remove(&id);
            return Ok(behind);
        }
        // A flush given up elsewhere (dead-lettered, taken over by another
        // replica) leaves its entry: dropped once long over.
        let bound = self.config.catch_up;
        waiting.retain(|_, w| w.since.elapsed() < bound * 10 + Duration::from_secs(60));
        if !waiting.contains_key(&id) && !waiting.is_empty() {
            tracing::info!(
                ?behind,
                "flush: partitions behind; another flush waits, this one goes on"
            );
            return Ok(behind);
        }
        let since = waiting
            .entry(id)
            .or_insert_with(|| WaitingFlush {
                since: Instant::now(),
                ends,
            })
            .since;
        if since.elapsed() >= bound {
            tracing::info!(
                ?behind,
                waited_secs = since.elapsed().as_secs(),
                "flush: partitions still behind; their inquiries wait for a later flush"
            );
            waiting.remove(&id);
            return Ok(behind);
        }
        Err(ProcessError::Transient(format!(
            "flush: email-commands partitions {behind:?} are not yet read up to the flush; \
             it waits for them (up to FLUSH_CATCH_UP_SECS={})",
            bound.as_secs()
        )))
    }
}
