//! The Kafka broker as every psymatch binary talks to it: whether it
//! answers (one check with one message, shared by the processors, which
//! wait for it at start, and the `psymatch` tool, which says so in one line
//! and stops), and how a producer is configured.

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::Duration;

/// The broker did not answer a metadata request.
#[derive(Debug, thiserror::Error)]
#[error("the Kafka broker at {brokers} is unreachable (KAFKA_BROKERS): {reason}")]
pub struct Unreachable {
    /// The bootstrap servers asked.
    pub brokers: String,
    /// librdkafka's reason, on one line.
    pub reason: String,
}

/// The settings of every psymatch producer: idempotent, so that its own
/// retries (a broker restart, a lost acknowledgement) neither duplicate
/// nor reorder a partition's records; a short linger for batching; a
/// delivery bound after which a send fails and is retried by the caller.
pub fn producer_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        .set("enable.idempotence", "true")
        .set("linger.ms", "2")
        .set("message.timeout.ms", "30000");
    config
}

/// Asks `brokers` for their metadata within `timeout`. Blocks: call it off
/// the async workers.
pub fn check(brokers: &str, timeout: Duration) -> Result<(), Unreachable> {
    let unreachable = |reason: String| Unreachable {
        brokers: brokers.to_string(),
        reason,
    };
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // A refused connection is the answer: no log line per retry.
        .set("log_level", "0")
        .create()
        .map_err(|e| unreachable(e.to_string()))?;
    match client.fetch_metadata(None, timeout) {
        Ok(metadata) if !metadata.brokers().is_empty() => Ok(()),
        Ok(_) => Err(unreachable("no broker in the cluster's metadata".into())),
        Err(error) => Err(unreachable(one_line(&error.to_string()))),
    }
}

/// Reads how far a topic's partitions reach (their watermarks): what a
/// consumer must have read to have seen everything published before.
pub struct Watermarks {
    client: std::sync::Arc<BaseConsumer>,
}

impl Watermarks {
    /// A client for `brokers` (no group: it only reads metadata).
    pub fn connect(brokers: &str) -> anyhow::Result<Watermarks> {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("client.id", "psymatch-watermarks")
            .create()?;
        Ok(Watermarks {
            client: std::sync::Arc::new(client),
        })
    }

    /// Every partition of `topic` with its low and high watermark now.
    pub async fn of(&self, topic: &str, timeout: Duration) -> anyhow::Result<Vec<(i32, i64, i64)>> {
        let client = self.client.clone();
        let topic = topic.to_string();
        // librdkafka's calls block: off the async workers.
        tokio::task::spawn_blocking(move || {
            let metadata = client.fetch_metadata(Some(&topic), timeout)?;
            let partitions: Vec<i32> = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            anyhow::ensure!(!partitions.is_empty(), "topic {topic} has no partitions");
            partitions
                .into_iter()
                .map(|p| {
                    let (low, high) = client.fetch_watermarks(&topic, p, timeout)?;
                    Ok((p, low, high))
                })
                .collect()
        })
        .await?
    }
}

/// Reads every record of the logical `topics` (with `prefix`) from the
/// beginning up to their end as the read starts, every partition at once,
/// and hands each to `each` with its logical topic name; returns how many
/// there were. No group joins and nothing is committed: reading leaves no
/// trace on the broker.
pub fn read_topics(
    brokers: &str,
    prefix: &str,
    topics: &[&str],
    mut each: impl FnMut(&str, &rdkafka::message::BorrowedMessage<'_>),
) -> anyhow::Result<usize> {
    use rdkafka::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set(
            "group.id",
            format!("psymatch-read-{}", uuid::Uuid::new_v4()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: std::collections::BTreeMap<(String, i32), i64> = Default::default();
    let timeout = Duration::from_secs(10);
    for topic in topics {
        let physical = format!("{prefix}{topic}");
        let metadata = consumer.fetch_metadata(Some(&physical), timeout)?;
        let partitions: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        for partition in partitions {
            let (low, high) = consumer.fetch_watermarks(&physical, partition, timeout)?;
            if high > low {
                assignment.add_partition_offset(&physical, partition, Offset::Offset(low))?;
                ends.insert((physical.clone(), partition), high);
            }
        }
    }
    if ends.is_empty() {
        return Ok(0);
    }
    consumer.assign(&assignment)?;
    let mut records = 0usize;
    let mut quiet_since = std::time::Instant::now();
    while !ends.is_empty() {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            // A partition may end in a transaction marker, which is never
            // delivered: its position shows that it has been read.
            for tp in consumer.position()?.elements() {
                let at = (tp.topic().to_string(), tp.partition());
                if let (Offset::Offset(position), Some(end)) = (tp.offset(), ends.get(&at))
                    && position >= *end
                {
                    ends.remove(&at);
                }
            }
            anyhow::ensure!(
                quiet_since.elapsed() < timeout,
                "no record within 10 s; still to read: {ends:?}"
            );
            continue;
        };
        quiet_since = std::time::Instant::now();
        let message = message?;
        let at = (message.topic().to_string(), message.partition());
        if ends
            .get(&at)
            .is_some_and(|end| message.offset() + 1 >= *end)
        {
            ends.remove(&at);
        }
        records += 1;
        each(message.topic().trim_start_matches(prefix), &message);
    }
    Ok(records)
}

/// librdkafka repeats its error code in the message
/// (`X (Local: Y): X (Local: Y)`): once is enough.
fn one_line(text: &str) -> String {
    let text = text.replace('\n', " ");
    match text.split_once(": ") {
        Some((head, tail)) if tail.starts_with(head.split(' ').next().unwrap_or(head)) => {
            tail.to_string()
        }
        _ => text,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_closed_port_is_unreachable_with_the_address_in_the_message() {
        let port = crate::testing::free_port();
        let brokers = format!("127.0.0.1:{port}");
        let error = super::check(&brokers, std::time::Duration::from_millis(500)).unwrap_err();
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("the Kafka broker at {brokers} is unreachable")),
            "{message}"
        );
        assert!(!message.contains('\n'), "{message}");
    }
}
