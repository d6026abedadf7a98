//! `psymatch tail --matching T --until E`: the README's tour reads a topic
//! right after publishing, so tail prints only the records that contain
//! `T`, waits for one containing `E` that is still on its way (the idle
//! timeout counts only after it), and says in one line when none came.

use psymatch_runtime::testing::{TestBed, people};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn tail(bed: &TestBed, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_psymatch"));
    command
        .args(["tail", "scraping-commands"])
        .args(args)
        .env("KAFKA_BROKERS", &bed.brokers)
        .env("SCHEMA_REGISTRY_URL", &bed.registry_url)
        .env("TOPIC_PREFIX", &bed.prefix);
    command
}

fn import(run_id: &str) -> serde_json::Value {
    people::command(
        "scraping.import_files",
        json!({"run_id": run_id, "directory": "/nowhere", "format": "JSON"}),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_waits_for_the_record_it_is_told_to_and_prints_only_matching_ones() {
    let bed = TestBed::new().await;
    bed.publish("scraping-commands", &[import("other-1"), import("mine-1")])
        .await;
    // A short idle timeout that would end a plain tail long before the
    // awaited record is published: --until makes it wait.
    let mut child = tail(
        &bed,
        &[
            "--matching",
            "mine-",
            "--until",
            "mine-2",
            "--idle-timeout",
            "0.2",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a line").unwrap();
    assert!(first.contains("mine-1"), "{first}");
    // The first matching record is printed: tail is reading, now idle.
    bed.publish("scraping-commands", &[import("other-2"), import("mine-2")])
        .await;
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let status = child.wait().unwrap();
    assert!(status.success(), "tail ended with {status}");
    assert_eq!(rest.len(), 1, "{rest:?}");
    assert!(rest[0].contains("mine-2"), "{rest:?}");

    let missing = tail(&bed, &["--until", "never-published", "--timeout", "2"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(!missing.status.success());
    assert!(
        stderr.contains(&format!(
            "no record on {}scraping-commands contained \"never-published\" within 2 s",
            bed.prefix
        )),
        "{stderr}"
    );
    // Without --matching, every record was printed while it waited.
    let printed = String::from_utf8_lossy(&missing.stdout);
    assert_eq!(
        printed.lines().count(),
        4,
        "every record, none filtered: {printed}"
    );
}
