//! Faults: processes killed with SIGKILL at random moments, instances
//! joining and leaving, broker and PostgreSQL restarts. Each ends with every
//! input applied exactly once and every output present.

use psymatch_runtime::testing::{KillOnDrop, OwnBroker, OwnPostgres, Received, TestBed};
use rand::Rng;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const KEYS: usize = 100;

fn commands(total: usize, offset: usize) -> Vec<Value> {
    (offset..offset + total)
        .map(|i| {
            json!({"event_type": "matching.run",
                   "payload": {"run_id": format!("run-{i}"), "patient_id": format!("p-{}", i % KEYS)}})
        })
        .collect()
}

fn spawn_example(bed: &TestBed, log: &std::path::Path) -> KillOnDrop {
    spawn_example_with(bed, log, &[])
}

/// The example processor as a process, with `vars` on top of the bed's.
fn spawn_example_with(bed: &TestBed, log: &std::path::Path, vars: &[(&str, String)]) -> KillOnDrop {
    let mut env = bed.env("example");
    env.push(("RUST_LOG".into(), "info".into()));
    env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.clone())));
    KillOnDrop::spawn(env!("CARGO_BIN_EXE_psymatch-example"), &env, log)
}

/// Publishes `inputs` commands in chunks of `chunk` on a task of its own,
/// while the test does its faults.
fn publish_in_chunks(
    bed: &std::sync::Arc<TestBed>,
    inputs: usize,
    chunk: usize,
) -> tokio::task::JoinHandle<()> {
    let records = commands(inputs, 0);
    let bed = bed.clone();
    tokio::spawn(async move {
        for part in records.chunks(chunk) {
            bed.publish("matching-commands", part).await;
        }
    })
}

/// The partitions an instance reports as assigned (0 while it does not answer).
async fn assigned(port: u16) -> usize {
    let status = match reqwest::get(format!("http://127.0.0.1:{port}/health/status")).await {
        Ok(response) => response.json::<Value>().await.ok(),
        Err(_) => None,
    };
    status.map_or(0, |s| {
        s["assigned_partitions"].as_array().map_or(0, Vec::len)
    })
}

async fn total(bed: &TestBed) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>("SELECT sum(count)::bigint FROM example.counts")
        .fetch_one(&bed.pool)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Checks the end state after `inputs` records: state applied exactly once
/// per input, outputs complete, duplicates (same event id) identical.
async fn assert_exactly_once(bed: &TestBed, inputs: usize) -> Vec<Received> {
    let per_key: Vec<(String, i64)> =
        sqlx::query_as("SELECT key, count FROM example.counts ORDER BY key")
            .fetch_all(&bed.pool)
            .await
            .unwrap();
    assert_eq!(per_key.len(), KEYS);
    for (key, count) in &per_key {
        assert_eq!(*count as usize, inputs / KEYS, "{key}");
    }
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM example.processed_events")
        .fetch_one(&bed.pool)
        .await
        .unwrap();
    assert_eq!(processed as usize, inputs);
    let distinct = |records: &[Received]| {
        records
            .iter()
            .filter_map(|r| r.envelope.as_ref().map(|e| e.event_id))
            .collect::<std::collections::HashSet<_>>()
            .len()
    };
    let outputs = bed
        .read_until("matching-events", Duration::from_secs(120), |r| {
            distinct(r) >= inputs
        })
        .await;
    let mut by_id: HashMap<uuid::Uuid, Value> = HashMap::new();
    let mut counts_per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for record in &outputs {
        let envelope = record.envelope.as_ref().expect("outputs decode");
        let payload = record.payload();
        match by_id.get(&envelope.event_id) {
            Some(first) => assert_eq!(
                first, &payload,
                "a duplicate event id carries the same record"
            ),
            None => {
                by_id.insert(envelope.event_id, payload.clone());
                counts_per_key
                    .entry(payload["patient_id"].as_str().unwrap().to_string())
                    .or_default()
                    .push(payload["candidates_considered"].as_i64().unwrap());
            }
        }
    }
    assert_eq!(
        by_id.len(),
        inputs,
        "every input's output is present once by event id"
    );
    for (key, mut seen) in counts_per_key {
        seen.sort();
        let expected: Vec<i64> = (1..=(inputs / KEYS) as i64).collect();
        assert_eq!(seen, expected, "{key}: each count exactly once");
    }
    outputs
}

/// One instance killed again and again, each time within a second of its
/// start: with leases its successor takes the partitions at once. (A group
/// member killed without leaving holds its partitions until its session
/// times out, so consumer groups are shown with two replicas below.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_and_doubles_nothing() {
    sigkill_at_random_moments(&[]).await;
}

