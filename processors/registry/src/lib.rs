//! psymatch's schema registry: the subset of Confluent's Schema Registry REST
//! API that Kafka clients use, for Avro, stored in PostgreSQL.
//!
//! Neither Confluent's registry nor Karapace can be installed on the machines
//! psymatch is developed and tested on, and the processors need a real
//! registry to talk to; in docker-compose the Confluent image takes this one's
//! place. Being a drop-in means being exact about the wire: status codes,
//! Confluent's numeric `error_code`s, its JSON field names and its media type.
//!
//! All writes run in one transaction under an advisory lock, so two
//! registrations racing on one subject still get consecutive versions and one
//! schema text always gets one id.

pub mod compat;
mod levels;
mod subjects;

use levels::{
    delete_subject_config, global_config, set_global_config, set_subject_config, subject_config,
};
use subjects::{
    compatibility, delete_subject, delete_version, lookup, register, subjects, version,
    version_schema, versions,
};

use apache_avro::Schema;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use compat::Level;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};

/// The media type of every response, as Confluent's registry sends it.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// The compatibility level used when neither the subject nor the registry has one.
pub const DEFAULT_LEVEL: Level = Level::Backward;

/// Key of the global row in `registry.config`.
const GLOBAL: &str = "";

/// An error as the REST API reports it: HTTP status plus Confluent's body.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    status: StatusCode,
    code: u32,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: u32, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn subject_not_found(subject: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40401,
            format!("Subject '{subject}' not found."),
        )
    }

    fn version_not_found(version: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40402,
            format!("Version {version} not found."),
        )
    }

    fn schema_not_found(what: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            40403,
            format!("Schema {what} not found"),
        )
    }

    fn invalid_schema(why: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            42201,
            format!("Invalid schema: {why}"),
        )
    }

    fn bad_request(why: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, 400, why.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        tracing::error!(error = %error, "registry store error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            50001,
            format!("Error in the backend data store: {error}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        reply(
            self.status,
            json!({"error_code": self.code, "message": self.message}),
        )
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Result<Response, ApiError> {
    Ok(reply(StatusCode::OK, body))
}

/// The HTTP API over a migrated database (see `migrations/`).
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/", get(|| async { reply(StatusCode::OK, json!({})) }))
        .route(
            "/schemas/types",
            get(|| async { reply(StatusCode::OK, json!(["AVRO"])) }),
        )
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/schema", get(raw_schema_by_id))
        .route("/schemas/ids/{id}/versions", get(versions_of_id))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility),
        )
        .route("/config", get(global_config).put(set_global_config))
        .route(
            "/config/{subject}",
            get(subject_config)
                .put(set_subject_config)
                .delete(delete_subject_config),
        )
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, 404, "HTTP 404 Not Found").into_response()
        })
        .with_state(pool)
}

/// Body of register, lookup and compatibility requests.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Vec<Value>,
}

/// A parsed, accepted schema with the key that makes equal schemas one row.
struct Candidate {
    parsed: Schema,
    text: String,
    normalized: String,
}

/// Reads a JSON body whatever its content type: clients send
/// `application/vnd.schemaregistry.v1+json`, `application/json` or nothing.
fn parse_body<T: for<'de> Deserialize<'de>>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|error| ApiError::bad_request(format!("Unrecognized request body: {error}")))
}

fn candidate(body: &Bytes) -> Result<Candidate, ApiError> {
    let request: SchemaRequest = parse_body(body)?;
    if let Some(kind) = &request.schema_type
        && !kind.eq_ignore_ascii_case("AVRO")
    {
        return Err(ApiError::invalid_schema(format!(
            "schema type {kind} is not supported; this registry stores AVRO only"
        )));
    }
    if !request.references.is_empty() {
        return Err(ApiError::invalid_schema(
            "schema references are not supported; register self-contained schemas",
        ));
    }
    let json: Value = serde_json::from_str(&request.schema).map_err(ApiError::invalid_schema)?;
    let parsed = Schema::parse(&json).map_err(ApiError::invalid_schema)?;
    Ok(Candidate {
        parsed,
        normalized: normalize(&json),
        text: request.schema,
    })
}

/// Compact JSON with object keys sorted, so that formatting and key order
/// never make an existing schema look new.
pub fn normalize(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|key| format!("{}:{}", Value::String(key.clone()), normalize(&map[key])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(normalize).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

/// A version path segment: a positive number, `latest`, or `-1` (= latest).
#[derive(Clone, Copy)]
enum VersionRef {
    Latest,
    Number(i32),
}

fn version_ref(text: &str) -> Result<VersionRef, ApiError> {
    match text {
        "latest" | "-1" => Ok(VersionRef::Latest),
        _ => match text.parse::<i32>() {
            Ok(number) if number > 0 => Ok(VersionRef::Number(number)),
            _ => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                42202,
                format!(
                    "The specified version '{text}' is not a valid version id. Allowed values \
                     are between [1, 2^31-1] and the string \"latest\""
                ),
            )),
        },
    }
}

/// Query parameters; unknown ones are ignored, as by Confluent's registry.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Flags {
    #[serde(default, deserialize_with = "lenient_bool")]
    deleted: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    permanent: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    verbose: bool,
    #[serde(default, deserialize_with = "lenient_bool")]
    default_to_global: bool,
}

