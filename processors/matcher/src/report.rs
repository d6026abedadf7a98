//! The what-if report of a replay: the live matcher's decisions against
//! the replay's, from their outputs alone (`matching.inquiry_created`,
//! `matching.patient_placed`, `matching.candidates_evaluated`,
//! `email.send_inquiry`), as a table, CSV or JSON.

use crate::rulebook::Rulebook;
use chrono::Datelike;
use psymatch_runtime::app::replay::{Decoded, Emitted};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Changed searches the report explains one by one.
const SAMPLE: usize = 5;
/// Practices listed as asked more, and as asked less.
const PRACTICES: usize = 10;

/// How the outputs of both sides compare, record by record.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Comparison {
    /// Records the live matcher published (in the replayed range).
    pub live: usize,
    /// Records the replay emitted.
    pub replay: usize,
    /// The same event id with the same bytes on both sides.
    pub identical: usize,
    /// The same event id with other bytes.
    pub differing: usize,
    /// Event ids only the live matcher published.
    pub only_live: usize,
    /// Event ids only the replay emitted.
    pub only_replay: usize,
}

impl Comparison {
    /// Compares by event id and bytes.
    pub fn of(live: &[Emitted], replay: &[Emitted]) -> Comparison {
        let live_ids: HashMap<_, _> = live.iter().map(|e| (e.event_id, e)).collect();
        let replay_ids: HashMap<_, _> = replay.iter().map(|e| (e.event_id, e)).collect();
        let mut comparison = Comparison {
            live: live.len(),
            replay: replay.len(),
            ..Comparison::default()
        };
        for (id, ours) in &replay_ids {
            match live_ids.get(id) {
                Some(theirs) if theirs.value == ours.value && theirs.key == ours.key => {
                    comparison.identical += 1
                }
                Some(_) => comparison.differing += 1,
                None => comparison.only_replay += 1,
            }
        }
        comparison.only_live = live_ids
            .keys()
            .filter(|id| !replay_ids.contains_key(id))
            .count();
        comparison
    }

    /// Both sides hold exactly the same records.
    pub fn reproduced(&self) -> bool {
        self.identical == self.live && self.identical == self.replay
    }
}

/// One week's counts.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Week {
    /// ISO week, `2026-W49`.
    pub week: String,
    /// Inquiries created, live.
    pub inquiries_live: usize,
    /// Inquiries created in the replay.
    pub inquiries_replay: usize,
    /// Emails (one per practice and week: the batcher's limit), live.
    pub emails_live: usize,
    /// Emails in the replay.
    pub emails_replay: usize,
}

/// A practice asked a different number of times.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Practice {
    /// Therapist (practice owner) id.
    pub therapist_id: String,
    /// Patients it was asked about, live.
    pub live: usize,
    /// In the replay.
    pub replay: usize,
}

/// A search whose inquiries differ, and why.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Changed {
    /// Pseudonymous patient id.
    pub patient_id: String,
    /// Practices asked live only.
    pub live_only: Vec<String>,
    /// Practices asked in the replay only.
    pub replay_only: Vec<String>,
    /// For each of those, the rule or rank that made the difference, as
    /// the side that did not ask it explained its decision.
    pub reasons: Vec<String>,
}

/// A patient placed differently.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Placement {
    /// Pseudonymous patient id.
    pub patient_id: String,
    /// Placed with, live.
    pub live: Option<String>,
    /// Placed with, in the replay.
    pub replay: Option<String>,
}

/// The report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Rules version of the replay.
    pub rules_version: String,
    /// The fields in which the replay's rules differ from the live ones,
    /// as `field: live → replay`.
    pub rule_changes: Vec<String>,
    /// Journaled batches replayed.
    pub batches: usize,
    /// Records they held.
    pub records: usize,
    /// Seconds the replay took (reading the topics included).
    pub seconds: f64,
    /// Output records compared.
    pub outputs: Comparison,
    /// Searches with an inquiry on either side.
    pub searches: usize,
    /// Of those, the ones whose practices differ.
    pub searches_changed: usize,
    /// A sample of them, explained.
    pub changed: Vec<Changed>,
    /// Practices asked about more patients in the replay.
    pub practices_more: Vec<Practice>,
    /// Practices asked about fewer.
    pub practices_fewer: Vec<Practice>,
    /// Inquiries and emails per week.
    pub weeks: Vec<Week>,
    /// Patients placed, live.
    pub placed_live: usize,
    /// Patients placed in the replay.
    pub placed_replay: usize,
    /// Patients placed differently (or only on one side).
    pub placements_changed: Vec<Placement>,
}