/// The same with the relay publishing each pass in one Kafka transaction: a
/// relay killed mid-pass leaves an open transaction that its successor
/// (same transactional id) aborts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_with_a_transactional_relay() {
    sigkill_at_random_moments(&[("RELAY", "transactional".to_string())]).await;
}

async fn sigkill_at_random_moments(vars: &[(&str, String)]) {
    let bed = std::sync::Arc::new(TestBed::new().await);
    let log = std::env::temp_dir().join(format!("{}example.log", bed.prefix));
    let inputs = 10_000;
    let publisher = publish_in_chunks(&bed, inputs, 500);
    let mut lease = vec![("PARTITION_ASSIGNMENT", "lease".to_string())];
    lease.extend(vars.iter().cloned());
    let mut child = spawn_example_with(&bed, &log, &lease);
    let mut kills = 0;
    let mut rng = rand::rng();
    while kills < 20 {
        let pause = rng.random_range(50..600);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        child.0.kill().expect("SIGKILL");
        child.0.wait().unwrap();
        kills += 1;
        child = spawn_example_with(&bed, &log, &lease);
    }
    publisher.await.unwrap();
    bed.wait_for("every input applied", Duration::from_secs(180), || async {
        total(&bed).await >= inputs as i64
    })
    .await;
    let outputs = assert_exactly_once(&bed, inputs).await;
    // Offsets the output topic used: its records, plus, when the relay is
    // transactional, a commit or abort marker per transaction (and the
    // records of aborted ones, which consumers never see).
    let offsets = offsets_used(&bed, "matching-events");
    let transactional = vars
        .iter()
        .any(|(k, v)| *k == "RELAY" && v == "transactional");
    if transactional {
        assert!(
            offsets > outputs.len() as i64,
            "no transaction markers: {offsets}"
        );
    } else {
        assert_eq!(offsets, outputs.len() as i64, "no offsets but records");
    }
    eprintln!(
        "{kills} kills; {} output records for {inputs} inputs ({} duplicates dropped by id); {offsets} offsets",
        outputs.len(),
        outputs.len() - inputs
    );
    drop(child);
}

