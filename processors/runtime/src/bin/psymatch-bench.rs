//! `psymatch-bench`: the runtime's throughput against its limit, in one run,
//! on the same broker and the same records.
//!
//! Needs the local stack (`scripts/stack up`, `. .stack/env`). Publishes N
//! `matching.run` commands (default 100,000) once, then runs each path in a
//! process of its own over them and prints a table:
//!
//! - `passthrough`: raw rdkafka consume -> produce of the bytes (the limit);
//! - `at-least-once`: the runtime (`GUARANTEE=at-least-once`) with a
//!   processor that only emits: Avro decode with this build's reader schema,
//!   key and envelope checks, output encode, produce, offsets in PostgreSQL
//!   per batch after the broker's acknowledgement;
//! - `effectively-once-stateless`: the runtime with a processor that only
//!   emits: offsets, dedupe and outbox in PostgreSQL per batch, the relay;
//! - `effectively-once-transactional`: the same with each relay pass in one
//!   Kafka transaction (`RELAY=transactional`);
//! - `effectively-once`: the stateless path with the example processor, which also
//!   writes its state (one upsert per record);
//! - `kafka-streams-at-least-once`, `kafka-streams-exactly-once-v2`: the
//!   peer, a Kafka Streams 4.4 application doing the stateless work
//!   (`bench/kafka-streams`, built with Maven on the first run), with
//!   `processing.guarantee` at_least_once and exactly_once_v2.
//!
//! Usage: `psymatch-bench [RECORDS] [--secured]`; `PSYMATCH_BENCH_PHASES=a,b`
//! runs only those phases. `--secured` runs them again on the secured
//! three-node cluster (`scripts/kafka-cluster`: SASL_SSL, three replicas,
//! two to acknowledge) and prints each path's records/s on both and the
//! ratio: what TLS, SASL and replication cost.

use psymatch_runtime::app::run_with;
use psymatch_runtime::example::Counter;
use psymatch_runtime::processor::{Context, Incoming, ProcessError, Processor};
use psymatch_runtime::testing::TestBed;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde_json::json;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

const PHASES: [&str; 7] = [
    "passthrough",
    "at-least-once",
    "effectively-once-stateless",
    "effectively-once-transactional",
    "effectively-once",
    "kafka-streams-at-least-once",
    "kafka-streams-exactly-once-v2",
];

/// The peer's Maven project.
const STREAMS_PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../bench/kafka-streams");

/// The example without its state write: what the runtime itself costs.
struct Stateless;

impl Processor for Stateless {
    fn name(&self) -> &'static str {
        "example"
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec!["matching-commands"]
    }

    async fn process(&self, ctx: &mut Context<'_>, record: &Incoming) -> Result<(), ProcessError> {
        let payload =
            json!({"patient_id": record.payload["patient_id"], "candidates_considered": 1});
        ctx.emit("matching-events", "matching.search_exhausted", payload)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--phase") {
        return phase(&args[2]).await;
    }
    let secured = args.iter().any(|a| a == "--secured");
    let records: usize = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(100_000);
    let chosen: Vec<String> = std::env::var("PSYMATCH_BENCH_PHASES")
        .map(|list| list.split(',').map(str::to_string).collect())
        .unwrap_or_else(|_| {
            PHASES
                .iter()
                // The Kafka Streams peer speaks plaintext only.
                .filter(|p| !secured || !p.starts_with("kafka-streams"))
                .map(|p| p.to_string())
                .collect()
        });
    if chosen.iter().any(|p| p.starts_with("kafka-streams")) {
        build_streams_peer()?;
    }
    let bed = TestBed::new().await;
    let rows = run_phases(&bed, records, &chosen).await?;
    print_rows(&rows);
    if secured {
        // The same phases on the secured three-node cluster (SASL_SSL,
        // three replicas, two to acknowledge), in the same run.
        let cluster = TestBed::secured().await;
        let secured_rows = run_phases(&cluster, records, &chosen).await?;
        println!();
        println!(
            "On the secured three-node cluster (SASL_SSL/SCRAM-SHA-512, replication 3, min.insync.replicas 2, acks=all):"
        );
        print_rows(&secured_rows);
        println!();
        println!(
            "| path | plaintext, one broker: records/s | secured cluster: records/s | secured / plaintext |"
        );
        println!("|---|---|---|---|");
        for row in &rows {
            let phase = row["phase"].as_str().unwrap_or("?");
            let plain = row["per_second"].as_f64().unwrap_or(f64::NAN);
            let other = secured_rows
                .iter()
                .find(|r| r["phase"] == phase)
                .and_then(|r| r["per_second"].as_f64())
                .unwrap_or(f64::NAN);
            println!(
                "| {phase} | {plain:.0} | {other:.0} | {:.2} |",
                other / plain
            );
        }
    }
    Ok(())
}

