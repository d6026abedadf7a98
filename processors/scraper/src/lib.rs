//! The scraper processor: the therapist directory from the KBV doctor
//! search (116117), live or from saved files, with change detection.
//!
//! A command registers a run and publishes its areas as `scraping.area_task`
//! records to `scraping-commands`, keyed by the run: Kafka holds the run's
//! work, one replica works through a run's areas in order, each area in a
//! transaction of its own, so a run resumes where it stopped after a crash
//! and nothing is applied twice. An answer with more results than it lists
//! splits its area into nine smaller ones, published the same way.

pub mod client;
pub mod config;
pub mod fake;
pub mod html;
pub mod kbv;
pub mod metrics;
pub mod store;
pub mod therapist;

use client::{KbvClient, SearchError};
use config::ScraperConfig;
use kbv::Filters;
use metrics::ScraperMetrics;
use psymatch_geo::{Position, grid};
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::processor::{Context, Incoming, ProcessError, Processor};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use store::{Change, Observed};
use therapist::{Implied, Raw, Therapist};
use uuid::Uuid;

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

/// The centre of an area: its coordinates, or its postcode's centroid.
fn centre(area: &Area) -> Result<(f64, f64), String> {
    if !(1..=MAX_RADIUS_KM).contains(&area.radius_km) {
        return Err(format!(
            "radius {} km is outside 1..{MAX_RADIUS_KM} km",
            area.radius_km
        ));
    }
    match (&area.centre, &area.postcode) {
        (Some(c), _) => {
            if Position::new(c.latitude, c.longitude).in_germany() {
                Ok((c.latitude, c.longitude))
            } else {
                Err(format!(
                    "centre {},{} is not in Germany",
                    c.latitude, c.longitude
                ))
            }
        }
        (None, Some(postcode)) => psymatch_geo::postcodes()
            .get(postcode.trim())
            .map(|p| (p.latitude, p.longitude))
            .ok_or_else(|| format!("postcode {postcode:?} is not a known German postcode")),
        (None, None) => Err("an area needs a postcode or a centre".to_string()),
    }
}

/// Areas covering a region given by name: `germany` (or `deutschland`,
/// `de`), or a postcode prefix (`1`, `10`, `80331`). The postcode centroids
/// inside it are put on a grid of 10 km squares; every square holding one
/// becomes an area of 8 km radius around its centre (the square's
/// half-diagonal is 7.07 km), so neighbouring areas overlap and every
/// centroid lies inside its square's area.
pub fn region_areas(region: &str) -> Result<Vec<(f64, f64, i32)>, String> {
    let region = region.trim().to_lowercase();
    let prefix = match region.as_str() {
        "germany" | "deutschland" | "de" => "",
        digits
            if !digits.is_empty()
                && digits.len() <= 5
                && digits.bytes().all(|b| b.is_ascii_digit()) =>
        {
            digits
        }
        _ => {
            return Err(format!(
                "region {region:?} has no areas: give areas, or the region germany, or a postcode prefix"
            ));
        }
    };
    let mut cells: Vec<grid::Cell> = psymatch_geo::postcodes()
        .iter()
        .filter(|(postcode, _)| postcode.starts_with(prefix))
        .map(|(_, p)| grid::cell(*p))
        .collect();
    if cells.is_empty() {
        return Err(format!("no postcode starts with {prefix:?}"));
    }
    cells.sort_unstable();
    cells.dedup();
    let radius = (grid::CELL_KM * std::f64::consts::FRAC_1_SQRT_2).ceil() as i32;
    Ok(cells
        .into_iter()
        .map(|square| {
            let centre = grid::centre(square);
            (centre.latitude, centre.longitude, radius)
        })
        .collect())
}

/// The key of an area in the membership table: centre, radius and filters.
fn area_key(latitude: f64, longitude: f64, radius_km: i32, filters: &FilterSymbols) -> String {
    format!(
        "{latitude:.4},{longitude:.4},{radius_km}|{}|{}|{}",
        filters.procedures.join("+"),
        filters.age_groups.join("+"),
        filters.settings.join("+")
    )
}

/// Nine circles covering a circle: a 3 x 3 grid of cells over its
/// bounding square, each cell covered by a circle of 0.471 radii (half the
/// cell's diagonal), rounded up to whole kilometres as the search takes
/// them.
fn split(latitude: f64, longitude: f64, radius_km: i32) -> Vec<Area> {
    let step = 2.0 * radius_km as f64 / 3.0;
    let radius = sub_radius(radius_km);
    let mut areas = Vec::with_capacity(9);
    for row in [-1.0, 0.0, 1.0] {
        for column in [-1.0, 0.0, 1.0] {
            areas.push(Area {
                postcode: None,
                centre: Some(Coordinates {
                    latitude: latitude + row * step / 111.2,
                    longitude: longitude + column * step / (111.2 * latitude.to_radians().cos()),
                }),
                radius_km: radius,
            });
        }
    }
    areas
}

