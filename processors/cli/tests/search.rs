//! `psymatch search status` and `psymatch answer` against a running
//! matcher: the table and the JSON agree with the matcher's answer, an
//! answer by phone places the patient; an unknown patient, a practice
//! without an open inquiry, a missing token and an unreachable matcher
//! each end with a clear message.

use psymatch_matcher::{Matcher, MatcherConfig};
use psymatch_runtime::query::Tokens;
use psymatch_runtime::testing::{Running, TestBed, free_port, people};
use serde_json::Value;
use std::process::{Command, Output};
use std::time::Duration;

const TOKEN: &str = "ops-token-0123456789";

fn psymatch(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_psymatch"));
    command
        .args(["search", "status"])
        .args(args)
        .env("PSYMATCH_MATCHER_URL", url)
        .env_remove("PSYMATCH_TOKEN");
    if let Some(token) = token {
        command.env("PSYMATCH_TOKEN", token);
    }
    command.output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn search_status_shows_what_the_matcher_committed() {
    let bed = TestBed::new().await;
    let port = free_port();
    let mut config = bed.config("matcher");
    config.http_listen = format!("127.0.0.1:{port}");
    config.query_tokens = Tokens::parse(&format!("cli:ops:{TOKEN}")).unwrap();
    let matcher = Running::start(Matcher::new(MatcherConfig::default()), config);
    let practices: Vec<Value> = (0..3)
        .map(|n| people::discovered(n, (52.50 + n as f64 * 0.002, 13.40)))
        .collect();
    bed.publish("therapist-events", &practices).await;
    bed.publish(
        "patient-events",
        &[people::registered(0, 40, (52.52, 13.40))],
    )
    .await;
    bed.wait_for(
        "the inquiries committed",
        Duration::from_secs(90),
        || async {
            bed.count("SELECT count(*) FROM matcher.inquiries WHERE 'p-0' = ANY(patient_ids)")
                .await
                >= 3
        },
    )
    .await;
    let url = format!("http://127.0.0.1:{port}");

    let json = psymatch(&url, Some(TOKEN), &["p-0", "--json"]);
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let answer: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(answer["patient_id"], "p-0");
    let inquiries = answer["inquiries"].as_array().unwrap();
    assert_eq!(inquiries.len(), 3);

    let table = psymatch(&url, Some(TOKEN), &["p-0"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("ACTIVE since"), "{table}");
    for inquiry in inquiries {
        let id = inquiry["inquiry_id"].as_str().unwrap();
        let practice = inquiry["therapist_id"].as_str().unwrap();
        let row = table
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{table}"));
        assert!(row.contains(practice), "{row}");
    }

    // Why: the practice asked passes every rule but 9 (its inquiry holds
    // the patient now).
    let asked = inquiries[0]["therapist_id"].as_str().unwrap();
    let why = Command::new(env!("CARGO_BIN_EXE_psymatch"))
        .args(["search", "why", "p-0", asked])
        .env("PSYMATCH_MATCHER_URL", &url)
        .env("PSYMATCH_TOKEN", TOKEN)
        .output()
        .unwrap();
    let why = String::from_utf8(why.stdout).unwrap();
    assert!(why.contains("FAIL rule 9"), "{why}");
    assert_eq!(
        why.lines().filter(|l| l.starts_with("ok   rule")).count(),
        8,
        "{why}"
    );
    let unknown = psymatch(&url, Some(TOKEN), &["p-404"]);
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("no patient with id p-404"), "{stderr}");
    let untokened = psymatch(&url, None, &["p-0"]);
    assert!(String::from_utf8_lossy(&untokened.stderr).contains("PSYMATCH_TOKEN"));

    // An answer by phone places the patient.
    let practice = inquiries[0]["therapist_id"].as_str().unwrap();
    let answer = |therapist: &str| {
        Command::new(env!("CARGO_BIN_EXE_psymatch"))
            .args(["answer", "p-0", therapist, "accepted"])
            .env("PSYMATCH_MATCHER_URL", &url)
            .env("PSYMATCH_TOKEN", TOKEN)
            .env("KAFKA_BROKERS", &bed.brokers)
            .env("SCHEMA_REGISTRY_URL", &bed.registry_url)
            .env("TOPIC_PREFIX", &bed.prefix)
            .output()
            .unwrap()
    };
    let nowhere = answer("t-9");
    assert!(!nowhere.status.success());
    let stderr = String::from_utf8_lossy(&nowhere.stderr);
    assert!(
        stderr.contains("no open inquiry at t-9") && stderr.contains(practice),
        "{stderr}"
    );
    let answered = answer(practice);
    assert!(
        answered.status.success(),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );
    bed.wait_for("the patient placed", Duration::from_secs(60), || async {
        let out = psymatch(&url, Some(TOKEN), &["p-0", "--json"]);
        serde_json::from_slice::<Value>(&out.stdout)
            .is_ok_and(|s| s["status"] == "PLACED" && s["placed"]["therapist_id"] == practice)
    })
    .await;
    // The contact log: nothing was emailed here (no email batcher); the
    // practice answered by phone before its email: one phone contact.
    let file = std::env::temp_dir().join(format!("{}contacts.csv", bed.prefix));
    let written = Command::new(env!("CARGO_BIN_EXE_psymatch"))
        .args(["contacts", "p-0", "--out"])
        .arg(&file)
        .env("PSYMATCH_MATCHER_URL", &url)
        .env("PSYMATCH_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        written.status.success(),
        "{}",
        String::from_utf8_lossy(&written.stderr)
    );
    let csv = std::fs::read_to_string(&file).unwrap();
    assert_eq!(csv.lines().count(), 2, "{csv}");
    let row = csv.lines().nth(1).unwrap();
    assert!(
        row.contains(",phone,") && row.contains("place offered"),
        "{csv}"
    );
    assert!(
        csv.starts_with("date,channel,practice,address,phone,answer"),
        "{csv}"
    );
    let table = String::from_utf8(psymatch(&url, Some(TOKEN), &["p-0"]).stdout).unwrap();
    let placed = table.lines().find(|l| l.starts_with("placed with"));
    assert!(placed.is_some_and(|l| l.contains(practice)), "{table}");
    matcher.stop().await;
    let gone = psymatch(&url, Some(TOKEN), &["p-0"]);
    let stderr = String::from_utf8_lossy(&gone.stderr);
    assert!(stderr.contains("does not answer"), "{stderr}");
}
