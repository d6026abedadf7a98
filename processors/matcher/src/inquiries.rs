//! Composing inquiries from ranked candidates (docs/design.md,
//! "Inquiries and contact limits"): one inquiry per practice (therapists sharing an email
//! address are one practice, written to once, addressed to its owner),
//! at most six patients each, each patient to its best practices first.

use crate::rules::Therapist;
use chrono::{DateTime, Utc};
use psymatch_runtime::text::fold;
use std::collections::HashMap;

/// At most this many patients in one inquiry.
pub const MAX_PATIENTS: usize = 6;

/// What composing needs of a therapist besides the rules' view.
#[derive(Debug, Clone)]
pub struct Contact {
    /// Email address, lower case; `None`: not reachable by email.
    pub email: Option<String>,
    /// Last name.
    pub last_name: String,
    /// Academic title.
    pub title: Option<String>,
    /// When the record was first seen (the oldest is the owner by default).
    pub first_seen: DateTime<Utc>,
}

/// One inquiry to compose: a practice's address, the therapist it is
/// addressed to, and its patients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inquiry {
    /// The practice's email address.
    pub email: String,
    /// The practice owner the inquiry is addressed to.
    pub therapist_id: String,
    /// Patients, in the order they were assigned.
    pub patients: Vec<String>,
}

/// A title's rank: a professor before a doctor before anyone else.
fn title_rank(title: Option<&str>) -> u8 {
    match title.map(str::to_lowercase) {
        Some(t) if t.contains("prof") => 2,
        Some(t) if t.contains("dr") => 1,
        _ => 0,
    }
}

/// The owner of a practice among the therapists sharing `email`: the one
/// whose last name appears in the address, else the highest title, else
/// the oldest record.
pub fn owner<'a>(email: &str, members: &[(&'a str, &Contact)]) -> &'a str {
    let address = fold(email);
    members
        .iter()
        .max_by(|(a_id, a), (b_id, b)| {
            let named = |c: &Contact| {
                let name = fold(&c.last_name);
                !name.is_empty() && address.contains(&name)
            };
            named(a)
                .cmp(&named(b))
                .then(title_rank(a.title.as_deref()).cmp(&title_rank(b.title.as_deref())))
                .then(b.first_seen.cmp(&a.first_seen))
                .then(b_id.cmp(a_id))
        })
        .map(|(id, _)| *id)
        .expect("a practice has members")
}

/// What composing needs to know about practices: contacts by therapist,
/// the therapists sharing an address, and how many more patients a
/// practice can be asked about now.
pub trait Practices {
    /// The contact of a therapist.
    fn contact(&self, therapist: &str) -> Option<&Contact>;
    /// Every therapist writing from `email`, for choosing the owner.
    fn members(&self, email: &str) -> Vec<(&str, &Contact)>;
    /// How many patients the practice at `email` can still be asked about
    /// (six, less those its unanswered inquiries hold).
    fn room(&self, email: &str) -> usize;
}

/// Contacts by therapist id, every practice with room for six (tests).
impl Practices for HashMap<String, Contact> {
    fn contact(&self, therapist: &str) -> Option<&Contact> {
        self.get(therapist)
    }

    fn members(&self, email: &str) -> Vec<(&str, &Contact)> {
        self.iter()
            .filter(|(_, c)| c.email.as_deref() == Some(email))
            .map(|(id, c)| (id.as_str(), c))
            .collect()
    }

    fn room(&self, _email: &str) -> usize {
        MAX_PATIENTS
    }
}

/// One patient to place in inquiries: up to `quota` more practices, from
/// its ranked candidates.
#[derive(Debug, Clone)]
pub struct Search<'a> {
    /// Pseudonymous patient id.
    pub patient: String,
    /// How many more practices to ask.
    pub quota: usize,
    /// Ranked candidates, best first.
    pub candidates: Vec<&'a Therapist>,
}