/// What one side decided.
#[derive(Default)]
struct Side {
    /// Practices asked, by patient.
    asked: BTreeMap<String, BTreeSet<String>>,
    /// Patients asked about, by practice.
    by_practice: BTreeMap<String, usize>,
    /// (week, inquiries, practices emailed)
    weeks: BTreeMap<String, (usize, BTreeSet<String>)>,
    placed: BTreeMap<String, String>,
    /// The last explanation of each search: therapist -> (rule, detail, rank).
    explained: HashMap<String, HashMap<String, Value>>,
}

impl Side {
    fn of(outputs: &[Decoded]) -> Side {
        let mut side = Side::default();
        let text = |v: &Value, field: &str| v[field].as_str().unwrap_or_default().to_string();
        for output in outputs {
            let p = &output.payload;
            match output.event_type.as_str() {
                "matching.inquiry_created" => {
                    let therapist = text(p, "therapist_id");
                    let week = iso_week(output.at);
                    let entry = side.weeks.entry(week).or_default();
                    entry.0 += 1;
                    entry.1.insert(therapist.clone());
                    for patient in p["patients"].as_array().into_iter().flatten() {
                        side.asked
                            .entry(text(patient, "patient_id"))
                            .or_default()
                            .insert(therapist.clone());
                        *side.by_practice.entry(therapist.clone()).or_default() += 1;
                    }
                }
                "matching.patient_placed" => {
                    side.placed
                        .insert(text(p, "patient_id"), text(p, "therapist_id"));
                }
                "matching.candidates_evaluated" => {
                    let decisions = p["decisions"].as_array().into_iter().flatten();
                    side.explained.insert(
                        text(p, "patient_id"),
                        decisions
                            .map(|d| (text(d, "therapist_id"), d.clone()))
                            .collect(),
                    );
                }
                _ => {}
            }
        }
        side
    }

    /// Why this side did not ask `therapist` for `patient`, from its
    /// explanation of the search.
    fn why_not(&self, patient: &str, therapist: &str, changes: &[String]) -> String {
        let Some(decision) = self.explained.get(patient).and_then(|d| d.get(therapist)) else {
            // Explanations list the practices within the search's reach:
            // one beyond it is told by what changed in the rules.
            return match changes {
                [] => "not among the practices its explanation lists".into(),
                _ => format!(
                    "not among the practices its explanation lists; the rules differ in {}",
                    changes.join(", ")
                ),
            };
        };
        if let Some(detail) = decision["detail"].as_str() {
            return detail.to_string();
        }
        if let Some(rule) = decision["rule"].as_str() {
            return format!("rule {rule}");
        }
        match decision["rank"].as_i64() {
            Some(rank) => format!("a candidate ranked {rank}, beyond the practices asked"),
            None => "a candidate, not asked".into(),
        }
    }
}

/// The fields in which `to` differs from `from`, as `field: old → new`
/// (the version aside).
fn changes(from: &Rulebook, to: &Rulebook) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(from), serde_json::to_value(to))
    else {
        return Vec::new();
    };
    a.iter()
        .filter(|(field, value)| *field != "version" && b.get(*field) != Some(value))
        .map(|(field, value)| format!("{field}: {value} → {}", b[field]))
        .collect()
}

/// `2026-W49`.
fn iso_week(at: chrono::DateTime<chrono::Utc>) -> String {
    let week = at.iso_week();
    format!("{}-W{:02}", week.year(), week.week())
}

