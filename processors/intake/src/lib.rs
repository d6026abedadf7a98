//! The intake processor. Patients (here) and therapists
//! ([`therapists`]). Patient side: registrations, updates, pausing,
//! resuming and cancelling a search, and erasure. Personal data stay in
//! `intake.patients`; `patient-events` carry the pseudonymous search
//! profile (ids, age, gender, preferences, availability, position rounded
//! to about 100 m), never names, contact data or the address.
//!
//! Every valid registration or address change asks the geocoder for the
//! home position (`geocoding-requests`, request id `patient-<id>-<n>`); the
//! answer is folded into the record and published as an update.

mod patients;
pub mod queries;
pub mod therapists;
pub mod validate;

use chrono::{DateTime, Utc};
use psymatch_geo::Position;
use psymatch_geo::subject::{Kind, Subject};
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::processor::{BatchContext, Context, Incoming, ProcessError, Processor};
use psymatch_runtime::sealed;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};

const EVENTS: &str = "patient-events";

/// The intake processor.
pub struct Intake;

/// A stored patient.
struct Stored {
    details: Value,
    status: String,
    position: Option<Position>,
    sequence: i32,
}

/// A patient row: details, status, latitude, longitude, geocode sequence.
type Row = (Value, String, Option<f64>, Option<f64>, i32);
/// A patient row with its patient id first.
type KeyedRow = (String, Value, String, Option<f64>, Option<f64>, i32);

async fn load(ctx: &mut Context<'_>, patient_id: &str) -> Result<Option<Stored>, ProcessError> {
    match prefetched(ctx, patient_id) {
        Some(known) => Ok(known.stored),
        None => select(ctx, patient_id).await,
    }
}

/// The stored patient, read (and locked) now.
async fn select(ctx: &mut Context<'_>, patient_id: &str) -> Result<Option<Stored>, ProcessError> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT details, status, latitude, longitude, geocode_sequence
           FROM intake.patients WHERE patient_id = $1 FOR UPDATE",
    )
    .bind(patient_id)
    .fetch_optional(ctx.db())
    .await?;
    Ok(row.map(stored))
}

fn stored((details, status, lat, lon, sequence): Row) -> Stored {
    Stored {
        details,
        status,
        position: lat.zip(lon).map(|(lat, lon)| Position::new(lat, lon)),
        sequence,
    }
}

/// What a batch of patient commands loaded at its start, and what its
/// geocoding results folded in: one statement each per batch instead of
/// several per record.
#[derive(Default)]
struct Batch {
    /// The commands' patients as the batch found them (locked): erased or
    /// not, and the stored record if any.
    patients: HashMap<String, Known>,
    /// Patients a record of the batch has handled: a later record of the
    /// same patient reads the database, which holds the earlier one's changes.
    touched: HashSet<String>,
    /// Geocoding results folded in, by request id: the patient, details
    /// and status of the record they changed.
    folded: HashMap<String, (String, Value, String)>,
    /// Registrations accepted, stored together at the end of the batch.
    registered: Registered,
}

/// A patient as the batch found it.
struct Known {
    erased: bool,
    stored: Option<Stored>,
    /// The patient's key, if there is one (a publisher that sealed the
    /// details made it).
    key: Option<Vec<u8>>,
    /// No other record of the batch is about this patient: a registration
    /// can be stored at the end of the batch (no later record reads it).
    alone: bool,
}

/// New patients of a batch, in columns: one statement stores them all.
#[derive(Default)]
struct Registered {
    ids: Vec<String>,
    details: Vec<Value>,
    /// The geocoding request of each; none for a position given.
    requests: Vec<Option<String>>,
    /// The position given with each, if any.
    latitudes: Vec<Option<f64>>,
    longitudes: Vec<Option<f64>>,
    /// The keys made in this batch (patients who had none).
    keyed: Vec<String>,
    keys: Vec<Vec<u8>>,
}

/// The patient as the batch found it, unless an earlier record of the
/// batch handled them; either way the patient counts as handled from now.
fn prefetched(ctx: &mut Context<'_>, patient_id: &str) -> Option<Known> {
    let batch = ctx.scratch::<Batch>();
    let first = batch.touched.insert(patient_id.to_string());
    first.then(|| batch.patients.remove(patient_id)).flatten()
}

/// Whether a geocoding result answers a patient's home (by its subject).
fn is_home(record: &Incoming) -> bool {
    Subject::of(&record.payload).is_some_and(|s| s.kind == Kind::PatientHome)
}

