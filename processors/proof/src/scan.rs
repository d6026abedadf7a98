//! The erasure scanner: where do traces of a person's data remain? It
//! looks for given values (a name, an email address, a street, ...) in
//! every table of every psymatch schema, in every record of every topic
//! (keys, headers and values, read from the beginning, dead-letter topics
//! included), in the mail capture and in log files, and reports the places
//! that hold one. It never prints the values, only which one matched.

use anyhow::Context;
use psymatch_runtime::contracts::Contracts;
use rdkafka::Message;
use rdkafka::message::BorrowedMessage;
use rdkafka::message::Headers;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where to look.
pub struct Scope {
    /// Bootstrap servers.
    pub brokers: String,
    /// Physical topic prefix (empty in production).
    pub prefix: String,
    /// The database (any role that may read every psymatch schema).
    pub pool: PgPool,
    /// maildev's HTTP API, if a mail capture is to be searched.
    pub maildev_url: Option<String>,
    /// Directories of log files (and of mail files, for a file transport).
    pub files: Vec<PathBuf>,
}

/// One place that holds a value: (kind, place) -> numbers of the values
/// (1-based, in the order given) and how many items matched.
pub type Findings = BTreeMap<(String, String), (Vec<usize>, usize)>;

/// Scans everything in `scope` for `values` (compared without case).
pub async fn scan(scope: &Scope, values: &[String]) -> anyhow::Result<(Findings, Vec<String>)> {
    let values: Vec<String> = values.iter().map(|v| v.to_lowercase()).collect();
    let mut findings = Findings::new();
    let mut scanned = Vec::new();
    let note = |findings: &mut Findings, kind: &str, place: &str, text: &str| {
        let hit: Vec<usize> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| text.contains(v.as_str()))
            .map(|(i, _)| i + 1)
            .collect();
        if !hit.is_empty() {
            let entry = findings
                .entry((kind.to_string(), place.to_string()))
                .or_default();
            for i in hit {
                if !entry.0.contains(&i) {
                    entry.0.push(i);
                }
            }
            entry.1 += 1;
        }
    };

    // PostgreSQL: each row as text.
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables
          WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'
          ORDER BY 1, 2",
    )
    .fetch_all(&scope.pool)
    .await?;
    for (schema, table) in &tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!("SELECT lower(t::text) FROM {schema}.{table} t"))
                .fetch_all(&scope.pool)
                .await
                .with_context(|| format!("reading {schema}.{table}"))?;
        for row in rows {
            note(&mut findings, "table", &format!("{schema}.{table}"), &row);
        }
    }
    scanned.push(format!("{} tables", tables.len()));

    // Topics: every record up to the end as the scan starts.
    let topics = Contracts::embedded().topics.topics.len();
    let records = read_topics(&scope.brokers, &scope.prefix, |logical, message| {
        let mut text = String::new();
        for part in [message.key(), message.payload()].into_iter().flatten() {
            text.push_str(&String::from_utf8_lossy(part));
            text.push('\n');
        }
        if let Some(headers) = message.headers() {
            for header in headers.iter() {
                text.push_str(&String::from_utf8_lossy(header.value.unwrap_or_default()));
                text.push('\n');
            }
        }
        note(&mut findings, "topic", logical, &text.to_lowercase());
    })?;
    scanned.push(format!("{topics} topics ({records} records)"));

    // The mail capture.
    if let Some(url) = &scope.maildev_url {
        let body = reqwest::get(format!("{url}/email"))
            .await
            .context("asking maildev for its messages")?
            .text()
            .await?;
        note(&mut findings, "mail", url, &body.to_lowercase());
        scanned.push("the mail capture".to_string());
    }

    // Log and mail files.
    let mut files = 0;
    for dir in &scope.files {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if path.is_file() {
                let text = String::from_utf8_lossy(&std::fs::read(&path)?).to_lowercase();
                note(&mut findings, "file", &path.display().to_string(), &text);
                files += 1;
            }
        }
    }
    scanned.push(format!("{files} files"));
    Ok((findings, scanned))
}

/// Reads every record of every topic of the contracts (dead-letter topics
/// included) from the beginning up to the end as the read starts (see
/// [`psymatch_runtime::broker::read_topics`]).
pub fn read_topics(
    brokers: &str,
    prefix: &str,
    each: impl FnMut(&str, &BorrowedMessage<'_>),
) -> anyhow::Result<usize> {
    let topics: Vec<&str> = Contracts::embedded()
        .topics
        .topics
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    psymatch_runtime::broker::read_topics(brokers, prefix, &topics, each)
}

/// Prints the findings as a table.
pub fn print(findings: &Findings, scanned: &[String]) {
    println!("scanned: {}", scanned.join(", "));
    if findings.is_empty() {
        println!("no trace of any value");
        return;
    }
    println!("\n| kind | place | values found (numbers) | items |");
    println!("|---|---|---|---|");
    for ((kind, place), (values, items)) in findings {
        let numbers: Vec<String> = values.iter().map(usize::to_string).collect();
        println!("| {kind} | {place} | {} | {items} |", numbers.join(", "));
    }
}
