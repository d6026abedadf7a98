//! `psymatch search status P`: where a patient's search stands, asked of
//! the matcher's query surface (docs/queries.md), as a table for people
//! or as the matcher's JSON for scripts.

use anyhow::{Context as _, bail};
use clap::Subcommand;
use serde_json::Value;

/// Where the matcher's query surface is, and a token for it.
#[derive(clap::Args)]
pub struct MatcherArgs {
    /// The matcher's surface.
    #[arg(
        long,
        global = true,
        env = "PSYMATCH_MATCHER_URL",
        default_value = "http://127.0.0.1:9467"
    )]
    pub matcher: String,
    /// A query token (QUERY_TOKENS of the matcher).
    #[arg(long, global = true, env = "PSYMATCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl MatcherArgs {
    /// The surface these name.
    pub fn surface(&self) -> Surface {
        Surface {
            name: "matcher",
            url: self.matcher.clone(),
            token: self.token.clone(),
        }
    }
}

/// A practice's answer about one patient.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Outcome {
    /// A place is offered.
    Accepted,
    /// No capacity now.
    RejectedCapacity,
    /// Not suitable for this patient.
    NotSuitable,
    /// Another reason.
    Other,
}

impl Outcome {
    /// The schema's symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Outcome::Accepted => "ACCEPTED",
            Outcome::RejectedCapacity => "REJECTED_NO_CAPACITY",
            Outcome::NotSuitable => "REJECTED_NOT_SUITABLE",
            Outcome::Other => "REJECTED_OTHER",
        }
    }
}

/// How an answer came.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Channel {
    /// By email.
    Email,
    /// By phone.
    Phone,
}

/// The questions `psymatch search` asks.
#[derive(Subcommand)]
pub enum SearchCommand {
    /// Where a patient's search stands: status, limits, every inquiry
    /// with its practice, email and answer, the practices cooling down.
    ///
    /// Example: psymatch search status tour-1
    Status {
        /// The patient's pseudonymous id.
        patient: String,
        /// Print the matcher's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Why a practice was asked, or not, for a patient: each of the nine
    /// rules with the values it compares, passed or failed.
    ///
    /// Example: psymatch search why tour-1 t-17
    Why {
        /// The patient's pseudonymous id.
        patient: String,
        /// The practice.
        therapist: String,
        /// Print the matcher's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
}

/// A processor's query surface and a token for it.
pub struct Surface {
    /// The processor, for messages.
    pub name: &'static str,
    /// Base URL, e.g. `http://127.0.0.1:9467`.
    pub url: String,
    /// Bearer token (`PSYMATCH_TOKEN`).
    pub token: Option<String>,
}

impl Surface {
    /// GETs `path`; a refusal becomes an error with the surface's own
    /// message, an unreachable surface an error naming its address.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let Some(token) = &self.token else {
            bail!(
                "a query needs a token: set PSYMATCH_TOKEN or pass --token (see docs/queries.md)"
            );
        };
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let response = reqwest::Client::new()
            .get(&url)
            .bearer_auth(token)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .await
            .map_err(|error| {
                anyhow::anyhow!("the {} at {} does not answer: {error}", self.name, self.url)
            })?;
        let status = response.status();
        let body: Value = response.json().await.with_context(|| {
            format!(
                "the {} at {} answered {status} without JSON",
                self.name, self.url
            )
        })?;
        if !status.is_success() {
            bail!(
                "{} ({status})",
                body["message"].as_str().unwrap_or("the query was refused")
            );
        }
        Ok(body)
    }
}

