//! `psymatch-matcher replay`: the matcher run again over its recorded
//! inputs, under the live rules or others, into a scratch database; what
//! it would have published is compared with what the live matcher did
//! ([`crate::report`]). Nothing is published, no email is sent, and the
//! live database is only read (its batch journal, in a read-only
//! transaction): see [`psymatch_runtime::app::replay`].

use crate::config::MatcherConfig;
use crate::report::Report;
use crate::rulebook::Rulebook;
use chrono::{DateTime, Utc};
use psymatch_runtime::app::replay::{self, Decoded, Emitted, Inputs, Journaled, Progress};
use psymatch_runtime::config::RuntimeConfig;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

/// The topics the matcher publishes on: the live side of the comparison.
pub const OUTPUTS: [&str; 3] = ["matching-events", "email-commands", "geocoding-requests"];

/// What to replay.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Example: what a 30 km default distance would have changed until 1 December:
  cp processors/matcher/rules.yaml /tmp/rules-30km.yaml   # set default_distance_km: 30 and a new version
  psymatch-matcher replay --rules /tmp/rules-30km.yaml --until 2026-12-01T00:00:00Z --format table

With the live rules (no --rules) the replay must reproduce the live decisions exactly;
the report's `outputs` rows say whether it did."
)]
pub struct ReplayArgs {
    /// Rules file to decide under (default: the live matcher's, MATCHER_RULES or the baseline).
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Replay the batches decided up to this time (RFC 3339); default: all.
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// Report format.
    #[arg(long, default_value = "table", value_parser = ["table", "csv", "json"])]
    pub format: String,
    /// Write the report here instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write every record the replay emitted, one JSON line each
    /// (topic, key, event id, value in hex), in order.
    #[arg(long)]
    pub outputs: Option<PathBuf>,
    /// An empty scratch database to replay into (default: one made on the
    /// live database's server and dropped at the end).
    #[arg(long)]
    pub scratch_url: Option<String>,
}

/// Runs a replay with the process environment's settings and writes its
/// report; the error says what was wrong (no batches in the range, a rules
/// file refused, a topic that lost records).
pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let config = match &args.rules {
        Some(path) => MatcherConfig::with_rules(Rulebook::load(path)?),
        None => MatcherConfig::from_env()?,
    };
    let runtime = RuntimeConfig::from_env("matcher")?;
    let live = MatcherConfig::from_env()?;
    let replayed = run_with(&args, &runtime, &config, &live.rules).await?;
    if let Some(path) = &args.outputs {
        write_outputs(path, &replayed.emitted)?;
    }
    let text = replayed.report.render(&args.format)?;
    match &args.out {
        Some(path) => std::fs::write(path, text)?,
        None => std::io::stdout().write_all(text.as_bytes())?,
    }
    Ok(())
}

/// What a replay gives.
pub struct Replayed {
    /// The report.
    pub report: Report,
    /// Every record the replay emitted on the matcher's output topics, in
    /// order.
    pub emitted: Vec<Emitted>,
    /// Seconds reading the inputs from the topics took.
    pub read_seconds: f64,
    /// Seconds running the batches took.
    pub replay_seconds: f64,
}

