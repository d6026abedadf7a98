//! Intake's read-only query (`psymatch_runtime::query`): a patient's
//! personal data, for staff only, each read logged as an access (who,
//! which patient) without the data.

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use psymatch_runtime::query::{Caller, QueryError, id, personal_read};
use serde_json::{Value, json};
use sqlx::PgPool;

/// The routes: `GET /v1/patients/{patient_id}`.
pub fn routes(pool: PgPool) -> Router {
    Router::new()
        .route("/v1/patients/{patient_id}", get(patient))
        .with_state(pool)
}

type Row = (Value, String, DateTime<Utc>, Option<f64>, Option<f64>);

async fn patient(
    State(pool): State<PgPool>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
) -> Result<Json<Value>, QueryError> {
    let patient = id("patient", &raw)?;
    // The role first: an ops caller learns nothing, not even whether the
    // patient exists.
    personal_read(&caller, "patient", &patient)?;
    let row: Option<Row> = sqlx::query_as(
        "SELECT details, status, registered_at, latitude, longitude
           FROM intake.patients WHERE patient_id = $1",
    )
    .bind(&patient)
    .fetch_optional(&pool)
    .await?;
    let Some((details, status, registered_at, latitude, longitude)) = row else {
        let erased: Option<DateTime<Utc>> =
            sqlx::query_scalar("SELECT erased_at FROM intake.erased WHERE patient_id = $1")
                .bind(&patient)
                .fetch_optional(&pool)
                .await?;
        return Err(match erased {
            Some(at) => QueryError {
                status: axum::http::StatusCode::NOT_FOUND,
                error: "erased",
                message: format!("patient {patient} was erased on {}", at.format("%Y-%m-%d")),
            },
            None => QueryError::not_found("patient", &patient),
        });
    };
    Ok(Json(json!({
        "patient_id": patient,
        "status": status,
        "registered_at": registered_at.to_rfc3339(),
        "details": details,
        "position": latitude.zip(longitude).map(|(lat, lon)| json!({"latitude": lat, "longitude": lon})),
    })))
}
