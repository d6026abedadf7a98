//! The email batcher's query: a practice's weekly window before its first
//! email, after it (last email, next possible, nothing waiting), and an
//! inquiry arriving inside the window shown waiting.

use psymatch_email_batcher::EmailBatcher;
use psymatch_email_batcher::config::BatcherConfig;
use psymatch_runtime::query::Tokens;
use psymatch_runtime::testing::people::command;
use psymatch_runtime::testing::{Running, TestBed, free_port};
use serde_json::{Value, json};
use std::time::Duration;

const TOKEN: &str = "ops-token-0123456789";
const DEADLINE: Duration = Duration::from_secs(120);

fn inquiry(tag: &str, id: &str) -> Value {
    command(
        "email.send_inquiry",
        json!({"inquiry_id": id, "therapist_id": format!("{tag}-t"),
               "recipient": {"email": format!("{tag}@example.org"), "salutation": "FRAU",
                             "title": null, "last_name": "Beispiel"},
               "patients": [{"patient_id": "p-1", "age": 34, "gender": "FEMALE", "symptoms": [],
                             "insurer": "Beispielkasse", "therapy_experience": false,
                             "open_to_group": true, "availability": []}]}),
    )
}

async fn window(port: u16, therapist: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{port}/v1/practices/{therapist}/window"
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_practice_window_before_and_after_its_email() {
    let bed = TestBed::new().await;
    let tag = format!("window{}", &bed.prefix[1..9]);
    let vars = psymatch_runtime::testing::mail::smtp_settings();
    let port = free_port();
    let mut config = bed.config("email_batcher");
    config.http_listen = format!("127.0.0.1:{port}");
    config.query_tokens = Tokens::parse(&format!("test:ops:{TOKEN}")).unwrap();
    let batcher = EmailBatcher::new(BatcherConfig::from_vars(&vars).unwrap()).unwrap();
    let running = Running::start(batcher, config);
    let therapist = format!("{tag}-t");
    let stored = |n: i64| {
        let bed = &bed;
        async move {
            bed.wait_for("inquiries stored", DEADLINE, || async {
                bed.count("SELECT count(*) FROM email_batcher.inquiries")
                    .await
                    == n
            })
            .await
        }
    };
    bed.publish(
        "email-commands",
        &[inquiry(&tag, "i-1"), inquiry(&tag, "i-2")],
    )
    .await;
    stored(2).await;
    let (status, before) = window(port, &therapist).await;
    assert_eq!(status, 200, "{before}");
    assert!(before["last_email_at"].is_null(), "{before}");
    assert_eq!(before["inquiries_waiting"].as_array().unwrap().len(), 2);

    bed.publish(
        "email-commands",
        &[command("email.flush_batches", json!({"run_id": "flush-1"}))],
    )
    .await;
    bed.wait_for("the email sent", DEADLINE, || async {
        bed.count("SELECT count(*) FROM email_batcher.windows")
            .await
            == 1
    })
    .await;
    bed.publish("email-commands", &[inquiry(&tag, "i-3")]).await;
    stored(3).await;
    let (_, after) = window(port, &therapist).await;
    assert!(after["last_email_at"].is_string(), "{after}");
    assert!(after["next_email_possible_at"].is_string(), "{after}");
    assert_eq!(after["window_days"], 7);
    let waiting: Vec<&str> = after["inquiries_waiting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["inquiry_id"].as_str().unwrap())
        .collect();
    assert_eq!(waiting, vec!["i-3"], "{after}");
    let (status, _) = window(port, "nobody").await;
    assert_eq!(status, 404);
    running.stop().await;
}
