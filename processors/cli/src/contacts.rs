//! `psymatch contacts P --format csv|pdf --out FILE`: the patient's
//! contact log as the matcher answers it
//! (`GET /v1/searches/{patient}/contacts`): every practice emailed for the
//! patient and every phone follow-up due, with the practice's name,
//! address and phone from the public directory, the date, and the answer
//! with its date. As CSV, or as the letter for the insurer
//! ([`crate::letter`]).

use crate::letter::{self, Letter};
use crate::search::{MatcherArgs, Surface, path_segment};
use anyhow::{Context as _, bail};
use serde_json::Value;
use std::path::Path;

/// The file a contact log is written as.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// Comma-separated values, a header line first.
    Csv,
    /// The letter for the insurer.
    Pdf,
}

/// Where intake's query surface is (the letter's name and date of birth).
#[derive(clap::Args)]
pub struct IntakeArgs {
    /// Intake's surface (only the PDF letter asks it; needs a staff token).
    #[arg(
        long,
        env = "PSYMATCH_INTAKE_URL",
        default_value = "http://127.0.0.1:9464"
    )]
    pub intake: String,
}

/// Asks the matcher for the contact log of `patient` and writes it to
/// `out` as `format`; the PDF asks intake for the patient's name and
/// date of birth.
pub async fn write(
    patient: &str,
    format: Format,
    out: &Path,
    matcher: &MatcherArgs,
    intake: &IntakeArgs,
) -> anyhow::Result<()> {
    let segment = path_segment(patient);
    let log = matcher
        .surface()
        .get(&format!("/v1/searches/{segment}/contacts"))
        .await?;
    let rows = log["contacts"].as_array().cloned().unwrap_or_default();
    let bytes = match format {
        Format::Csv => csv(&rows)?,
        Format::Pdf => {
            let intake = Surface {
                name: "intake",
                url: intake.intake.clone(),
                token: matcher.token.clone(),
            };
            let person = intake.get(&format!("/v1/patients/{segment}")).await?;
            let details = &person["details"];
            let name = [&details["first_name"], &details["last_name"]]
                .iter()
                .filter_map(|part| part.as_str())
                .collect::<Vec<_>>()
                .join(" ");
            let Some(date_of_birth) = details["date_of_birth"].as_str() else {
                bail!("intake holds no date of birth for patient {patient}");
            };
            letter::pdf(&Letter {
                name,
                date_of_birth: date_of_birth.to_string(),
                rows: &rows,
                today: chrono::Local::now().date_naive(),
            })
        }
    };
    std::fs::write(out, bytes).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "{} contacts of {patient} written to {}",
        rows.len(),
        out.display()
    );
    Ok(())
}

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

/// The contact log's rows as CSV (RFC 4180, a header line first). Practice
/// names and phone numbers come from outside (116117, people): a cell a
/// spreadsheet would run as a formula is neutralised
/// ([`psymatch_runtime::text::spreadsheet_safe`]).
pub fn csv(rows: &[Value]) -> anyhow::Result<Vec<u8>> {
    use psymatch_runtime::text::spreadsheet_safe;
    let mut writer = ::csv::Writer::from_writer(Vec::new());
    writer.write_record(COLUMNS.iter().map(|(name, _)| *name))?;
    for row in rows {
        writer.write_record(COLUMNS.iter().map(|(_, field)| match &row[*field] {
            Value::Null => String::new(),
            Value::String(text) => spreadsheet_safe(text).into_owned(),
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

    #[test]
    fn cells_a_spreadsheet_would_run_are_neutralised() {
        let rows = [
            json!({"date": "2026-12-01T09:00:00+00:00", "channel": "email",
            "practice": "=HYPERLINK(\"http://x.invalid\",\"Praxis\")", "address": "@SUM(A1)",
            "phone": "+49 30 1234", "answer": "-1", "answered_at": null,
            "inquiry_id": "i-1", "reason": "\tcmd"}),
        ];
        let text = String::from_utf8(csv(&rows).unwrap()).unwrap();
        let mut reader = ::csv::Reader::from_reader(text.as_bytes());
        let record = reader.records().next().unwrap().unwrap();
        for cell in record.iter().filter(|c| !c.is_empty()) {
            assert!(
                !cell.starts_with(['=', '+', '-', '@', '\t', '\r']),
                "{cell:?} would run"
            );
        }
        assert_eq!(&record[2], "'=HYPERLINK(\"http://x.invalid\",\"Praxis\")");
        assert_eq!(&record[4], "'+49 30 1234");
    }
}
