//! The therapist record (docs/design.md), normalised from what a source
//! published: validated, with data-quality flags instead of silently
//! dropped values.

use psymatch_runtime::text::valid_postcode;
pub use psymatch_runtime::text::{fold, squash, valid_email};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// A weekly time window (`psymatch.TimeSlot`), local time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Slot {
    /// `MONDAY` .. `SUNDAY`.
    pub weekday: &'static str,
    /// `HH:MM`.
    pub from: String,
    /// `HH:MM`, after `from`.
    pub to: String,
}

impl Slot {
    /// Week order: Monday first, then by time.
    fn order(&self) -> (usize, String, String) {
        let day = WEEKDAYS
            .iter()
            .position(|d| *d == self.weekday)
            .unwrap_or(7);
        (day, self.from.clone(), self.to.clone())
    }
}

const WEEKDAYS: [&str; 7] = [
    "MONDAY",
    "TUESDAY",
    "WEDNESDAY",
    "THURSDAY",
    "FRIDAY",
    "SATURDAY",
    "SUNDAY",
];

/// A practice address (`psymatch.Address`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Address {
    /// Street.
    pub street: String,
    /// House number with suffix.
    pub house_number: Option<String>,
    /// Five-digit postcode.
    pub postcode: String,
    /// City.
    pub city: String,
}

/// A WGS84 position (`psymatch.Coordinates`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Position {
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
}

/// `psymatch.TherapistDetails`, field for field.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Details {
    /// `FRAU`, `HERR` or `NONE`.
    pub salutation: &'static str,
    /// Academic title.
    pub title: Option<String>,
    /// First name.
    pub first_name: String,
    /// Last name.
    pub last_name: String,
    /// `FEMALE`, `MALE` or `DIVERSE`.
    pub gender: &'static str,
    /// Practice address.
    pub address: Address,
    /// Position, when the source gave one.
    pub coordinates: Option<Position>,
    /// Phone.
    pub phone: Option<String>,
    /// Fax.
    pub fax: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Website.
    pub website: Option<String>,
    /// Holds a statutory licence (everyone the KBV search lists does).
    pub statutory_licence: bool,
    /// Languages as published.
    pub languages: Vec<String>,
    /// `BEHAVIOURAL`, `PSYCHODYNAMIC`, `ANALYTIC`, `SYSTEMIC`.
    pub procedures: Vec<&'static str>,
    /// `ADULTS`, `CHILDREN_AND_ADOLESCENTS`.
    pub age_groups: Vec<&'static str>,
    /// `INDIVIDUAL`, `GROUP`.
    pub settings: Vec<&'static str>,
    /// When the practice answers the phone.
    pub phone_hours: Vec<Slot>,
    /// Consultation hours.
    pub consultation_hours: Vec<Slot>,
}

/// A therapist as read from one source record.
#[derive(Debug, Clone, PartialEq)]
pub struct Therapist {
    /// The source's id, when it has one.
    pub source_id: Option<String>,
    /// The normalised record.
    pub details: Details,
    /// Data-quality problems, e.g. `invalid_email=...`.
    pub flags: Vec<String>,
}

impl Therapist {
    /// The identity key when there is no source id: name and postcode,
    /// folded so spelling variants agree.
    pub fn name_key(&self) -> String {
        format!(
            "{}|{}|{}",
            fold(&self.details.first_name),
            fold(&self.details.last_name),
            self.details.address.postcode
        )
    }

    /// The details and flags as the JSON the schema takes.
    pub fn details_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.details).expect("details serialise")
    }

    /// SHA-256 over the details and flags: equal fingerprints, nothing to
    /// tell anyone.
    pub fn fingerprint(&self) -> [u8; 32] {
        let canonical = serde_json::to_vec(&(&self.details, &self.flags)).expect("serialise");
        Sha256::digest(canonical).into()
    }
}

/// What a source published about one practice, before validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Raw {
    /// Source id.
    pub id: Option<String>,
    /// "Frau", "Herr", ...
    pub salutation: Option<String>,
    /// Title.
    pub title: Option<String>,
    /// First name.
    pub first_name: Option<String>,
    /// Last name.
    pub last_name: Option<String>,
    /// Gender as published ("W", "M", "D", "weiblich", ...).
    pub gender: Option<String>,
    /// Street.
    pub street: Option<String>,
    /// House number.
    pub house_number: Option<String>,
    /// Postcode.
    pub postcode: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Latitude.
    pub latitude: Option<f64>,
    /// Longitude.
    pub longitude: Option<f64>,
    /// Phone.
    pub phone: Option<String>,
    /// Fax.
    pub fax: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Website.
    pub website: Option<String>,
    /// Languages.
    pub languages: Vec<String>,
    /// Texts or codes naming procedures, age groups and settings.
    pub qualifications: Vec<String>,
    /// (weekday as published, kind as published, "HH:MM-HH:MM").
    pub hours: Vec<(String, String, String)>,
}