/// The sum of a topic's high watermarks (it starts empty).
fn offsets_used(bed: &TestBed, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let physical = format!("{}{topic}", bed.prefix);
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bed.brokers)
        .create()
        .unwrap();
    let metadata = client
        .fetch_metadata(Some(&physical), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| {
            client
                .fetch_watermarks(&physical, p.id(), Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}

/// Two replicas in a consumer group of `protocol`; the one that holds
/// partitions and is processing is killed with SIGKILL mid-stream. The other
/// takes its partitions over once the group's session timeout (10 s) has
/// passed, and every input is applied once.
async fn a_group_member_killed_mid_stream_is_taken_over(protocol: &str) {
    let bed = std::sync::Arc::new(TestBed::new().await);
    let log = std::env::temp_dir().join(format!("{}example.log", bed.prefix));
    let (port_a, port_b) = (
        psymatch_runtime::testing::free_port(),
        psymatch_runtime::testing::free_port(),
    );
    let vars = |port: u16| {
        [
            ("PARTITION_ASSIGNMENT", "group".to_string()),
            ("GROUP_PROTOCOL", protocol.to_string()),
            ("HTTP_LISTEN", format!("127.0.0.1:{port}")),
            // Small batches: the kill finds work in flight.
            ("BATCH_SIZE", "50".to_string()),
        ]
    };
    let mut a = spawn_example_with(&bed, &log, &vars(port_a));
    let _b = spawn_example_with(&bed, &log, &vars(port_b));
    let wait = Duration::from_secs(60);
    bed.wait_for("A and B share the six partitions", wait, || async {
        let (a, b) = (assigned(port_a).await, assigned(port_b).await);
        a > 0 && b > 0 && a + b == 6
    })
    .await;
    let inputs = 6_000;
    let publisher = publish_in_chunks(&bed, inputs, 200);
    bed.wait_for("processing under way", wait, || async {
        total(&bed).await > 500
    })
    .await;
    let held_by_a = assigned(port_a).await;
    a.0.kill().expect("SIGKILL");
    a.0.wait().unwrap();
    let killed = std::time::Instant::now();
    bed.wait_for("B owns all six partitions", wait, || async {
        assigned(port_b).await == 6
    })
    .await;
    let takeover = killed.elapsed();
    publisher.await.unwrap();
    bed.wait_for("every input applied", Duration::from_secs(120), || async {
        total(&bed).await >= inputs as i64
    })
    .await;
    assert_exactly_once(&bed, inputs).await;
    eprintln!(
        "group protocol {protocol}: B took over A's {held_by_a} partitions {:.1} s after the SIGKILL",
        takeover.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_protocol_member_killed_mid_stream_is_taken_over() {
    a_group_member_killed_mid_stream_is_taken_over("consumer").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_group_member_killed_mid_stream_is_taken_over() {
    a_group_member_killed_mid_stream_is_taken_over("classic").await;
}

/// Runs the example in-process while `fault` strikes mid-stream; 2,000
/// records before, 2,000 after.
async fn survive(bed: &TestBed, fault: impl std::future::Future<Output = ()>) {
    let inputs = 4_000;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let runtime = tokio::spawn(psymatch_runtime::app::run_with(
        psymatch_runtime::example::Counter,
        bed.config("example"),
        async move {
            let _ = stopped.await;
        },
    ));
    bed.publish("matching-commands", &commands(inputs / 2, 0))
        .await;
    bed.wait_for("processing started", Duration::from_secs(60), || async {
        total(bed).await > 0
    })
    .await;
    fault.await;
    bed.publish("matching-commands", &commands(inputs / 2, inputs / 2))
        .await;
    bed.wait_for("every input applied", Duration::from_secs(120), || async {
        total(bed).await >= inputs as i64
    })
    .await;
    assert_exactly_once(bed, inputs).await;
    stop.send(()).unwrap();
    runtime.await.unwrap().unwrap();
}

/// A broker of the test's own (to kill), with the stack's PostgreSQL.
async fn on_own_broker() -> (OwnBroker, TestBed) {
    let broker = OwnBroker::start();
    let bed = TestBed::with(
        &broker.address(),
        &psymatch_runtime::testing::stack_env("DATABASE_URL"),
    )
    .await;
    (broker, bed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_recovers_without_a_person() {
    let (mut broker, bed) = on_own_broker().await;
    survive(&bed, async {
        broker.restart();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_mid_stream_recovers_without_a_person() {
    let postgres = OwnPostgres::start();
    let bed = TestBed::with(
        &psymatch_runtime::testing::stack_env("KAFKA_BROKERS"),
        &postgres.url(),
    )
    .await;
    survive(&bed, async {
        postgres.pg_ctl("restart");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_commits_and_exits_promptly() {
    let bed = TestBed::new().await;
    let log = std::env::temp_dir().join(format!("{}example.log", bed.prefix));
    bed.publish("matching-commands", &commands(1_000, 0)).await;
    let mut child = spawn_example(&bed, &log);
    bed.wait_for("processing started", Duration::from_secs(60), || async {
        total(&bed).await > 0
    })
    .await;
    let status = child.terminate(Duration::from_secs(15)).await;
    assert!(status.success(), "exit status {status}");
    // Whatever it committed before exiting was published: the outbox is empty.
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM example.outbox")
        .fetch_one(&bed.pool)
        .await
        .unwrap();
    assert_eq!(pending, 0, "the relay drained the outbox before exit");
    // A restart finishes the rest, each record once.
    let _restarted = spawn_example(&bed, &log);
    bed.wait_for("every input applied", Duration::from_secs(60), || async {
        total(&bed).await >= 1_000
    })
    .await;
    assert_exactly_once(&bed, 1_000).await;
}

/// A processor started while its broker is down says so in its log, is not
/// ready, and becomes ready and processes once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_started_while_the_broker_is_down_waits_and_then_works() {
    let (mut broker, bed) = on_own_broker().await;
    broker.kill();
    let log = std::env::temp_dir().join(format!("{}example.log", bed.prefix));
    let port = psymatch_runtime::testing::free_port();
    let _child = spawn_example_with(&bed, &log, &[("HTTP_LISTEN", format!("127.0.0.1:{port}"))]);
    let wait = Duration::from_secs(60);
    bed.wait_for("the log says it waits for the broker", wait, || async {
        std::fs::read_to_string(&log)
            .is_ok_and(|text| text.contains("waiting for the Kafka broker"))
    })
    .await;
    let readiness = || async {
        reqwest::get(format!("http://127.0.0.1:{port}/health/readiness"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    };
    assert_eq!(readiness().await, 503, "not ready without a broker");
    broker.resume();
    bed.wait_for("ready once the broker is back", wait, || async {
        readiness().await == 200
    })
    .await;
    bed.publish("matching-commands", &commands(200, 0)).await;
    bed.wait_for("every input applied", wait, || async {
        total(&bed).await >= 200
    })
    .await;
    assert_exactly_once(&bed, 200).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the Kafka broker answers; consuming"),
        "{text}"
    );
}
