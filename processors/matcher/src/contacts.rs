//! A patient's contact log: every practice written to for the patient,
//! when, and what it answered, with the practice's name, address and
//! phone as in the public directory. It is what a patient hands to the
//! insurer to claim reimbursement of private therapy (SGB V section
//! 13(3)), so it lists exactly the inquiries emailed (an inquiry still
//! waiting for its window was no contact) and the phone follow-ups due.
//! Built from the committed rows; it survives erasure only when the
//! patient keeps the contact log (see `fold::erase`).

use crate::records::{InquiryRecord, TherapistRecord};
use chrono::Duration;
use serde_json::{Value, json};
use sqlx::PgPool;

/// The practice's name, address and phone from its directory record.
fn practice(record: Option<&TherapistRecord>) -> (String, String, String) {
    let Some(details) = record.and_then(|r| r.details.as_ref()) else {
        return (String::new(), String::new(), String::new());
    };
    let text = |value: &Value| value.as_str().unwrap_or_default().trim().to_string();
    let name = [
        details.title.clone().unwrap_or_default(),
        text(&details.rest["first_name"]),
        details.last_name.clone(),
    ]
    .into_iter()
    .filter(|part| !part.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    let address = &details.rest["address"];
    let address = format!(
        "{} {}, {} {}",
        text(&address["street"]),
        text(&address["house_number"]),
        text(&address["postcode"]),
        text(&address["city"])
    );
    (
        name,
        address.trim().to_string(),
        text(&details.rest["phone"]),
    )
}

/// What an answer means, for the insurer.
fn answer_text(outcome: &Value) -> &'static str {
    match outcome.as_str() {
        Some("ACCEPTED") => "place offered",
        Some("REJECTED_NO_CAPACITY") => "no capacity",
        Some("REJECTED_NOT_SUITABLE") => "not suitable",
        Some("REJECTED_OTHER") => "declined",
        Some("NO_SHOW") => "patient did not come",
        Some("IN_SESSIONS") => "in sessions",
        _ => "no answer yet",
    }
}

/// The contact log of `patient`, oldest first; `None` when the matcher
/// knows no inquiry for the patient and no search.
pub async fn rows(
    pool: &PgPool,
    patient: &str,
    follow_up: Duration,
) -> Result<Option<Vec<Value>>, sqlx::Error> {
    let inquiries: Vec<(String, Value)> = sqlx::query_as(
        "SELECT inquiry_id, state FROM matcher.inquiries
          WHERE patient_ids @> ARRAY[$1] ORDER BY inquiry_id",
    )
    .bind(patient)
    .fetch_all(pool)
    .await?;
    if inquiries.is_empty() {
        let known: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM matcher.searches WHERE patient_id = $1")
                .bind(patient)
                .fetch_optional(pool)
                .await?;
        return Ok(known.map(|_| Vec::new()));
    }
    let records: Vec<(String, InquiryRecord)> = inquiries
        .into_iter()
        .filter_map(|(id, state)| Some((id, serde_json::from_value(state).ok()?)))
        .collect();
    let ids: Vec<&str> = records
        .iter()
        .map(|(_, i)| i.therapist_id.as_str())
        .collect();
    let therapists: Vec<(String, Value)> = sqlx::query_as(
        "SELECT therapist_id, state FROM matcher.therapists WHERE therapist_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(pool)
    .await?;
    let therapists: std::collections::HashMap<String, TherapistRecord> = therapists
        .into_iter()
        .filter_map(|(id, state)| Some((id, serde_json::from_value(state).ok()?)))
        .collect();
    let mut rows = Vec::new();
    for (inquiry_id, inquiry) in &records {
        let (name, address, phone) = practice(therapists.get(&inquiry.therapist_id));
        let outcome = json!(inquiry.answers.get(patient));
        let answered_at = inquiry.answered_at.map(|at| at.to_rfc3339());
        let row = |channel: &str, date: String, reason: &str| {
            json!({"inquiry_id": inquiry_id, "therapist_id": inquiry.therapist_id,
                   "practice": name, "address": address, "phone": phone, "channel": channel,
                   "date": date, "answer": answer_text(&outcome), "outcome": outcome,
                   "answered_at": answered_at,
                   "reason": reason})
        };
        let Some(sent_at) = inquiry.sent_at else {
            // The practice answered by phone before the email went out
            // (withdrawn): a contact. Waiting for its window: none yet.
            if let (true, Some(at)) = (inquiry.withdrawn, inquiry.answered_at) {
                rows.push(row(
                    "phone",
                    at.to_rfc3339(),
                    "answered by phone before the inquiry email",
                ));
            }
            continue;
        };
        rows.push(row(
            "email",
            sent_at.to_rfc3339(),
            "inquiry for a psychotherapy place",
        ));
        if inquiry.follow_up_due {
            rows.push(row(
                "phone follow-up",
                (sent_at + follow_up).to_rfc3339(),
                "no answer within the follow-up period",
            ));
        }
    }
    rows.sort_by(|a, b| a["date"].as_str().cmp(&b["date"].as_str()));
    Ok(Some(rows))
}
