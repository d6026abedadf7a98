//! Applying topics.yaml to the real broker: idempotent, raises partitions,
//! alters configs, reports drift, never deletes.

use psymatch_runtime::testing::stack_env;
use psymatch_runtime::topics::{self, Admin, Change, Outcome, TopicsFile};

fn file(prefix: &str, partitions: i32, retention_ms: u64) -> TopicsFile {
    TopicsFile::parse(&format!(
        "defaults: {{partitions: 2, replication_factor: 1}}
topics:
  - name: {prefix}-events
    description: test topic
    key: id
    key_fields: [id]
    value_schema: schemas/none.avsc
    partitions: {partitions}
    config:
      cleanup.policy: delete
      retention.ms: {retention_ms}
  - name: {prefix}-events.dlq
    description: its dead letters
    key: id
    dead_letter_of: {prefix}-events
"
    ))
    .unwrap()
}

#[tokio::test]
async fn apply_is_idempotent_and_applies_partition_and_config_changes() {
    let admin = Admin::connect(&stack_env("KAFKA_BROKERS")).unwrap();
    let prefix = format!("apply-{}", uuid::Uuid::new_v4().simple());
    let events = format!("{prefix}-events");

    let first = topics::apply(&admin, &file(&prefix, 2, 86_400_000), false)
        .await
        .unwrap();
    let created: Vec<&str> = first
        .iter()
        .filter_map(|o| match &o.change {
            Change::Create(t) if o.result.is_ok() => Some(t.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(created, vec![events.as_str(), &format!("{events}.dlq")]);

    let ours = |outcomes: Vec<Outcome>| -> Vec<Outcome> {
        outcomes
            .into_iter()
            .filter(|o| match &o.change {
                Change::Create(t) => t.name.starts_with(&prefix),
                Change::AddPartitions { topic, .. }
                | Change::AlterConfig { topic, .. }
                | Change::Drift { topic, .. } => topic.starts_with(&prefix),
            })
            .collect()
    };
    // Topics of other tests and of the stack show up as drift here: the file
    // declares only ours.
    let second = ours(
        topics::apply(&admin, &file(&prefix, 2, 86_400_000), false)
            .await
            .unwrap(),
    );
    assert_eq!(second, vec![], "the second apply changes nothing");

    let changed = file(&prefix, 4, 172_800_000);
    let dry = ours(topics::apply(&admin, &changed, true).await.unwrap());
    assert_eq!(dry.len(), 2, "{dry:?}");
    let third = ours(topics::apply(&admin, &changed, false).await.unwrap());
    assert_eq!(
        third[0].change,
        Change::AddPartitions {
            topic: events.clone(),
            from: 2,
            to: 4
        }
    );
    assert!(
        matches!(&third[1].change, Change::AlterConfig { topic, differing, .. }
            if topic == &events && differing == &[("retention.ms".to_string(), Some("86400000".to_string()), "172800000".to_string())]),
        "{third:?}"
    );
    assert_eq!(third[1].result, Ok(()), "the config change is applied");
    let after = admin.describe(&["retention.ms".to_string()]).await.unwrap();
    assert_eq!(after[&events].config["retention.ms"], "172800000");
    // CreatePartitions: the partitions are raised, and nothing is left to do.
    assert_eq!(third[0].result, Ok(()), "the partitions are raised");
    assert_eq!(after[&events].partitions, 4);
    assert_eq!(
        ours(topics::apply(&admin, &changed, false).await.unwrap()),
        vec![],
        "after raising, the declaration and the broker agree"
    );

    // Fewer partitions than declared before: reported, never applied.
    let fewer = ours(
        topics::apply(&admin, &file(&prefix, 1, 172_800_000), false)
            .await
            .unwrap(),
    );
    assert!(
        matches!(&fewer[..], [Outcome { change: Change::Drift { topic, what }, .. }] if topic == &events && what.contains("cannot remove")),
        "{fewer:?}"
    );
}
