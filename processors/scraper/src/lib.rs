//! The scraper processor: the therapist directory from the KBV doctor
//! search (116117), live or from saved files, with change detection.
//!
//! A command registers a run and publishes its areas as `scraping.area_task`
//! records to `scraping-commands`, keyed by the run: Kafka holds the run's
//! work, one replica works through a run's areas in order, each area in a
//! transaction of its own, so a run resumes where it stopped after a crash
//! and nothing is applied twice. An answer with more results than it lists
//! splits its area into nine smaller ones, published the same way.

mod areas;
pub mod client;
pub mod config;
mod events;
pub mod fake;
pub mod html;
pub mod kbv;
pub mod metrics;
pub mod queries;
mod runs;
pub mod store;
pub mod therapist;

use client::KbvClient;
use config::ScraperConfig;
use metrics::ScraperMetrics;
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::processor::{Context, Incoming, ProcessError, Processor};
use serde::Deserialize;
use serde_json::{Value as Json, json};

pub use areas::region_areas;

/// The largest radius a command may ask for: one answer lists about 50
/// practices, so large circles only get split.
pub const MAX_RADIUS_KM: i32 = 50;

/// The scraper.
pub struct Scraper {
    config: ScraperConfig,
    client: KbvClient,
    metrics: ScraperMetrics,
}

impl Scraper {
    /// A scraper with `config`.
    pub fn new(config: ScraperConfig) -> Scraper {
        let metrics = ScraperMetrics::new();
        Scraper {
            client: KbvClient::new(config.clone(), metrics.clone()),
            config,
            metrics,
        }
    }
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
struct Coordinates {
    latitude: f64,
    longitude: f64,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
struct Area {
    #[serde(default)]
    postcode: Option<String>,
    #[serde(default)]
    centre: Option<Coordinates>,
    radius_km: i32,
}

#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
struct FilterSymbols {
    #[serde(default)]
    procedures: Vec<String>,
    #[serde(default)]
    age_groups: Vec<String>,
    #[serde(default)]
    settings: Vec<String>,
}

#[derive(Deserialize)]
struct AreaTask {
    run_id: String,
    area_index: i32,
    depth: i32,
    area: Area,
    filters: FilterSymbols,
}

/// Counters of a run, as the `RunCounts` record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    areas_total: i32,
    areas_done: i32,
    seen: i32,
    new: i32,
    changed: i32,
    removed: i32,
    invalid: i32,
}

impl Counts {
    fn json(&self) -> Json {
        json!({
            "areas_total": self.areas_total, "areas_done": self.areas_done, "seen": self.seen,
            "new": self.new, "changed": self.changed, "removed": self.removed, "invalid": self.invalid,
        })
    }
}

const EVENTS: &str = "scraping-events";
const COMMANDS: &str = "scraping-commands";
const THERAPISTS: &str = "therapist-events";

fn parse<T: serde::de::DeserializeOwned>(record: &Incoming) -> Result<T, ProcessError> {
    serde_json::from_value(record.payload.clone()).map_err(|error| ProcessError::Invalid {
        code: ErrorCode::InvalidCommand,
        reason: format!("{} does not fit its payload: {error}", record.event_type()),
    })
}

impl Processor for Scraper {
    fn name(&self) -> &'static str {
        "scraper"
    }

    fn queries(&self, pool: &sqlx::PgPool) -> Option<axum::Router> {
        Some(queries::routes(pool.clone()))
    }

    fn settings_prefixes(&self) -> &'static [&'static str] {
        &["KBV_", "SCRAPER_", "SCRAPE_"]
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec!["scraping-commands"]
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        self.metrics.collectors()
    }

    async fn process(&self, ctx: &mut Context<'_>, record: &Incoming) -> Result<(), ProcessError> {
        match record.event_type() {
            "scraping.scrape_area" => {
                #[derive(Deserialize)]
                struct Command {
                    run_id: String,
                    area: Area,
                    filters: FilterSymbols,
                }
                let command: Command = parse(record)?;
                let description = format!("area of {} km", command.area.radius_km);
                self.start_run(
                    ctx,
                    &command.run_id,
                    &description,
                    vec![command.area],
                    command.filters,
                )
                .await
            }
            "scraping.scrape_region" => {
                #[derive(Deserialize)]
                struct Command {
                    run_id: String,
                    region: String,
                    areas: Vec<Area>,
                    filters: FilterSymbols,
                }
                let command: Command = parse(record)?;
                let description = format!("region {}", command.region);
                self.start_run(
                    ctx,
                    &command.run_id,
                    &description,
                    command.areas,
                    command.filters,
                )
                .await
            }
            "scraping.area_task" => {
                let task: AreaTask = parse(record)?;
                self.work_area(ctx, task).await
            }
            "scraping.import_files" => {
                #[derive(Deserialize)]
                struct Command {
                    run_id: String,
                    directory: String,
                    format: String,
                }
                let command: Command = parse(record)?;
                self.import(ctx, &command.run_id, &command.directory, &command.format)
                    .await
            }
            other => Err(ProcessError::Invalid {
                code: ErrorCode::InvalidCommand,
                reason: format!("the scraper does not handle {other}"),
            }),
        }
    }
}
