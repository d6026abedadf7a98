//! Tests of `index`.

use super::*;

#[test]
fn moved_and_removed_therapists_are_found_where_they_are() {
    let berlin = Position::new(52.52, 13.40);
    let mut index = Index::new(vec![Therapist {
        id: "t-1".into(),
        position: Some(berlin),
        ..synthetic::therapist(1)
    }]);
    let mut patient = synthetic::patient(1);
    patient.position = Some(berlin);
    patient.max_distance_km = Some(10.0);
    let now: DateTime<Utc> = "2026-11-26T10:00:00Z".parse().unwrap();
    let found = |index: &Index| {
        index
            .search(&patient, &History::default(), now, &HashMap::new())
            .len()
    };
    assert_eq!(found(&index), 1);
    index.upsert(Therapist {
        id: "t-1".into(),
        position: Some(Position::new(48.14, 11.58)),
        ..synthetic::therapist(1)
    });
    assert_eq!(found(&index), 0, "moved to Munich");
    index.upsert(Therapist {
        id: "t-1".into(),
        position: Some(berlin),
        ..synthetic::therapist(1)
    });
    assert_eq!(found(&index), 1, "back, once");
    index.remove("t-1");
    assert_eq!(found(&index), 0);
    assert!(index.get("t-1").is_some_and(|t| t.position.is_none()));
}

#[test]
fn the_index_finds_exactly_what_a_full_scan_finds() {
    let index = Index::new((0..5_000).map(synthetic::therapist).collect());
    let now: DateTime<Utc> = "2026-11-26T10:00:00Z".parse().unwrap();
    let travel = HashMap::new();
    let mut found = 0;
    for n in 0..300 {
        let mut patient = synthetic::patient(n);
        // Limits up to 80 km, and positions up to Germany's north.
        patient.max_distance_km = Some(5.0 + (n % 16) as f64 * 5.0);
        let by_index: Vec<&str> = index
            .candidates(&patient, &History::default(), now, &travel)
            .iter()
            .map(|(t, _, _)| t.id.as_str())
            .collect();
        let by_scan: Vec<&str> = index
            .candidates_by_scan(&patient, &History::default(), now, &travel)
            .iter()
            .map(|(t, _, _)| t.id.as_str())
            .collect();
        assert_eq!(by_index, by_scan, "patient {n}");
        found += by_index.len();
    }
    assert!(
        found > 1_000,
        "the synthetic data must produce candidates: {found}"
    );
}

/// The survey keeps only what matching needs: its candidates, counts
/// and nearest others must be those of the verdict on every therapist
/// within reach, with pending, cooling and travel-time cases in play.
#[test]
fn a_survey_keeps_what_the_full_search_decides() {
    let index = Index::new((0..5_000).map(synthetic::therapist).collect());
    let now: DateTime<Utc> = "2026-11-26T10:00:00Z".parse().unwrap();
    let mut history = History::default();
    for n in (0..5_000).step_by(7) {
        let held: rules::FastSet<String> = ["p-3".to_string()].into_iter().collect();
        history.pending.insert(format!("t-{n}"), held);
    }
    for n in (0..5_000).step_by(11) {
        history
            .cooling_until
            .insert(format!("t-{n}"), now + chrono::Duration::days(3));
    }
    let standings = index.standings(&history);
    let travel = HashMap::new();
    let (mut waiting, mut timed) = (0, 0);
    let mut survey = Survey::default();
    for n in 0..200 {
        let mut patient = synthetic::patient(n);
        patient.id = "p-3".into();
        if n % 3 == 0 {
            patient.max_distance_km = None;
            patient.max_travel_minutes = Some(30.0);
        }
        let shown = [0, 15, 5_000][n as usize % 3];
        index.survey(
            &patient,
            &history,
            Some(&standings),
            true,
            now,
            &travel,
            shown,
            &mut survey,
        );
        let found = index.search(&patient, &history, now, &travel);
        assert_eq!(survey.considered, found.len(), "patient {n}");
        let candidates: Vec<(usize, f64, Option<f64>)> = found
            .iter()
            .filter_map(|f| match f.verdict {
                Verdict::Candidate { km, minutes } => Some((f.therapist, km, minutes)),
                _ => None,
            })
            .collect();
        assert_eq!(survey.candidates, candidates, "patient {n}");
        let needs_time: Vec<usize> = found
            .iter()
            .filter(|f| matches!(f.verdict, Verdict::NeedsTravelTime { .. }))
            .map(|f| f.therapist)
            .collect();
        assert_eq!(survey.needs_time, needs_time, "patient {n}");
        let pending_or_cooling = found.iter().any(|f| {
            matches!(
                f.verdict,
                Verdict::Rejected(rules::Rule::Pending | rules::Rule::Cooling(_))
            )
        });
        assert_eq!(survey.waiting, pending_or_cooling, "patient {n}");
        let mut others: Vec<&Found> = found
            .iter()
            .filter(|f| !matches!(f.verdict, Verdict::Candidate { .. }))
            .collect();
        let order = |f: &Found| u8::from(!matches!(f.verdict, Verdict::NeedsTravelTime { .. }));
        others.sort_by(|a, b| order(a).cmp(&order(b)).then(a.km.total_cmp(&b.km)));
        others.truncate(shown);
        let kept: Vec<&Found> = survey.others.iter().collect();
        assert_eq!(kept, others, "patient {n}");
        waiting += usize::from(survey.waiting);
        timed += usize::from(!survey.needs_time.is_empty());
    }
    assert!(
        waiting > 50 && timed > 20,
        "cases in play: {waiting} waiting, {timed} timed"
    );
}
