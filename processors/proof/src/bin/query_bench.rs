//! `psymatch-query-bench`: queries per second and latency of the
//! matcher's `GET /v1/searches/{patient_id}` over committed state of
//! 10,000 searches, 50,000 therapists and 30,000 inquiries, against a bare
//! endpoint behind the same token guard that answers a constant, measured
//! in the same run with the same clients.
//!
//! Needs the local stack (`scripts/stack up`, `. .stack/env`).
//! Usage: `psymatch-query-bench [SECONDS] [CLIENTS]` (defaults 10 and 8).

use axum::routing::get;
use chrono::Utc;
use psymatch_matcher::MatcherConfig;
use psymatch_matcher::records::{InquiryRecord, SearchRecord, SearchStatus, TherapistRecord};
use psymatch_runtime::query::{Tokens, guarded};
use psymatch_runtime::surface::Metrics;
use psymatch_runtime::testing::{TestBed, people};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

const SEARCHES: usize = 10_000;
const THERAPISTS: usize = 50_000;
const TOKEN: &str = "bench-token-0123456789";

/// Stores the synthetic state in one statement per table.
async fn fill(bed: &TestBed) -> anyhow::Result<()> {
    let now = Utc::now();
    let (mut ids, mut states) = (Vec::new(), Vec::new());
    for n in 0..THERAPISTS {
        let event = people::discovered(
            n,
            (
                47.5 + (n % 700) as f64 / 100.0,
                6.0 + (n / 700) as f64 / 10.0,
            ),
        );
        let mut record = TherapistRecord::new(now);
        record.details = Some(serde_json::from_value(event["payload"]["details"].clone())?);
        ids.push(format!("t-{n}"));
        states.push(serde_json::to_string(&record)?);
    }
    sqlx::query("INSERT INTO matcher.therapists (therapist_id, state) SELECT * FROM unnest($1::text[], $2::jsonb[])")
        .bind(&ids)
        .bind(&states)
        .execute(&bed.pool)
        .await?;
    let (mut ids, mut states) = (Vec::new(), Vec::new());
    let (mut inquiry_ids, mut owners, mut held, mut inquiry_states) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for n in 0..SEARCHES {
        let event = people::registered(n, 30 + (n % 40) as i64, (52.5, 13.4));
        let search = SearchRecord {
            profile: serde_json::from_value(event["payload"]["profile"].clone())?,
            status: SearchStatus::Active,
            placed: None,
            excluded: BTreeSet::new(),
            travel: BTreeMap::new(),
            travel_request: None,
            exhausted: false,
            since: now,
        };
        ids.push(format!("p-{n}"));
        states.push(serde_json::to_string(&search)?);
        for k in 0..3 {
            let therapist = format!("t-{}", (n * 3 + k) % THERAPISTS);
            let inquiry = InquiryRecord {
                therapist_id: therapist.clone(),
                email: format!("praxis-{}@example.org", (n * 3 + k) % THERAPISTS),
                patients: vec![format!("p-{n}")],
                answers: BTreeMap::new(),
                created_at: now,
                sent_at: (k == 0).then_some(now),
                answered_at: None,
                failed: false,
                follow_up_due: false,
                withdrawn: false,
            };
            inquiry_ids.push(format!("i-{n}-{k}"));
            owners.push(therapist);
            held.push(format!("{{p-{n}}}"));
            inquiry_states.push(serde_json::to_string(&inquiry)?);
        }
    }
    sqlx::query("INSERT INTO matcher.searches (patient_id, state) SELECT * FROM unnest($1::text[], $2::jsonb[])")
        .bind(&ids)
        .bind(&states)
        .execute(&bed.pool)
        .await?;
    sqlx::query(
        "INSERT INTO matcher.inquiries (inquiry_id, therapist_id, patient_ids, state)
         SELECT i, t, p::text[], s FROM unnest($1::text[], $2::text[], $3::text[], $4::jsonb[]) AS u(i, t, p, s)",
    )
    .bind(&inquiry_ids)
    .bind(&owners)
    .bind(&held)
    .bind(&inquiry_states)
    .execute(&bed.pool)
    .await?;
    sqlx::query("ANALYZE matcher.searches, matcher.inquiries, matcher.therapists")
        .execute(&bed.pool)
        .await?;
    Ok(())
}

