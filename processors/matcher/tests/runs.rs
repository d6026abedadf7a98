//! A person's `matching.run` through the real topics: a run for one
//! patient with nobody to ask explains why (the nearest practices with the
//! rule that rejects each), and several runs in one batch are each
//! explained under their own run id. Inquiries carry their patients' ids
//! as a header.

use psymatch_matcher::{Matcher, MatcherConfig};
use psymatch_runtime::testing::people::{command, discovered, registered};
use psymatch_runtime::testing::{Received, Running, TestBed, of_type};
use serde_json::{Value, json};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);

fn explanations(records: &[Received]) -> Vec<Value> {
    of_type(records, "matching.candidates_evaluated")
        .iter()
        .map(|r| r.payload())
        .collect()
}

/// `matching.run` for `patient` under `run`.
fn run(run: &str, patient: &str) -> Value {
    command(
        "matching.run",
        json!({"run_id": run, "patient_id": patient}),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_that_finds_nobody_lists_the_nearest_with_their_rules() {
    let bed = TestBed::new().await;
    let matcher = Running::start(
        Matcher::new(MatcherConfig::default()),
        bed.config("matcher"),
    );
    // Practices in Berlin; the patient lives in Flensburg, 20 km reach.
    let practices: Vec<Value> = (0..12)
        .map(|n| discovered(n, (52.50 + n as f64 * 0.01, 13.40)))
        .collect();
    bed.publish("therapist-events", &practices).await;
    bed.wait_for("the directory folded in", DEADLINE, || async {
        bed.count("SELECT count(*) FROM matcher.therapists").await == 12
    })
    .await;
    bed.publish("patient-events", &[registered(1, 40, (54.78, 9.43))])
        .await;
    bed.read_until("matching-events", DEADLINE, |r| {
        !of_type(r, "matching.search_exhausted").is_empty()
    })
    .await;
    bed.publish("matching-commands", &[run("why-nobody", "p-1")])
        .await;
    let records = bed
        .read_until("matching-events", DEADLINE, |r| {
            explanations(r).iter().any(|e| e["run_id"] == "why-nobody")
        })
        .await;
    let explained = explanations(&records)
        .into_iter()
        .find(|e| e["run_id"] == "why-nobody")
        .unwrap();
    assert_eq!(explained["patient_id"], "p-1");
    let decisions = explained["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 10, "the ten nearest: {explained}");
    for decision in decisions {
        assert_eq!(decision["chosen"], false);
        assert_eq!(decision["rule"], "rule 1", "{decision}");
        assert!(
            decision["detail"].as_str().unwrap().contains("km"),
            "{decision}"
        );
    }
    // Nearest first: t-0 is the southernmost, the furthest from Flensburg.
    let ids: Vec<&str> = decisions
        .iter()
        .map(|d| d["therapist_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "t-11", "{ids:?}");
    assert!(!ids.contains(&"t-0") && !ids.contains(&"t-1"), "{ids:?}");
    matcher.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_in_one_batch_are_each_explained_under_their_own_id() {
    let bed = TestBed::new().await;
    // One more patient than matching-commands has partitions: two runs
    // (keyed by patient) share a partition and, read by a matcher that
    // starts after them, a batch.
    let patients = 7;
    let practices: Vec<Value> = (0..4)
        .map(|n| discovered(n, (52.50 + n as f64 * 0.002, 13.40)))
        .collect();
    let matcher = Running::start(
        Matcher::new(MatcherConfig::default()),
        bed.config("matcher"),
    );
    bed.publish("therapist-events", &practices).await;
    let registrations: Vec<Value> = (0..patients)
        .map(|n| registered(n, 40, (52.51, 13.40 + n as f64 * 0.001)))
        .collect();
    bed.publish("patient-events", &registrations).await;
    bed.wait_for("every search holds inquiries", DEADLINE, || async {
        bed.count("SELECT count(DISTINCT p) FROM matcher.inquiries, unnest(patient_ids) AS p")
            .await
            == patients as i64
    })
    .await;
    // Inquiries are keyed by practice or id: the patients they hold travel
    // as a header, so a patient's are found without decoding values.
    let listed = |r: &Received| -> Vec<String> {
        r.payload()["patients"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["patient_id"].as_str().unwrap().to_string())
            .collect()
    };
    for (topic, event_type) in [
        ("matching-events", "matching.inquiry_created"),
        ("email-commands", "email.send_inquiry"),
    ] {
        let records = bed
            .read_until(topic, DEADLINE, |r| {
                of_type(r, event_type)
                    .iter()
                    .map(|i| listed(i).len())
                    .sum::<usize>()
                    >= patients
            })
            .await;
        for inquiry in of_type(&records, event_type) {
            assert_eq!(
                inquiry.headers.get("psymatch.patient_ids"),
                Some(&listed(inquiry).join(",")),
                "{topic}: {:?}",
                inquiry.headers
            );
            assert!(!listed(inquiry).contains(inquiry.key.as_ref().unwrap()));
        }
    }
    matcher.stop().await;
    let runs: Vec<Value> = (0..patients)
        .map(|n| run(&format!("run-of-p-{n}"), &format!("p-{n}")))
        .collect();
    bed.publish("matching-commands", &runs).await;
    let matcher = Running::start(
        Matcher::new(MatcherConfig::default()),
        bed.config("matcher"),
    );
    let asked = |e: &Value| {
        e["run_id"]
            .as_str()
            .is_some_and(|r| r.starts_with("run-of-"))
    };
    let records = bed
        .read_until("matching-events", DEADLINE, |r| {
            explanations(r).iter().filter(|e| asked(e)).count() >= patients
        })
        .await;
    for explained in explanations(&records).iter().filter(|e| asked(e)) {
        assert_eq!(
            explained["run_id"],
            format!("run-of-{}", explained["patient_id"].as_str().unwrap()),
            "explained under another run"
        );
    }
    matcher.stop().await;
}
