//! The runtime against the real broker, registry and PostgreSQL, with the
//! example processor.

use psymatch_runtime::app::run_with;
use psymatch_runtime::example::Counter;
use psymatch_runtime::testing::{Received, TestBed, free_port};
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
    bed.encode(topic, &record).await.2
}

/// `schema` with `field` added to its payload record `record`.
fn with_payload_field(schema: &Value, record: &str, field: Value) -> Value {
    let mut newer = schema.clone();
    let payload = newer["fields"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "payload")
        .unwrap();
    let branch = payload["type"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["name"] == record)
        .unwrap();
    branch["fields"].as_array_mut().unwrap().push(field);
    newer
}

fn distinct_ids(records: &[Received]) -> usize {
    records
        .iter()
        .filter_map(|r| r.envelope.as_ref())
        .map(|e| e.event_id)
        .collect::<HashSet<_>>()
        .len()
}

/// The counts the example published, in the order read.
fn considered(records: &[Received]) -> Vec<i64> {
    records
        .iter()
        .map(|r| r.payload()["candidates_considered"].as_i64().unwrap())
        .collect()
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

/// The relay publishes what this process committed from memory; a row it
/// did not write (another replica's, or left by a process before a
/// restart) is read from the outbox, and goes out in its place in the
/// order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_rows_this_process_did_not_write_are_published_in_order() {
    let bed = TestBed::new().await;
    let key = "p-relay";
    bed.publish("matching-commands", &[run_command(key, 0)])
        .await;
    let (stop, task) = start(&bed);
    bed.read_until("matching-events", DEADLINE, |r| distinct_ids(r) >= 1)
        .await;
    let left = encode(
        &bed,
        "matching-events",
        json!({"event_type": "matching.search_exhausted",
               "payload": {"patient_id": key, "candidates_considered": 100}}),
    )
    .await;
    let event_id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO example.outbox (event_id, topic, key, value, headers)
         VALUES ($1, $2, $3, $4, '[]')",
    )
    .bind(event_id)
    .bind(format!("{}matching-events", bed.prefix))
    .bind(key)
    .bind(&left)
    .execute(&bed.pool)
    .await
    .unwrap();
    bed.publish("matching-commands", &[run_command(key, 1)])
        .await;
    let outputs = bed
        .read_until("matching-events", DEADLINE, |r| distinct_ids(r) >= 3)
        .await;
    let counts = considered(&outputs);
    assert_eq!(
        counts,
        vec![1, 100, 2],
        "the row left in the outbox, in its place"
    );
    // Deleted once the broker acknowledged each (after the read above).
    bed.wait_for("every published row deleted", DEADLINE, || async {
        bed.count("SELECT count(*) FROM example.outbox").await == 0
    })
    .await;
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
    // An envelope whose event_type announces another record than it holds.
    let liar = {
        let contracts = psymatch_runtime::contracts::Contracts::embedded();
        let (spec, schema) = contracts.topic("matching-commands").unwrap();
        let (_, mut envelope) = psymatch_runtime::envelope::from_json(
            &good(50),
            schema,
            &spec.key_fields,
            "test",
            chrono::Utc::now(),
        )
        .unwrap();
        let mut value = envelope.to_avro(schema).unwrap();
        if let apache_avro::types::Value::Record(fields) = &mut value {
            fields[1].1 = apache_avro::types::Value::String("matching.sweep".into());
        }
        envelope.event_type = "matching.sweep".into();
        psymatch_runtime::codec::Codec::new(&bed.registry_url)
            .encode_with(&format!("{}matching-commands", bed.prefix), schema, value)
            .await
            .unwrap()
    };
    bed.publish_raw(
        "matching-commands",
        Some(key),
        Some(&liar),
        &[("probe".into(), "liar".into())],
    )
    .await;
    // Larger than MAX_RECORD_BYTES (set to 4096 below).
    let huge = vec![0u8; 5000];
    bed.publish_raw(
        "matching-commands",
        Some(key),
        Some(&huge),
        &[("probe".into(), "huge".into())],
    )
    .await;
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

    let (stop, task) = start_with(&bed, &[("MAX_RECORD_BYTES", "4096".to_string())]);
    let dead = bed
        .read_until("matching-commands.dlq", DEADLINE, |r| {
            r.len() >= poison.len() + 4
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
    for (probe, code) in [("liar", "PSY-D-004"), ("huge", "PSY-D-006")] {
        let letter = dead
            .iter()
            .find(|r| r.headers.get("probe").map(String::as_str) == Some(probe))
            .unwrap();
        assert_eq!(
            letter.headers["psymatch.error.code"], code,
            "{probe}: {:?}",
            letter.headers
        );
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

fn start_with(
    bed: &TestBed,
    vars: &[(&str, String)],
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let mut env: BTreeMap<String, String> = bed.env("example").into_iter().collect();
    for (name, value) in vars {
        env.insert(name.to_string(), value.clone());
    }
    let config = psymatch_runtime::config::RuntimeConfig::from_vars("example", &env).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run_with(Counter, config, async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn status(port: u16) -> Value {
    reqwest::get(format!("http://127.0.0.1:{port}/health/status"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn assigned(port: u16) -> usize {
    match reqwest::get(format!("http://127.0.0.1:{port}/health/status")).await {
        Ok(response) => response.json::<Value>().await.map_or(0, |s| {
            s["assigned_partitions"].as_array().map_or(0, Vec::len)
        }),
        Err(_) => 0,
    }
}

/// Two instances in one assignment `mode` (`PARTITION_ASSIGNMENT`, and
/// `GROUP_PROTOCOL` for groups): B joins while A works, A leaves.
async fn rebalance_as_instances_join_and_leave(mode: &[(&'static str, &str)]) {
    psymatch_runtime::telemetry::init("test");
    let bed = TestBed::new().await;
    let (port_a, port_b) = (free_port(), free_port());
    let with_port = |port: u16| {
        let mut vars: Vec<(&str, String)> = mode.iter().map(|(k, v)| (*k, v.to_string())).collect();
        vars.push(("HTTP_LISTEN", format!("127.0.0.1:{port}")));
        vars
    };
    let (stop_a, task_a) = start_with(&bed, &with_port(port_a));
    bed.wait_for("A owns all six partitions", DEADLINE, || async {
        assigned(port_a).await == 6
    })
    .await;
    let first: Vec<Value> = (0..600)
        .map(|i| run_command(&format!("p-{}", i % 10), i))
        .collect();
    bed.publish("matching-commands", &first).await;

    let (stop_b, task_b) = start_with(&bed, &with_port(port_b));
    bed.wait_for("A and B share the partitions", DEADLINE, || async {
        let (a, b) = (assigned(port_a).await, assigned(port_b).await);
        a > 0 && b > 0 && a + b == 6
    })
    .await;
    let second: Vec<Value> = (600..1200)
        .map(|i| run_command(&format!("p-{}", i % 10), i))
        .collect();
    bed.publish("matching-commands", &second).await;
    let rebalances = status(port_a).await;
    assert!(rebalances["assigned_partitions"].as_array().unwrap().len() < 6);

    // A leaves; B takes everything over.
    stop_a.send(()).unwrap();
    task_a.await.unwrap().unwrap();
    bed.wait_for("B owns all six partitions", DEADLINE, || async {
        assigned(port_b).await == 6
    })
    .await;
    let third: Vec<Value> = (1200..1800)
        .map(|i| run_command(&format!("p-{}", i % 10), i))
        .collect();
    bed.publish("matching-commands", &third).await;

    let outputs = bed
        .read_until("matching-events", DEADLINE, |r| distinct_ids(r) >= 1800)
        .await;
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut ids = HashSet::new();
    for record in &outputs {
        if ids.insert(record.envelope.as_ref().unwrap().event_id) {
            let payload = record.payload();
            per_key
                .entry(payload["patient_id"].as_str().unwrap().to_string())
                .or_default()
                .push(payload["candidates_considered"].as_i64().unwrap());
        }
    }
    for (patient, mut seen) in per_key {
        seen.sort();
        assert_eq!(
            seen,
            (1..=180).collect::<Vec<i64>>(),
            "{patient}: every record once"
        );
    }
    assert_eq!(counts(&bed).await.values().sum::<i64>(), 1800);
    stop_b.send(()).unwrap();
    task_b.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_rebalance_when_an_instance_joins_and_when_one_leaves() {
    rebalance_as_instances_join_and_leave(&[("PARTITION_ASSIGNMENT", "lease")]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups_rebalance_when_an_instance_joins_and_when_one_leaves() {
    rebalance_as_instances_join_and_leave(&[
        ("PARTITION_ASSIGNMENT", "group"),
        ("GROUP_PROTOCOL", "consumer"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_cooperative_groups_rebalance_when_an_instance_joins_and_when_one_leaves() {
    rebalance_as_instances_join_and_leave(&[
        ("PARTITION_ASSIGNMENT", "group"),
        ("GROUP_PROTOCOL", "classic"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_status_and_metrics_are_served_and_pass_promtool() {
    let bed = TestBed::new().await;
    let port = free_port();
    let (stop, task) = start_with(&bed, &[("HTTP_LISTEN", format!("127.0.0.1:{port}"))]);
    let records: Vec<Value> = (0..20).map(|i| run_command("p-1", i)).collect();
    bed.publish("matching-commands", &records).await;
    bed.publish_raw("matching-commands", Some("p-1"), Some(b"junk"), &[])
        .await;
    bed.read_until("matching-events", DEADLINE, |r| r.len() >= 20)
        .await;
    bed.read_until("matching-commands.dlq", DEADLINE, |r| !r.is_empty())
        .await;

    let base = format!("http://127.0.0.1:{port}");
    let live = reqwest::get(format!("{base}/health/liveness"))
        .await
        .unwrap();
    assert_eq!(live.status(), 200);
    let ready = reqwest::get(format!("{base}/health/readiness"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let ready: Value = ready.json().await.unwrap();
    assert_eq!(
        ready["checks"],
        json!({"database": "ok", "registry": "ok", "broker": "ok", "partitions": "ok", "access": "ok"})
    );
    let state = status(port).await;
    assert_eq!(state["processor"], "example");
    assert_eq!(state["group"], format!("{}example", bed.prefix));
    assert_eq!(state["assigned_partitions"].as_array().unwrap().len(), 6);
    assert!(
        state["last_error"].as_str().unwrap().contains("PSY-D-001"),
        "{state}"
    );

    let metrics = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "psymatch_records_consumed_total{topic=\"matching-commands\",processor=\"example\"} 21",
        "psymatch_dlq_records_total{code=\"PSY-D-001\",topic=\"matching-commands\",processor=\"example\"} 1",
        "psymatch_process_duration_seconds_count{processor=\"example\"} 20",
        "psymatch_commit_duration_seconds_bucket",
        "psymatch_rebalances_total{kind=\"assign\",processor=\"example\"}",
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in\n{metrics}"
        );
    }
    // The relay publishes after the commit: its counter catches up.
    bed.wait_for("the relay counted its records", DEADLINE, || async {
        let text = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.contains(
            "psymatch_records_produced_total{topic=\"matching-events\",processor=\"example\"} 20",
        )
    })
    .await;
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package) is installed by scripts/install-tools");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_an_older_and_a_newer_schema_both_decode() {
    use psymatch_runtime::schemas::TopicSchema;
    let bed = TestBed::new().await;
    let contracts = psymatch_runtime::contracts::Contracts::embedded();
    let (spec, current) = contracts.topic("matching-commands").unwrap();
    // The newer schema: RunMatching gains a field with a default
    // (BACKWARD-compatible, so the registry accepts it).
    let newer_json = with_payload_field(
        &current.json,
        "RunMatching",
        json!({"name": "priority", "type": "int", "default": 0, "doc": "Newer producers set a priority."}),
    );
    let newer = TopicSchema::new("matching-commands", "newer", &json!([]), &newer_json).unwrap();
    let codec = psymatch_runtime::codec::Codec::new(&bed.registry_url);
    let physical = format!("{}matching-commands", bed.prefix);
    let record = json!({"event_type": "matching.run",
                        "payload": {"run_id": "new", "patient_id": "p-evolve", "priority": 3}});
    let (key, envelope) = psymatch_runtime::envelope::from_json(
        &record,
        &newer,
        &spec.key_fields,
        "newer",
        chrono::Utc::now(),
    )
    .unwrap();
    let bytes = codec
        .encode_with(&physical, &newer, envelope.to_avro(&newer).unwrap())
        .await
        .unwrap();
    let old_id = {
        let (_, envelope) = psymatch_runtime::envelope::from_json(
            &run_command("p-evolve", 1),
            current,
            &spec.key_fields,
            "older",
            chrono::Utc::now(),
        )
        .unwrap();
        codec
            .encode_with(&physical, current, envelope.to_avro(current).unwrap())
            .await
            .unwrap()
    };
    assert_ne!(bytes[1..5], old_id[1..5], "two schema versions, two ids");
    bed.publish_raw("matching-commands", Some(&key), Some(&old_id), &[])
        .await;
    bed.publish_raw("matching-commands", Some(&key), Some(&bytes), &[])
        .await;

    let (stop, task) = start(&bed);
    let outputs = bed
        .read_until("matching-events", DEADLINE, |r| r.len() >= 2)
        .await;
    let counted = considered(&outputs);
    assert_eq!(
        counted,
        vec![1, 2],
        "both versions decoded and processed in order"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_least_once_publishes_directly_without_outbox_or_dedupe() {
    let bed = TestBed::new().await;
    let records: Vec<Value> = (0..100)
        .map(|i| run_command(&format!("p-{}", i % 5), i))
        .collect();
    bed.publish("matching-commands", &records).await;
    let (stop, task) = start_with(&bed, &[("GUARANTEE", "at-least-once".to_string())]);
    let outputs = bed
        .read_until("matching-events", DEADLINE, |r| distinct_ids(r) >= 100)
        .await;
    assert_eq!(outputs.len(), 100);
    assert_eq!(counts(&bed).await.values().sum::<i64>(), 100);
    let (deduped, outbox): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM example.processed_events), (SELECT count(*) FROM example.outbox)",
    )
    .fetch_one(&bed.pool)
    .await
    .unwrap();
    assert_eq!((deduped, outbox), (0, 0), "no dedupe ids, no outbox rows");
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processed_event_ids_older_than_the_retention_are_forgotten() {
    let bed = TestBed::new().await;
    // Ids processed long ago (before the retention) and one just now.
    sqlx::query(
        "INSERT INTO example.processed_events (event_id, processed_at)
         SELECT gen_random_uuid(), now() - interval '30 days' FROM generate_series(1, 5)",
    )
    .execute(&bed.pool)
    .await
    .unwrap();
    bed.publish("matching-commands", &[run_command("p-1", 1)])
        .await;
    let (stop, task) = start_with(&bed, &[("DEDUPE_RETENTION_HOURS", "24".to_string())]);
    bed.read_until("matching-events", DEADLINE, |r| !r.is_empty())
        .await;
    bed.wait_for("old ids removed, the new one kept", DEADLINE, || async {
        let (old, new): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE processed_at < now() - interval '1 day'),
                    count(*) FILTER (WHERE processed_at >= now() - interval '1 day')
               FROM example.processed_events",
        )
        .fetch_one(&bed.pool)
        .await
        .unwrap();
        old == 0 && new == 1
    })
    .await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_arriving_later_on_every_partition_are_processed() {
    let bed = TestBed::new().await;
    let (stop, task) = start(&bed);
    // One record per partition, answered; then one more per partition: the
    // consumer must go on fetching partitions that were idle at their end.
    let patients: Vec<String> = (0..12).map(|i| format!("late-{i}")).collect();
    for round in 0..2 {
        let commands: Vec<Value> = patients
            .iter()
            .enumerate()
            .map(|(i, p)| run_command(p, round * 100 + i))
            .collect();
        bed.publish("matching-commands", &commands).await;
        let wanted = patients.len() * (round + 1);
        bed.read_until("matching-events", DEADLINE, |records| {
            distinct_ids(records) >= wanted
        })
        .await;
    }
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_records_of_the_same_shape_keep_the_branch_they_were_written_with() {
    use psymatch_runtime::schemas::TopicSchema;
    // geocoding.geocode_address and geocoding.forget_address carry the same
    // fields; only the record name tells them apart.
    let bed = TestBed::new().await;
    let contracts = psymatch_runtime::contracts::Contracts::embedded();
    let (spec, current) = contracts.topic("geocoding-requests").unwrap();
    // The newer schema: GeocodeAddress gains a field with a default.
    let newer_json = with_payload_field(
        &current.json,
        "GeocodeAddress",
        json!({"name": "language", "type": "string", "default": "de", "doc": "Newer producers ask for a language."}),
    );
    let newer = TopicSchema::new("geocoding-requests", "newer", &json!([]), &newer_json).unwrap();
    let codec = psymatch_runtime::codec::Codec::new(&bed.registry_url);
    let physical = format!("{}geocoding-requests", bed.prefix);
    let address =
        json!({"street": "Teststraße", "house_number": "1", "postcode": "10115", "city": "Berlin"});
    for writer in [current, &newer] {
        for (event_type, expected) in [
            ("geocoding.geocode_address", "GeocodeAddress"),
            ("geocoding.forget_address", "ForgetAddress"),
        ] {
            let record = json!({"event_type": event_type,
                                "payload": {"request_id": "r-1", "address": address}});
            let (_, envelope) = psymatch_runtime::envelope::from_json(
                &record,
                writer,
                &spec.key_fields,
                "test",
                chrono::Utc::now(),
            )
            .unwrap();
            let bytes = codec
                .encode_with(&physical, writer, envelope.to_avro(writer).unwrap())
                .await
                .unwrap();
            let value = codec.decode_as(&bytes, &current.schema).await.unwrap();
            let branch = psymatch_runtime::envelope::payload_branch(&value).unwrap() as usize;
            let apache_avro::Schema::Record(record) = &current.schema else {
                panic!("an envelope is a record");
            };
            let payload = record.fields.iter().find(|f| f.name == "payload").unwrap();
            let apache_avro::Schema::Union(union) = &payload.schema else {
                panic!("the payload is a union");
            };
            let name = union.variants()[branch].name().unwrap().name().to_string();
            let newer_writer = std::ptr::eq(writer, &newer);
            assert_eq!(
                name, expected,
                "{event_type} written by a newer producer: {newer_writer}"
            );
        }
    }
}
