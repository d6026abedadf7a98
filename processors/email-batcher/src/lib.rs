//! The email batcher: all inquiries waiting for one therapist address go
//! into one email, at most one email per address per week for the whole
//! deployment, never two, in German from replaceable templates.
//!
//! `email.send_inquiry` stores the inquiry (and says `email.deferred` when
//! the address's window is still running); `email.flush_batches` (from the
//! scheduler) sends one email per address whose window is over, with every
//! inquiry waiting for it; `email.send_templated` sends a declining note, a
//! follow-up or a patient notification at once, once per message id.
//!
//! Never twice: an address's window is opened by one database statement
//! that only one replica can win, and the attempt is committed before the
//! email is handed to SMTP. A process killed while handing it over leaves
//! an attempt of unknown outcome: reported after `ATTEMPT_TIMEOUT_SECS`,
//! never resent inside its window, its inquiries kept for the next one.

pub mod config;
pub mod queries;
pub mod store;
pub mod templates;
pub mod transport;

mod events;
mod metrics;
mod withdrawals;

pub use metrics::BatcherMetrics;

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, SecondsFormat, Utc};
use config::BatcherConfig;
use events::{EmailReported, InquiryDeferred};
use lettre::Message;
use lettre::message::Mailbox;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::events::Event;
use psymatch_runtime::processor::{BatchContext, Context, Incoming, ProcessError};
use serde_json::{Value, json};
use std::collections::HashMap;
use store::{Claimed, Outcome, Waiting};
use templates::{Rendered, THERAPIST_TEMPLATES, THERAPIST_VARIABLES, Templates};
use transport::Transport;
use uuid::Uuid;

const EVENTS: &str = "communication-events";

/// Namespace of the ids of templated messages (from their message ids).
const NAMESPACE: Uuid = Uuid::from_u128(0x0e3c_77a1_52d4_4b8e_a9f6_1c2b_3d4e_5f60);

/// The email batcher.
pub struct EmailBatcher {
    config: BatcherConfig,
    templates: Templates,
    transport: Transport,
    from: Mailbox,
    metrics: BatcherMetrics,
    /// The flush waiting for partitions behind it, by event id (at most
    /// one waits; see `flush_behind`).
    waiting_flushes: std::sync::Mutex<HashMap<uuid::Uuid, withdrawals::WaitingFlush>>,
}

impl EmailBatcher {
    /// Loads and checks the templates and prepares the transport: a broken
    /// template or transport setting fails here, not at send time.
    pub fn new(config: BatcherConfig) -> anyhow::Result<EmailBatcher> {
        Ok(EmailBatcher {
            templates: Templates::load(&config.templates)?,
            transport: Transport::new(&config)?,
            from: config.from.parse()?,
            config,
            metrics: BatcherMetrics::new(),
            waiting_flushes: std::sync::Mutex::new(HashMap::new()),
        })
    }
}

/// The batch's address windows, read once per batch.
#[derive(Default)]
struct Scratch {
    windows: HashMap<String, DateTime<Utc>>,
    waiting: Vec<Waiting>,
    /// Withdrawals of this batch, applied again to the batch's own rows
    /// when they are stored ([`withdrawals`]).
    withdrawn: Vec<(String, Vec<String>)>,
}

fn invalid(reason: String) -> ProcessError {
    ProcessError::Invalid {
        code: ErrorCode::InvalidCommand,
        reason,
    }
}

/// A lower-case address that lettre accepts, or why not.
fn address(value: &Value) -> Result<String, String> {
    let text = value.as_str().unwrap_or_default().trim().to_lowercase();
    text.parse::<lettre::Address>()
        .map(|_| text.clone())
        .map_err(|_| "recipient is not an email address".to_string())
}

const GERMAN_WEEKDAYS: [(&str, &str); 7] = [
    ("MONDAY", "Mo"),
    ("TUESDAY", "Di"),
    ("WEDNESDAY", "Mi"),
    ("THURSDAY", "Do"),
    ("FRIDAY", "Fr"),
    ("SATURDAY", "Sa"),
    ("SUNDAY", "So"),
];

/// A patient summary as the inquiry template shows it.
fn shown(inquiry_id: &str, patient: &Value) -> Value {
    let gender = match patient["gender"].as_str() {
        Some("FEMALE") => "weiblich",
        Some("MALE") => "männlich",
        _ => "divers",
    };
    let availability: Vec<String> = patient["availability"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|slot| {
            let day = GERMAN_WEEKDAYS
                .iter()
                .find(|(en, _)| Some(*en) == slot["weekday"].as_str())
                .map_or("?", |(_, de)| de);
            format!(
                "{day} {}-{}",
                slot["from"].as_str().unwrap_or(""),
                slot["to"].as_str().unwrap_or("")
            )
        })
        .collect();
    json!({
        "inquiry_id": inquiry_id,
        "patient_id": patient["patient_id"],
        "age": patient["age"],
        "gender": gender,
        "symptoms": patient["symptoms"],
        "insurer": patient["insurer"],
        "therapy_experience": patient["therapy_experience"],
        "open_to_group": patient["open_to_group"],
        "availability": availability,
    })
}

