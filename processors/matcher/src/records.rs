//! The records the matcher keeps, as Rust types: therapists, searches with
//! their pseudonymous profiles, inquiries. They are decoded once, where an
//! event comes in or a row is loaded, and stored as jsonb in the same
//! shape as the events' JSON (enums as their schema symbols), so rows
//! written before the types existed still read. Fields the matcher only
//! passes on (a profile's summary for the inquiry email, the directory's
//! address and phone) are kept as they came.

use crate::inquiries::Contact;
use crate::rules::{Gender, GenderPreference, Patient, Procedure, Therapist};
use chrono::{DateTime, NaiveDate, Utc};
use psymatch_geo::Position;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashSet};

/// The state of a patient's search (`psymatch.SearchStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SearchStatus {
    /// Looking for a place.
    Active,
    /// Paused by the patient: no new inquiries.
    Paused,
    /// A therapist accepted.
    Placed,
    /// Given up.
    Cancelled,
}

impl SearchStatus {
    /// Every status, for the metric's labels.
    pub const ALL: [SearchStatus; 4] = [
        SearchStatus::Active,
        SearchStatus::Paused,
        SearchStatus::Placed,
        SearchStatus::Cancelled,
    ];

    /// The schema's symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            SearchStatus::Active => "ACTIVE",
            SearchStatus::Paused => "PAUSED",
            SearchStatus::Placed => "PLACED",
            SearchStatus::Cancelled => "CANCELLED",
        }
    }
}

/// How a patient travels (`psymatch.TransportMode`): the geocoder's mode
/// for travel times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Transport {
    /// By car.
    Car,
    /// By bus and train.
    PublicTransport,
    /// On foot.
    Walking,
    /// By bicycle.
    Bicycle,
}

/// A therapist's answer about one patient (`psymatch.AnswerOutcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AnswerOutcome {
    /// A place is offered.
    Accepted,
    /// No capacity now: cooling, then the practice may be asked again.
    RejectedNoCapacity,
    /// Not suitable: never this practice again for the patient.
    RejectedNotSuitable,
    /// Another reason.
    RejectedOther,
    /// The patient did not come.
    NoShow,
    /// The patient is in sessions there.
    InSessions,
}

/// What inquiries may tell a therapist about a patient
/// (`psymatch.PatientSummary`): the matcher reads whether the patient is
/// open to group therapy and passes the rest on to the email as it came.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Open to group therapy (rule 7).
    #[serde(default)]
    pub open_to_group: bool,
    /// The other fields, for the inquiry email.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// The pseudonymous search profile intake publishes
/// (`psymatch.SearchProfile`), with what matching decides on typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Age in years.
    pub age: i32,
    /// Gender.
    pub gender: Gender,
    /// Home position, rounded; `None` until geocoded.
    #[serde(default)]
    pub coordinates: Option<Position>,
    /// How the patient travels.
    pub transport: Transport,
    /// Largest distance in km.
    #[serde(default)]
    pub max_distance_km: Option<f64>,
    /// Largest travel time in minutes.
    #[serde(default)]
    pub max_travel_minutes: Option<f64>,
    /// Preferred therapist gender.
    #[serde(default = "any_gender")]
    pub preferred_therapist_gender: GenderPreference,
    /// Preferred procedures; empty: any.
    #[serde(default)]
    pub preferred_procedures: Vec<Procedure>,
    /// Therapists the patient excluded.
    #[serde(default)]
    pub excluded_therapists: Vec<String>,
    /// What inquiries may tell a therapist.
    pub summary: Summary,
    /// The search's state as intake knows it.
    pub status: SearchStatus,
    /// Fields matching does not use (postcode, languages, ids).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

fn any_gender() -> GenderPreference {
    GenderPreference::Any
}

