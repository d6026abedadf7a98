//! The matcher's read-only queries (`psymatch_runtime::query`): where a
//! patient's search stands, and a practice as matching sees it. Answered
//! from the committed rows in `matcher.*`, never from a batch's memory,
//! so every replica gives the same answer and a slow query never holds up
//! consuming. Pseudonymous data only: any role may read them.

use crate::config::MatcherConfig;
use crate::records::{InquiryRecord, SearchRecord, TherapistRecord};
use crate::rules::{self, History, Verdict};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use psymatch_runtime::query::{QueryError, id};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashSet;

/// What the handlers share.
#[derive(Clone)]
struct Store {
    pool: PgPool,
    config: MatcherConfig,
}

/// The routes: `GET /v1/searches/{patient_id}`,
/// `GET /v1/searches/{patient_id}/why/{therapist_id}`, `GET /v1/therapists/{id}`.
pub fn routes(pool: PgPool, config: MatcherConfig) -> Router {
    Router::new()
        .route("/v1/searches/{patient_id}", get(search))
        .route("/v1/searches/{patient_id}/why/{therapist_id}", get(why))
        .route("/v1/searches/{patient_id}/contacts", get(contacts))
        .route("/v1/therapists/{therapist_id}", get(therapist))
        .with_state(Store { pool, config })
}

fn stored<T: serde::de::DeserializeOwned>(
    kind: &str,
    id: &str,
    state: Value,
) -> Result<T, QueryError> {
    serde_json::from_value(state).map_err(|error| {
        QueryError::unavailable(format!("the stored {kind} {id} does not read: {error}"))
    })
}

/// The committed search of `patient`; 404 when there is none.
async fn load_search(pool: &PgPool, patient: &str) -> Result<SearchRecord, QueryError> {
    let row: Option<(Value,)> =
        sqlx::query_as("SELECT state FROM matcher.searches WHERE patient_id = $1")
            .bind(patient)
            .fetch_optional(pool)
            .await?;
    match row {
        Some((state,)) => stored("search", patient, state),
        None => Err(QueryError::not_found("patient", patient)),
    }
}

/// The committed record of `therapist`; 404 when there is none.
async fn load_therapist(pool: &PgPool, therapist: &str) -> Result<TherapistRecord, QueryError> {
    let row: Option<(Value,)> =
        sqlx::query_as("SELECT state FROM matcher.therapists WHERE therapist_id = $1")
            .bind(therapist)
            .fetch_optional(pool)
            .await?;
    match row {
        Some((state,)) => stored("therapist", therapist, state),
        None => Err(QueryError::not_found("therapist", therapist)),
    }
}

fn time(at: Option<DateTime<Utc>>) -> Value {
    at.map_or(Value::Null, |at| json!(at.to_rfc3339()))
}

/// Where an inquiry stands, for a person.
fn inquiry_state(inquiry: &InquiryRecord) -> &'static str {
    if inquiry.answered_at.is_some() {
        "answered"
    } else if inquiry.withdrawn {
        "withdrawn before its email"
    } else if inquiry.failed {
        "email failed"
    } else if inquiry.sent_at.is_some() {
        "emailed, waiting for the answer"
    } else {
        "waiting for the practice's weekly email window"
    }
}

