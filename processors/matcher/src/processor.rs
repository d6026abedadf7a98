//! The matcher processor: folds patient, therapist, geocoding and email
//! events into its [`World`], and at the end of every batch runs the
//! searches the batch touched: candidates by the rules, ranking, inquiries
//! composed per practice, email commands, and the explanation of each
//! decision. Answers recorded by people place patients, start cooling
//! periods and decline politely when a patient is placed already.
//!
//! Batches take turns on one row lock (`matcher.world`): matching weighs
//! every search against every practice, so replicas of the matcher share
//! the load by turns and stay consistent; a replica whose memory is behind
//! the committed version reloads it. Within a process, a batch may start
//! from the memory while the batch before it is still encoding and
//! committing its outputs: it takes the row lock only to write, and runs
//! again from the stored state if that batch did not commit.

use crate::index::{Found, Index, Survey};
use crate::inquiries::{self, Search};
use crate::rules::{self, Verdict};
use crate::state::{
    InquiryRecord, Outcome, SearchRecord, TherapistRecord, Version, World, coordinates,
};
use chrono::{DateTime, Duration, Utc};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use psymatch_geo::{Position, distance_km};
use psymatch_runtime::config::Vars;
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::processor::{
    BatchContext, Context, Incoming, ProcessError, Processor, Scratch, invalid_event,
};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

const EVENTS: &str = "matching-events";
/// More therapists changed in one batch than this: every active search runs
/// instead of looking for the searches near each.
const MANY_CHANGES: usize = 200;
/// An explanation published on its own lists at most this many therapists
/// (chosen first, then a few other candidates, then the nearest rejected):
/// every search publishes one, and a city's search considers a thousand
/// practices.
pub const BRIEF_DECISIONS: usize = 15;
/// Of those, at most this many candidates that were not chosen: the rest
/// of the room goes to the nearest therapists a rule rejected, the ones a
/// person asks about ("why was Dr. X not asked?").
const BRIEF_CANDIDATES: usize = 5;
/// An explanation a person asked for (`matching.run` for one patient)
/// lists up to this many.
pub const FULL_DECISIONS: usize = 5_000;
/// Candidates of a search handed to composing, best first: its quota of
/// practices, with room to skip full practices and colleagues.
const COMPOSE_DEPTH: usize = 50;

/// The matcher's settings.
#[derive(Debug, Clone)]
pub struct MatcherConfig {
    /// Practices each search is offered to at once (`INQUIRIES_PER_PATIENT`).
    pub per_patient: usize,
    /// Cooling period after any answer (`COOLING_DAYS`).
    pub cooling: Duration,
    /// No answer this long after the email: phone (`FOLLOW_UP_DAYS`).
    pub follow_up: Duration,
}

impl MatcherConfig {
    /// Reads the settings (defaults: 3 practices, 28 days, 7 days).
    pub fn from_vars(vars: Vars<'_>) -> anyhow::Result<MatcherConfig> {
        let per_patient = vars.number("INQUIRIES_PER_PATIENT", 3usize)?;
        anyhow::ensure!(
            (1..=50).contains(&per_patient),
            "INQUIRIES_PER_PATIENT must be 1 to 50"
        );
        Ok(MatcherConfig {
            per_patient,
            cooling: Duration::days(vars.number("COOLING_DAYS", 28i64)?),
            follow_up: Duration::days(vars.number("FOLLOW_UP_DAYS", 7i64)?),
        })
    }

    /// The settings from the process environment.
    pub fn from_env() -> anyhow::Result<MatcherConfig> {
        let vars: std::collections::BTreeMap<String, String> = std::env::vars().collect();
        MatcherConfig::from_vars(Vars(&vars))
    }
}

impl Default for MatcherConfig {
    fn default() -> Self {
        MatcherConfig::from_vars(Vars(&BTreeMap::new())).expect("defaults are valid")
    }
}

struct Metrics {
    decisions: IntCounterVec,
    search_seconds: Histogram,
    searches: IntGaugeVec,
    waiting: IntGauge,
    loads: prometheus::IntCounter,
}

/// The matcher processor.
pub struct Matcher {
    config: MatcherConfig,
    world: Mutex<World>,
    /// A batch's turn on the memory in this process, from its start to the
    /// end of its matching; its writes follow under the row lock, which
    /// holds batches (and replicas) apart until each commits.
    turns: Arc<Mutex<()>>,
    metrics: Metrics,
}

