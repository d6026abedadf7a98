//! The searches of a batch, step by step: which searches run, each
//! evaluated against the practices within reach, inquiries composed over
//! all of them together, then what the batch publishes: inquiries and
//! their emails, explanations, travel-time requests, exhausted searches,
//! paused ones.

use crate::index::{Found, Index, Survey};
use crate::input::travel_request_id;
use crate::inquiries::{self, Inquiry, Search};
use crate::processor::{EVENTS, Matcher};
use crate::records::{InquiryRecord, SearchStatus, TherapistRecord};
use crate::rules::{self, Verdict};
use crate::state::World;
use chrono::{DateTime, Utc};
use prometheus::Histogram;
use psymatch_geo::subject::Subject;
use psymatch_geo::{Position, distance_km};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Instant;

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
/// A person's run that found nobody to ask lists this many of the nearest
/// practices beyond the patient's reach.
const NEAREST_BEYOND: usize = 10;
/// Candidates of a search handed to composing, best first: its quota of
/// practices, with room to skip full practices and colleagues.
const COMPOSE_DEPTH: usize = 50;
/// Fewer searches than this run on one thread.
const PARALLEL_SEARCHES: usize = 64;

/// What matching emits, kept until the batch's state is written (the
/// matching runs while the records' changes are written).
#[derive(Default)]
pub(crate) struct Outputs(pub(crate) Vec<(&'static str, &'static str, Value)>);

