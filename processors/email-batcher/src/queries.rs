//! The email batcher's read-only query (`psymatch_runtime::query`): a
//! practice's weekly window: when it was last written to, when it may be
//! written to next, and the inquiries waiting for that. From the
//! committed rows; the address itself is not shown.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use psymatch_runtime::query::{QueryError, id};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;

#[derive(Clone)]
struct Store {
    pool: PgPool,
    window: Duration,
}

/// The routes: `GET /v1/practices/{therapist_id}/window`.
pub fn routes(pool: PgPool, window: Duration) -> Router {
    Router::new()
        .route("/v1/practices/{therapist_id}/window", get(practice_window))
        .with_state(Store { pool, window })
}

async fn practice_window(
    State(store): State<Store>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, QueryError> {
    let therapist = id("therapist", &raw)?;
    // The practice's address, as its latest inquiry named it.
    let recipient: Option<String> = sqlx::query_scalar(
        "SELECT recipient FROM email_batcher.inquiries WHERE therapist_id = $1
          ORDER BY received_at DESC LIMIT 1",
    )
    .bind(&therapist)
    .fetch_optional(&store.pool)
    .await?;
    let Some(recipient) = recipient else {
        return Err(QueryError::not_found("practice with inquiries", &therapist));
    };
    let opened: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT opened_at FROM email_batcher.windows WHERE recipient = $1")
            .bind(&recipient)
            .fetch_optional(&store.pool)
            .await?;
    let waiting: Vec<(String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT inquiry_id, received_at FROM email_batcher.inquiries
          WHERE recipient = $1 AND email_id IS NULL ORDER BY received_at",
    )
    .bind(&recipient)
    .fetch_all(&store.pool)
    .await?;
    let window = chrono::Duration::from_std(store.window).unwrap_or(chrono::Duration::MAX);
    let next = opened.and_then(|at| at.checked_add_signed(window));
    Ok(Json(json!({
        "therapist_id": therapist,
        "last_email_at": opened.map(|at| at.to_rfc3339()),
        "next_email_possible_at": next.filter(|at| *at > Utc::now()).map(|at| at.to_rfc3339()),
        "window_days": store.window.as_secs() / 86_400,
        "inquiries_waiting": waiting
            .iter()
            .map(|(inquiry, received)| json!({"inquiry_id": inquiry, "received_at": received.to_rfc3339()}))
            .collect::<Vec<_>>(),
    })))
}