impl Matcher {
    /// A matcher with these settings; its state loads when it warms up,
    /// and again in any batch that finds another version stored.
    pub fn new(config: MatcherConfig) -> Matcher {
        Matcher {
            config,
            world: Mutex::new(World::default()),
            turns: Arc::new(Mutex::new(())),
            metrics: Metrics {
                decisions: IntCounterVec::new(
                    Opts::new(
                        "matcher_decisions_total",
                        "Matcher decisions: inquiries, placements, declines, follow-ups, exhausted searches.",
                    ),
                    &["decision"],
                )
                .expect("valid metric"),
                search_seconds: Histogram::with_opts(
                    HistogramOpts::new(
                        "matcher_search_seconds",
                        "Candidate search and ranking for one patient.",
                    )
                    .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05]),
                )
                .expect("valid metric"),
                searches: IntGaugeVec::new(
                    Opts::new("matcher_searches", "Searches by status."),
                    &["status"],
                )
                .expect("valid metric"),
                waiting: IntGauge::new(
                    "matcher_batches_waiting",
                    "Batches that have matched and wait for the batch before them to commit.",
                )
                .expect("valid metric"),
                loads: prometheus::IntCounter::new(
                    "matcher_state_loads_total",
                    "Loads of the whole stored state: one at start, one more each time another \
                     replica committed since this one's last batch.",
                )
                .expect("valid metric"),
            },
        }
    }

    /// The stored state at `version`, logged with its size and counted.
    async fn load(&self, db: &mut sqlx::PgConnection, version: i64) -> Result<World, sqlx::Error> {
        let started = std::time::Instant::now();
        let world = World::load(db, version).await?;
        self.metrics.loads.inc();
        tracing::info!(
            version,
            therapists = world.therapists.len(),
            searches = world.searches.len(),
            inquiries = world.inquiries.len(),
            seconds = started.elapsed().as_secs_f64(),
            "matcher state loaded"
        );
        Ok(world)
    }

    fn count(&self, decision: &str, n: usize) {
        self.metrics
            .decisions
            .with_label_values(&[decision])
            .inc_by(n as u64);
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

fn time(value: &Value) -> Option<DateTime<Utc>> {
    value.as_str()?.parse().ok()
}

impl Matcher {
    fn patient_event(&self, world: &mut World, record: &Incoming, now: DateTime<Utc>) {
        let p = &record.payload;
        let id = text(&p["patient_id"]);
        match record.event_type() {
            "patient.erased" => {
                let keep_log = p["keep_contact_log"].as_bool().unwrap_or(false);
                erase(world, &id, keep_log);
            }
            "patient.registered" | "patient.updated" | "patient.search_status_changed" => {
                let profile = p["profile"].clone();
                let requested = text(&profile["status"]);
                // Taken out and put back below: no copy of the old profile.
                let stored = world.searches.remove(&id);
                let was_paused = stored.as_ref().is_some_and(|s| s.status == "PAUSED");
                let mut search = stored.unwrap_or(SearchRecord {
                    profile: Value::Null,
                    status: "ACTIVE".into(),
                    placed: None,
                    excluded: Default::default(),
                    travel: BTreeMap::new(),
                    travel_request: None,
                    exhausted: false,
                    since: now,
                });
                // Travel times hold for one home and one mode of transport.
                let moved = search.profile["coordinates"] != profile["coordinates"]
                    || search.profile["transport"] != profile["transport"];
                if moved {
                    search.travel.clear();
                    search.travel_request = None;
                }
                search.profile = profile;
                // A placement stands until the search is cancelled.
                if search.status != "PLACED" || requested == "CANCELLED" {
                    search.status = requested.clone();
                }
                search.exhausted = false;
                let paused = search.status == "PAUSED" && !was_paused;
                let active = search.status == "ACTIVE";
                world.put_search(&id, search);
                if paused {
                    world.pending_pause.push((id.clone(), p["reason"].clone()));
                }
                if active {
                    world.to_match.insert(id.clone());
                    world.to_explain.insert(id);
                }
            }
            _ => {}
        }
    }

    fn therapist_event(&self, world: &mut World, record: &Incoming, now: DateTime<Utc>) {
        let p = &record.payload;
        let id = text(&p["therapist_id"]);
        if id.is_empty() || record.event_type() == "command.rejected" {
            return;
        }
        let mut therapist = world
            .therapists
            .get(&id)
            .cloned()
            .unwrap_or_else(|| TherapistRecord::new(now));
        let mut opened = false;
        match record.event_type() {
            "therapist.discovered" | "therapist.updated" => {
                therapist.details = Some(p["details"].clone());
                therapist.source = p["source"].as_str().map(str::to_string);
                therapist.removed = false;
                opened = true;
            }
            "therapist.removed" => therapist.removed = true,
            "therapist.blocked" => therapist.blocked = Some(text(&p["reason"])),
            "therapist.unblocked" => {
                therapist.blocked = None;
                opened = true;
            }
            "therapist.free_places_changed" => {
                therapist.individual_from =
                    p["individual_from"].as_str().and_then(|d| d.parse().ok());
                therapist.group_from = p["group_from"].as_str().and_then(|d| d.parse().ok());
                opened = true;
            }
            "therapist.preferences_changed" => {
                therapist.min_age = p["min_age"].as_i64().map(|a| a as i32);
                therapist.max_age = p["max_age"].as_i64().map(|a| a as i32);
                therapist.genders = p["genders"]
                    .as_array()
                    .map(|g| {
                        g.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                therapist.prefers_group = p["prefers_group"].as_bool().unwrap_or(false);
                opened = true;
            }
            _ => return,
        }
        world.put_therapist(&id, therapist);
        if opened {
            world.changed_therapists.insert(id);
        }
    }

    fn geocoded(&self, world: &mut World, record: &Incoming, now: DateTime<Utc>) {
        let p = &record.payload;
        let request = text(&p["request_id"]);
        if let Some(therapist) = request.strip_prefix("therapist-") {
            if let Some(position) = coordinates(&p["position"]) {
                // The position may overtake the therapist's own event (other
                // topics, other partitions): it waits in a record of its own.
                let mut t = world
                    .therapists
                    .get(therapist)
                    .cloned()
                    .unwrap_or_else(|| TherapistRecord::new(now));
                t.geocoded = Some(position);
                world.put_therapist(therapist, t);
                world.changed_therapists.insert(therapist.to_string());
            }
            return;
        }
        let Some(patient) = request
            .strip_prefix("travel-")
            .and_then(|rest| rest.rsplit_once('-'))
            .map(|(patient, _)| patient.to_string())
        else {
            return;
        };
        let Some(mut search) = world.searches.get(&patient).cloned() else {
            return;
        };
        let Some((awaited, asked)) = search.travel_request.clone() else {
            return;
        };
        if awaited != request {
            return; // an answer for an earlier home or mode
        }
        let mut answered = std::collections::HashSet::new();
        for result in p["results"].as_array().into_iter().flatten() {
            if let Some(seconds) = result["duration_seconds"].as_f64() {
                let therapist = text(&result["destination_id"]);
                search.travel.insert(therapist.clone(), seconds / 60.0);
                answered.insert(therapist);
            }
        }
        // No time from the geocoder (failure, no route): the straight line
        // at 30 km/h, the ranking's own stand-in, decides.
        let home = world.patients.get(&patient).and_then(|p| p.position);
        for therapist in asked.iter().filter(|t| !answered.contains(*t)) {
            let practice = world.index.get(therapist).and_then(|t| t.position);
            if let (Some(home), Some(practice)) = (home, practice) {
                search
                    .travel
                    .insert(therapist.clone(), distance_km(home, practice) * 2.0);
            }
        }
        search.travel_request = None;
        world.put_search(&patient, search);
        world.to_match.insert(patient.clone());
        world.to_explain.insert(patient);
    }

    fn communication(&self, world: &mut World, record: &Incoming) {
        let p = &record.payload;
        let inquiries: Vec<String> = p["inquiry_ids"]
            .as_array()
            .map(|ids| ids.iter().map(text).collect())
            .unwrap_or_else(|| vec![text(&p["inquiry_id"])]);
        match record.event_type() {
            "email.sent" => {
                let at = time(&p["sent_at"]);
                let mut practices = Vec::new();
                for id in &inquiries {
                    if let Some(mut inquiry) = world.inquiries.get(id).cloned() {
                        inquiry.sent_at = inquiry.sent_at.or(at);
                        practices.push(inquiry.email.clone());
                        world.put_inquiry(id, inquiry);
                    }
                }
                practices.dedup();
                for email in practices {
                    let members: Vec<String> = world.members_of(&email);
                    for member in members {
                        world
                            .update_therapist(&member, |t| t.last_contact = t.last_contact.max(at));
                    }
                }
            }
            "email.failed" if p["permanent"].as_bool() == Some(true) => {
                for id in &inquiries {
                    if let Some(mut inquiry) = world.inquiries.get(id).cloned()
                        && inquiry.open()
                    {
                        inquiry.failed = true;
                        for patient in &inquiry.patients {
                            world.to_match.insert(patient.clone());
                        }
                        world.put_inquiry(id, inquiry);
                    }
                }
            }
            _ => {}
        }
    }

    fn answer(
        &self,
        world: &mut World,
        ctx: &mut Context<'_>,
        record: &Incoming,
    ) -> Result<(), ProcessError> {
        let p = &record.payload;
        let id = text(&p["inquiry_id"]);
        let Some(mut inquiry) = world.inquiries.get(&id).cloned() else {
            let reason = format!("inquiry {id} is not known");
            return ctx.reject(EVENTS, ErrorCode::UnknownSubject, &reason);
        };
        let therapist = text(&p["therapist_id"]);
        let of_practice = therapist == inquiry.therapist_id
            || world
                .members
                .get(&inquiry.email)
                .is_some_and(|m| m.contains(&therapist));
        if !of_practice {
            let reason = format!(
                "inquiry {id} went to therapist {}, not to {therapist}",
                inquiry.therapist_id
            );
            return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
        }
        if let Some(at) = inquiry.answered_at {
            let reason = format!(
                "inquiry {id} was answered already on {}",
                at.format("%Y-%m-%d")
            );
            return ctx.reject(EVENTS, ErrorCode::InvalidState, &reason);
        }
        let mut answers: Vec<(String, String)> = Vec::new();
        for answer in p["answers"].as_array().into_iter().flatten() {
            let patient = text(&answer["patient_id"]);
            if !inquiry.patients.contains(&patient) {
                let reason = format!("patient {patient} is not in inquiry {id}");
                return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
            }
            if answers.iter().any(|(p, _)| *p == patient) {
                let reason = format!("patient {patient} is answered twice");
                return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
            }
            answers.push((patient, text(&answer["outcome"])));
        }
        if answers.is_empty() {
            return ctx.reject(
                EVENTS,
                ErrorCode::InvalidCommand,
                "an answer names at least one patient",
            );
        }
        let answered_at = time(&p["answered_at"]).unwrap_or(ctx.now());
        if answered_at > ctx.now() + Duration::hours(1) {
            let reason = format!("answered_at {answered_at} is in the future");
            return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
        }
        let accepted = answers.iter().filter(|(_, o)| o == "ACCEPTED").count();
        let outcome = if accepted == inquiry.patients.len() {
            "FULLY_ACCEPTED"
        } else if accepted > 0 {
            "PARTLY_ACCEPTED"
        } else {
            "FULLY_REJECTED"
        };
        let cooling_until = answered_at + self.config.cooling;
        inquiry.answered_at = Some(answered_at);
        inquiry.answers = answers.iter().cloned().collect();
        let practice = inquiry.email.clone();
        let recipient_id = inquiry.therapist_id.clone();
        let patients = inquiry.patients.clone();
        world.put_inquiry(&id, inquiry);
        ctx.emit(
            EVENTS,
            "matching.inquiry_answered",
            json!({"inquiry_id": id, "therapist_id": recipient_id, "outcome": outcome,
                   "answers": answers.iter().map(|(p, o)| json!({"patient_id": p, "outcome": o})).collect::<Vec<_>>(),
                   "cooling_until": cooling_until.to_rfc3339()}),
        )?;
        // The practice as a whole cools down: it was written to as one.
        let mut members: Vec<String> = world.members_of(&practice);
        members.push(recipient_id.clone());
        for member in &members {
            world.update_therapist(member, |t| {
                t.cooling_until = t.cooling_until.max(Some(cooling_until))
            });
        }
        for (patient, outcome) in &answers {
            if outcome == "REJECTED_NOT_SUITABLE" {
                // Not suitable is not a matter of time: never this practice again.
                world.update_search(patient, |s| s.excluded.extend(members.iter().cloned()));
            }
            if outcome != "ACCEPTED" {
                continue;
            }
            let placeable = world
                .searches
                .get(patient)
                .is_some_and(|s| s.status == "ACTIVE" || s.status == "PAUSED");
            if placeable {
                world.update_search(patient, |s| {
                    s.status = "PLACED".into();
                    s.placed = Some((recipient_id.clone(), id.clone()));
                });
                ctx.emit(
                    EVENTS,
                    "matching.patient_placed",
                    json!({"patient_id": patient, "therapist_id": recipient_id, "inquiry_id": id}),
                )?;
                self.count("placed", 1);
            } else {
                // First acceptance wins; the others are thanked.
                let recipient = world
                    .therapists
                    .get(&recipient_id)
                    .map(TherapistRecord::recipient)
                    .unwrap_or(Value::Null);
                ctx.emit(
                    "email-commands",
                    "email.send_templated",
                    json!({"message_id": format!("decline-{id}-{patient}"), "therapist_id": recipient_id,
                           "template": "decline", "recipient": recipient,
                           "variables": {"inquiry_id": id, "patient_id": patient,
                                         "date": answered_at.format("%Y-%m-%d").to_string()}}),
                )?;
                self.count("declined", 1);
            }
        }
        // The others of the inquiry look further.
        for patient in patients {
            if world
                .searches
                .get(&patient)
                .is_some_and(|s| s.status == "ACTIVE")
            {
                world.to_match.insert(patient);
            }
        }
        Ok(())
    }

    fn exclude(
        &self,
        world: &mut World,
        ctx: &mut Context<'_>,
        record: &Incoming,
    ) -> Result<(), ProcessError> {
        let p = &record.payload;
        let patient = text(&p["patient_id"]);
        let therapist = text(&p["therapist_id"]);
        let Some(mut search) = world.searches.get(&patient).cloned() else {
            let reason = format!("patient {patient} has no search");
            return ctx.reject(EVENTS, ErrorCode::UnknownSubject, &reason);
        };
        if !world.therapists.contains_key(&therapist) {
            let reason = format!("therapist {therapist} is not known");
            return ctx.reject(EVENTS, ErrorCode::UnknownSubject, &reason);
        }
        search.excluded.insert(therapist);
        world.put_search(&patient, search);
        Ok(())
    }

    fn run(
        &self,
        world: &mut World,
        ctx: &mut Context<'_>,
        record: &Incoming,
    ) -> Result<(), ProcessError> {
        let p = &record.payload;
        match p["patient_id"].as_str() {
            Some(patient) => {
                let Some(search) = world.searches.get(patient) else {
                    let reason = format!("patient {patient} has no search");
                    return ctx.reject(EVENTS, ErrorCode::UnknownSubject, &reason);
                };
                if search.status != "ACTIVE" {
                    let reason = format!(
                        "the search of patient {patient} is {}, not active",
                        search.status.to_lowercase()
                    );
                    return ctx.reject(EVENTS, ErrorCode::InvalidState, &reason);
                }
                world.to_match.insert(patient.to_string());
                world.to_explain.insert(patient.to_string());
                world.explain_fully.insert(patient.to_string());
            }
            None => {
                let active: Vec<String> = world
                    .searches
                    .iter()
                    .filter(|(_, s)| s.status == "ACTIVE")
                    .map(|(id, _)| id.clone())
                    .collect();
                world.to_match.extend(active);
            }
        }
        world.run_id = Some(text(&p["run_id"]));
        Ok(())
    }

    /// Follow-ups for inquiries without an answer, and a run of the active
    /// searches no inquiry holds (the stale ones).
    fn sweep(&self, world: &mut World, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let now = ctx.now();
        let mut due: Vec<(String, InquiryRecord)> = world
            .inquiries
            .iter()
            .filter(|(_, i)| {
                i.open()
                    && !i.follow_up_due
                    && i.sent_at
                        .is_some_and(|at| at + self.config.follow_up <= now)
            })
            .map(|(id, i)| (id.clone(), i.clone()))
            .collect();
        due.sort_by(|a, b| a.0.cmp(&b.0));
        for (id, mut inquiry) in due {
            ctx.emit(
                EVENTS,
                "matching.follow_up_due",
                json!({"inquiry_id": id, "therapist_id": inquiry.therapist_id}),
            )?;
            inquiry.follow_up_due = true;
            world.put_inquiry(&id, inquiry);
            self.count("follow_up_due", 1);
        }
        let stale: Vec<String> = world
            .searches
            .iter()
            .filter(|(id, s)| {
                s.status == "ACTIVE" && world.open_by_patient.get(*id).is_none_or(|o| o.is_empty())
            })
            .map(|(id, _)| id.clone())
            .collect();
        world.to_match.extend(stale);
        Ok(())
    }

    /// The searches near the therapists that changed in this batch.
    fn near_changes(&self, world: &mut World) {
        let changed = std::mem::take(&mut world.changed_therapists);
        if changed.is_empty() {
            return;
        }
        let active = world
            .searches
            .iter()
            .filter(|(_, s)| s.status == "ACTIVE")
            .map(|(id, _)| id.clone());
        if changed.len() > MANY_CHANGES {
            let all: Vec<String> = active.collect();
            world.to_match.extend(all);
            return;
        }
        let positions: Vec<Position> = changed
            .iter()
            .filter_map(|id| world.index.get(id).and_then(|t| t.position))
            .collect();
        let near: Vec<String> = active
            .filter(|id| {
                world.patients.get(id).is_some_and(|p| {
                    p.position.is_some_and(|home| {
                        let reach = Index::reach(p);
                        positions.iter().any(|t| distance_km(home, *t) <= reach)
                    })
                })
            })
            .collect();
        world.to_match.extend(near);
    }

    /// Runs the searches of the batch: one pass of the rules per search,
    /// then inquiries composed over all of them together.
    fn match_searches(&self, world: &mut World, now: DateTime<Utc>, outputs: &mut Outputs) {
        self.near_changes(world);
        let mut order: Vec<(DateTime<Utc>, String)> = std::mem::take(&mut world.to_match)
            .into_iter()
            .filter_map(|id| {
                let s = world.searches.get(&id)?;
                (s.status == "ACTIVE").then_some((s.since, id))
            })
            .collect();
        order.sort();
        let explain = std::mem::take(&mut world.to_explain);
        let fully = std::mem::take(&mut world.explain_fully);
        let run_id = world
            .run_id
            .take()
            .unwrap_or_else(|| format!("batch-{}", world.base + 1));
        let mut evaluated: Vec<(String, Vec<String>, Vec<Found>)> = Vec::new();
        let mut travel_requests = Vec::new();
        let mut exhausted = Vec::new();
        let mut searches: Vec<Search<'_>> = Vec::new();
        // The searches only read the state: two threads share them (the
        // rest of a batch is sequential).
        let ids: Vec<&String> = order.iter().map(|(_, id)| id).collect();
        let standings = if ids.is_empty() {
            Vec::new()
        } else {
            world.index.standings(&world.history)
        };
        let run_chunk = |chunk: &[&String]| -> Vec<Evaluation> {
            let mut survey = Survey::default();
            chunk
                .iter()
                .filter_map(|id| {
                    evaluate(
                        world,
                        &standings,
                        id,
                        now,
                        shown(&fully, id),
                        &mut survey,
                        &self.metrics.search_seconds,
                    )
                })
                .collect()
        };
        let searching = std::time::Instant::now();
        let evaluations: Vec<Evaluation> = if ids.len() < 64 {
            run_chunk(&ids)
        } else {
            let (left, right) = ids.split_at(ids.len() / 2);
            std::thread::scope(|scope| {
                let other = scope.spawn(|| run_chunk(right));
                let mut all = run_chunk(left);
                all.extend(other.join().expect("a search thread does not panic"));
                all
            })
        };
        for e in evaluations {
            let search = &world.searches[&e.id];
            if !e.needs_time.is_empty() {
                // Ask the geocoder once; the answer runs the search again.
                if search.travel_request.is_none() {
                    travel_requests.push((e.id, e.needs_time));
                }
                continue;
            }
            let open = world.open_by_patient.get(&e.id).map_or(0, |o| o.len());
            if e.candidates.is_empty() && open == 0 && !e.waiting {
                if !search.exhausted {
                    exhausted.push((e.id, e.considered));
                }
                continue;
            }
            searches.push(Search {
                patient: e.id.clone(),
                quota: self.config.per_patient.saturating_sub(open),
                candidates: e
                    .candidates
                    .iter()
                    .map(|slot| world.index.at(*slot))
                    .collect(),
            });
            evaluated.push((e.id, e.ranked, e.others));
        }
        let searched = searching.elapsed();
        let composing = std::time::Instant::now();
        let (composed, by_phone) = inquiries::compose(&searches, &*world);
        drop(searches);
        let composed_in = composing.elapsed();
        if !by_phone.is_empty() {
            tracing::debug!(count = by_phone.len(), "candidates reachable by phone only");
        }

        // Inquiries and their emails.
        let mut chosen: HashMap<String, Vec<String>> = HashMap::new();
        for (n, inquiry) in composed.into_iter().enumerate() {
            let id = format!("i-{}-{}", world.base + 1, n + 1);
            let summaries: Vec<Value> = inquiry
                .patients
                .iter()
                .filter_map(|p| world.searches.get(p).map(|s| s.profile["summary"].clone()))
                .collect();
            let recipient = world
                .therapists
                .get(&inquiry.therapist_id)
                .map(TherapistRecord::recipient)
                .unwrap_or(Value::Null);
            outputs.emit(
                EVENTS,
                "matching.inquiry_created",
                json!({"inquiry_id": id, "therapist_id": inquiry.therapist_id, "patients": summaries}),
            );
            outputs.emit(
                "email-commands",
                "email.send_inquiry",
                json!({"inquiry_id": id, "therapist_id": inquiry.therapist_id, "recipient": recipient,
                       "patients": summaries}),
            );
            // The explanation marks the practice (all its members) chosen.
            let members: Vec<String> = world.members_of(&inquiry.email);
            for patient in &inquiry.patients {
                let picked = chosen.entry(patient.clone()).or_default();
                picked.push(inquiry.therapist_id.clone());
                picked.extend(members.iter().cloned());
                if world.searches.get(patient).is_some_and(|s| s.exhausted) {
                    world.update_search(patient, |s| s.exhausted = false);
                }
            }
            world.put_inquiry(
                &id,
                InquiryRecord {
                    therapist_id: inquiry.therapist_id,
                    email: inquiry.email,
                    patients: inquiry.patients,
                    answers: BTreeMap::new(),
                    created_at: now,
                    sent_at: None,
                    answered_at: None,
                    failed: false,
                    follow_up_due: false,
                },
            );
            self.count("inquiry_created", 1);
        }

        // Explanations: for the searches that got inquiries or asked for one.
        for (patient, ranked, others) in evaluated {
            let picked = chosen.get(&patient);
            if picked.is_none() && !explain.contains(&patient) {
                continue;
            }
            let limit = shown(&fully, &patient);
            let decisions = explanation(
                world,
                &ranked,
                &others,
                picked.map(Vec::as_slice).unwrap_or(&[]),
                limit,
            );
            outputs.emit(
                EVENTS,
                "matching.candidates_evaluated",
                json!({"patient_id": patient, "run_id": run_id, "decisions": decisions}),
            );
        }

        for (patient, therapists) in travel_requests {
            let Some(mut search) = world.searches.get(&patient).cloned() else {
                continue;
            };
            let Some(home) = world.patients.get(&patient).and_then(|p| p.position) else {
                continue;
            };
            let request_id = format!("travel-{patient}-{}", world.base + 1);
            let destinations: Vec<Value> = therapists
                .iter()
                .filter_map(|slot| {
                    let t = world.index.at(*slot);
                    Some(json!({"id": t.id, "position": t.position?.to_json()}))
                })
                .collect();
            let asked: Vec<String> = therapists
                .iter()
                .map(|slot| world.index.at(*slot).id.clone())
                .collect();
            outputs.emit(
                "geocoding-requests",
                "geocoding.compute_travel_times",
                json!({"request_id": request_id, "mode": search.profile["transport"],
                       "origin": home.to_json(), "destinations": destinations}),
            );
            search.travel_request = Some((request_id, asked));
            world.put_search(&patient, search);
        }

        for (patient, considered) in exhausted {
            world.update_search(&patient, |s| s.exhausted = true);
            outputs.emit(
                EVENTS,
                "matching.search_exhausted",
                json!({"patient_id": patient, "candidates_considered": considered}),
            );
            self.count("search_exhausted", 1);
        }
        tracing::debug!(
            search_seconds = searched.as_secs_f64(),
            compose_seconds = composed_in.as_secs_f64(),
            emit_seconds = (composing.elapsed() - composed_in).as_secs_f64(),
            "batch searched"
        );
        for (patient, reason) in std::mem::take(&mut world.pending_pause) {
            let open = world.open_by_patient.get(&patient).map_or(0, |o| o.len());
            outputs.emit(
                EVENTS,
                "matching.search_paused",
                json!({"patient_id": patient, "reason": reason, "open_inquiries": open}),
            );
        }
    }
}

/// What matching emits, kept until the batch's state is written (the
/// matching runs while the records' changes are written).
#[derive(Default)]
struct Outputs(Vec<(&'static str, &'static str, Value)>);

impl Outputs {
    fn emit(&mut self, topic: &'static str, event_type: &'static str, payload: Value) {
        self.0.push((topic, event_type, payload));
    }
}

/// What a batch knows of its turn on the state.
#[derive(Default)]
struct Turn {
    /// Every record of the batch is [`inert`]: no lock, no matching.
    idle: bool,
    /// Held from the start of the batch to the end of its matching.
    turn: Option<OwnedMutexGuard<()>>,
    /// The batch this one went on from, still committing at the start:
    /// this one takes the row lock after that batch's end, and checks then
    /// that the state is still the one it started from. `None`: the batch
    /// holds the row lock since its start.
    after: Option<Arc<Outcome>>,
    /// The version this batch wrote, settled when its transaction ends.
    wrote: Option<Arc<Outcome>>,
}

impl Drop for Turn {
    /// A batch dropped before the runtime reported its commit failed (or
    /// was given up): the memory it leaves is not the stored state.
    fn drop(&mut self) {
        if let Some(outcome) = self.wrote.take() {
            outcome.settle(false);
        }
    }
}

/// Takes one off `gauge` when dropped.
fn uncounted_on_drop(gauge: &IntGauge) -> impl Drop + '_ {
    struct Counted<'g>(&'g IntGauge);
    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Counted(gauge)
}

/// The stored version, locked until the batch's transaction ends.
async fn lock_version(db: &mut sqlx::PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM matcher.world FOR UPDATE")
        .fetch_one(db)
        .await
}

/// A record that changes nothing the matcher keeps: a geocoding result
/// for anything but a therapist's practice or a search's travel times
/// (the homes of patients are intake's).
fn inert(record: &Incoming) -> bool {
    let request = record.payload["request_id"].as_str().unwrap_or_default();
    record.topic == "geocoding-results"
        && !request.starts_with("therapist-")
        && !request.starts_with("travel-")
}

/// The values the matcher folds into its state from other processors'
/// events, checked: ids present, positions on the globe, travel times
/// that are times. Commands are checked where they are handled.
fn check_event(record: &Incoming) -> Result<(), String> {
    let p = &record.payload;
    let id = |field: &str| -> Result<(), String> {
        match p[field].as_str() {
            Some(value) if !value.is_empty() => Ok(()),
            _ => Err(format!("{} without {field}", record.event_type())),
        }
    };
    if record.event_type() == "command.rejected" {
        return Ok(());
    }
    match record.topic.as_str() {
        "patient-events" => {
            id("patient_id")?;
            Position::of_json(&p["profile"]["coordinates"])?;
        }
        "therapist-events" => {
            id("therapist_id")?;
            Position::of_json(&p["details"]["coordinates"])?;
        }
        "geocoding-results" => {
            id("request_id")?;
            Position::of_json(&p["position"])?;
            for result in p["results"].as_array().into_iter().flatten() {
                if result["duration_seconds"]
                    .as_f64()
                    .is_some_and(|s| !s.is_finite() || s < 0.0)
                {
                    return Err(format!("a travel time of {} s", result["duration_seconds"]));
                }
            }
        }
        "communication-events" => {
            let ids = p["inquiry_ids"].as_array().into_iter().flatten();
            if ids
                .chain(std::iter::once(&p["inquiry_id"]))
                .any(|i| i.as_str() == Some(""))
            {
                return Err(format!("{} names an empty inquiry id", record.event_type()));
            }
            if p.get("email_id").is_some() {
                id("email_id")?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// How many entries the explanation of a search lists: every one when a
/// person asked about that patient.
fn shown(fully: &std::collections::BTreeSet<String>, patient: &str) -> usize {
    if fully.contains(patient) {
        FULL_DECISIONS
    } else {
        BRIEF_DECISIONS
    }
}

/// What one search found, for composing and explaining.
struct Evaluation {
    id: String,
    /// Best candidates (index slots), ranked, enough for composing.
    candidates: Vec<usize>,
    /// Ids of the ranked candidates an explanation shows.
    ranked: Vec<String>,
    /// The nearest others an explanation shows.
    others: Vec<Found>,
    /// Therapists whose travel time decides (slots).
    needs_time: Vec<usize>,
    /// Some therapist is only pending or cooling (the search is not exhausted).
    waiting: bool,
    /// Therapists considered.
    considered: usize,
}

/// Runs one search against the state: the rules on every therapist within
/// reach, ranking, and what an explanation of `shown` entries needs.
fn evaluate(
    world: &World,
    standings: &[rules::Standing<'_>],
    id: &str,
    now: DateTime<Utc>,
    shown: usize,
    survey: &mut Survey,
    timer: &Histogram,
) -> Option<Evaluation> {
    let (patient, search) = (world.patients.get(id)?, world.searches.get(id)?);
    // Without a position it waits for the geocoder.
    patient.position?;
    let started = std::time::Instant::now();
    let travel: HashMap<String, f64> = search.travel.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let held = world.open_by_patient.get(id).is_some_and(|o| !o.is_empty());
    world.index.survey(
        patient,
        &world.history,
        Some(standings),
        held,
        now,
        &travel,
        shown,
        survey,
    );
    let mut ranked = world.index.to_rank(survey);
    rules::rank_best(&mut ranked, now.date_naive(), shown.max(COMPOSE_DEPTH));
    timer.observe(started.elapsed().as_secs_f64());
    let slots = ranked
        .iter()
        .take(COMPOSE_DEPTH)
        .filter_map(|(t, _, _)| world.index.slot(&t.id))
        .collect();
    Some(Evaluation {
        id: id.to_string(),
        candidates: slots,
        ranked: ranked
            .iter()
            .take(shown)
            .map(|(t, _, _)| t.id.clone())
            .collect(),
        others: std::mem::take(&mut survey.others),
        needs_time: std::mem::take(&mut survey.needs_time),
        waiting: survey.waiting,
        considered: survey.considered,
    })
}

/// The decisions of one search for a person to read: the therapists
/// chosen, then the other candidates by rank, then those waiting for a
/// travel time and the rejected by distance, each with its rule.
fn explanation(
    world: &World,
    ranked: &[String],
    others: &[Found],
    chosen: &[String],
    limit: usize,
) -> Vec<Value> {
    let row = |id: &str, picked: bool, rule: Value, detail: &str, rank: Option<usize>| {
        json!({"therapist_id": id, "chosen": picked, "rule": rule, "detail": detail,
               "rank": rank.map(|r| r as i64 + 1)})
    };
    let mut rows: Vec<Value> = Vec::new();
    for (rank, id) in ranked.iter().enumerate() {
        if chosen.contains(id) {
            rows.push(row(id, true, Value::Null, "chosen", Some(rank)));
        }
    }
    let room = if limit < FULL_DECISIONS {
        BRIEF_CANDIDATES
    } else {
        limit
    };
    let unchosen = ranked
        .iter()
        .enumerate()
        .filter(|(_, id)| !chosen.contains(id))
        .take(room);
    for (rank, id) in unchosen {
        rows.push(row(
            id,
            false,
            Value::Null,
            "a candidate; better-ranked practices were asked, or it is full",
            Some(rank),
        ));
    }
    for f in others {
        if rows.len() >= limit {
            break;
        }
        let id = &world.index.at(f.therapist).id;
        match &f.verdict {
            Verdict::Rejected(rule) => {
                let sentence = rule.explain();
                let number = sentence.split(':').next().unwrap_or("").to_string();
                rows.push(row(id, false, json!(number), &sentence, None));
            }
            _ => rows.push(row(
                id,
                false,
                Value::Null,
                "waiting for the travel time",
                None,
            )),
        }
    }
    rows.truncate(limit);
    rows
}

/// Erasure: the search goes; unless the patient keeps the contact log, so
/// does every trace of the id in inquiries (an inquiry left empty goes).
fn erase(world: &mut World, patient: &str, keep_log: bool) {
    world.drop_search(patient);
    let held: Vec<String> = world
        .inquiries
        .iter()
        .filter(|(_, i)| i.patients.iter().any(|p| p == patient))
        .map(|(id, _)| id.clone())
        .collect();
    for id in held {
        let mut inquiry = world.inquiries[&id].clone();
        if keep_log && !inquiry.open() {
            continue;
        }
        inquiry.patients.retain(|p| p != patient);
        inquiry.answers.remove(patient);
        if inquiry.patients.is_empty() {
            world.drop_inquiry(&id);
        } else {
            world.put_inquiry(&id, inquiry);
        }
    }
}

impl Processor for Matcher {
    fn name(&self) -> &'static str {
        "matcher"
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec![
            "patient-events",
            "therapist-events",
            "geocoding-results",
            "communication-events",
            "matching-commands",
        ]
    }

    /// Loads the stored state from one snapshot before the first batch:
    /// with 50,000 therapists that takes a second, which the first batch
    /// would otherwise spend while records wait. The batch then finds the
    /// version it loaded still stored, or reloads.
    async fn warm_up(&self, pool: &sqlx::PgPool) -> Result<(), ProcessError> {
        let _turn = self.turns.lock().await;
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let version: i64 = sqlx::query_scalar("SELECT version FROM matcher.world")
            .fetch_one(&mut *tx)
            .await?;
        let world = self.load(&mut tx, version).await?;
        tx.rollback().await?;
        *self.world.lock().await = world;
        Ok(())
    }

    async fn begin_batch(
        &self,
        batch: &mut BatchContext<'_>,
        records: &[&Incoming],
    ) -> Result<(), ProcessError> {
        // Positions of patients' homes are intake's: a batch of nothing
        // else leaves the state alone and need not wait for its turn.
        if records.iter().all(|r| inert(r)) {
            batch.scratch::<Turn>().idle = true;
            return Ok(());
        }
        let turn = self.turns.clone().lock_owned().await;
        let mut world = self.world.lock().await;
        // The batch before is still committing: go on from what it wrote
        // in memory; the row lock, taken to write, tells whether it did.
        let (base, after) = match world.version.in_flight() {
            Some((written, outcome)) => (written, Some(outcome)),
            None => {
                // Batches take turns: the lock is held until this batch commits.
                let version = lock_version(batch.db()).await?;
                if world.version.committed() != Some(version) {
                    *world = self.load(batch.db(), version).await?;
                }
                (version, None)
            }
        };
        // Until this batch has written, the memory is ahead of the database.
        world.version = Version::Unknown;
        world.base = base;
        let scratch = batch.scratch::<Turn>();
        scratch.turn = Some(turn);
        scratch.after = after;
        Ok(())
    }

    async fn process(&self, ctx: &mut Context<'_>, record: &Incoming) -> Result<(), ProcessError> {
        // Before anything changes: a refused record leaves the state as it was.
        check_event(record).map_err(invalid_event)?;
        if inert(record) {
            return Ok(());
        }
        let mut world = self.world.lock().await;
        let now = ctx.now();
        match record.topic.as_str() {
            "patient-events" => self.patient_event(&mut world, record, now),
            "therapist-events" => self.therapist_event(&mut world, record, now),
            "geocoding-results" => self.geocoded(&mut world, record, now),
            "communication-events" => self.communication(&mut world, record),
            _ => match record.event_type() {
                "matching.record_answer" => return self.answer(&mut world, ctx, record),
                "matching.exclude_therapist" => return self.exclude(&mut world, ctx, record),
                "matching.run" => return self.run(&mut world, ctx, record),
                "matching.sweep" => return self.sweep(&mut world, ctx),
                other => {
                    let reason = format!("the matcher does not handle {other}");
                    return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
                }
            },
        }
        Ok(())
    }

    async fn finish_batch(&self, batch: &mut BatchContext<'_>) -> Result<(), ProcessError> {
        let (idle, after) = {
            let turn = batch.scratch::<Turn>();
            (turn.idle, turn.after.take())
        };
        if idle {
            return Ok(());
        }
        let mut world = self.world.lock().await;
        let started = std::time::Instant::now();
        let searches = world.to_match.len();
        let base = world.base;
        let now = batch.now();
        let mut outputs = Outputs::default();
        let handle = tokio::runtime::Handle::current();
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            // The searches take two threads for a while: this one is lent.
            tokio::task::block_in_place(|| self.match_searches(&mut world, now, &mut outputs));
        } else {
            self.match_searches(&mut world, now, &mut outputs);
        }
        let matched = started.elapsed();
        // What the records and the matching changed, serialized: written
        // below, after the turn.
        let rows = world.take_rows();
        let next = world.base + 1;
        let mut by_status: BTreeMap<&str, i64> = ["ACTIVE", "PAUSED", "PLACED", "CANCELLED"]
            .into_iter()
            .map(|status| (status, 0))
            .collect();
        for search in world.searches.values() {
            if let Some(n) = by_status.get_mut(search.status.as_str()) {
                *n += 1;
            }
        }
        for (status, n) in by_status {
            self.metrics.searches.with_label_values(&[status]).set(n);
        }
        let outcome = Arc::new(Outcome::default());
        world.version = Version::Written(next, outcome.clone());
        drop(world);
        // The next batch may start now, while this one writes, encodes its
        // outputs and commits: it waits for this batch's end only to write,
        // and runs again if this batch fails.
        let turn = batch.scratch::<Turn>();
        turn.wrote = Some(outcome);
        turn.turn = None;
        if let Some(before) = after {
            // Started from a version not yet committed. Waiting for that
            // batch's end first keeps the writes in order: waiters on a row
            // lock are not woken in the order they came.
            let committed = {
                // Counted while waiting, also if the wait is given up.
                self.metrics.waiting.inc();
                let _counted = uncounted_on_drop(&self.metrics.waiting);
                before.ended().await
            };
            if !committed {
                return Err(ProcessError::Transient(format!(
                    "the batch before this one did not commit (this one started from version \
                     {base}); it runs again from the stored state"
                )));
            }
            // Still the stored version (another replica may have written)?
            let stored = lock_version(batch.db()).await?;
            if stored != base {
                // The batch before did not commit, or another replica's did:
                // the memory is not what is stored. The retry reloads.
                return Err(ProcessError::Transient(format!(
                    "the matcher's state is at version {stored}, this batch started from {base}; \
                     it runs again from the stored state"
                )));
            }
        }
        rows.write(batch.db()).await?;
        sqlx::query("UPDATE matcher.world SET version = $1")
            .bind(next)
            .execute(batch.db())
            .await?;
        for (topic, event_type, payload) in outputs.0 {
            batch.emit(topic, event_type, payload)?;
        }
        tracing::debug!(
            searches,
            match_seconds = matched.as_secs_f64(),
            seconds = started.elapsed().as_secs_f64(),
            "batch matched and written"
        );
        Ok(())
    }

    fn batch_committed(&self, scratch: &mut Scratch) {
        if let Some(outcome) = scratch.get::<Turn>().wrote.take() {
            outcome.settle(true);
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.metrics.decisions.clone()),
            Box::new(self.metrics.search_seconds.clone()),
            Box::new(self.metrics.searches.clone()),
            Box::new(self.metrics.waiting.clone()),
            Box::new(self.metrics.loads.clone()),
        ]
    }
}
