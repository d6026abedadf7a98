//! Erasure, checked with the erasure scanner: a patient with recognisable
//! values goes through the chain (registration, geocoding, matching, the
//! inquiry email); the scanner finds the values before erasure; within 60
//! seconds of the erase command no table, log file or sent mail holds any
//! of them. The topics that still do are exactly the two non-compacted
//! ones that carry a patient's address or details as people and intake
//! wrote them (patient-commands, geocoding-requests); encrypting those with
//! a per-patient key that erasure destroys is the open part of issue 9.
//!
//! Needs the local stack and the workspace's binaries.

use psymatch_proof::processes::{self, Process};
use psymatch_proof::scan::{Scope, scan};
use psymatch_runtime::testing::{TestBed, of_type, scratch_dir};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// The patient's values the scanner looks for.
const VALUES: [&str; 5] = [
    "Amselgrund",
    "Pfefferlinde",
    "erase.me@example.org",
    "+49 30 55566677",
    "Unkenstieg",
];

#[tokio::test(flavor = "multi_thread")]
async fn after_erasure_no_table_log_or_mail_holds_the_patient() {
    let bed = TestBed::new().await;
    let logs = scratch_dir("psymatch-erasure-logs");
    let mail = scratch_dir("psymatch-erasure-mail");
    let mut running: Vec<Process> = Vec::new();
    for (name, binary, extra) in [
        ("intake", "psymatch-intake", vec![]),
        (
            "geocoder",
            "psymatch-geocoder",
            vec![
                ("NOMINATIM_URL", "offline".to_string()),
                ("OSRM_URL", "offline".to_string()),
                ("GEOCODER_CONTACT", "proof@example.invalid".to_string()),
            ],
        ),
        ("matcher", "psymatch-matcher", vec![]),
        (
            "email_batcher",
            "psymatch-email-batcher",
            vec![
                ("EMAIL_TRANSPORT", "file".to_string()),
                ("EMAIL_FILE_DIR", mail.to_string_lossy().into_owned()),
            ],
        ),
    ] {
        running.push(
            processes::start(&bed, name, binary, &extra, &logs)
                .await
                .expect("the processor starts"),
        );
    }
    bed.publish(
        "therapist-commands",
        &[json!({"event_type": "therapist.upsert", "payload": {"therapist_id": "t-1", "details": {
            "salutation": "FRAU", "title": null, "first_name": "Test", "last_name": "Praxis",
            "gender": "FEMALE",
            "address": {"street": "Teststraße", "house_number": "3", "postcode": "10117", "city": "Berlin"},
            "email": "praxis-erasure@example.org", "procedures": ["BEHAVIOURAL"],
            "age_groups": ["ADULTS"], "settings": ["INDIVIDUAL"], "phone_hours": []}}})],
    )
    .await;
    bed.publish(
        "patient-commands",
        &[json!({"event_type": "patient.register", "payload": {"patient_id": "p-erase", "details": {
            "salutation": "HERR", "first_name": "Amselgrund", "last_name": "Pfefferlinde",
            "address": {"street": "Unkenstieg", "house_number": "8", "postcode": "10115", "city": "Berlin"},
            "email": "erase.me@example.org", "phone": "+49 30 55566677", "date_of_birth": "1979-09-09",
            "gender": "MALE", "insurer": "Beispielkasse", "diagnosis_icd10": "F32.1",
            "consultation_hour_attended": true, "symptoms": ["Antriebslosigkeit"],
            "therapy_experience": false, "last_therapy_session": null, "open_to_group": false,
            "availability": [], "max_distance_km": 20, "max_travel_minutes": null, "transport": "CAR",
            "preferred_therapist_gender": "ANY", "preferred_procedures": [], "languages": [],
            "excluded_therapists": [], "consent_given_at": "2026-11-01T09:30:00Z"}}})],
    )
    .await;
    // Through the chain: the inquiry is emailed to the practice.
    bed.wait_for(
        "the inquiry waits in the batcher",
        Duration::from_secs(60),
        || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM email_batcher.inquiries")
                .fetch_one(&bed.pool)
                .await
                .unwrap()
                > 0
        },
    )
    .await;
    bed.publish(
        "email-commands",
        &[json!({"event_type": "email.flush_batches", "payload": {"run_id": "erasure"}})],
    )
    .await;
    bed.read_until("communication-events", Duration::from_secs(60), |r| {
        !of_type(r, "email.sent").is_empty()
    })
    .await;

    let scope = Scope {
        brokers: bed.brokers.clone(),
        prefix: bed.prefix.clone(),
        pool: bed.pool.clone(),
        maildev_url: None,
        files: vec![logs.clone(), mail.clone()],
    };
    let values: Vec<String> = VALUES.iter().map(|v| v.to_string()).collect();
    let places = |findings: &psymatch_proof::scan::Findings| -> BTreeSet<String> {
        findings
            .keys()
            .map(|(kind, place)| match kind.as_str() {
                "file" => "file".to_string(),
                _ => format!("{kind} {place}"),
            })
            .collect()
    };
    // Before: the scanner finds the patient where intake keeps it.
    let (before, _) = scan(&scope, &values).await.unwrap();
    let before = places(&before);
    for expected in [
        "table intake.patients",
        "topic patient-commands",
        "topic geocoding-requests",
    ] {
        assert!(before.contains(expected), "{expected} not in {before:?}");
    }

    let erased_at = Instant::now();
    bed.publish(
        "patient-commands",
        &[json!({"event_type": "patient.erase", "payload": {"patient_id": "p-erase", "keep_contact_log": false}})],
    )
    .await;
    // Within 60 s no table, log file or mail holds any value.
    let allowed: BTreeSet<String> = ["topic patient-commands", "topic geocoding-requests"]
        .into_iter()
        .map(String::from)
        .collect();
    loop {
        let (findings, scanned) = scan(&scope, &values).await.unwrap();
        let after = places(&findings);
        if after.is_subset(&allowed) {
            println!(
                "{:.1} s after the erase command:",
                erased_at.elapsed().as_secs_f64()
            );
            psymatch_proof::scan::print(&findings, &scanned);
            break;
        }
        assert!(
            erased_at.elapsed() < Duration::from_secs(60),
            "60 s after the erase command the patient remains in {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM intake.patients")
        .fetch_one(&bed.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    for process in running.iter_mut() {
        assert!(process.exited().is_none(), "{} exited", process.name);
    }
}