/// Publishes `records` commands in `bed` and runs each chosen phase over
/// them in a process of its own; each phase's report.
async fn run_phases(
    bed: &TestBed,
    records: usize,
    chosen: &[String],
) -> anyhow::Result<Vec<serde_json::Value>> {
    eprintln!(
        "publishing {records} records to {}matching-commands ...",
        bed.prefix
    );
    publish(bed, records).await?;
    let mut rows = Vec::new();
    for name in PHASES.iter().filter(|p| chosen.iter().any(|c| c == *p)) {
        eprintln!("running {name} ...");
        let mut command = match name.strip_prefix("kafka-streams-") {
            Some(guarantee) => {
                let mut java = std::process::Command::new("java");
                java.arg("-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")
                    .args(["-cp", &format!("{STREAMS_PEER}/target/kafka-streams-bench-1.0.jar:{STREAMS_PEER}/target/lib/*")])
                    .arg("org.psymatch.bench.StreamsPeer")
                    .env("GUARANTEE", guarantee.replace('-', "_"))
                    .env("APPLICATION_ID", format!("{}{name}", bed.prefix));
                java
            }
            None => {
                let mut own = std::process::Command::new(std::env::current_exe()?);
                own.args(["--phase", name]);
                own
            }
        };
        let output = command
            .envs(bed.env("example"))
            .env("BENCH_RECORDS", records.to_string())
            .env("BENCH_PREFIX", &bed.prefix)
            .env("CONSUMER_GROUP", format!("{}{name}", bed.prefix))
            .env("RUST_LOG", "warn")
            .stderr(std::process::Stdio::inherit())
            .output()?;
        anyhow::ensure!(output.status.success(), "phase {name} failed");
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        rows.push(report);
    }
    Ok(rows)
}

