//! A run's work: registered with its areas, each area searched (split when
//! the answer is full), its therapists applied with change detection,
//! the run finished with its counts; and imports of saved files.

use crate::areas::{area_key, centre, split, sub_radius};
use crate::client::SearchError;
use crate::events::{AreaSearched, RunEnded, RunStarted, TherapistsFound};
use crate::kbv::Filters;
use crate::store::{Change, Observed};
use crate::therapist::{Implied, Raw, Therapist};
use crate::{
    Area, AreaTask, COMMANDS, Counts, EVENTS, FilterSymbols, Scraper, THERAPISTS, html, kbv, store,
    therapist,
};
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::events::Event;
use psymatch_runtime::processor::{Context, ProcessError};
use serde_json::json;
use uuid::Uuid;

impl Scraper {
    /// An area searched without failing.
    fn area_searched(&self, task: &AreaTask, outcome: &str) {
        AreaSearched {
            run_id: &task.run_id,
            area: task.area_index,
            outcome,
            reason: None,
        }
        .emit(&self.metrics);
    }

    /// One practice of a run's answer.
    fn therapist_found(&self, run_id: &str, outcome: &str) {
        TherapistsFound {
            run_id,
            outcome,
            count: 1,
        }
        .emit(&self.metrics);
    }

    /// Registers a run and publishes its areas.
    pub(crate) async fn start_run(
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
    pub(crate) async fn register_run(
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
        RunStarted { run_id, areas }.emit(&self.metrics);
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
    pub(crate) async fn work_area(
        &self,
        ctx: &mut Context<'_>,
        task: AreaTask,
    ) -> Result<(), ProcessError> {
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
                AreaSearched {
                    run_id: &task.run_id,
                    area: task.area_index,
                    outcome: "failed",
                    reason: Some(&reason),
                }
                .emit(&self.metrics);
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
                    self.area_searched(&task, "split");
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
                    self.area_searched(&task, "truncated");
                    truncated = 1;
                } else {
                    self.area_searched(&task, "complete");
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
                    TherapistsFound {
                        run_id: &task.run_id,
                        outcome: "removed",
                        count: removed.len() as u64,
                    }
                    .emit(&self.metrics);
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

    pub(crate) async fn finish_run(
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
        RunEnded {
            run_id,
            failed,
            new: counts.new,
            changed: counts.changed,
            removed: counts.removed,
        }
        .emit(&self.metrics);
        ctx.emit(
            EVENTS,
            "scraping.run_completed",
            json!({"run_id": run_id, "counts": counts.json(), "outcome": outcome, "detail": detail}),
        )
    }

    /// Normalises, identifies and diffs the records of one answer or file,
    /// emitting what changed. Returns the ids seen.
    pub(crate) async fn apply(
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
                    self.therapist_found(run_id, "invalid");
                    tracing::debug!(run_id, reason, "record unusable");
                    continue;
                }
            };
            let observed = store::observe(ctx.db(), &therapist, run_id).await?;
            counts.seen += 1;
            self.therapist_found(run_id, "seen");
            if !seen.contains(&observed.therapist_id) {
                seen.push(observed.therapist_id);
            }
            self.publish(ctx, run_id, &therapist, &observed, source, counts)?;
        }
        Ok(seen)
    }

    pub(crate) fn publish(
        &self,
        ctx: &mut Context<'_>,
        run_id: &str,
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
                self.therapist_found(run_id, "new");
                ctx.emit(
                    THERAPISTS,
                    "therapist.discovered",
                    json!({"therapist_id": id, "source": source, "source_id": therapist.source_id,
                           "details": therapist.details_json(), "flags": therapist.flags}),
                )?;
            }
            Change::Changed(fields) => {
                counts.changed += 1;
                self.therapist_found(run_id, "changed");
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
                       "subject": psymatch_geo::subject::Subject::practice(&id).to_json(),
                       "address": {"street": address.street, "house_number": address.house_number,
                                   "postcode": address.postcode, "city": address.city}}),
            )?;
        }
        Ok(())
    }

    /// Imports saved answers (JSON) and result pages (HTML) from a
    /// directory under the import root, in file-name order.
    pub(crate) async fn import(
        &self,
        ctx: &mut Context<'_>,
        run_id: &str,
        directory: &str,
        format: &str,
    ) -> Result<(), ProcessError> {
        let root = self.config.import_root.canonicalize();
        let dir = std::path::Path::new(directory).canonicalize();
        let (root, dir) = match (root, dir) {
            (Ok(root), Ok(dir)) if dir.starts_with(&root) && dir.is_dir() => (root, dir),
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
            // A link inside the root may point anywhere: only what it
            // resolves to counts, and that must be under the root too.
            let inside = file
                .canonicalize()
                .is_ok_and(|real| real.starts_with(&root));
            if !inside {
                problems.push(format!(
                    "{name}: a link to a file outside the import root (not imported)"
                ));
                counts.areas_done += 1;
                continue;
            }
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
