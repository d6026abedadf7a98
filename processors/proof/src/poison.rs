//! The poison run: bad records of eleven kinds on every topic a processor
//! consumes, interleaved with good ones, while every processor runs as a
//! process. It holds when every bad record reached the dead-letter topic
//! of its topic (once per processor that consumes it) or a rejection with
//! its reason, every good record was processed by every consumer, and no
//! process exited or panicked.

use records::{bad_record, bad_request_id, good_records, templates};
mod records;

use crate::processes::{self, Process};
use futures::StreamExt;
use psymatch_runtime::codec::Codec;
use psymatch_runtime::contracts::Contracts;
use psymatch_runtime::envelope::Envelope;
use psymatch_runtime::testing::{TestBed, scratch_dir};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

use crate::processes::consumed;

/// The header that names a bad record (`<topic>/<kind>/<n>`); dead letters
/// keep the original headers.
const PROBE: &str = "psymatch.proof.probe";

/// Largest value the processors accept in this run (oversize records are
/// a little larger).
const MAX_RECORD_BYTES: usize = 20_000;

/// The text planted in bad records' values: no reason on any topic may
/// repeat it (reasons name the field and the rule, never the value).
const PLANTED: &str = "planted-secret";

/// Peak resident memory (MiB) no processor may exceed in the run: a few
/// times what they hold at rest, far below what one lying length prefix
/// used to take (500 MB).
const PEAK_MIB: f64 = 256.0;

/// The kinds of bad record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Garbage,
    WrongMagic,
    UnknownSchema,
    WrongType,
    InvalidValues,
    Oversize,
    KeyMismatch,
    /// A valid record with a NUL character in one of its strings (another
    /// string field each round).
    NulText,
    /// A string's length prefix rewritten to claim 500,000,000 bytes.
    LyingLength,
    /// Free text longer than its field's bound (intake's commands).
    OversizeText,
    /// A free-place date outside any calendar (day 2,147,483,647).
    FreePlacesOverflow,
}

impl Kind {
    const ALL: [Kind; 11] = [
        Kind::Garbage,
        Kind::WrongMagic,
        Kind::UnknownSchema,
        Kind::WrongType,
        Kind::InvalidValues,
        Kind::Oversize,
        Kind::KeyMismatch,
        Kind::NulText,
        Kind::LyingLength,
        Kind::OversizeText,
        Kind::FreePlacesOverflow,
    ];

    /// Whether this kind is sent on `topic`: the bounds of free text and
    /// free places are intake's.
    fn applies(self, topic: &str) -> bool {
        match self {
            Kind::OversizeText => matches!(topic, "patient-commands" | "therapist-commands"),
            Kind::FreePlacesOverflow => topic == "therapist-commands",
            _ => true,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Garbage => "garbage bytes",
            Kind::WrongMagic => "wrong magic byte",
            Kind::UnknownSchema => "unknown schema id",
            Kind::WrongType => "valid record of another topic's type",
            Kind::InvalidValues => "valid record, invalid domain values",
            Kind::Oversize => "oversize value",
            Kind::KeyMismatch => "key disagrees with the payload",
            Kind::NulText => "NUL character in a string",
            Kind::LyingLength => "length prefix claiming 500 MB",
            Kind::OversizeText => "free text beyond its bound",
            Kind::FreePlacesOverflow => "free-place date beyond any calendar",
        }
    }

    /// Whether an outcome (an error code, or `rejected`) is the right one.
    fn accepts(self, outcome: &str) -> bool {
        match self {
            Kind::Garbage | Kind::WrongMagic => outcome == "PSY-D-001",
            Kind::UnknownSchema => outcome == "PSY-D-002",
            Kind::WrongType => outcome == "PSY-D-003" || outcome == "PSY-D-004",
            Kind::InvalidValues => outcome.starts_with("PSY-V-") || outcome == "rejected",
            Kind::Oversize => outcome == "PSY-D-006",
            Kind::KeyMismatch => outcome == "PSY-D-005",
            Kind::NulText | Kind::FreePlacesOverflow => outcome == "PSY-D-007",
            Kind::LyingLength => outcome == "PSY-D-003",
            Kind::OversizeText => outcome == "rejected",
        }
    }
}

