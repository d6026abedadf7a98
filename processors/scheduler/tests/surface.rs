//! The scheduler binary on the runtime's surface, like every processor:
//! readiness of its three dependencies, status, its metrics with the
//! `processor` label, and on SIGTERM a prompt exit with no run left
//! half done and no command left unpublished.

use psymatch_runtime::testing::{KillOnDrop, TestBed, free_port, scratch_dir};
use std::process::{Command, Stdio};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(90);
const TOKEN: &str = "ops-token-0123456789";

const SCHEDULE: &str = r#"
timezone: Europe/Berlin
jobs:
  - {name: sweep, cron: "* * * * * *", topic: matching-commands, event_type: matching.sweep,
     payload: {run_id: "{run_id}"}}
"#;

async fn get(url: &str) -> Option<(u16, String)> {
    let response = reqwest::get(url).await.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_serves_the_runtime_surface_and_drains_on_sigterm() {
    let bed = TestBed::new().await;
    let dir = scratch_dir("psymatch-scheduler-surface");
    let file = dir.join("schedule.yaml");
    std::fs::write(&file, SCHEDULE).unwrap();
    let log = std::fs::File::create(dir.join("scheduler.log")).unwrap();
    let port = free_port();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_psymatch-scheduler"))
            .envs(bed.env("scheduler"))
            .env("HTTP_LISTEN", format!("127.0.0.1:{port}"))
            .env("SCHEDULE_FILE", &file)
            .env("SCHEDULER_TICK_MS", "100")
            .env("HOSTNAME", format!("{}surface", bed.prefix))
            .env("RUST_LOG", "warn")
            .env("QUERY_TOKENS", format!("test:ops:{TOKEN}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let base = format!("http://127.0.0.1:{port}");
    let owner = format!("{}surface", bed.prefix);
    let done = format!(
        "SELECT count(*) FROM scheduler.runs WHERE owner = '{owner}' AND status = 'SUCCEEDED'"
    );
    bed.wait_for(
        "the scheduler ready and two sweeps run",
        DEADLINE,
        || async {
            let ready = get(&format!("{base}/health/readiness")).await;
            ready.is_some_and(|(status, _)| status == 200) && bed.count(&done).await >= 2
        },
    )
    .await;

    let (_, status) = get(&format!("{base}/health/status")).await.unwrap();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["processor"], "scheduler", "{status}");
    let (_, readiness) = get(&format!("{base}/health/readiness")).await.unwrap();
    for check in ["database", "registry", "broker"] {
        assert!(
            readiness.contains(&format!("\"{check}\":\"ok\"")),
            "{readiness}"
        );
    }
    let (_, metrics) = get(&format!("{base}/metrics")).await.unwrap();
    let sweeps = metrics
        .lines()
        .find(|l| {
            l.starts_with("psymatch_scheduler_runs_total{") && l.contains("job_name=\"sweep\"")
        })
        .unwrap_or_else(|| panic!("no sweep runs in /metrics:\n{metrics}"));
    assert!(sweeps.contains("processor=\"scheduler\""), "{sweeps}");
    assert!(sweeps.contains("outcome=\"succeeded\""), "{sweeps}");

    // The jobs, on the query surface.
    let jobs: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/v1/jobs"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sweep = &jobs["jobs"][0];
    assert_eq!(sweep["name"], "sweep", "{jobs}");
    assert!(sweep["next_occurrence"].is_string(), "{jobs}");
    // A sweep runs every second: the latest may still be running.
    let status = sweep["last_run"]["status"].as_str().unwrap_or("none");
    assert!(["SUCCEEDED", "RUNNING"].contains(&status), "{jobs}");
    let refused = reqwest::get(format!("{base}/v1/jobs"))
        .await
        .unwrap()
        .status();
    assert_eq!(refused.as_u16(), 401);

    let exit = child.terminate(Duration::from_secs(15)).await;
    assert!(exit.success(), "exit status {exit}");
    let unfinished = bed
        .count(&format!(
            "SELECT count(*) FROM scheduler.runs WHERE owner = '{owner}' AND status = 'RUNNING'"
        ))
        .await;
    assert_eq!(unfinished, 0, "runs left running after SIGTERM");
    // What it committed it published before exiting.
    let pending = bed.count("SELECT count(*) FROM scheduler.outbox").await;
    assert_eq!(pending, 0, "commands left in the outbox after SIGTERM");
}