/// A patient's home position in a geocoding result: its request and the
/// position, rounded; `None` for anything else (a failure, travel times, a
/// practice's position, a position that is none).
fn home_position(record: &Incoming) -> Option<(&str, Position)> {
    let request = record.payload["request_id"].as_str()?;
    if record.event_type() != "geocoding.address_geocoded" || !is_home(record) {
        return None;
    }
    let at = Position::of_json(&record.payload["position"]).ok()??;
    Some((
        request,
        Position::new(rounded(at.latitude), rounded(at.longitude)),
    ))
}

/// Rounds a position to 3 decimals (about 100 m): enough for matching,
/// not a home address.
pub fn rounded(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The pseudonymous search profile of a patient.
pub fn profile(
    patient_id: &str,
    details: &Value,
    status: &str,
    position: Option<Position>,
    now: DateTime<Utc>,
) -> Value {
    let age = validate::birth_date(details)
        .map(|born| validate::age(born, now.date_naive()))
        .unwrap_or(0);
    let or_empty = |field: &str| match &details[field] {
        Value::Array(items) => Value::Array(items.clone()),
        _ => json!([]),
    };
    json!({
        "patient_id": patient_id,
        "age": age,
        "gender": details["gender"],
        "postcode": details["address"]["postcode"],
        "coordinates": position.map(|at| Position::new(rounded(at.latitude), rounded(at.longitude)).to_json()),
        "transport": details["transport"],
        "max_distance_km": details["max_distance_km"],
        "max_travel_minutes": details["max_travel_minutes"],
        "preferred_therapist_gender": details["preferred_therapist_gender"],
        "preferred_procedures": or_empty("preferred_procedures"),
        "languages": or_empty("languages"),
        "excluded_therapists": or_empty("excluded_therapists"),
        "summary": {
            "patient_id": patient_id,
            "age": age,
            "gender": details["gender"],
            "symptoms": or_empty("symptoms"),
            "insurer": details["insurer"],
            "therapy_experience": details["therapy_experience"],
            "open_to_group": details["open_to_group"],
            "availability": or_empty("availability"),
        },
        "status": status,
    })
}

/// Asks the geocoder for the patient's position; the address travels
/// sealed with the patient's key (the topic is not compacted).
async fn geocode(
    ctx: &mut Context<'_>,
    patient_id: &str,
    sequence: i32,
    details: &Value,
) -> Result<String, ProcessError> {
    let request_id = format!("patient-{patient_id}-{sequence}");
    let key = sealed::key_of(ctx.db(), patient_id, true)
        .await?
        .expect("a key was just made");
    request_geocode(ctx, &request_id, &key, patient_id, details)?;
    Ok(request_id)
}

/// Emits the geocoding request with the address sealed under `key`.
fn request_geocode(
    ctx: &mut Context<'_>,
    request_id: &str,
    key: &[u8],
    patient_id: &str,
    details: &Value,
) -> Result<(), ProcessError> {
    let address = sealed::seal(key, patient_id, &details["address"]);
    ctx.emit(
        "geocoding-requests",
        "geocoding.geocode_address",
        json!({"request_id": request_id, "subject": Subject::patient_home(patient_id).to_json(),
               "address": null, "sealed_address": address}),
    )
}

impl Processor for Intake {
    fn name(&self) -> &'static str {
        "intake"
    }

    fn queries(&self, pool: &sqlx::PgPool) -> Option<axum::Router> {
        Some(queries::routes(pool.clone()))
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec![
            "patient-commands",
            "therapist-commands",
            "geocoding-results",
        ]
    }

    /// Loads (and locks) the patients of a batch of commands, and folds a
    /// batch of geocoding results into the patients in one statement.
    async fn begin_batch(
        &self,
        batch: &mut BatchContext<'_>,
        records: &[&Incoming],
    ) -> Result<(), ProcessError> {
        let mut ids: Vec<String> = records
            .iter()
            .filter(|r| r.topic == "patient-commands")
            .filter_map(|r| r.payload["patient_id"].as_str())
            .filter(|id| !id.is_empty())
            .map(str::to_string)
            .collect();
        ids.sort();
        // Patients with one record in the batch (before the duplicates go).
        let alone: HashSet<String> = ids
            .chunk_by(|a, b| a == b)
            .filter(|run| run.len() == 1)
            .map(|run| run[0].clone())
            .collect();
        ids.dedup();
        if !ids.is_empty() {
            // In one order, so that two batches locking patients do not
            // deadlock each other.
            let rows: Vec<KeyedRow> = sqlx::query_as(
                "SELECT patient_id, details, status, latitude, longitude, geocode_sequence
                   FROM intake.patients WHERE patient_id = ANY($1) ORDER BY patient_id FOR UPDATE",
            )
            .bind(&ids)
            .fetch_all(batch.db())
            .await?;
            // Erased or not, and the key if there is one, per patient.
            let marks: Vec<(String, bool, Option<Vec<u8>>)> = sqlx::query_as(
                "SELECT u.id, EXISTS (SELECT 1 FROM intake.erased e WHERE e.patient_id = u.id), k.key
                   FROM unnest($1::text[]) AS u(id)
                   LEFT JOIN keystore.patient_keys k ON k.patient_id = u.id",
            )
            .bind(&ids)
            .fetch_all(batch.db())
            .await?;
            let erased: HashSet<&str> = marks
                .iter()
                .filter(|(_, erased, _)| *erased)
                .map(|(id, _, _)| id.as_str())
                .collect();
            let mut keys: HashMap<&str, Vec<u8>> = marks
                .iter()
                .filter_map(|(id, _, key)| Some((id.as_str(), key.clone()?)))
                .collect();
            let mut rows: HashMap<String, Stored> = rows
                .into_iter()
                .map(|(id, details, status, lat, lon, sequence)| {
                    (id, stored((details, status, lat, lon, sequence)))
                })
                .collect();
            let patients = ids
                .into_iter()
                .map(|id| {
                    let known = Known {
                        erased: erased.contains(id.as_str()),
                        stored: rows.remove(&id),
                        key: keys.remove(id.as_str()),
                        alone: alone.contains(&id),
                    };
                    (id, known)
                })
                .collect();
            batch.scratch::<Batch>().patients = patients;
        }

        // The first position of each request.
        let mut seen = HashSet::new();
        let (mut requests, mut lats, mut lons) = (Vec::new(), Vec::new(), Vec::new());
        for (request, at) in records.iter().filter_map(|r| home_position(r)) {
            if seen.insert(request) {
                requests.push(request);
                lats.push(at.latitude);
                lons.push(at.longitude);
            }
        }
        if !requests.is_empty() {
            let rows: Vec<(String, String, Value, String)> = sqlx::query_as(
                "UPDATE intake.patients p
                    SET latitude = u.lat, longitude = u.lon, geocode_request = NULL, updated_at = now()
                   FROM unnest($1::text[], $2::float8[], $3::float8[]) AS u(request, lat, lon)
                  WHERE p.geocode_request = u.request
                  RETURNING u.request, p.patient_id, p.details, p.status",
            )
            .bind(&requests)
            .bind(&lats)
            .bind(&lons)
            .fetch_all(batch.db())
            .await?;
            batch.scratch::<Batch>().folded = rows
                .into_iter()
                .map(|(request, id, details, status)| (request, (id, details, status)))
                .collect();
        }
        Ok(())
    }

    async fn finish_batch(&self, batch: &mut BatchContext<'_>) -> Result<(), ProcessError> {
        let new = std::mem::take(&mut batch.scratch::<Batch>().registered);
        if new.ids.is_empty() {
            return Ok(());
        }
        // A key or patient that appeared since the batch began (another
        // writer) fails the batch, whose retry then finds it.
        sqlx::query(
            "WITH keys AS (
                 INSERT INTO keystore.patient_keys (patient_id, key)
                 SELECT * FROM unnest($4::text[], $5::bytea[]))
             INSERT INTO intake.patients
                    (patient_id, details, status, geocode_request, geocode_sequence, latitude, longitude)
             SELECT i, d, 'ACTIVE', r, 1, lat, lon
               FROM unnest($1::text[], $2::jsonb[], $3::text[], $6::float8[], $7::float8[])
                 AS u(i, d, r, lat, lon)",
        )
        .bind(&new.ids)
        .bind(&new.details)
        .bind(&new.requests)
        .bind(&new.keyed)
        .bind(&new.keys)
        .bind(&new.latitudes)
        .bind(&new.longitudes)
        .execute(batch.db())
        .await?;
        Ok(())
    }

    async fn process(&self, ctx: &mut Context<'_>, record: &Incoming) -> Result<(), ProcessError> {
        match record.event_type() {
            "patient.register" => self.register(ctx, record, false).await,
            "patient.update" => self.register(ctx, record, true).await,
            "patient.pause_search" | "patient.resume_search" | "patient.cancel_search" => {
                self.transition(ctx, record).await
            }
            "patient.erase" => self.erase(ctx, record).await,
            other if other.starts_with("therapist.") => therapists::handle(ctx, record).await,
            other if other.starts_with("geocoding.") => self.geocoded(ctx, record).await,
            other => Err(ProcessError::Invalid {
                code: ErrorCode::InvalidCommand,
                reason: format!("intake does not handle {other}"),
            }),
        }
    }
}
