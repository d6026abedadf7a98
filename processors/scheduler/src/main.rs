//! `psymatch-scheduler`: publishes the commands of the schedule file
//! (`SCHEDULE_FILE`), one run per occurrence across replicas, serves the
//! runtime's surface (`/health/liveness`, `/health/readiness`,
//! `/health/status`, `/metrics`) on `HTTP_LISTEN`, publishes through the
//! runtime's outbox (the runtime's settings: `KAFKA_BROKERS`, `RELAY`,
//! `TOPIC_PREFIX`, ...), and on SIGTERM or SIGINT finishes the run in hand,
//! publishes what it committed and exits, like every processor.

use psymatch_runtime::config::{RuntimeConfig, Vars};
use psymatch_runtime::surface::{Surface, dependency_probes};
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
    let runtime = RuntimeConfig::from_vars("scheduler", &vars)?;
    runtime.register_clients();
    let settings = Settings {
        runtime: runtime.clone(),
        owner: v.text("HOSTNAME", &format!("scheduler-{}", std::process::id())),
        tick: Duration::from_millis(v.number("SCHEDULER_TICK_MS", 1000u64)?),
        lease: Duration::from_secs(v.number("SCHEDULER_LEASE_SECS", 120u64)?),
        retry_base: Duration::from_millis(v.number("SCHEDULER_RETRY_BASE_MS", 2000u64)?),
        catch_up: chrono::Duration::hours(v.number("SCHEDULER_CATCH_UP_HOURS", 24i64)?),
    };
    psymatch_runtime::config::refuse_unknown("scheduler", &vars, &["SCHEDULER_", "SCHEDULE_"])?;
    let pool = psymatch_runtime::db::connect(&runtime.database_url).await?;
    let queries = psymatch_scheduler::queries::routes(pool.clone(), Arc::new(schedule.clone()));
    let scheduler = Arc::new(Scheduler::new(schedule, settings, pool)?);
    let listen = v.text("HTTP_LISTEN", "0.0.0.0:9464");
    let surface = Arc::new(Surface {
        processor: "scheduler".to_string(),
        group: "scheduler.runs".to_string(),
        metrics: scheduler.metrics.surface.clone(),
        status: scheduler.status.clone(),
        probes: dependency_probes(
            scheduler.pool().clone(),
            runtime.registry_url.clone(),
            runtime.brokers.clone(),
        ),
        started: std::time::Instant::now(),
    });
    let queries = psymatch_runtime::query::guarded(
        queries,
        Arc::new(runtime.query_tokens.clone()),
        scheduler.metrics.surface.clone(),
    );
    let (address, _http) =
        psymatch_runtime::surface::serve_with(surface, &listen, Some(queries)).await?;
    let stop = Arc::new(tokio::sync::Notify::new());
    let signal = stop.clone();
    tokio::spawn(async move {
        psymatch_runtime::telemetry::shutdown_signal().await;
        signal.notify_one();
    });
    tracing::info!(file, http = %address, "scheduler running");
    scheduler.run(stop).await
}