/// The directory's record of a practice (`psymatch.TherapistDetails`),
/// with what matching decides on typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Details {
    /// Gender.
    pub gender: Gender,
    /// Position, when the directory has one.
    #[serde(default)]
    pub coordinates: Option<Position>,
    /// The practice's email address.
    #[serde(default)]
    pub email: Option<String>,
    /// Procedures offered.
    #[serde(default)]
    pub procedures: Vec<Procedure>,
    /// Age groups treated (`ADULTS`, `CHILDREN_AND_ADOLESCENTS`).
    #[serde(default)]
    pub age_groups: Vec<String>,
    /// Last name.
    #[serde(default)]
    pub last_name: String,
    /// Title (Dr., Prof., ...).
    #[serde(default)]
    pub title: Option<String>,
    /// Form of address.
    #[serde(default = "no_salutation")]
    pub salutation: String,
    /// The rest of the directory's record (address, phone, hours).
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

fn no_salutation() -> String {
    "NONE".to_string()
}

/// A therapist as the matcher stores it: the directory's facts and the
/// decisions of people, kept apart so a scrape never undoes a decision.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TherapistRecord {
    /// The latest `TherapistDetails` (scraper or a person); `None` while
    /// only decisions about the therapist are known.
    pub details: Option<Details>,
    /// Who published the details (`116117`, `manual`, ...).
    pub source: Option<String>,
    /// Position from the geocoder, for details without coordinates.
    #[serde(default, with = "psymatch_geo::optional_pair")]
    pub geocoded: Option<Position>,
    /// Closed practice (the scraper no longer finds it).
    pub removed: bool,
    /// Blocked, with the reason.
    pub blocked: Option<String>,
    /// Earliest free place for individual therapy.
    pub individual_from: Option<NaiveDate>,
    /// Earliest free place for group therapy.
    pub group_from: Option<NaiveDate>,
    /// Youngest patient the therapist takes.
    pub min_age: Option<i32>,
    /// Oldest patient the therapist takes.
    pub max_age: Option<i32>,
    /// Patient genders the therapist takes; empty: any.
    pub genders: Vec<Gender>,
    /// Prefers group therapy.
    pub prefers_group: bool,
    /// When the matcher first heard of the therapist (the oldest record
    /// of a practice is written to when nothing else decides).
    pub first_seen: DateTime<Utc>,
    /// Last inquiry email sent to the practice.
    pub last_contact: Option<DateTime<Utc>>,
    /// No contact before this (4 weeks after any answer).
    pub cooling_until: Option<DateTime<Utc>>,
}

impl TherapistRecord {
    /// A therapist first heard of now.
    pub fn new(now: DateTime<Utc>) -> TherapistRecord {
        TherapistRecord {
            details: None,
            source: None,
            geocoded: None,
            removed: false,
            blocked: None,
            individual_from: None,
            group_from: None,
            min_age: None,
            max_age: None,
            genders: Vec::new(),
            prefers_group: false,
            first_seen: now,
            last_contact: None,
            cooling_until: None,
        }
    }

    /// The practice's position: the directory's, else the geocoder's.
    pub fn position(&self) -> Option<Position> {
        self.details.as_ref()?.coordinates.or(self.geocoded)
    }

    /// The practice's email address, lower case.
    pub fn email(&self) -> Option<String> {
        let email = self.details.as_ref()?.email.as_deref()?.trim();
        (!email.is_empty()).then(|| email.to_lowercase())
    }

    /// The rules' view; `None` until the directory knows the therapist.
    pub fn view(&self, id: &str) -> Option<Therapist> {
        let details = self.details.as_ref()?;
        let treats = |group: &str| details.age_groups.iter().any(|g| g == group);
        Some(Therapist {
            id: id.to_string(),
            gender: details.gender,
            position: if self.removed { None } else { self.position() },
            procedures: details.procedures.to_vec(),
            // Without a stated age group the directory lists adults.
            treats_adults: details.age_groups.is_empty() || treats("ADULTS"),
            treats_children: treats("CHILDREN_AND_ADOLESCENTS"),
            blocked: self.blocked.is_some(),
            min_age: self.min_age,
            max_age: self.max_age,
            genders: self.genders.to_vec(),
            prefers_group: self.prefers_group,
            free_from: match (self.individual_from, self.group_from) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            has_email: self.email().is_some(),
            last_contact: self.last_contact,
        })
    }