/// The psychotherapy filters of a query: codes known to hold for every
/// result when a filter names exactly one value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Implied {
    /// Procedures.
    pub procedures: Vec<&'static str>,
    /// Age groups.
    pub age_groups: Vec<&'static str>,
    /// Settings.
    pub settings: Vec<&'static str>,
}

fn clean(value: &Option<String>) -> Option<String> {
    let squashed = squash(value.as_deref()?);
    (!squashed.is_empty()).then_some(squashed)
}

/// Validates and normalises one record. An error says why the record
/// cannot be used at all (no name, no postcode); smaller problems become
/// flags.
pub fn normalise(raw: &Raw, implied: &Implied) -> Result<Therapist, String> {
    let mut flags = Vec::new();
    let last_name = clean(&raw.last_name).ok_or("no last name")?;
    let first_name = clean(&raw.first_name).unwrap_or_default();
    let postcode = clean(&raw.postcode).ok_or("no postcode")?;
    if !valid_postcode(&postcode) {
        return Err(format!("postcode {postcode:?} is not five digits"));
    }
    let street = clean(&raw.street).unwrap_or_default();
    if street.is_empty() {
        flags.push("missing_street".to_string());
    }
    let salutation = match clean(&raw.salutation)
        .as_deref()
        .map(str::to_lowercase)
        .as_deref()
    {
        Some("frau") => "FRAU",
        Some("herr") => "HERR",
        _ => "NONE",
    };
    let gender = match clean(&raw.gender)
        .as_deref()
        .map(str::to_lowercase)
        .as_deref()
    {
        Some("w" | "weiblich" | "f" | "female") => "FEMALE",
        Some("m" | "männlich" | "maennlich" | "male") => "MALE",
        Some("d" | "divers" | "diverse") => "DIVERSE",
        _ => match salutation {
            "FRAU" => "FEMALE",
            "HERR" => "MALE",
            _ => {
                // Unknown: DIVERSE satisfies only patients without a
                // preference, the safe side; flagged for a person.
                flags.push("unknown_gender".to_string());
                "DIVERSE"
            }
        },
    };
    let coordinates = match (raw.latitude, raw.longitude) {
        (Some(latitude), Some(longitude))
            if (47.0..=55.5).contains(&latitude) && (5.5..=15.5).contains(&longitude) =>
        {
            Some(Position {
                latitude,
                longitude,
            })
        }
        (None, None) => None,
        (latitude, longitude) => {
            flags.push(format!(
                "invalid_coordinates={},{}",
                latitude.map_or("-".into(), |v| v.to_string()),
                longitude.map_or("-".into(), |v| v.to_string())
            ));
            None
        }
    };
    let phone = checked(&raw.phone, "phone", valid_phone, &mut flags);
    let fax = checked(&raw.fax, "fax", valid_phone, &mut flags);
    let email = checked(&raw.email, "email", valid_email, &mut flags).map(|e| e.to_lowercase());
    let website = checked(&raw.website, "website", valid_website, &mut flags);
    let mut languages: Vec<String> = Vec::new();
    for language in &raw.languages {
        let language = squash(language);
        if !language.is_empty() && !languages.contains(&language) {
            languages.push(language);
        }
    }
    let (mut procedures, mut age_groups, mut settings) = (Vec::new(), Vec::new(), Vec::new());
    for text in &raw.qualifications {
        classify(text, &mut procedures, &mut age_groups, &mut settings);
    }
    for (found, implied) in [
        (&mut procedures, &implied.procedures),
        (&mut age_groups, &implied.age_groups),
        (&mut settings, &implied.settings),
    ] {
        if found.is_empty() {
            found.extend(implied.iter().copied());
        }
        found.sort_unstable();
        found.dedup();
    }
    let (mut phone_hours, mut consultation_hours) = (Vec::new(), Vec::new());
    for (day, kind, time) in &raw.hours {
        let slot = match slot(day, time) {
            Ok(slot) => slot,
            Err(problem) => {
                flags.push(format!("invalid_hours={problem}"));
                continue;
            }
        };
        let kind = kind.to_lowercase();
        let target = if kind.contains("telefon") {
            &mut phone_hours
        } else if kind.contains("sprechstunde") || kind.contains("sprechzeit") {
            &mut consultation_hours
        } else {
            continue;
        };
        if !target.contains(&slot) {
            target.push(slot);
        }
    }
    phone_hours.sort_by_key(Slot::order);
    consultation_hours.sort_by_key(Slot::order);
    flags.sort();
    flags.dedup();
    Ok(Therapist {
        source_id: clean(&raw.id),
        details: Details {
            salutation,
            title: clean(&raw.title),
            first_name,
            last_name,
            gender,
            address: Address {
                street,
                house_number: clean(&raw.house_number),
                postcode,
                city: clean(&raw.city).unwrap_or_default(),
            },
            coordinates,
            phone,
            fax,
            email,
            website,
            statutory_licence: true,
            languages,
            procedures,
            age_groups,
            settings,
            phone_hours,
            consultation_hours,
        },
        flags,
    })
}

