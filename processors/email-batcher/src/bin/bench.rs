//! `psymatch-email-batcher-bench`: inquiry commands batched and decided per
//! second through the whole processor, against the runtime alone on the
//! same records in the same run, then one flush writing an email per
//! therapist through the file transport.
//!
//! Needs the local stack (`scripts/stack up`, `. .stack/env`).
//! Usage: `psymatch-email-batcher-bench [COMMANDS] [THERAPISTS]` (defaults
//! 100,000 and 10,000).

use psymatch_email_batcher::EmailBatcher;
use psymatch_email_batcher::config::BatcherConfig;
use psymatch_runtime::processor::Processor;
use psymatch_runtime::testing::{Noop, Running, TestBed, scratch_dir, throughput};
use serde_json::json;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

/// The batcher's throughput over everything published, from no stored inquiries.
async fn through<P: Processor>(
    bed: &TestBed,
    pool: &PgPool,
    processor: P,
    group: &str,
    records: i64,
) -> anyhow::Result<(f64, i64)> {
    sqlx::query("TRUNCATE email_batcher.inquiries")
        .execute(pool)
        .await?;
    throughput(bed, pool, processor, group, records).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let commands = args.first().copied().unwrap_or(100_000);
    let therapists = args.get(1).copied().unwrap_or(10_000);
    let bed = TestBed::new().await;
    let pool = psymatch_runtime::db::connect(&bed.database_url).await?;
    eprintln!("publishing {commands} inquiries for {therapists} therapists ...");
    for start in (0..commands).step_by(10_000) {
        let batch: Vec<serde_json::Value> = (start..(start + 10_000).min(commands))
            .map(|i| {
                let t = i % therapists;
                json!({"event_type": "email.send_inquiry", "payload": {
                    "inquiry_id": format!("i-{i}"), "therapist_id": format!("t-{t}"),
                    "recipient": {"email": format!("praxis-{t}@example.org"), "salutation": "FRAU", "title": null, "last_name": "Beispiel"},
                    "patients": [{"patient_id": format!("p-{i}"), "age": 30, "gender": "FEMALE", "symptoms": ["Antriebslosigkeit"],
                                  "insurer": "Beispielkasse", "therapy_experience": false, "open_to_group": true,
                                  "availability": [{"weekday": "MONDAY", "from": "08:00", "to": "12:00"}]}]}})
            })
            .collect();
        bed.publish("email-commands", &batch).await;
    }
    let outbox = scratch_dir("email-bench");
    let vars: BTreeMap<String, String> = [
        ("EMAIL_TRANSPORT".to_string(), "file".to_string()),
        ("EMAIL_FILE_DIR".to_string(), outbox.display().to_string()),
    ]
    .into_iter()
    .collect();
    eprintln!("runtime only ...");
    let (base_s, base_n) = through(
        &bed,
        &pool,
        Noop {
            name: "email_batcher",
            input: "email-commands",
        },
        "noop",
        commands as i64,
    )
    .await?;
    eprintln!("batching decisions ...");
    let batcher = EmailBatcher::new(BatcherConfig::from_vars(&vars)?)?;
    let (dec_s, dec_n) = through(&bed, &pool, batcher, "batcher", commands as i64).await?;

    eprintln!("one flush through the file transport ...");
    let flush_config = BatcherConfig::from_vars(&vars)?;
    let batcher = EmailBatcher::new(flush_config)?;
    let started = Instant::now();
    bed.publish(
        "email-commands",
        &[json!({"event_type": "email.flush_batches", "payload": {"run_id": "bench"}})],
    )
    .await;
    let mut config = bed.config("email_batcher");
    config.group = format!("{}batcher", bed.prefix);
    let running = Running::start(batcher, config);
    loop {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM email_batcher.emails WHERE reported")
                .fetch_one(&pool)
                .await?;
        if sent >= therapists as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flush_s = started.elapsed().as_secs_f64();
    running.stop().await;
    let files = std::fs::read_dir(&outbox)?.count();

    println!("| path | operations | seconds | per second | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| runtime only (same commands, no decision) | {base_n} | {base_s:.2} | {:.0} | 1.00 |",
        base_n as f64 / base_s
    );
    println!(
        "| batching decisions (window lookup per batch, inquiries stored, deferrals) | {dec_n} | {dec_s:.2} | {:.0} | {:.2} |",
        dec_n as f64 / dec_s,
        (dec_n as f64 / dec_s) / (base_n as f64 / base_s)
    );
    println!(
        "| flush: one email per therapist, file transport ({files} files) | {therapists} | {flush_s:.2} | {:.0} | |",
        therapists as f64 / flush_s
    );
    println!("\ngoal: >= 10,000 commands/s for the batching decisions");
    Ok(())
}
