//! Time the matcher is told (`psymatch_runtime::clock`), through the real
//! topics: weeks pass in seconds on a test clock. A phone follow-up is due
//! on day 7 after the email and not on day 6; a practice's cooling period
//! after an answer ends after 28 days and not after 27.

use chrono::{DateTime, Duration, Utc};
use psymatch_matcher::{Matcher, MatcherConfig};
use psymatch_runtime::clock::ManualClock;
use psymatch_runtime::testing::people::{command, discovered, registered};
use psymatch_runtime::testing::{Received, Running, TestBed, of_type};
use serde_json::{Value, json};
use std::sync::Arc;

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);

fn payloads(records: &[Received], event_type: &str) -> Vec<Value> {
    of_type(records, event_type)
        .iter()
        .map(|r| r.payload())
        .collect()
}

fn sweep(run: &str) -> Value {
    command("matching.sweep", json!({"run_id": run}))
}

fn run(run: &str) -> Value {
    command("matching.run", json!({"run_id": run, "patient_id": "p-0"}))
}

#[tokio::test(flavor = "multi_thread")]
async fn follow_ups_and_cooling_end_on_their_day_and_not_the_day_before() {
    let bed = TestBed::new().await;
    let start: DateTime<Utc> = "2027-03-01T09:00:00Z".parse().unwrap();
    let clock = ManualClock::at(start);
    let mut config = bed.config("matcher");
    config.clock = Arc::new(clock.clone());
    let matcher = Running::start(Matcher::new(MatcherConfig::default()), config);
    bed.publish("therapist-events", &[discovered(0, (52.50, 13.40))])
        .await;
    bed.wait_for("the practice folded in", DEADLINE, || async {
        bed.count("SELECT count(*) FROM matcher.therapists").await == 1
    })
    .await;
    bed.publish("patient-events", &[registered(0, 40, (52.51, 13.40))])
        .await;
    let events = bed
        .read_until("matching-events", DEADLINE, |r| {
            !of_type(r, "matching.inquiry_created").is_empty()
        })
        .await;
    let inquiry = payloads(&events, "matching.inquiry_created")[0]["inquiry_id"]
        .as_str()
        .unwrap()
        .to_string();
    bed.publish(
        "communication-events",
        &[command(
            "email.sent",
            json!({"email_id": "e-1", "message_id": "<e-1@psymatch>", "therapist_id": "t-0",
                   "inquiry_ids": [inquiry], "patient_ids": ["p-0"], "sent_at": start.to_rfc3339()}),
        )],
    )
    .await;
    bed.wait_consumed("matcher", "communication-events", 1)
        .await;

    // Day 6 after the email: no follow-up. Day 7: one.
    clock.set(start + Duration::days(6) + Duration::hours(23));
    bed.publish("matching-commands", &[sweep("day-6")]).await;
    bed.wait_consumed("matcher", "matching-commands", 1).await;
    let events = bed
        .read_until("matching-events", DEADLINE, |r| {
            !of_type(r, "matching.inquiry_created").is_empty()
        })
        .await;
    assert!(
        of_type(&events, "matching.follow_up_due").is_empty(),
        "due on day 6"
    );
    clock.set(start + Duration::days(7));
    bed.publish("matching-commands", &[sweep("day-7")]).await;
    let events = bed
        .read_until("matching-events", DEADLINE, |r| {
            !of_type(r, "matching.follow_up_due").is_empty()
        })
        .await;
    assert_eq!(
        payloads(&events, "matching.follow_up_due")[0]["inquiry_id"],
        inquiry.as_str()
    );

    // The practice answers on day 7: it cools down for 28 days.
    let answered = start + Duration::days(7);
    bed.publish(
        "matching-commands",
        &[command(
            "matching.record_answer",
            json!({"inquiry_id": inquiry, "therapist_id": "t-0",
                   "answers": [{"patient_id": "p-0", "outcome": "REJECTED_NO_CAPACITY"}],
                   "answered_at": answered.to_rfc3339(), "channel": "PHONE"}),
        )],
    )
    .await;
    let events = bed
        .read_until("matching-events", DEADLINE, |r| {
            !of_type(r, "matching.inquiry_answered").is_empty()
        })
        .await;
    let until: DateTime<Utc> = payloads(&events, "matching.inquiry_answered")[0]["cooling_until"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(until, answered + Duration::days(28));
    bed.wait_consumed("matcher", "matching-commands", 3).await;
    clock.set(answered + Duration::days(27));
    bed.publish("matching-commands", &[run("day-27")]).await;
    let events = bed
        .read_until("matching-events", DEADLINE, |r| {
            payloads(r, "matching.candidates_evaluated")
                .iter()
                .any(|e| e["run_id"] == "day-27")
        })
        .await;
    let explained = payloads(&events, "matching.candidates_evaluated")
        .into_iter()
        .find(|e| e["run_id"] == "day-27")
        .unwrap();
    assert_eq!(
        explained["decisions"][0]["rule"], "rule 9",
        "cooling on day 27: {explained}"
    );
    assert_eq!(payloads(&events, "matching.inquiry_created").len(), 1);
    clock.set(answered + Duration::days(28));
    bed.publish("matching-commands", &[run("day-28")]).await;
    let events = bed
        .read_until("matching-events", DEADLINE, |r| {
            payloads(r, "matching.inquiry_created").len() >= 2
        })
        .await;
    let second = &payloads(&events, "matching.inquiry_created")[1];
    assert_eq!(second["therapist_id"], "t-0", "asked again on day 28");
    matcher.stop().await;
}
