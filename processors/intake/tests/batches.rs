//! Intake's batches: the patients of a batch of commands are loaded in one
//! statement at its start and a batch of geocoding results is folded in
//! with one, so these tests put several records of one patient into one
//! batch (`run_batch`) and check each sees what the ones before it did.

use psymatch_intake::Intake;
use psymatch_runtime::testing::{fresh_database, run_batch};
use serde_json::{Value, json};

fn details(street: &str) -> Value {
    json!({
        "salutation": "NONE", "first_name": "Synthetisch", "last_name": "Beispiel",
        "address": {"street": street, "house_number": "1", "postcode": "10115", "city": "Berlin"},
        "email": "synthetisch@example.org", "phone": null, "date_of_birth": "1990-01-01", "gender": "FEMALE",
        "insurer": "Beispielkasse", "diagnosis_icd10": "F32.1", "consultation_hour_attended": true,
        "symptoms": [], "therapy_experience": false, "last_therapy_session": null,
        "open_to_group": false, "availability": [], "max_distance_km": 10, "max_travel_minutes": null,
        "transport": "CAR", "preferred_therapist_gender": "ANY", "preferred_procedures": [], "languages": [],
        "excluded_therapists": [], "consent_given_at": "2026-11-01T09:30:00Z"
    })
}

fn command(event_type: &str, patient: &str, details: Option<Value>) -> Value {
    let mut payload = json!({"patient_id": patient});
    match event_type {
        "patient.register" | "patient.update" => {
            payload["details"] = details.unwrap_or(Value::Null)
        }
        "patient.erase" => payload["keep_contact_log"] = json!(false),
        "patient.resume_search" => {}
        _ => payload["reason"] = json!("synthetic"),
    }
    json!({"event_type": event_type, "payload": payload})
}

fn geocoded(request: &str, latitude: f64) -> Value {
    json!({"event_type": "geocoding.address_geocoded", "payload": {
        "request_id": request, "position": {"latitude": latitude, "longitude": 13.4},
        "precision": "ADDRESS", "source": "NOMINATIM", "note": null}})
}

