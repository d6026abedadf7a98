//! Hard constraints and ranking (docs/design.md, "Matching rules").

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

/// The default distance limit when the patient set none.
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

/// The rules in the order of docs/design.md: the verdict of [`check_standing`],
/// from what the search holds of a therapist.
pub fn judge(patient: &Patient, history: &History, now: DateTime<Utc>, t: Judged<'_>) -> Verdict {
    let reject = Verdict::Rejected;
    let (km, minutes) = (t.km, t.minutes);
    let limit_km = patient
        .max_distance_km
        .unwrap_or(if patient.max_travel_minutes.is_some() {
            f64::INFINITY
        } else {
            DEFAULT_LIMIT_KM
        });
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

/// The baseline ranking (docs/design.md): a free place whose date has passed
/// first, then shorter travel (time when known, else distance), then those
/// with an email address, then those not contacted recently. Replace this
/// one function to rank differently.
pub fn rank(candidates: &mut [Ranked<'_>], today: NaiveDate) {
    rank_best(candidates, today, candidates.len());
}

/// [`rank`] for the `best` first places only: they come first, in order;
/// the rest follow in no particular order (a search offers a patient to a
/// few practices out of hundreds of candidates).
pub fn rank_best(candidates: &mut [Ranked<'_>], today: NaiveDate, best: usize) {
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
    let order = |(a, ta): &Keyed<'_>, (b, tb): &Keyed<'_>| {
        a.0.cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
            .then_with(|| ta.0.id.cmp(&tb.0.id))
    };
    let mut keyed: Vec<Keyed<'_>> = candidates.iter().map(|c| (key(c), *c)).collect();
    let best = best.min(keyed.len());
    if best < keyed.len() && best > 0 {
        keyed.select_nth_unstable_by(best - 1, order);
    }
    keyed[..best].sort_unstable_by(order);
    for (slot, (_, candidate)) in candidates.iter_mut().zip(keyed) {
        *slot = candidate;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BERLIN: Position = Position::new(52.52, 13.40);

    fn now() -> DateTime<Utc> {
        "2026-11-26T10:00:00Z".parse().unwrap()
    }

    fn patient() -> Patient {
        Patient {
            id: "p-1".into(),
            age: 35,
            gender: Gender::Female,
            position: Some(BERLIN),
            max_distance_km: None,
            max_travel_minutes: None,
            preferred_gender: GenderPreference::Any,
            preferred_procedures: Vec::new(),
            excluded: HashSet::new(),
            open_to_group: false,
        }
    }

    fn therapist() -> Therapist {
        Therapist {
            id: "t-1".into(),
            gender: Gender::Female,
            position: Some(Position::new(52.53, 13.42)),
            procedures: vec![Procedure::Behavioural],
            treats_adults: true,
            treats_children: false,
            blocked: false,
            min_age: None,
            max_age: None,
            genders: Vec::new(),
            prefers_group: false,
            free_from: None,
            has_email: true,
            last_contact: None,
        }
    }

    fn verdict(p: &Patient, t: &Therapist) -> Verdict {
        check(p, t, &History::default(), now(), None)
    }

    fn rule(p: &Patient, t: &Therapist) -> Option<Rule> {
        match verdict(p, t) {
            Verdict::Rejected(rule) => Some(rule),
            _ => None,
        }
    }

    #[test]
    fn a_nearby_fitting_therapist_is_a_candidate() {
        assert!(
            matches!(verdict(&patient(), &therapist()), Verdict::Candidate { km, .. } if km < 2.0)
        );
    }

    #[test]
    fn rule_1_distance_and_travel_time() {
        let mut far = therapist();
        far.position = Some(Position::new(52.52, 13.90)); // about 34 km
        assert!(matches!(rule(&patient(), &far), Some(Rule::Distance(_, limit)) if limit == 25.0));
        let mut p = patient();
        p.max_distance_km = Some(40.0);
        assert_eq!(rule(&p, &far), None);
        let mut by_time = patient();
        by_time.max_travel_minutes = Some(30.0);
        assert!(matches!(
            verdict(&by_time, &far),
            Verdict::NeedsTravelTime { .. }
        ));
        let answer = check(&by_time, &far, &History::default(), now(), Some(45.0));
        assert_eq!(answer, Verdict::Rejected(Rule::TravelTime(45.0, 30.0)));
        assert!(matches!(
            check(&by_time, &far, &History::default(), now(), Some(25.0)),
            Verdict::Candidate { .. }
        ));
        let mut nowhere = therapist();
        nowhere.position = None;
        assert_eq!(rule(&patient(), &nowhere), Some(Rule::NoPosition));
    }

    #[test]
    fn rules_2_and_3_exclusion_and_blocking() {
        let mut p = patient();
        p.excluded.insert("t-1".into());
        assert_eq!(rule(&p, &therapist()), Some(Rule::Excluded));
        let history = History {
            search_excluded: ["t-1".to_string()].into_iter().collect(),
            ..History::default()
        };
        assert_eq!(
            check(&patient(), &therapist(), &history, now(), None),
            Verdict::Rejected(Rule::Excluded)
        );
        let mut blocked = therapist();
        blocked.blocked = true;
        assert_eq!(rule(&patient(), &blocked), Some(Rule::Blocked));
    }

    #[test]
    fn rule_6_the_therapists_own_constraints() {
        let mut t = therapist();
        t.min_age = Some(40);
        assert_eq!(rule(&patient(), &t), Some(Rule::TherapistConstraints));
        t.min_age = Some(30);
        t.max_age = Some(35);
        assert_eq!(rule(&patient(), &t), None);
        t.genders = vec![Gender::Male];
        assert_eq!(rule(&patient(), &t), Some(Rule::TherapistConstraints));
    }

    #[test]
    fn the_best_places_rank_as_in_the_full_ranking() {
        let therapists: Vec<Therapist> = (0..200).map(crate::index::synthetic::therapist).collect();
        let today = now().date_naive();
        let all: Vec<Ranked<'_>> = therapists
            .iter()
            .enumerate()
            .map(|(i, t)| (t, (i * 37 % 101) as f64, None))
            .collect();
        let mut full = all.clone();
        rank(&mut full, today);
        let mut best = all.clone();
        rank_best(&mut best, today, 10);
        let ids = |r: &[Ranked<'_>]| r.iter().map(|(t, _, _)| t.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&best[..10]), ids(&full[..10]));
        assert_eq!(best.len(), 200);
    }

    #[test]
    fn rule_9_pending_inquiries_and_cooling() {
        let patients = |p: &str| -> FastSet<String> { [p.to_string()].into_iter().collect() };
        let pending = History {
            pending: [("t-1".to_string(), patients("p-1"))].into_iter().collect(),
            ..History::default()
        };
        assert_eq!(
            check(&patient(), &therapist(), &pending, now(), None),
            Verdict::Rejected(Rule::Pending)
        );
        let until = now() + chrono::Duration::days(10);
        let cooling_for = |at| -> FastMap<String, DateTime<Utc>> {
            [("t-1".to_string(), at)].into_iter().collect()
        };
        let cooling = History {
            cooling_until: cooling_for(until),
            ..History::default()
        };
        assert_eq!(
            check(&patient(), &therapist(), &cooling, now(), None),
            Verdict::Rejected(Rule::Cooling(until))
        );
        let over = History {
            cooling_until: cooling_for(now() - chrono::Duration::days(1)),
            ..History::default()
        };
        let other_patient = History {
            pending: [("t-1".to_string(), patients("p-2"))].into_iter().collect(),
            ..History::default()
        };
        assert!(matches!(
            check(&patient(), &therapist(), &other_patient, now(), None),
            Verdict::Candidate { .. }
        ));
        assert!(matches!(
            check(&patient(), &therapist(), &over, now(), None),
            Verdict::Candidate { .. }
        ));
        assert!(Rule::Cooling(until).explain().contains("2026-12-06"));
    }

    /// Rules 4, 5, 7 and 8 in every combination of procedure, gender
    /// preference, group and age, against an expected verdict computed
    /// from the rules' plain wording.
    #[test]
    fn procedure_gender_group_and_age_in_combination() {
        let procedures = [
            vec![],
            vec![Procedure::Behavioural],
            vec![Procedure::Analytic],
        ];
        let preferences = [
            GenderPreference::Any,
            GenderPreference::Female,
            GenderPreference::Male,
        ];
        let genders = [Gender::Female, Gender::Male, Gender::Diverse];
        let mut checked = 0;
        for wanted in &procedures {
            for preference in preferences {
                for therapist_gender in genders {
                    for (prefers_group, open_to_group) in
                        [(false, false), (true, false), (true, true)]
                    {
                        for (age, adults, children) in [
                            (35, true, false),
                            (35, false, true),
                            (15, true, false),
                            (15, false, true),
                            (19, true, false),
                            (19, false, true),
                        ] {
                            let mut p = patient();
                            p.preferred_procedures = wanted.clone();
                            p.preferred_gender = preference;
                            p.open_to_group = open_to_group;
                            p.age = age;
                            let mut t = therapist();
                            t.gender = therapist_gender;
                            t.prefers_group = prefers_group;
                            t.treats_adults = adults;
                            t.treats_children = children;
                            let procedure_ok =
                                wanted.is_empty() || wanted.contains(&Procedure::Behavioural);
                            let gender_ok = match preference {
                                GenderPreference::Any => true,
                                GenderPreference::Female => therapist_gender == Gender::Female,
                                GenderPreference::Male => therapist_gender == Gender::Male,
                            };
                            let group_ok = !prefers_group || open_to_group;
                            let age_ok = (age < 21 && children) || (age >= 18 && adults);
                            let expected = if !procedure_ok {
                                Some(Rule::Procedure)
                            } else if !gender_ok {
                                Some(Rule::Gender)
                            } else if !group_ok {
                                Some(Rule::Group)
                            } else if !age_ok {
                                Some(Rule::AgeGroup)
                            } else {
                                None
                            };
                            assert_eq!(
                                rule(&p, &t),
                                expected,
                                "{wanted:?} {preference:?} {therapist_gender:?} group {prefers_group}/{open_to_group} age {age} adults {adults}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(checked, 3 * 3 * 3 * 3 * 6);
        // The cases docs/design.md names.
        let mut diverse = therapist();
        diverse.gender = Gender::Diverse;
        let mut wants_female = patient();
        wants_female.preferred_gender = GenderPreference::Female;
        assert_eq!(rule(&wants_female, &diverse), Some(Rule::Gender));
        let mut adult_for_children = therapist();
        adult_for_children.treats_adults = false;
        adult_for_children.treats_children = true;
        assert_eq!(rule(&patient(), &adult_for_children), Some(Rule::AgeGroup));
    }

    #[test]
    fn ranking_follows_the_baseline() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 26).unwrap();
        let mut free = therapist();
        free.id = "free".into();
        free.free_from = Some(NaiveDate::from_ymd_opt(2026, 11, 1).unwrap());
        let mut near = therapist();
        near.id = "near".into();
        let mut near_no_email = therapist();
        near_no_email.id = "near-no-email".into();
        near_no_email.has_email = false;
        let mut contacted = therapist();
        contacted.id = "contacted".into();
        contacted.last_contact = Some(now());
        let mut later_free = therapist();
        later_free.id = "later-free".into();
        later_free.free_from = Some(NaiveDate::from_ymd_opt(2027, 3, 1).unwrap());
        let mut list: Vec<Ranked<'_>> = vec![
            (&later_free, 1.0, None),
            (&contacted, 2.0, None),
            (&near_no_email, 2.0, None),
            (&near, 2.0, None),
            (&free, 9.0, None),
        ];
        rank(&mut list, today);
        let order: Vec<&str> = list.iter().map(|(t, _, _)| t.id.as_str()).collect();
        assert_eq!(
            order,
            vec!["free", "later-free", "near", "contacted", "near-no-email"]
        );
    }
}
