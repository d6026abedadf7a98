//! No personal data in logs: recognisable names, emails, phone numbers and
//! addresses planted in a patient and a therapist travel the whole chain
//! (registration, geocoding, matching, the inquiry email, a refused
//! command that repeats a bad email address, staff reading the patient on
//! intake's query surface) with every processor at debug level, and no log
//! line holds any of them; the read is logged as an access, without the
//! data.
//!
//! Needs the local stack and the workspace's binaries
//! (`cargo build --workspace --bins`).

use psymatch_proof::{people, processes};
use psymatch_runtime::testing::{TestBed, of_type, scratch_dir};
use serde_json::json;
use std::time::Duration;

/// A staff token for intake's query surface.
const STAFF: &str = "staff-token-0123456789";

/// Strings no log line may contain (compared without case).
const PLANTED: [&str; 12] = [
    "Quappenhuber",
    "Zwirbelinde",
    "planted.patient@example.org",
    "+49 30 98765432",
    "Kroetenpfad",
    "Ulmenrieder",
    "Haselwurm",
    "planted.praxis@example.org",
    "+49 40 11223344",
    "Molchgasse",
    "refused.planted(at)example.org",
    "F41.9",
];

#[tokio::test(flavor = "multi_thread")]
async fn no_personal_data_reaches_any_log_line() {
    let bed = TestBed::new().await;
    let logs = scratch_dir("psymatch-log-scan");
    let mail = scratch_dir("psymatch-log-scan-mail");
    // Debug level: everything a processor would ever say.
    let debug = [
        ("RUST_LOG", "debug".to_string()),
        ("QUERY_TOKENS", format!("desk:staff:{STAFF}")),
    ];
    let mut running = processes::start_all(&bed, processes::chain(&mail), &debug, &logs)
        .await
        .expect("the processors start");
    bed.publish(
        "therapist-commands",
        &[people::with_details(
            people::practice("t-planted", "3", "10117"),
            json!({"title": "Dr.", "first_name": "Haselwurm", "last_name": "Ulmenrieder",
                   "address": {"street": "Molchgasse", "house_number": "3", "postcode": "10117", "city": "Berlin"},
                   "email": "planted.praxis@example.org", "phone": "+49 40 11223344"}),
        )],
    )
    .await;
    let patient = |id: &str, email: &str| {
        people::with_details(
            people::registration(id, "10115"),
            json!({"salutation": "FRAU", "first_name": "Zwirbelinde", "last_name": "Quappenhuber",
                   "address": {"street": "Kroetenpfad", "house_number": "12", "postcode": "10115", "city": "Berlin"},
                   "email": email, "phone": "+49 30 98765432", "date_of_birth": "1988-03-04",
                   "diagnosis_icd10": "F41.9"}),
        )
    };
    // The practice placed first: the patient's search then finds it.
    bed.read_until("geocoding-results", Duration::from_secs(60), |r| {
        r.iter()
            .any(|r| r.payload()["request_id"] == "therapist-t-planted")
    })
    .await;
    bed.publish(
        "patient-commands",
        &[
            patient("p-planted", "planted.patient@example.org"),
            patient("p-refused", "refused.planted(at)example.org"),
        ],
    )
    .await;
    let events = bed
        .read_until("patient-events", Duration::from_secs(60), |r| {
            !of_type(r, "command.rejected").is_empty()
        })
        .await;
    let rejection = of_type(&events, "command.rejected")[0].payload();
    assert!(
        rejection["reason"]
            .as_str()
            .unwrap()
            .contains("details.email"),
        "{rejection}"
    );
    processes::email_inquiries(&bed, "log-scan").await;
    // Staff reads the patient: the answer holds the data, the log only
    // that it was read.
    let intake = running.iter().find(|p| p.name == "intake").unwrap();
    let (status, read) =
        psymatch_runtime::testing::query(intake.port, "/v1/patients/p-planted", Some(STAFF)).await;
    assert_eq!(status, 200, "{read}");
    assert_eq!(read["details"]["last_name"], "Quappenhuber");
    let accesses: Vec<String> = std::fs::read_to_string(&intake.log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("personal data read"))
        .map(str::to_string)
        .collect();
    assert_eq!(accesses.len(), 1, "{accesses:?}");
    assert!(
        accesses[0].contains("\"caller\":\"desk\"") && accesses[0].contains("p-planted"),
        "{accesses:?}"
    );

    let mut lines = 0;
    let mut hits = Vec::new();
    for process in running.iter_mut() {
        assert!(process.exited().is_none(), "{} exited", process.name);
        let text = std::fs::read_to_string(&process.log).unwrap();
        for line in text.lines() {
            lines += 1;
            let lower = line.to_lowercase();
            for planted in PLANTED {
                if lower.contains(&planted.to_lowercase()) {
                    hits.push(format!("{}: {planted}: {line}", process.name));
                }
            }
        }
    }
    // Debug logging was on: the scan read what the processors said.
    assert!(lines > 100, "only {lines} log lines");
    assert!(
        hits.is_empty(),
        "{} log lines hold personal data:\n{}",
        hits.len(),
        hits.join("\n")
    );
}
