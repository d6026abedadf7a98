//! A client that knows the home's position passes it with the
//! registration or an update (`details.coordinates`): intake checks it as
//! the geocoder's answers are checked, uses it as the home and asks no
//! geocoder; a geocoder's late answer for an address asked before does not
//! overwrite it. Through the real broker, registry and PostgreSQL.

use psymatch_intake::Intake;
use psymatch_runtime::testing::people::{command, registration, with_details};
use psymatch_runtime::testing::{Received, Running, TestBed, of_type};
use serde_json::{Value, json};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn at(latitude: f64, longitude: f64) -> Value {
    json!({"coordinates": {"latitude": latitude, "longitude": longitude}})
}

fn profile_of(records: &[Received], event_type: &str, patient: &str) -> Vec<Value> {
    of_type(records, event_type)
        .into_iter()
        .map(|r| r.payload())
        .filter(|p| p["patient_id"] == patient)
        .map(|p| p["profile"].clone())
        .collect()
}

fn update(patient: &str, fields: Value) -> Value {
    let mut record = with_details(registration(patient, "10115"), fields);
    record["event_type"] = json!("patient.update");
    record
}

#[tokio::test(flavor = "multi_thread")]
async fn a_given_position_is_the_home_and_no_geocoder_is_asked() {
    let bed = TestBed::new().await;
    let running = Running::start(Intake, bed.config("intake"));
    bed.publish(
        "patient-commands",
        &[
            with_details(registration("p-given-1", "10115"), at(52.5301, 13.4002)),
            with_details(registration("p-given-2", "10115"), at(53.5511, 9.9937)),
            registration("p-address", "10117"),
            with_details(registration("p-paris", "10115"), at(48.8566, 2.3522)),
            with_details(registration("p-off", "10115"), at(91.0, 0.0)),
        ],
    )
    .await;
    let records = bed
        .read_until("patient-events", DEADLINE, |r| {
            of_type(r, "patient.registered").len() >= 3 && of_type(r, "command.rejected").len() >= 2
        })
        .await;
    assert_eq!(
        profile_of(&records, "patient.registered", "p-given-1")[0]["coordinates"],
        json!({"latitude": 52.53, "longitude": 13.4})
    );
    assert_eq!(
        profile_of(&records, "patient.registered", "p-given-2")[0]["coordinates"],
        json!({"latitude": 53.551, "longitude": 9.994})
    );
    assert!(profile_of(&records, "patient.registered", "p-address")[0]["coordinates"].is_null());
    let reasons: Vec<String> = of_type(&records, "command.rejected")
        .iter()
        .map(|r| r.payload()["reason"].as_str().unwrap().to_string())
        .collect();
    for expected in [
        "details.coordinates lie outside Germany",
        "details.coordinates are not a position on the globe",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected}: {reasons:?}"
        );
    }
    // A home position is personal: no reason repeats it.
    assert!(
        reasons
            .iter()
            .all(|r| !r.contains("48.8566") && !r.contains("91.0")),
        "{reasons:?}"
    );
    // The geocoder is asked for the address only.
    let requests = bed
        .read_until("geocoding-requests", DEADLINE, |r| {
            !of_type(r, "geocoding.geocode_address").is_empty()
        })
        .await;
    let asked: Vec<String> = of_type(&requests, "geocoding.geocode_address")
        .iter()
        .map(|r| r.payload()["request_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(asked, ["patient-p-address-1"]);

    // Updates: a new position moves the home; a position given while the
    // geocoder is still asked is the home, and the late answer is not.
    bed.publish(
        "patient-commands",
        &[
            update("p-given-1", at(52.6, 13.5)),
            update("p-address", at(52.52, 13.41)),
        ],
    )
    .await;
    let records = bed
        .read_until("patient-events", DEADLINE, |r| {
            of_type(r, "patient.updated").len() >= 2
        })
        .await;
    assert_eq!(
        profile_of(&records, "patient.updated", "p-given-1")[0]["coordinates"],
        json!({"latitude": 52.6, "longitude": 13.5})
    );
    assert_eq!(
        profile_of(&records, "patient.updated", "p-address")[0]["coordinates"],
        json!({"latitude": 52.52, "longitude": 13.41})
    );
    bed.publish(
        "geocoding-results",
        &[command(
            "geocoding.address_geocoded",
            json!({"request_id": "patient-p-address-1",
                   "position": {"latitude": 52.40, "longitude": 13.10},
                   "precision": "ADDRESS", "source": "NOMINATIM", "note": null}),
        )],
    )
    .await;
    bed.wait_consumed("intake", "geocoding-results", 1).await;
    let home: (f64, f64) = sqlx::query_as(
        "SELECT latitude, longitude FROM intake.patients WHERE patient_id = 'p-address'",
    )
    .fetch_one(&bed.pool)
    .await
    .unwrap();
    assert_eq!(home, (52.52, 13.41), "the late answer is not the home");
    let records = bed
        .read_until("patient-events", DEADLINE, |r| {
            of_type(r, "patient.updated").len() >= 2
        })
        .await;
    assert_eq!(
        of_type(&records, "patient.updated").len(),
        2,
        "no update from the late answer"
    );
    running.stop().await;
}
