//! The scheduler's read-only query (`psymatch_runtime::query`): every job
//! with its next occurrence and its last run with the outcome, from the
//! schedule file and `scheduler.runs`.

use crate::Schedule;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use psymatch_runtime::query::QueryError;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::Arc;

#[derive(Clone)]
struct Store {
    pool: PgPool,
    schedule: Arc<Schedule>,
}

/// The routes: `GET /v1/jobs`.
pub fn routes(pool: PgPool, schedule: Arc<Schedule>) -> Router {
    Router::new()
        .route("/v1/jobs", get(jobs))
        .with_state(Store { pool, schedule })
}

type Run = (
    DateTime<Utc>,
    String,
    i32,
    Option<String>,
    Option<DateTime<Utc>>,
);

async fn jobs(State(store): State<Store>) -> Result<Json<Value>, QueryError> {
    let now = Utc::now();
    let mut jobs = Vec::new();
    for job in &store.schedule.jobs {
        let last: Option<Run> = sqlx::query_as(
            "SELECT occurrence, status, attempts, outcome, finished_at FROM scheduler.runs
              WHERE job = $1 ORDER BY occurrence DESC LIMIT 1",
        )
        .bind(&job.name)
        .fetch_optional(&store.pool)
        .await?;
        jobs.push(json!({
            "name": job.name,
            "cron": job.cron,
            "command": {"topic": job.topic, "event_type": job.event_type},
            "next_occurrence": store.schedule.next(job, now).map(|at| at.to_rfc3339()),
            "last_run": last.map(|(occurrence, status, attempts, outcome, finished)| json!({
                "occurrence": occurrence.to_rfc3339(), "status": status, "attempts": attempts,
                "outcome": outcome, "finished_at": finished.map(|at| at.to_rfc3339())})),
        }));
    }
    Ok(Json(
        json!({"timezone": store.schedule.timezone.name(), "jobs": jobs}),
    ))
}
