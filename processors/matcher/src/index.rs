//! The candidate search: therapists on a grid of 10 km squares in memory,
//! so a search looks only at the squares within the patient's limit
//! instead of every therapist in Germany.

use crate::rules::{
    self, FastMap, History, Judged, Patient, Ranked, Standing, Therapist, Traits, Verdict, Wants,
};
use chrono::{DateTime, Utc};
use psymatch_geo::grid::cell;
use psymatch_geo::{KM_PER_DEGREE, Position, Spot};
use std::collections::HashMap;

/// A therapist in its grid square: what a search reads of every practice
/// within reach, side by side in memory (the whole records lie scattered
/// and are read only for the few that matter).
#[derive(Debug, Clone, Copy)]
struct Entry {
    spot: Spot,
    slot: u32,
    traits: Traits,
}

/// Therapists by grid square.
#[derive(Debug, Default)]
pub struct Index {
    therapists: Vec<Therapist>,
    cells: FastMap<(i64, i64), Vec<Entry>>,
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

/// How far [`Index::nearest_beyond`] looks: Germany from end to end.
pub const NEAREST_BEYOND_KM: f64 = 900.0;

/// What one search found ([`Index::survey`]).
#[derive(Debug, Default)]
pub struct Survey {
    /// The candidates: slot, distance in km, travel minutes when known.
    pub candidates: Vec<(usize, f64, Option<f64>)>,
    /// Therapists (slots) whose travel time decides.
    pub needs_time: Vec<usize>,
    /// Some therapist is only pending or cooling (the search is not exhausted).
    pub waiting: bool,
    /// Therapists within reach.
    pub considered: usize,
    /// The nearest therapists that are not candidates, as an explanation
    /// shows them: those waiting for a travel time first, then the
    /// rejected, each by distance.
    pub others: Vec<Found>,
    /// Every non-candidate: order, km, slot.
    rest: Vec<(u8, f64, u32)>,
}

impl Survey {
    fn clear(&mut self) {
        self.candidates.clear();
        self.needs_time.clear();
        self.waiting = false;
        self.considered = 0;
        self.others.clear();
        self.rest.clear();
    }
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
        if let Some(entry) = self.entry(slot) {
            let square = cell(entry.spot.position);
            self.cells.entry(square).or_default().push(entry);
        }
    }

