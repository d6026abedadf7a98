//! The scraper's read-only query (`psymatch_runtime::query`): scrape runs
//! with their progress, newest first, from `scraper.runs`.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use psymatch_runtime::query::{QueryError, id};
use serde_json::{Value, json};
use sqlx::PgPool;

/// The routes: `GET /v1/runs` (the latest 50), `GET /v1/runs/{run_id}`.
pub fn routes(pool: PgPool) -> Router {
    Router::new()
        .route("/v1/runs", get(runs))
        .route("/v1/runs/{run_id}", get(run))
        .with_state(pool)
}

/// The columns a run is shown with, as one JSON object per row.
const RUN: &str =
    "json_build_object('run_id', run_id, 'source', source, 'description', description,
      'status', status, 'detail', detail, 'started_at', started_at, 'finished_at', finished_at,
      'areas_total', areas_total, 'areas_done', areas_done, 'seen', seen, 'new', new,
      'changed', changed, 'removed', removed, 'invalid', invalid, 'truncated', truncated)";

async fn runs(State(pool): State<PgPool>) -> Result<Json<Value>, QueryError> {
    let runs: Vec<Value> = sqlx::query_scalar(&format!(
        "SELECT {RUN} FROM scraper.runs ORDER BY started_at DESC LIMIT 50"
    ))
    .fetch_all(&pool)
    .await?;
    Ok(Json(json!({"runs": runs})))
}

async fn run(
    State(pool): State<PgPool>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, QueryError> {
    let run_id = id("run", &raw)?;
    let run: Option<Value> =
        sqlx::query_scalar(&format!("SELECT {RUN} FROM scraper.runs WHERE run_id = $1"))
            .bind(&run_id)
            .fetch_optional(&pool)
            .await?;
    run.map(Json)
        .ok_or_else(|| QueryError::not_found("scrape run", &run_id))
}
