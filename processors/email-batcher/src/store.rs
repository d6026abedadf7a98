//! The email batcher's tables: waiting inquiries, emails with their
//! attempts, and the weekly-limit windows (see the migration).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::time::Duration;
use uuid::Uuid;

/// An inquiry to keep until its recipient's window.
#[derive(Debug, Clone)]
pub struct Waiting {
    /// Inquiry id.
    pub inquiry_id: String,
    /// Therapist id.
    pub therapist_id: String,
    /// Lower-case address.
    pub recipient: String,
    /// Greeting data.
    pub addressee: Value,
    /// Patient summaries.
    pub patients: Value,
    /// The partition of email-commands it came from.
    pub source_partition: i32,
}

/// When each of `recipients` last opened a window.
pub async fn windows(
    db: &mut PgConnection,
    recipients: &[String],
) -> Result<HashMap<String, DateTime<Utc>>, sqlx::Error> {
    let rows: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT recipient, opened_at FROM email_batcher.windows WHERE recipient = ANY($1)",
    )
    .bind(recipients)
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Stores inquiries (an inquiry id seen before is kept as it was).
pub async fn keep(db: &mut PgConnection, waiting: &[Waiting]) -> Result<(), sqlx::Error> {
    if waiting.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&Waiting) -> String| waiting.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO email_batcher.inquiries
                (inquiry_id, therapist_id, recipient, addressee, patients, source_partition)
         SELECT i, t, r, a::jsonb, p::jsonb, s
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[])
             AS w(i, t, r, a, p, s)
         ON CONFLICT (inquiry_id) DO NOTHING",
    )
    .bind(column(|w| w.inquiry_id.clone()))
    .bind(column(|w| w.therapist_id.clone()))
    .bind(column(|w| w.recipient.clone()))
    .bind(column(|w| w.addressee.to_string()))
    .bind(column(|w| w.patients.to_string()))
    .bind(
        waiting
            .iter()
            .map(|w| w.source_partition)
            .collect::<Vec<_>>(),
    )
    .execute(db)
    .await?;
    Ok(())
}

/// The times a flush decides windows with (docs/writing-a-processor.md,
/// "Time"): a window is over only when it is over by both the runtime's
/// clock and the flush's own time (`check`, the earlier of the two), so a
/// flush stamped in the past, or one ahead of the clock, never opens a
/// second window early; a window opened is recorded at the clock's `now`.
#[derive(Debug, Clone, Copy)]
pub struct Times {
    /// The earlier of the clock and the flush's event time.
    pub check: DateTime<Utc>,
    /// The runtime's clock.
    pub now: DateTime<Utc>,
}

/// What a withdrawal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withdrawal {
    /// Nobody is left: the inquiry is not sent.
    Withdrawn,
    /// Others are left: the inquiry goes without the patients taken out.
    Narrowed,
    /// It is on its way or sent already.
    TooLate,
    /// No such inquiry (not stored yet, or never).
    Unknown,
}

/// Takes `patients` out of the inquiry if it is not sent; marks it
/// withdrawn when nobody is left. Idempotent: a repeat finds them gone.
pub async fn withdraw(
    db: &mut PgConnection,
    inquiry: &str,
    patients: &[String],
) -> Result<Withdrawal, sqlx::Error> {
    let left: Option<(i32, bool)> = sqlx::query_as(
        "WITH kept AS (
             SELECT coalesce(jsonb_agg(p), '[]'::jsonb) AS patients
               FROM email_batcher.inquiries i, jsonb_array_elements(i.patients) p
              WHERE i.inquiry_id = $1 AND NOT (p->>'patient_id' = ANY($2)))
         UPDATE email_batcher.inquiries i
            SET patients = kept.patients,
                withdrawn_at = CASE WHEN kept.patients = '[]'::jsonb
                                    THEN coalesce(i.withdrawn_at, now()) END
           FROM kept
          WHERE i.inquiry_id = $1 AND i.email_id IS NULL
         RETURNING jsonb_array_length(i.patients), i.withdrawn_at IS NOT NULL",
    )
    .bind(inquiry)
    .bind(patients)
    .fetch_optional(&mut *db)
    .await?;
    if let Some((_, withdrawn)) = left {
        return Ok(if withdrawn {
            Withdrawal::Withdrawn
        } else {
            Withdrawal::Narrowed
        });
    }
    let stored: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM email_batcher.inquiries WHERE inquiry_id = $1")
            .bind(inquiry)
            .fetch_optional(&mut *db)
            .await?;
    Ok(if stored.is_some() {
        Withdrawal::TooLate
    } else {
        Withdrawal::Unknown
    })
}