/// Runs a replay on `runtime` (the live matcher's broker, registry,
/// database and topic prefix) under `config`'s rules; `live` are the live
/// matcher's, which the report compares them with.
pub async fn run_with(
    args: &ReplayArgs,
    runtime: &RuntimeConfig,
    config: &MatcherConfig,
    live: &Rulebook,
) -> anyhow::Result<Replayed> {
    let started = Instant::now();
    let live_rules = live;
    let live = psymatch_runtime::db::connect_sized(&runtime.database_url, 2).await?;
    let journal = replay::read_journal(&live, "matcher", args.until).await?;
    if journal.is_empty() {
        let any = replay::read_journal(&live, "matcher", None).await?;
        match (args.until, any.first()) {
            (Some(until), Some(first)) => anyhow::bail!(
                "no batch was decided until {until}: the first one was at {}",
                first.at
            ),
            _ => anyhow::bail!(
                "the matcher's batch journal is empty: it has decided nothing to replay yet"
            ),
        }
    }
    let scratch = Scratch::open(&live, &runtime.database_url, args.scratch_url.clone()).await?;
    let result = replay_into(config, runtime, &scratch.url, &journal, started).await;
    scratch.close(&live).await?;
    live.close().await;
    let (mut emitted, inputs_read, read_seconds, replay_seconds) = result?;
    // Dead letters of inputs are the runtime's, not decisions.
    emitted.retain(|e| OUTPUTS.contains(&e.topic.as_str()));
    let last = journal.last().map(|b| b.at);
    let codec = psymatch_runtime::codec::Codec::new(&runtime.registry_url);
    eprintln!("replay: reading the live outputs");
    let published = replay::published_by(runtime, "matcher", &OUTPUTS)?;
    let live_decoded = decode_all(&codec, &published).await?;
    // The live side within the replayed range: what batches up to the
    // last journaled one published.
    let (live_raw, live_decoded): (Vec<Emitted>, Vec<Decoded>) = published
        .into_iter()
        .zip(live_decoded)
        .filter(|(_, d)| last.is_none_or(|last| d.at <= last))
        .unzip();
    let replay_decoded = decode_all(&codec, &emitted).await?;
    let report = Report::of(
        (live_rules, &config.rules),
        journal.len(),
        inputs_read,
        started.elapsed().as_secs_f64(),
        (&live_raw, &live_decoded),
        (&emitted, &replay_decoded),
    );
    Ok(Replayed {
        report,
        emitted,
        read_seconds,
        replay_seconds,
    })
}

/// Reads the inputs and replays the journal into the scratch database;
/// returns what it emitted, the records the batches held, and the seconds
/// reading and replaying took.
async fn replay_into(
    config: &MatcherConfig,
    runtime: &RuntimeConfig,
    scratch_url: &str,
    journal: &[Journaled],
    started: Instant,
) -> anyhow::Result<(Vec<Emitted>, usize, f64, f64)> {
    let matcher = crate::Matcher::new(config.clone());
    let topics = psymatch_runtime::processor::Processor::inputs(&matcher);
    eprintln!(
        "replay: reading {} journaled batches' records",
        journal.len()
    );
    let reading = Instant::now();
    let inputs = Inputs::fetch(runtime, &topics, |n| {
        eprintln!("replay: {n} records read");
    })?;
    let read_seconds = reading.elapsed().as_secs_f64();
    let mut scratch = runtime.clone();
    scratch.database_url = scratch_url.to_string();
    let mut last_report = Instant::now();
    let replayed = Instant::now();
    let mut total = 0;
    let emitted = replay::replay(matcher, scratch, journal, &inputs, |p: Progress| {
        total = p.of_records;
        if last_report.elapsed().as_secs() >= 1 || p.batches == p.of_batches {
            last_report = Instant::now();
            eprintln!("{}", progress_line(p, replayed.elapsed().as_secs_f64()));
        }
    })
    .await?;
    eprintln!(
        "replay: {} outputs in {:.1} s",
        emitted.len(),
        started.elapsed().as_secs_f64()
    );
    Ok((
        emitted,
        total,
        read_seconds,
        replayed.elapsed().as_secs_f64(),
    ))
}

/// `replay: 12000 of 40000 records (30 %), batch 120 of 400, 9800 records/s, about 3 s left`.
pub fn progress_line(p: Progress, seconds: f64) -> String {
    let rate = p.records as f64 / seconds.max(1e-3);
    let left = (p.of_records - p.records.min(p.of_records)) as f64 / rate.max(1e-3);
    format!(
        "replay: {} of {} records ({:.0} %), batch {} of {}, {:.0} records/s, about {:.0} s left",
        p.records,
        p.of_records,
        100.0 * p.records as f64 / (p.of_records.max(1)) as f64,
        p.batches,
        p.of_batches,
        rate,
        left
    )
}

