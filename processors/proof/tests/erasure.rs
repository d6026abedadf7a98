//! Erasure, checked with the erasure scanner: a patient with recognisable
//! values goes through the chain (registration sealed as `psymatch publish`
//! seals it, geocoding, matching, the inquiry email); before erasure the
//! scanner finds the values where intake keeps them; within 60 seconds of
//! the erase command nothing holds any of them: no table, no topic (the
//! registration and the address to geocode travelled sealed with the
//! patient's key, which erasure destroyed), no log file, no sent mail.
//!
//! Needs the local stack and the workspace's binaries.

use psymatch_proof::scan::{Scope, scan};
use psymatch_proof::{people, processes};
use psymatch_runtime::testing::{TestBed, scratch_dir};
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
async fn after_erasure_nothing_holds_the_patient() {
    let bed = TestBed::new().await;
    let logs = scratch_dir("psymatch-erasure-logs");
    let mail = scratch_dir("psymatch-erasure-mail");
    let mut running = processes::start_all(&bed, processes::chain(&mail), &[], &logs)
        .await
        .expect("the processors start");
    bed.publish(
        "therapist-commands",
        &[people::with_details(
            people::practice("t-1", "3", "10117"),
            json!({"email": "praxis-erasure@example.org"}),
        )],
    )
    .await;
    let mut registration = people::with_details(
        people::registration("p-erase", "10115"),
        json!({"salutation": "HERR", "first_name": "Amselgrund", "last_name": "Pfefferlinde",
               "address": {"street": "Unkenstieg", "house_number": "8", "postcode": "10115", "city": "Berlin"},
               "email": "erase.me@example.org", "phone": "+49 30 55566677", "gender": "MALE"}),
    );
    // As psymatch publish sends it: the details sealed with the patient's key.
    let mut connection = bed.pool.acquire().await.unwrap();
    psymatch_runtime::sealed::seal_command(&mut connection, &mut registration)
        .await
        .unwrap();
    drop(connection);
    assert!(registration["payload"]["details"].is_null());
    bed.publish("patient-commands", &[registration]).await;
    // Through the chain: the inquiry is emailed to the practice.
    processes::email_inquiries(&bed, "erasure").await;

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
    // Before: the scanner finds the patient where intake keeps it, and a
    // practice's email address (which travels in clear) in its topic.
    let (before, _) = scan(&scope, &values).await.unwrap();
    assert_eq!(
        places(&before),
        BTreeSet::from(["table intake.patients".to_string()])
    );
    let (control, _) = scan(&scope, &["praxis-erasure@example.org".to_string()])
        .await
        .unwrap();
    let control = places(&control);
    for expected in ["table intake.therapists", "topic therapist-commands"] {
        assert!(control.contains(expected), "{expected} not in {control:?}");
    }

    let cached = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM geocoder.patient_addresses WHERE patient_id = 'p-erase'",
        )
        .fetch_one(&bed.pool)
        .await
        .unwrap()
    };
    // The geocoder knows which address it geocoded for the patient (offline
    // answers are not cached; a cached one would go with it).
    assert_eq!(cached().await, 1);
    let erased_at = Instant::now();
    bed.publish(
        "patient-commands",
        &[json!({"event_type": "patient.erase", "payload": {"patient_id": "p-erase", "keep_contact_log": false}})],
    )
    .await;
    // Within 60 s nothing holds any value.
    loop {
        let (findings, scanned) = scan(&scope, &values).await.unwrap();
        if findings.is_empty() {
            println!(
                "{:.1} s after the erase command:",
                erased_at.elapsed().as_secs_f64()
            );
            psymatch_proof::scan::print(&findings, &scanned);
            break;
        }
        assert!(
            erased_at.elapsed() < Duration::from_secs(60),
            "60 s after the erase command the patient remains in {:?}",
            places(&findings)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let keys: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM keystore.patient_keys WHERE patient_id = 'p-erase'",
    )
    .fetch_one(&bed.pool)
    .await
    .unwrap();
    assert_eq!(keys, 0, "the key is destroyed");
    // The geocoder forgot the patient's address.
    bed.wait_for("the geocoder forgets", Duration::from_secs(60), || async {
        cached().await == 0
    })
    .await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM intake.patients")
        .fetch_one(&bed.pool)
        .await
        .unwrap();
    assert_eq!(rows, 0);
    for process in running.iter_mut() {
        assert!(process.exited().is_none(), "{} exited", process.name);
    }
}
