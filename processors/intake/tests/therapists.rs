//! Therapist commands through intake: created and corrected by a person,
//! blocked and unblocked, free places and preferences; every refusal
//! readable.

use psymatch_intake::Intake;
use psymatch_runtime::testing::people::command;
use psymatch_runtime::testing::{Received, Running, TestBed};
use serde_json::{Value, json};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn upsert(email: &str) -> Value {
    json!({"event_type": "therapist.upsert", "payload": {"therapist_id": "t-1", "details": {
        "salutation": "HERR", "title": "Dr.", "first_name": "Max", "last_name": "Muster", "gender": "MALE",
        "address": {"street": "Beispielweg", "house_number": "7", "postcode": "10117", "city": "Berlin"},
        "email": email, "statutory_licence": true, "procedures": ["BEHAVIOURAL"], "age_groups": ["ADULTS"],
        "settings": ["INDIVIDUAL"]}}})
}

fn types(records: &[Received]) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| r.envelope.as_ref().map(|e| e.event_type.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn therapists_are_created_corrected_blocked_and_described() {
    let bed = TestBed::new().await;
    let running = Running::start(Intake, bed.config("intake"));
    // All on one key, so they are processed in this order.
    bed.publish(
        "therapist-commands",
        &[
            upsert("praxis.muster@example.org"),
            upsert("praxis.muster@example.org"),
            upsert("neu@example.org"),
            upsert("keine adresse"),
            command("therapist.block", json!({"therapist_id": "t-1", "reason": " "})),
            command("therapist.block", json!({"therapist_id": "t-1", "reason": "no answer to three inquiries"})),
            command("therapist.block", json!({"therapist_id": "t-1", "reason": "again"})),
            command("therapist.unblock", json!({"therapist_id": "t-1"})),
            command("therapist.set_free_places", json!({"therapist_id": "t-1", "individual_from": "2027-01-15", "group_from": null})),
            command("therapist.set_preferences", json!({"therapist_id": "t-1", "min_age": 40, "max_age": 30, "genders": [], "prefers_group": false})),
            command("therapist.set_preferences", json!({"therapist_id": "t-1", "min_age": 18, "max_age": 65, "genders": ["FEMALE"], "prefers_group": true})),
        ],
    )
    .await;
    // Rejections travel under `t-1/rejected` (another partition): the
    // events of t-1 in order, the rejections in order among themselves.
    let records = bed
        .read_until("therapist-events", DEADLINE, |r| {
            let all = types(r);
            all.iter().any(|t| t == "therapist.preferences_changed")
                && all.iter().filter(|t| *t == "command.rejected").count() >= 4
        })
        .await;
    let events: Vec<&Received> = records
        .iter()
        .filter(|r| r.key.as_deref() == Some("t-1"))
        .collect();
    let event_types: Vec<&str> = events
        .iter()
        .map(|r| r.envelope.as_ref().unwrap().event_type.as_str())
        .collect();
    assert_eq!(
        event_types,
        vec![
            "therapist.discovered",
            "therapist.updated",
            "therapist.blocked",
            "therapist.unblocked",
            "therapist.free_places_changed",
            "therapist.preferences_changed",
        ],
        "the unchanged second upsert emits nothing"
    );
    assert_eq!(events[1].payload()["changed_fields"], json!(["email"]));
    assert_eq!(events[4].payload()["individual_from"], "2027-01-15");
    let reasons: Vec<String> = records
        .iter()
        .filter(|r| r.key.as_deref() == Some("t-1/rejected"))
        .map(|r| r.payload()["reason"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(
        reasons[0].contains("details.email is not an email address")
            && !reasons[0].contains("keine adresse"),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("needs a reason"));
    assert!(reasons[2].contains("blocked already"));
    assert!(reasons[3].contains("minimum not above the maximum"));
    let requests = bed
        .read_until("geocoding-requests", DEADLINE, |r| !r.is_empty())
        .await;
    assert_eq!(requests[0].payload()["request_id"], "therapist-t-1");
    running.stop().await;
}
