//! The KBV doctor search (116117): the request `POST /api/data` takes, and
//! its answer, `arztPraxisDatas` plus `moreResults`.

use crate::therapist::{Implied, Raw};
use serde::Deserialize;
use serde_json::{Value, json};

/// The psychotherapy filters of a search, as filter codes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    /// Procedures: `V`, `T`, `A`, `S`.
    pub procedures: Vec<char>,
    /// Age groups: `E` adults, `K` children and adolescents.
    pub age_groups: Vec<char>,
    /// Settings: `E` individual, `G` group.
    pub settings: Vec<char>,
}

impl Filters {
    /// From the command's symbols (`BEHAVIOURAL`, `ADULTS`, `GROUP`, ...).
    pub fn from_symbols(
        procedures: &[String],
        age_groups: &[String],
        settings: &[String],
    ) -> Result<Filters, String> {
        let map = |symbols: &[String], table: &[(&str, char)], what: &str| {
            symbols
                .iter()
                .map(|s| {
                    table
                        .iter()
                        .find(|(name, _)| name == s)
                        .map(|(_, code)| *code)
                        .ok_or_else(|| format!("{s} is not a {what}"))
                })
                .collect::<Result<Vec<char>, String>>()
        };
        Ok(Filters {
            procedures: map(
                procedures,
                &[
                    ("BEHAVIOURAL", 'V'),
                    ("PSYCHODYNAMIC", 'T'),
                    ("ANALYTIC", 'A'),
                    ("SYSTEMIC", 'S'),
                ],
                "procedure",
            )?,
            age_groups: map(
                age_groups,
                &[("ADULTS", 'E'), ("CHILDREN_AND_ADOLESCENTS", 'K')],
                "age group",
            )?,
            settings: map(settings, &[("INDIVIDUAL", 'E'), ("GROUP", 'G')], "setting")?,
        })
    }

    /// `filterSelections` of the request body: psychotherapists (`fgg` 12)
    /// with the chosen procedures, age groups and settings.
    pub fn selections(&self) -> Value {
        let codes = |codes: &[char]| {
            codes
                .iter()
                .map(|c| json!({"code": c.to_string()}))
                .collect::<Vec<_>>()
        };
        let mut selections = vec![
            json!({"title": "Fachgebiet Kategorie", "fieldName": "fgg", "selectedCodes": ["12"]}),
        ];
        for (field, title, chosen) in [
            ("ptv", "Psychotherapeutische Verfahren", &self.procedures),
            ("pta", "Altersgruppe", &self.age_groups),
            ("pts", "Setting", &self.settings),
        ] {
            if !chosen.is_empty() {
                selections.push(json!({
                    "title": title,
                    "fieldName": field,
                    "selectedCodes": chosen.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                    "codes": codes(chosen),
                }));
            }
        }
        Value::Array(selections)
    }

    /// What every result is known to offer: a filter naming one value.
    pub fn implied(&self) -> Implied {
        let one = |codes: &[char], table: &[(char, &'static str)]| -> Vec<&'static str> {
            match codes {
                [code] => table
                    .iter()
                    .filter(|(c, _)| c == code)
                    .map(|(_, s)| *s)
                    .collect(),
                _ => Vec::new(),
            }
        };
        Implied {
            procedures: one(
                &self.procedures,
                &[
                    ('V', "BEHAVIOURAL"),
                    ('T', "PSYCHODYNAMIC"),
                    ('A', "ANALYTIC"),
                    ('S', "SYSTEMIC"),
                ],
            ),
            age_groups: one(
                &self.age_groups,
                &[('E', "ADULTS"), ('K', "CHILDREN_AND_ADOLESCENTS")],
            ),
            settings: one(&self.settings, &[('E', "INDIVIDUAL"), ('G', "GROUP")]),
        }
    }
}

/// The JSON body of a search around a position.
pub fn request_body(latitude: f64, longitude: f64, radius_km: u32, filters: &Filters) -> Value {
    json!({
        "r": radius_km,
        "lat": latitude,
        "lon": longitude,
        "filterSelections": filters.selections(),
        "locOrigin": "USER_INPUT",
        "initialSearch": true,
        "viaDeeplink": false,
    })
}

/// The `req-val` header: a short token the site derives from the
/// coordinates in its script. The derivation is the site's and changes with
/// it, so it is kept in this one function; this build uses the SHA-256 of
/// the coordinates with 6 decimals, first 12 hex digits (what the local
/// stand-in checks). See docs/processors/scraper.md.
pub fn request_token(latitude: f64, longitude: f64) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("{latitude:.6},{longitude:.6}").as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// One answer of the search.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The practices found.
    pub records: Vec<Raw>,
    /// Whether the search had more results than it returned.
    pub more_results: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    arzt_praxis_datas: Vec<Value>,
    #[serde(default)]
    more_results: bool,
}

/// Parses an answer. A body that is not such an answer is an error; a
/// practice entry that is not an object is counted by the caller as invalid
/// through an empty record (it fails normalisation with a reason).
pub fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    let body: Body = serde_json::from_slice(body).map_err(|e| {
        format!("not a KBV search answer (expected arztPraxisDatas and moreResults): {e}")
    })?;
    Ok(Answer {
        records: body.arzt_praxis_datas.iter().map(raw_of).collect(),
        more_results: body.more_results,
    })
}

