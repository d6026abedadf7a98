//! `why` agrees with the matcher's decisions: for 200 generated patients
//! and 60 practices of every kind, each practice an explanation names as
//! asked passes every rule in `why` but rule 9 (the inquiry it got holds
//! the patient now), each candidate not asked passes every rule, and each
//! practice the matcher rejected fails in `why` the rule the matcher
//! named; and each candidate not asked has in `why` the rank the matcher
//! gave it, less the practices asked above it (they are pending now).

use psymatch_matcher::{Matcher, MatcherConfig};
use psymatch_runtime::query::Tokens;
use psymatch_runtime::testing::mail::failing_rules;
use psymatch_runtime::testing::people::command;
use psymatch_runtime::testing::{Running, TestBed, free_port, of_type, query};
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "ops-token-0123456789";
const PATIENTS: usize = 200;
const PRACTICES: usize = 60;

/// A spread of n over 0..1, the same on every run.
fn unit(n: usize, salt: usize) -> f64 {
    ((n * 7919 + salt * 104_729) % 1000) as f64 / 1000.0
}

fn practice(n: usize) -> Value {
    let genders = ["FEMALE", "MALE", "DIVERSE"];
    let procedures = [
        vec!["BEHAVIOURAL"],
        vec!["PSYCHODYNAMIC", "ANALYTIC"],
        vec!["SYSTEMIC"],
        vec!["BEHAVIOURAL", "SYSTEMIC"],
    ];
    let age_groups = match n % 7 {
        0 => vec!["CHILDREN_AND_ADOLESCENTS"],
        1 => vec!["ADULTS", "CHILDREN_AND_ADOLESCENTS"],
        _ => vec!["ADULTS"],
    };
    command(
        "therapist.discovered",
        json!({"therapist_id": format!("t-{n}"), "source": "test", "source_id": null, "flags": [],
        "details": {
            "salutation": "NONE", "title": null, "first_name": "Test", "last_name": format!("Praxis{n}"),
            "gender": genders[n % 3],
            "address": {"street": "Teststraße", "house_number": "1", "postcode": "10115", "city": "Berlin"},
            "coordinates": {"latitude": 52.40 + unit(n, 1) * 0.25, "longitude": 13.20 + unit(n, 2) * 0.40},
            "email": format!("praxis-{n}@example.org"), "statutory_licence": true,
            "procedures": procedures[n % 4], "age_groups": age_groups, "settings": ["INDIVIDUAL"],
        }}),
    )
}

fn patient(n: usize) -> Value {
    let id = format!("p-{n}");
    let age = 16 + (n * 7) % 55;
    let gender = ["FEMALE", "MALE", "DIVERSE"][n % 3];
    let preferred_gender = ["ANY", "FEMALE", "MALE", "ANY"][n % 4];
    let procedures = [vec![], vec!["BEHAVIOURAL"], vec!["ANALYTIC", "SYSTEMIC"]][n % 3].clone();
    let excluded: Vec<String> = if n.is_multiple_of(9) {
        vec!["t-3".into()]
    } else {
        vec![]
    };
    command(
        "patient.registered",
        json!({"patient_id": id, "profile": {
        "patient_id": id, "age": age, "gender": gender, "postcode": "10115",
        "coordinates": {"latitude": 52.40 + unit(n, 3) * 0.25, "longitude": 13.20 + unit(n, 4) * 0.40},
        "transport": "CAR", "max_distance_km": 4 + n % 20, "max_travel_minutes": null,
        "preferred_therapist_gender": preferred_gender, "preferred_procedures": procedures,
        "languages": [], "excluded_therapists": excluded,
        "summary": {"patient_id": id, "age": age, "gender": gender, "symptoms": [], "insurer": "Beispielkasse",
                    "therapy_experience": false, "open_to_group": n.is_multiple_of(2), "availability": []},
        "status": "ACTIVE"}}),
    )
}

async fn why(port: u16, patient: &str, therapist: &str) -> Value {
    let path = format!("/v1/searches/{patient}/why/{therapist}");
    let (status, answer) = query(port, &path, Some(TOKEN)).await;
    assert_eq!(status, 200, "{answer}");
    answer
}

