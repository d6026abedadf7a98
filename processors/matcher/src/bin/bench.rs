//! `psymatch-matcher-bench`: the candidate search among 50,000 synthetic
//! therapists spread over Germany, by the grid index against a full scan of
//! every therapist in the same run (p50, p99), and a re-match of 10,000
//! active searches. In memory: the search itself, not the processor.
//!
//! Usage: `psymatch-matcher-bench [THERAPISTS] [SEARCHES]` (defaults 50,000
//! and 10,000).

use chrono::{DateTime, Utc};
use psymatch_matcher::History;
use psymatch_matcher::index::{Index, synthetic};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let therapists = args.first().copied().unwrap_or(50_000);
    let searches = args.get(1).copied().unwrap_or(10_000);
    let now: DateTime<Utc> = "2026-11-26T10:00:00Z".parse().expect("a time");
    let built = Instant::now();
    let index = Index::new((0..therapists).map(synthetic::therapist).collect());
    let build = built.elapsed();
    let history = History::default();
    let travel = HashMap::new();
    let patients: Vec<_> = (0..searches).map(synthetic::patient).collect();

    let mut rows = Vec::new();
    for (name, by_index) in [("full scan (baseline)", false), ("grid index", true)] {
        let sample = if by_index {
            patients.len()
        } else {
            1_000.min(patients.len())
        };
        let mut times = Vec::with_capacity(sample);
        let mut found = 0usize;
        for patient in &patients[..sample] {
            let started = Instant::now();
            let candidates = if by_index {
                index.candidates(patient, &history, now, &travel)
            } else {
                index.candidates_by_scan(patient, &history, now, &travel)
            };
            times.push(started.elapsed());
            found += black_box(candidates.len());
        }
        times.sort();
        rows.push((
            name,
            sample,
            percentile(&times, 0.5),
            percentile(&times, 0.99),
            found as f64 / sample as f64,
        ));
    }
    let started = Instant::now();
    let mut total = 0usize;
    for patient in &patients {
        total += black_box(index.candidates(patient, &history, now, &travel).len());
    }
    let rematch = started.elapsed();

    println!(
        "{therapists} therapists (index built in {:.0} ms), searches with limits of 5-30 km\n",
        build.as_secs_f64() * 1000.0
    );
    println!(
        "| candidate search for one patient | searches | p50 | p99 | candidates per search | p99 ratio to the scan |"
    );
    println!("|---|---|---|---|---|---|");
    let scan_p99 = rows[0].3.as_secs_f64();
    for (name, sample, p50, p99, per) in &rows {
        println!(
            "| {name} | {sample} | {:.3} ms | {:.3} ms | {per:.1} | {:.3} |",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            p99.as_secs_f64() / scan_p99
        );
    }
    println!(
        "\nre-match of {searches} active searches: {:.2} s ({total} candidates); goals: p99 <= 1 ms, re-match <= 5 s",
        rematch.as_secs_f64()
    );
}