impl Report {
    /// The report of a replay whose outputs are `replay`, against the
    /// live outputs `live` (both decoded, and as bytes for the record by
    /// record comparison).
    #[allow(clippy::too_many_arguments)]
    pub fn of(
        rules: (&Rulebook, &Rulebook),
        batches: usize,
        records: usize,
        seconds: f64,
        live: (&[Emitted], &[Decoded]),
        replay: (&[Emitted], &[Decoded]),
    ) -> Report {
        let (before, after) = (Side::of(live.1), Side::of(replay.1));
        let rule_changes = changes(rules.0, rules.1);
        let patients: BTreeSet<&String> = before.asked.keys().chain(after.asked.keys()).collect();
        let none = BTreeSet::new();
        let mut changed = Vec::new();
        let mut searches_changed = 0;
        for patient in &patients {
            let (was, is) = (
                before.asked.get(*patient).unwrap_or(&none),
                after.asked.get(*patient).unwrap_or(&none),
            );
            if was == is {
                continue;
            }
            searches_changed += 1;
            if changed.len() < SAMPLE {
                let live_only: Vec<String> = was.difference(is).cloned().collect();
                let replay_only: Vec<String> = is.difference(was).cloned().collect();
                let mut reasons: Vec<String> = live_only
                    .iter()
                    .map(|t| {
                        format!(
                            "{t} not asked in the replay: {}",
                            after.why_not(patient, t, &rule_changes)
                        )
                    })
                    .collect();
                reasons.extend(replay_only.iter().map(|t| {
                    format!(
                        "{t} not asked live: {}",
                        before.why_not(patient, t, &rule_changes)
                    )
                }));
                changed.push(Changed {
                    patient_id: patient.to_string(),
                    live_only,
                    replay_only,
                    reasons,
                });
            }
        }
        let practices: BTreeSet<&String> = before
            .by_practice
            .keys()
            .chain(after.by_practice.keys())
            .collect();
        let mut deltas: Vec<Practice> = practices
            .into_iter()
            .map(|t| Practice {
                therapist_id: t.clone(),
                live: before.by_practice.get(t).copied().unwrap_or(0),
                replay: after.by_practice.get(t).copied().unwrap_or(0),
            })
            .filter(|p| p.live != p.replay)
            .collect();
        let delta = |p: &Practice| p.replay as i64 - p.live as i64;
        deltas.sort_by(|a, b| {
            delta(b)
                .cmp(&delta(a))
                .then(a.therapist_id.cmp(&b.therapist_id))
        });
        let practices_fewer: Vec<Practice> = {
            let mut fewer: Vec<Practice> = Vec::new();
            while deltas.last().is_some_and(|p| delta(p) < 0) && fewer.len() < PRACTICES {
                fewer.extend(deltas.pop());
            }
            fewer
        };
        deltas.truncate(PRACTICES);
        let practices_more: Vec<Practice> = deltas.into_iter().filter(|p| delta(p) > 0).collect();
        let weeks: BTreeSet<&String> = before.weeks.keys().chain(after.weeks.keys()).collect();
        let weeks = weeks
            .into_iter()
            .map(|week| {
                let (a, b) = (before.weeks.get(week), after.weeks.get(week));
                Week {
                    week: week.clone(),
                    inquiries_live: a.map_or(0, |w| w.0),
                    inquiries_replay: b.map_or(0, |w| w.0),
                    emails_live: a.map_or(0, |w| w.1.len()),
                    emails_replay: b.map_or(0, |w| w.1.len()),
                }
            })
            .collect();
        let placed: BTreeSet<&String> = before.placed.keys().chain(after.placed.keys()).collect();
        let placements_changed = placed
            .into_iter()
            .filter_map(|patient| {
                let (was, is) = (before.placed.get(patient), after.placed.get(patient));
                (was != is).then(|| Placement {
                    patient_id: patient.clone(),
                    live: was.cloned(),
                    replay: is.cloned(),
                })
            })
            .collect();
        Report {
            rules_version: rules.1.version.clone(),
            rule_changes,
            batches,
            records,
            seconds,
            outputs: Comparison::of(live.0, replay.0),
            searches: patients.len(),
            searches_changed,
            changed,
            practices_more,
            practices_fewer,
            weeks,
            placed_live: before.placed.len(),
            placed_replay: after.placed.len(),
            placements_changed,
        }
    }

