//! A broker lost under load on the secured three-node cluster: intake
//! keeps registering patients while one node is killed with SIGKILL and
//! later restarted. With three replicas, two to acknowledge (`acks=all`),
//! every command is answered once: nothing lost, nothing twice. Prints how
//! long the answers stalled around the loss.

use psymatch_intake::Intake;
use psymatch_runtime::testing::{Running, TestBed, cluster, of_type, people};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const PATIENTS: usize = 120;

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_broker_loses_and_doubles_nothing() {
    let bed = TestBed::secured().await;
    let intake = Running::start(Intake, bed.config("intake"));
    let registration = |n: usize| people::registration(&format!("failover-{n}"), "10115");
    let answered = |records: &[psymatch_runtime::testing::Received]| {
        of_type(records, "patient.registered").len()
    };

    let first: Vec<_> = (0..PATIENTS / 2).map(registration).collect();
    bed.publish("patient-commands", &first).await;
    bed.read_until("patient-events", Duration::from_secs(90), |r| {
        answered(r) >= PATIENTS / 2
    })
    .await;

    // Node 1 goes away without a word while the second half is published.
    let cluster = cluster::up();
    cluster.script(&["kill", "1"]);
    let lost = Instant::now();
    let second: Vec<_> = (PATIENTS / 2..PATIENTS).map(registration).collect();
    bed.publish("patient-commands", &second).await;
    let records = bed
        .read_until("patient-events", Duration::from_secs(120), |r| {
            answered(r) >= PATIENTS
        })
        .await;
    let stalled = lost.elapsed();
    // Back, for the tests that come after (topics with three replicas).
    cluster.script(&["up"]);

    let mut per_patient: BTreeMap<String, usize> = BTreeMap::new();
    for record in of_type(&records, "patient.registered") {
        let id = record.payload()["patient_id"].as_str().unwrap().to_string();
        *per_patient.entry(id).or_default() += 1;
    }
    assert_eq!(per_patient.len(), PATIENTS, "every patient registered");
    let twice: Vec<_> = per_patient.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "registered twice: {twice:?}");
    println!(
        "a broker killed under load: {PATIENTS} of {PATIENTS} answered once; the second half took {:.1} s after the loss",
        stalled.as_secs_f64()
    );
    intake.stop().await;
}
