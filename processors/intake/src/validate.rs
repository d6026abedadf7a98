//! Validation of patient commands: every problem a person can fix, named
//! with the field it is in.

use chrono::{DateTime, NaiveDate, Utc};
use psymatch_runtime::text::{valid_email, valid_postcode};
use serde_json::Value;

/// The home position a publisher gave (`details.coordinates`), checked as
/// the geocoder's answers are (on the globe) and, for a home, in Germany;
/// `None` when none was given.
pub fn home(details: &Value) -> Result<Option<psymatch_geo::Position>, String> {
    let given = &details["coordinates"];
    let position = psymatch_geo::Position::of_json(given)
        .map_err(|_| format!("details.coordinates {given} is not a position on the globe"))?;
    match position {
        Some(at) if !at.in_germany() => Err(format!(
            "details.coordinates ({}, {}) lie outside Germany",
            at.latitude, at.longitude
        )),
        other => Ok(other),
    }
}

/// Checks a patient id: present, short, no spaces.
pub fn patient_id(id: &str) -> Result<(), String> {
    if id.trim().is_empty() {
        return Err("patient_id is empty".into());
    }
    if id.len() > 100 || id.chars().any(char::is_whitespace) {
        return Err(format!(
            "patient_id {id:?} must be at most 100 characters without spaces"
        ));
    }
    Ok(())
}

fn text<'a>(details: &'a Value, field: &str) -> &'a str {
    details[field].as_str().unwrap_or("").trim()
}

/// The date of birth (a `YYYY-MM-DD` date).
pub fn birth_date(details: &Value) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(details["date_of_birth"].as_str()?, "%Y-%m-%d").ok()
}

/// Age in whole years on `today`.
pub fn age(born: NaiveDate, today: NaiveDate) -> i32 {
    use chrono::Datelike;
    let mut years = today.year() - born.year();
    if (today.month(), today.day()) < (born.month(), born.day()) {
        years -= 1;
    }
    years
}

fn clock(value: &Value) -> Option<(u32, u32)> {
    let (h, m) = value.as_str()?.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}

