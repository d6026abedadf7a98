//! Validation of patient commands: every problem a person can fix, named
//! with the field it is in.

use chrono::{DateTime, NaiveDate, Utc};
use psymatch_runtime::text::{MAX_ID, id_rule, unsafe_json, valid_email, valid_id, valid_postcode};
use serde_json::Value;

/// The home position a publisher gave (`details.coordinates`), checked as
/// the geocoder's answers are (on the globe) and, for a home, in Germany;
/// `None` when none was given. Problems name the field, never the position.
pub fn home(details: &Value) -> Result<Option<psymatch_geo::Position>, String> {
    let given = &details["coordinates"];
    let position = psymatch_geo::Position::of_json(given)
        .map_err(|_| "details.coordinates are not a position on the globe".to_string())?;
    match position {
        Some(at) if !at.in_germany() => Err("details.coordinates lie outside Germany".to_string()),
        other => Ok(other),
    }
}

/// Checks an id with the one id rule of psymatch
/// ([`psymatch_runtime::text::valid_id`], the query surface's): an id
/// that passes can be read back, keyed, mailed and named in a path.
pub fn id(field: &str, id: &str) -> Result<(), String> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(id_rule(field))
    }
}

/// Checks a patient id ([`id`]).
pub fn patient_id(patient: &str) -> Result<(), String> {
    id("patient_id", patient)
}

/// Longest free text per field, in characters: generous for any real
/// name or address, small enough that no record carries a document.
pub const LIMITS: [(&str, usize); 12] = [
    ("first_name", 100),
    ("last_name", 100),
    ("title", 50),
    ("insurer", 100),
    ("email", 254),
    ("website", 300),
    ("address.street", 100),
    ("address.house_number", 20),
    ("address.city", 100),
    ("phone", 40),
    ("fax", 40),
    ("diagnosis_icd10", 10),
];

/// Most entries and longest entry of the list fields.
pub const LIST_LIMITS: [(&str, usize, usize); 7] = [
    ("symptoms", 20, 200),
    ("languages", 20, 40),
    ("excluded_therapists", 500, MAX_ID),
    ("availability", 50, 0),
    ("phone_hours", 50, 0),
    ("consultation_hours", 50, 0),
    ("procedures", 10, 0),
];

/// Every bound of [`LIMITS`] and [`LIST_LIMITS`] that `details` exceed,
/// text a publisher sealed with a control character, phone numbers that
/// are no phone numbers and excluded ids that break the id rule.
pub fn bounds(details: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(problem) = unsafe_json(details, "details") {
        problems.push(problem);
    }
    for (path, most) in LIMITS {
        let value = path.split('.').fold(details, |v, part| &v[part]);
        if value.as_str().is_some_and(|t| t.chars().count() > most) {
            problems.push(format!("details.{path} is longer than {most} characters"));
        }
    }
    for (field, entries, longest) in LIST_LIMITS {
        let Some(items) = details[field].as_array() else {
            continue;
        };
        if items.len() > entries {
            problems.push(format!("details.{field} has more than {entries} entries"));
        }
        if longest > 0
            && items
                .iter()
                .any(|item| item.as_str().is_some_and(|t| t.chars().count() > longest))
        {
            problems.push(format!(
                "details.{field} has an entry longer than {longest} characters"
            ));
        }
    }
    for field in ["phone", "fax"] {
        if let Some(number) = details[field].as_str()
            && !number.trim().is_empty()
            && !phone_number(number)
        {
            problems.push(format!(
                "details.{field} is not a phone number (digits, spaces and + ( ) / - only, 3 digits at least)"
            ));
        }
    }
    if details["excluded_therapists"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| !t.as_str().is_some_and(valid_id))
    {
        problems.push(format!(
            "details.excluded_therapists: {}",
            id_rule("each therapist id")
        ));
    }
    problems
}

/// A phone number as people write one: digits, spaces and `+ ( ) / -`,
/// with at least three digits.
fn phone_number(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '(' | ')' | '/' | '-'))
        && text.chars().filter(char::is_ascii_digit).count() >= 3
}

/// A free-text reason (a block, a pause, a cancellation): at most 500
/// characters.
pub fn reason(field: &str, text: &str) -> Result<(), String> {
    if text.chars().count() > 500 {
        return Err(format!("{field} is longer than 500 characters"));
    }
    Ok(())
}