impl Outputs {
    fn emit(&mut self, topic: &'static str, event_type: &'static str, payload: Value) {
        self.0.push((topic, event_type, payload));
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

/// The evaluations of a batch, sorted by what each needs next.
#[derive(Default)]
struct Triage {
    /// Searches with nothing to compose that a person asked about: they
    /// are explained all the same ("why was nobody asked?").
    explain_only: Vec<Evaluation>,
    /// Searches with candidates to compose: the evaluation and its quota.
    ready: Vec<(Evaluation, usize)>,
    /// Searches waiting for travel times: patient and the practices.
    travel: Vec<(String, Vec<usize>)>,
    /// Searches with nobody left to ask: patient and how many were considered.
    exhausted: Vec<(String, usize)>,
}

/// Who asked for an explanation of which searches, and under which run.
struct Asked {
    explain: BTreeSet<String>,
    fully: BTreeSet<String>,
    /// The run of each patient a person ran.
    runs: BTreeMap<String, String>,
    /// The run of every search, else the batch.
    all: String,
}

impl Asked {
    /// The run an explanation of `patient` goes out under.
    fn run_of(&self, patient: &str) -> &str {
        self.runs.get(patient).unwrap_or(&self.all)
    }
}

impl Matcher {
    /// Runs the searches of the batch: one pass of the rules per search,
    /// then inquiries composed over all of them together.
    pub(crate) fn match_searches(
        &self,
        world: &mut World,
        now: DateTime<Utc>,
        outputs: &mut Outputs,
    ) {
        let order = self.due(world);
        let asked = Asked {
            explain: std::mem::take(&mut world.to_explain),
            fully: std::mem::take(&mut world.explain_fully),
            runs: std::mem::take(&mut world.run_ids),
            all: world
                .run_all
                .take()
                .unwrap_or_else(|| format!("batch-{}", world.base + 1)),
        };
        let searching = Instant::now();
        let evaluations = self.evaluate_all(world, &order, now, &asked.fully);
        let triage = self.triage(world, evaluations, &asked);
        let searched = searching.elapsed();
        let composing = Instant::now();
        let composed = self.compose(world, &triage.ready);
        let composed_in = composing.elapsed();
        let chosen = self.write_inquiries(world, composed, now, outputs);
        explain(world, &triage, &chosen, &asked, outputs);
        self.request_travel_times(world, triage.travel, outputs);
        self.mark_exhausted(world, triage.exhausted, outputs);
        tracing::debug!(
            search_seconds = searched.as_secs_f64(),
            compose_seconds = composed_in.as_secs_f64(),
            emit_seconds = (composing.elapsed() - composed_in).as_secs_f64(),
            "batch searched"
        );
        announce_pauses(world, outputs);
    }

    /// The active searches to run, longest waiting first: those the
    /// batch's records touched and those near the therapists that changed.
    fn due(&self, world: &mut World) -> Vec<String> {
        near_changes(world);
        let mut order: Vec<(DateTime<Utc>, String)> = std::mem::take(&mut world.to_match)
            .into_iter()
            .filter_map(|id| {
                let s = world.searches.get(&id)?;
                (s.status == SearchStatus::Active).then_some((s.since, id))
            })
            .collect();
        order.sort();
        order.into_iter().map(|(_, id)| id).collect()
    }

    /// Every search against the state; they only read it, so two threads
    /// share a large batch (the rest of a batch is sequential).
    fn evaluate_all(
        &self,
        world: &World,
        ids: &[String],
        now: DateTime<Utc>,
        fully: &BTreeSet<String>,
    ) -> Vec<Evaluation> {
        if ids.is_empty() {
            return Vec::new();
        }
        let standings = world.index.standings(&world.history);
        let run_chunk = |chunk: &[String]| -> Vec<Evaluation> {
            let mut survey = Survey::default();
            chunk
                .iter()
                .filter_map(|id| {
                    evaluate(
                        world,
                        &standings,
                        id,
                        now,
                        shown(fully, id),
                        &mut survey,
                        &self.metrics.search_seconds,
                    )
                })
                .collect()
        };
        if ids.len() < PARALLEL_SEARCHES {
            return run_chunk(ids);
        }
        let (left, right) = ids.split_at(ids.len() / 2);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| run_chunk(right));
            let mut all = run_chunk(left);
            all.extend(other.join().expect("a search thread does not panic"));
            all
        })
    }

    /// Sorts the evaluations: waiting for travel times (asked once), with
    /// nobody to ask (exhausted, announced once), or ready to compose with
    /// the practices still to ask.
    fn triage(&self, world: &World, evaluations: Vec<Evaluation>, asked: &Asked) -> Triage {
        let mut triage = Triage::default();
        for mut e in evaluations {
            let search = &world.searches[&e.id];
            if !e.needs_time.is_empty() {
                // Ask the geocoder once; the answer runs the search again.
                if search.travel_request.is_none() {
                    let needs = std::mem::take(&mut e.needs_time);
                    triage.travel.push((e.id, needs));
                }
                continue;
            }
            let open = world.open_by_patient.get(&e.id).map_or(0, |o| o.len());
            if e.candidates.is_empty() && open == 0 && !e.waiting {
                if !search.exhausted {
                    triage.exhausted.push((e.id.clone(), e.considered));
                }
                if asked.explain.contains(&e.id) {
                    triage.explain_only.push(e);
                }
                continue;
            }
            let quota = self.config.rules.inquiries_per_patient.saturating_sub(open);
            triage.ready.push((e, quota));
        }
        triage
    }

    /// Inquiries composed over the ready searches together.
    fn compose(&self, world: &World, ready: &[(Evaluation, usize)]) -> Vec<Inquiry> {
        let searches: Vec<Search<'_>> = ready
            .iter()
            .map(|(e, quota)| Search {
                patient: e.id.clone(),
                quota: *quota,
                candidates: e
                    .candidates
                    .iter()
                    .map(|slot| world.index.at(*slot))
                    .collect(),
            })
            .collect();
        let (composed, by_phone) = inquiries::compose(&searches, world);
        if !by_phone.is_empty() {
            tracing::debug!(count = by_phone.len(), "candidates reachable by phone only");
        }
        composed
    }

    /// Stores the composed inquiries and publishes each with its email;
    /// returns the practices (all their members) chosen for each patient,
    /// for the explanations.
    fn write_inquiries(
        &self,
        world: &mut World,
        composed: Vec<Inquiry>,
        now: DateTime<Utc>,
        outputs: &mut Outputs,
    ) -> HashMap<String, Vec<String>> {
        let mut chosen: HashMap<String, Vec<String>> = HashMap::new();
        for (n, inquiry) in composed.into_iter().enumerate() {
            let id = format!("i-{}-{}", world.base + 1, n + 1);
            let summaries: Vec<Value> = inquiry
                .patients
                .iter()
                .filter_map(|p| {
                    let search = world.searches.get(p)?;
                    serde_json::to_value(&search.profile.summary).ok()
                })
                .collect();
            let recipient = world
                .therapists
                .get(&inquiry.therapist_id)
                .map(TherapistRecord::recipient)
                .unwrap_or(Value::Null);
            outputs.emit(
                EVENTS,
                "matching.inquiry_created",
                json!({"inquiry_id": id, "therapist_id": inquiry.therapist_id, "patients": summaries,
                       "rules_version": world.rules.version}),
            );
            outputs.emit(
                "email-commands",
                "email.send_inquiry",
                json!({"inquiry_id": id, "therapist_id": inquiry.therapist_id, "recipient": recipient,
                       "patients": summaries}),
            );
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
                    withdrawn: false,
                },
            );
            self.count("inquiry_created", 1);
        }
        chosen
    }

    /// Asks the geocoder for the travel times a search's limit depends on.
    fn request_travel_times(
        &self,
        world: &mut World,
        requests: Vec<(String, Vec<usize>)>,
        outputs: &mut Outputs,
    ) {
        for (patient, therapists) in requests {
            let Some(mut search) = world.searches.get(&patient).cloned() else {
                continue;
            };
            let Some(home) = world.patients.get(&patient).and_then(|p| p.position) else {
                continue;
            };
            let request_id = travel_request_id(&patient, world.base + 1);
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
                json!({"request_id": request_id, "subject": Subject::travel_times(&patient).to_json(),
                       "mode": search.profile.transport,
                       "origin": home.to_json(), "destinations": destinations}),
            );
            search.travel_request = Some((request_id, asked));
            world.put_search(&patient, search);
        }
    }

    /// Announces the searches with nobody left to ask, once each.
    fn mark_exhausted(
        &self,
        world: &mut World,
        exhausted: Vec<(String, usize)>,
        outputs: &mut Outputs,
    ) {
        for (patient, considered) in exhausted {
            world.update_search(&patient, |s| s.exhausted = true);
            outputs.emit(
                EVENTS,
                "matching.search_exhausted",
                json!({"patient_id": patient, "candidates_considered": considered}),
            );
            self.count("search_exhausted", 1);
        }
    }
}