async fn search(
    State(store): State<Store>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, QueryError> {
    let patient = id("patient", &raw)?;
    let search = load_search(&store.pool, &patient).await?;
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT inquiry_id, state FROM matcher.inquiries
          WHERE patient_ids @> ARRAY[$1] ORDER BY inquiry_id",
    )
    .bind(&patient)
    .fetch_all(&store.pool)
    .await?;
    let mut inquiries = Vec::new();
    let mut asked = Vec::new();
    for (inquiry_id, state) in rows {
        let inquiry: InquiryRecord = stored("inquiry", &inquiry_id, state)?;
        let follow_up = inquiry
            .sent_at
            .filter(|_| inquiry.open())
            .map(|at| at + store.config.rules.follow_up());
        inquiries.push(json!({
            "inquiry_id": inquiry_id,
            "therapist_id": inquiry.therapist_id,
            "created_at": inquiry.created_at.to_rfc3339(),
            "emailed_at": time(inquiry.sent_at),
            "state": inquiry_state(&inquiry),
            "answer": inquiry.answers.get(&patient),
            "answered_at": time(inquiry.answered_at),
            "follow_up_due_at": time(follow_up),
            "follow_up_asked": inquiry.follow_up_due,
        }));
        asked.push(inquiry.therapist_id);
    }
    asked.sort();
    asked.dedup();
    let cooling: Vec<(String, Value)> = sqlx::query_as(
        "SELECT therapist_id, state FROM matcher.therapists
          WHERE therapist_id = ANY($1) AND (state->>'cooling_until')::timestamptz > now()
          ORDER BY therapist_id",
    )
    .bind(&asked)
    .fetch_all(&store.pool)
    .await?;
    let cooling: Vec<Value> = cooling
        .into_iter()
        .map(|(therapist_id, state)| {
            json!({"therapist_id": therapist_id, "until": state["cooling_until"]})
        })
        .collect();
    let profile = &search.profile;
    Ok(Json(json!({
        "patient_id": patient,
        "status": search.status.as_str(),
        "since": search.since.to_rfc3339(),
        "placed": search.placed.as_ref().map(|(therapist, inquiry)| {
            json!({"therapist_id": therapist, "inquiry_id": inquiry})
        }),
        "exhausted": search.exhausted,
        "limits": {
            "max_distance_km": profile.max_distance_km,
            "max_travel_minutes": profile.max_travel_minutes,
            "transport": profile.transport,
            "practices_at_once": store.config.rules.inquiries_per_patient,
        },
        "excluded_therapists": search.excluded,
        "inquiries": inquiries,
        "cooling": cooling,
    })))
}