fn text(value: &Value, field: &str) -> Option<String> {
    match &value[field] {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(value: &Value, field: &str) -> Option<f64> {
    match &value[field] {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().replace(',', ".").parse().ok(),
        _ => None,
    }
}

/// Texts of a list of strings or of `{key, value}` objects.
fn texts(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .flat_map(|item| match item {
                    Value::String(s) => vec![s.clone()],
                    Value::Object(_) => ["key", "value", "name", "text"]
                        .iter()
                        .filter_map(|k| item[*k].as_str().map(str::to_string))
                        .collect(),
                    _ => Vec::new(),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One `arztPraxisDatas` entry as a raw record.
fn raw_of(entry: &Value) -> Raw {
    let mut qualifications = texts(&entry["psy"]);
    // `ag` entries are {key, value} pairs of the practice's groups; only
    // their values say anything about procedures and age groups.
    qualifications.extend(
        entry["ag"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|item| item["value"].as_str().or(item.as_str()).map(str::to_string)),
    );
    let mut hours = Vec::new();
    for day in entry["tsz"].as_array().into_iter().flatten() {
        let Some(name) = day["d"].as_str() else {
            continue;
        };
        for kind in day["tszDesTyps"].as_array().into_iter().flatten() {
            let typ = kind["typ"].as_str().unwrap_or_default();
            for time in kind["sprechzeiten"].as_array().into_iter().flatten() {
                if let Some(zeit) = time["zeit"].as_str() {
                    hours.push((name.to_string(), typ.to_string(), zeit.to_string()));
                }
            }
        }
    }
    Raw {
        id: text(entry, "id"),
        salutation: text(entry, "anrede"),
        title: text(entry, "titel"),
        first_name: text(entry, "vorname"),
        last_name: text(entry, "name"),
        gender: text(entry, "geschlecht"),
        street: text(entry, "strasse"),
        house_number: text(entry, "hausnummer"),
        postcode: text(entry, "plz"),
        city: text(entry, "ort"),
        latitude: number(entry, "lat"),
        longitude: number(entry, "lon"),
        phone: text(entry, "tel"),
        fax: text(entry, "fax"),
        email: text(entry, "email"),
        website: text(entry, "web"),
        languages: texts(&entry["fs"]),
        qualifications,
        hours,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_become_selections_and_implied_values() {
        let filters = Filters::from_symbols(
            &["BEHAVIOURAL".into()],
            &[],
            &["GROUP".into(), "INDIVIDUAL".into()],
        )
        .unwrap();
        let selections = filters.selections();
        assert_eq!(selections[0]["fieldName"], "fgg");
        assert_eq!(selections[1]["fieldName"], "ptv");
        assert_eq!(selections[1]["selectedCodes"], json!(["V"]));
        assert_eq!(selections[2]["fieldName"], "pts");
        let implied = filters.implied();
        assert_eq!(implied.procedures, vec!["BEHAVIOURAL"]);
        assert!(implied.settings.is_empty(), "two settings imply neither");
        assert!(
            Filters::from_symbols(&["HYPNOSIS".into()], &[], &[])
                .unwrap_err()
                .contains("HYPNOSIS")
        );
    }

    #[test]
    fn the_token_depends_on_the_coordinates() {
        let a = request_token(52.52, 13.405);
        assert_eq!(a.len(), 12);
        assert_eq!(a, request_token(52.52, 13.405));
        assert_ne!(a, request_token(52.52, 13.406));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for body in [
            &b"<html>Wartungsarbeiten</html>"[..],
            b"{}",
            br#"{"arztPraxisDatas": 5}"#,
            b"",
        ] {
            assert!(
                parse_answer(body)
                    .unwrap_err()
                    .contains("not a KBV search answer")
            );
        }
        let odd = parse_answer(br#"{"arztPraxisDatas": [7, {"name": "X"}], "moreResults": true}"#)
            .unwrap();
        assert_eq!(odd.records.len(), 2);
        assert_eq!(odd.records[0], Raw::default());
        assert!(odd.more_results);
    }
}