/// The event types of what a batch emitted, in order, with the patient or
/// the rejection's reason.
fn summary(emitted: &[(String, String, Value)]) -> Vec<String> {
    emitted
        .iter()
        .map(|(topic, event_type, payload)| {
            let what = payload["patient_id"]
                .as_str()
                .or(payload["request_id"].as_str())
                .or(payload["reason"].as_str())
                .unwrap_or("");
            format!("{topic} {event_type} {what}")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_of_one_patient_in_one_batch_see_each_other() {
    let (pool, _) = fresh_database().await;
    // Before the batch: p-2 is registered, p-3 was erased.
    run_batch(
        &Intake,
        &pool,
        "patient-commands",
        &[
            command("patient.register", "p-2", Some(details("Altweg"))),
            command("patient.register", "p-3", Some(details("Altweg"))),
            command("patient.erase", "p-3", None),
        ],
    )
    .await;

    let emitted = run_batch(
        &Intake,
        &pool,
        "patient-commands",
        &[
            command("patient.register", "p-1", Some(details("Erstweg"))),
            command("patient.update", "p-1", Some(details("Zweitweg"))),
            command("patient.pause_search", "p-1", None),
            command("patient.resume_search", "p-1", None),
            command("patient.erase", "p-1", None),
            command("patient.register", "p-1", Some(details("Drittweg"))),
            command("patient.register", "p-2", Some(details("Altweg"))),
            command("patient.pause_search", "p-2", None),
            command("patient.register", "p-3", Some(details("Altweg"))),
            command("patient.register", "p-4", Some(details("Neuweg"))),
            command("patient.register", "p-4", Some(details("Neuweg"))),
        ],
    )
    .await;
    let summary = summary(&emitted);
    let expected = [
        "geocoding-requests geocoding.geocode_address patient-p-1-1",
        "patient-events patient.registered p-1",
        "geocoding-requests geocoding.geocode_address patient-p-1-2",
        "patient-events patient.updated p-1",
        "patient-events patient.search_status_changed p-1",
        "patient-events patient.search_status_changed p-1",
        "geocoding-requests geocoding.forget_address erase-p-1",
        "patient-events patient.erased p-1",
    ];
    assert_eq!(summary[..expected.len()], expected, "{summary:#?}");
    let rest = &summary[expected.len()..];
    let rejected =
        |line: &String, why: &str| line.contains("command.rejected") && line.contains(why);
    assert_eq!(rest.len(), 7, "{rest:#?}");
    assert!(rejected(&rest[0], "p-1 was erased"), "{rest:#?}");
    assert!(rejected(&rest[1], "p-2 is registered already"), "{rest:#?}");
    assert_eq!(rest[2], "patient-events patient.search_status_changed p-2");
    assert!(rejected(&rest[3], "p-3 was erased"), "{rest:#?}");
    assert_eq!(
        rest[4..6],
        [
            "geocoding-requests geocoding.geocode_address patient-p-4-1",
            "patient-events patient.registered p-4"
        ]
    );
    assert!(rejected(&rest[6], "p-4 is registered already"), "{rest:#?}");

    let stored: Vec<(String, String, i32)> = sqlx::query_as(
        "SELECT patient_id, status, geocode_sequence FROM intake.patients ORDER BY patient_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        [
            ("p-2".to_string(), "PAUSED".to_string(), 1),
            ("p-4".to_string(), "ACTIVE".to_string(), 1)
        ]
    );
    let keys: Vec<String> =
        sqlx::query_scalar("SELECT patient_id FROM keystore.patient_keys ORDER BY patient_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(keys, ["p-2", "p-4"], "erased patients keep no key");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_positions_is_folded_in_once_per_request() {
    let (pool, _) = fresh_database().await;
    run_batch(
        &Intake,
        &pool,
        "patient-commands",
        &[
            command("patient.register", "p-5", Some(details("Erstweg"))),
            command("patient.register", "p-6", Some(details("Erstweg"))),
            command("patient.register", "p-7", Some(details("Erstweg"))),
            command("patient.update", "p-7", Some(details("Zweitweg"))),
        ],
    )
    .await;
    let emitted = run_batch(
        &Intake,
        &pool,
        "geocoding-results",
        &[
            geocoded("patient-p-5-1", 52.5201),
            // The same request answered twice: the first answer counts.
            geocoded("patient-p-5-1", 48.1),
            json!({"event_type": "geocoding.failed", "payload": {
                "request_id": "patient-p-6-1", "error_code": "NOT_FOUND", "reason": "no such street"}}),
            // p-7 moved: the answer for the old address is stale.
            geocoded("patient-p-7-1", 50.0),
            geocoded("patient-p-7-2", 51.0),
            geocoded("patient-p-9-1", 53.0),
        ],
    )
    .await;
    let summary = summary(&emitted);
    assert_eq!(
        summary,
        [
            "patient-events patient.updated p-5",
            "patient-events patient.updated p-7"
        ]
    );
    assert_eq!(
        emitted[0].2["profile"]["coordinates"],
        json!({"latitude": 52.52, "longitude": 13.4})
    );
    let positions: Vec<(String, Option<f64>)> =
        sqlx::query_as("SELECT patient_id, latitude FROM intake.patients ORDER BY patient_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        positions,
        [
            ("p-5".to_string(), Some(52.52)),
            ("p-6".to_string(), None),
            ("p-7".to_string(), Some(51.0))
        ]
    );
}

/// Registrations of patients with no other record in the batch are stored
/// together at its end: each with its key (a key the publisher made stays),
/// its address sealed under that key, and a refused one leaves nothing.
#[tokio::test(flavor = "multi_thread")]
async fn registrations_of_a_batch_are_stored_together() {
    let (pool, _) = fresh_database().await;
    let mut conn = pool.acquire().await.unwrap();
    let published = psymatch_runtime::sealed::key_of(&mut conn, "p-12", true)
        .await
        .unwrap()
        .expect("a key made for the publisher");
    drop(conn);
    let mut refused = details("Ohneweg");
    refused["consent_given_at"] = Value::Null;
    let emitted = run_batch(
        &Intake,
        &pool,
        "patient-commands",
        &[
            command("patient.register", "p-10", Some(details("Erstweg"))),
            command("patient.register", "p-11", Some(details("Zweitweg"))),
            command("patient.register", "p-12", Some(details("Drittweg"))),
            command("patient.register", "p-13", Some(refused)),
        ],
    )
    .await;
    let stored: Vec<(String, String, String, i32)> = sqlx::query_as(
        "SELECT patient_id, status, geocode_request, geocode_sequence FROM intake.patients ORDER BY patient_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let row = |n: u32| {
        (
            format!("p-{n}"),
            "ACTIVE".to_string(),
            format!("patient-p-{n}-1"),
            1,
        )
    };
    assert_eq!(stored, [row(10), row(11), row(12)]);
    let keys: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT patient_id, key FROM keystore.patient_keys ORDER BY patient_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let ids: Vec<&str> = keys.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["p-10", "p-11", "p-12"],
        "a refused registration makes no key"
    );
    assert_eq!(keys[2].1, published, "the publisher's key stays");
    let requests: Vec<&Value> = emitted
        .iter()
        .filter(|(_, t, _)| t == "geocoding.geocode_address")
        .map(|(_, _, p)| p)
        .collect();
    assert_eq!(requests.len(), 3);
    for ((id, key), request) in keys.iter().zip(requests) {
        let sealed = request["sealed_address"].as_str().unwrap();
        let address =
            psymatch_runtime::sealed::open(key, id, sealed).expect("opens with the stored key");
        assert_eq!(address["postcode"], "10115");
    }
    let summary = summary(&emitted);
    assert!(
        summary.last().unwrap().contains("command.rejected"),
        "{summary:#?}"
    );
}
