//! An answer withdraws what is not sent yet, through the real topics and
//! the stack's SMTP capture: a practice that answers by phone before its
//! inquiry's email goes out is not emailed about it; a patient placed is
//! taken out of every unsent inquiry elsewhere (one left empty is not
//! sent); the others' inquiries still go. The contact log shows the phone
//! answer, not an email that never went.

use psymatch_email_batcher::EmailBatcher;
use psymatch_email_batcher::config::BatcherConfig;
use psymatch_matcher::{Matcher, MatcherConfig};
use psymatch_runtime::query::Tokens;
use psymatch_runtime::testing::people::{command, discovered, registered, with_details};
use psymatch_runtime::testing::{Running, TestBed, free_port, mail, of_type, query};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);
const TOKEN: &str = "ops-token-0123456789";

/// The inquiries holding `patient`, by practice, as the matcher answers.
async fn inquiries(port: u16, patient: &str) -> BTreeMap<String, Value> {
    let (_, search) = query(port, &format!("/v1/searches/{patient}"), Some(TOKEN)).await;
    search["inquiries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| (i["therapist_id"].as_str().unwrap().to_string(), i.clone()))
        .collect()
}

fn by_phone(inquiry: &str, therapist: &str, patient: &str, outcome: &str) -> Value {
    command(
        "matching.record_answer",
        json!({"inquiry_id": inquiry, "therapist_id": therapist,
               "answers": [{"patient_id": patient, "outcome": outcome}],
               "answered_at": chrono::Utc::now().to_rfc3339(), "channel": "PHONE"}),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_before_the_email_withdraws_what_is_not_sent() {
    let bed = TestBed::new().await;
    let tag = format!("wq{}", &bed.prefix[1..9]);
    let port = free_port();
    let mut config = bed.config("matcher");
    config.http_listen = format!("127.0.0.1:{port}");
    config.query_tokens = Tokens::parse(&format!("test:ops:{TOKEN}")).unwrap();
    let matcher = Running::start(
        Matcher::new(MatcherConfig::with_rules(
            psymatch_matcher::rulebook::Rulebook {
                inquiries_per_patient: 2,
                ..Default::default()
            },
        )),
        config,
    );
    let vars = psymatch_runtime::testing::mail::smtp_settings();
    let batcher = Running::start(
        EmailBatcher::new(BatcherConfig::from_vars(&vars).unwrap()).unwrap(),
        bed.config("email_batcher"),
    );
    // t-0, t-1 near p-0 in Berlin; t-2, t-3, t-4 near p-1 in Hamburg.
    let places = [
        (52.510, 13.40),
        (52.512, 13.40),
        (53.550, 10.00),
        (53.552, 10.00),
        (53.554, 10.00),
    ];
    let practices: Vec<Value> = places
        .iter()
        .enumerate()
        .map(|(n, at)| {
            with_details(
                discovered(n, *at),
                json!({"email": format!("{tag}-t-{n}@example.org")}),
            )
        })
        .collect();
    bed.publish("therapist-events", &practices).await;
    bed.wait_for("the directory folded in", DEADLINE, || async {
        bed.count("SELECT count(*) FROM matcher.therapists").await == 5
    })
    .await;
    bed.publish(
        "patient-events",
        &[
            registered(0, 40, (52.511, 13.40)),
            registered(1, 40, (53.551, 10.00)),
        ],
    )
    .await;
    bed.wait_for("four inquiries at the batcher", DEADLINE, || async {
        bed.count("SELECT count(*) FROM email_batcher.inquiries")
            .await
            == 4
    })
    .await;
    let p0 = inquiries(port, "p-0").await;
    let p1 = inquiries(port, "p-1").await;
    assert_eq!(p0.keys().collect::<Vec<_>>(), ["t-0", "t-1"], "{p0:?}");
    assert_eq!(p1.keys().collect::<Vec<_>>(), ["t-2", "t-3"], "{p1:?}");
    let id = |i: &Value| i["inquiry_id"].as_str().unwrap().to_string();

    // Before any email: t-0 offers p-0 a place by phone (p-0 placed: its
    // inquiry to t-1 goes too), t-2 has no room for p-1 (p-1 goes to t-4).
    bed.publish(
        "matching-commands",
        &[
            by_phone(&id(&p0["t-0"]), "t-0", "p-0", "ACCEPTED"),
            by_phone(&id(&p1["t-2"]), "t-2", "p-1", "REJECTED_NO_CAPACITY"),
        ],
    )
    .await;
    bed.wait_for("p-1 offered to t-4", DEADLINE, || async {
        inquiries(port, "p-1").await.contains_key("t-4")
    })
    .await;
    bed.wait_for(
        "the batcher withdrew three and holds t-4's",
        DEADLINE,
        || async {
            bed.count("SELECT count(*) FROM email_batcher.inquiries WHERE withdrawn_at IS NOT NULL")
                .await
                == 3
                && bed
                    .count("SELECT count(*) FROM email_batcher.inquiries")
                    .await
                    == 5
        },
    )
    .await;
    bed.publish(
        "email-commands",
        &[command("email.flush_batches", json!({"run_id": "flush-1"}))],
    )
    .await;
    bed.wait_for("t-3's and t-4's emails", DEADLINE, || async {
        mail::received(&tag).await.len() >= 2
    })
    .await;
    // Everything the flush sends is sent before its batch commits.
    let total = bed
        .read_until("email-commands", DEADLINE, |r| {
            !of_type(r, "email.flush_batches").is_empty()
        })
        .await
        .len() as i64;
    bed.wait_consumed("email_batcher", "email-commands", total)
        .await;
    let to: BTreeSet<String> = mail::received(&tag)
        .await
        .into_iter()
        .map(|(to, _)| to)
        .collect();
    assert_eq!(
        to,
        BTreeSet::from([
            format!("{tag}-t-3@example.org"),
            format!("{tag}-t-4@example.org")
        ]),
        "no email about what was answered, nor for the patient placed"
    );

    // The contact log: p-0's phone answer; no email that never went.
    let (_, log) = query(port, "/v1/searches/p-0/contacts", Some(TOKEN)).await;
    let rows = log["contacts"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{log}");
    assert_eq!(rows[0]["channel"], "phone");
    assert_eq!(rows[0]["therapist_id"], "t-0");
    assert_eq!(rows[0]["answer"], "place offered");
    let p0 = inquiries(port, "p-0").await;
    assert_eq!(
        p0["t-1"]["state"], "withdrawn before its email",
        "p-0 placed: t-1's inquiry withdrawn: {p0:?}"
    );
    batcher.stop().await;
    matcher.stop().await;
}
