//! The `psymatch` tool against the running local stack, checked with two
//! independent readers: Confluent's Python client and kcat.

use psymatch_runtime::testing::stack_env;
use serde_json::{Value, json};
use std::io::Write;
use std::process::{Command, Output, Stdio};

fn run(mut command: Command, stdin: Option<&str>) -> Output {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("starting the command");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn psymatch(args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_psymatch"));
    command.args(args);
    run(command, stdin)
}

fn ok(output: Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "failed: {stderr}");
    String::from_utf8(output.stdout).unwrap()
}

/// Topics and schemas in place (both commands are idempotent).
fn prepare() {
    ok(psymatch(&["topics", "apply"], None));
    ok(psymatch(&["schemas", "register"], None));
}

fn python(args: &[&str]) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/python/confluent_client.py"
    );
    let mut command = Command::new(stack_env("PSYMATCH_PYTHON"));
    command.arg(script).args(args);
    serde_json::from_str(&ok(run(command, None))).unwrap()
}

/// Every record of the topic with this key, as `psymatch tail` prints them.
fn tail(topic: &str, key: &str) -> Vec<Value> {
    ok(psymatch(&["tail", topic, "--idle-timeout", "3"], None))
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|record| record["key"] == key)
        .collect()
}

fn unique_key() -> String {
    format!("p-{}", uuid::Uuid::new_v4().simple())
}

#[test]
fn published_json_reads_back_with_tail_python_and_kcat() {
    prepare();
    let key = unique_key();
    let record = json!({"event_type": "patient.pause_search", "correlation_id": "corr-interop",
                        "payload": {"patient_id": key, "reason": "holiday"}});
    let published = ok(psymatch(
        &["publish", "patient-commands", "-"],
        Some(&record.to_string()),
    ));
    assert!(published.contains(&format!("key={key}")), "{published}");

    let tailed = tail("patient-commands", &key);
    assert_eq!(tailed.len(), 1, "{tailed:?}");
    let value = &tailed[0]["value"];
    let event_id = value["event_id"].as_str().unwrap().to_string();
    assert_eq!(value["event_type"], "patient.pause_search");
    assert_eq!(
        value["payload"],
        json!({"patient_id": key, "reason": "holiday"})
    );
    assert_eq!(value["producer"], "cli");
    assert_eq!(tailed[0]["headers"]["event_id"], event_id.as_str());
    assert_eq!(tailed[0]["headers"]["correlation_id"], "corr-interop");

    let brokers = stack_env("KAFKA_BROKERS");
    let registry = stack_env("SCHEMA_REGISTRY_URL");
    let decoded = python(&["consume", &brokers, &registry, "patient-commands", &key]);
    assert_eq!(decoded.as_array().unwrap().len(), 1, "{decoded}");
    assert_eq!(decoded[0]["value"]["event_id"], event_id.as_str());
    assert_eq!(decoded[0]["value"]["payload"], value["payload"]);
    assert_eq!(decoded[0]["value"]["correlation_id"], "corr-interop");
    assert_eq!(decoded[0]["headers"]["event_type"], "patient.pause_search");

    let mut kcat = Command::new(stack_env("KCAT"));
    kcat.args([
        "-b",
        &brokers,
        "-C",
        "-t",
        "patient-commands",
        "-f",
        "%k %h\n",
        "-e",
        "-q",
    ]);
    let lines = ok(run(kcat, None));
    let line = lines
        .lines()
        .find(|line| line.starts_with(&format!("{key} ")))
        .unwrap_or_else(|| panic!("kcat shows no record with key {key}:\n{lines}"));
    assert_eq!(
        line,
        format!(
            "{key} event_id={event_id},event_type=patient.pause_search,producer=cli,\
             correlation_id=corr-interop"
        )
    );
}

#[test]
fn records_written_by_confluents_serializer_are_read_by_psymatch() {
    prepare();
    let key = unique_key();
    let event_id = uuid::Uuid::new_v4().to_string();
    let brokers = stack_env("KAFKA_BROKERS");
    let registry = stack_env("SCHEMA_REGISTRY_URL");
    let sent = python(&[
        "produce",
        &brokers,
        &registry,
        "patient-commands",
        &key,
        &event_id,
    ]);
    assert_eq!(sent, json!({"unsent": 0}));
    let tailed = tail("patient-commands", &key);
    assert_eq!(tailed.len(), 1, "{tailed:?}");
    let value = &tailed[0]["value"];
    assert_eq!(value["event_id"], event_id.as_str());
    assert_eq!(value["event_type"], "patient.resume_search");
    assert_eq!(value["producer"], "python-interop");
    assert_eq!(value["payload"], json!({"patient_id": key}));
}

#[test]
fn confluents_registry_client_works_against_the_registry() {
    prepare();
    let registry = stack_env("SCHEMA_REGISTRY_URL");
    let report = python(&["registry", &registry, "patient-events-value"]);
    assert!(
        report["subjects"]
            .as_array()
            .unwrap()
            .contains(&json!("patient-events-value"))
    );
    assert_eq!(report["by_id_matches"], true);
    assert_eq!(report["compatible"], true);
    assert_eq!(report["register_again_id"], report["latest_id"]);
    assert_eq!(report["lookup_version"], report["latest_version"]);
    assert_eq!(report["level"], "BACKWARD");
}

