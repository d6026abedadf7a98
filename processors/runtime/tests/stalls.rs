//! Records that once stopped a partition for good, against the real
//! broker, registry and PostgreSQL with the example processor: text with
//! a NUL byte, a length prefix that claims half a gigabyte, a record the
//! database refuses in a batch hook, and a partition that keeps failing.
//! Each must cost one dead letter (or one red readiness while it lasts),
//! never the records behind it.

use psymatch_runtime::example::Counter;
use psymatch_runtime::testing::{Received, Running, TestBed, free_port, metric};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn run_command(patient: &str, run: &str) -> Value {
    json!({"event_type": "matching.run", "payload": {"run_id": run, "patient_id": patient}})
}

/// The example processor in this process, with `vars` over the bed's
/// settings and its surface on `port`.
fn start(bed: &TestBed, port: u16, vars: &[(&str, &str)]) -> Running {
    let mut env: BTreeMap<String, String> = bed.env("example").into_iter().collect();
    env.insert("HTTP_LISTEN".into(), format!("127.0.0.1:{port}"));
    for (name, value) in vars {
        env.insert(name.to_string(), value.to_string());
    }
    let config = psymatch_runtime::config::RuntimeConfig::from_vars("example", &env).unwrap();
    Running::start(Counter, config)
}

/// A matching-commands record in the wire format.
async fn encode(bed: &TestBed, record: &Value) -> Vec<u8> {
    bed.encode("matching-commands", record).await.2
}

/// The dead letter whose probe header is `probe`.
fn letter<'a>(dead: &'a [Received], probe: &str) -> &'a Received {
    dead.iter()
        .find(|r| r.headers.get("probe").map(String::as_str) == Some(probe))
        .unwrap_or_else(|| panic!("{probe} is not in the dead-letter topic"))
}