/// The radius of the circles an area of `radius_km` is split into.
fn sub_radius(radius_km: i32) -> i32 {
    (radius_km as f64 * 0.4714).ceil() as i32
}

impl Scraper {
    /// Registers a run and publishes its areas.
    async fn start_run(
        &self,
        ctx: &mut Context<'_>,
        run_id: &str,
        description: &str,
        areas: Vec<Area>,
        filters: FilterSymbols,
    ) -> Result<(), ProcessError> {
        let reject = |ctx: &mut Context<'_>, reason: String| {
            ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason)
        };
        if run_id.trim().is_empty() {
            return reject(ctx, "run_id is empty".into());
        }
        if areas.is_empty() {
            return reject(ctx, "the run has no areas".into());
        }
        for (i, area) in areas.iter().enumerate() {
            if let Err(problem) = centre(area) {
                return reject(ctx, format!("area {i}: {problem}"));
            }
        }
        if let Err(problem) =
            Filters::from_symbols(&filters.procedures, &filters.age_groups, &filters.settings)
        {
            return reject(ctx, problem);
        }
        if !self
            .register_run(ctx, run_id, "kbv-api", description, areas.len())
            .await?
        {
            return Ok(());
        }
        for (index, area) in areas.into_iter().enumerate() {
            ctx.emit(
                COMMANDS,
                "scraping.area_task",
                json!({"run_id": run_id, "area_index": index as i32, "depth": 0, "area": area, "filters": filters}),
            )?;
        }
        Ok(())
    }

    /// Records a new run and announces it (`scraping.run_started`); a run
    /// id used before is rejected (false).
    async fn register_run(
        &self,
        ctx: &mut Context<'_>,
        run_id: &str,
        source: &str,
        description: &str,
        areas: usize,
    ) -> Result<bool, ProcessError> {
        let created = sqlx::query(
            "INSERT INTO scraper.runs (run_id, source, description, areas_total)
             VALUES ($1, $2, $3, $4) ON CONFLICT (run_id) DO NOTHING",
        )
        .bind(run_id)
        .bind(source)
        .bind(description)
        .bind(areas as i32)
        .execute(ctx.db())
        .await?
        .rows_affected();
        if created == 0 {
            ctx.reject(
                EVENTS,
                ErrorCode::InvalidState,
                &format!("run {run_id} exists already; a new run needs a new run_id"),
            )?;
            return Ok(false);
        }
        self.metrics.runs.with_label_values(&["started"]).inc();
        tracing::info!(run_id, areas, "scrape run started");
        let counts = Counts {
            areas_total: areas as i32,
            ..Counts::default()
        };
        ctx.emit(
            EVENTS,
            "scraping.run_started",
            json!({"run_id": run_id, "counts": counts.json()}),
        )?;
        Ok(true)
    }

    /// Scrapes one area of a run.
    async fn work_area(&self, ctx: &mut Context<'_>, task: AreaTask) -> Result<(), ProcessError> {
        let run: Option<(String,)> =
            sqlx::query_as("SELECT status FROM scraper.runs WHERE run_id = $1 FOR UPDATE")
                .bind(&task.run_id)
                .fetch_optional(ctx.db())
                .await?;
        match run {
            Some((status,)) if status == "RUNNING" => {}
            Some((status,)) => {
                // A task of a finished run (published twice): nothing to do.
                tracing::info!(run_id = %task.run_id, status, "area task of a finished run skipped");
                return Ok(());
            }
            None => {
                return Err(ProcessError::Invalid {
                    code: ErrorCode::UnknownSubject,
                    reason: format!("area task of unknown run {}", task.run_id),
                });
            }
        }
        let (latitude, longitude) = centre(&task.area).map_err(|reason| ProcessError::Invalid {
            code: ErrorCode::InvalidCommand,
            reason,
        })?;
        let filters = Filters::from_symbols(
            &task.filters.procedures,
            &task.filters.age_groups,
            &task.filters.settings,
        )
        .map_err(|reason| ProcessError::Invalid {
            code: ErrorCode::InvalidCommand,
            reason,
        })?;
        let pool = ctx.pool().clone();
        let radius = task.area.radius_km;
        let answer = self
            .client
            .search(&pool, latitude, longitude, radius as u32, &filters)
            .await;
        let mut delta = Counts {
            areas_done: 1,
            ..Counts::default()
        };
        let mut truncated = 0;
        let mut failure = None;
        match answer {
            Err(SearchError::Database(error)) => return Err(error.into()),
            Err(SearchError::Failed(reason)) => {
                self.metrics.areas.with_label_values(&["failed"]).inc();
                tracing::warn!(run_id = %task.run_id, area = task.area_index, %reason, "area failed");
                failure = Some(format!("area {} failed: {reason}", task.area_index));
            }
            Ok(answer) => {
                let seen = self
                    .apply(
                        ctx,
                        &answer.records,
                        &filters.implied(),
                        &task.run_id,
                        "kbv-api",
                        &mut delta,
                    )
                    .await?;
                let splittable =
                    radius as u32 > self.config.min_radius_km && sub_radius(radius) < radius;
                if answer.more_results && splittable {
                    self.metrics.areas.with_label_values(&["split"]).inc();
                    let parts = split(latitude, longitude, radius);
                    let total: i32 = sqlx::query_scalar(
                        "UPDATE scraper.runs SET areas_total = areas_total + $2 WHERE run_id = $1
                         RETURNING areas_total",
                    )
                    .bind(&task.run_id)
                    .bind(parts.len() as i32)
                    .fetch_one(ctx.db())
                    .await?;
                    let first = total - parts.len() as i32;
                    for (k, area) in parts.into_iter().enumerate() {
                        ctx.emit(
                            COMMANDS,
                            "scraping.area_task",
                            json!({"run_id": task.run_id, "area_index": first + k as i32,
                                   "depth": task.depth + 1, "area": area, "filters": task.filters}),
                        )?;
                    }
                } else if answer.more_results {
                    self.metrics.areas.with_label_values(&["truncated"]).inc();
                    truncated = 1;
                } else {
                    self.metrics.areas.with_label_values(&["complete"]).inc();
                    let key = area_key(latitude, longitude, radius, &task.filters);
                    let removed =
                        store::complete_area(ctx.db(), &key, &seen, self.config.remove_after_runs)
                            .await?;
                    for therapist_id in &removed {
                        ctx.emit(
                            THERAPISTS,
                            "therapist.removed",
                            json!({"therapist_id": therapist_id.to_string(), "source": "kbv-api",
                                   "reason": format!("not listed in {} complete scrapes of its area", self.config.remove_after_runs)}),
                        )?;
                    }
                    delta.removed = removed.len() as i32;
                    self.metrics
                        .therapists
                        .with_label_values(&["removed"])
                        .inc_by(removed.len() as u64);
                }
            }
        }
        let row: (i32, i32, i32, i32, i32, i32, i32, i32, Option<String>) = sqlx::query_as(
            "UPDATE scraper.runs
                SET areas_done = areas_done + 1, seen = seen + $2, new = new + $3,
                    changed = changed + $4, removed = removed + $5, invalid = invalid + $6,
                    truncated = truncated + $7,
                    detail = CASE WHEN $8::text IS NULL THEN detail
                                  ELSE left(coalesce(detail || '; ', '') || $8, 2000) END
              WHERE run_id = $1
            RETURNING areas_total, areas_done, seen, new, changed, removed, invalid, truncated, detail",
        )
        .bind(&task.run_id)
        .bind(delta.seen)
        .bind(delta.new)
        .bind(delta.changed)
        .bind(delta.removed)
        .bind(delta.invalid)
        .bind(truncated)
        .bind(&failure)
        .fetch_one(ctx.db())
        .await?;
        let counts = Counts {
            areas_total: row.0,
            areas_done: row.1,
            seen: row.2,
            new: row.3,
            changed: row.4,
            removed: row.5,
            invalid: row.6,
        };
        ctx.emit(
            EVENTS,
            "scraping.run_progress",
            json!({"run_id": task.run_id, "counts": counts.json()}),
        )?;
        if counts.areas_done >= counts.areas_total {
            let failed = row.8.is_some();
            let mut detail = row.8;
            if row.7 > 0 {
                let note = format!(
                    "areas still listing more results at the smallest radius: {}",
                    row.7
                );
                detail = Some(detail.map_or(note.clone(), |d| format!("{d}; {note}")));
            }
            self.finish_run(ctx, &task.run_id, counts, failed, detail)
                .await?;
        }
        Ok(())
    }

    async fn finish_run(
        &self,
        ctx: &mut Context<'_>,
        run_id: &str,
        counts: Counts,
        failed: bool,
        detail: Option<String>,
    ) -> Result<(), ProcessError> {
        let outcome = if failed { "FAILED" } else { "COMPLETED" };
        sqlx::query("UPDATE scraper.runs SET status = $2, finished_at = now() WHERE run_id = $1")
            .bind(run_id)
            .bind(outcome)
            .execute(ctx.db())
            .await?;
        self.metrics
            .runs
            .with_label_values(&[if failed { "failed" } else { "completed" }])
            .inc();
        tracing::info!(
            run_id,
            outcome,
            new = counts.new,
            changed = counts.changed,
            removed = counts.removed,
            "scrape run ended"
        );
        ctx.emit(
            EVENTS,
            "scraping.run_completed",
            json!({"run_id": run_id, "counts": counts.json(), "outcome": outcome, "detail": detail}),
        )
    }

    /// Normalises, identifies and diffs the records of one answer or file,
    /// emitting what changed. Returns the ids seen.
    async fn apply(
        &self,
        ctx: &mut Context<'_>,
        records: &[Raw],
        implied: &Implied,
        run_id: &str,
        source: &str,
        counts: &mut Counts,
    ) -> Result<Vec<Uuid>, ProcessError> {
        let mut seen = Vec::new();
        for raw in records {
            let therapist = match therapist::normalise(raw, implied) {
                Ok(therapist) => therapist,
                Err(reason) => {
                    counts.invalid += 1;
                    self.metrics
                        .therapists
                        .with_label_values(&["invalid"])
                        .inc();
                    tracing::debug!(run_id, reason, "record unusable");
                    continue;
                }
            };
            let observed = store::observe(ctx.db(), &therapist, run_id).await?;
            counts.seen += 1;
            self.metrics.therapists.with_label_values(&["seen"]).inc();
            if !seen.contains(&observed.therapist_id) {
                seen.push(observed.therapist_id);
            }
            self.publish(ctx, &therapist, &observed, source, counts)?;
        }
        Ok(seen)
    }

    fn publish(
        &self,
        ctx: &mut Context<'_>,
        therapist: &Therapist,
        observed: &Observed,
        source: &str,
        counts: &mut Counts,
    ) -> Result<(), ProcessError> {
        let id = observed.therapist_id.to_string();
        match &observed.change {
            Change::Unchanged => return Ok(()),
            Change::New | Change::Returned => {
                counts.new += 1;
                self.metrics.therapists.with_label_values(&["new"]).inc();
                ctx.emit(
                    THERAPISTS,
                    "therapist.discovered",
                    json!({"therapist_id": id, "source": source, "source_id": therapist.source_id,
                           "details": therapist.details_json(), "flags": therapist.flags}),
                )?;
            }
            Change::Changed(fields) => {
                counts.changed += 1;
                self.metrics
                    .therapists
                    .with_label_values(&["changed"])
                    .inc();
                ctx.emit(
                    THERAPISTS,
                    "therapist.updated",
                    json!({"therapist_id": id, "source": source, "details": therapist.details_json(),
                           "changed_fields": fields, "flags": therapist.flags}),
                )?;
            }
        }
        if therapist.details.coordinates.is_none() && observed.address_changed {
            let address = &therapist.details.address;
            ctx.emit(
                "geocoding-requests",
                "geocoding.geocode_address",
                json!({"request_id": format!("therapist-{id}"),
                       "address": {"street": address.street, "house_number": address.house_number,
                                   "postcode": address.postcode, "city": address.city}}),
            )?;
        }
        Ok(())
    }

    /// Imports saved answers (JSON) and result pages (HTML) from a
    /// directory under the import root, in file-name order.
    async fn import(
        &self,
        ctx: &mut Context<'_>,
        run_id: &str,
        directory: &str,
        format: &str,
    ) -> Result<(), ProcessError> {
        let root = self.config.import_root.canonicalize();
        let dir = std::path::Path::new(directory).canonicalize();
        let dir = match (root, dir) {
            (Ok(root), Ok(dir)) if dir.starts_with(&root) && dir.is_dir() => dir,
            (Err(_), _) => {
                let reason = format!(
                    "the import root {} does not exist",
                    self.config.import_root.display()
                );
                return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
            }
            _ => {
                let reason = format!(
                    "{directory} is not a directory under the import root {}",
                    self.config.import_root.display()
                );
                return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
            }
        };
        let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
            .map_err(|e| ProcessError::Transient(format!("listing {}: {e}", dir.display())))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.is_file())
            .collect();
        files.sort();
        let description = format!("import of {directory}");
        if !self
            .register_run(ctx, run_id, "kbv-file", &description, files.len())
            .await?
        {
            return Ok(());
        }
        let mut counts = Counts {
            areas_total: files.len() as i32,
            ..Counts::default()
        };
        let mut problems = Vec::new();
        for file in &files {
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let kind = match format {
                "JSON" => "json",
                "HTML" => "html",
                _ => match file
                    .extension()
                    .and_then(|e| e.to_str())
                    .map(str::to_lowercase)
                    .as_deref()
                {
                    Some("json") => "json",
                    Some("html" | "htm") => "html",
                    _ => {
                        problems.push(format!("{name}: neither .json nor .html"));
                        counts.areas_done += 1;
                        continue;
                    }
                },
            };
            let parsed =
                std::fs::read(file)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| match kind {
                        "json" => kbv::parse_answer(&bytes).map(|a| a.records),
                        _ => html::parse_page(&String::from_utf8_lossy(&bytes)),
                    });
            counts.areas_done += 1;
            match parsed {
                Ok(records) => {
                    self.apply(
                        ctx,
                        &records,
                        &Implied::default(),
                        run_id,
                        "kbv-file",
                        &mut counts,
                    )
                    .await?;
                }
                Err(reason) => {
                    counts.invalid += 1;
                    problems.push(format!("{name}: {reason}"));
                }
            }
        }
        sqlx::query(
            "UPDATE scraper.runs SET areas_done = $2, seen = $3, new = $4, changed = $5, invalid = $6
              WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(counts.areas_done)
        .bind(counts.seen)
        .bind(counts.new)
        .bind(counts.changed)
        .bind(counts.invalid)
        .execute(ctx.db())
        .await?;
        let detail = (!problems.is_empty()).then(|| {
            let mut text = problems.join("; ");
            text.truncate(2000);
            text
        });
        self.finish_run(ctx, run_id, counts, false, detail).await
    }
}

