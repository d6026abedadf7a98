//! Text normalisation shared by the processors.

/// Lower case, German letters transliterated (ä ae, ö oe, ü ue, ß ss),
/// only letters and digits kept: spellings that differ in case, umlauts,
/// spaces and punctuation fold to the same key.
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars().flat_map(char::to_lowercase) {
        match c {
            'ä' => out.push_str("ae"),
            'ö' => out.push_str("oe"),
            'ü' => out.push_str("ue"),
            'ß' => out.push_str("ss"),
            c if c.is_alphanumeric() => out.push(c),
            _ => {}
        }
    }
    out
}

/// The words of `text` joined by single spaces, in one allocation.
pub fn squash(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// An email address as people write one: a local part, one @, a domain
/// with a dot, no spaces. (Sending checks it fully.)
pub fn valid_email(value: &str) -> bool {
    let Some((local, domain)) = value.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !value.chars().any(char::is_whitespace)
}

/// A German postcode (Postleitzahl): five digits.
pub fn valid_postcode(value: &str) -> bool {
    value.len() == 5 && value.bytes().all(|b| b.is_ascii_digit())
}

/// The longest identifier psymatch takes (patient, therapist, run, ...).
pub const MAX_ID: usize = 128;

/// The one rule for identifiers, at intake and on the query surface alike:
/// 1 to [`MAX_ID`] ASCII letters, digits, `-`, `_` and `.`. Ids travel in
/// keys, paths, email subjects and file names; a rule this narrow keeps
/// every one of those safe without escaping.
pub fn valid_id(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_ID
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// What [`valid_id`] asks, for a refusal naming the field.
pub fn id_rule(field: &str) -> String {
    format!("{field} must be 1 to {MAX_ID} letters, digits, '-', '_' or '.'")
}

/// Whether `c` may stand in text: everything but the control characters,
/// except tab, line feed and carriage return. PostgreSQL refuses NUL in
/// text and JSON, and the other controls only ever arrive by mistake or
/// malice (terminal escapes in logs, header tricks in mail).
pub fn allowed_char(c: char) -> bool {
    !c.is_control() || matches!(c, '\t' | '\n' | '\r')
}

/// The problem with `text` at `path`, if it holds a character no text may
/// hold; names the field and the character's code point, never the text.
pub fn text_problem(path: &str, text: &str) -> Option<String> {
    let bad = text.chars().find(|c| !allowed_char(*c))?;
    Some(format!(
        "{path} contains the control character U+{:04X}",
        bad as u32
    ))
}

/// Earliest and latest calendar years a date or timestamp may name.
const YEARS: std::ops::RangeInclusive<i32> = 1900..=2199;

/// The first value in a decoded record that no field may hold: text with
/// a control character ([`allowed_char`]), a map key likewise, a date
/// outside 1900-2199 or a timestamp before 1970 or after 2199. The
/// problem names the field's path (`payload.details.first_name`), never
/// the value, so it can be written into a dead-letter header.
pub fn unsafe_value(value: &apache_avro::types::Value, path: &str) -> Option<String> {
    use apache_avro::types::Value as Avro;
    use chrono::Datelike;
    let year_of_days = |days: i64| {
        chrono::NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::try_days(days)?))
            .map(|d| d.year())
    };
    match value {
        Avro::String(text) | Avro::Enum(_, text) => text_problem(path, text),
        Avro::Date(days) => match year_of_days(i64::from(*days)) {
            Some(year) if YEARS.contains(&year) => None,
            _ => Some(format!("{path} is a date outside the years 1900 to 2199")),
        },
        Avro::TimestampMillis(ms) | Avro::LocalTimestampMillis(ms) => timestamp_problem(path, *ms),
        Avro::TimestampMicros(us) | Avro::LocalTimestampMicros(us) => {
            timestamp_problem(path, us / 1000)
        }
        Avro::Union(_, inner) => unsafe_value(inner, path),
        Avro::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| unsafe_value(item, &format!("{path}[{i}]"))),
        Avro::Map(entries) => entries.iter().find_map(|(key, item)| {
            text_problem(&format!("a key of {path}"), key)
                .or_else(|| unsafe_value(item, &format!("{path}.{key}")))
        }),
        Avro::Record(fields) => fields.iter().find_map(|(name, field)| {
            let inner = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            unsafe_value(field, &inner)
        }),
        _ => None,
    }
}

/// The problem with a timestamp (milliseconds since 1970) outside the
/// years 1970 to 2199.
fn timestamp_problem(path: &str, ms: i64) -> Option<String> {
    use chrono::Datelike;
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(at) if at.year() >= 1970 && at.year() <= *YEARS.end() => None,
        _ => Some(format!(
            "{path} is a timestamp outside the years 1970 to 2199"
        )),
    }
}

