//! The README's section for other Kafka clients, exercised: its Python
//! block runs with Confluent's client against the real broker, registry
//! and intake (the registration is accepted, the position given is the
//! home, no geocoder asked), and its key table says what `topics.yaml`
//! says.

use psymatch_intake::Intake;
use psymatch_runtime::contracts::Contracts;
use psymatch_runtime::testing::{Running, TestBed, scratch_dir, stack_env};
use std::collections::BTreeMap;

const README: &str = include_str!("../../../README.md");
const SECTION: &str = "## From other Kafka clients";

/// The section's text, up to the next heading of its level.
fn section() -> &'static str {
    let start = README.find(SECTION).expect("the README has the section");
    let rest = &README[start + SECTION.len()..];
    &rest[..rest.find("\n## ").unwrap_or(rest.len())]
}

#[test]
fn the_key_table_is_the_one_of_topics_yaml() {
    let mut listed = BTreeMap::new();
    for line in section()
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| topic"))
    {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        for pair in cells.chunks(2) {
            listed.insert(pair[0].to_string(), pair[1].to_string());
        }
    }
    let expected: BTreeMap<String, String> = Contracts::embedded()
        .topics
        .topics
        .iter()
        .filter(|t| t.dead_letter_of.is_none())
        .map(|t| (t.name.clone(), t.key.clone()))
        .collect();
    assert_eq!(listed, expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_example_registers_a_patient() {
    let bed = TestBed::new().await;
    let intake = Running::start(Intake, bed.config("intake"));
    let text = section();
    let code = text
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a python block");
    let dir = scratch_dir("psymatch-client-readme");
    let script = dir.join("client.py");
    std::fs::write(&script, code).unwrap();
    let out = std::process::Command::new(stack_env("PSYMATCH_PYTHON"))
        .arg(&script)
        .env("KAFKA_BROKERS", &bed.brokers)
        .env("SCHEMA_REGISTRY_URL", &bed.registry_url)
        .env("TOPIC_PREFIX", &bed.prefix)
        .env("PATIENT_ID", "client-readme")
        .output()
        .expect("the stack's Python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "patient.registered", "{stdout}");
    let (latitude, request): (Option<f64>, Option<String>) = sqlx::query_as(
        "SELECT latitude, geocode_request FROM intake.patients WHERE patient_id = 'client-readme'",
    )
    .fetch_one(&bed.pool)
    .await
    .unwrap();
    assert_eq!(latitude, Some(52.53), "the position given is the home");
    assert_eq!(request, None, "no geocoder asked");
    intake.stop().await;
}
