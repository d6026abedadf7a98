//! Hard constraints and ranking (docs/design.md, "Matching rules").

pub use crate::rulebook::RankKey;
use chrono::{DateTime, NaiveDate, Utc};
use psymatch_geo::{Position, distance_km};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Gender of a patient or therapist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Gender {
    /// Female.
    Female,
    /// Male.
    Male,
    /// Diverse.
    Diverse,
}

/// Preferred gender of the other side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GenderPreference {
    /// Female only.
    Female,
    /// Male only.
    Male,
    /// Anyone.
    Any,
}

/// Therapy procedure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Procedure {
    /// Verhaltenstherapie.
    Behavioural,
    /// Tiefenpsychologisch fundiert.
    Psychodynamic,
    /// Analytisch.
    Analytic,
    /// Systemisch.
    Systemic,
}

/// What matching knows of a patient (the pseudonymous search profile).
#[derive(Debug, Clone)]
pub struct Patient {
    /// Pseudonymous id.
    pub id: String,
    /// Age in years.
    pub age: i32,
    /// Gender.
    pub gender: Gender,
    /// Home position (rounded), once geocoded.
    pub position: Option<Position>,
    /// Largest distance in km; `None` and no travel limit: 25 km.
    pub max_distance_km: Option<f64>,
    /// Largest travel time by the patient's mode, in minutes.
    pub max_travel_minutes: Option<f64>,
    /// Preferred therapist gender.
    pub preferred_gender: GenderPreference,
    /// Preferred procedures; empty means any.
    pub preferred_procedures: Vec<Procedure>,
    /// Therapists the patient excluded.
    pub excluded: HashSet<String>,
    /// Open to group therapy.
    pub open_to_group: bool,
}

/// What matching knows of a therapist.
#[derive(Debug, Clone)]
pub struct Therapist {
    /// Therapist id.
    pub id: String,
    /// Gender.
    pub gender: Gender,
    /// Practice position, once known.
    pub position: Option<Position>,
    /// Procedures offered.
    pub procedures: Vec<Procedure>,
    /// Treats adults.
    pub treats_adults: bool,
    /// Treats children and adolescents (up to the 21st birthday).
    pub treats_children: bool,
    /// Blocked by a person.
    pub blocked: bool,
    /// Own constraints: youngest and oldest patient.
    pub min_age: Option<i32>,
    /// Oldest patient.
    pub max_age: Option<i32>,
    /// Patient genders accepted; empty means all.
    pub genders: Vec<Gender>,
    /// Prefers group therapy: only patients open to groups.
    pub prefers_group: bool,
    /// Earliest free place for individual therapy.
    pub free_from: Option<NaiveDate>,
    /// Has an email address (inquiries go out by email).
    pub has_email: bool,
    /// Last contact by email or phone.
    pub last_contact: Option<DateTime<Utc>>,
}

/// A map hashed with FxHash: the search looks up thousands of therapist
/// ids per patient, and SipHash's protection against crafted keys buys
/// nothing for ids the system itself assigns.
pub type FastMap<K, V> = HashMap<K, V, rustc_hash::FxBuildHasher>;
/// A set hashed like [`FastMap`].
pub type FastSet<T> = HashSet<T, rustc_hash::FxBuildHasher>;

/// What matching remembers between patients and therapists, by therapist
/// (looked up without building keys: the search checks thousands).
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Therapist -> patients held by its unanswered inquiries.
    pub pending: FastMap<String, FastSet<String>>,
    /// Therapist -> end of its cooling period: any answer from a therapist
    /// keeps it from being contacted again, for every patient, for 4 weeks.
    pub cooling_until: FastMap<String, DateTime<Utc>>,
    /// Therapists excluded for this search (not by the patient).
    pub search_excluded: FastSet<String>,
}

/// What the history says about one therapist: the patients its open
/// inquiries hold and the end of its cooling period. Looked up once per
/// batch for every therapist ([`crate::index::Index::standings`]) rather
/// than by id in every search.
#[derive(Debug, Clone, Copy, Default)]
pub struct Standing<'a> {
    /// Patients pending with the therapist (rule 9).
    pub pending: Option<&'a FastSet<String>>,
    /// End of its cooling period (rule 9).
    pub cooling_until: Option<DateTime<Utc>>,
}

impl History {
    /// The standing of therapist `id`.
    pub fn standing(&self, id: &str) -> Standing<'_> {
        // No inquiry yet and no answer: no id to hash.
        if self.pending.is_empty() && self.cooling_until.is_empty() {
            return Standing::default();
        }
        Standing {
            pending: self.pending.get(id),
            cooling_until: self.cooling_until.get(id).copied(),
        }
    }
}