/// The value if `valid`, else `None` and a flag carrying what was published.
fn checked(
    value: &Option<String>,
    name: &str,
    valid: fn(&str) -> bool,
    flags: &mut Vec<String>,
) -> Option<String> {
    let value = clean(value)?;
    if valid(&value) {
        Some(value)
    } else {
        flags.push(format!("invalid_{name}={value}"));
        None
    }
}

/// A German phone number as people write it: digits with spaces, slashes,
/// hyphens, parentheses, a leading + or 0, and at least 6 digits.
pub fn valid_phone(value: &str) -> bool {
    let digits = value.chars().filter(char::is_ascii_digit).count();
    (value.starts_with('0') || value.starts_with('+') || value.starts_with('('))
        && (6..=16).contains(&digits)
        && value
            .chars()
            .all(|c| c.is_ascii_digit() || " /-()+.".contains(c))
}

/// A host with a dot, optionally with a scheme and a path, no spaces.
pub fn valid_website(value: &str) -> bool {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"))
        .unwrap_or(value);
    let host = rest.split('/').next().unwrap_or("");
    host.contains('.')
        && !host.starts_with('.')
        && !host.ends_with('.')
        && !value.chars().any(char::is_whitespace)
        && host
            .chars()
            .all(|c| c.is_alphanumeric() || ".-:".contains(c))
}

/// Reads procedures, age groups and settings from a published text or a
/// filter code.
fn classify(
    text: &str,
    procedures: &mut Vec<&'static str>,
    age_groups: &mut Vec<&'static str>,
    settings: &mut Vec<&'static str>,
) {
    let lower = text.trim().to_lowercase();
    let push = |list: &mut Vec<&'static str>, value| {
        if !list.contains(&value) {
            list.push(value);
        }
    };
    match lower.as_str() {
        "v" => return push(procedures, "BEHAVIOURAL"),
        "t" => return push(procedures, "PSYCHODYNAMIC"),
        "a" => return push(procedures, "ANALYTIC"),
        "s" => return push(procedures, "SYSTEMIC"),
        _ => {}
    }
    if lower.contains("verhaltenstherapie") {
        push(procedures, "BEHAVIOURAL");
    }
    if lower.contains("tiefenpsychologisch") {
        push(procedures, "PSYCHODYNAMIC");
    }
    if lower.contains("analytisch") {
        push(procedures, "ANALYTIC");
    }
    if lower.contains("systemisch") {
        push(procedures, "SYSTEMIC");
    }
    if lower.contains("kinder") || lower.contains("jugendlich") {
        push(age_groups, "CHILDREN_AND_ADOLESCENTS");
    }
    if lower.contains("erwachsen") || lower.contains("psychologische psychotherapeut") {
        push(age_groups, "ADULTS");
    }
    if lower.contains("gruppe") {
        push(settings, "GROUP");
    }
    if lower.contains("einzel") {
        push(settings, "INDIVIDUAL");
    }
}

/// The weekday symbol of a German day name or abbreviation.
pub fn weekday(day: &str) -> Option<&'static str> {
    let day = day
        .trim()
        .trim_end_matches('.')
        .trim_end_matches(':')
        .to_lowercase();
    let day = day.get(..2)?;
    Some(match day {
        "mo" => "MONDAY",
        "di" => "TUESDAY",
        "mi" => "WEDNESDAY",
        "do" => "THURSDAY",
        "fr" => "FRIDAY",
        "sa" => "SATURDAY",
        "so" => "SUNDAY",
        _ => return None,
    })
}

fn clock(text: &str) -> Option<String> {
    let (hours, minutes) = text.trim().trim_end_matches(" Uhr").split_once(':')?;
    let (hours, minutes): (u32, u32) = (hours.trim().parse().ok()?, minutes.trim().parse().ok()?);
    (hours < 24 && minutes < 60).then(|| format!("{hours:02}:{minutes:02}"))
}

/// A slot from a day and "HH:MM-HH:MM" (also with " - " and "Uhr").
pub fn slot(day: &str, time: &str) -> Result<Slot, String> {
    let weekday = weekday(day).ok_or_else(|| format!("{day} is not a weekday"))?;
    let (from, to) = time
        .split_once('-')
        .or_else(|| time.split_once('–'))
        .ok_or_else(|| format!("{time} is not a time range"))?;
    let (from, to) = match (clock(from), clock(to)) {
        (Some(from), Some(to)) if from < to => (from, to),
        _ => return Err(format!("{time} is not a time range")),
    };
    Ok(Slot { weekday, from, to })
}

#[cfg(test)]
mod tests;
