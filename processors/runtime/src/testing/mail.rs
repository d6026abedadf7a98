//! The stack's SMTP capture (maildev), read back over its HTTP API: what
//! was really sent, for tests that check emails against state.

use super::stack_env;
use serde_json::Value;

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