/// The patient's contact log ([`crate::contacts`]).
async fn contacts(
    State(store): State<Store>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, QueryError> {
    let patient = id("patient", &raw)?;
    match crate::contacts::rows(&store.pool, &patient, store.config.rules.follow_up()).await? {
        Some(rows) => Ok(Json(json!({"patient_id": patient, "contacts": rows}))),
        None => Err(QueryError::not_found("patient", &patient)),
    }
}

/// The practices holding the patient through an open inquiry: by
/// therapist id and by email address (one practice, one address).
#[derive(Default)]
struct Holding {
    therapists: HashSet<String>,
    emails: HashSet<String>,
}

impl Holding {
    async fn of(pool: &PgPool, patient: &str) -> Result<Holding, QueryError> {
        let rows: Vec<(String, Value)> = sqlx::query_as(
            "SELECT inquiry_id, state FROM matcher.inquiries WHERE patient_ids @> ARRAY[$1]",
        )
        .bind(patient)
        .fetch_all(pool)
        .await?;
        let mut holding = Holding::default();
        for (inquiry_id, state) in rows {
            let inquiry: InquiryRecord = stored("inquiry", &inquiry_id, state)?;
            if inquiry.open() {
                holding.therapists.insert(inquiry.therapist_id);
                holding.emails.insert(inquiry.email);
            }
        }
        Ok(holding)
    }

    /// The history of this pair, as the matcher keeps it: the patient is
    /// pending at the practice while an inquiry to it (any member, one
    /// email address) is open; the practice's cooling period; the search's
    /// exclusions.
    fn history(
        &self,
        patient: &str,
        therapist: &str,
        record: &TherapistRecord,
        search: &SearchRecord,
    ) -> History {
        let mut history = History::default();
        let at_practice = self.therapists.contains(therapist)
            || record
                .email()
                .is_some_and(|email| self.emails.contains(&email));
        if at_practice {
            history
                .pending
                .entry(therapist.to_string())
                .or_default()
                .insert(patient.to_string());
        }
        if let Some(until) = record.cooling_until {
            history.cooling_until.insert(therapist.to_string(), until);
        }
        history
            .search_excluded
            .extend(search.excluded.iter().cloned());
        history
    }
}

/// Every hard rule for this pair with what it compares, evaluated now by
/// the matcher's rule function on the committed state ([`crate::why`]),
/// and, for a candidate, its rank among the search's candidates now.
async fn why(
    State(store): State<Store>,
    Path((raw_patient, raw_therapist)): Path<(String, String)>,
) -> Result<Json<Value>, QueryError> {
    let patient = id("patient", &raw_patient)?;
    let therapist = id("therapist", &raw_therapist)?;
    let search = load_search(&store.pool, &patient).await?;
    let record = load_therapist(&store.pool, &therapist).await?;
    let Some(view) = record.view(&therapist) else {
        return Err(QueryError::not_found(
            "therapist in the directory",
            &therapist,
        ));
    };
    let holding = Holding::of(&store.pool, &patient).await?;
    let history = holding.history(&patient, &therapist, &record, &search);
    let minutes = search.travel.get(&therapist).copied();
    let person = search.view(&patient, &store.config.rules);
    let now = Utc::now();
    let mut answer = crate::why::explain(&person, &view, &history, now, minutes);
    answer["rank"] = match rules::check(&person, &view, &history, now, minutes) {
        Verdict::Candidate { .. } => {
            let field = within_reach(&store.pool, &person).await?;
            let rivals: Vec<crate::why::Rival> = field
                .into_iter()
                .filter_map(|(id, record)| {
                    let view = record.view(&id)?;
                    let history = holding.history(&patient, &id, &record, &search);
                    let minutes = search.travel.get(&id).copied();
                    Some(crate::why::Rival {
                        therapist: view,
                        history,
                        minutes,
                    })
                })
                .collect();
            crate::why::rank(
                &person,
                &therapist,
                &rivals,
                now,
                &store.config.rules.ranking,
            )
        }
        _ => Value::Null,
    };
    Ok(Json(answer))
}

/// The committed practices that can be within the patient's distance
/// limit: a box around the home, wide enough for the limit (all of them
/// when only a travel time limits the search); the rules decide the rest.
async fn within_reach(
    pool: &PgPool,
    patient: &rules::Patient,
) -> Result<Vec<(String, TherapistRecord)>, QueryError> {
    let home = patient
        .position
        .unwrap_or(psymatch_geo::Position::new(0.0, 0.0));
    let km = rules::limit_km(patient);
    let everywhere = !km.is_finite();
    // A degree of latitude is at least 110.5 km, a degree of longitude
    // that times the cosine; a margin keeps the box's edge outside the
    // limit.
    let lat = if everywhere { 0.0 } else { km / 110.0 + 0.01 };
    let lon = if everywhere {
        0.0
    } else {
        (km / (110.0 * home.latitude.to_radians().cos().max(0.01)) + 0.01).min(360.0)
    };
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT therapist_id, state FROM matcher.therapists
          WHERE $5 OR COALESCE(
                ((state->'details'->'coordinates'->>'latitude')::float8 BETWEEN $1 AND $2
                 AND (state->'details'->'coordinates'->>'longitude')::float8 BETWEEN $3 AND $4),
                ((state->'geocoded'->>0)::float8 BETWEEN $1 AND $2
                 AND (state->'geocoded'->>1)::float8 BETWEEN $3 AND $4),
                false)",
    )
    .bind(home.latitude - lat)
    .bind(home.latitude + lat)
    .bind(home.longitude - lon)
    .bind(home.longitude + lon)
    .bind(everywhere)
    .fetch_all(pool)
    .await?;
    rows.into_iter()
        .map(|(id, state)| {
            let record = stored("therapist", &id, state)?;
            Ok((id, record))
        })
        .collect()
}

async fn therapist(
    State(store): State<Store>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, QueryError> {
    let therapist = id("therapist", &raw)?;
    let record = load_therapist(&store.pool, &therapist).await?;
    let waiting: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT inquiry_id, patient_ids FROM matcher.inquiries
          WHERE therapist_id = $1 AND state->>'sent_at' IS NULL
            AND state->>'answered_at' IS NULL AND NOT (state->>'failed')::boolean
            AND NOT coalesce((state->>'withdrawn')::boolean, false)
          ORDER BY inquiry_id",
    )
    .bind(&therapist)
    .fetch_all(&store.pool)
    .await?;
    let cooling = record.cooling_until.filter(|until| *until > Utc::now());
    Ok(Json(json!({
        "therapist_id": therapist,
        "listed": record.details.is_some() && !record.removed,
        "blocked": record.blocked,
        "free_places": {
            "individual_from": record.individual_from,
            "group_from": record.group_from,
        },
        "position": record.position().map(|p| p.to_json()),
        "last_contact": time(record.last_contact),
        "cooling_until": time(cooling),
        "inquiries_waiting": waiting
            .iter()
            .map(|(inquiry, patients)| json!({"inquiry_id": inquiry, "patients": patients.len()}))
            .collect::<Vec<_>>(),
    })))
}