/// The hard constraint that rejected a therapist (numbered as in docs/design.md).
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// 1: farther than the patient's limit (km, limit).
    Distance(f64, f64),
    /// 1: longer travel than the patient's limit (minutes, limit).
    TravelTime(f64, f64),
    /// 1: no position known for the patient or the therapist.
    NoPosition,
    /// 2: on the patient's or the search's exclusion list.
    Excluded,
    /// 3: blocked.
    Blocked,
    /// 4: offers none of the preferred procedures.
    Procedure,
    /// 5: not the preferred gender.
    Gender,
    /// 6: outside the therapist's own age or gender constraints.
    TherapistConstraints,
    /// 7: prefers group therapy, the patient is not open to it.
    Group,
    /// 8: the age group does not fit (children's therapist for an adult,
    /// adults' therapist for a minor).
    AgeGroup,
    /// 9: an unanswered inquiry to this therapist holds the patient.
    Pending,
    /// 9: cooling period until then.
    Cooling(DateTime<Utc>),
}

impl Rule {
    /// A sentence a person reads ("why wasn't Dr. X contacted?").
    pub fn explain(&self) -> String {
        match self {
            Rule::Distance(km, limit) => {
                format!("rule 1: {km:.1} km away, the limit is {limit:.0} km")
            }
            Rule::TravelTime(min, limit) => {
                format!("rule 1: {min:.0} minutes away, the limit is {limit:.0}")
            }
            Rule::NoPosition => {
                "rule 1: the position of the patient or the practice is not known yet".into()
            }
            Rule::Excluded => "rule 2: on the exclusion list".into(),
            Rule::Blocked => "rule 3: blocked".into(),
            Rule::Procedure => "rule 4: offers none of the preferred procedures".into(),
            Rule::Gender => "rule 5: not the preferred gender".into(),
            Rule::TherapistConstraints => {
                "rule 6: outside the therapist's own age or gender preferences".into()
            }
            Rule::Group => "rule 7: prefers group therapy, the patient is not open to it".into(),
            Rule::AgeGroup => "rule 8: does not treat the patient's age group".into(),
            Rule::Pending => "rule 9: an unanswered inquiry already holds the patient".into(),
            Rule::Cooling(until) => {
                format!("rule 9: cooling period until {}", until.format("%Y-%m-%d"))
            }
        }
    }
}

/// The outcome of checking one therapist for one patient.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// A candidate, at this distance (km) and, when known, travel time.
    Candidate {
        /// Straight-line distance in km.
        km: f64,
        /// Travel time in minutes, when known.
        minutes: Option<f64>,
    },
    /// Every other rule holds; the travel time decides (ask the geocoder).
    NeedsTravelTime {
        /// Straight-line distance in km.
        km: f64,
    },
    /// Rejected by this rule.
    Rejected(Rule),
}

/// The default distance limit when the patient set none and the search's
/// view carries no rules' default (the baseline rules say the same).
pub const DEFAULT_LIMIT_KM: f64 = 25.0;

/// Checks the hard constraints in the order of docs/design.md (the cheap ones
/// first would be faster; this order makes the first broken rule the
/// one reported). `minutes` is the travel time by the patient's mode when
/// the geocoder has answered.
pub fn check(
    patient: &Patient,
    therapist: &Therapist,
    history: &History,
    now: DateTime<Utc>,
    minutes: Option<f64>,
) -> Verdict {
    let (Some(home), Some(practice)) = (patient.position, therapist.position) else {
        return Verdict::Rejected(Rule::NoPosition);
    };
    check_at(
        patient,
        therapist,
        history,
        now,
        minutes,
        distance_km(home, practice),
    )
}

/// [`check`] with the distance already measured (`km`, by
/// [`distance_km`]): the index measures it to find the therapists within
/// reach and hands it on.
pub fn check_at(
    patient: &Patient,
    therapist: &Therapist,
    history: &History,
    now: DateTime<Utc>,
    minutes: Option<f64>,
    km: f64,
) -> Verdict {
    let standing = history.standing(&therapist.id);
    check_standing(patient, therapist, history, standing, now, minutes, km)
}

/// [`check_at`] with the therapist's standing looked up already.
pub fn check_standing(
    patient: &Patient,
    therapist: &Therapist,
    history: &History,
    standing: Standing<'_>,
    now: DateTime<Utc>,
    minutes: Option<f64>,
    km: f64,
) -> Verdict {
    let judged = Judged {
        wants: &Wants::of(patient),
        traits: Traits::of(therapist),
        id: &|| therapist.id.as_str(),
        standing,
        minutes,
        km,
    };
    judge(patient, history, now, judged)
}

