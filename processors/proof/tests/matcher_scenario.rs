//! Intake and matcher through the real broker, registry and PostgreSQL:
//! therapists and patients registered with commands, inquiries emailed per
//! practice, answers recorded, placement, cooling, follow-up, exhaustion,
//! pausing, readable rejections, and erasure.

use psymatch_intake::Intake;
use psymatch_matcher::{Matcher, MatcherConfig};
use psymatch_runtime::testing::people::command;
use psymatch_runtime::testing::{Received, Running, TestBed, of_type};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);
/// Berlin Mitte, where the patients live and most practices are.
const BERLIN: (f64, f64) = (52.520, 13.405);

/// A therapist's details (synthetic), `dlat` degrees north of Berlin Mitte.
fn therapist(last_name: &str, email: &str, at: (f64, f64), age_groups: &[&str]) -> Value {
    json!({
        "salutation": "FRAU", "title": null, "first_name": "Test", "last_name": last_name,
        "gender": "FEMALE",
        "address": {"street": "Teststraße", "house_number": "1", "postcode": "10115", "city": "Berlin"},
        "coordinates": {"latitude": at.0, "longitude": at.1},
        "email": email, "statutory_licence": true,
        "procedures": ["BEHAVIOURAL"], "age_groups": age_groups, "settings": ["INDIVIDUAL"],
    })
}

fn patient(max_km: i64, postcode: &str) -> Value {
    json!({
        "salutation": "NONE", "first_name": "Synthetisch", "last_name": "Testperson",
        "address": {"street": "Probeweg", "house_number": "2", "postcode": postcode, "city": "Berlin"},
        "email": "person@example.org", "phone": null, "date_of_birth": "1990-05-05", "gender": "MALE",
        "insurer": "Beispielkasse", "diagnosis_icd10": "F41.1", "consultation_hour_attended": true,
        "symptoms": ["Unruhe"], "therapy_experience": false, "last_therapy_session": null,
        "open_to_group": false, "availability": [{"weekday": "MONDAY", "from": "08:00", "to": "12:00"}],
        "max_distance_km": max_km, "max_travel_minutes": null, "transport": "CAR",
        "preferred_therapist_gender": "ANY", "preferred_procedures": [], "languages": [],
        "excluded_therapists": [], "consent_given_at": "2026-11-01T09:30:00Z"
    })
}

fn geocoded(request: &str, at: (f64, f64)) -> Value {
    command(
        "geocoding.address_geocoded",
        json!({"request_id": request, "position": {"latitude": at.0, "longitude": at.1},
               "precision": "ADDRESS", "source": "NOMINATIM", "note": null}),
    )
}

fn answer<P: AsRef<str>>(
    inquiry: &str,
    therapist: &str,
    answers: &[(P, &str)],
    days_ago: i64,
) -> Value {
    let at = chrono::Utc::now() - chrono::Duration::days(days_ago);
    command(
        "matching.record_answer",
        json!({"inquiry_id": inquiry, "therapist_id": therapist,
               "answers": answers.iter().map(|(p, o)| json!({"patient_id": p.as_ref(), "outcome": o})).collect::<Vec<_>>(),
               "answered_at": at.to_rfc3339(), "channel": "EMAIL"}),
    )
}

fn payloads(records: &[Received], event_type: &str) -> Vec<Value> {
    of_type(records, event_type)
        .iter()
        .map(|r| r.payload())
        .collect()
}

/// Patients asked about per therapist, over every inquiry email command.
fn asked(records: &[Received]) -> BTreeMap<String, Vec<String>> {
    let mut asked: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for inquiry in payloads(records, "email.send_inquiry") {
        let patients = inquiry["patients"].as_array().unwrap().iter();
        asked
            .entry(inquiry["therapist_id"].as_str().unwrap().to_string())
            .or_default()
            .extend(patients.map(|p| p["patient_id"].as_str().unwrap().to_string()));
    }
    asked
}