/// Attempts whose process stopped while handing them over: reported as
/// unknown, never resent inside their window; their inquiries wait for the
/// recipient's next window. Returns how many.
pub async fn recover(pool: &PgPool, timeout: Duration) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let stale: Vec<Uuid> = sqlx::query_scalar(
        "UPDATE email_batcher.emails
            SET status = 'UNKNOWN', error_code = 'PSY-T-004',
                reason = 'the process stopped while handing the email to SMTP: it may or may not have been sent; not resent inside its window, its inquiries wait for the next one'
          WHERE status = 'ATTEMPTED' AND attempted_at < now() - make_interval(secs => $1)
         RETURNING email_id",
    )
    .bind(timeout.as_secs_f64())
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query("UPDATE email_batcher.inquiries SET email_id = NULL WHERE email_id = ANY($1)")
        .bind(&stale)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(stale.len() as u64)
}

/// An email that won its recipient's window and is recorded as attempted.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// Email id (its Message-ID derives from it).
    pub email_id: Uuid,
    /// Address.
    pub recipient: String,
    /// The first inquiry's therapist.
    pub therapist_id: String,
    /// Greeting data.
    pub addressee: Value,
    /// (inquiry id, patient summaries) in arrival order.
    pub inquiries: Vec<(String, Value)>,
    /// When the oldest inquiry arrived.
    pub waiting_since: DateTime<Utc>,
}

/// A claimed inquiry row.
type ClaimedRow = (Uuid, String, String, String, Value, Value, DateTime<Utc>);

/// Opens the window of up to `limit` recipients with waiting inquiries
/// whose last window is over, attaches their inquiries and records the
/// attempts, in one transaction committed before anything is sent. The
/// window upsert succeeds only when the recipient's last window is over,
/// so of replicas racing for an address exactly one wins it.
pub async fn claim(
    pool: &PgPool,
    window: Duration,
    limit: i64,
    behind: &[i32],
    times: Times,
) -> Result<Vec<Claimed>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let rows: Vec<ClaimedRow> = sqlx::query_as(
        "WITH candidates AS (
            SELECT i.recipient, min(i.received_at) AS first FROM email_batcher.inquiries i
             WHERE i.email_id IS NULL AND i.withdrawn_at IS NULL
               AND NOT (coalesce(i.source_partition, -1) = ANY($3))
               AND NOT EXISTS (SELECT 1 FROM email_batcher.windows w
                                WHERE w.recipient = i.recipient
                                  AND w.opened_at > $4 - make_interval(secs => $2))
             GROUP BY i.recipient ORDER BY first LIMIT $1),
         won AS (
            INSERT INTO email_batcher.windows (recipient, opened_at, email_id)
            SELECT recipient, $5, gen_random_uuid() FROM candidates
            ON CONFLICT (recipient) DO UPDATE SET opened_at = excluded.opened_at, email_id = excluded.email_id
             WHERE email_batcher.windows.opened_at <= $4 - make_interval(secs => $2)
            RETURNING recipient, email_id)
         UPDATE email_batcher.inquiries i SET email_id = won.email_id FROM won
          WHERE i.recipient = won.recipient AND i.email_id IS NULL AND i.withdrawn_at IS NULL
            AND NOT (coalesce(i.source_partition, -1) = ANY($3))
         RETURNING i.email_id, i.recipient, i.therapist_id, i.inquiry_id, i.addressee, i.patients, i.received_at",
    )
    .bind(limit)
    .bind(window.as_secs_f64())
    .bind(behind)
    .bind(times.check)
    .bind(times.now)
    .fetch_all(&mut *tx)
    .await?;
    let mut by_email: HashMap<Uuid, Claimed> = HashMap::new();
    let mut order = Vec::new();
    for (email_id, recipient, therapist_id, inquiry_id, addressee, patients, received_at) in rows {
        let entry = by_email.entry(email_id).or_insert_with(|| {
            order.push(email_id);
            Claimed {
                email_id,
                recipient,
                therapist_id,
                addressee,
                inquiries: Vec::new(),
                waiting_since: received_at,
            }
        });
        entry.waiting_since = entry.waiting_since.min(received_at);
        entry.inquiries.push((inquiry_id, patients));
    }
    let mut claimed: Vec<Claimed> = order
        .into_iter()
        .filter_map(|id| by_email.remove(&id))
        .collect();
    for email in &mut claimed {
        email.inquiries.sort_by(|a, b| a.0.cmp(&b.0));
        let inquiry_ids: Vec<&str> = email.inquiries.iter().map(|(id, _)| id.as_str()).collect();
        let patient_ids: Vec<String> = email
            .inquiries
            .iter()
            .flat_map(|(_, patients)| patients.as_array().cloned().unwrap_or_default())
            .filter_map(|p| p["patient_id"].as_str().map(str::to_string))
            .collect();
        sqlx::query(
            "INSERT INTO email_batcher.emails
                    (email_id, kind, recipient, therapist_id, message_id, status, inquiry_ids, patient_ids)
             VALUES ($1, 'inquiry', $2, $3, $4, 'ATTEMPTED', $5, $6)",
        )
        .bind(email.email_id)
        .bind(&email.recipient)
        .bind(&email.therapist_id)
        .bind(message_id(email.email_id))
        .bind(&inquiry_ids)
        .bind(&patient_ids)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(claimed)
}

