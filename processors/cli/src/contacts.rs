//! `psymatch contacts P --out FILE`: the patient's contact log as CSV, as
//! the matcher answers it (`GET /v1/searches/{patient}/contacts`): every
//! practice emailed for the patient and every phone follow-up due, with
//! the practice's name, address and phone from the public directory, the
//! date, and the answer with its date.

use serde_json::Value;

/// The columns, in order, with the field of a row each holds.
const COLUMNS: [(&str, &str); 9] = [
    ("date", "date"),
    ("channel", "channel"),
    ("practice", "practice"),
    ("address", "address"),
    ("phone", "phone"),
    ("answer", "answer"),
    ("answered_at", "answered_at"),
    ("inquiry", "inquiry_id"),
    ("reason", "reason"),
];

/// The contact log's rows as CSV (RFC 4180, a header line first).
pub fn csv(rows: &[Value]) -> anyhow::Result<Vec<u8>> {
    let mut writer = ::csv::Writer::from_writer(Vec::new());
    writer.write_record(COLUMNS.iter().map(|(name, _)| *name))?;
    for row in rows {
        writer.write_record(COLUMNS.iter().map(|(_, field)| match &row[*field] {
            Value::Null => String::new(),
            Value::String(text) => text.clone(),
            other => other.to_string(),
        }))?;
    }
    Ok(writer.into_inner()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_become_csv_with_quotes_where_needed() {
        let rows = [
            json!({"date": "2026-12-01T09:00:00+00:00", "channel": "email",
            "practice": "Dr. Test Praxis", "address": "Teststraße 1, 10115 Berlin",
            "phone": null, "answer": "no capacity", "answered_at": "2026-12-03T10:00:00+00:00",
            "inquiry_id": "i-1-1", "reason": "inquiry for a psychotherapy place"}),
        ];
        let text = String::from_utf8(csv(&rows).unwrap()).unwrap();
        let mut lines = text.lines();
        assert_eq!(
            lines.next(),
            Some("date,channel,practice,address,phone,answer,answered_at,inquiry,reason")
        );
        assert_eq!(
            lines.next(),
            Some(
                "2026-12-01T09:00:00+00:00,email,Dr. Test Praxis,\"Teststraße 1, 10115 Berlin\",,\
                 no capacity,2026-12-03T10:00:00+00:00,i-1-1,inquiry for a psychotherapy place"
            )
        );
        assert_eq!(lines.next(), None);
    }
}