/// One therapist as [`judge`] sees it: its packed traits, its id asked
/// for only when a list names therapists, its standing, travel time and
/// distance.
pub struct Judged<'a> {
    /// The patient's packed wants ([`Wants::of`], once per search).
    pub wants: &'a Wants,
    /// The therapist's packed traits.
    pub traits: Traits,
    /// The therapist's id (looked up only for the exclusion lists).
    pub id: &'a dyn Fn() -> &'a str,
    /// Its standing in the history.
    pub standing: Standing<'a>,
    /// Travel time by the patient's mode, when known.
    pub minutes: Option<f64>,
    /// Distance in km.
    pub km: f64,
}

/// The patient's distance limit (rule 1): the one set, else none when a
/// travel time limits the search, else [`DEFAULT_LIMIT_KM`].
pub fn limit_km(patient: &Patient) -> f64 {
    patient
        .max_distance_km
        .unwrap_or(if patient.max_travel_minutes.is_some() {
            f64::INFINITY
        } else {
            DEFAULT_LIMIT_KM
        })
}

/// The rules in the order of docs/design.md: the verdict of [`check_standing`],
/// from what the search holds of a therapist.
pub fn judge(patient: &Patient, history: &History, now: DateTime<Utc>, t: Judged<'_>) -> Verdict {
    let reject = Verdict::Rejected;
    let (km, minutes) = (t.km, t.minutes);
    let limit_km = limit_km(patient);
    if km > limit_km {
        return reject(Rule::Distance(km, limit_km));
    }
    if let (Some(limit), Some(minutes)) = (patient.max_travel_minutes, minutes)
        && minutes > limit
    {
        return reject(Rule::TravelTime(minutes, limit));
    }
    // Most lists are empty: no hashing of every therapist's id then.
    if (!patient.excluded.is_empty() && patient.excluded.contains((t.id)()))
        || (!history.search_excluded.is_empty() && history.search_excluded.contains((t.id)()))
    {
        return reject(Rule::Excluded);
    }
    if let Some(rule) = t.wants.refusal(t.traits) {
        return reject(rule);
    }
    if t.standing
        .pending
        .is_some_and(|patients| patients.contains(patient.id.as_str()))
    {
        return reject(Rule::Pending);
    }
    if let Some(until) = t.standing.cooling_until
        && until > now
    {
        return reject(Rule::Cooling(until));
    }
    match (patient.max_travel_minutes, minutes) {
        (Some(_), None) => Verdict::NeedsTravelTime { km },
        _ => Verdict::Candidate { km, minutes },
    }
}

/// The therapist's side of rules 3-8, packed: a search reads this for
/// every practice within reach, next to its position, instead of the
/// whole record (a city's search looks at thousands).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traits {
    /// [`Traits::BLOCKED`], [`Traits::ADULTS`], [`Traits::CHILDREN`], [`Traits::GROUP`].
    flags: u8,
    gender: u8,
    /// One bit per procedure offered.
    procedures: u8,
    /// One bit per patient gender accepted; 0: all.
    genders: u8,
    /// Youngest patient (`i32::MIN`: none).
    min_age: i32,
    /// Oldest patient (`i32::MAX`: none).
    max_age: i32,
}

fn gender_bit(gender: Gender) -> u8 {
    match gender {
        Gender::Female => 1,
        Gender::Male => 2,
        Gender::Diverse => 4,
    }
}

fn procedure_bit(procedure: Procedure) -> u8 {
    match procedure {
        Procedure::Behavioural => 1,
        Procedure::Psychodynamic => 2,
        Procedure::Analytic => 4,
        Procedure::Systemic => 8,
    }
}

impl Traits {
    const BLOCKED: u8 = 1;
    const ADULTS: u8 = 2;
    const CHILDREN: u8 = 4;
    const GROUP: u8 = 8;

    /// The traits of a therapist.
    pub fn of(therapist: &Therapist) -> Traits {
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        Traits {
            flags: flag(therapist.blocked, Self::BLOCKED)
                | flag(therapist.treats_adults, Self::ADULTS)
                | flag(therapist.treats_children, Self::CHILDREN)
                | flag(therapist.prefers_group, Self::GROUP),
            gender: gender_bit(therapist.gender),
            procedures: therapist
                .procedures
                .iter()
                .fold(0, |bits, p| bits | procedure_bit(*p)),
            genders: therapist
                .genders
                .iter()
                .fold(0, |bits, g| bits | gender_bit(*g)),
            min_age: therapist.min_age.unwrap_or(i32::MIN),
            max_age: therapist.max_age.unwrap_or(i32::MAX),
        }
    }
}

