//! The candidate search: therapists on a grid of 10 km squares in memory,
//! so a search looks only at the squares within the patient's limit
//! instead of every therapist in Germany.

use crate::rules::{self, FastMap, History, Patient, Ranked, Standing, Therapist, Verdict};
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// Side of a grid square in km.
const CELL_KM: f64 = 10.0;
/// km per degree of longitude at the grid's reference latitude (51° N).
const KM_PER_DEGREE_LON: f64 = 111.2 * 0.629_320_391;

fn cell(position: (f64, f64)) -> (i64, i64) {
    (
        (position.0 * 111.2 / CELL_KM).floor() as i64,
        (position.1 * KM_PER_DEGREE_LON / CELL_KM).floor() as i64,
    )
}

/// Therapists by grid square.
#[derive(Debug, Default)]
pub struct Index {
    therapists: Vec<Therapist>,
    cells: FastMap<(i64, i64), Vec<usize>>,
    /// Therapist id -> position in `therapists`.
    slots: FastMap<String, usize>,
}

/// A therapist a search found, with what the verdict said.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// Position in the index.
    pub therapist: usize,
    /// Distance in km (the index's flat measure, for ordering).
    pub km: f64,
    /// The verdict.
    pub verdict: Verdict,
}

impl Index {
    /// Builds the index (therapists without a position are kept but never
    /// found: rule 1 needs a position).
    pub fn new(therapists: Vec<Therapist>) -> Index {
        let mut index = Index::default();
        for therapist in therapists {
            index.upsert(therapist);
        }
        index
    }

    /// Adds a therapist or replaces the one with the same id (moving it to
    /// its new square).
    pub fn upsert(&mut self, therapist: Therapist) {
        let slot = match self.slots.get(&therapist.id) {
            Some(&slot) => {
                self.unplace(slot);
                self.therapists[slot] = therapist;
                slot
            }
            None => {
                let slot = self.therapists.len();
                self.slots.insert(therapist.id.clone(), slot);
                self.therapists.push(therapist);
                slot
            }
        };
        if let Some(position) = self.therapists[slot].position {
            self.cells.entry(cell(position)).or_default().push(slot);
        }
    }

    /// Takes a therapist out of every search (closed practice). Its slot
    /// stays, without a position.
    pub fn remove(&mut self, id: &str) {
        if let Some(&slot) = self.slots.get(id) {
            self.unplace(slot);
            self.therapists[slot].position = None;
        }
    }

    /// The therapist with this id.
    pub fn get(&self, id: &str) -> Option<&Therapist> {
        self.slots.get(id).map(|&slot| &self.therapists[slot])
    }

    /// The slot of a therapist (what [`Found::therapist`] holds).
    pub fn slot(&self, id: &str) -> Option<usize> {
        self.slots.get(id).copied()
    }

    /// The therapist found at `slot` by [`Index::search`].
    pub fn at(&self, slot: usize) -> &Therapist {
        &self.therapists[slot]
    }