/// A date from a command (`YYYY-MM-DD`, as the topic's JSON view writes a
/// date) between 2000-01-01 and ten years after `today`: a free place
/// further out is a typing error, and one outside the calendar (a day
/// number that no date has) never reaches the matcher.
pub fn near_date(
    field: &str,
    value: &Value,
    today: NaiveDate,
) -> Result<Option<NaiveDate>, String> {
    let latest = today
        .checked_add_months(chrono::Months::new(120))
        .unwrap_or(today);
    let rule = || format!("{field} must be a date from 2000-01-01 to {latest}");
    match value {
        Value::Null => Ok(None),
        Value::String(text) => match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
            Ok(date) if date >= earliest() && date <= latest => Ok(Some(date)),
            _ => Err(rule()),
        },
        _ => Err(rule()),
    }
}

fn earliest() -> NaiveDate {
    NaiveDate::from_ymd_opt(2000, 1, 1).expect("a valid date")
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
        problems.push("details.address.postcode is not five digits".to_string());
    }
    for field in ["street", "city"] {
        if text(address, field).is_empty() {
            problems.push(format!("details.address.{field} is empty"));
        }
    }
    let email = text(details, "email");
    if !valid_email(email) {
        problems.push("details.email is not an email address".to_string());
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
            Err(_) => problems.push("details.consent_given_at is not a timestamp".to_string()),
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
            problems
                .push("details.diagnosis_icd10 is not an ICD-10 code such as F32.1".to_string());
        }
    }
    if let Some(km) = details["max_distance_km"].as_i64()
        && !(1..=200).contains(&km)
    {
        problems.push("details.max_distance_km is outside 1..200".to_string());
    }
    if let Some(minutes) = details["max_travel_minutes"].as_i64()
        && !(5..=240).contains(&minutes)
    {
        problems.push("details.max_travel_minutes is outside 5..240".to_string());
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
                "details.availability[{i}] is not a time range (HH:MM, from before to)"
            )),
        }
    }
    problems.extend(bounds(details));
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
                "email is not an email address",
            ),
            ("diagnosis_icd10", json!("depression"), "not an ICD-10 code"),
            (
                "max_travel_minutes",
                json!(600),
                "max_travel_minutes is outside",
            ),
            (
                "first_name",
                json!("E".repeat(101)),
                "first_name is longer than 100 characters",
            ),
            ("phone", json!("=1+1"), "phone is not a phone number"),
            (
                "symptoms",
                json!(vec!["x"; 21]),
                "symptoms has more than 20 entries",
            ),
            (
                "excluded_therapists",
                json!(vec!["t-1"; 501]),
                "excluded_therapists has more than 500 entries",
            ),
            (
                "excluded_therapists",
                json!(["<script>"]),
                "excluded_therapists: each therapist id must be",
            ),
            (
                "last_name",
                json!("Bei\u{0}spiel"),
                "details.last_name contains the control character U+0000",
            ),
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
        assert_eq!(
            details(&d, now()),
            vec!["details.address.postcode is not five digits"]
        );
    }

    #[test]
    fn no_problem_quotes_the_value_it_refuses() {
        let planted = "planted-value-4711";
        let mut d = valid();
        for field in ["email", "diagnosis_icd10", "consent_given_at", "phone"] {
            d[field] = json!(planted);
        }
        d["address"]["postcode"] = json!(planted);
        d["availability"] = json!([{"weekday": "MONDAY", "from": planted, "to": planted}]);
        d["coordinates"] = json!({"latitude": 48.1374, "longitude": 99.5});
        let problems = details(&d, now());
        assert_eq!(problems.len(), 8, "{problems:?}");
        for problem in &problems {
            assert!(
                !problem.contains(planted) && !problem.contains("99.5"),
                "{problem}"
            );
        }
    }

    #[test]
    fn ids_and_dates_follow_their_rules() {
        assert!(patient_id("p-1").is_ok());
        for bad in [
            "",
            "p 1",
            "../../etc/passwd",
            "<script>alert(1)</script>",
            "p\r\nBcc: x",
        ] {
            let problem = patient_id(bad).unwrap_err();
            assert!(
                problem.starts_with("patient_id must be 1 to 128"),
                "{problem}"
            );
        }
        let today = NaiveDate::from_ymd_opt(2026, 12, 7).unwrap();
        assert_eq!(near_date("group_from", &json!(null), today), Ok(None));
        assert!(
            near_date("group_from", &json!("2027-01-04"), today)
                .unwrap()
                .is_some()
        );
        for bad in [
            json!("1999-12-31"),
            json!("2036-12-08"),
            json!(2147483647),
            json!("x"),
        ] {
            let problem = near_date("group_from", &bad, today).unwrap_err();
            assert_eq!(
                problem,
                "group_from must be a date from 2000-01-01 to 2036-12-07"
            );
        }
        assert!(reason("reason", &"x".repeat(501)).is_err());
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