/// A bad record as published.
struct Bad {
    topic: &'static str,
    kind: Kind,
    /// Its envelope's id, when it has one (rejections refer to it).
    event_id: Option<Uuid>,
    /// Its request id, for geocoding requests (failures refer to it).
    request: Option<String>,
}

/// What the collector has read so far.
#[derive(Default)]
struct Seen {
    /// (probe, processor) -> (error code, reason), from dead-letter topics.
    dead: HashMap<(String, String), (String, String)>,
    /// Command event id -> (rejecting processor, reason).
    rejected: HashMap<Uuid, (String, String)>,
    /// Request ids the geocoder answered with `geocoding.failed` -> reason.
    failed: HashMap<String, String>,
    /// Good records per consumed topic: event ids (partition, offset order).
    good: BTreeMap<String, Vec<Uuid>>,
    /// The first good record per consumed topic and event type, as JSON.
    samples: HashMap<(String, String), Value>,
    /// Next offset to read per (topic, partition).
    positions: HashMap<(String, i32), i64>,
}

/// Runs the poison run; prints its tables; returns whether it held.
pub async fn run(per_kind: usize, logs: &Path) -> anyhow::Result<bool> {
    std::fs::create_dir_all(logs)?;
    let bed = TestBed::new().await;
    let contracts = Contracts::embedded();
    let codec = Codec::new(&bed.registry_url);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let collector = tokio::spawn(collect(
        bed.brokers.clone(),
        bed.registry_url.clone(),
        bed.prefix.clone(),
        seen.clone(),
    ));

    let (_kbv, scraper) = processes::fake_kbv(logs)?;
    let mail = scratch_dir("psymatch-poison-mail");
    let mut settings = processes::chain(&mail);
    settings.insert(2, scraper);
    let limit = [("MAX_RECORD_BYTES", MAX_RECORD_BYTES.to_string())];
    let mut running = processes::start_all(&bed, settings, &limit, logs).await?;
    eprintln!(
        "poison: {} processors running; logs in {}",
        running.len(),
        logs.display()
    );

    // Round 0 of good records gives every event topic a real record to
    // build the bad ones of that topic from.
    bed.publish_all(&good_records(0)).await;
    let templates = templates(&bed, &seen).await?;

    let started = Instant::now();
    let mut bad: HashMap<String, Bad> = HashMap::new();
    for round in 0..per_kind {
        let mut sends = Vec::new();
        for &(topic, _) in consumed() {
            for kind in Kind::ALL.into_iter().filter(|k| k.applies(topic)) {
                let probe = format!("{topic}/{kind:?}/{round}");
                let (key, value, event_id) =
                    bad_record(&bed, &codec, contracts, topic, kind, &templates, round).await?;
                let request = (topic == "geocoding-requests" && kind == Kind::InvalidValues)
                    .then(|| bad_request_id(round));
                bad.insert(
                    probe.clone(),
                    Bad {
                        topic,
                        kind,
                        event_id,
                        request,
                    },
                );
                sends.push((topic, key, value, probe));
            }
        }
        let headers: Vec<[(String, String); 1]> = sends
            .iter()
            .map(|(_, _, _, probe)| [(PROBE.to_string(), probe.clone())])
            .collect();
        let publishes = sends
            .iter()
            .zip(&headers)
            .map(|((topic, key, value, _), headers)| {
                bed.publish_raw(topic, key.as_deref(), Some(value), headers)
            });
        futures::future::join_all(publishes).await;
        bed.publish_all(&good_records(round + 1)).await;
    }
    eprintln!(
        "poison: {} bad records published between {} rounds of good ones in {:.1} s",
        bad.len(),
        per_kind + 1,
        started.elapsed().as_secs_f64()
    );

    // Settled: every consumer read everything, published everything, and
    // the collector read what they published. Then every outcome there
    // will be is in; a missing one is a broken invariant, not a wait.
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut behind_at_end = None;
    while let Some(behind) = unsettled(&bed, &seen).await? {
        if Instant::now() > deadline || running.iter_mut().any(|p| p.exited().is_some()) {
            eprintln!("poison: stopped waiting: {behind}");
            behind_at_end = Some(behind);
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    collector.abort();

    let mut held = report(&bed, &bad, &seen, &mut running).await?;
    match &behind_at_end {
        None => println!(
            "\nno partition behind at the end: every consumer read to the end of what it consumes"
        ),
        Some(behind) => {
            held = false;
            println!("\nBEHIND at the end: {behind}");
        }
    }
    if held {
        println!("\npoison run HELD");
    } else {
        println!("\npoison run FAILED");
    }
    println!(
        "\n{} bad records ({per_kind} of each kind per topic), {:.0} s in all",
        bad.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(held)
}

/// The consumers of `topic`.
fn consumers(topic: &str) -> &'static [&'static str] {
    consumed()
        .iter()
        .find(|(t, _)| *t == topic)
        .map_or(&[], |(_, c)| c.as_slice())
}

/// Reads every topic of the run from the beginning into `seen`.
async fn collect(
    brokers: String,
    registry: String,
    prefix: String,
    seen: Arc<Mutex<Seen>>,
) -> anyhow::Result<()> {
    let contracts = Contracts::embedded();
    let codec = Codec::new(&registry);
    let consumer: StreamConsumer = psymatch_runtime::broker::client(&brokers)
        .set("group.id", format!("proof-{}", Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    let topics: Vec<String> = contracts
        .topics
        .topics
        .iter()
        .map(|t| format!("{prefix}{}", t.name))
        .collect();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    let mut stream = consumer.stream();
    while let Some(message) = stream.next().await {
        let message = message?;
        let logical = message.topic().trim_start_matches(&prefix).to_string();
        read(&codec, contracts, &seen, &logical, &message).await;
        // Counted as read only once what it tells is recorded.
        seen.lock()
            .expect("collector state")
            .positions
            .insert((logical, message.partition()), message.offset() + 1);
    }
    Ok(())
}

/// Records what one message tells: a dead letter, a rejection, a
/// geocoding failure, or a good record of a consumed topic.
async fn read(
    codec: &Codec,
    contracts: &Contracts,
    seen: &Mutex<Seen>,
    logical: &str,
    message: &rdkafka::message::BorrowedMessage<'_>,
) {
    let headers: HashMap<String, String> = message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| {
                    let value = h.value.map(|v| String::from_utf8_lossy(v).into_owned());
                    (h.key.to_string(), value.unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    if logical.ends_with(".dlq") {
        if let (Some(probe), Some(processor)) =
            (headers.get(PROBE), headers.get("psymatch.processor"))
        {
            let code = headers
                .get("psymatch.error.code")
                .cloned()
                .unwrap_or_default();
            let reason = headers
                .get("psymatch.error.message")
                .cloned()
                .unwrap_or_default();
            seen.lock()
                .expect("collector state")
                .dead
                .insert((probe.clone(), processor.clone()), (code, reason));
        }
        return;
    }
    let Some(schema) = contracts.schemas.get(logical) else {
        return;
    };
    let Some(bytes) = message.payload() else {
        return;
    };
    let Ok(value) = codec.decode_as(bytes, &schema.schema).await else {
        return;
    };
    let Ok(envelope) = Envelope::from_avro(value) else {
        return;
    };
    let payload = psymatch_runtime::avro_json::to_json(&envelope.payload);
    let mut seen = seen.lock().expect("collector state");
    if envelope.event_type == "command.rejected"
        && let Some(id) = payload["command_event_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
    {
        let reason = format!(
            "{}: {}",
            text(&payload["error_code"]),
            text(&payload["reason"])
        );
        seen.rejected
            .insert(id, (envelope.producer.clone(), reason));
    }
    if envelope.event_type == "geocoding.failed" {
        let reason = format!(
            "{}: {}",
            text(&payload["error_code"]),
            text(&payload["reason"])
        );
        seen.failed.insert(text(&payload["request_id"]), reason);
    }
    if headers.contains_key(PROBE) || !consumed().iter().any(|(t, _)| *t == logical) {
        return;
    }
    seen.good
        .entry(logical.to_string())
        .or_default()
        .push(envelope.event_id);
    seen.samples
        .entry((logical.to_string(), envelope.event_type.clone()))
        .or_insert_with(|| json!({"event_type": envelope.event_type, "payload": payload}));
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

/// The outcome of each (bad record, consumer) seen so far: an error code
/// from a dead letter, or `rejected`.
fn outcomes(bad: &HashMap<String, Bad>, seen: &Mutex<Seen>) -> HashMap<(String, String), String> {
    let seen = seen.lock().expect("collector state");
    let mut found = HashMap::new();
    for (probe, record) in bad {
        for consumer in consumers(record.topic) {
            let key = (probe.clone(), consumer.to_string());
            if let Some((code, _)) = seen.dead.get(&key) {
                found.insert(key, code.clone());
            } else if record
                .event_id
                .and_then(|id| seen.rejected.get(&id))
                .is_some_and(|(producer, _)| producer == consumer)
                || record
                    .request
                    .as_ref()
                    .is_some_and(|r| seen.failed.contains_key(r))
            {
                found.insert(key, "rejected".to_string());
            }
        }
    }
    found
}

/// What has not settled yet, if anything: a consumer behind the end of
/// a partition it consumes, records waiting in a processor's outbox, or
/// the collector behind the end of a topic.
async fn unsettled(bed: &TestBed, seen: &Mutex<Seen>) -> anyhow::Result<Option<String>> {
    if let Some(behind) = processes::backlog(bed).await? {
        return Ok(Some(behind));
    }
    let contracts = Contracts::embedded();
    let consumer: StreamConsumer = psymatch_runtime::broker::client(&bed.brokers)
        .set("group.id", format!("proof-watermarks-{}", Uuid::new_v4()))
        .create()?;
    for spec in &contracts.topics.topics {
        let topic = spec.name.as_str();
        let physical = format!("{}{topic}", bed.prefix);
        for partition in 0..processes::partitions(&consumer, &physical)? {
            let (_, high) =
                consumer.fetch_watermarks(&physical, partition, Duration::from_secs(10))?;
            let read = seen
                .lock()
                .expect("collector state")
                .positions
                .get(&(topic.to_string(), partition))
                .copied()
                .unwrap_or(0);
            if read < high {
                return Ok(Some(format!(
                    "the collector at {read} of {high} on {topic}/{partition}"
                )));
            }
        }
    }
    Ok(None)
}

/// Prints the tables and returns whether every invariant held.
async fn report(
    bed: &TestBed,
    bad: &HashMap<String, Bad>,
    seen: &Mutex<Seen>,
    running: &mut [Process],
) -> anyhow::Result<bool> {
    let found = outcomes(bad, seen);
    let mut held = true;
    let mut processed: HashMap<&str, HashSet<Uuid>> = HashMap::new();
    for (_, readers) in consumed() {
        for reader in readers {
            if !processed.contains_key(reader) {
                let ids: Vec<Uuid> =
                    sqlx::query_scalar(&format!("SELECT event_id FROM {reader}.processed_events"))
                        .fetch_all(&bed.pool)
                        .await?;
                processed.insert(reader, ids.into_iter().collect());
            }
        }
    }

    println!(
        "\n| topic | consumers | bad records | dead-lettered | rejected | wrong or missing | good records | good processed |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut wrong: Vec<String> = Vec::new();
    for (topic, readers) in consumed().iter().map(|(t, r)| (*t, r)) {
        let mut count = 0;
        let (mut dead, mut rejected, mut missing) = (0, 0, 0);
        for (probe, record) in bad.iter().filter(|(_, b)| b.topic == topic) {
            count += 1;
            for reader in readers {
                match found.get(&(probe.clone(), reader.to_string())) {
                    Some(outcome) if record.kind.accepts(outcome) => {
                        if outcome == "rejected" {
                            rejected += 1;
                        } else {
                            dead += 1;
                        }
                    }
                    other => {
                        missing += 1;
                        if wrong.len() < 20 {
                            wrong.push(format!("{probe} at {reader}: {other:?}"));
                        }
                    }
                }
            }
        }
        let seen = seen.lock().expect("collector state");
        let good = seen.good.get(topic).map_or(&[][..], Vec::as_slice);
        let distinct: HashSet<&Uuid> = good.iter().collect();
        let done = distinct
            .iter()
            .filter(|id| readers.iter().all(|r| processed[r].contains(id)))
            .count();
        held &= missing == 0 && done == distinct.len() && !distinct.is_empty();
        println!(
            "| {topic} | {} | {count} | {dead} | {rejected} | {missing} | {} | {done} |",
            readers.join(", "),
            distinct.len()
        );
    }

    println!("\n| kind | bad records | outcomes (per consumer) |");
    println!("|---|---|---|");
    for kind in Kind::ALL {
        let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
        let mut count = 0;
        for (probe, record) in bad.iter().filter(|(_, b)| b.kind == kind) {
            count += 1;
            for reader in consumers(record.topic) {
                let outcome = found
                    .get(&(probe.clone(), reader.to_string()))
                    .map_or("none", String::as_str);
                *tally.entry(outcome).or_default() += 1;
            }
        }
        let tally: Vec<String> = tally.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("| {} | {count} | {} |", kind.name(), tally.join(", "));
    }

    println!(
        "\n| processor | running at the end | panics in its log | peak RSS MiB (bound {PEAK_MIB:.0}) |"
    );
    println!("|---|---|---|---|");
    for process in running.iter_mut() {
        let exited = process.exited();
        let panics = process.panics();
        let peak = process.usage().map(|(mib, _)| mib);
        held &= exited.is_none() && panics == 0 && peak.is_some_and(|p| p <= PEAK_MIB);
        let state = exited.map_or("yes".to_string(), |status| format!("no ({status})"));
        let peak = peak.map_or("?".to_string(), |p| format!("{p:.0}"));
        println!("| {} | {state} | {panics} | {peak} |", process.name);
    }
    {
        // Reasons name the field and the rule, never the value.
        let seen = seen.lock().expect("collector state");
        let reasons = seen
            .dead
            .values()
            .map(|(_, reason)| reason)
            .chain(seen.rejected.values().map(|(_, reason)| reason))
            .chain(seen.failed.values());
        let mut count = 0;
        let echoed: Vec<&String> = reasons
            .inspect(|_| count += 1)
            .filter(|reason| reason.contains(PLANTED))
            .collect();
        held &= echoed.is_empty();
        println!(
            "\n{count} reasons read, {} repeating a planted value{}",
            echoed.len(),
            echoed
                .first()
                .map_or(String::new(), |r| format!(" (e.g. {r:?})"))
        );
    }
    {
        let seen = seen.lock().expect("collector state");
        let reasons: Vec<String> = seen
            .dead
            .values()
            .filter(|(code, _)| code.starts_with("PSY-V"))
            .map(|(code, reason)| format!("{code} {reason}"))
            .take(3)
            .collect();
        if !reasons.is_empty() {
            println!("\nreasons, e.g.: {}", reasons.join(" | "));
        }
    }
    if !wrong.is_empty() {
        println!("\nwrong or missing outcomes (first {}):", wrong.len());
        for line in wrong {
            println!("  {line}");
        }
    }
    Ok(held)
}
