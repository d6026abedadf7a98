//! Asking psymatch, checked against what really happened: a scenario
//! through the real topics (practices and patients registered with
//! commands, inquiries composed, emailed through the stack's SMTP capture,
//! answers recorded with `psymatch answer`, a placement, a practice cooling
//! down, an inquiry still waiting for its window), then every query
//! endpoint of intake, the matcher (two replicas, the same answers) and the
//! email batcher, and every `psymatch` query command, compared with the
//! emails maildev received and the events on the topics. The contact log
//! lists exactly the inquiries emailed and the answers recorded, as CSV and
//! in the PDF letter's text.

use psymatch_email_batcher::EmailBatcher;
use psymatch_email_batcher::config::BatcherConfig;
use psymatch_intake::Intake;
use psymatch_matcher::{Matcher, MatcherConfig};
use psymatch_proof::processes;
use psymatch_runtime::query::Tokens;
use psymatch_runtime::testing::people::{command, practice, registration, with_details};
use psymatch_runtime::testing::{Running, TestBed, free_port, mail, of_type, query};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);
const STAFF: &str = "staff-token-0123456789";
const OPS: &str = "ops-token-01234567890";
const BERLIN: (f64, f64) = (52.520, 13.405);
const HAMBURG: (f64, f64) = (53.550, 10.000);

fn north(of: (f64, f64), km: f64) -> (f64, f64) {
    (of.0 + km / 111.2, of.1)
}

/// The surfaces of the processors under test.
struct Ports {
    intake: u16,
    matchers: [u16; 2],
    batcher: u16,
}

/// A processor's configuration with its surface on `port` and the tokens.
fn surfaced(bed: &TestBed, processor: &str, port: u16) -> psymatch_runtime::config::RuntimeConfig {
    let mut config = bed.config(processor);
    config.http_listen = format!("127.0.0.1:{port}");
    config.query_tokens =
        Tokens::parse(&format!("desk:staff:{STAFF},watch:ops:{OPS}")).expect("tokens");
    config
}

