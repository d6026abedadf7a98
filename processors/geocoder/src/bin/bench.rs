//! `psymatch-geocoder-bench`: cached geocode lookups per second, as a bare
//! cache lookup and through the whole processor, each against a baseline
//! measured in the same run.
//!
//! Needs the local stack (`scripts/stack up`, `. .stack/env`). Prints a
//! table:
//!
//! - `select-1`: `SELECT 1` round trips on the same pool and concurrency,
//!   the floor of any PostgreSQL lookup (baseline of the bare lookup);
//! - `bare-lookup`: normalise, hash and look up a cached address, one
//!   query per address;
//! - `batch-lookup`: the same for 100 addresses per query, as the
//!   processor looks up a batch's addresses;
//! - `runtime-only`: the same geocode requests through the runtime with a
//!   processor that answers without looking anything up (baseline of the
//!   processor);
//! - `processor`: the geocoder answering every request from its cache
//!   (topic in, topic out, effectively once).
//!
//! Usage: `psymatch-geocoder-bench [LOOKUPS] [RECORDS]` (defaults 100,000
//! and 20,000).

use futures::StreamExt;
use psymatch_geocoder::address::Address;
use psymatch_geocoder::config::GeocoderConfig;
use psymatch_geocoder::{Geocoder, Position, Precision, cache};
use psymatch_runtime::processor::{Context, Incoming, ProcessError, Processor};
use psymatch_runtime::testing::{TestBed, throughput};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

/// Concurrent lookups: the processor's partitions (6) and then some.
const CONCURRENCY: usize = 8;
/// Keys per query of the batch lookup (what a processor batch does).
const BATCH: usize = 100;
/// Distinct cached addresses.
const ADDRESSES: usize = 10_000;

fn address(i: usize) -> Address {
    Address {
        street: format!("Benchstraße {}", i / 100),
        house_number: Some((i % 100).to_string()),
        postcode: format!("{:05}", 10_000 + i % 80_000),
        city: "Berlin".into(),
    }
}

/// Answers every request without a lookup: the runtime's own cost.
struct Noop;

impl Processor for Noop {
    fn name(&self) -> &'static str {
        "geocoder"
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec!["geocoding-requests"]
    }

    async fn process(&self, ctx: &mut Context<'_>, record: &Incoming) -> Result<(), ProcessError> {
        ctx.emit(
            "geocoding-results",
            "geocoding.address_geocoded",
            json!({"request_id": record.payload["request_id"], "position": {"latitude": 52.0, "longitude": 13.0},
                   "precision": "ADDRESS", "source": "CACHE", "note": null}),
        )
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let lookups = args.first().copied().unwrap_or(100_000);
    let records = args.get(1).copied().unwrap_or(20_000);
    let bed = TestBed::new().await;
    let pool = psymatch_runtime::db::connect_sized(&bed.database_url, CONCURRENCY as u32).await?;
    eprintln!("caching {ADDRESSES} addresses ...");
    for i in 0..ADDRESSES {
        let position = Position {
            latitude: 50.0 + i as f64 / 1e4,
            longitude: 10.0,
        };
        let answer = Some((position, Precision::Address));
        cache::put_geocode(
            &pool,
            &address(i).key(),
            answer,
            Duration::from_secs(86_400),
        )
        .await?;
    }
    let mut rows = Vec::new();
    eprintln!("select-1 ...");
    let elapsed = concurrently(lookups, |_| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT 1")
                .fetch_one(&pool)
                .await?;
            Ok(())
        }
    })
    .await?;
    rows.push(("select-1", lookups, elapsed));
    eprintln!("bare-lookup ...");
    let elapsed = concurrently(lookups, |i| {
        let pool = pool.clone();
        async move {
            let hit =
                cache::geocode(&pool, &address(i % ADDRESSES).key(), chrono::Utc::now()).await?;
            anyhow::ensure!(matches!(hit, Some(Some(_))), "address {i} is not cached");
            Ok(())
        }
    })
    .await?;
    rows.push(("bare-lookup", lookups, elapsed));
    eprintln!("batch-lookup ...");
    let elapsed = concurrently(lookups / BATCH, |batch| {
        let pool = pool.clone();
        async move {
            let keys: Vec<[u8; 32]> = (0..BATCH)
                .map(|j| address((batch * BATCH + j) % ADDRESSES).key())
                .collect();
            let hits = cache::geocodes(&pool, &keys, chrono::Utc::now()).await?;
            anyhow::ensure!(
                hits.len() == BATCH,
                "batch {batch}: {} of {BATCH} cached",
                hits.len()
            );
            Ok(())
        }
    })
    .await?;
    rows.push(("batch-lookup", lookups / BATCH * BATCH, elapsed));

    eprintln!(
        "publishing {records} geocode requests to {}geocoding-requests ...",
        bed.prefix
    );
    for start in (0..records).step_by(10_000) {
        let batch: Vec<serde_json::Value> = (start..(start + 10_000).min(records))
            .map(|i| {
                let a = address(i % ADDRESSES);
                json!({"event_type": "geocoding.geocode_address",
                       "payload": {"request_id": format!("r-{i}"),
                                   "address": {"street": a.street, "house_number": a.house_number,
                                               "postcode": a.postcode, "city": a.city}}})
            })
            .collect();
        bed.publish("geocoding-requests", &batch).await;
    }
    for phase in ["runtime-only", "processor"] {
        eprintln!("{phase} ...");
        let (seconds, counted) = if phase == "processor" {
            let geocoder = Geocoder::new(GeocoderConfig::from_vars(&BTreeMap::new())?);
            throughput(&bed, &pool, geocoder, phase, records as i64).await?
        } else {
            throughput(&bed, &pool, Noop, phase, records as i64).await?
        };
        rows.push((phase, counted as usize, Duration::from_secs_f64(seconds)));
    }

    println!();
    println!("| path | operations | seconds | per second | ratio to baseline | baseline |");
    println!("|---|---|---|---|---|---|");
    let rate = |(_, n, elapsed): &(&str, usize, Duration)| *n as f64 / elapsed.as_secs_f64();
    for (index, row) in rows.iter().enumerate() {
        let baseline = if index < 3 { &rows[0] } else { &rows[3] };
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.2} | {} |",
            row.0,
            row.1,
            row.2.as_secs_f64(),
            rate(row),
            rate(row) / rate(baseline),
            baseline.0
        );
    }
    println!(
        "\nconcurrency {CONCURRENCY}, {ADDRESSES} cached addresses, goal for the bare cache lookup: >= 20,000/s"
    );
    Ok(())
}

/// Runs `n` operations, `CONCURRENCY` at a time.
async fn concurrently<F, Fut>(n: usize, operation: F) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let mut results = futures::stream::iter(0..n)
        .map(operation)
        .buffer_unordered(CONCURRENCY);
    while let Some(result) = results.next().await {
        result?;
    }
    Ok(started.elapsed())
}