/// Every problem with the details of a registration or update.
pub fn details(details: &Value, now: DateTime<Utc>) -> Vec<String> {
    let mut problems = Vec::new();
    for field in ["first_name", "last_name", "insurer"] {
        if text(details, field).is_empty() {
            problems.push(format!("details.{field} is empty"));
        }
    }
    let address = &details["address"];
    let postcode = address["postcode"].as_str().unwrap_or("").trim();
    if !valid_postcode(postcode) {
        problems.push(format!(
            "details.address.postcode {postcode:?} is not five digits"
        ));
    }
    for field in ["street", "city"] {
        if text(address, field).is_empty() {
            problems.push(format!("details.address.{field} is empty"));
        }
    }
    let email = text(details, "email");
    if !valid_email(email) {
        problems.push(format!("details.email {email:?} is not an email address"));
    }
    let today = now.date_naive();
    match birth_date(details) {
        None => problems.push("details.date_of_birth is not a date (YYYY-MM-DD)".into()),
        Some(born) if born > today => {
            problems.push("details.date_of_birth is in the future".into())
        }
        Some(born) if age(born, today) > 120 => {
            problems.push("details.date_of_birth is more than 120 years ago".into())
        }
        Some(_) => {}
    }
    if let Err(problem) = home(details) {
        problems.push(problem);
    }
    match details["consent_given_at"].as_str() {
        None => problems.push(
            "details.consent_given_at is missing: health data need the patient's explicit consent (GDPR Art. 9)".into(),
        ),
        Some(at) => match DateTime::parse_from_rfc3339(at) {
            Ok(at) if at > now + chrono::Duration::minutes(5) => {
                problems.push("details.consent_given_at is in the future".into())
            }
            Ok(_) => {}
            Err(_) => problems.push(format!("details.consent_given_at {at:?} is not a timestamp")),
        },
    }
    if let Some(code) = details["diagnosis_icd10"].as_str() {
        let bytes = code.as_bytes();
        let valid = bytes.len() >= 3
            && bytes[0].is_ascii_uppercase()
            && bytes[1].is_ascii_digit()
            && bytes[2].is_ascii_digit()
            && (bytes.len() == 3
                || (bytes[3] == b'.'
                    && bytes.len() > 4
                    && bytes[4..].iter().all(u8::is_ascii_digit)));
        if !valid {
            problems.push(format!(
                "details.diagnosis_icd10 {code:?} is not an ICD-10 code such as F32.1"
            ));
        }
    }
    if let Some(km) = details["max_distance_km"].as_i64()
        && !(1..=200).contains(&km)
    {
        problems.push(format!("details.max_distance_km {km} is outside 1..200"));
    }
    if let Some(minutes) = details["max_travel_minutes"].as_i64()
        && !(5..=240).contains(&minutes)
    {
        problems.push(format!(
            "details.max_travel_minutes {minutes} is outside 5..240"
        ));
    }
    if let Some(last) = details["last_therapy_session"].as_str()
        && NaiveDate::parse_from_str(last, "%Y-%m-%d").is_ok_and(|d| d > today)
    {
        problems.push("details.last_therapy_session is in the future".into());
    }
    for (i, slot) in details["availability"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        match (clock(&slot["from"]), clock(&slot["to"])) {
            (Some(from), Some(to)) if from < to => {}
            _ => problems.push(format!(
                "details.availability[{i}]: {} to {} is not a time range (HH:MM, from before to)",
                slot["from"], slot["to"]
            )),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({
            "salutation": "FRAU", "first_name": "Erika", "last_name": "Beispiel",
            "address": {"street": "Teststraße", "house_number": "1", "postcode": "10115", "city": "Berlin"},
            "email": "erika@example.org", "phone": null, "date_of_birth": "1991-04-12", "gender": "FEMALE",
            "insurer": "Beispielkasse", "diagnosis_icd10": "F32.1", "consultation_hour_attended": true,
            "symptoms": ["Antriebslosigkeit"], "therapy_experience": false, "last_therapy_session": null,
            "open_to_group": true, "availability": [{"weekday": "TUESDAY", "from": "16:00", "to": "19:00"}],
            "max_distance_km": null, "max_travel_minutes": 40, "transport": "PUBLIC_TRANSPORT",
            "preferred_therapist_gender": "ANY", "preferred_procedures": [], "languages": [],
            "excluded_therapists": [], "consent_given_at": "2026-11-01T09:30:00Z"
        })
    }

    fn now() -> DateTime<Utc> {
        "2026-11-26T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn a_complete_registration_is_valid() {
        assert_eq!(details(&valid(), now()), Vec::<String>::new());
    }

    #[test]
    fn each_problem_is_named() {
        for (field, value, expected) in [
            (
                "consent_given_at",
                json!(null),
                "consent_given_at is missing",
            ),
            (
                "date_of_birth",
                json!("2030-01-01"),
                "date_of_birth is in the future",
            ),
            (
                "date_of_birth",
                json!("12.04.1991"),
                "date_of_birth is not a date",
            ),
            (
                "email",
                json!("erika(at)example"),
                "email \"erika(at)example\"",
            ),
            ("diagnosis_icd10", json!("depression"), "not an ICD-10 code"),
            ("max_travel_minutes", json!(600), "max_travel_minutes 600"),
            ("first_name", json!(" "), "first_name is empty"),
            (
                "availability",
                json!([{"weekday": "MONDAY", "from": "12:00", "to": "09:00"}]),
                "availability[0]",
            ),
        ] {
            let mut d = valid();
            d[field] = value;
            let problems = details(&d, now());
            assert_eq!(problems.len(), 1, "{field}: {problems:?}");
            assert!(problems[0].contains(expected), "{field}: {problems:?}");
        }
        let mut d = valid();
        d["address"]["postcode"] = json!("1011");
        assert!(details(&d, now())[0].contains("postcode \"1011\""));
    }

    #[test]
    fn ages_count_whole_years() {
        let born = NaiveDate::from_ymd_opt(1991, 4, 12).unwrap();
        assert_eq!(age(born, NaiveDate::from_ymd_opt(2026, 4, 11).unwrap()), 34);
        assert_eq!(age(born, NaiveDate::from_ymd_opt(2026, 4, 12).unwrap()), 35);
        assert!(patient_id("p 1").is_err());
        assert!(patient_id("").is_err());
        assert!(patient_id("p-1").is_ok());
    }
}