/// Booleans as clients write them in query strings: `true`, `True` (Python's
/// client), `1`; anything else is false.
fn lenient_bool<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let text = String::deserialize(deserializer)?;
    Ok(text.eq_ignore_ascii_case("true") || text == "1")
}

/// One stored version of a subject.
#[derive(sqlx::FromRow)]
struct VersionRow {
    version: i32,
    schema_id: i32,
    schema_text: String,
    normalized: String,
    deleted: bool,
}

async fn load_versions(
    executor: impl sqlx::PgExecutor<'_>,
    subject: &str,
    include_deleted: bool,
) -> Result<Vec<VersionRow>, sqlx::Error> {
    sqlx::query_as::<_, VersionRow>(
        "SELECT v.version, v.schema_id, s.schema_text, s.normalized, v.deleted
           FROM registry.subject_versions v JOIN registry.schemas s ON s.id = v.schema_id
          WHERE v.subject = $1 AND ($2 OR NOT v.deleted)
          ORDER BY v.version",
    )
    .bind(subject)
    .bind(include_deleted)
    .fetch_all(executor)
    .await
}

fn pick<'a>(
    rows: &'a [VersionRow],
    subject: &str,
    version: VersionRef,
    text: &str,
) -> Result<&'a VersionRow, ApiError> {
    if rows.is_empty() {
        return Err(ApiError::subject_not_found(subject));
    }
    match version {
        VersionRef::Latest => rows.last(),
        VersionRef::Number(number) => rows.iter().find(|row| row.version == number),
    }
    .ok_or_else(|| ApiError::version_not_found(text))
}

fn version_body(subject: &str, row: &VersionRow) -> Value {
    json!({
        "subject": subject,
        "version": row.version,
        "id": row.schema_id,
        "schema": row.schema_text,
    })
}

async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, ApiError> {
    let mut tx = pool.begin().await?;
    // One writer at a time: registrations are rare and must never hand out a
    // version number or schema id twice.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('psymatch.registry'))")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

async fn effective_level(
    executor: impl sqlx::PgExecutor<'_>,
    subject: &str,
) -> Result<Level, ApiError> {
    let stored: Option<String> = sqlx::query_scalar(
        "SELECT compatibility FROM registry.config WHERE subject IN ($1, '')
          ORDER BY subject DESC LIMIT 1",
    )
    .bind(subject)
    .fetch_optional(executor)
    .await?;
    Ok(stored
        .as_deref()
        .and_then(Level::parse)
        .unwrap_or(DEFAULT_LEVEL))
}

fn parsed_versions(rows: &[VersionRow]) -> Result<Vec<(i32, Schema)>, ApiError> {
    rows.iter()
        .map(|row| {
            Schema::parse_str(&row.schema_text)
                .map(|schema| (row.version, schema))
                .map_err(|error| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        50001,
                        format!("stored version {} no longer parses: {error}", row.version),
                    )
                })
        })
        .collect()
}

async fn schema_text_by_id(pool: &PgPool, id: i32) -> Result<String, ApiError> {
    sqlx::query_scalar("SELECT schema_text FROM registry.schemas WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| ApiError::schema_not_found(id))
}

async fn schema_by_id(
    State(pool): State<PgPool>,
    Path(id): Path<i32>,
) -> Result<Response, ApiError> {
    ok(json!({"schema": schema_text_by_id(&pool, id).await?}))
}

async fn raw_schema_by_id(
    State(pool): State<PgPool>,
    Path(id): Path<i32>,
) -> Result<Response, ApiError> {
    let text = schema_text_by_id(&pool, id).await?;
    ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

async fn versions_of_id(
    State(pool): State<PgPool>,
    Path(id): Path<i32>,
    Query(flags): Query<Flags>,
) -> Result<Response, ApiError> {
    schema_text_by_id(&pool, id).await?;
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT subject, version FROM registry.subject_versions
          WHERE schema_id = $1 AND ($2 OR NOT deleted) ORDER BY subject, version",
    )
    .bind(id)
    .bind(flags.deleted)
    .fetch_all(&pool)
    .await?;
    let body: Vec<Value> = rows
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    ok(Value::Array(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_ignores_whitespace_and_key_order() {
        let a: Value =
            serde_json::from_str(r#"{"type": "record", "name":"R", "fields": []}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"fields":[],"name":"R","type":"record"}"#).unwrap();
        let c: Value = serde_json::from_str(r#"{"fields":[],"name":"S","type":"record"}"#).unwrap();
        assert_eq!(normalize(&a), normalize(&b));
        assert_ne!(normalize(&a), normalize(&c));
        assert_eq!(normalize(&b), r#"{"fields":[],"name":"R","type":"record"}"#);
    }

    #[test]
    fn version_refs() {
        assert!(matches!(version_ref("latest"), Ok(VersionRef::Latest)));
        assert!(matches!(version_ref("-1"), Ok(VersionRef::Latest)));
        assert!(matches!(version_ref("3"), Ok(VersionRef::Number(3))));
        for bad in ["0", "-2", "x", "99999999999"] {
            let error = version_ref(bad).err().unwrap();
            assert_eq!(error.code, 42202, "{bad}");
        }
    }
}
