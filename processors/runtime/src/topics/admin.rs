//! Applying topics.yaml to a broker: what exists, the changes, creating
//! topics, raising partition counts and altering configs
//! (IncrementalAlterConfigs), and waiting until every broker sees them.

use super::{ActualTopic, Change, DesiredTopic, TopicsFile, plan};
use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Connection to a broker for topic administration.
pub struct Admin {
    client: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
}

impl Admin {
    /// Connects to `brokers` (comma-separated host:port).
    pub fn connect(brokers: &str) -> anyhow::Result<Admin> {
        let client = Arc::new(
            crate::broker::client(brokers)
                .set("client.id", "psymatch-admin")
                .create()?,
        );
        Ok(Admin {
            client,
            timeout: Duration::from_secs(15),
        })
    }

    /// Partition counts and the values of `keys` for every topic on the broker.
    pub async fn describe(&self, keys: &[String]) -> anyhow::Result<BTreeMap<String, ActualTopic>> {
        self.describe_configs_of(keys, |_| true).await
    }

    /// Partition counts of every topic on the broker, and the values of
    /// `keys` for the topics `wanted` picks (a broker shared by many
    /// environments has thousands of topics; describing all their configs
    /// for one file's topics is slow).
    pub async fn describe_configs_of(
        &self,
        keys: &[String],
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<BTreeMap<String, ActualTopic>> {
        // fetch_metadata blocks: keep it off the async workers.
        let (client, timeout) = (self.client.clone(), self.timeout);
        let metadata =
            tokio::task::spawn_blocking(move || client.inner().fetch_metadata(None, timeout))
                .await??;
        let mut topics: BTreeMap<String, ActualTopic> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none())
            .map(|t| {
                (
                    t.name().to_string(),
                    ActualTopic {
                        partitions: t.partitions().len() as i32,
                        replicas: t
                            .partitions()
                            .iter()
                            .map(|p| p.replicas().len() as i32)
                            .min()
                            .unwrap_or(0),
                        config: BTreeMap::new(),
                    },
                )
            })
            .collect();
        let names: Vec<String> = topics
            .keys()
            .filter(|n| !n.starts_with("__") && wanted(n))
            .cloned()
            .collect();
        if names.is_empty() || keys.is_empty() {
            return Ok(topics);
        }
        let resources: Vec<ResourceSpecifier> =
            names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
        let described = self
            .client
            .describe_configs(&resources, &self.options())
            .await?;
        for (name, result) in names.iter().zip(described) {
            let resource =
                result.map_err(|code| anyhow::anyhow!("describe configs of {name}: {code}"))?;
            let topic = topics
                .get_mut(name)
                .expect("described topics come from metadata");
            for entry in resource.entries {
                if keys.contains(&entry.name)
                    && let Some(value) = entry.value
                {
                    topic.config.insert(entry.name, value);
                }
            }
        }
        Ok(topics)
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new().request_timeout(Some(self.timeout))
    }

    /// Carries out one change; drift is not carried out.
    pub async fn apply(&self, change: &Change) -> anyhow::Result<()> {
        let check = |results: Vec<Result<String, (String, RDKafkaErrorCode)>>| {
            results.into_iter().try_for_each(|r| {
                r.map(|_| ())
                    .map_err(|(t, code)| anyhow::anyhow!("{t}: {code}"))
            })
        };
        match change {
            Change::Create(topic) => {
                let mut new = NewTopic::new(
                    &topic.name,
                    topic.partitions,
                    TopicReplication::Fixed(topic.replication_factor),
                );
                for (k, v) in &topic.config {
                    new = new.set(k, v);
                }
                let results = self.client.create_topics(&[new], &self.options()).await?;
                // Another process applying the same file at the same moment
                // created it first: that is the outcome wanted.
                let results = results
                    .into_iter()
                    .map(|r| match r {
                        Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(name),
                        other => other,
                    })
                    .collect();
                check(results)
            }
            Change::AddPartitions { topic, to, .. } => {
                let new = NewPartitions::new(topic, *to as usize);
                check(
                    self.client
                        .create_partitions(&[new], &self.options())
                        .await?,
                )
            }
            Change::AlterConfig { topic, all, .. } => {
                let (client, topic, configs, timeout) = (
                    self.client.clone(),
                    topic.clone(),
                    all.clone(),
                    self.timeout,
                );
                tokio::task::spawn_blocking(move || {
                    incremental_alter_configs(&client, &topic, &configs, timeout)
                })
                .await?
                .map_err(|reason| anyhow::anyhow!("alter configs: {reason}"))
            }
            Change::Drift { .. } => Ok(()),
        }
    }
}