/// The patient's side of rules 4-8, packed once per search.
#[derive(Debug, Clone, Copy)]
pub struct Wants {
    /// One bit per preferred procedure; 0: any.
    procedures: u8,
    /// The therapist gender bit wanted; 0: any.
    gender: u8,
    /// The patient's own gender bit (rule 6).
    own_gender: u8,
    age: i32,
    open_to_group: bool,
}

impl Wants {
    /// What `patient` asks of every therapist.
    pub fn of(patient: &Patient) -> Wants {
        Wants {
            procedures: patient
                .preferred_procedures
                .iter()
                .fold(0, |bits, p| bits | procedure_bit(*p)),
            gender: match patient.preferred_gender {
                GenderPreference::Any => 0,
                GenderPreference::Female => gender_bit(Gender::Female),
                GenderPreference::Male => gender_bit(Gender::Male),
            },
            own_gender: gender_bit(patient.gender),
            age: patient.age,
            open_to_group: patient.open_to_group,
        }
    }

    /// The first of rules 3-8 a therapist with `traits` breaks, in
    /// the order of docs/design.md.
    pub fn refusal(&self, traits: Traits) -> Option<Rule> {
        if traits.flags & Traits::BLOCKED != 0 {
            return Some(Rule::Blocked);
        }
        if self.procedures != 0 && self.procedures & traits.procedures == 0 {
            return Some(Rule::Procedure);
        }
        if self.gender != 0 && self.gender != traits.gender {
            return Some(Rule::Gender);
        }
        let age_ok = self.age >= traits.min_age && self.age <= traits.max_age;
        let gender_accepted = traits.genders == 0 || traits.genders & self.own_gender != 0;
        if !(age_ok && gender_accepted) {
            return Some(Rule::TherapistConstraints);
        }
        if traits.flags & Traits::GROUP != 0 && !self.open_to_group {
            return Some(Rule::Group);
        }
        // Children's therapists treat up to the 21st birthday; minors need one.
        let age_group_ok = (self.age < 21 && traits.flags & Traits::CHILDREN != 0)
            || (self.age >= 18 && traits.flags & Traits::ADULTS != 0);
        if !age_group_ok {
            return Some(Rule::AgeGroup);
        }
        None
    }
}

/// A candidate to rank: the therapist and its distance and travel time.
pub type Ranked<'a> = (&'a Therapist, f64, Option<f64>);

/// The ranking (docs/design.md): by the keys of `order`, most important
/// first (the baseline: a free place whose date has passed, then shorter
/// travel, time when known, else distance, then those with an email
/// address, then those not contacted recently), ties to the therapist id.
/// Replace this one function to rank differently.
pub fn rank(candidates: &mut [Ranked<'_>], today: NaiveDate, order: &[RankKey]) {
    rank_best(candidates, today, candidates.len(), order);
}

/// [`rank`] for the `best` first places only: they come first, in order;
/// the rest follow in no particular order (a search offers a patient to a
/// few practices out of hundreds of candidates).
pub fn rank_best(candidates: &mut [Ranked<'_>], today: NaiveDate, best: usize, order: &[RankKey]) {
    // The keys once per candidate, not once per comparison.
    let key = |(t, km, minutes): &Ranked<'_>| {
        (
            // false sorts first: a place that is free today.
            t.free_from.is_none_or(|d| d > today),
            // Without a travel time, 2 minutes per km stands in.
            minutes.unwrap_or(*km * 2.0),
            !t.has_email,
            t.last_contact,
        )
    };
    type Keyed<'a> = ((bool, f64, bool, Option<DateTime<Utc>>), Ranked<'a>);
    let compare = |(a, ta): &Keyed<'_>, (b, tb): &Keyed<'_>| {
        order
            .iter()
            .fold(std::cmp::Ordering::Equal, |so_far, key| {
                so_far.then_with(|| match key {
                    RankKey::FreePlace => a.0.cmp(&b.0),
                    RankKey::Travel => a.1.total_cmp(&b.1),
                    RankKey::Email => a.2.cmp(&b.2),
                    RankKey::LastContact => a.3.cmp(&b.3),
                })
            })
            .then_with(|| ta.0.id.cmp(&tb.0.id))
    };
    let mut keyed: Vec<Keyed<'_>> = candidates.iter().map(|c| (key(c), *c)).collect();
    let best = best.min(keyed.len());
    if best < keyed.len() && best > 0 {
        keyed.select_nth_unstable_by(best - 1, compare);
    }
    keyed[..best].sort_unstable_by(compare);
    for (slot, (_, candidate)) in candidates.iter_mut().zip(keyed) {
        *slot = candidate;
    }
}

#[cfg(test)]
mod tests;
