//! Partition leases in PostgreSQL: which live instance owns which input
//! partition when the assignment is not left to Kafka's consumer group.

use super::Shared;
use super::retry::backoff;
use crate::processor::Processor;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// What the lease task tells the consumer thread.
pub(super) enum LeaseCommand {
    /// Start consuming these partitions (their leases are held).
    Take(Vec<(String, i32)>),
    /// Stop consuming these; `finish`: commit what is held first.
    Release(Vec<(String, i32)>, bool),
}

/// Shares the input partitions among the live instances of this consumer
/// group with PostgreSQL session advisory locks, one per partition, held on
/// a connection of its own. Live instances are counted by that
/// connection's application name; an instance that dies loses its
/// connection and with it its locks, so its partitions move within a tick.
/// (A consumer group moves a killed member's partitions only after its
/// session timeout, 10 s on the local stack: the reason leases remain.)
pub(super) async fn lease_loop<P: Processor>(
    shared: Arc<Shared<P>>,
    stop: Arc<AtomicBool>,
    topics: Vec<String>,
    commands: std::sync::mpsc::Sender<LeaseCommand>,
) {
    use sqlx::{ConnectOptions, Connection};
    use std::str::FromStr;
    let group_id = Uuid::new_v5(&Uuid::NAMESPACE_OID, shared.config.group.as_bytes());
    let tag = format!("psymatch-lease-{}", &group_id.simple().to_string()[..16]);
    let lock_class = i32::from_be_bytes(group_id.as_bytes()[..4].try_into().expect("four bytes"));
    let lock_key = |entry: &(String, i32)| -> i32 {
        let topic_index = topics.iter().position(|t| *t == entry.0).unwrap_or(0) as i32;
        topic_index * 100_000 + entry.1
    };
    let options = match sqlx::postgres::PgConnectOptions::from_str(&shared.config.database_url) {
        Ok(options) => options.application_name(&tag),
        Err(error) => {
            tracing::error!(error = %error, "DATABASE_URL is not valid");
            shared
                .status
                .error(format!("DATABASE_URL is not valid: {error}"));
            return;
        }
    };
    let mut connection: Option<sqlx::PgConnection> = None;
    let mut held: std::collections::BTreeSet<(String, i32)> = Default::default();
    let mut partitions: Vec<(String, i32)> = Vec::new();
    let mut refreshed: Option<Instant> = None;
    let mut attempt = 0u32;
    while !stop.load(Ordering::SeqCst) {
        if connection.is_none() {
            match options.connect().await {
                Ok(fresh) => {
                    connection = Some(fresh);
                    attempt = 0;
                }
                Err(error) => {
                    attempt += 1;
                    shared.status.error(format!("lease connection: {error}"));
                    tokio::time::sleep(backoff(attempt, Duration::from_secs(5))).await;
                    continue;
                }
            }
        }
        if refreshed.is_none_or(|at| at.elapsed() > Duration::from_secs(10)) {
            match partitions_of(&shared.config.brokers, &topics).await {
                Ok(found) => {
                    partitions = found;
                    refreshed = Some(Instant::now());
                }
                Err(error) => shared.status.error(format!("reading partitions: {error}")),
            }
        }
        let db = connection.as_mut().expect("connected above");
        let tick: Result<(), sqlx::Error> = async {
            let alive: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(&tag)
            .fetch_one(&mut *db)
            .await?;
            let share = partitions.len().div_ceil(alive.max(1) as usize);
            if held.len() > share {
                let extra: Vec<(String, i32)> = held
                    .iter()
                    .rev()
                    .take(held.len() - share)
                    .cloned()
                    .collect();
                for entry in &extra {
                    held.remove(entry);
                }
                let _ = commands.send(LeaseCommand::Release(extra.clone(), true));
                for entry in &extra {
                    sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                        .bind(lock_class)
                        .bind(lock_key(entry))
                        .execute(&mut *db)
                        .await?;
                }
            } else if held.len() < share {
                let mut taken = Vec::new();
                for entry in &partitions {
                    if held.len() >= share {
                        break;
                    }
                    if held.contains(entry) {
                        continue;
                    }
                    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                        .bind(lock_class)
                        .bind(lock_key(entry))
                        .fetch_one(&mut *db)
                        .await?;
                    if locked {
                        held.insert(entry.clone());
                        taken.push(entry.clone());
                    }
                }
                if !taken.is_empty() {
                    let _ = commands.send(LeaseCommand::Take(taken));
                }
            }
            Ok(())
        }
        .await;
        if let Err(error) = tick {
            // The connection is gone, and with it every lock: another
            // instance may own these partitions already.
            tracing::warn!(error = %error, "lease connection lost; releasing partitions");
            shared
                .status
                .error(format!("lease connection lost: {error}"));
            if !held.is_empty() {
                let lost: Vec<(String, i32)> = std::mem::take(&mut held).into_iter().collect();
                let _ = commands.send(LeaseCommand::Release(lost, false));
            }
            connection = None;
            continue;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Shutdown: the consumer thread drains the workers; the locks go with
    // the connection.
    if let Some(db) = connection {
        let _ = db.close().await;
    }
}

/// The partitions of `topics` on the broker.
pub(super) async fn partitions_of(
    brokers: &str,
    topics: &[String],
) -> Result<Vec<(String, i32)>, String> {
    let brokers = brokers.to_string();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = crate::broker::client(&brokers)
            .create()
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for topic in &topics {
            let metadata = client
                .fetch_metadata(Some(topic), Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    out.push((t.name().to_string(), p.id()));
                }
            }
        }
        Ok(out)
    })
    .await
    .map_err(|e| e.to_string())?
}
