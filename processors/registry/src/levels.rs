//! The compatibility-level handlers: the global level and each subject's.

use super::{ApiError, DEFAULT_LEVEL, Flags, GLOBAL, ok, parse_body};
use crate::compat::Level;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;
use sqlx::PgPool;

#[derive(Deserialize)]
pub(crate) struct ConfigUpdate {
    compatibility: String,
}

pub(crate) fn level_from(body: &Bytes) -> Result<Level, ApiError> {
    let update: ConfigUpdate = parse_body(body)?;
    Level::parse(&update.compatibility).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42203,
            format!(
                "Invalid compatibility level '{}'. Valid values are BACKWARD, \
                 BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL, FULL_TRANSITIVE, NONE",
                update.compatibility
            ),
        )
    })
}

pub(crate) async fn stored_level(pool: &PgPool, subject: &str) -> Result<Option<Level>, ApiError> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT compatibility FROM registry.config WHERE subject = $1")
            .bind(subject)
            .fetch_optional(pool)
            .await?;
    Ok(stored.as_deref().and_then(Level::parse))
}

pub(crate) async fn store_level(
    pool: &PgPool,
    subject: &str,
    level: Level,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO registry.config (subject, compatibility) VALUES ($1, $2)
         ON CONFLICT (subject) DO UPDATE SET compatibility = EXCLUDED.compatibility",
    )
    .bind(subject)
    .bind(level.as_str())
    .execute(pool)
    .await?;
    Ok(())
}

pub(crate) async fn global_config(State(pool): State<PgPool>) -> Result<Response, ApiError> {
    let level = stored_level(&pool, GLOBAL).await?.unwrap_or(DEFAULT_LEVEL);
    ok(json!({"compatibilityLevel": level.as_str()}))
}

pub(crate) async fn set_global_config(
    State(pool): State<PgPool>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let level = level_from(&body)?;
    store_level(&pool, GLOBAL, level).await?;
    ok(json!({"compatibility": level.as_str()}))
}

pub(crate) fn not_configured(subject: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        40408,
        format!("Subject '{subject}' does not have subject-level compatibility configured"),
    )
}

pub(crate) async fn subject_config(
    State(pool): State<PgPool>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    let level = match stored_level(&pool, &subject).await? {
        Some(level) => level,
        None if flags.default_to_global => {
            stored_level(&pool, GLOBAL).await?.unwrap_or(DEFAULT_LEVEL)
        }
        None => return Err(not_configured(&subject)),
    };
    ok(json!({"compatibilityLevel": level.as_str()}))
}

pub(crate) async fn set_subject_config(
    State(pool): State<PgPool>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let level = level_from(&body)?;
    store_level(&pool, &subject, level).await?;
    ok(json!({"compatibility": level.as_str()}))
}

pub(crate) async fn delete_subject_config(
    State(pool): State<PgPool>,
    Path(subject): Path<String>,
) -> Result<Response, ApiError> {
    let level = stored_level(&pool, &subject)
        .await?
        .ok_or_else(|| not_configured(&subject))?;
    sqlx::query("DELETE FROM registry.config WHERE subject = $1")
        .bind(&subject)
        .execute(&pool)
        .await?;
    ok(json!({"compatibilityLevel": level.as_str()}))
}
