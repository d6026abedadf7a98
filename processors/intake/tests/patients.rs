//! Intake through the real broker, registry and PostgreSQL: registrations
//! validated and published as pseudonymous profiles, positions folded in,
//! status changes, readable rejections, and erasure.

use psymatch_intake::Intake;
use psymatch_runtime::testing::people::command;
use psymatch_runtime::testing::{Received, Running, TestBed, of_type};
use serde_json::{Value, json};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);
/// Planted personal data: must never leave intake.
const NAME: &str = "Wilhelmine";
const STREET: &str = "Geheimweg";

fn details(postcode: &str) -> Value {
    json!({
        "salutation": "FRAU", "first_name": NAME, "last_name": "Zwiebelmeier",
        "address": {"street": STREET, "house_number": "7", "postcode": postcode, "city": "Berlin"},
        "email": "wilhelmine@example.org", "phone": "030 555555", "date_of_birth": "1991-04-12", "gender": "FEMALE",
        "insurer": "Beispielkasse", "diagnosis_icd10": "F32.1", "consultation_hour_attended": true,
        "symptoms": ["Antriebslosigkeit"], "therapy_experience": false, "last_therapy_session": null,
        "open_to_group": true, "availability": [{"weekday": "TUESDAY", "from": "16:00", "to": "19:00"}],
        "max_distance_km": null, "max_travel_minutes": 40, "transport": "PUBLIC_TRANSPORT",
        "preferred_therapist_gender": "ANY", "preferred_procedures": ["BEHAVIOURAL"], "languages": [],
        "excluded_therapists": [], "consent_given_at": "2026-11-01T09:30:00Z"
    })
}