    /// The report as rows of (section, item, live, replay): the CSV form,
    /// and what the table prints.
    pub fn rows(&self) -> Vec<[String; 4]> {
        let row = |s: &str, i: &str, a: String, b: String| [s.to_string(), i.to_string(), a, b];
        let o = &self.outputs;
        let mut rows = vec![
            row(
                "run",
                "rules version",
                String::new(),
                self.rules_version.clone(),
            ),
            row(
                "run",
                "rules changed",
                String::new(),
                self.rule_changes.join("; "),
            ),
            row("run", "batches", String::new(), self.batches.to_string()),
            row("run", "records", String::new(), self.records.to_string()),
            row(
                "run",
                "seconds",
                String::new(),
                format!("{:.2}", self.seconds),
            ),
            row(
                "outputs",
                "records",
                o.live.to_string(),
                o.replay.to_string(),
            ),
            row(
                "outputs",
                "identical",
                o.identical.to_string(),
                o.identical.to_string(),
            ),
            row(
                "outputs",
                "differing",
                o.differing.to_string(),
                o.differing.to_string(),
            ),
            row(
                "outputs",
                "only on one side",
                o.only_live.to_string(),
                o.only_replay.to_string(),
            ),
            row(
                "searches",
                "with inquiries",
                String::new(),
                self.searches.to_string(),
            ),
            row(
                "searches",
                "practices differ",
                String::new(),
                self.searches_changed.to_string(),
            ),
        ];
        for c in &self.changed {
            for reason in &c.reasons {
                rows.push(row(
                    "changed search",
                    &c.patient_id,
                    String::new(),
                    reason.clone(),
                ));
            }
        }
        for p in self.practices_more.iter().chain(&self.practices_fewer) {
            rows.push(row(
                "practice asked",
                &p.therapist_id,
                p.live.to_string(),
                p.replay.to_string(),
            ));
        }
        for w in &self.weeks {
            rows.push(row(
                "inquiries",
                &w.week,
                w.inquiries_live.to_string(),
                w.inquiries_replay.to_string(),
            ));
            rows.push(row(
                "emails",
                &w.week,
                w.emails_live.to_string(),
                w.emails_replay.to_string(),
            ));
        }
        rows.push(row(
            "placed",
            "patients",
            self.placed_live.to_string(),
            self.placed_replay.to_string(),
        ));
        let or_none = |t: &Option<String>| t.clone().unwrap_or_else(|| "-".into());
        for p in &self.placements_changed {
            rows.push(row(
                "placed differently",
                &p.patient_id,
                or_none(&p.live),
                or_none(&p.replay),
            ));
        }
        rows
    }

    /// The report in `format`: `table`, `csv` or `json`.
    pub fn render(&self, format: &str) -> anyhow::Result<String> {
        match format {
            "json" => Ok(serde_json::to_string_pretty(self)? + "\n"),
            "csv" => {
                let mut writer = csv::Writer::from_writer(Vec::new());
                writer.write_record(["section", "item", "live", "replay"])?;
                for row in self.rows() {
                    writer.write_record(&row)?;
                }
                Ok(String::from_utf8(writer.into_inner()?)?)
            }
            "table" => {
                let rows = self.rows();
                let width = |n: usize| rows.iter().map(|r| r[n].chars().count()).max().unwrap_or(0);
                let (a, b, c) = (width(0).max(7), width(1).max(4), width(2).max(4));
                let mut out = format!("{:a$}  {:b$}  {:>c$}  replay\n", "section", "item", "live");
                for r in &rows {
                    out += &format!("{:a$}  {:b$}  {:>c$}  {}\n", r[0], r[1], r[2], r[3]);
                }
                Ok(out)
            }
            other => anyhow::bail!("unknown format {other}: table, csv or json"),
        }
    }
}