/// The searches near the therapists that changed in this batch.
fn near_changes(world: &mut World) {
    let changed = std::mem::take(&mut world.changed_therapists);
    if changed.is_empty() {
        return;
    }
    if changed.len() > MANY_CHANGES {
        let all = world.active_searches();
        world.to_match.extend(all);
        return;
    }
    let positions: Vec<Position> = changed
        .iter()
        .filter_map(|id| world.index.get(id).and_then(|t| t.position))
        .collect();
    let near: Vec<String> = world
        .active_searches()
        .into_iter()
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

/// Explanations: for the searches that got inquiries or asked for one.
fn explain(
    world: &World,
    triage: &Triage,
    chosen: &HashMap<String, Vec<String>>,
    asked: &Asked,
    outputs: &mut Outputs,
) {
    let evaluations = triage.ready.iter().map(|(e, _)| e);
    for e in evaluations.chain(&triage.explain_only) {
        let picked = chosen.get(&e.id);
        if picked.is_none() && !asked.explain.contains(&e.id) {
            continue;
        }
        let decisions = explanation(
            world,
            &e.ranked,
            &e.others,
            picked.map(Vec::as_slice).unwrap_or(&[]),
            shown(&asked.fully, &e.id),
        );
        outputs.emit(
            EVENTS,
            "matching.candidates_evaluated",
            json!({"patient_id": e.id, "run_id": asked.run_of(&e.id), "decisions": decisions,
                   "rules_version": world.rules.version}),
        );
    }
}

/// Tells that the searches paused in this batch are paused, with the
/// inquiries still open for them.
fn announce_pauses(world: &mut World, outputs: &mut Outputs) {
    for (patient, reason) in std::mem::take(&mut world.pending_pause) {
        let open = world.open_by_patient.get(&patient).map_or(0, |o| o.len());
        outputs.emit(
            EVENTS,
            "matching.search_paused",
            json!({"patient_id": patient, "reason": reason, "open_inquiries": open}),
        );
    }
}

/// How many entries the explanation of a search lists: every one when a
/// person asked about that patient.
fn shown(fully: &BTreeSet<String>, patient: &str) -> usize {
    if fully.contains(patient) {
        FULL_DECISIONS
    } else {
        BRIEF_DECISIONS
    }
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
    let started = Instant::now();
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
    rules::rank_best(
        &mut ranked,
        now.date_naive(),
        shown.max(COMPOSE_DEPTH),
        &world.rules.ranking,
    );
    let mut others = std::mem::take(&mut survey.others);
    if shown >= FULL_DECISIONS && ranked.is_empty() {
        // Nobody to ask: a person asking why reads the nearest practices
        // beyond the patient's reach, with the rule that rejects each.
        let beyond =
            world
                .index
                .nearest_beyond(patient, &world.history, now, &travel, NEAREST_BEYOND);
        others.extend(beyond);
    }
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
        others,
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