fn millis(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl EmailBatcher {
    fn build(
        &self,
        email_id: Uuid,
        to: &str,
        rendered: &Rendered,
        inquiries: &[String],
    ) -> Result<Message, String> {
        let to: Mailbox = to.parse().map_err(|e| format!("recipient: {e}"))?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject.clone())
            .message_id(Some(store::message_id(email_id)))
            .header(ContentType::TEXT_PLAIN);
        if !inquiries.is_empty() {
            // Which inquiries an email carries, for answers and audits (ids only).
            builder = builder.raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("X-Psymatch-Inquiries"),
                inquiries.join(","),
            ));
        }
        builder
            .body(rendered.body.clone())
            .map_err(|e| e.to_string())
    }

    /// Hands an email over, retrying transient failures with backoff.
    async fn deliver(&self, message: Message) -> Outcome {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.backoff)
            .with_max_delay(self.config.backoff * 16)
            .with_max_times(self.config.attempts.saturating_sub(1) as usize)
            .with_jitter();
        let sent = (|| self.transport.send(message.clone()))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|e: &transport::SendError| !e.permanent)
            .notify(|e: &transport::SendError, wait| {
                tracing::info!(reason = %e.reason, wait_ms = wait.as_millis() as u64, "email: retrying");
            })
            .await;
        match sent {
            Ok(()) => Outcome::Sent,
            Err(error) => Outcome::Failed {
                permanent: error.permanent,
                reason: error.reason,
            },
        }
    }

    /// Renders and sends one claimed inquiry email and records the outcome.
    async fn send_claimed(&self, pool: &sqlx::PgPool, email: &Claimed) -> Result<(), sqlx::Error> {
        let patients: Vec<Value> = email
            .inquiries
            .iter()
            .flat_map(|(inquiry_id, patients)| {
                patients
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|p| shown(inquiry_id, &p))
                    .collect::<Vec<_>>()
            })
            .collect();
        let inquiry_ids: Vec<String> = email.inquiries.iter().map(|(id, _)| id.clone()).collect();
        let context = json!({"recipient": email.addressee, "patients": patients});
        let outcome = match self
            .templates
            .render("inquiry", &context)
            .and_then(|rendered| {
                self.build(email.email_id, &email.recipient, &rendered, &inquiry_ids)
            }) {
            Ok(message) => self.deliver(message).await,
            Err(reason) => Outcome::Failed {
                permanent: true,
                reason: format!("the inquiry email cannot be written: {reason}"),
            },
        };
        if matches!(outcome, Outcome::Sent) {
            self.metrics.batch_patients.observe(patients.len() as f64);
            let waited =
                (Utc::now() - email.waiting_since).num_milliseconds().max(0) as f64 / 1000.0;
            self.metrics.window_wait.observe(waited);
        }
        store::settle(pool, email.email_id, &outcome).await
    }

    /// Sends every email whose window is due, then reports.
    async fn flush(&self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let pool = ctx.pool().clone();
        let recovered = store::recover(&pool, self.config.attempt_timeout).await?;
        if recovered > 0 {
            tracing::warn!(
                recovered,
                "attempts of unknown outcome reported; not resent inside their window"
            );
        }
        let behind = self.flush_behind(ctx).await?;
        let times = store::Times {
            check: ctx.now().min(ctx.event_time()),
            now: ctx.now(),
        };
        loop {
            let claimed = store::claim(&pool, self.config.window, 200, &behind, times).await?;
            if claimed.is_empty() {
                break;
            }
            for chunk in claimed.chunks(self.config.concurrency) {
                let mut sends = Vec::with_capacity(chunk.len());
                for email in chunk {
                    sends.push(self.send_claimed(&pool, email));
                }
                for result in futures::future::join_all(sends).await {
                    result?;
                }
            }
        }
        self.report(ctx).await
    }

    /// Emits the outcome of every settled, unreported email.
    async fn report(&self, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        for (
            email_id,
            status,
            therapist_id,
            message_id,
            inquiry_ids,
            patient_ids,
            sent_at,
            code,
            reason,
            permanent,
        ) in store::report(ctx.db()).await?
        {
            let kind = if inquiry_ids.is_empty() {
                "templated"
            } else {
                "inquiry"
            };
            let id = email_id.to_string();
            match status.as_str() {
                "SENT" => {
                    EmailReported {
                        outcome: "sent",
                        kind,
                        email_id: &id,
                    }
                    .emit(&self.metrics);
                    ctx.emit(
                        EVENTS,
                        "email.sent",
                        json!({"email_id": email_id.to_string(), "message_id": message_id, "therapist_id": therapist_id,
                               "inquiry_ids": inquiry_ids, "patient_ids": patient_ids,
                               "sent_at": millis(sent_at.unwrap_or_else(Utc::now))}),
                    )?;
                }
                other => {
                    let outcome = if other == "UNKNOWN" {
                        "unknown"
                    } else {
                        "failed"
                    };
                    EmailReported {
                        outcome,
                        kind,
                        email_id: &id,
                    }
                    .emit(&self.metrics);
                    ctx.emit(
                        EVENTS,
                        "email.failed",
                        json!({"email_id": email_id.to_string(), "therapist_id": therapist_id,
                               "inquiry_ids": inquiry_ids, "error_code": code.unwrap_or_else(|| "PSY-T-004".into()),
                               "reason": reason.unwrap_or_default(), "permanent": permanent}),
                    )?;
                }
            }
        }
        Ok(())
    }

    fn inquiry(&self, ctx: &mut Context<'_>, record: &Incoming) -> Result<(), ProcessError> {
        let p = &record.payload;
        let inquiry_id = p["inquiry_id"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_string();
        let therapist_id = p["therapist_id"].as_str().unwrap_or_default().to_string();
        let patients = p["patients"].as_array().cloned().unwrap_or_default();
        let problem = if inquiry_id.is_empty() {
            Some("inquiry_id is empty".to_string())
        } else if !(1..=6).contains(&patients.len()) {
            Some(format!(
                "an inquiry lists 1 to 6 patients, this one {}",
                patients.len()
            ))
        } else if let Some(p) = patients
            .iter()
            .find(|p| !(0..=120).contains(&p["age"].as_i64().unwrap_or(-1)))
        {
            Some(format!("patient {} has age {}", p["patient_id"], p["age"]))
        } else {
            address(&p["recipient"]["email"]).err()
        };
        if let Some(reason) = problem {
            return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
        }
        let recipient = address(&p["recipient"]["email"]).expect("checked above");
        let addressee = json!({"salutation": p["recipient"]["salutation"], "title": p["recipient"]["title"],
                               "last_name": p["recipient"]["last_name"]});
        let window = chrono::Duration::from_std(self.config.window).expect("a window fits");
        let open = ctx.scratch::<Scratch>().windows.get(&recipient).copied();
        // Who waits, pseudonymously, so that a patient's deferral can be
        // found by id (as email.sent lists them).
        let patient_ids: Vec<Value> = patients.iter().map(|p| p["patient_id"].clone()).collect();
        ctx.scratch::<Scratch>().waiting.push(Waiting {
            inquiry_id: inquiry_id.clone(),
            therapist_id: therapist_id.clone(),
            recipient,
            addressee,
            patients: Value::Array(patients),
            source_partition: record.partition,
        });
        if let Some(opened) = open.filter(|opened| *opened + window > ctx.now()) {
            InquiryDeferred {
                inquiry_id: &inquiry_id,
                until: &(opened + window).to_rfc3339(),
            }
            .emit(&self.metrics);
            ctx.emit(
                EVENTS,
                "email.deferred",
                json!({"therapist_id": therapist_id, "inquiry_id": inquiry_id, "patient_ids": patient_ids,
                       "until": millis(opened + window),
                       "reason": format!("this address was written on {}; one email per {} days",
                                         opened.format("%Y-%m-%d"), window.num_days())}),
            )?;
        }
        Ok(())
    }

    async fn templated(
        &self,
        ctx: &mut Context<'_>,
        record: &Incoming,
    ) -> Result<(), ProcessError> {
        let p = &record.payload;
        let message_id = p["message_id"].as_str().unwrap_or_default().to_string();
        let template = p["template"].as_str().unwrap_or_default();
        let recipient = match address(&p["recipient"]["email"]) {
            Ok(recipient) if !message_id.is_empty() => recipient,
            Ok(_) => return ctx.reject(EVENTS, ErrorCode::InvalidCommand, "message_id is empty"),
            Err(reason) => return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason),
        };
        if !templates::TEMPLATES.contains(&template) || template == "inquiry" {
            let reason =
                format!("template {template:?} is not one of decline, follow_up, patient_update");
            return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
        }
        let mut context = json!({"recipient": {"salutation": p["recipient"]["salutation"],
                                               "title": p["recipient"]["title"],
                                               "last_name": p["recipient"]["last_name"]}});
        for (name, value) in p["variables"].as_object().into_iter().flatten() {
            // Therapists' texts get ids and dates only: a name passed by
            // mistake never reaches them.
            if THERAPIST_TEMPLATES.contains(&template)
                && !THERAPIST_VARIABLES.contains(&name.as_str())
            {
                tracing::warn!(template, variable = %name, "variable not allowed in a therapist's email; dropped");
                continue;
            }
            context[name.as_str()] = if THERAPIST_TEMPLATES.contains(&template) {
                templates::therapist_variable(value)
            } else {
                value.clone()
            };
        }
        let rendered = match self.templates.render(template, &context) {
            Ok(rendered) => rendered,
            Err(reason) => return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason),
        };
        let email_id = Uuid::new_v5(&NAMESPACE, message_id.as_bytes());
        let pool = ctx.pool().clone();
        let therapist_id = p["therapist_id"].as_str();
        // Seen through the batch's transaction first: a row this batch has
        // already reported is locked by it, and claiming it through another
        // connection would wait for this very transaction.
        let known: Option<String> =
            sqlx::query_scalar("SELECT status FROM email_batcher.emails WHERE email_id = $1")
                .bind(email_id)
                .fetch_optional(ctx.db())
                .await?;
        if known.is_none()
            && store::claim_message(&pool, email_id, &recipient, therapist_id).await?
        {
            let outcome = match self.build(email_id, &recipient, &rendered, &[]) {
                Ok(message) => self.deliver(message).await,
                Err(reason) => Outcome::Failed {
                    permanent: true,
                    reason,
                },
            };
            store::settle(&pool, email_id, &outcome).await?;
        }
        self.report(ctx).await
    }
}

