//! Helpers for tests against the real local stack (`scripts/stack up`).
//!
//! Tests never skip for want of a service: a missing one is a failure that
//! says how to start it.

mod batch;
mod bed;
pub mod cluster;
pub mod mail;
mod own;
pub mod people;
pub mod tls;

pub use batch::{OpenBatch, open_batch, run_batch, wait_until};
pub use bed::TestBed;
pub use own::{OwnBroker, OwnPgBouncer, OwnPostgres};

use crate::db;
use sqlx::PgPool;

/// An environment variable the stack exports, or a panic naming the fix.
pub fn stack_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: start the local stack with scripts/stack up and `. .stack/env`")
    })
}

/// A new, migrated database of its own for one test, on the server of
/// `DATABASE_URL`. The stack drops these on its next start.
pub async fn fresh_database() -> (PgPool, String) {
    fresh_database_on(&stack_env("DATABASE_URL")).await
}

/// [`fresh_database`] on the server of `base_url`.
pub async fn fresh_database_on(base_url: &str) -> (PgPool, String) {
    // The query (sslmode, sslrootcert: a path with slashes) stays on
    // every URL made from this one.
    let (base, query) = base_url
        .split_once('?')
        .map_or((base_url, String::new()), |(b, q)| (b, format!("?{q}")));
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    let admin = db::connect(&format!("{server}/postgres{query}"))
        .await
        .expect("the stack's PostgreSQL answers");
    let name = format!("psymatch_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .expect("creating a test database");
    admin.close().await;
    let url = format!("{server}/{name}{query}");
    let pool = db::connect(&url)
        .await
        .expect("connecting to the test database");
    db::migrate(&pool)
        .await
        .expect("migrating the test database");
    (pool, url)
}

/// A loopback port free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A new, empty directory under the system's temporary directory.
pub fn scratch_dir(prefix: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("creating a scratch directory");
    dir
}

/// A child process killed when dropped, so a failing test leaves nothing
/// running.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Starts `binary` with `env`, its stderr (the logs) appended to `log`.
    pub fn spawn(binary: &str, env: &[(String, String)], log: &std::path::Path) -> KillOnDrop {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("opening the log file");
        std::process::Command::new(binary)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .map(KillOnDrop)
            .unwrap_or_else(|error| panic!("starting {binary}: {error}"))
    }

    /// Sends SIGTERM and waits for the exit, failing the test when the
    /// process is still running `within` after the signal.
    pub async fn terminate(&mut self, within: std::time::Duration) -> std::process::ExitStatus {
        self.stop_within(within)
            .await
            .unwrap_or_else(|| panic!("still running {within:?} after SIGTERM"))
    }

    /// Sends SIGTERM and waits for the exit: its status, or `None` when
    /// the process still ran `within` after the signal.
    pub async fn stop_within(
        &mut self,
        within: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let pid = self.0.id().to_string();
        let signalled = std::time::Instant::now();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill -TERM {pid} failed");
        while signalled.elapsed() < within {
            if let Some(status) = self.0.try_wait().expect("waiting for the process") {
                return Some(status);
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The records of `event_type`, each event once (a relay may publish a
/// record twice, always with the same event id).
pub fn of_type<'a>(records: &'a [Received], event_type: &str) -> Vec<&'a Received> {
    let mut seen = std::collections::HashSet::new();
    records
        .iter()
        .filter(|r| {
            r.envelope
                .as_ref()
                .is_some_and(|e| e.event_type == event_type)
        })
        .filter(|r| seen.insert(r.envelope.as_ref().map(|e| e.event_id)))
        .collect()
}

/// `bytes` (an encoded record) with the length prefix of the string
/// `marker` rewritten to claim `claim` bytes (Avro's zig-zag varint): a
/// small record that lies about its size. The marker must be shorter than
/// 64 bytes (a one-byte prefix).
pub fn lie_about_length(mut bytes: Vec<u8>, marker: &str, claim: i64) -> Vec<u8> {
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("the marker is in the record");
    assert_eq!(
        bytes[at - 1] as usize,
        marker.len() * 2,
        "a one-byte prefix"
    );
    let mut zigzag = ((claim << 1) ^ (claim >> 63)) as u64;
    let mut prefix = Vec::new();
    while zigzag >= 0x80 {
        prefix.push((zigzag as u8 & 0x7f) | 0x80);
        zigzag >>= 7;
    }
    prefix.push(zigzag as u8);
    bytes.splice(at - 1..at, prefix);
    bytes
}

/// A processor running in the test's process until [`Running::stop`].
pub struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    /// Starts `processor` with `config`.
    pub fn start<P: crate::processor::Processor>(
        processor: P,
        config: crate::config::RuntimeConfig,
    ) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(crate::app::run_with(processor, config, async move {
            let _ = stopped.await;
        }));
        Running { stop, task }
    }

    /// Stops it (drain and exit) and fails the test if it failed.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task
            .await
            .expect("the processor task ended")
            .expect("the processor ran without error");
    }
}

