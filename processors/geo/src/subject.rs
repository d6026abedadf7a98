//! Whom a geocoding request is for (`psymatch.GeocodingSubject`): the
//! request carries it, the geocoder copies it onto the result, and the
//! processor that asked routes the result by its kind, not by the shape
//! of the request id.

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// What a geocoding request was for (`psymatch.GeocodingKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Kind {
    /// A patient's home (intake asks; the address travels sealed).
    PatientHome,
    /// A practice without coordinates in the directory.
    Practice,
    /// The travel times of a patient's search (the matcher asks).
    TravelTimes,
}

/// Whom a geocoding request is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subject {
    /// What for.
    pub kind: Kind,
    /// The patient (home, travel times) or the therapist (practice).
    pub id: String,
}

impl Subject {
    /// A patient's home.
    pub fn patient_home(patient: &str) -> Subject {
        Subject {
            kind: Kind::PatientHome,
            id: patient.to_string(),
        }
    }

    /// A practice.
    pub fn practice(therapist: &str) -> Subject {
        Subject {
            kind: Kind::Practice,
            id: therapist.to_string(),
        }
    }

    /// The travel times of a patient's search.
    pub fn travel_times(patient: &str) -> Subject {
        Subject {
            kind: Kind::TravelTimes,
            id: patient.to_string(),
        }
    }

    /// The event form.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).expect("a subject serializes")
    }

    /// The subject of a geocoding request or result (`payload`): its
    /// `subject` field, or for records written before the field existed,
    /// what their request id says (`patient-<id>-<n>`, `therapist-<id>`,
    /// `travel-<patient>-<n>`). `None`: nobody's (a cache cleanup).
    pub fn of(payload: &Json) -> Option<Subject> {
        if let Ok(subject) = Subject::deserialize(&payload["subject"]) {
            return Some(subject);
        }
        let request = payload["request_id"].as_str()?;
        if let Some(rest) = request.strip_prefix("patient-") {
            Some(Subject::patient_home(rest.rsplit_once('-')?.0))
        } else if let Some(therapist) = request.strip_prefix("therapist-") {
            Some(Subject::practice(therapist))
        } else if let Some(rest) = request.strip_prefix("travel-") {
            Some(Subject::travel_times(rest.rsplit_once('-')?.0))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_subject_field_decides() {
        // The id says patient, the subject says practice: the subject wins.
        let result = json!({"request_id": "patient-p-1-2",
                            "subject": {"kind": "PRACTICE", "id": "t-9"}});
        assert_eq!(Subject::of(&result), Some(Subject::practice("t-9")));
        assert_eq!(
            Subject::travel_times("p-1").to_json(),
            json!({"kind": "TRAVEL_TIMES", "id": "p-1"})
        );
    }

    #[test]
    fn records_from_before_the_field_are_read_by_their_request_id() {
        let of = |id: &str| Subject::of(&json!({"request_id": id, "subject": null}));
        assert_eq!(of("patient-p-1-2"), Some(Subject::patient_home("p-1")));
        assert_eq!(of("patient-a-b-3"), Some(Subject::patient_home("a-b")));
        assert_eq!(of("therapist-t-7"), Some(Subject::practice("t-7")));
        assert_eq!(of("travel-p-1-12"), Some(Subject::travel_times("p-1")));
        assert_eq!(of("cleanup-2026-12-04"), None);
        assert_eq!(of("travel-"), None);
    }
}