impl Processor for Scraper {
    fn name(&self) -> &'static str {
        "scraper"
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nine_smaller_circles_cover_the_area() {
        let parts = split(52.5, 13.4, 9);
        assert_eq!(parts.len(), 9);
        assert!(parts.iter().all(|p| p.radius_km == 5));
        // Points all over the parent circle lie in one of the parts.
        for i in 0..72 {
            let angle = i as f64 * 5.0f64.to_radians();
            for distance in [0.0, 4.5, 8.99] {
                let point = (
                    52.5 + distance * angle.sin() / 111.2,
                    13.4 + distance * angle.cos() / (111.2 * 52.5f64.to_radians().cos()),
                );
                let covered = parts.iter().any(|p| {
                    let c = p.centre.as_ref().unwrap();
                    let dy = (c.latitude - point.0) * 111.2;
                    let dx = (c.longitude - point.1) * 111.2 * 52.5f64.to_radians().cos();
                    (dx * dx + dy * dy).sqrt() <= p.radius_km as f64
                });
                assert!(covered, "{distance} km at {i}");
            }
        }
        assert!(sub_radius(2) < 2);
        assert_eq!(sub_radius(1), 1, "1 km cannot be split");
    }

    #[test]
    fn regions_are_covered_by_overlapping_areas() {
        let germany = region_areas("Germany").unwrap();
        assert!(
            (2_000..6_000).contains(&germany.len()),
            "{} areas",
            germany.len()
        );
        assert!(germany.iter().all(|a| a.2 == 8));
        // Every postcode centroid lies inside an area.
        for (postcode, p) in psymatch_geo::postcodes() {
            let inside = germany
                .iter()
                .any(|(lat, lon, r)| grid::plane_km(Position::new(*lat, *lon), *p) <= *r as f64);
            assert!(inside, "{postcode} is not covered");
        }
        let berlin = region_areas("10").unwrap();
        assert!((1..30).contains(&berlin.len()), "{} areas", berlin.len());
        assert!(
            region_areas("Atlantis")
                .unwrap_err()
                .contains("postcode prefix")
        );
        assert!(region_areas("00").unwrap_err().contains("no postcode"));
    }

    #[test]
    fn areas_are_checked() {
        let area = |postcode: Option<&str>, radius_km| Area {
            postcode: postcode.map(Into::into),
            centre: None,
            radius_km,
        };
        assert!(centre(&area(Some("10115"), 5)).is_ok());
        assert!(
            centre(&area(Some("00000"), 5))
                .unwrap_err()
                .contains("not a known")
        );
        assert!(
            centre(&area(Some("10115"), 80))
                .unwrap_err()
                .contains("radius")
        );
        assert!(
            centre(&area(None, 5))
                .unwrap_err()
                .contains("postcode or a centre")
        );
    }
}
