//! The patient commands: register, update, pause, resume, cancel and erase,
//! each validated and answered with the pseudonymous profile or a
//! rejection; and the home position the geocoder found.

use super::{
    Batch, EVENTS, Intake, Known, geocode, home_position, is_home, load, prefetched, profile,
    request_geocode, select, validate,
};
use psymatch_geo::Position;
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::processor::{Context, Incoming, ProcessError, invalid_event};
use psymatch_runtime::sealed;
use serde_json::{Value, json};

/// Details opened from their seal, resolved against the topic's
/// `psymatch.patient.PatientDetails` (defaults filled in, misfits named).
pub fn unsealed_details(details: &Value) -> Result<Value, String> {
    let (_, schema) = psymatch_runtime::contracts::Contracts::embedded()
        .topic("patient-commands")
        .map_err(|e| e.to_string())?;
    schema
        .resolve_named("psymatch.patient.PatientDetails", details)
        .map_err(|reason| format!("the sealed details do not fit: {reason}"))
}

/// The patient a command names (empty when it names none: the lookup
/// then finds nobody and the command is rejected as unknown).
fn patient_of(record: &Incoming) -> String {
    record.payload["patient_id"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

impl Intake {
    pub(crate) async fn register(
        &self,
        ctx: &mut Context<'_>,
        record: &Incoming,
        update: bool,
    ) -> Result<(), ProcessError> {
        let patient_id = patient_of(record);
        if let Err(reason) = validate::patient_id(&patient_id) {
            return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
        }
        let known = match prefetched(ctx, &patient_id) {
            Some(known) => known,
            None => Known {
                erased: sqlx::query_scalar::<_, String>(
                    "SELECT patient_id FROM intake.erased WHERE patient_id = $1",
                )
                .bind(&patient_id)
                .fetch_optional(ctx.db())
                .await?
                .is_some(),
                stored: select(ctx, &patient_id).await?,
                key: None,
                alone: false,
            },
        };
        let (alone, key) = (known.alone, known.key);
        if known.erased {
            let reason =
                format!("patient {patient_id} was erased; a new registration needs a new id");
            return ctx.reject(EVENTS, ErrorCode::InvalidState, &reason);
        }
        // Sealed by the publisher (psymatch publish) with the patient's
        // key, or in clear (the address to geocode is sealed either way,
        // with a key made then if there is none).
        let details = match record.payload["sealed_details"].as_str() {
            Some(sealed) => match sealed::open_stored(ctx.db(), &patient_id, sealed).await? {
                // The seal hid them from the topic's schema: resolved now,
                // with its defaults, as details in clear were.
                Ok(details) => match unsealed_details(&details) {
                    Ok(details) => details,
                    Err(reason) => return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason),
                },
                Err(error) => {
                    return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &error.to_string());
                }
            },
            None => record.payload["details"].clone(),
        };
        let now = ctx.now();
        let problems = validate::details(&details, now);
        if !problems.is_empty() {
            return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &problems.join("; "));
        }
        match (update, known.stored) {
            (false, Some(_)) => {
                let reason =
                    format!("patient {patient_id} is registered already; send patient.update");
                ctx.reject(EVENTS, ErrorCode::InvalidState, &reason)
            }
            (true, None) => {
                let reason = format!("patient {patient_id} is not registered");
                ctx.reject(EVENTS, ErrorCode::UnknownSubject, &reason)
            }
            (true, Some(old)) if old.status == "CANCELLED" => {
                let reason = format!(
                    "the search of patient {patient_id} is cancelled; register anew to search again"
                );
                ctx.reject(EVENTS, ErrorCode::InvalidState, &reason)
            }
            (false, None) => {
                // A position given with the registration is the home: no
                // geocoder is asked (validated above).
                let given = validate::home(&details).ok().flatten();
                let request = given.is_none().then(|| format!("patient-{patient_id}-1"));
                // Alone in the batch: stored with its other registrations at
                // its end (`Some(made a key)`). Otherwise now: the patient's
                // key (made unless the publisher made one) and the record in
                // one round trip.
                let (key, deferred) = match (alone, key) {
                    (true, Some(key)) => (key, Some(false)),
                    (true, None) => (sealed::new_key(), Some(true)),
                    (false, _) => {
                        let key: Vec<u8> = sqlx::query_scalar(&sealed::key_made_or_found(&[
                            "patient AS (
                                 INSERT INTO intake.patients
                                        (patient_id, details, status, geocode_request, geocode_sequence, latitude, longitude)
                                 VALUES ($1, $3, 'ACTIVE', $4, 1, $5, $6))",
                        ]))
                        .bind(&patient_id)
                        .bind(sealed::new_key())
                        .bind(&details)
                        .bind(&request)
                        .bind(given.map(|p| p.latitude))
                        .bind(given.map(|p| p.longitude))
                        .fetch_one(ctx.db())
                        .await?;
                        (key, None)
                    }
                };
                if let Some(request) = &request {
                    request_geocode(ctx, request, &key, &patient_id, &details)?;
                }
                let profile = profile(&patient_id, &details, "ACTIVE", given, now);
                ctx.emit(
                    EVENTS,
                    "patient.registered",
                    json!({"patient_id": patient_id, "profile": profile}),
                )?;
                if let Some(made) = deferred {
                    // Only now, accepted: a refused record leaves the scratch.
                    let registered = &mut ctx.scratch::<Batch>().registered;
                    if made {
                        registered.keyed.push(patient_id.clone());
                        registered.keys.push(key);
                    }
                    registered.ids.push(patient_id);
                    registered.details.push(details);
                    registered.requests.push(request);
                    registered.latitudes.push(given.map(|p| p.latitude));
                    registered.longitudes.push(given.map(|p| p.longitude));
                }
                Ok(())
            }
            (true, Some(old)) => {
                // Names of what changed, never the values.
                let changed: Vec<String> = details
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter(|(field, value)| old.details.get(field.as_str()) != Some(value))
                    .map(|(field, _)| field.clone())
                    .collect();
                let given = validate::home(&details).ok().flatten();
                let moved = old.details["address"] != details["address"];
                let withdrawn = given.is_none() && old.details["coordinates"].is_object();
                // A given position is the home: the request still open (if
                // any) is forgotten, its late answer is not the home. A new
                // address without one, or a position taken back, is
                // geocoded anew.
                let (position, sequence, request) = match given {
                    Some(at) => (Some(at), old.sequence, Some(None)),
                    None if moved || withdrawn => {
                        let sequence = old.sequence + 1;
                        geocode(ctx, &patient_id, sequence, &details).await?;
                        (
                            None,
                            sequence,
                            Some(Some(format!("patient-{patient_id}-{sequence}"))),
                        )
                    }
                    None => (old.position, old.sequence, None),
                };
                sqlx::query(
                    "UPDATE intake.patients
                        SET details = $2, latitude = $3, longitude = $4, geocode_sequence = $5,
                            geocode_request = CASE WHEN $6 THEN $7 ELSE geocode_request END, updated_at = now()
                      WHERE patient_id = $1",
                )
                .bind(&patient_id)
                .bind(&details)
                .bind(position.map(|p| p.latitude))
                .bind(position.map(|p| p.longitude))
                .bind(sequence)
                .bind(request.is_some())
                .bind(request.flatten())
                .execute(ctx.db())
                .await?;
                let profile = profile(&patient_id, &details, &old.status, position, now);
                ctx.emit(
                    EVENTS,
                    "patient.updated",
                    json!({"patient_id": patient_id, "profile": profile, "changed_fields": changed}),
                )
            }
        }
    }

    pub(crate) async fn transition(
        &self,
        ctx: &mut Context<'_>,
        record: &Incoming,
    ) -> Result<(), ProcessError> {
        let patient_id = patient_of(record);
        let checked =
            validate::patient_id(&patient_id).and_then(|()| {
                match record.payload["reason"].as_str() {
                    Some(text) => validate::reason("reason", text),
                    None => Ok(()),
                }
            });
        if let Err(problem) = checked {
            return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &problem);
        }
        let Some(stored) = load(ctx, &patient_id).await? else {
            let reason = format!("patient {patient_id} is not registered");
            return ctx.reject(EVENTS, ErrorCode::UnknownSubject, &reason);
        };
        let (allowed, target): (&[&str], &str) = match record.event_type() {
            "patient.pause_search" => (&["ACTIVE"], "PAUSED"),
            "patient.resume_search" => (&["PAUSED"], "ACTIVE"),
            _ => (&["ACTIVE", "PAUSED"], "CANCELLED"),
        };
        if !allowed.contains(&stored.status.as_str()) {
            let reason = format!(
                "{} is not possible for a search that is {}",
                record.event_type(),
                stored.status.to_lowercase()
            );
            return ctx.reject(EVENTS, ErrorCode::InvalidState, &reason);
        }
        sqlx::query(
            "UPDATE intake.patients SET status = $2, updated_at = now() WHERE patient_id = $1",
        )
        .bind(&patient_id)
        .bind(target)
        .execute(ctx.db())
        .await?;
        let profile = profile(
            &patient_id,
            &stored.details,
            target,
            stored.position,
            ctx.now(),
        );
        ctx.emit(
            EVENTS,
            "patient.search_status_changed",
            json!({"patient_id": patient_id, "profile": profile, "reason": record.payload["reason"]}),
        )
    }

    pub(crate) async fn erase(
        &self,
        ctx: &mut Context<'_>,
        record: &Incoming,
    ) -> Result<(), ProcessError> {
        let patient_id = patient_of(record);
        if load(ctx, &patient_id).await?.is_none() {
            let reason = format!("patient {patient_id} is not registered (or was erased already)");
            return ctx.reject(EVENTS, ErrorCode::UnknownSubject, &reason);
        }
        // The geocoder forgets what it geocoded for the patient (it knows
        // which addresses; the request names none), and the key goes:
        // sealed copies of the patient's data in topics become unreadable.
        ctx.emit(
            "geocoding-requests",
            "geocoding.forget_address",
            json!({"request_id": format!("erase-{patient_id}"), "address": null}),
        )?;
        sealed::destroy(ctx.db(), &patient_id).await?;
        sqlx::query("DELETE FROM intake.patients WHERE patient_id = $1")
            .bind(&patient_id)
            .execute(ctx.db())
            .await?;
        sqlx::query("INSERT INTO intake.erased (patient_id) VALUES ($1) ON CONFLICT DO NOTHING")
            .bind(&patient_id)
            .execute(ctx.db())
            .await?;
        tracing::info!(patient_id, "patient erased");
        ctx.emit(
            EVENTS,
            "patient.erased",
            json!({"patient_id": patient_id, "keep_contact_log": record.payload["keep_contact_log"]}),
        )?;
        // Compaction then removes everything published under the keys.
        ctx.tombstone(EVENTS, &patient_id);
        ctx.tombstone(
            EVENTS,
            &psymatch_runtime::processor::rejection_key(&patient_id),
        );
        Ok(())
    }

    pub(crate) async fn geocoded(
        &self,
        ctx: &mut Context<'_>,
        record: &Incoming,
    ) -> Result<(), ProcessError> {
        let request_id = record.payload["request_id"].as_str().unwrap_or_default();
        // A geocoder's bug is refused before it can become a patient's position.
        if request_id.is_empty() {
            return Err(invalid_event("a geocoding result without a request id"));
        }
        let position = Position::of_json(&record.payload["position"]).map_err(invalid_event)?;
        if record.event_type() == "geocoding.address_geocoded" && position.is_none() {
            return Err(invalid_event(
                "an address_geocoded result without a position",
            ));
        }
        if !is_home(record) {
            return Ok(());
        }
        let Some((_, position)) = home_position(record) else {
            let patient: Option<String> = sqlx::query_scalar(
                "SELECT patient_id FROM intake.patients WHERE geocode_request = $1",
            )
            .bind(request_id)
            .fetch_optional(ctx.db())
            .await?;
            if let Some(patient_id) = patient {
                tracing::warn!(patient_id, reason = %record.payload["reason"], "no position for a patient's address");
            }
            return Ok(());
        };
        // Folded in at the start of the batch (see `begin_batch`) where
        // the request was still the patient's: none for an erased patient
        // or a superseded address.
        let row = ctx.scratch::<Batch>().folded.remove(request_id);
        let Some((patient_id, details, status)) = row else {
            return Ok(());
        };
        let profile = profile(&patient_id, &details, &status, Some(position), ctx.now());
        ctx.emit(
            EVENTS,
            "patient.updated",
            json!({"patient_id": patient_id, "profile": profile, "changed_fields": ["coordinates"]}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::unsealed_details;
    use serde_json::json;

    #[test]
    fn sealed_details_get_the_schemas_defaults_and_misfits_are_named() {
        // As a person writes them: no phone, no preferences, no languages.
        let written = json!({
            "salutation": "NONE", "first_name": "Synthetisch", "last_name": "Person",
            "address": {"street": "Probeweg", "house_number": "1", "postcode": "10115", "city": "Berlin"},
            "email": "person@example.org", "date_of_birth": "1990-06-01", "gender": "FEMALE",
            "insurer": "Beispielkasse", "consultation_hour_attended": true, "transport": "CAR",
        });
        let details = unsealed_details(&written).unwrap();
        assert_eq!(details["preferred_therapist_gender"], "ANY");
        assert_eq!(details["therapy_experience"], false);
        assert_eq!(details["languages"], json!([]));
        assert_eq!(details["date_of_birth"], "1990-06-01");
        assert_eq!(details["address"]["postcode"], "10115");
        let mut wrong = written.clone();
        wrong["transport"] = json!("ROCKET");
        let error = unsealed_details(&wrong).unwrap_err();
        assert!(error.contains("transport"), "{error}");
    }
}