    /// What composing needs.
    pub fn contact(&self) -> Option<Contact> {
        let details = self.details.as_ref()?;
        Some(Contact {
            email: self.email(),
            last_name: details.last_name.clone(),
            title: details.title.clone(),
            first_seen: self.first_seen,
        })
    }

    /// The `Recipient` of an email to this therapist.
    pub fn recipient(&self) -> Value {
        let details = self.details.as_ref();
        serde_json::json!({
            "email": self.email().unwrap_or_default(),
            "salutation": details.map_or("NONE", |d| d.salutation.as_str()),
            "title": details.and_then(|d| d.title.clone()),
            "last_name": details.map_or("", |d| d.last_name.as_str()),
        })
    }
}

/// A search as the matcher stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchRecord {
    /// The latest profile from intake (pseudonymous).
    pub profile: Profile,
    /// The search's state here (a placement stands until cancelled).
    pub status: SearchStatus,
    /// The placement, once a therapist accepted: (therapist, inquiry).
    pub placed: Option<(String, String)>,
    /// Therapists excluded for this search by a person.
    pub excluded: BTreeSet<String>,
    /// Travel minutes by the patient's mode, by therapist.
    pub travel: BTreeMap<String, f64>,
    /// The travel-time request awaited, with the therapists it asked for.
    pub travel_request: Option<(String, Vec<String>)>,
    /// A search-exhausted event was published and nothing changed since.
    pub exhausted: bool,
    /// When the search began (longest waiting is served first).
    pub since: DateTime<Utc>,
}

impl SearchRecord {
    /// The rules' view of the search of patient `id` under `rules`: a
    /// patient who set no distance and no travel time gets the rules'
    /// default distance.
    pub fn view(&self, id: &str, rules: &crate::rulebook::Rulebook) -> Patient {
        let p = &self.profile;
        let mut excluded: HashSet<String> = p.excluded_therapists.iter().cloned().collect();
        excluded.extend(self.excluded.iter().cloned());
        Patient {
            id: id.to_string(),
            age: p.age,
            gender: p.gender,
            position: p.coordinates,
            max_distance_km: p.max_distance_km.or(p
                .max_travel_minutes
                .is_none()
                .then_some(rules.default_distance_km)),
            max_travel_minutes: p.max_travel_minutes,
            preferred_gender: p.preferred_therapist_gender,
            preferred_procedures: p.preferred_procedures.to_vec(),
            excluded,
            open_to_group: p.summary.open_to_group,
        }
    }
}

/// An inquiry as the matcher stores it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InquiryRecord {
    /// The practice owner written to.
    pub therapist_id: String,
    /// The practice's address.
    pub email: String,
    /// Pseudonymous patient ids.
    pub patients: Vec<String>,
    /// Answers by patient.
    pub answers: BTreeMap<String, AnswerOutcome>,
    /// When composed.
    pub created_at: DateTime<Utc>,
    /// When the email went out.
    pub sent_at: Option<DateTime<Utc>>,
    /// When the therapist answered.
    pub answered_at: Option<DateTime<Utc>>,
    /// The email failed for good: the patients are free again.
    pub failed: bool,
    /// A follow-up call was asked for.
    pub follow_up_due: bool,
    /// Taken back before its email went out (`email.withdraw_inquiry`):
    /// answered by phone first, or nobody left in it.
    #[serde(default)]
    pub withdrawn: bool,
}

impl InquiryRecord {
    /// Neither answered nor failed nor withdrawn: its patients are
    /// pending there.
    pub fn open(&self) -> bool {
        self.answered_at.is_none() && !self.failed && !self.withdrawn
    }

