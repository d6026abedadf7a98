//! Why a practice was asked, or not, for a patient: every hard rule with
//! the values it compares, passed or failed. The verdicts come from the
//! matcher's own rule function ([`rules::check`]), never from a copy of
//! the rules: `check` names the first rule broken; that rule is then set
//! aside (the limit lifted, the list emptied, the flag cleared) and
//! `check` asked again, until it admits the practice. What was never
//! named passed.

use crate::rules::{self, GenderPreference, History, Patient, Rule, Therapist, Verdict};
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

/// The rule's number in docs/design.md (1-9).
pub fn number(rule: &Rule) -> u8 {
    match rule {
        Rule::Distance(..) | Rule::TravelTime(..) | Rule::NoPosition => 1,
        Rule::Excluded => 2,
        Rule::Blocked => 3,
        Rule::Procedure => 4,
        Rule::Gender => 5,
        Rule::TherapistConstraints => 6,
        Rule::Group => 7,
        Rule::AgeGroup => 8,
        Rule::Pending | Rule::Cooling(_) => 9,
    }
}

/// Sets `rule` aside in the inputs, so that `check` can say whether any
/// other rule fails. `false`: it cannot be set aside (no position).
fn set_aside(
    rule: &Rule,
    patient: &mut Patient,
    therapist: &mut Therapist,
    history: &mut History,
) -> bool {
    match rule {
        Rule::Distance(..) => patient.max_distance_km = Some(f64::INFINITY),
        Rule::TravelTime(..) => patient.max_travel_minutes = None,
        Rule::NoPosition => return false,
        Rule::Excluded => {
            patient.excluded.remove(&therapist.id);
            history.search_excluded.remove(&therapist.id);
        }
        Rule::Blocked => therapist.blocked = false,
        Rule::Procedure => patient.preferred_procedures.clear(),
        Rule::Gender => patient.preferred_gender = GenderPreference::Any,
        Rule::TherapistConstraints => {
            therapist.min_age = None;
            therapist.max_age = None;
            therapist.genders.clear();
        }
        Rule::Group => therapist.prefers_group = false,
        Rule::AgeGroup => {
            therapist.treats_adults = true;
            therapist.treats_children = true;
        }
        Rule::Pending => {
            history.pending.remove(&therapist.id);
        }
        Rule::Cooling(_) => {
            history.cooling_until.remove(&therapist.id);
        }
    }
    true
}

/// What the matcher decides now for this pair, and every rule that fails.
pub struct Finding {
    /// `check`'s verdict on the inputs as they are.
    pub verdict: Verdict,
    /// Every rule broken, in the order of docs/design.md.
    pub broken: Vec<Rule>,
}

/// Runs [`rules::check`] on the pair, then again with each broken rule set
/// aside, to find every rule that fails.
pub fn find(
    patient: &Patient,
    therapist: &Therapist,
    history: &History,
    now: DateTime<Utc>,
    minutes: Option<f64>,
) -> Finding {
    let verdict = rules::check(patient, therapist, history, now, minutes);
    let (mut p, mut t, mut h) = (patient.clone(), therapist.clone(), history.clone());
    let mut broken = Vec::new();
    let mut current = verdict.clone();
    // Each pass sets one rule aside; there are fewer kinds than this.
    for _ in 0..16 {
        let Verdict::Rejected(rule) = current else {
            break;
        };
        if !set_aside(&rule, &mut p, &mut t, &mut h) {
            broken.push(rule);
            break;
        }
        broken.push(rule);
        current = rules::check(&p, &t, &h, now, minutes);
    }
    Finding { verdict, broken }
}

