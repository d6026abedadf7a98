//! The matcher's queries against the real stack: a search's state as the
//! committed rows hold it, the same from two replicas, and every refusal
//! (no token, a wrong one, an unknown or malformed id) as a JSON error.

use psymatch_matcher::{Matcher, MatcherConfig};
use psymatch_runtime::query::Tokens;
use psymatch_runtime::testing::people::command;
use psymatch_runtime::testing::{Running, TestBed, free_port, people, query};
use serde_json::{Value, json};
use std::time::Duration;

const OPS: &str = "ops-token-0123456789";
const STAFF: &str = "staff-token-0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn a_search_is_answered_from_what_was_committed_by_any_replica() {
    let bed = TestBed::new().await;
    let ports = [free_port(), free_port()];
    let replicas: Vec<Running> = ports
        .iter()
        .map(|port| {
            let mut config = bed.config("matcher");
            config.http_listen = format!("127.0.0.1:{port}");
            config.query_tokens =
                Tokens::parse(&format!("ops:ops:{OPS},staff:staff:{STAFF}")).unwrap();
            Running::start(Matcher::new(MatcherConfig::default()), config)
        })
        .collect();
    let practices: Vec<Value> = (0..4)
        .map(|n| people::discovered(n, (52.50 + n as f64 * 0.002, 13.40)))
        .collect();
    bed.publish("therapist-events", &practices).await;
    bed.publish(
        "patient-events",
        &[people::registered(0, 35, (52.52, 13.40))],
    )
    .await;
    let asked = "SELECT count(*) FROM matcher.inquiries WHERE 'p-0' = ANY(patient_ids)";
    bed.wait_for(
        "the patient's inquiries committed",
        Duration::from_secs(90),
        || async { bed.count(asked).await >= 3 },
    )
    .await;
    let stored = bed.count(asked).await;

    let (status, search) = query(ports[0], "/v1/searches/p-0", Some(OPS)).await;
    assert_eq!(status, 200, "{search}");
    assert_eq!(search["status"], "ACTIVE");
    assert_eq!(search["limits"]["max_distance_km"], 20.0);
    let inquiries = search["inquiries"].as_array().unwrap();
    assert_eq!(inquiries.len() as i64, stored, "{search}");
    for inquiry in inquiries {
        assert!(inquiry["therapist_id"].as_str().unwrap().starts_with("t-"));
        // No email batcher runs here: every inquiry waits for its window.
        assert_eq!(
            inquiry["state"], "waiting for the practice's weekly email window",
            "{inquiry}"
        );
        assert!(inquiry["emailed_at"].is_null());
    }
    // The other replica answers the same.
    let (_, again) = query(ports[1], "/v1/searches/p-0", Some(STAFF)).await;
    assert_eq!(again, search);

    // The contact log lists what was emailed, nothing else.
    let (status, log) = query(ports[0], "/v1/searches/p-0/contacts", Some(OPS)).await;
    assert_eq!(
        (status, log["contacts"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{log}"
    );
    let emailed = inquiries[0]["inquiry_id"].as_str().unwrap().to_string();
    let practice = inquiries[0]["therapist_id"].as_str().unwrap().to_string();
    bed.publish(
        "communication-events",
        &[command(
            "email.sent",
            json!({"email_id": "00000000-0000-4000-8000-000000000001", "message_id": "<m-1@test>",
                   "therapist_id": practice, "inquiry_ids": [emailed], "patient_ids": ["p-0"],
                   "sent_at": "2026-12-01T09:00:00Z"}),
        )],
    )
    .await;
    let sent = format!(
        "SELECT count(*) FROM matcher.inquiries WHERE inquiry_id = '{emailed}' AND state->>'sent_at' IS NOT NULL"
    );
    bed.wait_for("the email folded in", Duration::from_secs(60), || async {
        bed.count(&sent).await == 1
    })
    .await;
    let (_, log) = query(ports[1], "/v1/searches/p-0/contacts", Some(OPS)).await;
    let contacts = log["contacts"].as_array().unwrap();
    assert_eq!(contacts.len(), 1, "{log}");
    assert_eq!(contacts[0]["inquiry_id"], emailed.as_str());
    assert_eq!(contacts[0]["channel"], "email");
    assert_eq!(contacts[0]["address"], "Teststraße 1, 10115 Berlin");
    assert!(
        contacts[0]["practice"]
            .as_str()
            .unwrap()
            .starts_with("Test Praxis"),
        "{log}"
    );
    assert_eq!(contacts[0]["answer"], "no answer yet");
    let (status, _) = query(ports[0], "/v1/searches/p-404/contacts", Some(OPS)).await;
    assert_eq!(status, 404);

    // A practice whose inquiry still waits for its window.
    let asked_first = inquiries[1]["therapist_id"].as_str().unwrap().to_string();
    let (status, practice) = query(
        ports[1],
        &format!("/v1/therapists/{asked_first}"),
        Some(OPS),
    )
    .await;
    assert_eq!(status, 200, "{practice}");
    assert!(!practice["inquiries_waiting"].as_array().unwrap().is_empty());
    assert_eq!(practice["listed"], true);

    let (status, body) = query(ports[0], "/v1/searches/p-0", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = query(
        ports[0],
        "/v1/searches/p-0",
        Some("not-a-known-token-at-all"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = query(ports[0], "/v1/searches/p-404", Some(OPS)).await;
    assert_eq!(status, 404);
    assert!(
        body["message"].as_str().unwrap().contains("patient"),
        "{body}"
    );
    let (status, body) = query(ports[0], "/v1/searches/p%20x", Some(OPS)).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let long = "x".repeat(500);
    let (status, _) = query(ports[0], &format!("/v1/therapists/{long}"), Some(OPS)).await;
    assert_eq!(status, 400);
    // Health and metrics stay open, and the answers are counted.
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", ports[0]))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("psymatch_queries_total{") && l.contains("status=\"401\""))
        .unwrap_or_else(|| panic!("no refusals counted:\n{metrics}"));
    assert!(refused.ends_with(" 2"), "{refused}");
    for replica in replicas {
        replica.stop().await;
    }
}
