//! What the matcher reads, decoded once at the edge into Rust types: the
//! other processors' events (checked: ids present, positions on the globe,
//! travel times that are times; geocoding results routed by their
//! subject) and the commands of people. The rest of
//! the matcher never looks a field up by name.

use crate::records::{AnswerOutcome, Details, Profile};
use crate::rules::Gender;
use chrono::{DateTime, NaiveDate, Utc};
use psymatch_geo::Position;
use psymatch_geo::subject::{Kind, Subject};
use psymatch_runtime::processor::Incoming;
use serde::Deserialize;

/// A decoded input.
#[derive(Debug)]
pub enum Input {
    /// A patient's profile: registered, updated, or its status changed.
    Profile {
        /// The pseudonymous patient id.
        patient_id: String,
        /// The profile.
        profile: Box<Profile>,
        /// Why the status changed (a pause's reason), when given.
        reason: Option<String>,
    },
    /// A patient erased.
    Erased {
        /// The pseudonymous patient id.
        patient_id: String,
        /// The patient keeps the contact log (answered inquiries stay).
        keep_contact_log: bool,
    },
    /// A fact about a therapist.
    Therapist {
        /// The therapist id.
        therapist_id: String,
        /// What changed.
        change: TherapistChange,
    },
    /// The geocoder placed a practice the directory gave no position.
    PracticePlaced {
        /// The therapist id.
        therapist_id: String,
        /// The position.
        position: Position,
    },
    /// The geocoder answered a search's travel-time request.
    TravelTimes {
        /// The request id.
        request_id: String,
        /// The patient whose search asked.
        patient_id: String,
        /// Travel time in seconds by practice, where one was found.
        seconds: Vec<(String, f64)>,
    },
    /// An inquiry email went out.
    EmailSent {
        /// The inquiries it carried.
        inquiries: Vec<String>,
        /// When.
        sent_at: Option<DateTime<Utc>>,
    },
    /// An inquiry email failed for good.
    EmailFailed {
        /// The inquiries it carried.
        inquiries: Vec<String>,
    },
    /// `matching.record_answer`.
    Answer(RecordAnswer),
    /// `matching.exclude_therapist`.
    Exclude {
        /// The patient.
        patient_id: String,
        /// The therapist never to ask for this patient.
        therapist_id: String,
    },
    /// `matching.run`: one patient's search, or every active one.
    Run {
        /// The run's id, named by its explanations.
        run_id: String,
        /// One patient; `None`: every active search.
        patient_id: Option<String>,
    },
    /// `matching.sweep`.
    Sweep,
    /// A command the matcher does not handle.
    UnknownCommand(String),
    /// Nothing the matcher keeps (another processor's rejection, a patient's
    /// home position, which is intake's, an event type it does not use).
    Ignored,
}

/// What changed about a therapist.
#[derive(Debug)]
pub enum TherapistChange {
    /// Discovered or updated in the directory.
    Details {
        /// The directory's record.
        details: Box<Details>,
        /// Who published it.
        source: Option<String>,
    },
    /// No longer in the directory.
    Removed,
    /// Blocked by a person.
    Blocked(String),
    /// Unblocked.
    Unblocked,
    /// New earliest free places.
    FreePlaces {
        /// Individual therapy.
        individual_from: Option<NaiveDate>,
        /// Group therapy.
        group_from: Option<NaiveDate>,
    },
    /// The therapist's own constraints.
    Preferences {
        /// Youngest patient.
        min_age: Option<i32>,
        /// Oldest patient.
        max_age: Option<i32>,
        /// Patient genders taken; empty: any.
        genders: Vec<Gender>,
        /// Prefers group therapy.
        prefers_group: bool,
    },
}

/// `matching.record_answer`.
#[derive(Debug, Deserialize)]
pub struct RecordAnswer {
    /// The inquiry answered.
    pub inquiry_id: String,
    /// The therapist who answered.
    pub therapist_id: String,
    /// Per patient.
    #[serde(default)]
    pub answers: Vec<PatientAnswer>,
    /// When; `None`: now.
    #[serde(default)]
    pub answered_at: Option<DateTime<Utc>>,
}

/// One patient's answer.
#[derive(Debug, Deserialize)]
pub struct PatientAnswer {
    /// The patient.
    pub patient_id: String,
    /// The answer.
    pub outcome: AnswerOutcome,
}