/// Benchmarks: runs `processor` (whose state is in schema `processor`)
/// over what its inputs hold, from empty offsets, and returns the seconds
/// from its first commit until `records` are committed and its outbox is
/// published, and how many records that timing covers (start-up, the
/// connection and lease acquisition are not throughput).
pub async fn throughput<P: crate::processor::Processor>(
    bed: &TestBed,
    pool: &PgPool,
    processor: P,
    group: &str,
    records: i64,
) -> anyhow::Result<(f64, i64)> {
    let schema = processor.name();
    sqlx::query(&format!(
        "TRUNCATE {schema}.consumer_offsets, {schema}.processed_events, {schema}.outbox"
    ))
    .execute(pool)
    .await?;
    let mut config = bed.config(schema);
    config.group = format!("{}{group}", bed.prefix);
    let running = Running::start(processor, config);
    let mut first = None;
    loop {
        // Offsets start at 0 without holes: their sum is what is committed.
        let (done, pending): (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT coalesce(sum(next_offset), 0)::bigint FROM {schema}.consumer_offsets),
                    (SELECT count(*) FROM {schema}.outbox)"
        ))
        .fetch_one(pool)
        .await?;
        if done > 0 && first.is_none() {
            first = Some((std::time::Instant::now(), done));
        }
        if done >= records && pending == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (from, already) = first.expect("records were committed");
    let seconds = from.elapsed().as_secs_f64();
    running.stop().await;
    Ok((seconds, records - already))
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Received {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<String>,
    /// Headers (text values).
    pub headers: std::collections::BTreeMap<String, String>,
    /// Raw value.
    pub value: Option<Vec<u8>>,
    /// The value decoded as an envelope, when it is one.
    pub envelope: Option<crate::envelope::Envelope>,
}

impl Received {
    /// The decoded payload as JSON (panics on a record that is no envelope).
    pub fn payload(&self) -> serde_json::Value {
        crate::avro_json::to_json(&self.envelope.as_ref().expect("an envelope").payload)
    }
}

/// A processor that consumes one topic and does nothing: the runtime's own
/// cost, the baseline benchmarks measure a processor against. It runs
/// under the name (and PostgreSQL schema) of the processor it stands for.
pub struct Noop {
    /// The processor it stands for.
    pub name: &'static str,
    /// The topic it consumes.
    pub input: &'static str,
}

impl crate::processor::Processor for Noop {
    fn name(&self) -> &'static str {
        self.name
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec![self.input]
    }

    async fn process(
        &self,
        _ctx: &mut crate::processor::Context<'_>,
        _record: &crate::processor::Incoming,
    ) -> Result<(), crate::processor::ProcessError> {
        Ok(())
    }
}

/// GETs `path` from the query surface on `port`, with `token` as bearer
/// when given: the status and the JSON body.
pub async fn query(port: u16, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let mut request = client.get(format!("http://127.0.0.1:{port}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the surface answers");
    let status = response.status().as_u16();
    (status, response.json().await.expect("a JSON body"))
}

/// The sum of the samples of `name` on the surface's `/metrics` on
/// `port` whose labels include every one of `labels` (`name` with the
/// `psymatch_` prefix; every sample has the `processor` label).
pub async fn metric(port: u16, name: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("the surface answers")
        .text()
        .await
        .expect("a text body");
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| labels.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
