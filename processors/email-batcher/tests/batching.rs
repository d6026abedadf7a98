//! The email batcher against the real SMTP capture server of the stack
//! (maildev, read back over its HTTP API), the broker and PostgreSQL:
//! batching, the window deferring and later merging, three replicas sending
//! one email per address, SIGKILL while sending, and no patient names.

use psymatch_email_batcher::EmailBatcher;
use psymatch_email_batcher::config::BatcherConfig;
use psymatch_runtime::testing::mail::{carried, received as mails};
use psymatch_runtime::testing::{
    KillOnDrop, Running, TestBed, free_port, of_type, scratch_dir, stack_env,
};
use rand::Rng;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

/// The settings of a batcher on the stack's SMTP server.
fn env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut vars = vec![
        ("EMAIL_TRANSPORT".to_string(), "smtp".to_string()),
        ("SMTP_HOST".to_string(), stack_env("SMTP_HOST")),
        ("SMTP_PORT".to_string(), stack_env("SMTP_PORT")),
        ("SMTP_SECURITY".to_string(), "none".to_string()),
        ("SMTP_BACKOFF_MS".to_string(), "50".to_string()),
        // Racing flushes wait for each other's partitions: briefly here.
        ("FLUSH_CATCH_UP_SECS".to_string(), "2".to_string()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    vars
}

/// Addresses unique to one test run.
fn address(tag: &str, n: usize) -> String {
    format!("{tag}-{n}@example.org")
}

fn inquiry(tag: &str, therapist: usize, inquiry: &str, patients: &[&str]) -> Value {
    json!({
        "event_type": "email.send_inquiry",
        "payload": {
            "inquiry_id": inquiry,
            "therapist_id": format!("{tag}-therapist-{therapist}"),
            "recipient": {"email": address(tag, therapist), "salutation": "FRAU", "title": "Dr.", "last_name": "Beispiel"},
            "patients": patients.iter().map(|p| json!({
                "patient_id": p, "age": 34, "gender": "FEMALE", "symptoms": ["Schlafstörungen"],
                "insurer": "Beispielkasse", "therapy_experience": false, "open_to_group": true,
                "availability": [{"weekday": "TUESDAY", "from": "16:00", "to": "19:00"}]
            })).collect::<Vec<_>>()
        }
    })
}

fn flush(run: &str) -> Value {
    json!({"event_type": "email.flush_batches", "payload": {"run_id": run}})
}

async fn wait_for_mails(bed: &TestBed, tag: &str, count: usize) -> Vec<(String, Value)> {
    bed.wait_for(&format!("{count} emails for {tag}"), DEADLINE, || async {
        mails(tag).await.len() >= count
    })
    .await;
    mails(tag).await
}

async fn stored(bed: &TestBed, count: i64) {
    bed.wait_for(&format!("{count} inquiries stored"), DEADLINE, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM email_batcher.inquiries")
            .fetch_one(&bed.pool)
            .await
            .unwrap();
        n >= count
    })
    .await;
}

fn start(bed: &TestBed, extra: &[(&str, &str)]) -> Running {
    let vars: BTreeMap<String, String> = env(extra).into_iter().collect();
    let batcher = EmailBatcher::new(BatcherConfig::from_vars(&vars).unwrap()).unwrap();
    Running::start(batcher, bed.config("email_batcher"))
}

