//! The subject and version handlers: listing, registering, looking up,
//! checking compatibility, deleting.

use super::{
    ApiError, Flags, VersionRef, VersionRow, begin, candidate, compat, effective_level,
    load_versions, ok, parsed_versions, pick, version_body, version_ref,
};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};
use sqlx::PgPool;

pub(crate) async fn subjects(
    State(pool): State<PgPool>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT subject FROM registry.subject_versions
          WHERE $1 OR NOT deleted ORDER BY subject",
    )
    .bind(flags.deleted)
    .fetch_all(&pool)
    .await?;
    ok(json!(names))
}

pub(crate) async fn versions(
    State(pool): State<PgPool>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    let rows = load_versions(&pool, &subject, flags.deleted).await?;
    if rows.is_empty() {
        return Err(ApiError::subject_not_found(&subject));
    }
    ok(json!(
        rows.iter().map(|row| row.version).collect::<Vec<_>>()
    ))
}

pub(crate) async fn version(
    State(pool): State<PgPool>,
    Path((subject, text)): Path<(String, String)>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    let wanted = version_ref(&text)?;
    let rows = load_versions(&pool, &subject, flags.deleted).await?;
    ok(version_body(
        &subject,
        pick(&rows, &subject, wanted, &text)?,
    ))
}

pub(crate) async fn version_schema(
    State(pool): State<PgPool>,
    Path((subject, text)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let wanted = version_ref(&text)?;
    let rows = load_versions(&pool, &subject, false).await?;
    let row = pick(&rows, &subject, wanted, &text)?;
    ok(serde_json::from_str(&row.schema_text).unwrap_or(Value::String(row.schema_text.clone())))
}

pub(crate) async fn register(
    State(pool): State<PgPool>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let new = candidate(&body)?;
    let mut tx = begin(&pool).await?;
    let all = load_versions(&mut *tx, &subject, true).await?;
    let live: Vec<VersionRow> = all
        .iter()
        .filter(|row| !row.deleted)
        .map(clone_row)
        .collect();
    if let Some(existing) = live.iter().find(|row| row.normalized == new.normalized) {
        return ok(json!({"id": existing.schema_id, "version": existing.version}));
    }
    let level = effective_level(&mut *tx, &subject).await?;
    let reasons = compat::check(level, &new.parsed, &parsed_versions(&live)?);
    if !reasons.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            409,
            format!(
                "Schema being registered is incompatible with an earlier schema for subject \
                 \"{subject}\" ({}), details: [{}]",
                level.as_str(),
                reasons.join("; ")
            ),
        ));
    }
    sqlx::query(
        "INSERT INTO registry.schemas (normalized, schema_text) VALUES ($1, $2)
         ON CONFLICT (md5(normalized)) DO NOTHING",
    )
    .bind(&new.normalized)
    .bind(&new.text)
    .execute(&mut *tx)
    .await?;
    let id: i32 =
        sqlx::query_scalar("SELECT id FROM registry.schemas WHERE md5(normalized) = md5($1)")
            .bind(&new.normalized)
            .fetch_one(&mut *tx)
            .await?;
    // Numbering continues after soft-deleted versions, as in Confluent's registry.
    let version = all.iter().map(|row| row.version).max().unwrap_or(0) + 1;
    sqlx::query(
        "INSERT INTO registry.subject_versions (subject, version, schema_id) VALUES ($1, $2, $3)",
    )
    .bind(&subject)
    .bind(version)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(subject, version, id, "schema registered");
    ok(json!({"id": id, "version": version}))
}

pub(crate) fn clone_row(row: &VersionRow) -> VersionRow {
    VersionRow {
        version: row.version,
        schema_id: row.schema_id,
        schema_text: row.schema_text.clone(),
        normalized: row.normalized.clone(),
        deleted: row.deleted,
    }
}

pub(crate) async fn lookup(
    State(pool): State<PgPool>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let wanted = candidate(&body)?;
    let rows = load_versions(&pool, &subject, flags.deleted).await?;
    if rows.is_empty() {
        return Err(ApiError::subject_not_found(&subject));
    }
    let row = rows
        .iter()
        .find(|row| row.normalized == wanted.normalized)
        .ok_or_else(|| ApiError::schema_not_found("(the one given)"))?;
    ok(version_body(&subject, row))
}

pub(crate) async fn compatibility(
    State(pool): State<PgPool>,
    Path((subject, text)): Path<(String, String)>,
    Query(flags): Query<Flags>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let wanted = version_ref(&text)?;
    let new = candidate(&body)?;
    let rows = load_versions(&pool, &subject, false).await?;
    if rows.is_empty() {
        if let VersionRef::Latest = wanted {
            // Nothing registered yet: anything may become the first version.
            return ok(json!({"is_compatible": true}));
        }
        return Err(ApiError::subject_not_found(&subject));
    }
    let level = effective_level(&pool, &subject).await?;
    let against = match wanted {
        // "latest" under a transitive level means every version.
        VersionRef::Latest => parsed_versions(&rows)?,
        VersionRef::Number(_) => {
            let row = pick(&rows, &subject, wanted, &text)?;
            parsed_versions(std::slice::from_ref(row))?
        }
    };
    let reasons = compat::check(level, &new.parsed, &against);
    let mut body = json!({"is_compatible": reasons.is_empty()});
    if flags.verbose {
        body["messages"] = json!(reasons);
    }
    ok(body)
}

pub(crate) async fn delete_subject(
    State(pool): State<PgPool>,
    Path(subject): Path<String>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    let mut tx = begin(&pool).await?;
    let all = load_versions(&mut *tx, &subject, true).await?;
    if all.is_empty() {
        return Err(ApiError::subject_not_found(&subject));
    }
    let deleted: Vec<i32> = if flags.permanent {
        if all.iter().any(|row| !row.deleted) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                40405,
                format!(
                    "Subject '{subject}' was not deleted first before being permanently deleted"
                ),
            ));
        }
        sqlx::query("DELETE FROM registry.subject_versions WHERE subject = $1")
            .bind(&subject)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM registry.config WHERE subject = $1")
            .bind(&subject)
            .execute(&mut *tx)
            .await?;
        all.iter().map(|row| row.version).collect()
    } else {
        let live: Vec<i32> = all
            .iter()
            .filter(|row| !row.deleted)
            .map(|row| row.version)
            .collect();
        if live.is_empty() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                40404,
                format!(
                    "Subject '{subject}' was soft deleted. Set permanent=true to delete permanently"
                ),
            ));
        }
        sqlx::query("UPDATE registry.subject_versions SET deleted = true WHERE subject = $1")
            .bind(&subject)
            .execute(&mut *tx)
            .await?;
        live
    };
    tx.commit().await?;
    ok(json!(deleted))
}

pub(crate) async fn delete_version(
    State(pool): State<PgPool>,
    Path((subject, text)): Path<(String, String)>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    let wanted = version_ref(&text)?;
    let mut tx = begin(&pool).await?;
    let rows = load_versions(&mut *tx, &subject, flags.permanent).await?;
    let version = pick(&rows, &subject, wanted, &text)?.version;
    let statement = if flags.permanent {
        "DELETE FROM registry.subject_versions WHERE subject = $1 AND version = $2 AND deleted"
    } else {
        "UPDATE registry.subject_versions SET deleted = true WHERE subject = $1 AND version = $2"
    };
    let changed = sqlx::query(statement)
        .bind(&subject)
        .bind(version)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if changed == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            40407,
            format!(
                "Subject '{subject}' Version {version} was not deleted first before being \
                 permanently deleted"
            ),
        ));
    }
    tx.commit().await?;
    ok(json!(version))
}
