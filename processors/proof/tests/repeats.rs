//! The chaos run's check of the topics for effects applied twice: it
//! counts an effect published under two event ids, and tells a record
//! published again under its own event id apart.

use psymatch_proof::repeats;
use psymatch_runtime::testing::TestBed;
use serde_json::{Value, json};

fn created(event_id: &str, inquiry: &str) -> Value {
    json!({"event_type": "matching.inquiry_created", "event_id": event_id,
           "payload": {"inquiry_id": inquiry, "therapist_id": "t-1", "patients": []}})
}

fn sent(event_id: &str, email: &str, inquiries: &[&str]) -> Value {
    json!({"event_type": "email.sent", "event_id": event_id,
           "payload": {"email_id": email, "message_id": format!("<{email}@example.org>"),
                       "therapist_id": "t-1", "inquiry_ids": inquiries, "patient_ids": [],
                       "sent_at": "2026-11-26T10:00:00Z"}})
}

#[tokio::test]
async fn effects_under_two_event_ids_are_counted_and_same_id_repeats_apart() {
    let bed = TestBed::new().await;
    let clean = repeats::count(&bed).await.expect("topics read");
    assert_eq!(clean.applied_twice(), 0);

    let first = "00000000-0000-4000-8000-000000000001";
    let again = "00000000-0000-4000-8000-000000000002";
    bed.publish(
        "matching-events",
        &[
            created(first, "i-1"),
            // The relay's repeat: the same record under its own id.
            created(first, "i-1"),
            created("00000000-0000-4000-8000-000000000003", "i-2"),
        ],
    )
    .await;
    bed.publish(
        "communication-events",
        &[
            sent(again, "e-1", &["i-1"]),
            sent("00000000-0000-4000-8000-000000000004", "e-2", &["i-2"]),
        ],
    )
    .await;
    let fine = repeats::count(&bed).await.expect("topics read");
    assert_eq!(fine.same_id, 1, "{fine:?}");
    assert_eq!(fine.applied_twice(), 0, "{fine:?}");

    // The inquiry created again under a new id, and sent in a second email.
    bed.publish(
        "matching-events",
        &[created("00000000-0000-4000-8000-000000000005", "i-1")],
    )
    .await;
    bed.publish(
        "communication-events",
        &[sent(
            "00000000-0000-4000-8000-000000000006",
            "e-3",
            &["i-2"],
        )],
    )
    .await;
    let twice = repeats::count(&bed).await.expect("topics read");
    assert_eq!(twice.applied_twice(), 2, "{twice:?}");
    assert_eq!(
        twice.new_id.keys().cloned().collect::<Vec<_>>(),
        [
            "communication-events email.sent",
            "matching-events matching.inquiry_created"
        ]
    );
}
