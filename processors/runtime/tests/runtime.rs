//! The runtime against the real broker, registry and PostgreSQL, with the
//! example processor.

use psymatch_runtime::app::run_with;
use psymatch_runtime::example::Counter;
use psymatch_runtime::testing::{Received, TestBed};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(60);

/// Starts the example processor in this process; dropping the sender (or
/// sending) stops it.
fn start(
    bed: &TestBed,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let config = bed.config("example");
    let task = tokio::spawn(run_with(Counter, config, async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

fn run_command(patient: &str, run: usize) -> Value {
    json!({"event_type": "matching.run", "payload": {"run_id": format!("run-{run}"), "patient_id": patient}})
}

/// A record in the wire format of `topic`, as a producer would write it.
async fn encode(bed: &TestBed, topic: &str, record: Value) -> Vec<u8> {
    let contracts = psymatch_runtime::contracts::Contracts::embedded();
    let (spec, schema) = contracts.topic(topic).unwrap();
    let (_, envelope) = psymatch_runtime::envelope::from_json(
        &record,
        schema,
        &spec.key_fields,
        "test",
        chrono::Utc::now(),
    )
    .unwrap();
    psymatch_runtime::codec::Codec::new(&bed.registry_url)
        .encode_with(
            &format!("{}{topic}", bed.prefix),
            schema,
            envelope.to_avro(schema).unwrap(),
        )
        .await
        .unwrap()
}

fn distinct_ids(records: &[Received]) -> usize {
    records
        .iter()
        .filter_map(|r| r.envelope.as_ref())
        .map(|e| e.event_id)
        .collect::<HashSet<_>>()
        .len()
}

async fn counts(bed: &TestBed) -> BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT key, count FROM example.counts")
        .fetch_all(&bed.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processes_every_record_once_in_order_per_key() {
    let bed = TestBed::new().await;
    let patients: Vec<String> = (0..10).map(|i| format!("p-{i}")).collect();
    let records: Vec<Value> = (0..300)
        .map(|i| run_command(&patients[i % 10], i))
        .collect();
    bed.publish("matching-commands", &records).await;
    let (stop, task) = start(&bed);

    let outputs = bed
        .read_until("matching-events", DEADLINE, |r| distinct_ids(r) >= 300)
        .await;
    assert_eq!(outputs.len(), 300, "no duplicates without faults");
    // Per key, the counts arrive as 1, 2, 3, ...: ordered, each applied once.
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for record in &outputs {
        let payload = record.payload();
        assert_eq!(record.key.as_deref(), payload["patient_id"].as_str());
        per_key
            .entry(payload["patient_id"].as_str().unwrap().to_string())
            .or_default()
            .push(payload["candidates_considered"].as_i64().unwrap());
        let envelope = record.envelope.as_ref().unwrap();
        assert_eq!(envelope.producer, "example");
        assert_eq!(record.headers["event_id"], envelope.event_id.to_string());
    }
    for (patient, seen) in &per_key {
        assert_eq!(seen, &(1..=30).collect::<Vec<i64>>(), "{patient}");
    }
    assert_eq!(counts(&bed).await.values().sum::<i64>(), 300);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_are_dead_lettered_with_reasons_and_the_partition_flows_on() {
    let bed = TestBed::new().await;
    let key = "p-poison";
    let good = |i: usize| run_command(key, i);
    bed.publish("matching-commands", &[good(0)]).await;
    let raw = |value: &[u8]| (Some(key), Some(value.to_vec()));
    // A valid patient-commands record published on matching-commands: a
    // schema this topic's reader cannot resolve.
    let wrong_type = encode(
        &bed,
        "patient-commands",
        json!({"event_type": "patient.resume_search", "payload": {"patient_id": key}}),
    )
    .await;
    // (key, value, expected error code)
    type Poison<'a> = (Option<&'a str>, Option<Vec<u8>>, &'a str);
    let poison: Vec<Poison> = vec![
        (
            raw(b"garbage bytes").0,
            raw(b"garbage bytes").1,
            "PSY-D-001",
        ),
        (Some(key), Some(vec![1, 0, 0, 0, 1, 2, 3]), "PSY-D-001"),
        (
            Some(key),
            Some(vec![0, 0x7f, 0xff, 0xff, 0x00, 2, 3]),
            "PSY-D-002",
        ),
        (Some(key), Some(wrong_type), "PSY-D-003"),
        (Some(key), None, "PSY-D-001"),
    ];
    for (i, (key, value, _)) in poison.iter().enumerate() {
        bed.publish_raw(
            "matching-commands",
            *key,
            value.as_deref(),
            &[("probe".into(), format!("poison-{i}"))],
        )
        .await;
        bed.publish("matching-commands", &[good(i + 1)]).await;
    }
    // The key disagrees with the payload.
    let mismatched = encode(
        &bed,
        "matching-commands",
        json!({"event_type": "matching.run",
                            "payload": {"run_id": "r", "patient_id": "p-other"}}),
    )
    .await;
    bed.publish_raw(
        "matching-commands",
        Some(key),
        Some(&mismatched),
        &[("probe".into(), "mismatch".into())],
    )
    .await;
    // A record the processor refuses, and one it answers with a rejection.
    let refused = json!({"event_type": "matching.run", "payload": {"run_id": "r", "patient_id": "invalid-1"}});
    let rejected = json!({"event_type": "matching.run", "payload": {"run_id": "no-patient"}});
    bed.publish("matching-commands", &[refused, rejected, good(99)])
        .await;

    let (stop, task) = start(&bed);
    let dead = bed
        .read_until("matching-commands.dlq", DEADLINE, |r| {
            r.len() >= poison.len() + 2
        })
        .await;
    let outputs = bed
        .read_until("matching-events", DEADLINE, |r| r.len() >= 8)
        .await;

    for (i, (_, _, code)) in poison.iter().enumerate() {
        let letter = dead
            .iter()
            .find(|r| r.headers.get("probe") == Some(&format!("poison-{i}")))
            .unwrap_or_else(|| panic!("poison {i} not in the DLQ"));
        assert_eq!(
            &letter.headers["psymatch.error.code"], code,
            "poison {i}: {:?}",
            letter.headers
        );
        assert_eq!(letter.headers["psymatch.processor"], "example");
        assert_eq!(
            letter.headers["psymatch.source.topic"],
            format!("{}matching-commands", bed.prefix)
        );
        assert!(!letter.headers["psymatch.error.message"].is_empty());
        assert_eq!(letter.value, poison[i].1, "the original value is kept");
    }
    let mismatch = dead
        .iter()
        .find(|r| r.headers.get("probe").map(String::as_str) == Some("mismatch"))
        .unwrap();
    assert_eq!(mismatch.headers["psymatch.error.code"], "PSY-D-005");
    let refusal = dead
        .iter()
        .find(|r| r.headers.get("psymatch.error.code").map(String::as_str) == Some("PSY-V-001"))
        .unwrap();
    assert!(refusal.headers["psymatch.error.message"].contains("invalid-1"));
    // Good records before and after each poison all went through, in order.
    let counted: Vec<i64> = outputs
        .iter()
        .filter(|r| r.envelope.as_ref().unwrap().event_type == "matching.search_exhausted")
        .map(|r| r.payload()["candidates_considered"].as_i64().unwrap())
        .collect();
    assert_eq!(counted, vec![1, 2, 3, 4, 5, 6, 7], "{counted:?}");
    let rejection = outputs
        .iter()
        .find(|r| r.envelope.as_ref().unwrap().event_type == "command.rejected")
        .expect("a rejection event");
    assert_eq!(rejection.payload()["error_code"], "PSY-V-001");
    assert_eq!(rejection.payload()["reason"], "patient_id is required");
    // The refused record left no state behind.
    assert_eq!(counts(&bed).await.get("invalid-1"), None);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
