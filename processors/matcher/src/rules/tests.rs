//! Tests of `rules`.

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
    assert!(matches!(verdict(&patient(), &therapist()), Verdict::Candidate { km, .. } if km < 2.0));
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
    rank(&mut full, today, &RankKey::ALL);
    let mut best = all.clone();
    rank_best(&mut best, today, 10, &RankKey::ALL);
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
    let cooling_for =
        |at| -> FastMap<String, DateTime<Utc>> { [("t-1".to_string(), at)].into_iter().collect() };
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
                for (prefers_group, open_to_group) in [(false, false), (true, false), (true, true)]
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
    rank(&mut list, today, &RankKey::ALL);
    let order: Vec<&str> = list.iter().map(|(t, _, _)| t.id.as_str()).collect();
    assert_eq!(
        order,
        vec!["free", "later-free", "near", "contacted", "near-no-email"]
    );
    // Another order from the rules file: the address to write to and
    // distance before the free place.
    let other = [
        RankKey::Email,
        RankKey::Travel,
        RankKey::LastContact,
        RankKey::FreePlace,
    ];
    rank(&mut list, today, &other);
    let order: Vec<&str> = list.iter().map(|(t, _, _)| t.id.as_str()).collect();
    assert_eq!(
        order,
        vec!["later-free", "near", "contacted", "free", "near-no-email"]
    );
}