#[test]
fn publish_refuses_what_does_not_fit_and_publishes_nothing() {
    prepare();
    let key = unique_key();
    let records = [
        json!({"event_type": "patient.resume_search", "payload": {"patient_id": key}}),
        json!({"event_type": "patient.pause_search", "payload": {"patient_id": key, "reason": 5}}),
        json!({"event_type": "patient.fly", "payload": {"patient_id": key}}),
    ];
    let input: String = records.iter().map(|r| format!("{r}\n")).collect();
    let output = psymatch(&["publish", "patient-commands", "-"], Some(&input));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("2 of 3 records do not fit"), "{stderr}");
    assert!(
        stderr.contains("record 2: does not fit the schema of patient-commands: payload.reason"),
        "{stderr}"
    );
    assert!(
        stderr.contains("record 3: topic patient-commands carries no event_type 'patient.fly'"),
        "{stderr}"
    );
    assert!(tail("patient-commands", &key).is_empty());
}

#[test]
fn an_incompatible_schema_change_fails_registration_with_the_registrys_reason() {
    prepare();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let edited = std::env::temp_dir().join(format!("contracts-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(edited.join("schemas")).unwrap();
    std::fs::copy(root.join("topics.yaml"), edited.join("topics.yaml")).unwrap();
    for entry in std::fs::read_dir(root.join("schemas")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), edited.join("schemas").join(entry.file_name())).unwrap();
    }
    // A new required field in a payload record: readers of the new schema
    // could not read records already written.
    let path = edited.join("schemas/patient-commands.avsc");
    let mut schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let pause = schema["fields"][6]["type"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|record| record["name"] == "PauseSearch")
        .unwrap();
    pause["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "until", "type": "string", "doc": "required, no default"}));
    std::fs::write(&path, schema.to_string()).unwrap();

    let output = psymatch(
        &[
            "--contracts",
            edited.to_str().unwrap(),
            "schemas",
            "register",
        ],
        None,
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "patient-commands-value refused by the registry (409 Conflict, error_code 409)"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("BACKWARD"), "{stderr}");
    std::fs::remove_dir_all(&edited).unwrap();
}

#[test]
fn publish_names_every_misfit_of_a_patients_details_and_publishes_nothing() {
    prepare();
    let key = unique_key();
    let mut record = psymatch_runtime::testing::people::registration(&key, "10115");
    let details = record["payload"]["details"].as_object_mut().unwrap();
    details.remove("email");
    details["address"]
        .as_object_mut()
        .unwrap()
        .remove("postcode");
    details.insert("date_of_birth".into(), json!("12.04.1991"));
    let output = psymatch(
        &["publish", "patient-commands", "-"],
        Some(&format!("{record}\n")),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for misfit in [
        "record 1: payload.details.address.postcode: missing required field",
        "record 1: payload.details.email: missing required field",
        "record 1: payload.details.date_of_birth: is not a date (YYYY-MM-DD)",
    ] {
        assert!(stderr.contains(misfit), "{misfit} not in {stderr}");
    }
    assert!(stderr.contains("nothing published"), "{stderr}");
    assert!(tail("patient-commands", &key).is_empty());
}

#[test]
fn publish_says_what_to_do_when_the_registry_or_the_database_does_not_answer() {
    prepare();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let record = psymatch_runtime::testing::people::registration(&unique_key(), "10115");
    let input = format!("{record}\n");
    let registry = format!("http://127.0.0.1:{closed}");
    let output = psymatch(
        &["--registry", &registry, "publish", "patient-commands", "-"],
        Some(&input),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!(
            "the schema registry at {registry} does not answer"
        )) && stderr.contains("SCHEMA_REGISTRY_URL"),
        "{stderr}"
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_psymatch"));
    command.args(["publish", "patient-commands", "-"]).env(
        "DATABASE_URL",
        format!("postgres://postgres@127.0.0.1:{closed}/psymatch"),
    );
    let output = run(command, Some(&input));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("sealing a patient's details needs PostgreSQL")
            && stderr.contains("source .stack/env"),
        "{stderr}"
    );
}

#[test]
fn tail_ends_quietly_when_its_reader_has_seen_enough() {
    prepare();
    let key = unique_key();
    let records: String = (0..3)
        .map(|i| {
            format!(
                "{}\n",
                json!({"event_type": "matching.run", "payload": {"run_id": format!("{key}-{i}"), "patient_id": null}})
            )
        })
        .collect();
    ok(psymatch(
        &["publish", "matching-commands", "-"],
        Some(&records),
    ));
    // `| head -n 1`: the reader closes the pipe after the first line.
    let output = Command::new("bash")
        .args([
            "-c",
            &format!(
                "set -o pipefail; {} tail matching-commands --idle-timeout 3 | head -n 1 >/dev/null",
                env!("CARGO_BIN_EXE_psymatch")
            ),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(output.status.success(), "{stderr}");
}