/// Requests per second and latency percentiles of `path(n)` with
/// `clients` concurrent clients for `seconds`.
async fn load(
    port: u16,
    clients: usize,
    seconds: u64,
    path: fn(usize) -> String,
) -> anyhow::Result<(f64, Duration, Duration)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let mut latencies = Vec::new();
                let mut n = c * 7919;
                while Instant::now() < deadline {
                    n = (n * 31 + 17) % SEARCHES;
                    let url = format!("http://127.0.0.1:{port}{}", path(n));
                    let asked = Instant::now();
                    let response = client.get(url).bearer_auth(TOKEN).send().await?;
                    anyhow::ensure!(response.status().is_success(), "{}", response.status());
                    response.bytes().await?;
                    latencies.push(asked.elapsed());
                }
                anyhow::Ok(latencies)
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    Ok((all.len() as f64 / elapsed, at(0.50), at(0.99)))
}

/// The floor of any answer from PostgreSQL: one row by its key, as is.
async fn one_row(
    axum::extract::State(pool): axum::extract::State<sqlx::PgPool>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> axum::Json<Value> {
    let row: Option<(Value,)> =
        sqlx::query_as("SELECT state FROM matcher.searches WHERE patient_id = $1")
            .bind(id)
            .fetch_optional(&pool)
            .await
            .unwrap_or_default();
    axum::Json(row.map_or(Value::Null, |(state,)| state))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let seconds = args.first().copied().unwrap_or(10);
    let clients = args.get(1).copied().unwrap_or(8) as usize;
    let bed = TestBed::new().await;
    eprintln!(
        "storing {SEARCHES} searches, {THERAPISTS} therapists, {} inquiries ...",
        SEARCHES * 3
    );
    fill(&bed).await?;
    let routes = psymatch_matcher::queries::routes(bed.pool.clone(), MatcherConfig::default())
        .route(
            "/v1/bare/{n}",
            get(|| async { axum::Json(json!({"bare": true})) }),
        )
        .route("/v1/row/{id}", get(one_row).with_state(bed.pool.clone()));
    let tokens =
        Arc::new(Tokens::parse(&format!("bench:ops:{TOKEN}")).map_err(anyhow::Error::msg)?);
    let app = guarded(routes, tokens, Arc::new(Metrics::new("matcher")));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let (bare_qps, bare_p50, bare_p99) =
        load(port, clients, seconds, |n| format!("/v1/bare/{n}")).await?;
    let (row_qps, row_p50, row_p99) =
        load(port, clients, seconds, |n| format!("/v1/row/p-{n}")).await?;
    let (qps, p50, p99) = load(port, clients, seconds, |n| format!("/v1/searches/p-{n}")).await?;
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "\n{clients} clients, {seconds} s each, {SEARCHES} searches, {THERAPISTS} therapists\n"
    );
    println!("| endpoint | queries/s | p50 ms | p99 ms | ratio to bare | ratio to one row |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| bare (constant, same guard) | {bare_qps:.0} | {:.2} | {:.2} | 1.00 | {:.2} |",
        ms(bare_p50),
        ms(bare_p99),
        bare_qps / row_qps
    );
    println!(
        "| one row (the search's jsonb by key) | {row_qps:.0} | {:.2} | {:.2} | {:.2} | 1.00 |",
        ms(row_p50),
        ms(row_p99),
        row_qps / bare_qps
    );
    println!(
        "| GET /v1/searches/{{id}} | {qps:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
        ms(p50),
        ms(p99),
        qps / bare_qps,
        qps / row_qps
    );
    // Three round trips against one: a third of the one-row rate is the
    // ceiling; a quarter leaves room for decoding and composing.
    let value: Value = json!({"goal": "p99 <= 5 ms and >= 0.25 of one row by key",
                              "met": ms(p99) <= 5.0 && qps / row_qps >= 0.25});
    println!("\n{value}");
    Ok(())
}