/// A 200 answer of the surface on `port`.
async fn get(port: u16, path: &str) -> Value {
    let (status, body) = query(port, path, Some(STAFF)).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

/// Runs `psymatch` against this bed and these surfaces.
fn psymatch(bed: &TestBed, ports: &Ports, args: &[&str]) -> Output {
    let binary = processes::binary("psymatch").expect("the workspace's binaries");
    std::process::Command::new(binary)
        .args(args)
        .env("KAFKA_BROKERS", &bed.brokers)
        .env("SCHEMA_REGISTRY_URL", &bed.registry_url)
        .env("TOPIC_PREFIX", &bed.prefix)
        .env(
            "PSYMATCH_MATCHER_URL",
            format!("http://127.0.0.1:{}", ports.matchers[1]),
        )
        .env(
            "PSYMATCH_INTAKE_URL",
            format!("http://127.0.0.1:{}", ports.intake),
        )
        .env("PSYMATCH_TOKEN", STAFF)
        .output()
        .expect("psymatch runs")
}

/// `psymatch` that succeeded: its standard output.
fn ok(bed: &TestBed, ports: &Ports, args: &[&str]) -> String {
    let out = psymatch(bed, ports, args);
    assert!(
        out.status.success(),
        "psymatch {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Every inquiry the matcher created: id to (therapist, patients).
fn created(
    records: &[psymatch_runtime::testing::Received],
) -> BTreeMap<String, (String, Vec<String>)> {
    of_type(records, "matching.inquiry_created")
        .iter()
        .map(|r| {
            let p = r.payload();
            let patients = p["patients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["patient_id"].as_str().unwrap().to_string())
                .collect();
            (
                p["inquiry_id"].as_str().unwrap().to_string(),
                (p["therapist_id"].as_str().unwrap().to_string(), patients),
            )
        })
        .collect()
}

/// Waits until the search of `patient` on matcher `port` satisfies `test`.
async fn search_until(
    bed: &TestBed,
    port: u16,
    patient: &str,
    what: &str,
    test: impl Fn(&Value) -> bool,
) -> Value {
    let path = format!("/v1/searches/{patient}");
    bed.wait_for(what, DEADLINE, || async {
        test(&query(port, &path, Some(OPS)).await.1)
    })
    .await;
    get(port, &path).await
}

fn inquiries_at(search: &Value, therapist: &str) -> Vec<Value> {
    search["inquiries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["therapist_id"] == therapist)
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_query_and_command_tells_what_really_happened() {
    let bed = TestBed::new().await;
    let tag = format!("q{}", &bed.prefix[1..9]);
    let ports = Ports {
        intake: free_port(),
        matchers: [free_port(), free_port()],
        batcher: free_port(),
    };
    let intake = Running::start(Intake, surfaced(&bed, "intake", ports.intake));
    let config = MatcherConfig::with_rules(psymatch_matcher::rulebook::Rulebook {
        inquiries_per_patient: 2,
        ..Default::default()
    });
    let matchers = ports.matchers.map(|port| {
        Running::start(
            Matcher::new(config.clone()),
            surfaced(&bed, "matcher", port),
        )
    });
    let vars = psymatch_runtime::testing::mail::smtp_settings();
    let batcher = Running::start(
        EmailBatcher::new(BatcherConfig::from_vars(&vars).unwrap()).unwrap(),
        surfaced(&bed, "email_batcher", ports.batcher),
    );

    // Three practices near the Berlin patient, four near the Hamburg one,
    // one far from both; each with an address of this run.
    let places = [
        ("t-a", north(BERLIN, 1.0)),
        ("t-b", north(BERLIN, 2.0)),
        ("t-c", north(BERLIN, 3.0)),
        ("t-h1", north(HAMBURG, 1.0)),
        ("t-h2", north(HAMBURG, 2.0)),
        ("t-h3", north(HAMBURG, 3.0)),
        ("t-h4", north(HAMBURG, 4.0)),
        ("t-far", (48.14, 11.58)),
    ];
    let practices: Vec<Value> = places
        .iter()
        .enumerate()
        .map(|(n, (id, at))| {
            with_details(
                practice(id, &format!("{}", n + 1), "10115"),
                json!({"email": format!("{tag}-{id}@example.org"), "phone": format!("030 5550{n:02}"),
                       "coordinates": {"latitude": at.0, "longitude": at.1}}),
            )
        })
        .collect();
    bed.publish("therapist-commands", &practices).await;
    bed.wait_for("the matcher knows the practices", DEADLINE, || async {
        bed.count("SELECT count(*) FROM matcher.therapists").await == places.len() as i64
    })
    .await;
    let patients = [("p-1", BERLIN), ("p-2", HAMBURG)];
    let registrations: Vec<Value> = patients
        .iter()
        .map(|(id, _)| with_details(registration(id, "10115"), json!({"max_distance_km": 10})))
        .collect();
    bed.publish("patient-commands", &registrations).await;
    bed.wait_for("intake asked for the homes", DEADLINE, || async {
        bed.count("SELECT count(*) FROM intake.patients WHERE geocode_request IS NOT NULL")
            .await
            == 2
    })
    .await;
    let homes: Vec<Value> = patients
        .iter()
        .map(|(id, at)| {
            command(
                "geocoding.address_geocoded",
                json!({"request_id": format!("patient-{id}-1"),
                       "position": {"latitude": at.0, "longitude": at.1},
                       "precision": "ADDRESS", "source": "NOMINATIM", "note": null}),
            )
        })
        .collect();
    bed.publish("geocoding-results", &homes).await;

    // Two inquiries each, committed and handed to the email batcher,
    // waiting for the practices' windows: no contact yet.
    let [m0, m1] = ports.matchers;
    let p1 = search_until(&bed, m0, "p-1", "p-1 offered to two practices", |s| {
        s["inquiries"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    assert_eq!(p1["status"], "ACTIVE");
    for inquiry in p1["inquiries"].as_array().unwrap() {
        assert_eq!(
            inquiry["state"], "waiting for the practice's weekly email window",
            "{inquiry}"
        );
        assert!(inquiry["emailed_at"].is_null());
    }
    search_until(&bed, m0, "p-2", "p-2 offered to two practices", |s| {
        s["inquiries"].as_array().is_some_and(|i| i.len() == 2)
    })
    .await;
    assert_eq!(
        get(m0, "/v1/searches/p-1/contacts").await["contacts"],
        json!([])
    );
    bed.wait_for("the batcher holds the four inquiries", DEADLINE, || async {
        bed.count("SELECT count(*) FROM email_batcher.inquiries")
            .await
            == 4
    })
    .await;
    let window = get(ports.batcher, "/v1/practices/t-a/window").await;
    assert!(window["last_email_at"].is_null(), "{window}");
    assert_eq!(
        window["inquiries_waiting"].as_array().unwrap().len(),
        1,
        "{window}"
    );

    // The windows open: one email per practice, through SMTP.
    let flush = |run: &str| command("email.flush_batches", json!({"run_id": run}));
    bed.publish("email-commands", &[flush("flush-1")]).await;
    bed.wait_for("four emails in the capture", DEADLINE, || async {
        mail::received(&tag).await.len() == 4
    })
    .await;
    for (patient, _) in patients {
        search_until(&bed, m0, patient, "the matcher saw the emails", |s| {
            s["inquiries"]
                .as_array()
                .unwrap()
                .iter()
                .all(|i| !i["emailed_at"].is_null())
        })
        .await;
    }
    let window = get(ports.batcher, "/v1/practices/t-a/window").await;
    let opened =
        chrono::DateTime::parse_from_rfc3339(window["last_email_at"].as_str().unwrap()).unwrap();
    let next =
        chrono::DateTime::parse_from_rfc3339(window["next_email_possible_at"].as_str().unwrap())
            .unwrap();
    assert_eq!(next - opened, chrono::Duration::days(7), "{window}");
    assert_eq!(window["inquiries_waiting"], json!([]));

    // Answers by phone, with the command people use: t-b has no place for
    // p-1 (the practice cools down, p-1 goes to t-c, emailed at the next
    // flush), then t-a offers p-1 a place; after that flush t-h1 finds p-2
    // not suitable: p-2 goes to t-h3, whose window stays closed to the end.
    let said = ok(&bed, &ports, &["answer", "p-1", "t-b", "rejected-capacity"]);
    assert!(said.contains("matching.record_answer"), "{said}");
    search_until(&bed, m0, "p-1", "p-1 offered to t-c", |s| {
        !inquiries_at(s, "t-c").is_empty()
    })
    .await;
    bed.wait_for("the batcher holds t-c's inquiry", DEADLINE, || async {
        bed.count("SELECT count(*) FROM email_batcher.inquiries")
            .await
            == 5
    })
    .await;
    bed.publish("email-commands", &[flush("flush-2")]).await;
    bed.wait_for("t-c emailed", DEADLINE, || async {
        mail::received(&tag).await.len() == 5
    })
    .await;
    search_until(&bed, m0, "p-1", "the matcher saw t-c's email", |s| {
        inquiries_at(s, "t-c")
            .iter()
            .all(|i| !i["emailed_at"].is_null())
    })
    .await;
    ok(&bed, &ports, &["answer", "p-1", "t-a", "accepted"]);
    let p1 = search_until(&bed, m0, "p-1", "p-1 placed", |s| s["status"] == "PLACED").await;
    assert_eq!(p1["placed"]["therapist_id"], "t-a", "{p1}");
    ok(&bed, &ports, &["answer", "p-2", "t-h1", "not-suitable"]);
    let p2 = search_until(&bed, m0, "p-2", "p-2 offered to t-h3", |s| {
        !inquiries_at(s, "t-h3").is_empty()
    })
    .await;
    let waiting = &inquiries_at(&p2, "t-h3")[0];
    assert_eq!(
        waiting["state"], "waiting for the practice's weekly email window",
        "{waiting}"
    );
    bed.wait_for("the batcher holds t-h3's inquiry", DEADLINE, || async {
        bed.count("SELECT count(*) FROM email_batcher.inquiries")
            .await
            == 6
    })
    .await;
    let window = get(ports.batcher, "/v1/practices/t-h3/window").await;
    assert!(window["last_email_at"].is_null(), "{window}");
    assert_eq!(
        window["inquiries_waiting"][0]["inquiry_id"], waiting["inquiry_id"],
        "{window}"
    );
    let sent = mail::received(&tag).await;
    assert_eq!(sent.len(), 5, "one email per practice and window");
    let emailed: BTreeSet<String> = sent.iter().flat_map(|(_, m)| mail::carried(m)).collect();
    assert!(!emailed.contains(waiting["inquiry_id"].as_str().unwrap()));

    // Two matcher replicas answer every query the same.
    let paths = [
        "/v1/searches/p-1",
        "/v1/searches/p-2",
        "/v1/searches/p-1/contacts",
        "/v1/searches/p-2/contacts",
        "/v1/searches/p-1/why/t-b",
        "/v1/searches/p-2/why/t-h4",
        "/v1/therapists/t-b",
        "/v1/therapists/t-h3",
        "/v1/searches/p-nobody",
        "/v1/therapists/t-nobody",
    ];
    for path in paths {
        let (a, b) = (
            query(m0, path, Some(OPS)).await,
            query(m1, path, Some(OPS)).await,
        );
        assert_eq!(a, b, "{path}: the replicas differ");
    }

    // The search: placed with t-a; t-b's answer and its cooling; every
    // inquiry as the topics tell it.
    let events = bed
        .read_until("matching-events", DEADLINE, |r| created(r).len() >= 6)
        .await;
    let inquiries = created(&events);
    for (patient, _) in patients {
        let search = get(m0, &format!("/v1/searches/{patient}")).await;
        let listed: BTreeSet<String> = search["inquiries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["inquiry_id"].as_str().unwrap().to_string())
            .collect();
        let holding: BTreeSet<String> = inquiries
            .iter()
            .filter(|(_, (_, ps))| ps.iter().any(|p| p == patient))
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(listed, holding, "{patient}: {search}");
        for inquiry in search["inquiries"].as_array().unwrap() {
            let id = inquiry["inquiry_id"].as_str().unwrap();
            assert_eq!(inquiry["therapist_id"].as_str().unwrap(), inquiries[id].0);
            assert_eq!(
                !inquiry["emailed_at"].is_null(),
                emailed.contains(id),
                "{id}: emailed as the capture says: {inquiry}"
            );
        }
    }
    let p1 = get(m0, "/v1/searches/p-1").await;
    let b = &inquiries_at(&p1, "t-b")[0];
    assert_eq!(b["answer"], "REJECTED_NO_CAPACITY", "{b}");
    assert_eq!(b["state"], "answered");
    let cooling = get(m0, "/v1/therapists/t-b").await;
    let answered =
        chrono::DateTime::parse_from_rfc3339(b["answered_at"].as_str().unwrap()).unwrap();
    let until =
        chrono::DateTime::parse_from_rfc3339(cooling["cooling_until"].as_str().unwrap()).unwrap();
    assert_eq!(until - answered, chrono::Duration::days(28), "{cooling}");
    assert!(
        p1["cooling"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["therapist_id"] == "t-b"),
        "{p1}"
    );
    let open_c = &inquiries_at(&p1, "t-c")[0];
    assert_eq!(open_c["state"], "emailed, waiting for the answer");
    let due =
        chrono::DateTime::parse_from_rfc3339(open_c["follow_up_due_at"].as_str().unwrap()).unwrap();
    let mailed =
        chrono::DateTime::parse_from_rfc3339(open_c["emailed_at"].as_str().unwrap()).unwrap();
    assert_eq!(due - mailed, chrono::Duration::days(7));
    let h3 = get(m0, "/v1/therapists/t-h3").await;
    assert_eq!(
        h3["inquiries_waiting"][0]["inquiry_id"], waiting["inquiry_id"],
        "{h3}"
    );

    // Why: t-b cools down (rule 9); t-h1 found p-2 not suitable (rule 2);
    // t-far is out of reach (rule 1); t-h4 is the one candidate left for
    // p-2, ranked first of one.
    let why = mail::failing_rules;
    assert_eq!(why(&get(m0, "/v1/searches/p-1/why/t-b").await), vec![9]);
    assert_eq!(why(&get(m0, "/v1/searches/p-2/why/t-h1").await), vec![2, 9]);
    assert_eq!(why(&get(m0, "/v1/searches/p-2/why/t-far").await), vec![1]);
    let h4 = get(m0, "/v1/searches/p-2/why/t-h4").await;
    assert_eq!(why(&h4), Vec::<i64>::new(), "{h4}");
    assert_eq!(h4["rank"], json!({"position": 1, "of": 1}), "{h4}");
    let table = ok(&bed, &ports, &["search", "why", "p-1", "t-b"]);
    assert!(table.contains("FAIL rule 9"), "{table}");
    let table = ok(&bed, &ports, &["search", "why", "p-2", "t-h4"]);
    assert!(table.contains("rank 1 of 1 candidates"), "{table}");

    // The status command: the table and the JSON say what the surface says.
    let table = ok(&bed, &ports, &["search", "status", "p-1"]);
    // Placed since the answer that placed it, not since the search began.
    let placing = p1["inquiries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["inquiry_id"] == p1["placed"]["inquiry_id"])
        .unwrap();
    let answered = placing["answered_at"].as_str().unwrap();
    assert!(
        table.contains(&format!("PLACED since {answered} (search started")),
        "{table}"
    );
    assert!(table.contains("t-a (inquiry"), "{table}");
    for inquiry in p1["inquiries"].as_array().unwrap() {
        assert!(
            table.contains(inquiry["inquiry_id"].as_str().unwrap()),
            "{table}"
        );
    }
    let json: Value =
        serde_json::from_str(&ok(&bed, &ports, &["search", "status", "p-1", "--json"])).unwrap();
    assert_eq!(json, p1);
    let unknown = psymatch(&bed, &ports, &["search", "status", "p-nobody"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("p-nobody"));

    // The contact log: exactly the emailed inquiries holding the patient
    // (checked against the capture: address and inquiry), with the answers
    // recorded.
    for (patient, _) in patients {
        let log = get(m0, &format!("/v1/searches/{patient}/contacts")).await;
        let rows = log["contacts"].as_array().unwrap();
        let emails: Vec<&Value> = rows.iter().filter(|r| r["channel"] == "email").collect();
        let logged: BTreeSet<String> = emails
            .iter()
            .map(|r| r["inquiry_id"].as_str().unwrap().to_string())
            .collect();
        let expected: BTreeSet<String> = inquiries
            .iter()
            .filter(|(id, (_, ps))| emailed.contains(*id) && ps.iter().any(|p| p == patient))
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(logged, expected, "{patient}: {log}");
        for row in &emails {
            let therapist = row["therapist_id"].as_str().unwrap();
            let inquiry = row["inquiry_id"].as_str().unwrap();
            let (to, _) = sent
                .iter()
                .find(|(_, m)| mail::carried(m).iter().any(|i| i == inquiry))
                .expect("the email of the row");
            assert_eq!(to, &format!("{tag}-{therapist}@example.org"), "{row}");
            assert_eq!(row["practice"], format!("Test Praxis-{therapist}"), "{row}");
            assert!(
                row["address"].as_str().unwrap().starts_with("Teststraße"),
                "{row}"
            );
            assert!(
                row["phone"].as_str().unwrap().starts_with("030 5550"),
                "{row}"
            );
        }
        let answer_of = |t: &str| {
            emails
                .iter()
                .find(|r| r["therapist_id"] == t)
                .map(|r| r["answer"].clone())
        };
        if patient == "p-1" {
            assert_eq!(emails.len(), 3, "{log}");
            assert_eq!(answer_of("t-a"), Some(json!("place offered")));
            assert_eq!(answer_of("t-b"), Some(json!("no capacity")));
            assert_eq!(answer_of("t-c"), Some(json!("no answer yet")));
        } else {
            assert_eq!(emails.len(), 2, "t-h3's inquiry was no contact yet: {log}");
            assert_eq!(answer_of("t-h1"), Some(json!("not suitable")));
            assert_eq!(answer_of("t-h2"), Some(json!("no answer yet")));
        }
    }

    // The commands write it: CSV with a row per contact, the PDF letter
    // with the patient's name and date of birth and every row.
    let dir = psymatch_runtime::testing::scratch_dir("psymatch-contacts");
    let csv_file = dir.join("p-1.csv");
    let pdf_file = dir.join("p-1.pdf");
    let log = get(m0, "/v1/searches/p-1/contacts").await;
    let rows = log["contacts"].as_array().unwrap();
    ok(
        &bed,
        &ports,
        &["contacts", "p-1", "--out", csv_file.to_str().unwrap()],
    );
    let csv = std::fs::read_to_string(&csv_file).unwrap();
    assert_eq!(csv.lines().count(), rows.len() + 1, "{csv}");
    for row in rows {
        assert!(csv.contains(row["inquiry_id"].as_str().unwrap()), "{csv}");
    }
    ok(
        &bed,
        &ports,
        &[
            "contacts",
            "p-1",
            "--format",
            "pdf",
            "--out",
            pdf_file.to_str().unwrap(),
        ],
    );
    let text = std::process::Command::new("pdftotext")
        .args(["-layout", pdf_file.to_str().unwrap(), "-"])
        .output()
        .expect("pdftotext (scripts/install-tools installs poppler-utils)");
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("Synthetisch Person-p-1"), "{text}");
    assert!(text.contains("Geburtsdatum: 01.06.1990"), "{text}");
    for row in rows {
        let practice = row["practice"].as_str().unwrap();
        let date = chrono::DateTime::parse_from_rfc3339(row["date"].as_str().unwrap()).unwrap();
        let line = text
            .lines()
            .find(|l| l.contains(practice) && l.contains(&date.format("%d.%m.%Y").to_string()))
            .unwrap_or_else(|| panic!("{practice} on {date} is not in the letter:\n{text}"));
        let german = match row["answer"].as_str().unwrap() {
            "place offered" => "Platz angeboten",
            "no capacity" => "keine Kapazität",
            _ => "keine Antwort",
        };
        assert!(line.contains(german), "{line}");
    }
    assert!(text.contains("Seite 1 von 1"), "{text}");

    // Intake: the personal data for staff only.
    let (status, person) = query(ports.intake, "/v1/patients/p-1", Some(STAFF)).await;
    assert_eq!(status, 200, "{person}");
    assert_eq!(person["details"]["first_name"], "Synthetisch");
    assert_eq!(
        query(ports.intake, "/v1/patients/p-1", Some(OPS)).await.0,
        403
    );
    assert_eq!(query(ports.intake, "/v1/patients/p-1", None).await.0, 401);
    assert_eq!(
        query(
            ports.intake,
            "/v1/patients/p-1",
            Some("wrong-token-0123456789")
        )
        .await
        .0,
        401
    );
    let refused = psymatch(
        &bed,
        &ports,
        &[
            "contacts",
            "p-1",
            "--format",
            "pdf",
            "--out",
            pdf_file.to_str().unwrap(),
            "--token",
            OPS,
        ],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("403"),
        "{refused:?}"
    );

    batcher.stop().await;
    for matcher in matchers {
        matcher.stop().await;
    }
    intake.stop().await;
}