async fn decode_all(
    codec: &psymatch_runtime::codec::Codec,
    records: &[Emitted],
) -> anyhow::Result<Vec<Decoded>> {
    let mut decoded = Vec::with_capacity(records.len());
    for record in records {
        decoded.push(record.decode(codec).await?);
    }
    Ok(decoded)
}

/// One JSON line per emitted record, in order: the same replay twice
/// writes the same bytes.
fn write_outputs(path: &std::path::Path, emitted: &[Emitted]) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for e in emitted {
        let hex: String = e.value.iter().map(|b| format!("{b:02x}")).collect();
        let line = serde_json::json!({"topic": e.topic, "key": e.key,
                                      "event_id": e.event_id.to_string(), "value": hex});
        writeln!(file, "{line}")?;
    }
    file.flush()?;
    Ok(())
}

/// The scratch database a replay writes to.
struct Scratch {
    url: String,
    /// Made here, and dropped at the end.
    made: Option<String>,
}

impl Scratch {
    /// The database `given`, or a new one on the live server.
    async fn open(
        live: &sqlx::PgPool,
        live_url: &str,
        given: Option<String>,
    ) -> anyhow::Result<Scratch> {
        if let Some(url) = given {
            anyhow::ensure!(
                url != live_url,
                "--scratch-url is the live database: a replay never writes there"
            );
            return Ok(Scratch { url, made: None });
        }
        let (base, name, query) = split_database(live_url)?;
        let scratch = format!("{name}_replay_{}", std::process::id());
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{scratch}\""))
            .execute(live)
            .await?;
        sqlx::query(&format!("CREATE DATABASE \"{scratch}\""))
            .execute(live)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "making the scratch database {scratch}: {e} (give an empty one with --scratch-url)"
                )
            })?;
        Ok(Scratch {
            url: format!("{base}/{scratch}{query}"),
            made: Some(scratch),
        })
    }

    /// Drops the database if this replay made it.
    async fn close(self, live: &sqlx::PgPool) -> anyhow::Result<()> {
        if let Some(name) = self.made {
            sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(live)
                .await?;
        }
        Ok(())
    }
}

/// `postgres://host:5432/db?x=y` as (`postgres://host:5432`, `db`, `?x=y`).
fn split_database(url: &str) -> anyhow::Result<(String, String, String)> {
    let (main, query) = match url.split_once('?') {
        Some((main, query)) => (main, format!("?{query}")),
        None => (url, String::new()),
    };
    let after_scheme = main.find("://").map_or(0, |i| i + 3);
    let slash = main[after_scheme..]
        .rfind('/')
        .map(|i| i + after_scheme)
        .ok_or_else(|| anyhow::anyhow!("DATABASE_URL names no database"))?;
    let name = &main[slash + 1..];
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "DATABASE_URL's database name {name:?} is not a plain identifier"
    );
    Ok((main[..slash].to_string(), name.to_string(), query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scratch_database_sits_beside_the_live_one() {
        assert_eq!(
            split_database("postgres://u:p@127.0.0.1:54329/psymatch?sslmode=disable").unwrap(),
            (
                "postgres://u:p@127.0.0.1:54329".to_string(),
                "psymatch".to_string(),
                "?sslmode=disable".to_string()
            )
        );
        assert!(split_database("postgres://127.0.0.1:5432").is_err());
    }

    #[test]
    fn progress_says_how_far_and_how_long() {
        let line = progress_line(
            Progress {
                batches: 10,
                of_batches: 40,
                records: 1000,
                of_records: 4000,
            },
            2.0,
        );
        assert_eq!(
            line,
            "replay: 1000 of 4000 records (25 %), batch 10 of 40, 500 records/s, about 6 s left"
        );
    }
}