async fn until(bed: &TestBed, topic: &str, event_type: &str, count: usize) -> Vec<Received> {
    bed.read_until(topic, DEADLINE, |records| {
        of_type(records, event_type).len() >= count
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_patient_from_registration_to_erasure() {
    let bed = TestBed::new().await;
    let running = Running::start(Intake, bed.config("intake"));

    // Invalid commands: one readable rejection each, nothing else.
    let mut no_consent = details("10115");
    no_consent["consent_given_at"] = json!(null);
    bed.publish(
        "patient-commands",
        &[
            command(
                "patient.register",
                json!({"patient_id": "p-bad", "details": no_consent}),
            ),
            command(
                "patient.pause_search",
                json!({"patient_id": "p-unknown", "reason": null}),
            ),
        ],
    )
    .await;
    let records = until(&bed, "patient-events", "command.rejected", 2).await;
    let reasons: Vec<String> = of_type(&records, "command.rejected")
        .iter()
        .map(|r| r.payload()["reason"].as_str().unwrap().to_string())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("consent_given_at is missing")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("p-unknown is not registered")),
        "{reasons:?}"
    );
    assert_eq!(records.len(), 2, "rejections and nothing else");
    // Beside the subject's own key, which holds its profile once compacted.
    assert!(
        records
            .iter()
            .any(|r| r.key.as_deref() == Some("p-unknown/rejected"))
    );

    // A registration: a pseudonymous profile and a geocoding request.
    bed.publish(
        "patient-commands",
        &[command(
            "patient.register",
            json!({"patient_id": "p-1", "details": details("10115")}),
        )],
    )
    .await;
    let records = until(&bed, "patient-events", "patient.registered", 1).await;
    let profile = of_type(&records, "patient.registered")[0].payload()["profile"].clone();
    assert_eq!(profile["patient_id"], "p-1");
    assert_eq!(profile["postcode"], "10115");
    assert_eq!(profile["coordinates"], Value::Null);
    assert_eq!(profile["status"], "ACTIVE");
    assert_eq!(profile["summary"]["insurer"], "Beispielkasse");
    assert!(profile["age"].as_i64().unwrap() >= 35);
    let requests = bed
        .read_until("geocoding-requests", DEADLINE, |r| !r.is_empty())
        .await;
    assert_eq!(requests[0].payload()["request_id"], "patient-p-1-1");
    // The address travels sealed with the patient's key (the topic keeps
    // what it is given for a week).
    let request = requests[0].payload();
    assert_eq!(request["address"], Value::Null);
    assert!(!request.to_string().contains(STREET), "{request}");
    let key: Vec<u8> =
        sqlx::query_scalar("SELECT key FROM keystore.patient_keys WHERE patient_id = 'p-1'")
            .fetch_one(&bed.pool)
            .await
            .unwrap();
    let sealed = request["sealed_address"].as_str().unwrap();
    let address = psymatch_runtime::sealed::open(&key, "p-1", sealed).unwrap();
    assert_eq!(address["street"], STREET);

    // The geocoder's answer is folded in, rounded to about 100 m.
    bed.publish(
        "geocoding-results",
        &[command(
            "geocoding.address_geocoded",
            json!({"request_id": "patient-p-1-1", "position": {"latitude": 52.531234, "longitude": 13.384567},
                   "precision": "ADDRESS", "source": "NOMINATIM", "note": null}),
        )],
    )
    .await;
    let records = until(&bed, "patient-events", "patient.updated", 1).await;
    let updated = of_type(&records, "patient.updated")[0].payload();
    assert_eq!(updated["changed_fields"], json!(["coordinates"]));
    assert_eq!(
        updated["profile"]["coordinates"],
        json!({"latitude": 52.531, "longitude": 13.385})
    );

    // Status changes, and one that is not possible.
    bed.publish(
        "patient-commands",
        &[
            command(
                "patient.pause_search",
                json!({"patient_id": "p-1", "reason": "Urlaub"}),
            ),
            command(
                "patient.pause_search",
                json!({"patient_id": "p-1", "reason": null}),
            ),
            command("patient.resume_search", json!({"patient_id": "p-1"})),
        ],
    )
    .await;
    let rejections = until(&bed, "patient-events", "command.rejected", 3).await;
    let records = until(&bed, "patient-events", "patient.search_status_changed", 2).await;
    let statuses: Vec<Value> = of_type(&records, "patient.search_status_changed")
        .iter()
        .map(|r| r.payload()["profile"]["status"].clone())
        .collect();
    assert_eq!(statuses, vec![json!("PAUSED"), json!("ACTIVE")]);
    let rejected = of_type(&rejections, "command.rejected");
    assert!(rejected.iter().any(|r| {
        r.payload()["reason"]
            .as_str()
            .unwrap()
            .contains("not possible for a search that is paused")
    }));

    // Moving: a new geocoding request, the old position dropped.
    bed.publish(
        "patient-commands",
        &[command(
            "patient.update",
            json!({"patient_id": "p-1", "details": details("10117")}),
        )],
    )
    .await;
    let records = until(&bed, "patient-events", "patient.updated", 2).await;
    let moved = of_type(&records, "patient.updated")[1].payload();
    assert_eq!(moved["changed_fields"], json!(["address"]));
    assert_eq!(moved["profile"]["coordinates"], Value::Null);
    bed.read_until("geocoding-requests", DEADLINE, |r| {
        r.iter()
            .any(|x| x.payload()["request_id"] == "patient-p-1-2")
    })
    .await;

    // Nothing personal left intake on any topic it writes.
    for topic in ["patient-events"] {
        let records = bed.read_until(topic, DEADLINE, |r| !r.is_empty()).await;
        for record in &records {
            let text = record.payload().to_string();
            assert!(
                !text.contains(NAME) && !text.contains(STREET) && !text.contains("example.org"),
                "{text}"
            );
        }
    }

    // Erasure: nothing of the patient in intake's tables, an erasure event,
    // a tombstone for the key, and the geocoder told to forget the address.
    bed.publish(
        "patient-commands",
        &[command(
            "patient.erase",
            json!({"patient_id": "p-1", "keep_contact_log": true}),
        )],
    )
    .await;
    let records = until(&bed, "patient-events", "patient.erased", 1).await;
    assert_eq!(
        of_type(&records, "patient.erased")[0].payload()["keep_contact_log"],
        true
    );
    let records = bed
        .read_until("patient-events", DEADLINE, |r| {
            r.iter()
                .any(|x| x.key.as_deref() == Some("p-1") && x.value.is_none())
        })
        .await;
    assert!(records.iter().any(|x| x.value.is_none()));
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM intake.patients WHERE patient_id = 'p-1' OR details::text LIKE '%' || $1 || '%')",
    )
    .bind(NAME)
    .fetch_one(&bed.pool)
    .await
    .unwrap();
    assert_eq!(left, 0);
    bed.read_until("geocoding-requests", DEADLINE, |r| {
        r.iter().any(|x| {
            x.envelope
                .as_ref()
                .is_some_and(|e| e.event_type == "geocoding.forget_address")
                && x.payload()["request_id"] == "erase-p-1"
                && x.payload()["address"].is_null()
        })
    })
    .await;
    // The key is gone: the sealed address on geocoding-requests is unreadable.
    let keys: i64 =
        sqlx::query_scalar("SELECT count(*) FROM keystore.patient_keys WHERE patient_id = 'p-1'")
            .fetch_one(&bed.pool)
            .await
            .unwrap();
    assert_eq!(keys, 0);
    // An erased patient cannot be registered again under the same id.
    bed.publish(
        "patient-commands",
        &[command(
            "patient.register",
            json!({"patient_id": "p-1", "details": details("10115")}),
        )],
    )
    .await;
    let records = until(&bed, "patient-events", "command.rejected", 4).await;
    assert!(of_type(&records, "command.rejected").iter().any(|r| {
        r.payload()["reason"]
            .as_str()
            .unwrap()
            .contains("was erased")
    }));

    running.stop().await;
}