/// The patients of an inquiry.
fn patients_of(records: &[Received], inquiry: &str) -> Vec<String> {
    payloads(records, "matching.inquiry_created")
        .into_iter()
        .find(|i| i["inquiry_id"] == inquiry)
        .map(|i| {
            i["patients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["patient_id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The inquiry (id) to `therapist` holding `patient`.
fn inquiry_of(records: &[Received], therapist: &str, patient: &str) -> String {
    payloads(records, "matching.inquiry_created")
        .into_iter()
        .find(|i| {
            i["therapist_id"] == therapist
                && i["patients"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["patient_id"] == patient)
        })
        .map(|i| i["inquiry_id"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no inquiry to {therapist} about {patient}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn from_registration_to_placement() {
    let bed = TestBed::new().await;
    let intake = Running::start(Intake, bed.config("intake"));
    let config = MatcherConfig::with_rules(psymatch_matcher::rulebook::Rulebook {
        inquiries_per_patient: 2,
        ..Default::default()
    });
    let matcher = Running::start(Matcher::new(config), bed.config("matcher"));

    // Therapists: one practice alone, one practice of two sharing an
    // address (Weber's name is in it: she is the owner), one too far, one
    // for children only, one blocked.
    let near = |km_north: f64| (BERLIN.0 + km_north / 111.2, BERLIN.1);
    bed.publish(
        "therapist-commands",
        &[
            command(
                "therapist.upsert",
                json!({"therapist_id": "t-a", "details": therapist("Adler", "adler@praxis.example", near(2.0), &["ADULTS"])}),
            ),
            command(
                "therapist.upsert",
                json!({"therapist_id": "t-b", "details": therapist("Berg", "praxis-weber@example.org", near(3.0), &["ADULTS"])}),
            ),
            command(
                "therapist.upsert",
                json!({"therapist_id": "t-c", "details": therapist("Weber", "praxis-weber@example.org", near(3.0), &["ADULTS"])}),
            ),
            command(
                "therapist.upsert",
                json!({"therapist_id": "t-far", "details": therapist("Fern", "fern@example.org", near(40.0), &["ADULTS"])}),
            ),
            command(
                "therapist.upsert",
                json!({"therapist_id": "t-kids", "details": therapist("Klein", "klein@example.org", near(1.0), &["CHILDREN_AND_ADOLESCENTS"])}),
            ),
            command(
                "therapist.upsert",
                json!({"therapist_id": "t-blocked", "details": therapist("Sperr", "sperr@example.org", near(1.5), &["ADULTS"])}),
            ),
            command(
                "therapist.block",
                json!({"therapist_id": "t-blocked", "reason": "asked not to be contacted"}),
            ),
        ],
    )
    .await;
    bed.wait_for("the matcher knows the six therapists and the block", DEADLINE, || async {
        bed.count("SELECT count(*) FROM matcher.therapists WHERE state->>'blocked' IS NOT NULL OR therapist_id <> 't-blocked'").await == 6
    })
    .await;

    // Three patients in Berlin, one in Flensburg where no practice is.
    let mut registrations = Vec::new();
    let mut positions = Vec::new();
    for (id, km, postcode, at) in [
        ("p-1", 10, "10115", BERLIN),
        ("p-2", 10, "10117", BERLIN),
        ("p-3", 10, "10119", BERLIN),
        ("p-far", 10, "24937", (54.78, 9.43)),
    ] {
        registrations.push(command(
            "patient.register",
            json!({"patient_id": id, "details": patient(km, postcode)}),
        ));
        positions.push(geocoded(&format!("patient-{id}-1"), at));
    }
    bed.publish("patient-commands", &registrations).await;
    // The geocoder answers requests: only after intake asked.
    bed.wait_for("intake registered the four", DEADLINE, || async {
        bed.count("SELECT count(*) FROM intake.patients WHERE geocode_request IS NOT NULL")
            .await
            == 4
    })
    .await;
    bed.publish("geocoding-results", &positions).await;
    bed.wait_for("the matcher has the four searches with positions", DEADLINE, || async {
        bed.count("SELECT count(*) FROM matcher.searches WHERE jsonb_typeof(state->'profile'->'coordinates') = 'object'").await == 4
    })
    .await;

    // Each Berlin patient goes to two practices: Adler, and the shared
    // practice once, addressed to Weber; never to the far, the children's
    // or the blocked therapist.
    let emails = bed
        .read_until("email-commands", DEADLINE, |r| {
            asked(r).values().map(Vec::len).sum::<usize>() >= 6
        })
        .await;
    let by_therapist = asked(&emails);
    let all: Vec<String> = vec!["p-1".into(), "p-2".into(), "p-3".into()];
    let sorted = |v: &Vec<String>| {
        let mut v = v.clone();
        v.sort();
        v
    };
    assert_eq!(
        by_therapist.keys().collect::<Vec<_>>(),
        vec!["t-a", "t-c"],
        "{by_therapist:?}"
    );
    assert_eq!(sorted(&by_therapist["t-a"]), all, "each patient once");
    assert_eq!(
        sorted(&by_therapist["t-c"]),
        all,
        "each patient once per practice"
    );
    for inquiry in payloads(&emails, "email.send_inquiry") {
        let expected = if inquiry["therapist_id"] == "t-a" {
            "adler@praxis.example"
        } else {
            "praxis-weber@example.org"
        };
        assert_eq!(inquiry["recipient"]["email"], expected);
        assert_eq!(inquiry["recipient"]["salutation"], "FRAU");
    }
    let inquiry = payloads(&emails, "email.send_inquiry")[0].clone();
    let summary = &inquiry["patients"][0];
    assert_eq!(summary["insurer"], "Beispielkasse");
    assert!(
        !inquiry.to_string().contains("Testperson") && !inquiry.to_string().contains("Probeweg"),
        "no names or addresses in an inquiry: {inquiry}"
    );

    // Why: the explanation of p-1 names the rule that rejected each other.
    let events = bed
        .read_until("matching-events", DEADLINE, |r| {
            payloads(r, "matching.candidates_evaluated")
                .iter()
                .any(|e| e["patient_id"] == "p-1")
                && !of_type(r, "matching.search_exhausted").is_empty()
                && payloads(r, "matching.inquiry_created")
                    .iter()
                    .map(|i| i["patients"].as_array().unwrap().len())
                    .sum::<usize>()
                    >= 6
        })
        .await;
    let explained = payloads(&events, "matching.candidates_evaluated")
        .into_iter()
        .find(|e| e["patient_id"] == "p-1")
        .unwrap();
    let rule_of = |t: &str| {
        explained["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["therapist_id"] == t)
            .map(|d| {
                (
                    d["chosen"].as_bool().unwrap(),
                    d["rule"].as_str().map(str::to_string),
                    d["detail"].clone(),
                )
            })
    };
    assert!(rule_of("t-a").unwrap().0, "Adler chosen");
    assert_eq!(rule_of("t-blocked").unwrap().1.as_deref(), Some("rule 3"));
    assert_eq!(rule_of("t-kids").unwrap().1.as_deref(), Some("rule 8"));
    assert!(rule_of("t-far").is_none() || rule_of("t-far").unwrap().1.as_deref() == Some("rule 1"));
    let exhausted = payloads(&events, "matching.search_exhausted");
    assert_eq!(exhausted.len(), 1);
    assert_eq!(exhausted[0]["patient_id"], "p-far");

    // Invalid matching commands: a readable rejection each, nothing else.
    let to_adler = inquiry_of(&events, "t-a", "p-1");
    let to_weber = inquiry_of(&events, "t-c", "p-1");
    // Read now, from the records that hold the inquiries: a later read
    // stops at the record it waits for, which may come before these
    // (partitions are read in no fixed order).
    let adler_patients = patients_of(&events, &to_adler);
    let weber_patients = patients_of(&events, &to_weber);
    bed.publish(
        "matching-commands",
        &[
            answer("i-unknown", "t-a", &[("p-1", "ACCEPTED")], 0),
            answer(&to_adler, "t-a", &[("p-stranger", "ACCEPTED")], 0),
            answer(&to_adler, "t-far", &[("p-1", "ACCEPTED")], 0),
            command(
                "matching.run",
                json!({"run_id": "r-1", "patient_id": "p-nobody"}),
            ),
        ],
    )
    .await;
    let events = bed
        .read_until("matching-events", DEADLINE, |r| {
            of_type(r, "command.rejected").len() >= 4
        })
        .await;
    let reasons: Vec<String> = payloads(&events, "command.rejected")
        .iter()
        .map(|r| r["reason"].as_str().unwrap().to_string())
        .collect();
    for expected in [
        "inquiry i-unknown is not known",
        "patient p-stranger is not in inquiry",
        "not to t-far",
        "patient p-nobody has no search",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(expected)),
            "{expected}: {reasons:?}"
        );
    }
    assert!(of_type(&events, "matching.inquiry_answered").is_empty());

    // Weber's email went out 40 days ago and got no answer: a follow-up.
    bed.publish(
        "communication-events",
        &[command(
            "email.sent",
            json!({"email_id": "e-1", "message_id": "<e-1@psymatch>", "therapist_id": "t-c",
                   "inquiry_ids": [to_weber], "patient_ids": [], "sent_at": (chrono::Utc::now() - chrono::Duration::days(40)).to_rfc3339()}),
        )],
    )
    .await;
    bed.wait_for("the matcher saw the email", DEADLINE, || async {
        bed.count(&format!("SELECT count(*) FROM matcher.inquiries WHERE inquiry_id = '{to_weber}' AND state->>'sent_at' IS NOT NULL")).await == 1
    })
    .await;
    bed.publish(
        "matching-commands",
        &[command("matching.sweep", json!({"run_id": "s-1"}))],
    )
    .await;
    let events = bed
        .read_until("matching-events", DEADLINE, |r| {
            !of_type(r, "matching.follow_up_due").is_empty()
        })
        .await;
    let follow_ups = payloads(&events, "matching.follow_up_due");
    assert_eq!(follow_ups.len(), 1);
    assert_eq!(follow_ups[0]["inquiry_id"], to_weber.as_str());
    assert_eq!(follow_ups[0]["therapist_id"], "t-c");

    // Adler accepts p-1 and has no room for the others of that inquiry
    // (how many it holds depends on how the registrations were batched):
    // p-1 is placed, Adler cools.
    let answers_for = |patients: &[String]| -> Vec<(String, &'static str)> {
        patients
            .iter()
            .map(|p| {
                (
                    p.clone(),
                    if p == "p-1" {
                        "ACCEPTED"
                    } else {
                        "REJECTED_NO_CAPACITY"
                    },
                )
            })
            .collect()
    };
    bed.publish(
        "matching-commands",
        &[answer(&to_adler, "t-a", &answers_for(&adler_patients), 0)],
    )
    .await;
    let events = bed
        .read_until("matching-events", DEADLINE, |r| {
            !of_type(r, "matching.patient_placed").is_empty()
                && !of_type(r, "matching.inquiry_answered").is_empty()
        })
        .await;
    let answered = payloads(&events, "matching.inquiry_answered");
    let outcome = if adler_patients.len() == 1 {
        "FULLY_ACCEPTED"
    } else {
        "PARTLY_ACCEPTED"
    };
    assert_eq!(answered[0]["outcome"], outcome);
    let cooling: chrono::DateTime<chrono::Utc> = answered[0]["cooling_until"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let days = (cooling - chrono::Utc::now()).num_days();
    assert!(
        (27..=28).contains(&days),
        "cooling for 4 weeks: {days} days"
    );
    let placed = payloads(&events, "matching.patient_placed");
    assert_eq!(placed.len(), 1);
    assert_eq!(placed[0]["patient_id"], "p-1");
    assert_eq!(placed[0]["therapist_id"], "t-a");

    // The Weber practice answers through a colleague, 29 days ago, and
    // accepted p-1 too: placed already, so a polite decline. Its cooling
    // period is over: the others of its inquiry are asked about again;
    // Adler cools and is not.
    bed.publish(
        "matching-commands",
        &[
            answer(&to_weber, "t-b", &answers_for(&weber_patients), 29),
            answer(&to_adler, "t-a", &answers_for(&adler_patients), 0),
        ],
    )
    .await;
    let again: Vec<String> = weber_patients
        .iter()
        .filter(|p| *p != "p-1")
        .cloned()
        .collect();
    let emails = bed
        .read_until("email-commands", DEADLINE, |r| {
            !of_type(r, "email.send_templated").is_empty()
                && asked(r).values().map(Vec::len).sum::<usize>() >= 6 + again.len()
        })
        .await;
    let declines = payloads(&emails, "email.send_templated");
    assert_eq!(declines.len(), 1);
    assert_eq!(declines[0]["template"], "decline");
    assert_eq!(declines[0]["variables"]["patient_id"], "p-1");
    assert_eq!(declines[0]["therapist_id"], "t-c");
    let by_therapist = asked(&emails);
    let mut expected: Vec<String> = all.iter().chain(again.iter()).cloned().collect();
    expected.sort();
    assert_eq!(
        sorted(&by_therapist["t-c"]),
        expected,
        "asked about again after the cooling period: {again:?}"
    );
    assert_eq!(by_therapist["t-a"].len(), 3, "Adler cools: not asked again");

    // A paused search is announced; an erased patient leaves nothing in
    // intake's or the matcher's tables.
    bed.publish(
        "patient-commands",
        &[
            command(
                "patient.pause_search",
                json!({"patient_id": "p-3", "reason": "Urlaub"}),
            ),
            command(
                "patient.erase",
                json!({"patient_id": "p-2", "keep_contact_log": false}),
            ),
        ],
    )
    .await;
    let events = bed
        .read_until("matching-events", DEADLINE, |r| {
            !of_type(r, "matching.search_paused").is_empty()
                && of_type(r, "matching.inquiry_created").len()
                    >= of_type(&emails, "email.send_inquiry").len()
                && of_type(r, "command.rejected").len() >= 5
        })
        .await;
    assert!(
        payloads(&events, "command.rejected")
            .iter()
            .any(|r| r["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("inquiry {to_adler} was answered already"))),
        "a second answer to one inquiry is refused"
    );
    let paused = payloads(&events, "matching.search_paused");
    assert_eq!(paused[0]["patient_id"], "p-3");
    // p-3 waits in every inquiry that holds it and was not answered.
    let open = payloads(&events, "matching.inquiry_created")
        .iter()
        .filter(|i| {
            let id = i["inquiry_id"].as_str().unwrap();
            id != to_adler
                && id != to_weber
                && patients_of(&events, id).contains(&"p-3".to_string())
        })
        .count();
    assert_eq!(paused[0]["open_inquiries"], open as i64);
    bed.wait_for("p-2 is gone from every table", DEADLINE, || async {
        bed.count("SELECT count(*) FROM intake.patients WHERE patient_id = 'p-2'").await
            + bed.count("SELECT count(*) FROM matcher.searches WHERE patient_id = 'p-2'").await
            + bed.count("SELECT count(*) FROM matcher.inquiries WHERE 'p-2' = ANY(patient_ids) OR state::text LIKE '%\"p-2\"%'").await
            == 0
    })
    .await;
    assert_eq!(bed.count("SELECT count(*) FROM intake.patients WHERE details::text LIKE '%Testperson%' AND patient_id = 'p-2'").await, 0);

    matcher.stop().await;
    intake.stop().await;
}