/// Records a templated message's attempt; false if it was attempted before
/// (a redelivered command): it is not sent again.
pub async fn claim_message(
    pool: &PgPool,
    email_id: Uuid,
    recipient: &str,
    therapist_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO email_batcher.emails (email_id, kind, recipient, therapist_id, message_id, status)
         VALUES ($1, 'templated', $2, $3, $4, 'ATTEMPTED') ON CONFLICT (email_id) DO NOTHING",
    )
    .bind(email_id)
    .bind(recipient)
    .bind(therapist_id)
    .bind(message_id(email_id))
    .execute(pool)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The Message-ID of an email: derived from its id, so every attempt of
/// one email carries the same.
pub fn message_id(email_id: Uuid) -> String {
    format!("<{email_id}@psymatch>")
}

/// How handing an email over ended.
pub enum Outcome {
    /// The server took it.
    Sent,
    /// It did not; permanent failures release the window.
    Failed {
        /// Retrying cannot help.
        permanent: bool,
        /// Why.
        reason: String,
    },
}

/// Records the outcome of an attempt.
pub async fn settle(pool: &PgPool, email_id: Uuid, outcome: &Outcome) -> Result<(), sqlx::Error> {
    match outcome {
        Outcome::Sent => {
            sqlx::query("UPDATE email_batcher.emails SET status = 'SENT', sent_at = now() WHERE email_id = $1")
                .bind(email_id)
                .execute(pool)
                .await?;
        }
        Outcome::Failed { permanent, reason } => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE email_batcher.emails
                    SET status = 'FAILED', error_code = 'PSY-T-004', reason = $2, permanent = $3
                  WHERE email_id = $1",
            )
            .bind(email_id)
            .bind(reason)
            .bind(permanent)
            .execute(&mut *tx)
            .await?;
            // Nothing went out: the window is not used up.
            sqlx::query("DELETE FROM email_batcher.windows WHERE email_id = $1")
                .bind(email_id)
                .execute(&mut *tx)
                .await?;
            if !permanent {
                // A transient failure: the inquiries wait for the next flush.
                sqlx::query(
                    "UPDATE email_batcher.inquiries SET email_id = NULL WHERE email_id = $1",
                )
                .bind(email_id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

/// An email whose outcome is to be reported.
pub type Report = (
    Uuid,
    String,
    Option<String>,
    String,
    Vec<String>,
    Vec<String>,
    Option<DateTime<Utc>>,
    Option<String>,
    Option<String>,
    bool,
);

/// Marks every settled, unreported email reported and returns them: run in
/// the batch's transaction with the events emitted for them, so an outcome
/// is reported exactly once.
pub async fn report(db: &mut PgConnection) -> Result<Vec<Report>, sqlx::Error> {
    // `NOT reported` also outside the subquery: two flushes reporting at
    // once (two partitions of email-commands, two replicas) select the same
    // rows; the second waits for the first's row locks and, once that one
    // committed, PostgreSQL re-checks only the outer condition on the new
    // row. Without it both reported the same email, each under its own
    // flush's event id (the chaos run found it on Kafka).
    sqlx::query_as(
        "UPDATE email_batcher.emails SET reported = true
          WHERE NOT reported
            AND email_id IN (SELECT email_id FROM email_batcher.emails
                              WHERE NOT reported AND status <> 'ATTEMPTED'
                              ORDER BY attempted_at LIMIT 10000)
         RETURNING email_id, status, therapist_id, message_id, inquiry_ids, patient_ids, sent_at,
                   error_code, reason, permanent",
    )
    .fetch_all(db)
    .await
}
