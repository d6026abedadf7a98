//! Intake's query against the real stack: a patient's personal data for
//! staff, refused to ops and to callers without a token, and an erased
//! patient said to be erased.

use psymatch_intake::Intake;
use psymatch_runtime::query::Tokens;
use psymatch_runtime::testing::people::{self, command};
use psymatch_runtime::testing::{Running, TestBed, free_port, query};
use serde_json::json;
use std::time::Duration;

const OPS: &str = "ops-token-0123456789";
const STAFF: &str = "staff-token-0123456789";

#[tokio::test(flavor = "multi_thread")]
async fn staff_reads_a_patient_ops_does_not() {
    let bed = TestBed::new().await;
    let port = free_port();
    let mut config = bed.config("intake");
    config.http_listen = format!("127.0.0.1:{port}");
    config.query_tokens = Tokens::parse(&format!("oncall:ops:{OPS},desk:staff:{STAFF}")).unwrap();
    let intake = Running::start(Intake, config);
    bed.publish(
        "patient-commands",
        &[
            people::registration("q-1", "10115"),
            people::registration("q-2", "10117"),
        ],
    )
    .await;
    bed.wait_for("both patients stored", Duration::from_secs(60), || async {
        bed.count("SELECT count(*) FROM intake.patients").await == 2
    })
    .await;

    let (status, patient) = query(port, "/v1/patients/q-1", Some(STAFF)).await;
    assert_eq!(status, 200, "{patient}");
    assert_eq!(patient["details"]["email"], "q-1@example.org");
    assert_eq!(patient["details"]["address"]["postcode"], "10115");
    assert_eq!(patient["status"], "ACTIVE");

    let (status, body) = query(port, "/v1/patients/q-1", Some(OPS)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));
    assert!(!body.to_string().contains("example.org"), "{body}");
    // Ops learns nothing of who exists either.
    let (status, _) = query(port, "/v1/patients/q-404", Some(OPS)).await;
    assert_eq!(status, 403);
    let (status, _) = query(port, "/v1/patients/q-1", None).await;
    assert_eq!(status, 401);
    let (status, body) = query(port, "/v1/patients/q-404", Some(STAFF)).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    assert!(
        body["message"].as_str().unwrap().contains("patient"),
        "{body}"
    );

    bed.publish(
        "patient-commands",
        &[command(
            "patient.erase",
            json!({"patient_id": "q-2", "keep_contact_log": false}),
        )],
    )
    .await;
    bed.wait_for("the patient erased", Duration::from_secs(60), || async {
        bed.count("SELECT count(*) FROM intake.erased WHERE patient_id = 'q-2'")
            .await
            == 1
    })
    .await;
    let (status, body) = query(port, "/v1/patients/q-2", Some(STAFF)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (404, Some("erased")),
        "{body}"
    );
    intake.stop().await;
}
