//! `psymatch-matcher replay` after a scenario through the real topics:
//! with the live rules it reproduces the live matcher's records byte for
//! byte, twice the same; a wider default distance adds candidates and
//! inquiries and a stricter one removes them, the report's counts equal
//! to counts made from the replay's own outputs; a range without batches
//! is refused with a sentence; and no replay touches a live topic or table.

use chrono::{DateTime, Duration, Utc};
use psymatch_matcher::replay::{ReplayArgs, Replayed, run_with};
use psymatch_matcher::rulebook::{BASELINE, Rulebook};
use psymatch_matcher::{Matcher, MatcherConfig};
use psymatch_runtime::app::replay::Emitted;
use psymatch_runtime::clock::ManualClock;
use psymatch_runtime::codec::Codec;
use psymatch_runtime::testing::people::{command, discovered, registered};
use psymatch_runtime::testing::{Running, TestBed, fresh_database, of_type};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(90);
const PATIENTS: usize = 10;
/// Practices north of the patients' home, by km: two at 5, two at 15,
/// six at 30 (beyond the baseline's 25 km, within 40).
const PRACTICES_KM: [f64; 10] = [5.0, 5.0, 15.0, 15.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0];
const HOME: (f64, f64) = (52.40, 13.40);

fn args(scratch: &str) -> ReplayArgs {
    ReplayArgs {
        rules: None,
        until: None,
        format: "table".into(),
        out: None,
        outputs: None,
        scratch_url: Some(scratch.to_string()),
    }
}

fn rules(version: &str, default_km: u32) -> MatcherConfig {
    let text = BASELINE
        .replace("version: baseline-2026-12", &format!("version: {version}"))
        .replace(
            "default_distance_km: 25",
            &format!("default_distance_km: {default_km}"),
        );
    MatcherConfig::with_rules(Rulebook::parse(&text).unwrap())
}

/// The scenario: practices and patients, an email sent, an acceptance,
/// a sweep a week later. Returns the clock's start.
async fn scenario(bed: &TestBed) -> DateTime<Utc> {
    let start: DateTime<Utc> = "2027-03-01T09:00:00Z".parse().unwrap();
    let clock = ManualClock::at(start);
    let mut config = bed.config("matcher");
    config.clock = Arc::new(clock.clone());
    let matcher = Running::start(Matcher::new(MatcherConfig::default()), config);
    let practices: Vec<Value> = PRACTICES_KM
        .iter()
        .enumerate()
        .map(|(n, km)| discovered(n, (HOME.0 + km / 111.2, HOME.1 + n as f64 * 0.001)))
        .collect();
    bed.publish("therapist-events", &practices).await;
    bed.wait_consumed("matcher", "therapist-events", practices.len() as i64)
        .await;
    clock.advance(Duration::hours(1));
    for n in 0..PATIENTS {
        let mut patient = registered(n, 30 + n as i64, HOME);
        // No limit of their own: the rules' default distance applies.
        patient["payload"]["profile"]["max_distance_km"] = Value::Null;
        bed.publish("patient-events", &[patient]).await;
        bed.wait_consumed("matcher", "patient-events", n as i64 + 1)
            .await;
        clock.advance(Duration::minutes(10));
    }
    let events = bed
        .read_until("matching-events", DEADLINE, |r| {
            !of_type(r, "matching.inquiry_created").is_empty()
        })
        .await;
    let first = of_type(&events, "matching.inquiry_created")[0].payload();
    let (inquiry, therapist) = (&first["inquiry_id"], &first["therapist_id"]);
    let patient = &first["patients"][0]["patient_id"];
    bed.publish(
        "communication-events",
        &[command(
            "email.sent",
            json!({"email_id": "e-1", "message_id": "<e-1@psymatch>", "therapist_id": therapist,
                   "inquiry_ids": [inquiry], "patient_ids": [patient], "sent_at": clock_text(&clock)}),
        )],
    )
    .await;
    bed.wait_consumed("matcher", "communication-events", 1)
        .await;
    clock.advance(Duration::days(2));
    bed.publish(
        "matching-commands",
        &[command(
            "matching.record_answer",
            json!({"inquiry_id": inquiry, "therapist_id": therapist,
                   "answers": [{"patient_id": patient, "outcome": "ACCEPTED"}],
                   "answered_at": clock_text(&clock), "channel": "PHONE"}),
        )],
    )
    .await;
    bed.wait_consumed("matcher", "matching-commands", 1).await;
    clock.advance(Duration::days(6));
    bed.publish(
        "matching-commands",
        &[command("matching.sweep", json!({"run_id": "week-1"}))],
    )
    .await;
    bed.wait_consumed("matcher", "matching-commands", 2).await;
    // Stopping drains the outbox: every decision is on the topics.
    matcher.stop().await;
    start
}