    /// Its email has not gone out and may still: a withdrawal stops it.
    pub fn unsent(&self) -> bool {
        self.sent_at.is_none() && !self.failed && !self.withdrawn
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn profile() -> Value {
        json!({"patient_id": "p-1", "age": 34, "gender": "FEMALE", "postcode": "10115",
               "coordinates": {"latitude": 52.53, "longitude": 13.38}, "transport": "CAR",
               "max_distance_km": 10, "max_travel_minutes": null,
               "preferred_therapist_gender": "ANY", "preferred_procedures": ["SYSTEMIC"],
               "languages": [], "excluded_therapists": ["t-9"],
               "summary": {"patient_id": "p-1", "age": 34, "gender": "FEMALE", "symptoms": ["low mood"],
                           "insurer": "Beispiel-Krankenkasse", "therapy_experience": false,
                           "open_to_group": true, "availability": []},
               "status": "ACTIVE"})
    }

    #[test]
    fn a_profile_decodes_typed_and_stores_as_it_came() {
        let decoded: Profile = serde_json::from_value(profile()).unwrap();
        assert_eq!(decoded.status, SearchStatus::Active);
        assert_eq!(decoded.transport, Transport::Car);
        assert_eq!(decoded.max_distance_km, Some(10.0));
        assert_eq!(decoded.preferred_procedures, vec![Procedure::Systemic]);
        assert!(decoded.summary.open_to_group);
        // Stored and passed on: the same fields, the summary whole.
        let stored = serde_json::to_value(&decoded).unwrap();
        assert_eq!(stored["summary"], profile()["summary"]);
        assert_eq!(stored["postcode"], "10115");
        let again: Profile = serde_json::from_value(stored).unwrap();
        assert_eq!(again, decoded);
    }

    #[test]
    fn the_rules_view_joins_both_exclusion_lists() {
        let search = SearchRecord {
            profile: serde_json::from_value(profile()).unwrap(),
            status: SearchStatus::Active,
            placed: None,
            excluded: ["t-3".to_string()].into_iter().collect(),
            travel: BTreeMap::new(),
            travel_request: None,
            exhausted: false,
            since: Utc::now(),
        };
        let view = search.view("p-1", &Default::default());
        assert!(view.excluded.contains("t-9") && view.excluded.contains("t-3"));
        assert_eq!(view.position, Some(Position::new(52.53, 13.38)));
        assert!(view.open_to_group);
    }

    #[test]
    fn a_therapist_row_stored_before_the_types_still_reads() {
        // As the matcher wrote rows while details were raw JSON.
        let row = json!({
            "details": {"salutation": "FRAU", "title": "Dr.", "first_name": "Test", "last_name": "Praxis",
                        "gender": "FEMALE", "address": {"street": "Teststrasse", "house_number": "1",
                                                        "postcode": "10115", "city": "Berlin"},
                        "coordinates": null, "phone": "030 000000", "fax": null,
                        "email": "Praxis@Example.org", "website": null, "statutory_licence": true,
                        "languages": [], "procedures": ["BEHAVIOURAL"], "age_groups": ["ADULTS"],
                        "settings": ["INDIVIDUAL"], "phone_hours": [], "consultation_hours": []},
            "source": "116117", "geocoded": [52.5, 13.4], "removed": false, "blocked": null,
            "individual_from": "2026-12-01", "group_from": null, "min_age": 18, "max_age": null,
            "genders": ["FEMALE"], "prefers_group": false, "first_seen": "2026-11-01T00:00:00Z",
            "last_contact": null, "cooling_until": null});
        let record: TherapistRecord = serde_json::from_value(row.clone()).unwrap();
        assert_eq!(record.position(), Some(Position::new(52.5, 13.4)));
        assert_eq!(record.email().as_deref(), Some("praxis@example.org"));
        let view = record.view("t-1").unwrap();
        assert_eq!(view.genders, vec![Gender::Female]);
        assert!(view.treats_adults && !view.treats_children);
        // Written back in the same shape: the address and phone stay.
        assert_eq!(serde_json::to_value(&record).unwrap(), row);
    }

    #[test]
    fn an_unknown_status_is_refused_with_its_symbol() {
        let mut bad = profile();
        bad["status"] = json!("SOMEWHERE");
        let error = serde_json::from_value::<Profile>(bad).unwrap_err();
        assert!(error.to_string().contains("SOMEWHERE"), "{error}");
    }
}