/// [`unsafe_value`] for JSON (details a publisher sealed, which the
/// topic's schema did not see): text and keys with a control character.
pub fn unsafe_json(value: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value as Json;
    match value {
        Json::String(text) => text_problem(path, text),
        Json::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| unsafe_json(item, &format!("{path}[{i}]"))),
        Json::Object(fields) => fields.iter().find_map(|(key, item)| {
            text_problem(&format!("a key of {path}"), key)
                .or_else(|| unsafe_json(item, &format!("{path}.{key}")))
        }),
        _ => None,
    }
}

/// Text for one line (an email subject, a header): every control
/// character, line breaks included, becomes a space, so that no value can
/// move text into another line or header.
pub fn single_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A cell for a CSV file a spreadsheet will open: a cell that begins with
/// `=`, `+`, `-`, `@`, tab or carriage return is prefixed with `'`, so that
/// it is shown as text and never run as a formula (OWASP's rule for CSV
/// injection).
pub fn spreadsheet_safe(cell: &str) -> std::borrow::Cow<'_, str> {
    match cell.chars().next() {
        Some('=' | '+' | '-' | '@' | '\t' | '\r') => format!("'{cell}").into(),
        _ => cell.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_and_squashing() {
        assert_eq!(fold("Müller-Straße 3"), "muellerstrasse3");
        assert_eq!(squash("  Dr.\tphil.\n Erika "), "Dr. phil. Erika");
        assert!(valid_email("a.b@praxis-x.de"));
        for bad in ["a@b", "a b@c.de", "a@b@c.de", "@c.de", "a@.de"] {
            assert!(!valid_email(bad), "{bad}");
        }
        assert!(valid_postcode("01067") && !valid_postcode("1011") && !valid_postcode("1011A"));
    }

    #[test]
    fn ids_follow_one_rule() {
        for good in ["p-1", "P_2.x", &"a".repeat(MAX_ID)] {
            assert!(valid_id(good), "{good}");
        }
        for bad in [
            "",
            "p 1",
            "../../etc/passwd",
            "<script>",
            "p\r\nBcc: x",
            "p\u{0}x",
            &"a".repeat(MAX_ID + 1),
        ] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn control_characters_are_named_by_field_and_code_point_only() {
        assert_eq!(text_problem("details.first_name", "Erika\tB\nC\r"), None);
        let problem = text_problem("details.first_name", "Eri\u{0}ka").unwrap();
        assert_eq!(
            problem,
            "details.first_name contains the control character U+0000"
        );
        assert!(text_problem("x", "a\u{1b}[31m").unwrap().contains("U+001B"));
        assert!(text_problem("x", "a\u{85}").unwrap().contains("U+0085"));
    }

    #[test]
    fn unsafe_values_are_found_with_their_path() {
        use apache_avro::types::Value as Avro;
        let record = |fields: Vec<(&str, Avro)>| {
            Avro::Record(
                fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )
        };
        let fine = record(vec![
            ("name", Avro::String("Erika".into())),
            ("born", Avro::Date(7771)),
            ("at", Avro::TimestampMillis(1_764_000_000_000)),
        ]);
        assert_eq!(unsafe_value(&fine, ""), None);
        let nul = record(vec![(
            "payload",
            Avro::Union(
                0,
                Box::new(record(vec![(
                    "symptoms",
                    Avro::Array(vec![
                        Avro::String("ok".into()),
                        Avro::String("a\u{0}".into()),
                    ]),
                )])),
            ),
        )]);
        assert_eq!(
            unsafe_value(&nul, "").unwrap(),
            "payload.symptoms[1] contains the control character U+0000"
        );
        let far = record(vec![("group_from", Avro::Date(i32::MAX))]);
        assert!(
            unsafe_value(&far, "")
                .unwrap()
                .starts_with("group_from is a date outside")
        );
        let early = record(vec![("at", Avro::TimestampMillis(-5))]);
        assert!(unsafe_value(&early, "").is_some());
        let json = serde_json::json!({"address": {"city": "B\u{0}"}});
        assert_eq!(
            unsafe_json(&json, "details").unwrap(),
            "details.address.city contains the control character U+0000"
        );
    }

    #[test]
    fn subjects_and_cells_are_made_harmless() {
        assert_eq!(single_line("p-1\r\nBcc: x@y"), "p-1  Bcc: x@y");
        for (cell, safe) in [
            ("=1+1", "'=1+1"),
            ("+49", "'+49"),
            ("-2", "'-2"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("Praxis", "Praxis"),
        ] {
            assert_eq!(spreadsheet_safe(cell), safe);
        }
    }
}