/// `id` for a URL path: characters beyond letters, digits, `-`, `_` and
/// `.` percent-encoded, so the matcher, not the URL, judges the id.
pub fn path_segment(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// The open inquiry holding the patient of `search` at `therapist`; an
/// error listing the open ones when there is none.
pub fn open_inquiry(search: &Value, therapist: &str) -> anyhow::Result<String> {
    let open: Vec<&Value> = search["inquiries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["answered_at"].is_null() && i["state"] != "email failed")
        .collect();
    if let Some(inquiry) = open.iter().find(|i| i["therapist_id"] == therapist) {
        return Ok(text(&inquiry["inquiry_id"]));
    }
    let others: Vec<String> = open
        .iter()
        .map(|i| format!("{} at {}", text(&i["inquiry_id"]), text(&i["therapist_id"])))
        .collect();
    bail!(
        "patient {} has no open inquiry at {therapist}; open: {}",
        text(&search["patient_id"]),
        if others.is_empty() {
            "none".to_string()
        } else {
            others.join(", ")
        }
    )
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The search as a person reads it.
pub fn render(search: &Value) -> String {
    let mut out = String::new();
    let line = |out: &mut String, label: &str, value: String| {
        out.push_str(&format!("{label:<14} {value}\n"));
    };
    line(&mut out, "patient", text(&search["patient_id"]));
    // The matcher's `since` is when the search started: a placed search
    // dates from the answer that placed it.
    let status = text(&search["status"]);
    let placed_at = search["inquiries"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i["inquiry_id"] == search["placed"]["inquiry_id"])
        .map(|i| text(&i["answered_at"]));
    let since = text(&search["since"]);
    let status = match (status.as_str(), placed_at) {
        ("ACTIVE", _) => format!("ACTIVE since {since}"),
        ("PLACED", Some(at)) if at != "-" => {
            format!("PLACED since {at} (search started {since})")
        }
        (other, _) => format!("{other} (search started {since})"),
    };
    line(&mut out, "status", status);
    if !search["placed"].is_null() {
        line(
            &mut out,
            "placed with",
            format!(
                "{} (inquiry {})",
                text(&search["placed"]["therapist_id"]),
                text(&search["placed"]["inquiry_id"])
            ),
        );
    }
    let limits = &search["limits"];
    line(
        &mut out,
        "limits",
        format!(
            "{} km, {} min, {}, {} practices at once",
            text(&limits["max_distance_km"]),
            text(&limits["max_travel_minutes"]),
            text(&limits["transport"]),
            text(&limits["practices_at_once"])
        ),
    );
    // Columns as wide as their longest cell (practice ids are UUIDs).
    let header = ["inquiry", "practice", "emailed", "answer", "state"];
    let fields = [
        "inquiry_id",
        "therapist_id",
        "emailed_at",
        "answer",
        "state",
    ];
    let rows: Vec<Vec<String>> = search["inquiries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|inquiry| fields.iter().map(|f| text(&inquiry[*f])).collect())
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    out.push('\n');
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    let cooling: Vec<String> = search["cooling"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| format!("{} until {}", text(&c["therapist_id"]), text(&c["until"])))
        .collect();
    if !cooling.is_empty() {
        out.push_str(&format!("\ncooling        {}\n", cooling.join(", ")));
    }
    out
}

/// A `why` answer as a person reads it: the verdict, then a line per rule.
pub fn render_why(why: &Value) -> String {
    let verdict = &why["verdict"];
    let mut out = format!(
        "{} for {}: {}",
        text(&why["therapist_id"]),
        text(&why["patient_id"]),
        text(&verdict["decision"])
    );
    if !verdict["detail"].is_null() {
        out.push_str(&format!(" ({})", text(&verdict["detail"])));
    }
    if !why["rank"].is_null() {
        out.push_str(&format!(
            ", rank {} of {} candidates",
            text(&why["rank"]["position"]),
            text(&why["rank"]["of"])
        ));
    }
    out.push('\n');
    for rule in why["rules"].as_array().into_iter().flatten() {
        let mark = if rule["passed"] == true {
            "ok  "
        } else {
            "FAIL"
        };
        out.push_str(&format!(
            "{mark} rule {} {:<52} {}\n",
            text(&rule["rule"]),
            text(&rule["name"]),
            rule["compared"]
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_search_reads_as_a_table() {
        let search = json!({"patient_id": "p-1", "status": "ACTIVE", "since": "2026-12-01T10:00:00+00:00",
            "placed": null, "limits": {"max_distance_km": 20.0, "max_travel_minutes": null,
            "transport": "CAR", "practices_at_once": 3},
            "inquiries": [{"inquiry_id": "i-1-1", "therapist_id": "t-1", "emailed_at": null,
                           "answer": null, "state": "waiting for the practice's weekly email window"}],
            "cooling": [{"therapist_id": "t-2", "until": "2026-12-29T10:00:00+00:00"}]});
        let table = render(&search);
        assert!(table.contains("ACTIVE since 2026-12-01"), "{table}");
        assert!(
            table.contains("20.0 km, - min, CAR, 3 practices at once"),
            "{table}"
        );
        assert!(table.contains("i-1-1    t-1"), "{table}");
        assert!(table.contains("t-2 until 2026-12-29"), "{table}");
    }

    #[test]
    fn a_placed_search_dates_from_its_answer_and_long_ids_keep_the_columns() {
        let practice = "3f2b8c1e-9a4d-4e7b-8c1f-2d3e4f5a6b7c";
        let search = json!({"patient_id": "p-1", "status": "PLACED", "since": "2026-12-01T10:00:00+00:00",
            "placed": {"therapist_id": practice, "inquiry_id": "i-1-2"}, "limits": {},
            "inquiries": [
                {"inquiry_id": "i-1-1", "therapist_id": "t-1", "emailed_at": null,
                 "answer": "REJECTED_NO_CAPACITY", "answered_at": "2026-12-03T09:00:00+00:00", "state": "answered"},
                {"inquiry_id": "i-1-2", "therapist_id": practice, "emailed_at": "2026-12-02T08:00:00+00:00",
                 "answer": "ACCEPTED", "answered_at": "2026-12-05T11:00:00+00:00", "state": "answered"}],
            "cooling": []});
        let table = render(&search);
        assert!(
            table.contains("PLACED since 2026-12-05T11:00:00+00:00 (search started 2026-12-01"),
            "{table}"
        );
        let lines: Vec<&str> = table
            .lines()
            .skip_while(|l| !l.starts_with("inquiry"))
            .collect();
        assert_eq!(lines.len(), 3, "{table}");
        let column = |line: &str, word: &str| line.find(word).unwrap();
        assert_eq!(column(lines[0], "emailed"), column(lines[2], "2026-12-02"));
        assert!(
            lines[1][column(lines[0], "emailed")..].starts_with("-  "),
            "{table}"
        );
        assert_eq!(column(lines[0], "state"), column(lines[1], "answered"));
    }
}