/// Why an input cannot be used: an event is dead-lettered, a command
/// rejected, each with the reason.
#[derive(Debug, PartialEq)]
pub enum Refused {
    /// Another processor's event with values outside their domain.
    Event(String),
    /// A command that does not fit.
    Command(String),
}

/// The request id of a search's `n`th travel-time request.
pub fn travel_request_id(patient: &str, n: i64) -> String {
    format!("travel-{patient}-{n}")
}

/// A geocoding result for a request that is not the matcher's: nothing
/// in the batch to fold.
pub fn inert(record: &Incoming) -> bool {
    record.topic == "geocoding-results"
        && !Subject::of(&record.payload)
            .is_some_and(|s| matches!(s.kind, Kind::Practice | Kind::TravelTimes))
}

fn payload<'r, T: Deserialize<'r>>(record: &'r Incoming) -> Result<T, String> {
    T::deserialize(&record.payload)
        .map_err(|error| format!("{} does not fit: {error}", record.event_type()))
}

fn present(record: &Incoming, field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        Err(format!("{} without {field}", record.event_type()))
    } else {
        Ok(())
    }
}

fn on_globe(position: Option<Position>) -> Result<(), String> {
    match position {
        Some(p) if !p.is_valid() => Err(format!("{} is not a position on the globe", p.to_json())),
        _ => Ok(()),
    }
}

/// Decodes `record`, checking what the matcher folds into its state.
pub fn decode(record: &Incoming) -> Result<Input, Refused> {
    if record.event_type() == "command.rejected" {
        return Ok(Input::Ignored);
    }
    let decoded = match record.topic.as_str() {
        "patient-events" => patient(record),
        "therapist-events" => therapist(record),
        "geocoding-results" => geocoded(record),
        "communication-events" => communication(record),
        _ => return command(record).map_err(Refused::Command),
    };
    decoded.map_err(Refused::Event)
}

fn patient(record: &Incoming) -> Result<Input, String> {
    #[derive(Deserialize)]
    struct Changed {
        patient_id: String,
        profile: Box<Profile>,
        #[serde(default)]
        reason: Option<String>,
    }
    #[derive(Deserialize)]
    struct Erased {
        patient_id: String,
        #[serde(default)]
        keep_contact_log: bool,
    }
    match record.event_type() {
        "patient.registered" | "patient.updated" | "patient.search_status_changed" => {
            let Changed {
                patient_id,
                profile,
                reason,
            } = payload(record)?;
            present(record, "patient_id", &patient_id)?;
            on_globe(profile.coordinates)?;
            Ok(Input::Profile {
                patient_id,
                profile,
                reason,
            })
        }
        "patient.erased" => {
            let erased: Erased = payload(record)?;
            present(record, "patient_id", &erased.patient_id)?;
            Ok(Input::Erased {
                patient_id: erased.patient_id,
                keep_contact_log: erased.keep_contact_log,
            })
        }
        _ => Ok(Input::Ignored),
    }
}

fn therapist(record: &Incoming) -> Result<Input, String> {
    #[derive(Deserialize)]
    struct Id {
        therapist_id: String,
    }
    #[derive(Deserialize)]
    struct Listed {
        details: Box<Details>,
        #[serde(default)]
        source: Option<String>,
    }
    #[derive(Deserialize)]
    struct Blocked {
        #[serde(default)]
        reason: String,
    }
    #[derive(Deserialize)]
    struct FreePlaces {
        #[serde(default)]
        individual_from: Option<NaiveDate>,
        #[serde(default)]
        group_from: Option<NaiveDate>,
    }
    #[derive(Deserialize)]
    struct Preferences {
        #[serde(default)]
        min_age: Option<i32>,
        #[serde(default)]
        max_age: Option<i32>,
        #[serde(default)]
        genders: Vec<Gender>,
        #[serde(default)]
        prefers_group: bool,
    }
    let Id { therapist_id } = payload(record)?;
    present(record, "therapist_id", &therapist_id)?;
    let change = match record.event_type() {
        "therapist.discovered" | "therapist.updated" => {
            let Listed { details, source } = payload(record)?;
            on_globe(details.coordinates)?;
            TherapistChange::Details { details, source }
        }
        "therapist.removed" => TherapistChange::Removed,
        "therapist.blocked" => TherapistChange::Blocked(payload::<Blocked>(record)?.reason),
        "therapist.unblocked" => TherapistChange::Unblocked,
        "therapist.free_places_changed" => {
            let FreePlaces {
                individual_from,
                group_from,
            } = payload(record)?;
            TherapistChange::FreePlaces {
                individual_from,
                group_from,
            }
        }
        "therapist.preferences_changed" => {
            let p: Preferences = payload(record)?;
            TherapistChange::Preferences {
                min_age: p.min_age,
                max_age: p.max_age,
                genders: p.genders,
                prefers_group: p.prefers_group,
            }
        }
        _ => return Ok(Input::Ignored),
    };
    Ok(Input::Therapist {
        therapist_id,
        change,
    })
}

