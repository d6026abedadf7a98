//! `--topic-prefix` (and `TOPIC_PREFIX`) is honoured by every command
//! that touches topics or subjects: `topics apply` creates the prefixed
//! topics, `schemas register` registers the prefixed subjects, `publish`
//! and `tail` write and read the prefixed topic, and nothing reaches the
//! unprefixed names.

use psymatch_runtime::testing::stack_env;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

/// Runs `psymatch` with `args` against the local stack, `stdin` as input.
fn psymatch(args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_psymatch"))
        .args(args)
        .env("KAFKA_BROKERS", stack_env("KAFKA_BROKERS"))
        .env("SCHEMA_REGISTRY_URL", stack_env("SCHEMA_REGISTRY_URL"))
        .env_remove("TOPIC_PREFIX")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = stdin.unwrap_or("").to_string();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The topics the broker has.
fn topics() -> Vec<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack_env("KAFKA_BROKERS"))
        .create()
        .unwrap();
    consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap()
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_works_on_the_prefixed_topics() {
    let prefix = format!("prefix-{}.", uuid::Uuid::new_v4().simple());
    psymatch(&["--topic-prefix", &prefix, "topics", "apply"], None);
    let names = topics();
    let declared = psymatch_runtime::contracts::Contracts::embedded()
        .topics
        .topics
        .len();
    let prefixed = names.iter().filter(|n| n.starts_with(&prefix)).count();
    assert_eq!(prefixed, declared, "every declared topic, prefixed");

    let registered = psymatch(&["--topic-prefix", &prefix, "schemas", "register"], None);
    let text = String::from_utf8_lossy(&registered.stdout);
    assert!(
        text.lines()
            .all(|l| l.starts_with(&format!("registered {prefix}"))),
        "{text}"
    );
    let subjects: Vec<String> =
        reqwest::get(format!("{}/subjects", stack_env("SCHEMA_REGISTRY_URL")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert!(subjects.contains(&format!("{prefix}matching-commands-value")));

    let run = format!("run-{prefix}");
    let record = format!(
        r#"{{"event_type": "matching.run", "payload": {{"run_id": "{run}", "patient_id": null}}}}"#
    );
    psymatch(
        &[
            "publish",
            "--topic-prefix",
            &prefix,
            "matching-commands",
            "-",
        ],
        Some(&record),
    );
    // TOPIC_PREFIX works as the flag does.
    let tailed = Command::new(env!("CARGO_BIN_EXE_psymatch"))
        .args(["tail", "matching-commands", "--idle-timeout", "3"])
        .env("KAFKA_BROKERS", stack_env("KAFKA_BROKERS"))
        .env("SCHEMA_REGISTRY_URL", stack_env("SCHEMA_REGISTRY_URL"))
        .env("TOPIC_PREFIX", &prefix)
        .output()
        .unwrap();
    assert!(tailed.status.success());
    let lines = String::from_utf8_lossy(&tailed.stdout);
    assert_eq!(
        lines.lines().count(),
        1,
        "only the prefixed topic's record: {lines}"
    );
    assert!(lines.contains(&run), "{lines}");
}