    /// Every therapist's standing in `history`, by slot: one lookup per
    /// therapist for a whole batch of searches instead of one per
    /// therapist and search.
    pub fn standings<'h>(&self, history: &'h History) -> Vec<Standing<'h>> {
        let mut standings = vec![Standing::default(); self.therapists.len()];
        for (id, pending) in &history.pending {
            if let Some(&slot) = self.slots.get(id) {
                standings[slot].pending = Some(pending);
            }
        }
        for (id, until) in &history.cooling_until {
            if let Some(&slot) = self.slots.get(id) {
                standings[slot].cooling_until = Some(*until);
            }
        }
        standings
    }

    fn unplace(&mut self, slot: usize) {
        if let Some(position) = self.therapists[slot].position
            && let Some(square) = self.cells.get_mut(&cell(position))
        {
            square.retain(|&s| s != slot);
        }
    }

    /// Every therapist in the squares that overlap the box around
    /// `position` reaching `km` each way (a superset; the rules check the
    /// distance). The box, not the patient's square widened by whole
    /// squares: a 25 km search then reads about half as many therapists.
    fn near(&self, position: (f64, f64), km: f64) -> impl Iterator<Item = usize> + '_ {
        // The caller accepts 1 % beyond the limit; 2 % covers rounding.
        let km = km * 1.02;
        let lat_span = km / rules::KM_PER_DEGREE;
        // A degree of longitude is narrowest furthest from the equator,
        // and the distance is measured at the pair's mean latitude.
        let narrowest = (position.0.abs() + lat_span).min(89.0).to_radians().cos();
        let lon_span = km / (rules::KM_PER_DEGREE * narrowest);
        let (top, left) = cell((position.0 - lat_span, position.1 - lon_span));
        let (bottom, right) = cell((position.0 + lat_span, position.1 + lon_span));
        (top..=bottom)
            .flat_map(move |r| (left..=right).map(move |c| (r, c)))
            .filter_map(|square| self.cells.get(&square))
            .flatten()
            .copied()
    }

    /// The verdict on every therapist near enough to matter, for one
    /// patient: candidates, those waiting for a travel time, and the
    /// rejected with their rule (the explanation of the search).
    pub fn search(
        &self,
        patient: &Patient,
        history: &History,
        now: DateTime<Utc>,
        travel: &HashMap<String, f64>,
    ) -> Vec<Found> {
        let mut found = Vec::new();
        self.search_into(patient, history, now, travel, &mut found);
        found
    }

    /// [`Index::search`] into a buffer the caller reuses: a city's search
    /// finds thousands, and allocating that afresh for every patient costs
    /// more than the rules.
    pub fn search_into(
        &self,
        patient: &Patient,
        history: &History,
        now: DateTime<Utc>,
        travel: &HashMap<String, f64>,
        found: &mut Vec<Found>,
    ) {
        self.search_with(patient, history, None, true, now, travel, found);
    }

    /// [`Index::search_into`] with the therapists' standings of
    /// [`Index::standings`] (a batch of searches). `held` is false when no
    /// open inquiry holds the patient: then no therapist's pending patients
    /// are looked through for them.
    #[allow(clippy::too_many_arguments)]
    pub fn search_with(
        &self,
        patient: &Patient,
        history: &History,
        standings: Option<&[Standing<'_>]>,
        held: bool,
        now: DateTime<Utc>,
        travel: &HashMap<String, f64>,
        found: &mut Vec<Found>,
    ) {
        found.clear();
        let Some(home) = patient.position else {
            return;
        };
        let reach = patient
            .max_distance_km
            .unwrap_or(if patient.max_travel_minutes.is_some() {
                // A travel-time limit: no therapist beyond what the fastest
                // mode covers in that time (100 km/h door to door).
                patient.max_travel_minutes.unwrap_or(0.0) * 100.0 / 60.0
            } else {
                rules::DEFAULT_LIMIT_KM
            });
        // The distance once: it decides who is within reach, and the
        // rules take it as measured.
        let hits = self
            .near(home, reach)
            .filter_map(|i| {
                let km = rules::distance_km(home, self.therapists[i].position?);
                (km <= reach * 1.01).then_some((i, km))
            })
            .map(|(i, km)| {
                let therapist = &self.therapists[i];
                let minutes = if travel.is_empty() {
                    None
                } else {
                    travel.get(&therapist.id).copied()
                };
                let mut standing = match standings {
                    Some(standings) => standings[i],
                    None => history.standing(&therapist.id),
                };
                if !held {
                    standing.pending = None;
                }
                Found {
                    therapist: i,
                    km,
                    verdict: rules::check_standing(
                        patient, therapist, history, standing, now, minutes, km,
                    ),
                }
            });
        found.extend(hits);
    }

    /// The ranked candidates of one patient.
    pub fn candidates(
        &self,
        patient: &Patient,
        history: &History,
        now: DateTime<Utc>,
        travel: &HashMap<String, f64>,
    ) -> Vec<Ranked<'_>> {
        let found = self.search(patient, history, now, travel);
        self.ranked(found, now)
    }

    /// The same search over every therapist (the baseline the index is
    /// measured against, and what tests compare it with).
    pub fn candidates_by_scan(
        &self,
        patient: &Patient,
        history: &History,
        now: DateTime<Utc>,
        travel: &HashMap<String, f64>,
    ) -> Vec<Ranked<'_>> {
        let found = (0..self.therapists.len()).map(|i| {
            let therapist = &self.therapists[i];
            Found {
                therapist: i,
                km: match (patient.position, therapist.position) {
                    (Some(a), Some(b)) => rules::distance_km(a, b),
                    _ => f64::MAX,
                },
                verdict: rules::check(
                    patient,
                    therapist,
                    history,
                    now,
                    travel.get(&therapist.id).copied(),
                ),
            }
        });
        self.ranked(found, now)
    }

    /// The candidates among `found`, ranked.
    fn ranked(
        &self,
        found: impl IntoIterator<Item = Found>,
        now: DateTime<Utc>,
    ) -> Vec<Ranked<'_>> {
        let mut ranked: Vec<Ranked<'_>> = found
            .into_iter()
            .filter_map(|found| match found.verdict {
                Verdict::Candidate { km, minutes } => {
                    Some((&self.therapists[found.therapist], km, minutes))
                }
                _ => None,
            })
            .collect();
        rules::rank(&mut ranked, now.date_naive());
        ranked
    }
}