fn geocoded(record: &Incoming) -> Result<Input, String> {
    #[derive(Deserialize)]
    struct Result_ {
        #[serde(default)]
        destination_id: String,
        #[serde(default)]
        duration_seconds: Option<f64>,
    }
    #[derive(Deserialize)]
    struct Answer {
        request_id: String,
        #[serde(default)]
        position: Option<Position>,
        #[serde(default)]
        results: Vec<Result_>,
    }
    let answer: Answer = payload(record)?;
    present(record, "request_id", &answer.request_id)?;
    on_globe(answer.position)?;
    if let Some(bad) = answer
        .results
        .iter()
        .filter_map(|r| r.duration_seconds)
        .find(|s| !s.is_finite() || *s < 0.0)
    {
        return Err(format!("a travel time of {bad} s"));
    }
    Ok(match Subject::of(&record.payload) {
        Some(Subject {
            kind: Kind::Practice,
            id,
        }) => match answer.position {
            Some(position) => Input::PracticePlaced {
                therapist_id: id,
                position,
            },
            None => Input::Ignored,
        },
        Some(Subject {
            kind: Kind::TravelTimes,
            id,
        }) => Input::TravelTimes {
            patient_id: id,
            seconds: answer
                .results
                .into_iter()
                .filter_map(|r| Some((r.destination_id, r.duration_seconds?)))
                .collect(),
            request_id: answer.request_id,
        },
        _ => Input::Ignored,
    })
}

fn communication(record: &Incoming) -> Result<Input, String> {
    #[derive(Deserialize)]
    struct Email {
        #[serde(default)]
        inquiry_ids: Option<Vec<String>>,
        #[serde(default)]
        inquiry_id: Option<String>,
        #[serde(default)]
        email_id: Option<String>,
        #[serde(default)]
        sent_at: Option<DateTime<Utc>>,
        #[serde(default)]
        permanent: Option<bool>,
    }
    let email: Email = payload(record)?;
    let inquiries: Vec<String> = match (email.inquiry_ids, email.inquiry_id) {
        (Some(ids), _) => ids,
        (None, one) => one.into_iter().collect(),
    };
    if inquiries.iter().any(String::is_empty) {
        return Err(format!("{} names an empty inquiry id", record.event_type()));
    }
    if let Some(id) = &email.email_id {
        present(record, "email_id", id)?;
    }
    Ok(match record.event_type() {
        "email.sent" => Input::EmailSent {
            inquiries,
            sent_at: email.sent_at,
        },
        "email.failed" if email.permanent == Some(true) => Input::EmailFailed { inquiries },
        _ => Input::Ignored,
    })
}

fn command(record: &Incoming) -> Result<Input, String> {
    #[derive(Deserialize)]
    struct Exclude {
        patient_id: String,
        therapist_id: String,
    }
    #[derive(Deserialize)]
    struct Run {
        #[serde(default)]
        run_id: String,
        #[serde(default)]
        patient_id: Option<String>,
    }
    Ok(match record.event_type() {
        "matching.record_answer" => Input::Answer(payload(record)?),
        "matching.exclude_therapist" => {
            let Exclude {
                patient_id,
                therapist_id,
            } = payload(record)?;
            Input::Exclude {
                patient_id,
                therapist_id,
            }
        }
        "matching.run" => {
            let Run { run_id, patient_id } = payload(record)?;
            Input::Run { run_id, patient_id }
        }
        "matching.sweep" => Input::Sweep,
        other => Input::UnknownCommand(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn travel_request_ids_name_the_patient() {
        let payload = serde_json::json!({"request_id": travel_request_id("p-7", 12)});
        assert_eq!(Subject::of(&payload), Some(Subject::travel_times("p-7")));
    }

    #[test]
    fn positions_off_the_globe_are_refused() {
        assert!(on_globe(Some(Position::new(91.0, 0.0))).is_err());
        assert!(on_globe(Some(Position::new(52.5, 13.4))).is_ok());
        assert!(on_globe(None).is_ok());
    }
}