#[tokio::test(flavor = "multi_thread")]
async fn why_agrees_with_every_decision_of_the_matcher() {
    let bed = TestBed::new().await;
    let port = free_port();
    let mut config = bed.config("matcher");
    config.http_listen = format!("127.0.0.1:{port}");
    config.query_tokens = Tokens::parse(&format!("test:ops:{TOKEN}")).unwrap();
    let matcher = Running::start(Matcher::new(MatcherConfig::default()), config);
    let mut therapists: Vec<Value> = (0..PRACTICES).map(practice).collect();
    // Blocked practices and practices with constraints of their own.
    for n in (0..PRACTICES).filter(|n| n % 11 == 5) {
        therapists.push(command(
            "therapist.blocked",
            json!({"therapist_id": format!("t-{n}"), "reason": "test"}),
        ));
    }
    for n in (0..PRACTICES).filter(|n| n % 6 == 2) {
        therapists.push(command(
            "therapist.preferences_changed",
            json!({"therapist_id": format!("t-{n}"), "min_age": 30, "max_age": 60,
                   "genders": ["FEMALE"], "prefers_group": n % 12 == 2}),
        ));
    }
    bed.publish("therapist-events", &therapists).await;
    bed.wait_for(
        "the directory folded in",
        Duration::from_secs(60),
        || async { bed.count("SELECT count(*) FROM matcher.therapists").await == PRACTICES as i64 },
    )
    .await;
    let patients: Vec<Value> = (0..PATIENTS).map(patient).collect();
    bed.publish("patient-events", &patients).await;
    let records = bed
        .read_until("matching-events", Duration::from_secs(120), |r| {
            of_type(r, "matching.candidates_evaluated").len()
                + of_type(r, "matching.search_exhausted").len()
                >= PATIENTS
        })
        .await;
    let (mut asked, mut passed, mut rejected, mut ranked) = (0, 0, 0, 0);
    let mut explained = std::collections::BTreeSet::new();
    // The last explanation of each patient: the state the queries see.
    let mut last = std::collections::BTreeMap::new();
    for evaluation in of_type(&records, "matching.candidates_evaluated") {
        let payload = evaluation.payload();
        last.insert(payload["patient_id"].as_str().unwrap().to_string(), payload);
    }
    for (patient, payload) in &last {
        explained.insert(patient.to_string());
        let decisions = payload["decisions"].as_array().unwrap();
        let chosen_ranks: Vec<i64> = decisions
            .iter()
            .filter(|d| d["chosen"] == true)
            .filter_map(|d| d["rank"].as_i64())
            .collect();
        for decision in decisions {
            let therapist = decision["therapist_id"].as_str().unwrap();
            let answer = why(port, patient, therapist).await;
            let failing = failing_rules(&answer);
            if let Some(rank) = decision["rank"]
                .as_i64()
                .filter(|_| decision["chosen"] == false)
            {
                // The practices asked are pending now: the others moved up
                // by as many as were asked above them.
                let above = chosen_ranks.iter().filter(|r| **r < rank).count() as i64;
                assert_eq!(
                    answer["rank"]["position"].as_i64(),
                    Some(rank - above),
                    "{patient}, {therapist} ranked {rank} when decided: {answer}"
                );
                ranked += 1;
            } else {
                assert!(answer["rank"].is_null(), "{answer}");
            }
            if decision["chosen"] == true {
                asked += 1;
                assert_eq!(failing, vec![9], "{patient} asked {therapist}: {answer}");
                assert_eq!(answer["rules"][8]["compared"]["pending"], true, "{answer}");
            } else if let Some(rule) = decision["rule"].as_str() {
                rejected += 1;
                let rule: i64 = rule.trim_start_matches("rule ").parse().unwrap();
                assert!(
                    failing.contains(&rule),
                    "{patient}, {therapist}: the matcher named rule {rule}, why fails {failing:?}: {answer}"
                );
                assert_eq!(answer["verdict"]["decision"], "rejected", "{answer}");
            } else {
                passed += 1;
                assert!(failing.is_empty(), "{patient}, {therapist}: {answer}");
                assert_eq!(answer["verdict"]["decision"], "candidate", "{answer}");
            }
        }
    }
    // Every kind of decision was checked, for enough patients.
    assert!(
        explained.len() >= PATIENTS / 2,
        "{} explained",
        explained.len()
    );
    assert!(
        asked > 100 && rejected > 100 && passed > 20 && ranked > 20,
        "{asked} {rejected} {passed} {ranked}"
    );
    matcher.stop().await;
}
