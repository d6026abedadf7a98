//! The stack's SMTP capture (maildev), read back over its HTTP API: what
//! was really sent, for tests that check emails against state.

use super::stack_env;
use serde_json::Value;
use std::collections::BTreeMap;

/// Every email maildev holds for addresses starting with `tag-`:
/// (address, email). Tests tag their addresses, as maildev keeps the mails
/// of every test run.
pub async fn received(tag: &str) -> Vec<(String, Value)> {
    let all: Vec<Value> = reqwest::get(format!("{}/email", stack_env("MAILDEV_URL")))
        .await
        .expect("maildev answers")
        .json()
        .await
        .expect("maildev's list of emails");
    all.into_iter()
        .filter_map(|mail| {
            let to = mail["to"][0]["address"].as_str()?.to_string();
            to.starts_with(&format!("{tag}-")).then_some((to, mail))
        })
        .collect()
}

/// Inquiry ids an email carries (its X-Psymatch-Inquiries header).
pub fn carried(mail: &Value) -> Vec<String> {
    mail["headers"]["x-psymatch-inquiries"]
        .as_str()
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The email batcher's settings for the stack's SMTP capture (plain SMTP,
/// no TLS), for `BatcherConfig::from_vars`.
pub fn smtp_settings() -> BTreeMap<String, String> {
    [
        ("EMAIL_TRANSPORT", "smtp".to_string()),
        ("SMTP_HOST", stack_env("SMTP_HOST")),
        ("SMTP_PORT", stack_env("SMTP_PORT")),
        ("SMTP_SECURITY", "none".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// The rule numbers a `why` answer (`GET /v1/searches/{p}/why/{t}`)
/// says fail.
pub fn failing_rules(why: &Value) -> Vec<i64> {
    why["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["passed"] == false)
        .filter_map(|r| r["rule"].as_i64())
        .collect()
}