/// Synthetic therapists and patients spread over Germany (tests and the
/// benchmark): deterministic, no real data.
pub mod synthetic {
    use crate::rules::{Gender, GenderPreference, Patient, Procedure, Therapist};
    use std::collections::HashSet;

    fn unit(n: u64, salt: u64) -> f64 {
        let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 27;
        (x % 1_000_000) as f64 / 1_000_000.0
    }

    /// A position in Germany's bounding box, denser around a few cities.
    pub fn position(n: u64, salt: u64) -> (f64, f64) {
        const CITIES: [(f64, f64); 6] = [
            (52.52, 13.40),
            (53.55, 9.99),
            (48.14, 11.58),
            (50.94, 6.96),
            (50.11, 8.68),
            (51.34, 12.37),
        ];
        if unit(n, salt ^ 1) < 0.6 {
            let (lat, lon) = CITIES[(unit(n, salt ^ 2) * 6.0) as usize % 6];
            (
                lat + (unit(n, salt ^ 3) - 0.5) * 0.5,
                lon + (unit(n, salt ^ 4) - 0.5) * 0.8,
            )
        } else {
            (
                47.4 + unit(n, salt ^ 5) * 7.5,
                6.0 + unit(n, salt ^ 6) * 8.8,
            )
        }
    }

    /// Therapist `n`.
    pub fn therapist(n: u64) -> Therapist {
        let procedures = [
            Procedure::Behavioural,
            Procedure::Psychodynamic,
            Procedure::Analytic,
            Procedure::Systemic,
        ];
        Therapist {
            id: format!("t-{n}"),
            gender: [Gender::Female, Gender::Male, Gender::Diverse]
                [(unit(n, 11) * 2.2) as usize % 3],
            position: Some(position(n, 12)),
            procedures: vec![procedures[(unit(n, 13) * 4.0) as usize % 4]],
            treats_adults: unit(n, 14) < 0.85,
            treats_children: unit(n, 14) > 0.7,
            blocked: unit(n, 15) < 0.02,
            min_age: None,
            max_age: None,
            genders: Vec::new(),
            prefers_group: unit(n, 16) < 0.1,
            free_from: None,
            has_email: unit(n, 17) < 0.8,
            last_contact: None,
        }
    }

    /// Patient `n`.
    pub fn patient(n: u64) -> Patient {
        Patient {
            id: format!("p-{n}"),
            age: 16 + (unit(n, 21) * 60.0) as i32,
            gender: if unit(n, 22) < 0.6 {
                Gender::Female
            } else {
                Gender::Male
            },
            position: Some(position(n, 23)),
            max_distance_km: Some(5.0 + unit(n, 24) * 25.0),
            max_travel_minutes: None,
            preferred_gender: [
                GenderPreference::Any,
                GenderPreference::Female,
                GenderPreference::Male,
            ][(unit(n, 25) * 2.4) as usize % 3],
            preferred_procedures: Vec::new(),
            excluded: HashSet::new(),
            open_to_group: unit(n, 26) < 0.4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moved_and_removed_therapists_are_found_where_they_are() {
        let berlin = (52.52, 13.40);
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
            position: Some((48.14, 11.58)),
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
}