/// Composes inquiries. `searches` are the patients in the order they are
/// served (longest waiting first); each goes to up to its quota of
/// practices, best candidates first, skipping practices that are full or
/// already hold the patient, and therapists without an email address
/// (returned separately as (therapist, patient) for a phone call).
pub fn compose(
    searches: &[Search<'_>],
    practices: &impl Practices,
) -> (Vec<Inquiry>, Vec<(String, String)>) {
    let mut by_email: HashMap<String, Vec<String>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut by_phone = Vec::new();
    for search in searches {
        let mut placed = 0;
        for therapist in &search.candidates {
            if placed == search.quota {
                break;
            }
            let Some(contact) = practices.contact(&therapist.id) else {
                continue;
            };
            let Some(email) = &contact.email else {
                by_phone.push((therapist.id.clone(), search.patient.clone()));
                continue;
            };
            let patients = by_email.entry(email.clone()).or_insert_with(|| {
                order.push(email.clone());
                Vec::new()
            });
            if patients.len() >= practices.room(email) || patients.contains(&search.patient) {
                continue;
            }
            patients.push(search.patient.clone());
            placed += 1;
        }
    }
    let inquiries = order
        .into_iter()
        .filter_map(|email| {
            let patients = by_email.remove(&email)?;
            if patients.is_empty() {
                return None;
            }
            let therapist_id = owner(&email, &practices.members(&email)).to_string();
            Some(Inquiry {
                email,
                therapist_id,
                patients,
            })
        })
        .collect();
    (inquiries, by_phone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::synthetic;

    fn contact(
        email: Option<&str>,
        last_name: &str,
        title: Option<&str>,
        days_old: i64,
    ) -> Contact {
        Contact {
            email: email.map(str::to_string),
            last_name: last_name.to_string(),
            title: title.map(str::to_string),
            first_seen: "2026-11-26T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
                - chrono::Duration::days(days_old),
        }
    }

    fn therapist(id: &str) -> Therapist {
        Therapist {
            id: id.to_string(),
            ..synthetic::therapist(0)
        }
    }

    #[test]
    fn a_shared_address_is_one_practice_written_to_its_owner() {
        let contacts = HashMap::from([
            (
                "t-a".to_string(),
                contact(
                    Some("praxis-mueller@example.org"),
                    "Schmidt",
                    Some("Prof. Dr."),
                    10,
                ),
            ),
            (
                "t-b".to_string(),
                contact(Some("praxis-mueller@example.org"), "Müller", None, 1),
            ),
            (
                "t-c".to_string(),
                contact(Some("c@example.org"), "Weber", None, 1),
            ),
        ]);
        let (a, b, c) = (therapist("t-a"), therapist("t-b"), therapist("t-c"));
        let search = |patient: &str, candidates| Search {
            patient: patient.to_string(),
            quota: 2,
            candidates,
        };
        let searches = vec![search("p-1", vec![&a, &b, &c]), search("p-2", vec![&b, &c])];
        let (inquiries, phone) = compose(&searches, &contacts);
        assert!(phone.is_empty());
        assert_eq!(inquiries.len(), 2);
        // The last name in the address beats the professor.
        assert_eq!(inquiries[0].therapist_id, "t-b");
        assert_eq!(
            inquiries[0].patients,
            vec!["p-1", "p-2"],
            "p-1 once, although two of its candidates share the address"
        );
        assert_eq!(inquiries[1].patients, vec!["p-1", "p-2"]);
    }

    #[test]
    fn owners_by_title_then_by_age() {
        let members_title = [
            ("t-1", &contact(Some("x@example.org"), "Eins", None, 100)),
            (
                "t-2",
                &contact(Some("x@example.org"), "Zwei", Some("Dr."), 1),
            ),
        ];
        assert_eq!(owner("x@example.org", &members_title), "t-2");
        let members_age = [
            ("t-1", &contact(Some("x@example.org"), "Eins", None, 100)),
            ("t-2", &contact(Some("x@example.org"), "Zwei", None, 1)),
        ];
        assert_eq!(owner("x@example.org", &members_age), "t-1");
    }

    #[test]
    fn at_most_six_patients_and_phone_for_the_unreachable() {
        let contacts = HashMap::from([
            (
                "t-full".to_string(),
                contact(Some("full@example.org"), "Voll", None, 1),
            ),
            (
                "t-next".to_string(),
                contact(Some("next@example.org"), "Nächste", None, 1),
            ),
            ("t-phone".to_string(), contact(None, "Telefon", None, 1)),
        ]);
        let (full, next, phone) = (
            therapist("t-full"),
            therapist("t-next"),
            therapist("t-phone"),
        );
        let searches: Vec<Search<'_>> = (0..8)
            .map(|i| Search {
                patient: format!("p-{i}"),
                quota: 1,
                candidates: vec![&phone, &full, &next],
            })
            .collect();
        let (inquiries, by_phone) = compose(&searches, &contacts);
        assert_eq!(inquiries[0].email, "full@example.org");
        assert_eq!(inquiries[0].patients.len(), MAX_PATIENTS);
        assert_eq!(
            inquiries[1].patients,
            vec!["p-6", "p-7"],
            "the seventh and eighth go to the next practice"
        );
        assert_eq!(by_phone.len(), 8);
        assert!(by_phone.iter().all(|(t, _)| t == "t-phone"));
    }
}