/// Sets `configs` on `topic` with IncrementalAlterConfigs, through
/// librdkafka's own implementation, which rdkafka 0.39 does not wrap.
///
/// Incremental rather than the legacy AlterConfigs: it sets the named keys
/// and leaves the rest alone, and Kafka 4 drops the legacy call. Blocks
/// until the broker answers.
pub(crate) fn incremental_alter_configs(
    client: &AdminClient<DefaultClientContext>,
    topic: &str,
    configs: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<(), String> {
    use crate::admin_ffi::{admin_call, c_text, text};
    use rdkafka::bindings as rd;

    let name = c_text(topic)?;
    let entries: Vec<_> = configs
        .iter()
        .map(|(k, v)| Ok((c_text(k)?, c_text(v)?)))
        .collect::<Result<_, String>>()?;
    // SAFETY: the resource is created and destroyed here, after the call
    // that borrows it; results are read before the event is destroyed.
    unsafe {
        let mut resource = rd::rd_kafka_ConfigResource_new(
            rd::rd_kafka_ResourceType_t::RD_KAFKA_RESOURCE_TOPIC,
            name.as_ptr(),
        );
        for (key, value) in &entries {
            let error = rd::rd_kafka_ConfigResource_add_incremental_config(
                resource,
                key.as_ptr(),
                rd::rd_kafka_AlterConfigOpType_t::RD_KAFKA_ALTER_CONFIG_OP_TYPE_SET,
                value.as_ptr(),
            );
            if !error.is_null() {
                let reason = text(rd::rd_kafka_error_string(error));
                rd::rd_kafka_error_destroy(error);
                rd::rd_kafka_ConfigResource_destroy(resource);
                return Err(reason);
            }
        }
        let outcome = admin_call(
            client.inner().native_ptr(),
            timeout,
            rd::rd_kafka_admin_op_t::RD_KAFKA_ADMIN_OP_INCREMENTALALTERCONFIGS,
            |rk, options, queue| {
                rd::rd_kafka_IncrementalAlterConfigs(rk, &mut resource, 1, options, queue)
            },
            |event| {
                let result = rd::rd_kafka_event_IncrementalAlterConfigs_result(event);
                let mut count = 0usize;
                let resources =
                    rd::rd_kafka_IncrementalAlterConfigs_result_resources(result, &mut count);
                (0..count)
                    .map(|i| *resources.add(i))
                    .find(|r| {
                        rd::rd_kafka_ConfigResource_error(*r)
                            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                    })
                    .map_or(Ok(()), |r| {
                        Err(text(rd::rd_kafka_ConfigResource_error_string(r)))
                    })
            },
        );
        rd::rd_kafka_ConfigResource_destroy(resource);
        outcome
    }
}

/// A change and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The change.
    pub change: Change,
    /// `Ok` when carried out (or, for drift and dry runs, nothing to do);
    /// the broker's refusal otherwise.
    pub result: Result<(), String>,
}

/// Applies the declaration: plans against the broker, carries out what can
/// be carried out, and returns every change (drift included) with its
/// outcome. One refused change does not stop the others: a broker that
/// refuses one (a config it does not allow, an admin API it lacks) still
/// gets every topic and config it can take.
pub async fn apply(
    admin: &Admin,
    file: &TopicsFile,
    dry_run: bool,
) -> anyhow::Result<Vec<Outcome>> {
    let desired = file.desired();
    let keys: Vec<String> = desired
        .iter()
        .flat_map(|t| t.config.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let names: std::collections::BTreeSet<&str> = desired.iter().map(|t| t.name.as_str()).collect();
    let actual = admin
        .describe_configs_of(&keys, |name| names.contains(name))
        .await?;
    let mut outcomes = Vec::new();
    for change in plan(&desired, &actual) {
        let result = if dry_run {
            Ok(())
        } else {
            admin
                .apply(&change)
                .await
                .map_err(|error| error.to_string())
        };
        outcomes.push(Outcome { change, result });
    }
    let grown = outcomes.iter().any(|o| {
        o.result.is_ok() && matches!(o.change, Change::Create(_) | Change::AddPartitions { .. })
    });
    if grown && !dry_run {
        visible(admin, &desired).await?;
    }
    Ok(outcomes)
}

/// Waits (30 s at most) until the broker's metadata shows every desired
/// topic with its partitions: the controller has created them when the
/// admin call returns, but the broker that answers metadata learns of them
/// a moment later, and an apply that returns should mean they are there
/// for the next command (a second apply, a processor subscribing).
pub(crate) async fn visible(admin: &Admin, desired: &[DesiredTopic]) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let actual = admin.describe(&[]).await?;
        let missing: Vec<&str> = desired
            .iter()
            .filter(|t| {
                actual
                    .get(&t.name)
                    .is_none_or(|a| a.partitions < t.partitions)
            })
            .map(|t| t.name.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "created, but not in the broker's metadata after 30 s: {}",
            missing.join(", ")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