/// The answer of `GET /v1/searches/{patient}/why/{therapist}`: the
/// verdict, and each rule with what it compares and whether it held.
pub fn explain(
    patient: &Patient,
    therapist: &Therapist,
    history: &History,
    now: DateTime<Utc>,
    minutes: Option<f64>,
) -> Value {
    let finding = find(patient, therapist, history, now, minutes);
    let failed = |n: u8| finding.broken.iter().find(|r| number(r) == n);
    let distance = match (patient.position, therapist.position) {
        (Some(a), Some(b)) => Some(psymatch_geo::distance_km(a, b)),
        _ => None,
    };
    let names = |list: &[rules::Procedure]| -> Value { json!(list) };
    let compared: [(u8, &str, Value); 9] = [
        (
            1,
            "distance or travel time within the patient's limit",
            json!({
            "distance_km": distance, "limit_km": patient.max_distance_km,
            "travel_minutes": minutes, "limit_minutes": patient.max_travel_minutes}),
        ),
        (
            2,
            "not excluded",
            json!({"excluded_by_patient": patient.excluded.contains(&therapist.id),
            "excluded_for_search": history.search_excluded.contains(&therapist.id)}),
        ),
        (3, "not blocked", json!({"blocked": therapist.blocked})),
        (
            4,
            "procedure",
            json!({"preferred": names(&patient.preferred_procedures),
            "offered": names(&therapist.procedures)}),
        ),
        (
            5,
            "gender",
            json!({"preferred": patient.preferred_gender, "therapist": therapist.gender}),
        ),
        (
            6,
            "the therapist's own constraints",
            json!({"patient_age": patient.age,
            "patient_gender": patient.gender, "min_age": therapist.min_age,
            "max_age": therapist.max_age, "genders": therapist.genders}),
        ),
        (
            7,
            "group therapy",
            json!({"prefers_group": therapist.prefers_group,
            "patient_open_to_group": patient.open_to_group}),
        ),
        (
            8,
            "age group",
            json!({"patient_age": patient.age, "treats_adults": therapist.treats_adults,
            "treats_children": therapist.treats_children}),
        ),
        (
            9,
            "no open inquiry holds the patient, no cooling period",
            json!({
            "pending": history.pending.get(&therapist.id).is_some_and(|p| p.contains(&patient.id)),
            "cooling_until": history.cooling_until.get(&therapist.id).map(|t| t.to_rfc3339())}),
        ),
    ];
    let rows: Vec<Value> = compared
        .into_iter()
        .map(|(n, name, values)| {
            let rule = failed(n);
            json!({"rule": n, "name": name, "passed": rule.is_none(),
                   "detail": rule.map(Rule::explain), "compared": values})
        })
        .collect();
    let verdict = match &finding.verdict {
        Verdict::Candidate { .. } => json!({"decision": "candidate"}),
        Verdict::NeedsTravelTime { .. } => json!({"decision": "waiting for the travel time"}),
        Verdict::Rejected(rule) => {
            json!({"decision": "rejected", "rule": number(rule), "detail": rule.explain()})
        }
    };
    json!({"patient_id": patient.id, "therapist_id": therapist.id, "verdict": verdict, "rules": rows})
}

/// A practice the search could ask instead, with what the rules need.
pub struct Rival {
    /// The rules' view of the practice.
    pub therapist: Therapist,
    /// Its history with the patient.
    pub history: History,
    /// The travel time, when the geocoder answered.
    pub minutes: Option<f64>,
}

/// The rank of `therapist` among the candidates in `field` (itself one
/// of them), by the matcher's own [`rules::check`] and [`rules::rank`]:
/// `{"position": 1, "of": 12}` is the practice the search would ask
/// first. Null when it is no candidate now.
pub fn rank(
    patient: &Patient,
    therapist: &str,
    field: &[Rival],
    now: DateTime<Utc>,
    order: &[rules::RankKey],
) -> Value {
    let mut candidates: Vec<rules::Ranked<'_>> = field
        .iter()
        .filter_map(|rival| {
            match rules::check(
                patient,
                &rival.therapist,
                &rival.history,
                now,
                rival.minutes,
            ) {
                Verdict::Candidate { km, minutes } => Some((&rival.therapist, km, minutes)),
                _ => None,
            }
        })
        .collect();
    rules::rank(&mut candidates, now.date_naive(), order);
    match candidates.iter().position(|(t, ..)| t.id == therapist) {
        Some(n) => json!({"position": n + 1, "of": candidates.len()}),
        None => Value::Null,
    }
}
