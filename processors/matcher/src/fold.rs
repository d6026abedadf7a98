//! Folding the other processors' events into the [`World`]: profiles,
//! therapists, positions and travel times, emails sent or failed. Folding
//! only records what changed and which searches to run; the searches run
//! at the end of the batch ([`crate::search`]).

use crate::input::TherapistChange;
use crate::processor::Matcher;
use crate::records::{Profile, SearchRecord, SearchStatus, TherapistRecord};
use crate::state::World;
use chrono::{DateTime, Utc};
use psymatch_geo::{Position, distance_km};
use std::collections::{BTreeMap, HashSet};

impl Matcher {
    /// A patient's profile: the search starts, changes, pauses or ends.
    pub(crate) fn profile(
        &self,
        world: &mut World,
        id: String,
        profile: Profile,
        reason: Option<String>,
        now: DateTime<Utc>,
    ) {
        let requested = profile.status;
        let stored = world.searches.remove(&id);
        let was_paused = stored
            .as_ref()
            .is_some_and(|s| s.status == SearchStatus::Paused);
        let mut search = match stored {
            Some(mut search) => {
                // Travel times hold for one home and one mode of transport.
                let moved = search.profile.coordinates != profile.coordinates
                    || search.profile.transport != profile.transport;
                if moved {
                    search.travel.clear();
                    search.travel_request = None;
                }
                search.profile = profile;
                search
            }
            None => SearchRecord {
                profile,
                status: SearchStatus::Active,
                placed: None,
                excluded: Default::default(),
                travel: BTreeMap::new(),
                travel_request: None,
                exhausted: false,
                since: now,
            },
        };
        // A placement stands until the search is cancelled.
        if search.status != SearchStatus::Placed || requested == SearchStatus::Cancelled {
            search.status = requested;
        }
        search.exhausted = false;
        let paused = search.status == SearchStatus::Paused && !was_paused;
        let active = search.status == SearchStatus::Active;
        world.put_search(&id, search);
        if paused {
            world.pending_pause.push((id.clone(), reason));
        }
        if active {
            world.to_match.insert(id.clone());
            world.to_explain.insert(id);
        }
    }

    /// A fact about a therapist; a practice that opened up (listed,
    /// unblocked, new free places or preferences) runs the searches near it.
    pub(crate) fn therapist(
        &self,
        world: &mut World,
        id: String,
        change: TherapistChange,
        now: DateTime<Utc>,
    ) {
        let mut therapist = world
            .therapists
            .get(&id)
            .cloned()
            .unwrap_or_else(|| TherapistRecord::new(now));
        let opened = match change {
            TherapistChange::Details { details, source } => {
                therapist.details = Some(*details);
                therapist.source = source;
                therapist.removed = false;
                true
            }
            TherapistChange::Removed => {
                therapist.removed = true;
                false
            }
            TherapistChange::Blocked(reason) => {
                therapist.blocked = Some(reason);
                false
            }
            TherapistChange::Unblocked => {
                therapist.blocked = None;
                true
            }
            TherapistChange::FreePlaces {
                individual_from,
                group_from,
            } => {
                therapist.individual_from = individual_from;
                therapist.group_from = group_from;
                true
            }
            TherapistChange::Preferences {
                min_age,
                max_age,
                genders,
                prefers_group,
            } => {
                therapist.min_age = min_age;
                therapist.max_age = max_age;
                therapist.genders = genders;
                therapist.prefers_group = prefers_group;
                true
            }
        };
        world.put_therapist(&id, therapist);
        if opened {
            world.changed_therapists.insert(id);
        }
    }

    /// The geocoder placed a practice.
    pub(crate) fn practice_placed(
        &self,
        world: &mut World,
        id: &str,
        position: Position,
        now: DateTime<Utc>,
    ) {
        // The position may overtake the therapist's own event (other
        // topics, other partitions): it waits in a record of its own.
        let mut t = world
            .therapists
            .get(id)
            .cloned()
            .unwrap_or_else(|| TherapistRecord::new(now));
        t.geocoded = Some(position);
        world.put_therapist(id, t);
        world.changed_therapists.insert(id.to_string());
    }

    /// The geocoder answered a search's travel-time request: the search
    /// runs again with the times.
    pub(crate) fn travel_times(
        &self,
        world: &mut World,
        request: &str,
        patient: String,
        seconds: Vec<(String, f64)>,
    ) {
        let Some(mut search) = world.searches.get(&patient).cloned() else {
            return;
        };
        let Some((awaited, asked)) = search.travel_request.clone() else {
            return;
        };
        if awaited != request {
            return; // an answer for an earlier home or mode
        }
        let mut answered = HashSet::new();
        for (therapist, seconds) in seconds {
            search.travel.insert(therapist.clone(), seconds / 60.0);
            answered.insert(therapist);
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

    /// An inquiry email went out: the inquiries are sent, the practice
    /// was contacted.
    pub(crate) fn email_sent(
        &self,
        world: &mut World,
        inquiries: &[String],
        at: Option<DateTime<Utc>>,
    ) {
        let mut practices = Vec::new();
        for id in inquiries {
            if let Some(mut inquiry) = world.inquiries.get(id).cloned() {
                inquiry.sent_at = inquiry.sent_at.or(at);
                practices.push(inquiry.email.clone());
                world.put_inquiry(id, inquiry);
            }
        }
        practices.dedup();
        for email in practices {
            for member in world.members_of(&email) {
                world.update_therapist(&member, |t| t.last_contact = t.last_contact.max(at));
            }
        }
    }

    /// An inquiry email failed for good: its patients are free again.
    pub(crate) fn email_failed(&self, world: &mut World, inquiries: &[String]) {
        for id in inquiries {
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
}

/// Erasure: the search goes; unless the patient keeps the contact log, so
/// does every trace of the id in inquiries (an inquiry left empty goes).
pub(crate) fn erase(world: &mut World, patient: &str, keep_log: bool) {
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
