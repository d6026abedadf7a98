//! Scrape runs against a local stand-in for the doctor search (cookie
//! bootstrap, token check, HTTP 500s, at most 50 results per answer), on
//! the real broker, registry and PostgreSQL: a full run, a repeated run
//! that emits nothing, a run after changes that emits exactly those, a run
//! interrupted by SIGKILL that resumes without duplicates, and imports.

use psymatch_runtime::testing::{KillOnDrop, Received, Running, TestBed, of_type, scratch_dir};
use psymatch_scraper::Scraper;
use psymatch_scraper::config::ScraperConfig;
use psymatch_scraper::fake::{FakeKbv, practice};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);
const CREDENTIAL: &str = "dGVzdDp0ZXN0";
const PRACTICES: usize = 80;

/// 80 practices spread evenly over a disc of 3 km around Berlin-Mitte.
fn directory() -> Vec<Value> {
    (0..PRACTICES)
        .map(|n| {
            let km = 3.0 * ((n as f64 + 0.5) / PRACTICES as f64).sqrt();
            let angle = n as f64 * 2.399_963;
            practice(
                n,
                52.52 + km * angle.sin() / 111.2,
                13.40 + km * angle.cos() / 67.7,
            )
        })
        .collect()
}

fn env(fake: &FakeKbv, rate: &str) -> Vec<(String, String)> {
    [
        ("KBV_URL", fake.url.as_str()),
        ("KBV_BASIC_AUTH", CREDENTIAL),
        ("KBV_RATE_PER_SECOND", rate),
        ("KBV_BACKOFF_MS", "20"),
        ("SCRAPE_MIN_RADIUS_KM", "1"),
        ("REMOVE_AFTER_RUNS", "2"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Two overlapping areas of 4 km: each holds all 80 practices, more than
/// one answer lists, so each is split.
fn region(run_id: &str) -> Value {
    json!({
        "event_type": "scraping.scrape_region",
        "correlation_id": run_id,
        "payload": {
            "run_id": run_id,
            "region": "Berlin-Mitte (test)",
            "areas": [
                {"centre": {"latitude": 52.52, "longitude": 13.40}, "radius_km": 4},
                {"centre": {"latitude": 52.52, "longitude": 13.415}, "radius_km": 4}
            ],
            "filters": {}
        }
    })
}

fn of_run<'a>(records: &'a [Received], run_id: &str) -> Vec<&'a Received> {
    records
        .iter()
        .filter(|r| {
            r.envelope
                .as_ref()
                .and_then(|e| e.correlation_id.as_deref())
                == Some(run_id)
        })
        .collect()
}

/// The run's `run_completed` payload and its therapist events (as many as
/// its counts say).
async fn finished(bed: &TestBed, run_id: &str) -> (Value, Vec<Received>) {
    let events = bed
        .read_until("scraping-events", DEADLINE, |records| {
            records.iter().any(|r| {
                r.envelope
                    .as_ref()
                    .is_some_and(|e| e.event_type == "scraping.run_completed")
                    && r.payload()["run_id"] == run_id
            })
        })
        .await;
    let completed = events
        .iter()
        .find(|r| {
            r.envelope
                .as_ref()
                .is_some_and(|e| e.event_type == "scraping.run_completed")
                && r.payload()["run_id"] == run_id
        })
        .unwrap()
        .payload();
    let counts = &completed["counts"];
    let expected = (counts["new"].as_i64().unwrap()
        + counts["changed"].as_i64().unwrap()
        + counts["removed"].as_i64().unwrap()) as usize;
    let therapists = bed
        .read_until("therapist-events", DEADLINE, |records| {
            distinct_events(&of_run(records, run_id)) >= expected
        })
        .await;
    let mine: Vec<Received> = of_run(&therapists, run_id).into_iter().cloned().collect();
    (completed, mine)
}

/// The reason of the first `command.rejected` on `scraping-events`.
async fn rejection(bed: &TestBed) -> String {
    let is_rejection = |r: &Received| {
        r.envelope
            .as_ref()
            .is_some_and(|e| e.event_type == "command.rejected")
    };
    let records = bed
        .read_until("scraping-events", DEADLINE, |records| {
            records.iter().any(is_rejection)
        })
        .await;
    let rejected = records.iter().find(|r| is_rejection(r)).unwrap();
    rejected.payload()["reason"].as_str().unwrap().to_string()
}

fn distinct_events(records: &[&Received]) -> usize {
    records
        .iter()
        .filter_map(|r| r.envelope.as_ref().map(|e| e.event_id))
        .collect::<HashSet<_>>()
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_emit_only_what_changed() {
    let fake = FakeKbv::start(CREDENTIAL).await;
    fake.put(directory());
    let bed = TestBed::new().await;
    let vars: BTreeMap<String, String> = env(&fake, "50").into_iter().collect();
    let mut runtime = bed.config("scraper");
    runtime.batch_size = 1;
    let port = psymatch_runtime::testing::free_port();
    runtime.http_listen = format!("127.0.0.1:{port}");
    runtime.query_tokens =
        psymatch_runtime::query::Tokens::parse("test:ops:ops-token-0123456789").unwrap();
    let running = Running::start(
        Scraper::new(ScraperConfig::from_vars(&vars).unwrap()),
        runtime,
    );

    // A full run: every practice discovered once, although both areas and
    // their overlapping parts list most of them.
    bed.publish("scraping-commands", &[region("run-1")]).await;
    let (completed, events) = finished(&bed, "run-1").await;
    assert_eq!(completed["outcome"], "COMPLETED", "{completed}");
    let counts = &completed["counts"];
    assert_eq!(counts["new"], PRACTICES);
    assert_eq!(counts["areas_done"], counts["areas_total"]);
    assert!(
        counts["areas_total"].as_i64().unwrap() > 2,
        "the areas were split: {counts}"
    );
    let discovered = of_type(&events, "therapist.discovered");
    let ids: HashSet<String> = discovered
        .iter()
        .map(|r| r.payload()["therapist_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!((discovered.len(), ids.len()), (PRACTICES, PRACTICES));
    let first = discovered[0].payload();
    assert_eq!(first["source"], "kbv-api");
    assert!(first["source_id"].as_str().unwrap().starts_with("fake-"));
    assert_eq!(first["details"]["procedures"], json!(["BEHAVIOURAL"]));
    assert_eq!(fake.max_in_flight(), 1, "one request at a time");
    // The run's progress on the query surface agrees with its event.
    let query = |path: &str| {
        let url = format!("http://127.0.0.1:{port}{path}");
        async move {
            let response = reqwest::Client::new()
                .get(url)
                .bearer_auth("ops-token-0123456789")
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let (status, run) = query("/v1/runs/run-1").await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "COMPLETED");
    assert_eq!(run["new"], counts["new"]);
    assert_eq!(run["areas_done"], counts["areas_total"]);
    let (_, all) = query("/v1/runs").await;
    assert!(
        all["runs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["run_id"] == "run-1")
    );
    assert_eq!(query("/v1/runs/run-404").await.0, 404);

    // The same scrape again: nothing to tell.
    bed.publish("scraping-commands", &[region("run-2")]).await;
    let (completed, events) = finished(&bed, "run-2").await;
    assert_eq!(completed["counts"]["new"], 0);
    assert_eq!(completed["counts"]["changed"], 0);
    assert!(events.is_empty(), "{} therapist events", events.len());

    // Three phone numbers change, two practices close, one opens, and the
    // site refuses two requests on the way: exactly those changes.
    for n in [3, 40, 77] {
        fake.change(
            &format!("fake-{n:05}"),
            "tel",
            json!(format!("030 9{n:06}")),
        );
    }
    fake.remove("fake-00010");
    fake.remove("fake-00011");
    fake.put([practice(500, 52.521, 13.401)]);
    fake.fail_next(2);
    bed.publish("scraping-commands", &[region("run-3")]).await;
    let (completed, events) = finished(&bed, "run-3").await;
    assert_eq!(completed["outcome"], "COMPLETED", "{completed}");
    let updated = of_type(&events, "therapist.updated");
    assert_eq!(updated.len(), 3);
    for event in &updated {
        assert_eq!(event.payload()["changed_fields"], json!(["phone"]));
    }
    let discovered = of_type(&events, "therapist.discovered");
    assert_eq!(discovered.len(), 1);
    assert_eq!(discovered[0].payload()["source_id"], "fake-00500");
    assert!(
        of_type(&events, "therapist.removed").is_empty(),
        "one missed run is not enough"
    );
    let refused = fake
        .arrivals()
        .iter()
        .filter(|(_, path, ok)| path == "/api/data" && !ok)
        .count();
    assert_eq!(refused, 2);

    // Missing from a second complete scrape of their areas: removed.
    bed.publish("scraping-commands", &[region("run-4")]).await;
    let (completed, events) = finished(&bed, "run-4").await;
    assert_eq!(completed["counts"]["removed"], 2);
    let removed: HashSet<String> = of_type(&events, "therapist.removed")
        .iter()
        .map(|r| r.payload()["therapist_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(removed.len(), 2);

    // A run id used before is refused, readably.
    bed.publish("scraping-commands", &[region("run-4")]).await;
    let reason = rejection(&bed).await;
    assert!(reason.contains("run-4 exists already"), "{reason}");

    running.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_midway_resumes_without_duplicates() {
    let fake = FakeKbv::start(CREDENTIAL).await;
    fake.put(directory());
    let bed = TestBed::new().await;
    let log = scratch_dir("scraper-kill").join("scraper.log");
    let mut process_env = bed.env("scraper");
    process_env.extend(env(&fake, "4"));
    process_env.push(("RUST_LOG".into(), "info".into()));
    let binary = env!("CARGO_BIN_EXE_psymatch-scraper");
    let mut scraper = KillOnDrop::spawn(binary, &process_env, &log);
    bed.publish("scraping-commands", &[region("run-k")]).await;
    // Killed once some areas are done and before the run is.
    bed.read_until("scraping-events", DEADLINE, |records| {
        records.iter().any(|r| {
            r.envelope
                .as_ref()
                .is_some_and(|e| e.event_type == "scraping.run_progress")
                && r.payload()["counts"]["areas_done"].as_i64() >= Some(2)
        })
    })
    .await;
    scraper.0.kill().unwrap();
    scraper.0.wait().unwrap();
    let before = fake.arrivals().len();
    drop(scraper);
    let _restarted = KillOnDrop::spawn(binary, &process_env, &log);
    let (completed, events) = finished(&bed, "run-k").await;
    assert_eq!(completed["outcome"], "COMPLETED");
    assert!(
        fake.arrivals().len() > before,
        "the run went on after the restart"
    );
    let discovered = of_type(&events, "therapist.discovered");
    let ids: HashSet<String> = discovered
        .iter()
        .map(|r| r.payload()["therapist_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        (discovered.len(), ids.len()),
        (PRACTICES, PRACTICES),
        "each practice discovered exactly once"
    );
    assert_eq!(completed["counts"]["new"], PRACTICES);
}

#[tokio::test(flavor = "multi_thread")]
async fn saved_files_are_imported_and_foreign_directories_refused() {
    let fake = FakeKbv::start(CREDENTIAL).await;
    let bed = TestBed::new().await;
    let root = scratch_dir("scraper-import");
    let saved = root.join("2025-11");
    std::fs::create_dir_all(&saved).unwrap();
    for name in ["api-answer.json", "result-page.html", "partial-answer.json"] {
        std::fs::copy(
            format!("{}/fixtures/{name}", env!("CARGO_MANIFEST_DIR")),
            saved.join(name),
        )
        .unwrap();
    }
    let mut vars: BTreeMap<String, String> = env(&fake, "50").into_iter().collect();
    vars.insert("IMPORT_ROOT".into(), root.display().to_string());
    let running = Running::start(
        Scraper::new(ScraperConfig::from_vars(&vars).unwrap()),
        bed.config("scraper"),
    );
    let import = |run: &str, directory: String| {
        json!({"event_type": "scraping.import_files", "correlation_id": run,
               "payload": {"run_id": run, "directory": directory, "format": "AUTO"}})
    };
    bed.publish(
        "scraping-commands",
        &[import("import-1", saved.display().to_string())],
    )
    .await;
    let (completed, events) = finished(&bed, "import-1").await;
    let counts = &completed["counts"];
    // api-answer.json: 3 usable, 2 not; result-page.html: the same two
    // practices again (same name and postcode, so the same therapists,
    // changed) and one without a name; partial-answer.json: unreadable.
    assert_eq!(
        (counts["new"].as_i64(), counts["changed"].as_i64()),
        (Some(3), Some(2)),
        "{counts}"
    );
    assert_eq!(counts["invalid"], 4);
    assert_eq!(counts["areas_done"], 3);
    assert!(
        completed["detail"]
            .as_str()
            .unwrap()
            .contains("partial-answer.json")
    );
    assert_eq!(
        of_type(&events, "therapist.discovered")[0].payload()["source"],
        "kbv-file"
    );
    // Practices without coordinates are sent to the geocoder.
    let requests = bed
        .read_until("geocoding-requests", DEADLINE, |records| {
            !records.is_empty()
        })
        .await;
    assert!(
        requests[0].payload()["request_id"]
            .as_str()
            .unwrap()
            .starts_with("therapist-")
    );

    bed.publish(
        "scraping-commands",
        &[import("import-2", "/etc".to_string())],
    )
    .await;
    let reason = rejection(&bed).await;
    assert!(
        reason.contains("not a directory under the import root"),
        "{reason}"
    );

    // A link inside the root to a file outside it is not followed.
    let outside = scratch_dir("scraper-outside");
    std::fs::copy(
        format!("{}/fixtures/api-answer.json", env!("CARGO_MANIFEST_DIR")),
        outside.join("answer.json"),
    )
    .unwrap();
    let linked = root.join("linked");
    std::fs::create_dir_all(&linked).unwrap();
    std::os::unix::fs::symlink(outside.join("answer.json"), linked.join("answer.json")).unwrap();
    bed.publish(
        "scraping-commands",
        &[import("import-3", linked.display().to_string())],
    )
    .await;
    let (completed, _) = finished(&bed, "import-3").await;
    assert_eq!(completed["counts"]["new"], 0, "{completed}");
    assert_eq!(completed["counts"]["changed"], 0, "{completed}");
    assert!(
        completed["detail"]
            .as_str()
            .unwrap()
            .contains("answer.json: a link to a file outside the import root"),
        "{completed}"
    );
    running.stop().await;
}
