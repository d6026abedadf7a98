//! `psymatch-scheduler`: publishes the commands of the schedule file
//! (`SCHEDULE_FILE`), one run per occurrence across replicas, and serves
//! `/metrics` and `/health/liveness` on `HTTP_LISTEN`.

use psymatch_runtime::config::Vars;
use psymatch_scheduler::{Schedule, Scheduler, Settings};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    psymatch_runtime::telemetry::init("scheduler");
    let vars: BTreeMap<String, String> = std::env::vars().collect();
    let v = Vars(&vars);
    let file = v.text("SCHEDULE_FILE", "/etc/psymatch/schedule.yaml");
    let text =
        std::fs::read_to_string(&file).map_err(|e| anyhow::anyhow!("SCHEDULE_FILE {file}: {e}"))?;
    let schedule = Schedule::parse(&text)?;
    let settings = Settings {
        brokers: v.text("KAFKA_BROKERS", "127.0.0.1:9092"),
        registry_url: psymatch_runtime::codec::registry_url(),
        topic_prefix: v.text("TOPIC_PREFIX", ""),
        owner: v.text("HOSTNAME", &format!("scheduler-{}", std::process::id())),
        tick: Duration::from_millis(v.number("SCHEDULER_TICK_MS", 1000u64)?),
        lease: Duration::from_secs(v.number("SCHEDULER_LEASE_SECS", 120u64)?),
        retry_base: Duration::from_millis(v.number("SCHEDULER_RETRY_BASE_MS", 2000u64)?),
        catch_up: chrono::Duration::hours(v.number("SCHEDULER_CATCH_UP_HOURS", 24i64)?),
    };
    let pool = psymatch_runtime::db::connect(&psymatch_runtime::db::database_url()).await?;
    let scheduler = Arc::new(Scheduler::new(schedule, settings, pool)?);
    let registry = scheduler.metrics.registry.clone();
    let listen = v.text("HTTP_LISTEN", "0.0.0.0:9464");
    let app = axum::Router::new()
        .route("/health/liveness", axum::routing::get(|| async { "ok" }))
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    let mut text = String::new();
                    prometheus::TextEncoder::new()
                        .encode_utf8(&registry.gather(), &mut text)
                        .map(|_| text)
                        .unwrap_or_default()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let stop = Arc::new(tokio::sync::Notify::new());
    let signal = stop.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        signal.notify_one();
    });
    tracing::info!(file, listen, "scheduler running");
    scheduler.run(stop).await
}