    /// The grid entry of the therapist at `slot` (none without a position).
    fn entry(&self, slot: usize) -> Option<Entry> {
        let therapist = &self.therapists[slot];
        Some(Entry {
            spot: Spot::of(therapist.position?),
            slot: slot as u32,
            traits: Traits::of(therapist),
        })
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
            square.retain(|e| e.slot as usize != slot);
        }
    }

    /// Every therapist within `reach` km of `home` (and up to 1 % beyond:
    /// the rules decide at the limit), with its distance. The squares
    /// read are those overlapping the box around `home`, not the
    /// patient's square widened by whole squares: a 25 km search then
    /// reads about half as many therapists.
    fn within(&self, home: Position, reach: f64) -> impl Iterator<Item = (&Entry, f64)> + '_ {
        // The caller accepts 1 % beyond the limit; 2 % covers rounding.
        let km = reach * 1.02;
        let lat_span = km / KM_PER_DEGREE;
        // A degree of longitude is narrowest furthest from the equator,
        // and the distance is measured at the pair's mean latitude.
        let narrowest = (home.latitude.abs() + lat_span)
            .min(89.0)
            .to_radians()
            .cos();
        let lon_span = km / (KM_PER_DEGREE * narrowest);
        let (top, left) = cell(Position::new(
            home.latitude - lat_span,
            home.longitude - lon_span,
        ));
        let (bottom, right) = cell(Position::new(
            home.latitude + lat_span,
            home.longitude + lon_span,
        ));
        let home = Spot::of(home);
        (top..=bottom)
            .flat_map(move |r| (left..=right).map(move |c| (r, c)))
            .filter_map(|square| self.cells.get(&square))
            .flatten()
            .filter_map(move |entry| {
                let km = home.km_to(&entry.spot);
                (km <= reach * 1.01).then_some((entry, km))
            })
    }

    /// How far a patient's search reaches in km.
    pub fn reach(patient: &Patient) -> f64 {
        patient
            .max_distance_km
            .unwrap_or(if patient.max_travel_minutes.is_some() {
                // A travel-time limit: no therapist beyond what the fastest
                // mode covers in that time (100 km/h door to door).
                patient.max_travel_minutes.unwrap_or(0.0) * 100.0 / 60.0
            } else {
                rules::DEFAULT_LIMIT_KM
            })
    }

    /// The verdict on the therapist of `entry` at `km` (see
    /// [`rules::judge`]); the whole record is read only for a travel time
    /// or an exclusion list.
    #[allow(clippy::too_many_arguments)]
    fn judge(
        &self,
        patient: &Patient,
        wants: &Wants,
        entry: &Entry,
        km: f64,
        history: &History,
        standing: Standing<'_>,
        now: DateTime<Utc>,
        travel: &HashMap<String, f64>,
    ) -> Verdict {
        let slot = entry.slot as usize;
        let id = || self.therapists[slot].id.as_str();
        let minutes = if travel.is_empty() {
            None
        } else {
            travel.get(id()).copied()
        };
        let judged = Judged {
            wants,
            traits: entry.traits,
            id: &id,
            standing,
            minutes,
            km,
        };
        rules::judge(patient, history, now, judged)
    }

    /// The verdict on every therapist near enough to matter, for one
    /// patient: candidates, those waiting for a travel time, and the
    /// rejected with their rule (every decision of the search). What the
    /// tests hold [`Index::survey`] to.
    #[cfg(test)]
    fn search(
        &self,
        patient: &Patient,
        history: &History,
        now: DateTime<Utc>,
        travel: &HashMap<String, f64>,
    ) -> Vec<Found> {
        let Some(home) = patient.position else {
            return Vec::new();
        };
        let wants = Wants::of(patient);
        self.within(home, Self::reach(patient))
            .map(|(entry, km)| {
                let slot = entry.slot as usize;
                let standing = history.standing(&self.therapists[slot].id);
                Found {
                    therapist: slot,
                    km,
                    verdict: self.judge(patient, &wants, entry, km, history, standing, now, travel),
                }
            })
            .collect()
    }

    /// The `count` therapists nearest to the patient's home beyond the
    /// patient's reach, each with its verdict (rule 1, unless another rule
    /// comes first): what a person asking "why was nobody asked?" reads
    /// when no practice is within reach. The circle widens until it holds
    /// them, up to [`NEAREST_BEYOND_KM`].
    pub fn nearest_beyond(
        &self,
        patient: &Patient,
        history: &History,
        now: DateTime<Utc>,
        travel: &HashMap<String, f64>,
        count: usize,
    ) -> Vec<Found> {
        let Some(home) = patient.position else {
            return Vec::new();
        };
        let reach = Self::reach(patient);
        let wants = Wants::of(patient);
        let mut radius = (reach * 2.0).max(10.0);
        loop {
            let mut beyond: Vec<(&Entry, f64)> = self
                .within(home, radius)
                .filter(|(_, km)| *km > reach * 1.01)
                .collect();
            if beyond.len() >= count || radius >= NEAREST_BEYOND_KM {
                beyond.sort_by(|a, b| a.1.total_cmp(&b.1));
                return beyond
                    .into_iter()
                    .take(count)
                    .map(|(entry, km)| {
                        let standing = history.standing(&self.therapists[entry.slot as usize].id);
                        Found {
                            therapist: entry.slot as usize,
                            km,
                            verdict: self
                                .judge(patient, &wants, entry, km, history, standing, now, travel),
                        }
                    })
                    .collect();
            }
            radius = (radius * 2.0).min(NEAREST_BEYOND_KM);
        }
    }

    /// One patient's search as matching needs it, into `into` (reused: a
    /// city's search looks at thousands of practices, and allocating for
    /// each patient costs more than the rules). Only the candidates and
    /// the nearest `shown` others are kept; the rest is counted.
    /// `standings` are [`Index::standings`] of `history` (`None`: looked
    /// up by id, for a single search); `held` is false
    /// when no open inquiry holds the patient: then no therapist's pending
    /// patients are looked through for them.
    #[allow(clippy::too_many_arguments)]
    pub fn survey(
        &self,
        patient: &Patient,
        history: &History,
        standings: Option<&[Standing<'_>]>,
        held: bool,
        now: DateTime<Utc>,
        travel: &HashMap<String, f64>,
        shown: usize,
        into: &mut Survey,
    ) {
        into.clear();
        let Some(home) = patient.position else {
            return;
        };
        let wants = Wants::of(patient);
        let standing = |slot: usize| {
            let mut standing = match standings {
                Some(standings) => standings[slot],
                None => history.standing(&self.therapists[slot].id),
            };
            if !held {
                standing.pending = None;
            }
            standing
        };
        for (entry, km) in self.within(home, Self::reach(patient)) {
            let slot = entry.slot as usize;
            into.considered += 1;
            let verdict = self.judge(
                patient,
                &wants,
                entry,
                km,
                history,
                standing(slot),
                now,
                travel,
            );
            match verdict {
                Verdict::Candidate { km, minutes } => into.candidates.push((slot, km, minutes)),
                Verdict::NeedsTravelTime { .. } => {
                    into.needs_time.push(slot);
                    into.rest.push((0, km, entry.slot));
                }
                Verdict::Rejected(rule) => {
                    into.waiting |= matches!(rule, rules::Rule::Pending | rules::Rule::Cooling(_));
                    into.rest.push((1, km, entry.slot));
                }
            }
        }
        // The nearest others, waiting for a travel time before rejected;
        // only they are judged again for their verdict.
        let by_order =
            |a: &(u8, f64, u32), b: &(u8, f64, u32)| a.0.cmp(&b.0).then(a.1.total_cmp(&b.1));
        if into.rest.len() > shown && shown > 0 {
            into.rest.select_nth_unstable_by(shown - 1, by_order);
        }
        into.rest.truncate(shown);
        into.rest.sort_by(by_order);
        for &(_, km, slot) in &into.rest {
            let slot = slot as usize;
            let Some(entry) = self.entry(slot) else {
                continue;
            };
            into.others.push(Found {
                therapist: slot,
                km,
                verdict: self.judge(
                    patient,
                    &wants,
                    &entry,
                    km,
                    history,
                    standing(slot),
                    now,
                    travel,
                ),
            });
        }
    }

    /// The ranked candidates of one patient, in the baseline order.
    pub fn candidates(
        &self,
        patient: &Patient,
        history: &History,
        now: DateTime<Utc>,
        travel: &HashMap<String, f64>,
    ) -> Vec<Ranked<'_>> {
        let mut survey = Survey::default();
        self.survey(patient, history, None, true, now, travel, 0, &mut survey);
        let mut ranked = self.to_rank(&survey);
        rules::rank(&mut ranked, now.date_naive(), &rules::RankKey::ALL);
        ranked
    }

    /// The candidates of `survey` as the ranking takes them.
    pub fn to_rank(&self, survey: &Survey) -> Vec<Ranked<'_>> {
        survey
            .candidates
            .iter()
            .map(|&(slot, km, minutes)| (&self.therapists[slot], km, minutes))
            .collect()
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
        // The home's half-latitude terms once, as the index does: the
        // scan differs by what it reads, not by how it measures.
        let home = patient.position.map(Spot::of);
        let mut ranked: Vec<Ranked<'_>> = self
            .therapists
            .iter()
            .filter_map(|therapist| {
                let km = home?.km_to(&Spot::of(therapist.position?));
                let verdict = rules::check_at(
                    patient,
                    therapist,
                    history,
                    now,
                    travel.get(&therapist.id).copied(),
                    km,
                );
                match verdict {
                    Verdict::Candidate { km, minutes } => Some((therapist, km, minutes)),
                    _ => None,
                }
            })
            .collect();
        rules::rank(&mut ranked, now.date_naive(), &rules::RankKey::ALL);
        ranked
    }
}

/// Synthetic therapists and patients spread over Germany (tests and the
/// benchmark): deterministic, no real data.
pub mod synthetic {
    use crate::rules::{Gender, GenderPreference, Patient, Procedure, Therapist};
    use psymatch_geo::Position;
    use std::collections::HashSet;

    fn unit(n: u64, salt: u64) -> f64 {
        let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x ^= x >> 27;
        (x % 1_000_000) as f64 / 1_000_000.0
    }

    /// A position in Germany's bounding box, denser around a few cities.
    pub fn position(n: u64, salt: u64) -> Position {
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
            Position::new(
                lat + (unit(n, salt ^ 3) - 0.5) * 0.5,
                lon + (unit(n, salt ^ 4) - 0.5) * 0.8,
            )
        } else {
            Position::new(
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
mod tests;
