//! The intake processor, therapist side: therapists created or corrected
//! by a person, blocked and unblocked with a reason, their free places and
//! their own patient preferences. Published on `therapist-events` for the
//! matcher, beside what the scraper publishes.

use psymatch_geo::subject::Subject;
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::processor::{Context, Incoming, ProcessError};
use psymatch_runtime::text::{valid_email, valid_postcode};

use crate::validate;
use serde_json::{Value, json};

const EVENTS: &str = "therapist-events";

/// Every problem with manually entered therapist details, each naming
/// its field and never the value.
pub fn problems(details: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if details["last_name"]
        .as_str()
        .unwrap_or("")
        .trim()
        .is_empty()
    {
        problems.push("details.last_name is empty".to_string());
    }
    let postcode = details["address"]["postcode"].as_str().unwrap_or("").trim();
    if !valid_postcode(postcode) {
        problems.push("details.address.postcode is not five digits".to_string());
    }
    if let Some(email) = details["email"].as_str()
        && !valid_email(email)
    {
        problems.push("details.email is not an email address".to_string());
    }
    if let Some(c) = details["coordinates"].as_object() {
        let lat = c
            .get("latitude")
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN);
        let lon = c
            .get("longitude")
            .and_then(Value::as_f64)
            .unwrap_or(f64::NAN);
        if !((47.0..=55.5).contains(&lat) && (5.5..=15.5).contains(&lon)) {
            problems.push("details.coordinates are not in Germany".to_string());
        }
    }
    problems.extend(validate::bounds(details));
    problems
}

fn id_of(record: &Incoming) -> Result<String, String> {
    let id = record.payload["therapist_id"].as_str().unwrap_or("");
    validate::id("therapist_id", id)?;
    Ok(id.to_string())
}

/// Handles a therapist command.
pub async fn handle(ctx: &mut Context<'_>, record: &Incoming) -> Result<(), ProcessError> {
    let id = match id_of(record) {
        Ok(id) => id,
        Err(reason) => return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason),
    };
    let p = &record.payload;
    sqlx::query("INSERT INTO intake.therapists (therapist_id) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(&id)
        .execute(ctx.db())
        .await?;
    let (details, blocked): (Option<Value>, bool) = sqlx::query_as(
        "SELECT details, blocked FROM intake.therapists WHERE therapist_id = $1 FOR UPDATE",
    )
    .bind(&id)
    .fetch_one(ctx.db())
    .await?;
    match record.event_type() {
        "therapist.upsert" => {
            let new = p["details"].clone();
            let problems = problems(&new);
            if !problems.is_empty() {
                return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &problems.join("; "));
            }
            sqlx::query("UPDATE intake.therapists SET details = $2, updated_at = now() WHERE therapist_id = $1")
                .bind(&id)
                .bind(&new)
                .execute(ctx.db())
                .await?;
            let moved = details.as_ref().map(|d| &d["address"]) != Some(&new["address"]);
            match details {
                None => ctx.emit(
                    EVENTS,
                    "therapist.discovered",
                    json!({"therapist_id": id, "source": "manual", "source_id": null, "details": new, "flags": []}),
                )?,
                Some(old) => {
                    let changed: Vec<String> = new
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(field, value)| old.get(field.as_str()) != Some(value))
                        .map(|(field, _)| field.clone())
                        .collect();
                    if changed.is_empty() {
                        return Ok(());
                    }
                    ctx.emit(
                        EVENTS,
                        "therapist.updated",
                        json!({"therapist_id": id, "source": "manual", "details": new, "changed_fields": changed, "flags": []}),
                    )?;
                }
            }
            if moved && new["coordinates"].is_null() {
                ctx.emit(
                    "geocoding-requests",
                    "geocoding.geocode_address",
                    json!({"request_id": format!("therapist-{id}"),
                           "subject": Subject::practice(&id).to_json(), "address": new["address"]}),
                )?;
            }
            Ok(())
        }
        "therapist.block" => {
            let reason = p["reason"].as_str().unwrap_or("").trim().to_string();
            if reason.is_empty() {
                return ctx.reject(EVENTS, ErrorCode::InvalidCommand, "a block needs a reason");
            }
            if let Err(problem) = validate::reason("reason", &reason) {
                return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &problem);
            }
            if blocked {
                return ctx.reject(
                    EVENTS,
                    ErrorCode::InvalidState,
                    &format!("therapist {id} is blocked already"),
                );
            }
            sqlx::query(
                "UPDATE intake.therapists SET blocked = true, block_reason = $2, blocked_at = now(), updated_at = now()
                  WHERE therapist_id = $1",
            )
            .bind(&id)
            .bind(&reason)
            .execute(ctx.db())
            .await?;
            ctx.emit(
                EVENTS,
                "therapist.blocked",
                json!({"therapist_id": id, "reason": reason}),
            )
        }
        "therapist.unblock" => {
            if !blocked {
                return ctx.reject(
                    EVENTS,
                    ErrorCode::InvalidState,
                    &format!("therapist {id} is not blocked"),
                );
            }
            sqlx::query(
                "UPDATE intake.therapists SET blocked = false, block_reason = NULL, blocked_at = NULL, updated_at = now()
                  WHERE therapist_id = $1",
            )
            .bind(&id)
            .execute(ctx.db())
            .await?;
            ctx.emit(EVENTS, "therapist.unblocked", json!({"therapist_id": id}))
        }
        "therapist.set_free_places" => {
            let today = ctx.now().date_naive();
            let date = |field: &str| validate::near_date(field, &p[field], today);
            let (individual, group) = match (date("individual_from"), date("group_from")) {
                (Ok(i), Ok(g)) => (i, g),
                (Err(reason), _) | (_, Err(reason)) => {
                    return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
                }
            };
            sqlx::query(
                "UPDATE intake.therapists SET individual_from = $2, group_from = $3, updated_at = now()
                  WHERE therapist_id = $1",
            )
            .bind(&id)
            .bind(individual)
            .bind(group)
            .execute(ctx.db())
            .await?;
            ctx.emit(
                EVENTS,
                "therapist.free_places_changed",
                json!({"therapist_id": id, "individual_from": p["individual_from"], "group_from": p["group_from"]}),
            )
        }
        "therapist.set_preferences" => {
            let (min, max) = (p["min_age"].as_i64(), p["max_age"].as_i64());
            let bad = [min, max].iter().flatten().any(|a| !(0..=120).contains(a))
                || matches!((min, max), (Some(a), Some(b)) if a > b);
            if bad {
                let reason = "min_age and max_age: each 0..120, the minimum not above the maximum"
                    .to_string();
                return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
            }
            sqlx::query(
                "UPDATE intake.therapists SET min_age = $2, max_age = $3, genders = $4, prefers_group = $5,
                        updated_at = now() WHERE therapist_id = $1",
            )
            .bind(&id)
            .bind(min.map(|a| a as i32))
            .bind(max.map(|a| a as i32))
            .bind(&p["genders"])
            .bind(p["prefers_group"].as_bool().unwrap_or(false))
            .execute(ctx.db())
            .await?;
            ctx.emit(
                EVENTS,
                "therapist.preferences_changed",
                json!({"therapist_id": id, "min_age": min, "max_age": max, "genders": p["genders"],
                       "prefers_group": p["prefers_group"]}),
            )
        }
        other => Err(ProcessError::Invalid {
            code: ErrorCode::InvalidCommand,
            reason: format!("intake does not handle {other}"),
        }),
    }
}