#[tokio::test(flavor = "multi_thread")]
async fn inquiries_are_batched_and_the_window_defers_then_merges() {
    let bed = TestBed::new().await;
    let tag = format!("batch{}", &bed.prefix[1..9]);
    let running = start(&bed, &[]);
    bed.publish(
        "email-commands",
        &[
            inquiry(&tag, 1, &format!("{tag}-i1"), &["p-1"]),
            inquiry(&tag, 1, &format!("{tag}-i2"), &["p-2", "p-3"]),
            inquiry(&tag, 1, &format!("{tag}-i3"), &["p-4"]),
            inquiry(&tag, 2, &format!("{tag}-i4"), &["p-5"]),
        ],
    )
    .await;
    stored(&bed, 4).await;
    bed.publish("email-commands", &[flush("flush-1")]).await;
    let received = wait_for_mails(&bed, &tag, 2).await;
    let first: Vec<&Value> = received
        .iter()
        .filter(|(to, _)| *to == address(&tag, 1))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(first.len(), 1, "one email for all three inquiries");
    let mut ids = carried(first[0]);
    ids.sort();
    assert_eq!(
        ids,
        vec![
            format!("{tag}-i1"),
            format!("{tag}-i2"),
            format!("{tag}-i3")
        ]
    );
    let text = first[0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("Sehr geehrte Frau Dr. Beispiel,"),
        "{text}"
    );
    for patient in ["p-1", "p-2", "p-3", "p-4"] {
        assert!(text.contains(patient), "{patient} missing");
    }
    // The reply is asked with the inquiry number: the one shown is the
    // inquiry's, beside each patient.
    assert!(text.contains("mit der Anfragenummer"), "{text}");
    for inquiry in 1..=3 {
        assert!(
            text.contains(&format!("Anfragenummer {tag}-i{inquiry} (Patient:in p-")),
            "inquiry {inquiry} not shown: {text}"
        );
    }
    assert_eq!(
        first[0]["subject"],
        "Anfrage Therapieplatz für 4 Patient:innen"
    );

    // Inside the window: deferred, and the next flush writes only to a
    // therapist whose window is free.
    bed.publish(
        "email-commands",
        &[
            inquiry(&tag, 1, &format!("{tag}-i5"), &["p-6"]),
            inquiry(&tag, 3, &format!("{tag}-i6"), &["p-7"]),
        ],
    )
    .await;
    let records = bed
        .read_until("communication-events", DEADLINE, |r| {
            !of_type(r, "email.deferred").is_empty()
        })
        .await;
    let deferred = of_type(&records, "email.deferred")[0].payload();
    assert_eq!(deferred["inquiry_id"], format!("{tag}-i5"));
    assert_eq!(deferred["patient_ids"], json!(["p-6"]));
    assert!(
        deferred["reason"]
            .as_str()
            .unwrap()
            .contains("one email per 7 days")
    );
    stored(&bed, 6).await;
    bed.publish("email-commands", &[flush("flush-2")]).await;
    let received = wait_for_mails(&bed, &tag, 3).await;
    assert!(received.iter().any(|(to, _)| *to == address(&tag, 3)));
    assert_eq!(
        received
            .iter()
            .filter(|(to, _)| *to == address(&tag, 1))
            .count(),
        1
    );
    // flush-2 has ended (its emails are reported at its end) before the
    // window moves: a flush still claiming would send i5 alone.
    bed.read_until("communication-events", DEADLINE, |r| {
        of_type(r, "email.sent").len() >= 3
    })
    .await;

    // A week later the waiting inquiries go out together.
    sqlx::query("UPDATE email_batcher.windows SET opened_at = opened_at - interval '8 days' WHERE recipient = $1")
        .bind(address(&tag, 1))
        .execute(&bed.pool)
        .await
        .unwrap();
    bed.publish(
        "email-commands",
        &[inquiry(&tag, 1, &format!("{tag}-i7"), &["p-8"])],
    )
    .await;
    stored(&bed, 7).await;
    bed.publish("email-commands", &[flush("flush-3")]).await;
    let received = wait_for_mails(&bed, &tag, 4).await;
    let second: Vec<&Value> = received
        .iter()
        .filter(|(to, m)| *to == address(&tag, 1) && carried(m).contains(&format!("{tag}-i5")))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(second.len(), 1);
    let mut ids = carried(second[0]);
    ids.sort();
    assert_eq!(ids, vec![format!("{tag}-i5"), format!("{tag}-i7")]);
    let records = bed
        .read_until("communication-events", DEADLINE, |r| {
            of_type(r, "email.sent").len() >= 4
        })
        .await;
    let sent = of_type(&records, "email.sent");
    assert!(sent.iter().all(|r| {
        r.payload()["message_id"]
            .as_str()
            .unwrap()
            .ends_with("@psymatch>")
    }));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn names_passed_by_mistake_never_reach_a_therapist() {
    let bed = TestBed::new().await;
    let tag = format!("names{}", &bed.prefix[1..9]);
    let running = start(&bed, &[]);
    let planted = "Erika Mustermann";
    bed.publish(
        "email-commands",
        &[
            json!({"event_type": "email.send_templated", "payload": {
                "message_id": format!("{tag}-decline-1"), "therapist_id": "t-1", "template": "decline",
                "recipient": {"email": address(&tag, 1), "salutation": "HERR", "title": null, "last_name": "Muster"},
                "variables": {"patient_id": "p-9", "patient_name": planted, "patient_email": "erika@example.org"}}}),
            json!({"event_type": "email.send_templated", "payload": {
                "message_id": format!("{tag}-decline-1"), "therapist_id": "t-1", "template": "decline",
                "recipient": {"email": address(&tag, 1), "salutation": "HERR", "title": null, "last_name": "Muster"},
                "variables": {"patient_id": "p-9"}}}),
            json!({"event_type": "email.send_templated", "payload": {
                "message_id": format!("{tag}-bad"), "therapist_id": "t-1", "template": "newsletter",
                "recipient": {"email": address(&tag, 2), "salutation": "HERR", "title": null, "last_name": "Muster"},
                "variables": {}}}),
        ],
    )
    .await;
    let received = wait_for_mails(&bed, &tag, 1).await;
    let records = bed
        .read_until("communication-events", DEADLINE, |r| {
            !of_type(r, "email.sent").is_empty() && !of_type(r, "command.rejected").is_empty()
        })
        .await;
    assert_eq!(received.len(), 1, "the same message id is sent once");
    let text = received[0].1["text"].as_str().unwrap();
    assert!(text.contains("p-9"));
    assert!(
        !text.contains("Mustermann") && !text.contains("erika@"),
        "{text}"
    );
    assert!(text.starts_with("Sehr geehrter Herr Muster,"));
    let rejected = of_type(&records, "command.rejected")[0].payload();
    assert!(rejected["reason"].as_str().unwrap().contains("newsletter"));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_send_one_email_per_address() {
    let bed = TestBed::new().await;
    let tag = format!("three{}", &bed.prefix[1..9]);
    let log = scratch_dir("batchers").join("batchers.log");
    let binary = env!("CARGO_BIN_EXE_psymatch-email-batcher");
    let _replicas: Vec<KillOnDrop> = (0..3)
        .map(|_| {
            let mut vars = bed.env("email_batcher");
            vars.extend(env(&[("RUST_LOG", "info")]));
            vars.push(("HTTP_LISTEN".into(), format!("127.0.0.1:{}", free_port())));
            KillOnDrop::spawn(binary, &vars, &log)
        })
        .collect();
    let therapists = 50;
    let commands: Vec<Value> = (0..therapists)
        .flat_map(|t| {
            [0, 1].map(|k| {
                inquiry(
                    &tag,
                    t,
                    &format!("{tag}-i{t}-{k}"),
                    &[&format!("p-{t}-{k}")],
                )
            })
        })
        .collect();
    bed.publish("email-commands", &commands).await;
    stored(&bed, 2 * therapists as i64).await;
    // Flushes on several partitions, so the replicas race for the same
    // addresses.
    let flushes: Vec<Value> = (0..9).map(|i| flush(&format!("race-{i}"))).collect();
    bed.publish("email-commands", &flushes).await;
    let records = bed
        .read_until("communication-events", DEADLINE, |r| {
            of_type(r, "email.sent").len() >= therapists
        })
        .await;
    let received = wait_for_mails(&bed, &tag, therapists).await;
    let mut per_address: HashMap<&str, usize> = HashMap::new();
    for (to, _) in &received {
        *per_address.entry(to.as_str()).or_default() += 1;
    }
    assert_eq!(per_address.len(), therapists);
    assert!(per_address.values().all(|n| *n == 1), "{per_address:?}");
    assert!(received.iter().all(|(_, m)| carried(m).len() == 2));
    assert_eq!(of_type(&records, "email.sent").len(), therapists);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_while_sending_never_doubles_and_loses_no_inquiry() {
    let bed = TestBed::new().await;
    let tag = format!("kill{}", &bed.prefix[1..9]);
    let log = scratch_dir("batcher-kill").join("batcher.log");
    let binary = env!("CARGO_BIN_EXE_psymatch-email-batcher");
    let mut vars = bed.env("email_batcher");
    vars.extend(env(&[
        ("RUST_LOG", "info"),
        ("ATTEMPT_TIMEOUT_SECS", "1"),
        ("SMTP_CONCURRENCY", "2"),
    ]));
    let therapists = 150;
    let commands: Vec<Value> = (0..therapists)
        .map(|t| inquiry(&tag, t, &format!("{tag}-i{t}"), &[&format!("p-{t}")]))
        .collect();
    let all: HashSet<String> = (0..therapists).map(|t| format!("{tag}-i{t}")).collect();
    {
        let _batcher = KillOnDrop::spawn(binary, &vars, &log);
        bed.publish("email-commands", &commands).await;
        stored(&bed, therapists as i64).await;
    }
    let mut kills = 0;
    for round in 0..24 {
        let mut batcher = KillOnDrop::spawn(binary, &vars, &log);
        bed.publish("email-commands", &[flush(&format!("kill-{round}"))])
            .await;
        // Killed at a random moment of the flush: before, while or after
        // emails are handed over.
        let pause = rand::rng().random_range(200..1200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        batcher.0.kill().unwrap();
        batcher.0.wait().unwrap();
        kills += 1;
    }
    // A last run settles what the kills left: unknown attempts reported,
    // everything else sent.
    let _last = KillOnDrop::spawn(binary, &vars, &log);
    bed.wait_for("attempts settled and every free address written", DEADLINE, || async {
        let _ = bed.publish("email-commands", &[flush("settle")]).await;
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM email_batcher.emails WHERE status = 'ATTEMPTED' OR NOT reported",
        )
        .fetch_one(&bed.pool)
        .await
        .unwrap();
        let waiting_free: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM email_batcher.inquiries i WHERE email_id IS NULL
               AND NOT EXISTS (SELECT 1 FROM email_batcher.windows w WHERE w.recipient = i.recipient)",
        )
        .fetch_one(&bed.pool)
        .await
        .unwrap();
        open == 0 && waiting_free == 0
    })
    .await;
    let received = mails(&tag).await;
    let mut per_address: HashMap<&str, usize> = HashMap::new();
    for (to, _) in &received {
        *per_address.entry(to.as_str()).or_default() += 1;
    }
    assert!(
        per_address.values().all(|n| *n == 1),
        "two emails to one address: {per_address:?}"
    );
    // Every inquiry went out, or waits for its address's next window after
    // an attempt of unknown outcome.
    let mut accounted: HashSet<String> = received.iter().flat_map(|(_, m)| carried(m)).collect();
    let waiting: Vec<String> =
        sqlx::query_scalar("SELECT inquiry_id FROM email_batcher.inquiries WHERE email_id IS NULL")
            .fetch_all(&bed.pool)
            .await
            .unwrap();
    accounted.extend(waiting);
    let lost: Vec<&String> = all.difference(&accounted).collect();
    assert!(
        lost.is_empty(),
        "lost inquiries after {kills} kills: {lost:?}"
    );
    println!(
        "{kills} kills: {} emails received, {} inquiries waiting",
        received.len(),
        all.len() - received.len()
    );
}

/// `email.withdraw_inquiry` for `patients` of `inquiry` to therapist `n`.
fn withdraw(tag: &str, therapist: usize, inquiry: &str, patients: &[&str]) -> Value {
    json!({"event_type": "email.withdraw_inquiry", "payload": {
        "inquiry_id": inquiry, "therapist_id": format!("{tag}-therapist-{therapist}"),
        "patient_ids": patients, "reason": "answered by the practice"}})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawal_published_before_the_flush_is_never_outrun_by_it() {
    let bed = TestBed::new().await;
    let tag = format!("wd{}", &bed.prefix[1..9]);
    let running = start(&bed, &[]);
    bed.publish(
        "email-commands",
        &[
            inquiry(&tag, 1, &format!("{tag}-i1"), &["p-1"]),
            inquiry(&tag, 2, &format!("{tag}-i2"), &["p-2"]),
            inquiry(&tag, 3, &format!("{tag}-i3"), &["p-3", "p-4"]),
        ],
    )
    .await;
    stored(&bed, 3).await;
    running.stop().await;
    // While no batcher runs: therapist 1's partition fills with work
    // ahead of the withdrawal of i1 (withdrawals of nothing), and flushes
    // land on every partition. A batcher that starts now reads the
    // flushes long before it reaches the withdrawal: it must not send i1.
    let mut commands: Vec<Value> = (0..1500)
        .map(|n| withdraw(&tag, 1, &format!("{tag}-none-{n}"), &["p-x"]))
        .collect();
    commands.push(withdraw(&tag, 1, &format!("{tag}-i1"), &["p-1"]));
    commands.push(withdraw(&tag, 3, &format!("{tag}-i3"), &["p-3"]));
    commands.extend((0..10).map(|n| flush(&format!("{tag}-race-{n}"))));
    bed.publish("email-commands", &commands).await;
    let running = start(&bed, &[]);
    bed.wait_consumed("email_batcher", "email-commands", 3 + commands.len() as i64)
        .await;
    // The race's flushes may all have found some partition behind (each
    // other's, still committing): its inquiries wait for a later flush, as
    // the schedule's next one. That one cannot send i1 either, but any of
    // the race's could have.
    bed.publish("email-commands", &[flush(&format!("{tag}-later"))])
        .await;
    bed.wait_consumed("email_batcher", "email-commands", 4 + commands.len() as i64)
        .await;
    let received = wait_for_mails(&bed, &tag, 2).await;
    let to: HashSet<&str> = received.iter().map(|(to, _)| to.as_str()).collect();
    assert_eq!(
        to,
        HashSet::from([address(&tag, 2).as_str(), address(&tag, 3).as_str()]),
        "i1 was withdrawn before the flush"
    );
    let records = bed
        .read_until("communication-events", DEADLINE, |r| {
            of_type(r, "email.sent").len() >= 2
        })
        .await;
    let narrowed = of_type(&records, "email.sent")
        .into_iter()
        .map(|r| r.payload())
        .find(|p| p["inquiry_ids"][0] == format!("{tag}-i3"))
        .expect("i3's email");
    assert_eq!(narrowed["patient_ids"], json!(["p-4"]), "p-3 was taken out");
    let withdrawn: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT withdrawn_at FROM email_batcher.inquiries WHERE inquiry_id = $1",
    )
    .bind(format!("{tag}-i1"))
    .fetch_one(&bed.pool)
    .await
    .unwrap();
    assert!(withdrawn.is_some());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flush_waits_for_an_inquiry_published_just_before_it_on_another_partition() {
    let bed = TestBed::new().await;
    let tag = format!("cu{}", &bed.prefix[1..9]);
    // While no batcher runs: therapist 1's partition fills with work ahead
    // of its inquiry, then a flush lands on another partition. A batcher
    // that starts now reads the flush long before the inquiry.
    let mut commands: Vec<Value> = (0..1500)
        .map(|n| withdraw(&tag, 1, &format!("{tag}-none-{n}"), &["p-x"]))
        .collect();
    commands.push(inquiry(&tag, 1, &format!("{tag}-i1"), &["p-1"]));
    bed.publish("email-commands", &commands).await;
    let published = bed
        .read_until("email-commands", DEADLINE, |r| r.len() == commands.len())
        .await;
    let behind = published
        .iter()
        .find(|r| r.payload()["inquiry_id"] == format!("{tag}-i1"))
        .expect("the inquiry")
        .partition;
    let topics = &psymatch_runtime::contracts::Contracts::embedded().topics;
    let partitions = topics
        .topic("email-commands")
        .and_then(|t| t.partitions)
        .unwrap_or(topics.defaults.partitions);
    let elsewhere = (behind + 1) % partitions;
    bed.publish_on("email-commands", elsewhere, &flush(&format!("{tag}-flush")))
        .await;
    // The default wait: however slowly this machine reads 1,500 records.
    let running = start(&bed, &[("FLUSH_CATCH_UP_SECS", "30")]);
    // Sent by that flush (no later one is published): it waited for the
    // partition behind it.
    let received = wait_for_mails(&bed, &tag, 1).await;
    assert_eq!(received[0].0, address(&tag, 1));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawal_after_the_flush_finds_the_email_sent_and_changes_nothing() {
    let bed = TestBed::new().await;
    let tag = format!("late{}", &bed.prefix[1..9]);
    let running = start(&bed, &[]);
    bed.publish(
        "email-commands",
        &[inquiry(&tag, 1, &format!("{tag}-i1"), &["p-1"])],
    )
    .await;
    stored(&bed, 1).await;
    bed.publish("email-commands", &[flush(&format!("{tag}-flush"))])
        .await;
    wait_for_mails(&bed, &tag, 1).await;
    bed.publish(
        "email-commands",
        &[withdraw(&tag, 1, &format!("{tag}-i1"), &["p-1"])],
    )
    .await;
    bed.wait_consumed("email_batcher", "email-commands", 3)
        .await;
    let (email, withdrawn): (Option<uuid::Uuid>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as(
            "SELECT email_id, withdrawn_at FROM email_batcher.inquiries WHERE inquiry_id = $1",
        )
        .bind(format!("{tag}-i1"))
        .fetch_one(&bed.pool)
        .await
        .unwrap();
    assert!(
        email.is_some() && withdrawn.is_none(),
        "sent, then too late"
    );
    assert_eq!(mails(&tag).await.len(), 1);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawal_survives_sigkill_before_the_flush() {
    let bed = TestBed::new().await;
    let tag = format!("wdkill{}", &bed.prefix[1..9]);
    let log = scratch_dir("batcher-withdraw-kill").join("batcher.log");
    let binary = env!("CARGO_BIN_EXE_psymatch-email-batcher");
    let mut vars = bed.env("email_batcher");
    vars.extend(env(&[("RUST_LOG", "info")]));
    let mut batcher = KillOnDrop::spawn(binary, &vars, &log);
    bed.publish(
        "email-commands",
        &[
            inquiry(&tag, 1, &format!("{tag}-i1"), &["p-1"]),
            inquiry(&tag, 2, &format!("{tag}-i2"), &["p-2"]),
        ],
    )
    .await;
    stored(&bed, 2).await;
    bed.publish(
        "email-commands",
        &[withdraw(&tag, 1, &format!("{tag}-i1"), &["p-1"])],
    )
    .await;
    // Killed as soon as the withdrawal is written, perhaps before its
    // batch committed: the next process reads it again.
    bed.wait_for("the withdrawal written", DEADLINE, || async {
        bed.count("SELECT count(*) FROM email_batcher.inquiries WHERE withdrawn_at IS NOT NULL")
            .await
            == 1
    })
    .await;
    batcher.0.kill().unwrap();
    batcher.0.wait().unwrap();
    let _batcher = KillOnDrop::spawn(binary, &vars, &log);
    bed.publish("email-commands", &[flush(&format!("{tag}-flush"))])
        .await;
    bed.wait_consumed("email_batcher", "email-commands", 4)
        .await;
    let received = wait_for_mails(&bed, &tag, 1).await;
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].0, address(&tag, 2), "only i2 goes out");
}

/// A flush stamped at `at` (its event time).
fn flush_at(run: &str, at: chrono::DateTime<chrono::Utc>) -> Value {
    let mut record = flush(run);
    record["timestamp"] = json!(at.to_rfc3339());
    record
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_email_waits_for_day_7_by_the_clock_and_by_the_flush_own_time() {
    let bed = TestBed::new().await;
    let tag = format!("day{}", &bed.prefix[1..9]);
    // Whole seconds: an envelope's time has milliseconds.
    let start = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).unwrap();
    let clock = psymatch_runtime::clock::ManualClock::at(start);
    let mut config = bed.config("email_batcher");
    config.clock = std::sync::Arc::new(clock.clone());
    let vars: BTreeMap<String, String> = env(&[]).into_iter().collect();
    let batcher = EmailBatcher::new(BatcherConfig::from_vars(&vars).unwrap()).unwrap();
    let running = Running::start(batcher, config);
    let mut published = 0;
    let mut publish = async |records: &[Value]| {
        bed.publish("email-commands", records).await;
        published += records.len() as i64;
        bed.wait_consumed("email_batcher", "email-commands", published)
            .await;
    };
    publish(&[inquiry(&tag, 1, &format!("{tag}-i1"), &["p-1"])]).await;
    publish(&[flush_at("day-0", start)]).await;
    assert_eq!(mails(&tag).await.len(), 1);
    publish(&[inquiry(&tag, 1, &format!("{tag}-i2"), &["p-2"])]).await;
    let day = chrono::Duration::days(1);
    // Day 6 by both: refused.
    clock.set(start + day * 6 + chrono::Duration::hours(23));
    publish(&[flush_at(
        "day-6",
        start + day * 6 + chrono::Duration::hours(23),
    )])
    .await;
    // Day 8 by the flush's stamp, day 6 by the clock: refused.
    publish(&[flush_at("ahead", start + day * 8)]).await;
    // Day 8 by the clock, stamped on day 1 (a stale flush): refused.
    clock.set(start + day * 8);
    publish(&[flush_at("stale", start + day)]).await;
    assert_eq!(
        mails(&tag).await.len(),
        1,
        "no second email inside the window"
    );
    // Day 7 by both: the second email.
    clock.set(start + day * 7);
    publish(&[flush_at("day-7", start + day * 7)]).await;
    let received = mails(&tag).await;
    assert_eq!(received.len(), 2);
    assert!(
        received
            .iter()
            .any(|(_, m)| carried(m) == [format!("{tag}-i2")])
    );
    running.stop().await;
}