/// Peak resident memory of this process in KiB (`VmHWM`).
fn peak_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The example's answer for `patient`, once per good record.
fn answered(outputs: &[Received], patient: &str) -> usize {
    outputs
        .iter()
        .filter(|r| r.payload()["patient_id"] == patient)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_text_and_a_lying_length_are_dead_lettered_and_the_partition_flows_on() {
    let bed = TestBed::new().await;
    let key = "p-nul";
    // A NUL in the run id: PostgreSQL refuses it for good (the processor
    // would store it), so it must be refused at the edge.
    let nul = encode(&bed, &run_command(key, "run-\u{0}-x")).await;
    // The run id's length prefix rewritten to claim 500,000,000 bytes in
    // a record of a few hundred.
    let marker = "LENGTH-PROBE-0123456789";
    let lying = psymatch_runtime::testing::lie_about_length(
        encode(&bed, &run_command(key, marker)).await,
        marker,
        500_000_000,
    );
    assert!(lying.len() < 400, "{} bytes", lying.len());

    // A NUL in the key (the patient id): even the dead letter must not
    // fail on it (the outbox keeps keys as text).
    let nul_key = "p-\u{0}-key";
    let keyed = encode(&bed, &run_command(nul_key, "run-k")).await;

    bed.publish("matching-commands", &[run_command(key, "before")])
        .await;
    for (probe, record_key, value) in [
        ("nul", key, &nul),
        ("lying", key, &lying),
        ("nul-key", nul_key, &keyed),
    ] {
        bed.publish_raw(
            "matching-commands",
            Some(record_key),
            Some(value),
            &[("probe".into(), probe.into())],
        )
        .await;
    }
    bed.publish("matching-commands", &[run_command(key, "after")])
        .await;

    let before = peak_kib();
    let port = free_port();
    let running = start(&bed, port, &[]);
    let dead = bed
        .read_until("matching-commands.dlq", DEADLINE, |r| r.len() >= 3)
        .await;
    let outputs = bed
        .read_until("matching-events", DEADLINE, |r| answered(r, key) >= 2)
        .await;

    let nul = letter(&dead, "nul");
    assert_eq!(nul.headers["psymatch.error.code"], "PSY-D-007");
    assert_eq!(
        nul.headers["psymatch.error.message"],
        "payload.run_id contains the control character U+0000"
    );
    let keyed = letter(&dead, "nul-key");
    assert_eq!(keyed.headers["psymatch.error.code"], "PSY-D-007");
    assert_eq!(
        keyed.headers["psymatch.error.message"],
        "the key contains the control character U+0000"
    );
    assert_eq!(keyed.key.as_deref(), Some("p-\u{FFFD}-key"));
    assert_eq!(keyed.headers["psymatch.source.key_base64"], "cC0ALWtleQ==");
    let lying = letter(&dead, "lying");
    assert_eq!(lying.headers["psymatch.error.code"], "PSY-D-003");
    // Both good records went through, the one behind the poison included.
    assert_eq!(answered(&outputs, key), 2);
    let counted: Vec<i64> = outputs
        .iter()
        .map(|r| r.payload()["candidates_considered"].as_i64().unwrap())
        .collect();
    assert_eq!(counted, vec![1, 2]);
    // The decoder's bound is a few records, not the library's 512 MB,
    // and the lying record cost no memory to speak of.
    let bound = apache_avro::util::max_allocation_bytes(usize::MAX);
    assert!(bound <= 4 << 20, "allocation bound {bound}");
    let grown = peak_kib().saturating_sub(before);
    assert!(grown < 64 * 1024, "peak memory grew by {grown} KiB");
    assert_eq!(
        metric(port, "psymatch_dlq_records_total", &["code=\"PSY-D-007\""]).await,
        2.0
    );
    running.stop().await;
}

/// 20,000 characters that no compression shortens much: too large for a
/// btree index row (SQLSTATE 54000), so PostgreSQL refuses to store it as
/// the example's key, in its batch hook.
fn unindexable() -> String {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    (0..20_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
            alphabet[(seed % alphabet.len() as u64) as usize] as char
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_database_refuses_is_narrowed_down_to_its_one_record() {
    let bed = TestBed::new().await;
    let poison = unindexable();
    // The poison first, then good records on every partition: the
    // poison's partition has a batch of several records to narrow down.
    bed.publish_raw(
        "matching-commands",
        Some(&poison),
        Some(&encode(&bed, &run_command(&poison, "poison")).await),
        &[("probe".into(), "unindexable".into())],
    )
    .await;
    let good: Vec<String> = (0..60).map(|i| format!("p-good-{i}")).collect();
    let records: Vec<Value> = good
        .iter()
        .map(|p| run_command(p, &format!("run-{p}")))
        .collect();
    bed.publish("matching-commands", &records).await;

    let port = free_port();
    let running = start(&bed, port, &[]);
    let dead = bed
        .read_until("matching-commands.dlq", DEADLINE, |r| !r.is_empty())
        .await;
    let outputs = bed
        .read_until("matching-events", DEADLINE, |r| {
            good.iter().all(|p| answered(r, p) >= 1)
        })
        .await;

    let letter = letter(&dead, "unindexable");
    assert_eq!(letter.headers["psymatch.error.code"], "PSY-V-006");
    let reason = &letter.headers["psymatch.error.message"];
    assert!(reason.contains("SQLSTATE 54000"), "{reason}");
    assert!(!reason.contains(&poison[..40]), "the value is not quoted");
    // Every good record counted once, none of the poison's answers kept.
    for patient in &good {
        assert_eq!(answered(&outputs, patient), 1, "{patient}");
    }
    assert_eq!(answered(&outputs, &poison), 0);
    let counts: i64 = bed
        .count("SELECT count(*) FROM example.counts WHERE count = 1")
        .await;
    assert_eq!(counts, good.len() as i64);
    assert!(
        metric(port, "psymatch_retries_total", &["kind=\"split\""]).await >= 1.0,
        "the batch was split"
    );
    running.stop().await;
}

/// Readiness as the surface answers it: (status, body).
async fn readiness(port: u16) -> (u16, Value) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}/health/readiness"))
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_that_keeps_failing_turns_readiness_red_until_it_moves_on() {
    let bed = TestBed::new().await;
    let port = free_port();
    let running = start(
        &bed,
        port,
        &[("STUCK_AFTER_SECS", "1"), ("RETRY_MAX_BACKOFF_MS", "200")],
    );
    bed.publish("matching-commands", &[run_command("p-first", "r-1")])
        .await;
    bed.read_until("matching-events", DEADLINE, |r| !r.is_empty())
        .await;
    assert_eq!(readiness(port).await.0, 200);

    // The example's table gone: every batch fails with an error worth
    // retrying (not the record's fault), so the partition waits.
    sqlx::query("ALTER TABLE example.counts RENAME TO counts_away")
        .execute(&bed.pool)
        .await
        .unwrap();
    bed.publish("matching-commands", &[run_command("p-second", "r-2")])
        .await;
    bed.wait_for("readiness turns red", DEADLINE, || async {
        readiness(port).await.0 == 503
    })
    .await;
    let (_, body) = readiness(port).await;
    let partitions = body["checks"]["partitions"].as_str().unwrap();
    assert!(
        partitions.starts_with("matching-commands/")
            && partitions.contains("has failed for")
            && partitions.contains("runbook PartitionStuck"),
        "{body}"
    );
    assert_eq!(body["checks"]["database"], "ok", "{body}");
    let since = metric(
        port,
        "psymatch_partition_failing_since_timestamp_seconds",
        &[],
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(since > now - 60.0 && since <= now, "{since} against {now}");
    assert!(metric(port, "psymatch_errors_total", &["code=\"PSY-T-001\""]).await >= 1.0);

    sqlx::query("ALTER TABLE example.counts_away RENAME TO counts")
        .execute(&bed.pool)
        .await
        .unwrap();
    bed.read_until("matching-events", DEADLINE, |r| {
        answered(r, "p-second") == 1
    })
    .await;
    bed.wait_for("readiness turns green again", DEADLINE, || async {
        readiness(port).await.0 == 200
    })
    .await;
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        !text.contains("psymatch_partition_failing_since_timestamp_seconds{"),
        "no series once it moved on"
    );
    running.stop().await;
}
