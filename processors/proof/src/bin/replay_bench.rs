//! `psymatch-replay-bench`: `psymatch-matcher replay` over the recorded
//! history of 10,000 patients and 50,000 therapists, against the live
//! matcher's catch-up rate on the same records, measured first in the
//! same run: the live matcher consumes the history from empty offsets
//! (journaling its batches), then the replay reruns those batches from
//! the topics into a scratch database and compares every output.
//!
//! Needs the local stack (`scripts/stack up`, `. .stack/env`).
//! Usage: `psymatch-replay-bench [PATIENTS] [THERAPISTS]` (defaults
//! 10,000 and 50,000).

use psymatch_matcher::replay::{ReplayArgs, run_with};
use psymatch_matcher::{Matcher, MatcherConfig};
use psymatch_runtime::testing::{TestBed, fresh_database, people, throughput};
use serde_json::Value;
use std::time::Instant;

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Logs only when RUST_LOG asks (the batches' phases at debug).
    if std::env::var_os("RUST_LOG").is_some() {
        psymatch_runtime::telemetry::init("replay-bench");
    }
    let mut args = std::env::args().skip(1);
    let patients: usize = args.next().map_or(Ok(10_000), |a| a.parse())?;
    let therapists: usize = args.next().map_or(Ok(50_000), |a| a.parse())?;
    let bed = TestBed::new().await;
    // Therapists on a grid over Germany; patients among them, each
    // within reach of a few dozen.
    let position = |n: usize| {
        (
            47.5 + (n % 700) as f64 / 100.0,
            6.0 + (n / 700) as f64 / 10.0,
        )
    };
    let directory: Vec<Value> = (0..therapists)
        .map(|n| people::discovered(n, position(n)))
        .collect();
    let searches: Vec<Value> = (0..patients)
        .map(|n| {
            people::registered(
                n,
                25 + (n % 40) as i64,
                position(n * therapists / patients.max(1)),
            )
        })
        .collect();
    let publishing = Instant::now();
    bed.publish("therapist-events", &directory).await;
    bed.publish("patient-events", &searches).await;
    let records = (therapists + patients) as i64;
    eprintln!(
        "published {records} records in {:.1} s",
        publishing.elapsed().as_secs_f64()
    );

    let baseline = MatcherConfig::default();
    let matcher = Matcher::new(baseline.clone());
    let (live_seconds, covered) = throughput(&bed, &bed.pool, matcher, "matcher", records).await?;
    let live_rate = covered as f64 / live_seconds;

    let (_, scratch) = fresh_database().await;
    let args = ReplayArgs {
        rules: None,
        until: None,
        format: "table".into(),
        out: None,
        outputs: None,
        scratch_url: Some(scratch),
    };
    let mut runtime = bed.config("matcher");
    runtime.group = format!("{}matcher", bed.prefix);
    let started = Instant::now();
    let replayed = run_with(&args, &runtime, &baseline, &baseline.rules).await?;
    let whole = started.elapsed().as_secs_f64();
    let report = &replayed.report;
    let replay_rate = report.records as f64 / replayed.replay_seconds;

    println!(
        "history: {patients} patients, {therapists} therapists, {records} records; {} journaled batches",
        report.batches
    );
    println!();
    println!("| run | records | seconds | records/s | ratio to live |");
    println!("|---|---|---|---|---|");
    println!(
        "| live matcher catching up | {covered} | {live_seconds:.2} | {live_rate:.0} | 1.00 |"
    );
    println!(
        "| replay: the batches | {} | {:.2} | {replay_rate:.0} | {:.2} |",
        report.records,
        replayed.replay_seconds,
        replay_rate / live_rate
    );
    println!(
        "| replay: whole command (reading the topics, batches, comparing) | {} | {whole:.2} | {:.0} | {:.2} |",
        report.records,
        report.records as f64 / whole,
        report.records as f64 / whole / live_rate
    );
    println!();
    println!(
        "reading the inputs {:.2} s; outputs: {} live, {} replayed, {} identical (reproduced: {})",
        replayed.read_seconds,
        report.outputs.live,
        report.outputs.replay,
        report.outputs.identical,
        report.outputs.reproduced()
    );
    anyhow::ensure!(
        report.outputs.reproduced(),
        "the replay did not reproduce the live outputs"
    );
    Ok(())
}