/// The table of one environment's phases, and against Kafka Streams.
fn print_rows(rows: &[serde_json::Value]) {
    let rate = |phase: &str| {
        rows.iter()
            .find(|r| r["phase"] == phase)
            .and_then(|r| r["per_second"].as_f64())
    };
    let limit = rate("passthrough").unwrap_or(f64::NAN);
    println!();
    println!("| path | records | seconds | records/s | ratio to passthrough | peak RSS (MiB) |");
    println!("|---|---|---|---|---|---|");
    for row in rows {
        let per_second = row["per_second"].as_f64().unwrap_or(0.0);
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {:.1} |",
            row["phase"].as_str().unwrap_or("?"),
            row["records"],
            row["seconds"].as_f64().unwrap_or(0.0),
            per_second,
            per_second / limit,
            row["peak_rss_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        );
    }
    let rss = |phase: &str| {
        rows.iter()
            .find(|r| r["phase"] == phase)
            .and_then(|r| r["peak_rss_kib"].as_f64())
    };
    let mut header = false;
    for (ours, theirs, goal) in [
        ("at-least-once", "kafka-streams-at-least-once", 1.5),
        (
            "effectively-once-stateless",
            "kafka-streams-exactly-once-v2",
            1.0,
        ),
    ] {
        if !header && rate(theirs).is_some() {
            println!();
            println!("| against Kafka Streams | ratio | goal |");
            println!("|---|---|---|");
            header = true;
        }
        if let (Some(a), Some(b)) = (rate(ours), rate(theirs)) {
            println!("| {ours} records/s / {theirs} | {:.2} | >= {goal} |", a / b);
        }
        if let (Some(a), Some(b)) = (rss(ours), rss(theirs)) {
            println!("| {ours} peak RSS / {theirs} | {:.2} | < 0.33 |", a / b);
        }
    }
}

/// Builds the Kafka Streams peer (Maven; incremental after the first run).
fn build_streams_peer() -> anyhow::Result<()> {
    eprintln!("building the Kafka Streams peer (mvn package in {STREAMS_PEER}) ...");
    let output = std::process::Command::new("mvn")
        .args(["-q", "-B", "package", "-f"])
        .arg(format!("{STREAMS_PEER}/pom.xml"))
        .output()?;
    // Maven's output (terminal escapes even when quiet) only when it failed.
    anyhow::ensure!(
        output.status.success(),
        "building the Kafka Streams peer failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Publishes `records` commands over 1,000 patients, encoded once each.
async fn publish(bed: &TestBed, records: usize) -> anyhow::Result<()> {
    let chunk = 10_000;
    let mut start = 0;
    while start < records {
        let batch: Vec<serde_json::Value> = (start..(start + chunk).min(records))
            .map(|i| {
                json!({"event_type": "matching.run",
                       "payload": {"run_id": format!("run-{i}"), "patient_id": format!("p-{}", i % 1000)}})
            })
            .collect();
        bed.publish("matching-commands", &batch).await;
        start += chunk;
    }
    Ok(())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn report(phase: &str, records: usize, elapsed: Duration) {
    let seconds = elapsed.as_secs_f64();
    println!(
        "{}",
        json!({"phase": phase, "records": records, "seconds": seconds,
               "per_second": records as f64 / seconds, "peak_rss_kib": peak_rss_kib()})
    );
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"))
}

/// A consumer assigned to every partition of the input from the beginning.
fn input_consumer(brokers: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = psymatch_runtime::broker::client(brokers)
        .set("group.id", format!("bench-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("fetch.max.bytes", "52428800")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut assignment = TopicPartitionList::new();
    for partition in metadata.topics()[0].partitions() {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    Ok(consumer)
}

fn output_producer(brokers: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(psymatch_runtime::broker::client(brokers)
        .set("linger.ms", "5")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    value: &[u8],
) {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, returned)) => {
                // Queue full: let librdkafka deliver, then retry.
                producer.poll(Duration::from_millis(5));
                record = returned;
            }
        }
    }
}

async fn phase(name: &str) -> anyhow::Result<()> {
    let records: usize = env("BENCH_RECORDS").parse()?;
    let prefix = env("BENCH_PREFIX");
    let brokers = env("KAFKA_BROKERS");
    // TLS and SASL on the secured cluster, for the raw clients too.
    psymatch_runtime::broker::use_settings(
        &brokers,
        psymatch_runtime::broker::Settings::from_env()?,
    );
    let input = format!("{prefix}matching-commands");
    let output = format!("{prefix}matching-events");
    match name {
        "passthrough" => {
            let consumer = input_consumer(&brokers, &input)?;
            let producer = output_producer(&brokers)?;
            let mut seen = 0;
            let mut started = None;
            while seen < records {
                if let Some(message) = consumer.poll(Duration::from_millis(100)) {
                    let message = message?;
                    started.get_or_insert_with(Instant::now);
                    send(
                        &producer,
                        &output,
                        message.key().unwrap_or_default(),
                        message.payload().unwrap_or_default(),
                    );
                    seen += 1;
                }
            }
            producer.flush(Duration::from_secs(60))?;
            report(name, records, started.expect("records were read").elapsed());
        }
        "at-least-once"
        | "effectively-once"
        | "effectively-once-stateless"
        | "effectively-once-transactional" => {
            let mut vars: std::collections::BTreeMap<String, String> = std::env::vars().collect();
            if name == "at-least-once" {
                vars.insert("GUARANTEE".into(), "at-least-once".into());
            }
            if name == "effectively-once-transactional" {
                vars.insert("RELAY".into(), "transactional".into());
            }
            let config = psymatch_runtime::config::RuntimeConfig::from_vars("example", &vars)?;
            // The bed migrated the database; the phase runs as the
            // processor's own role, which may not migrate.
            let pool = psymatch_runtime::db::connect(&config.database_url).await?;
            // Each phase starts from empty state: no offsets, no ids seen.
            sqlx::query(
                "TRUNCATE example.consumer_offsets, example.processed_events, example.counts, example.outbox",
            )
            .execute(&pool)
            .await?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let started = Instant::now();
            let until = async move {
                let _ = stopped.await;
            };
            let runtime = if name == "effectively-once" {
                tokio::spawn(run_with(Counter, config, until))
            } else {
                tokio::spawn(run_with(Stateless, config, until))
            };
            let mut state_done = None;
            let mut first_commit: Option<(Instant, i64)> = None;
            loop {
                // Offsets start at 0 and have no holes here: their sum is the
                // number of records committed.
                let done: i64 = sqlx::query_scalar(
                    "SELECT coalesce(sum(next_offset), 0)::bigint FROM example.consumer_offsets",
                )
                .fetch_one(&pool)
                .await?;
                let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM example.outbox")
                    .fetch_one(&pool)
                    .await?;
                // The clock starts at the first commit, as the passthrough's
                // starts at its first record: start-up (connect, migrate,
                // lease) is not throughput.
                if done > 0 && first_commit.is_none() {
                    first_commit = Some((Instant::now(), done));
                }
                if done as usize >= records {
                    state_done.get_or_insert_with(|| started.elapsed());
                    if pending == 0 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let elapsed = started.elapsed();
            eprintln!(
                "{name}: every record committed {:.2} s after start, outbox published after {:.2} s",
                state_done.unwrap_or_default().as_secs_f64(),
                elapsed.as_secs_f64()
            );
            let (from, already) = first_commit.expect("records were committed");
            let measured = from.elapsed();
            let _ = stop.send(());
            runtime.await??;
            report(name, records - already as usize, measured);
        }
        other => anyhow::bail!("unknown phase {other}"),
    }
    Ok(())
}