impl psymatch_runtime::processor::Processor for EmailBatcher {
    fn name(&self) -> &'static str {
        "email_batcher"
    }

    fn settings_prefixes(&self) -> &'static [&'static str] {
        &["SMTP_", "EMAIL_"]
    }

    fn queries(&self, pool: &sqlx::PgPool) -> Option<axum::Router> {
        Some(queries::routes(pool.clone(), self.config.window))
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec!["email-commands"]
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.metrics.emails.clone()),
            Box::new(self.metrics.deferred.clone()),
            Box::new(self.metrics.batch_patients.clone()),
            Box::new(self.metrics.withdrawals.clone()),
            Box::new(self.metrics.window_wait.clone()),
        ]
    }

    /// Reads the windows of every inquiry's address in one query.
    async fn begin_batch(
        &self,
        batch: &mut BatchContext<'_>,
        records: &[&Incoming],
    ) -> Result<(), ProcessError> {
        let recipients: Vec<String> = records
            .iter()
            .filter(|r| r.event_type() == "email.send_inquiry")
            .filter_map(|r| address(&r.payload["recipient"]["email"]).ok())
            .collect();
        if !recipients.is_empty() {
            let windows = store::windows(batch.db(), &recipients).await?;
            batch.scratch::<Scratch>().windows = windows;
        }
        Ok(())
    }

    async fn process(&self, ctx: &mut Context<'_>, record: &Incoming) -> Result<(), ProcessError> {
        match record.event_type() {
            "email.send_inquiry" => self.inquiry(ctx, record),
            "email.send_templated" => self.templated(ctx, record).await,
            "email.withdraw_inquiry" => self.withdraw(ctx, record).await,
            "email.flush_batches" => {
                // Inquiries of this batch wait in the scratch: store them
                // before flushing so they go out with this flush.
                let waiting = std::mem::take(&mut ctx.scratch::<Scratch>().waiting);
                store::keep(ctx.db(), &waiting).await?;
                self.flush(ctx).await
            }
            other => Err(invalid(format!(
                "the email batcher does not handle {other}"
            ))),
        }
    }

    /// Stores the batch's inquiries in one statement.
    async fn finish_batch(&self, batch: &mut BatchContext<'_>) -> Result<(), ProcessError> {
        let scratch = std::mem::take(batch.scratch::<Scratch>());
        store::keep(batch.db(), &scratch.waiting).await?;
        for (inquiry, patients) in &scratch.withdrawn {
            store::withdraw(batch.db(), inquiry, patients).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patients_are_shown_in_german_without_names() {
        let patient = json!({"patient_id": "p-7", "age": 34, "gender": "FEMALE", "symptoms": ["Schlafstörungen"],
                             "insurer": "Beispielkasse", "therapy_experience": true, "open_to_group": false,
                             "availability": [{"weekday": "TUESDAY", "from": "16:00", "to": "19:00"}]});
        let shown = shown("i-1", &patient);
        assert_eq!(shown["gender"], "weiblich");
        assert_eq!(shown["availability"], json!(["Di 16:00-19:00"]));
        assert_eq!(shown["inquiry_id"], "i-1");
    }

    #[test]
    fn addresses_are_checked_and_folded() {
        assert_eq!(
            address(&json!(" Praxis@Example.ORG ")).unwrap(),
            "praxis@example.org"
        );
        assert!(
            address(&json!("praxis(at)example"))
                .unwrap_err()
                .contains("not an email address")
        );
    }
}