fn clock_text(clock: &ManualClock) -> String {
    psymatch_runtime::clock::Clock::now(clock).to_rfc3339()
}

/// The matcher's live records on a topic, by event id: (key, bytes).
fn live(bed: &TestBed, topic: &str) -> BTreeMap<String, (Option<String>, Vec<u8>)> {
    use rdkafka::Message;
    use rdkafka::message::Headers;
    let mut found = BTreeMap::new();
    psymatch_runtime::broker::read_topics(&bed.brokers, &bed.prefix, &[topic], |_, m| {
        let headers: BTreeMap<String, String> = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_string(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        if headers.get("producer").map(String::as_str) == Some("matcher") {
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            let value = m.payload().unwrap_or_default().to_vec();
            found.insert(headers["event_id"].clone(), (key, value));
        }
    })
    .unwrap();
    found
}

fn by_id(emitted: &[Emitted], topic: &str) -> BTreeMap<String, (Option<String>, Vec<u8>)> {
    emitted
        .iter()
        .filter(|e| e.topic == topic)
        .map(|e| (e.event_id.to_string(), (e.key.clone(), e.value.clone())))
        .collect()
}

/// Counts made from a replay's own records.
#[derive(Debug, Default)]
struct Counted {
    inquiries: usize,
    /// Patients asked about, over all inquiries.
    asks: usize,
    /// Candidates named in the explanations.
    candidates: usize,
    /// The rules versions the decisions name.
    versions: Vec<String>,
}

async fn counted(bed: &TestBed, replayed: &Replayed) -> Counted {
    let codec = Codec::new(&bed.registry_url);
    let mut c = Counted::default();
    for e in &replayed.emitted {
        let d = e.decode(&codec).await.unwrap();
        match d.event_type.as_str() {
            "matching.inquiry_created" => {
                c.inquiries += 1;
                c.asks += d.payload["patients"].as_array().unwrap().len();
            }
            "matching.candidates_evaluated" => {
                let decisions = d.payload["decisions"].as_array().unwrap();
                c.candidates += decisions.iter().filter(|d| d["rule"].is_null()).count();
            }
            _ => continue,
        }
        c.versions
            .push(d.payload["rules_version"].as_str().unwrap().to_string());
    }
    c.versions.dedup();
    c
}

/// What a replay may not change: every topic's end and the live tables.
async fn untouched(bed: &TestBed) -> (Vec<(String, i64)>, String) {
    let mut ends = Vec::new();
    let watermarks = psymatch_runtime::broker::Watermarks::connect(&bed.brokers).unwrap();
    for spec in &psymatch_runtime::contracts::Contracts::embedded()
        .topics
        .topics
    {
        let physical = format!("{}{}", bed.prefix, spec.name);
        for (p, _, high) in watermarks.of(&physical, DEADLINE).await.unwrap() {
            ends.push((format!("{physical}/{p}"), high));
        }
    }
    let tables: String = sqlx::query_scalar(
        "SELECT string_agg(t, ',') FROM (
           SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) AS t FROM matcher.therapists x
           UNION ALL SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM matcher.searches x
           UNION ALL SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM matcher.inquiries x
           UNION ALL SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM matcher.world x
           UNION ALL SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM matcher.batch_journal x
           UNION ALL SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM matcher.consumer_offsets x
           UNION ALL SELECT md5(string_agg(x::text, '|' ORDER BY x::text)) FROM matcher.outbox x) s",
    )
    .fetch_one(&bed.pool)
    .await
    .unwrap();
    (ends, tables)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_reproduces_the_live_decisions_and_shows_what_other_rules_change() {
    let bed = TestBed::new().await;
    let start = scenario(&bed).await;
    let before = untouched(&bed).await;
    let runtime = bed.config("matcher");
    let baseline = MatcherConfig::default();

    // The live rules: every record of matching-events and email-commands
    // again, with the same id, key and bytes.
    let (_, scratch) = fresh_database().await;
    let first = run_with(&args(&scratch), &runtime, &baseline, &baseline.rules)
        .await
        .unwrap();
    for topic in ["matching-events", "email-commands"] {
        let (live, ours) = (live(&bed, topic), by_id(&first.emitted, topic));
        assert!(!live.is_empty(), "{topic}: the scenario decided nothing");
        assert_eq!(
            live, ours,
            "{topic}: the replay differs from the live records"
        );
    }
    assert!(
        first.report.outputs.reproduced(),
        "{:?}",
        first.report.outputs
    );
    assert_eq!(first.report.searches_changed, 0);
    assert_eq!(first.report.placed_live, 1);
    let live_counts = counted(&bed, &first).await;
    assert_eq!(live_counts.versions, vec!["baseline-2026-12"]);

    // The same replay twice: the same bytes.
    let (_, scratch) = fresh_database().await;
    let again = run_with(&args(&scratch), &runtime, &baseline, &baseline.rules)
        .await
        .unwrap();
    assert_eq!(first.emitted, again.emitted);

    // Wider: more candidates and inquiries; the report's counts are the
    // replay's own.
    let (_, scratch) = fresh_database().await;
    let wider = run_with(
        &args(&scratch),
        &runtime,
        &rules("wider", 40),
        &baseline.rules,
    )
    .await
    .unwrap();
    let more = counted(&bed, &wider).await;
    assert_eq!(more.versions, vec!["wider"]);
    assert!(
        more.inquiries > live_counts.inquiries && more.candidates > live_counts.candidates,
        "{more:?} against {live_counts:?}"
    );
    let weeks = &wider.report.weeks;
    let sum = |f: fn(&psymatch_matcher::report::Week) -> usize| weeks.iter().map(f).sum::<usize>();
    assert_eq!(sum(|w| w.inquiries_replay), more.inquiries);
    assert_eq!(sum(|w| w.inquiries_live), live_counts.inquiries);
    let gained: usize = wider
        .report
        .practices_more
        .iter()
        .map(|p| p.replay - p.live)
        .sum();
    let given_up: usize = wider
        .report
        .practices_fewer
        .iter()
        .map(|p| p.live - p.replay)
        .sum();
    assert_eq!(gained - given_up, more.asks - live_counts.asks);
    assert!(wider.report.searches_changed > 0);
    assert!(!wider.report.outputs.reproduced());
    let reasons: Vec<&String> = wider
        .report
        .changed
        .iter()
        .flat_map(|c| &c.reasons)
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not asked live") && r.contains("default_distance_km: 25.0 → 40.0")),
        "{reasons:?}"
    );
    // The table, for a person reading the test's output.
    eprintln!("{}", wider.report.render("table").unwrap());
    let csv = wider.report.render("csv").unwrap();
    let row = format!(
        "inquiries,{},{},{}",
        weeks[0].week, weeks[0].inquiries_live, weeks[0].inquiries_replay
    );
    assert!(csv.contains(&row), "{csv}");

    // Stricter: fewer, and the practices asked less account for them all.
    let (_, scratch) = fresh_database().await;
    let stricter = run_with(
        &args(&scratch),
        &runtime,
        &rules("stricter", 10),
        &baseline.rules,
    )
    .await
    .unwrap();
    let fewer = counted(&bed, &stricter).await;
    assert!(
        fewer.inquiries < live_counts.inquiries && fewer.candidates < live_counts.candidates,
        "{fewer:?} against {live_counts:?}"
    );
    // (All ten practices fit in the report's lists of ten.)
    let lost: usize = stricter
        .report
        .practices_fewer
        .iter()
        .map(|p| p.live - p.replay)
        .sum();
    let won: usize = stricter
        .report
        .practices_more
        .iter()
        .map(|p| p.replay - p.live)
        .sum();
    assert!(lost > 0);
    assert_eq!(lost - won, live_counts.asks - fewer.asks);

    // Nothing decided before the scenario: said so.
    let mut early = args(&scratch);
    early.until = Some(start - Duration::days(1));
    let error = run_with(&early, &runtime, &baseline, &baseline.rules)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.starts_with("no batch was decided until 2027-02-28"),
        "{error}"
    );

    assert_eq!(
        untouched(&bed).await,
        before,
        "a replay changed a live topic or table"
    );
}
