//! JSON for people, Avro on the wire.
//!
//! People write commands as plain JSON and read topics as JSON lines; the
//! conversion is guided by the schema so that a command that does not fit
//! gets an error naming the field and what was expected. Plain JSON is
//! accepted where Avro's JSON encoding would wrap unions (`{"string": "x"}`);
//! the wrapped form is accepted too, and required when a value would fit more
//! than one branch. Dates are written `YYYY-MM-DD`, timestamps RFC 3339.

use apache_avro::Schema;
use apache_avro::schema::{Name, NamesRef, ResolvedSchema};
use apache_avro::types::Value as Avro;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde_json::{Map, Number, Value as Json};
use std::collections::HashMap;

/// A JSON value that does not fit its schema, with where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FitError {
    /// Dotted path of the offending value, e.g. `payload.details.postcode`.
    pub path: String,
    /// What was expected.
    pub reason: String,
}

/// Converts JSON into an Avro value of `schema`.
pub fn to_avro(json: &Json, schema: &Schema) -> Result<Avro, FitError> {
    let resolved = ResolvedSchema::try_from(schema).map_err(|error| FitError {
        path: String::new(),
        reason: format!("schema does not resolve: {error}"),
    })?;
    Converter {
        names: resolved.get_names(),
    }
    .convert(json, schema, &Path::Root)
}

/// Like [`to_avro`] for a schema nested in a larger one whose named types
/// `names` holds.
pub fn to_avro_within<N: Names>(json: &Json, schema: &Schema, names: &N) -> Result<Avro, FitError> {
    Converter { names }.convert(json, schema, &Path::Root)
}

/// Every misfit of `json` against `schema` (nested in a larger one whose
/// named types `names` holds), not only the first: a record's fields are
/// each checked, so that a person fixes them all in one go.
pub fn misfits_within<N: Names>(json: &Json, schema: &Schema, names: &N) -> Vec<FitError> {
    let mut found = Vec::new();
    Converter { names }.misfits(json, schema, &Path::Root, &mut found);
    found
}

/// A table of named types by name.
pub trait Names {
    /// The schema named `name`.
    fn lookup(&self, name: &Name) -> Option<&Schema>;
}

impl Names for NamesRef<'_> {
    fn lookup(&self, name: &Name) -> Option<&Schema> {
        self.get(name).copied()
    }
}

impl Names for HashMap<Name, Schema> {
    fn lookup(&self, name: &Name) -> Option<&Schema> {
        self.get(name)
    }
}

struct Converter<'a, N: Names> {
    names: &'a N,
}

/// Where a value sits in the JSON being converted: built as the
/// conversion descends and written out only for an error (a record's
/// fields and an array's items would otherwise each allocate their path).
#[derive(Clone, Copy)]
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Item(&'a Path<'a>, usize),
}

impl Path<'_> {
    fn render(&self) -> String {
        match self {
            Path::Root => String::new(),
            Path::Field(parent, field) => {
                let parent = parent.render();
                if parent.is_empty() {
                    field.to_string()
                } else {
                    format!("{parent}.{field}")
                }
            }
            Path::Item(parent, index) => format!("{}[{index}]", parent.render()),
        }
    }
}

fn fail<T>(path: &Path<'_>, reason: impl Into<String>) -> Result<T, FitError> {
    let path = path.render();
    Err(FitError {
        path: if path.is_empty() {
            "(value)".into()
        } else {
            path
        },
        reason: reason.into(),
    })
}

fn kind(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// The name a union branch goes by in Avro's JSON encoding.
fn branch_name(schema: &Schema) -> String {
    match schema {
        Schema::Record(r) => r.name.fullname(None),
        Schema::Enum(e) => e.name.fullname(None),
        Schema::Fixed(f) => f.name.fullname(None),
        Schema::Ref { name } => name.fullname(None),
        Schema::Array(_) => "array".into(),
        Schema::Map(_) => "map".into(),
        other => format!("{:?}", apache_avro::schema::SchemaKind::from(other)).to_ascii_lowercase(),
    }
}

impl<N: Names> Converter<'_, N> {
    fn convert(&self, json: &Json, schema: &Schema, path: &Path<'_>) -> Result<Avro, FitError> {
        let integer = |json: &Json| json.as_i64();
        match schema {
            Schema::Null => match json {
                Json::Null => Ok(Avro::Null),
                other => fail(path, format!("expected null, found {}", kind(other))),
            },
            Schema::Boolean => match json {
                Json::Bool(b) => Ok(Avro::Boolean(*b)),
                other => fail(
                    path,
                    format!("expected true or false, found {}", kind(other)),
                ),
            },
            Schema::Int => match integer(json).map(i32::try_from) {
                Some(Ok(n)) => Ok(Avro::Int(n)),
                _ => fail(
                    path,
                    format!("expected a 32-bit integer, found {}", kind(json)),
                ),
            },
            Schema::Long => match integer(json) {
                Some(n) => Ok(Avro::Long(n)),
                None => fail(path, format!("expected an integer, found {}", kind(json))),
            },
            Schema::Float => match json.as_f64() {
                Some(n) => Ok(Avro::Float(n as f32)),
                None => fail(path, format!("expected a number, found {}", kind(json))),
            },
            Schema::Double => match json.as_f64() {
                Some(n) => Ok(Avro::Double(n)),
                None => fail(path, format!("expected a number, found {}", kind(json))),
            },
            Schema::String => match json {
                Json::String(s) => Ok(Avro::String(s.clone())),
                other => fail(path, format!("expected a string, found {}", kind(other))),
            },
            Schema::Bytes => match json {
                Json::String(s) => Ok(Avro::Bytes(s.as_bytes().to_vec())),
                other => fail(
                    path,
                    format!("expected a string of bytes, found {}", kind(other)),
                ),
            },
            Schema::Uuid(_) => match json.as_str().map(uuid::Uuid::parse_str) {
                Some(Ok(id)) => Ok(Avro::Uuid(id)),
                _ => fail(path, "expected a UUID string".to_string()),
            },
            Schema::Date => self.date(json, path),
            Schema::TimestampMillis => self.timestamp_millis(json, path),
            Schema::Enum(e) => match json.as_str() {
                Some(symbol) => match e.symbols.iter().position(|s| s == symbol) {
                    Some(index) => Ok(Avro::Enum(index as u32, symbol.to_string())),
                    None => fail(path, format!("expected one of {}", e.symbols.join(", "))),
                },
                None => fail(
                    path,
                    format!(
                        "expected one of {}, found {}",
                        e.symbols.join(", "),
                        kind(json)
                    ),
                ),
            },
            Schema::Array(a) => match json {
                Json::Array(items) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.convert(item, &a.items, &Path::Item(path, i)))
                    .collect::<Result<_, _>>()
                    .map(Avro::Array),
                other => fail(path, format!("expected an array, found {}", kind(other))),
            },
            Schema::Map(m) => match json {
                Json::Object(entries) => entries
                    .iter()
                    .map(|(k, v)| {
                        Ok((k.clone(), self.convert(v, &m.types, &Path::Field(path, k))?))
                    })
                    .collect::<Result<_, _>>()
                    .map(Avro::Map),
                other => fail(path, format!("expected an object, found {}", kind(other))),
            },
            Schema::Record(r) => {
                let Json::Object(object) = json else {
                    return fail(
                        path,
                        format!(
                            "expected an object ({}), found {}",
                            r.name.name(),
                            kind(json)
                        ),
                    );
                };
                if let Some(unknown) = object.keys().find(|k| !r.lookup.contains_key(*k)) {
                    let known: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
                    return fail(
                        &Path::Field(path, unknown),
                        format!("unknown field; {} has {}", r.name.name(), known.join(", ")),
                    );
                }
                let mut fields = Vec::with_capacity(r.fields.len());
                for field in &r.fields {
                    let here = Path::Field(path, &field.name);
                    let value = match (object.get(&field.name), &field.default) {
                        (Some(value), _) => self.convert(value, &field.schema, &here)?,
                        (None, Some(default)) => self.default(default, &field.schema, &here)?,
                        (None, None) => return fail(&here, "missing required field"),
                    };
                    fields.push((field.name.clone(), value));
                }
                Ok(Avro::Record(fields))
            }
            Schema::Union(u) => self.union(json, u.variants(), path),
            Schema::Ref { name } => match self.names.lookup(name) {
                Some(target) => self.convert(json, target, path),
                None => fail(
                    path,
                    format!("schema refers to unknown type {}", name.fullname(None)),
                ),
            },
            other => fail(
                path,
                format!("the schema type {other:?} is not supported for JSON input"),
            ),
        }
    }

    /// What [`Converter::convert`] refuses, every misfit of a record's
    /// fields rather than the first.
    fn misfits(&self, json: &Json, schema: &Schema, path: &Path<'_>, found: &mut Vec<FitError>) {
        match (schema, json) {
            (Schema::Ref { name }, _) => match self.names.lookup(name) {
                Some(target) => self.misfits(json, target, path, found),
                None => found.extend(self.convert(json, schema, path).err()),
            },
            (Schema::Record(r), Json::Object(object)) => {
                for unknown in object.keys().filter(|k| !r.lookup.contains_key(*k)) {
                    let known: Vec<&str> = r.fields.iter().map(|f| f.name.as_str()).collect();
                    found.extend(
                        fail::<()>(
                            &Path::Field(path, unknown),
                            format!("unknown field; {} has {}", r.name.name(), known.join(", ")),
                        )
                        .err(),
                    );
                }
                for field in &r.fields {
                    let here = Path::Field(path, &field.name);
                    match (object.get(&field.name), &field.default) {
                        (Some(value), _) => self.misfits(value, &field.schema, &here, found),
                        (None, Some(_)) => {}
                        (None, None) => {
                            found.extend(fail::<()>(&here, "missing required field").err())
                        }
                    }
                }
            }
            _ => found.extend(self.convert(json, schema, path).err()),
        }
    }

    /// A field default is written in the type of the union's first branch.
    fn default(&self, default: &Json, schema: &Schema, path: &Path<'_>) -> Result<Avro, FitError> {
        match schema {
            Schema::Union(u) if !u.variants().is_empty() => {
                let value = self.convert(default, &u.variants()[0], path)?;
                Ok(Avro::Union(0, Box::new(value)))
            }
            _ => self.convert(default, schema, path),
        }
    }

    fn union(&self, json: &Json, variants: &[Schema], path: &Path<'_>) -> Result<Avro, FitError> {
        // Avro's JSON encoding: {"<branch name>": value}.
        if let Json::Object(object) = json
            && object.len() == 1
        {
            let (key, inner) = object.iter().next().expect("one entry");
            let wanted = variants.iter().position(|v| {
                let name = branch_name(v);
                name == *key || name.rsplit('.').next() == Some(key.as_str())
            });
            if let Some(index) = wanted {
                let value = self.convert(inner, &variants[index], path)?;
                return Ok(Avro::Union(index as u32, Box::new(value)));
            }
        }
        // Usually one branch has the value's kind (a string or null): it
        // alone is tried. The search of every branch below tells apart
        // values that fit none and values that fit several.
        let mut kinds = variants
            .iter()
            .enumerate()
            .filter(|(_, variant)| self.could_fit(json, variant));
        if let (Some((index, variant)), None) = (kinds.next(), kinds.next())
            && let Ok(value) = self.convert(json, variant, path)
        {
            return Ok(Avro::Union(index as u32, Box::new(value)));
        }
        let mut fits = Vec::new();
        let mut reasons = Vec::new();
        for (index, variant) in variants.iter().enumerate() {
            match self.convert(json, variant, path) {
                Ok(value) => fits.push((index, value)),
                Err(error) => reasons.push(format!("{}: {}", branch_name(variant), error.reason)),
            }
        }
        match fits.len() {
            1 => {
                let (index, value) = fits.pop().expect("one fit");
                Ok(Avro::Union(index as u32, Box::new(value)))
            }
            0 => fail(
                path,
                format!("fits none of the allowed types ({})", reasons.join("; ")),
            ),
            _ => {
                let names: Vec<String> = fits
                    .iter()
                    .map(|(i, _)| branch_name(&variants[*i]))
                    .collect();
                fail(
                    path,
                    format!(
                        "fits several types ({}); wrap it as {{\"<type>\": value}} to choose",
                        names.join(", ")
                    ),
                )
            }
        }
    }

    /// False when `json` cannot fit `schema` by its kind alone (a string
    /// is no number, null no record); true when it might.
    fn could_fit(&self, json: &Json, schema: &Schema) -> bool {
        match schema {
            Schema::Null => json.is_null(),
            Schema::Boolean => json.is_boolean(),
            Schema::Int | Schema::Long | Schema::Float | Schema::Double => json.is_number(),
            Schema::String | Schema::Bytes | Schema::Uuid(_) | Schema::Enum(_) => json.is_string(),
            Schema::Date | Schema::TimestampMillis => json.is_string() || json.is_number(),
            Schema::Array(_) => json.is_array(),
            Schema::Map(_) | Schema::Record(_) => json.is_object(),
            Schema::Ref { name } => self
                .names
                .lookup(name)
                .is_none_or(|target| self.could_fit(json, target)),
            _ => true,
        }
    }

    fn date(&self, json: &Json, path: &Path<'_>) -> Result<Avro, FitError> {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date");
        match json {
            Json::String(text) => match NaiveDate::parse_from_str(text, "%Y-%m-%d") {
                Ok(date) => Ok(Avro::Date((date - epoch).num_days() as i32)),
                Err(_) => fail(path, "is not a date (YYYY-MM-DD)".to_string()),
            },
            Json::Number(n) => match n.as_i64().map(i32::try_from) {
                Some(Ok(days)) => Ok(Avro::Date(days)),
                _ => fail(path, "is not a day number".to_string()),
            },
            other => fail(
                path,
                format!("expected a date (YYYY-MM-DD), found {}", kind(other)),
            ),
        }
    }

    fn timestamp_millis(&self, json: &Json, path: &Path<'_>) -> Result<Avro, FitError> {
        match json {
            Json::String(text) => match DateTime::parse_from_rfc3339(text) {
                Ok(at) => Ok(Avro::TimestampMillis(at.timestamp_millis())),
                Err(_) => fail(path, "is not an RFC 3339 timestamp".to_string()),
            },
            Json::Number(n) => match n.as_i64() {
                Some(millis) => Ok(Avro::TimestampMillis(millis)),
                None => fail(path, "is not a number of milliseconds".to_string()),
            },
            other => fail(path, format!("expected a timestamp, found {}", kind(other))),
        }
    }
}

/// Renders an Avro value as JSON for people: unions unwrapped, enums as their
/// symbol, dates and timestamps as text.
pub fn to_json(value: &Avro) -> Json {
    match value {
        Avro::Null => Json::Null,
        Avro::Boolean(b) => Json::Bool(*b),
        Avro::Int(n) => Json::from(*n),
        Avro::Long(n) => Json::from(*n),
        Avro::Float(n) => Number::from_f64(f64::from(*n)).map_or(Json::Null, Json::Number),
        Avro::Double(n) => Number::from_f64(*n).map_or(Json::Null, Json::Number),
        Avro::Bytes(bytes) | Avro::Fixed(_, bytes) => {
            Json::String(String::from_utf8_lossy(bytes).into_owned())
        }
        Avro::String(s) | Avro::Enum(_, s) => Json::String(s.clone()),
        Avro::Uuid(id) => Json::String(id.to_string()),
        Avro::Union(_, inner) => to_json(inner),
        Avro::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Avro::Map(entries) => {
            let mut keys: Vec<&String> = entries.keys().collect();
            keys.sort();
            Json::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), to_json(&entries[k])))
                    .collect(),
            )
        }
        Avro::Record(fields) => Json::Object(
            fields
                .iter()
                .map(|(name, value)| (name.clone(), to_json(value)))
                .collect::<Map<_, _>>(),
        ),
        Avro::Date(days) => NaiveDate::from_ymd_opt(1970, 1, 1)
            .and_then(|epoch| epoch.checked_add_signed(chrono::Duration::days(i64::from(*days))))
            .map_or(Json::from(*days), |d| {
                Json::String(d.format("%Y-%m-%d").to_string())
            }),
        Avro::TimestampMillis(millis) => DateTime::<Utc>::from_timestamp_millis(*millis)
            .map_or(Json::from(*millis), |at| {
                Json::String(at.to_rfc3339_opts(SecondsFormat::Millis, true))
            }),
        other => Json::String(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Schema {
        Schema::parse_str(
            r#"{"type":"record","name":"R","namespace":"t","fields":[
                {"name":"id","type":{"type":"string","logicalType":"uuid"}},
                {"name":"born","type":{"type":"int","logicalType":"date"}},
                {"name":"at","type":{"type":"long","logicalType":"timestamp-millis"}},
                {"name":"g","type":{"type":"enum","name":"G","symbols":["F","M"]}},
                {"name":"note","type":["null","string"],"default":null},
                {"name":"n","type":"int","default":7},
                {"name":"tags","type":{"type":"array","items":"string"}},
                {"name":"choice","type":[{"type":"record","name":"A","fields":[{"name":"x","type":"int"}]},
                                         {"type":"record","name":"B","fields":[{"name":"x","type":"int"}]}]}
            ]}"#,
        )
        .unwrap()
    }

    fn good() -> Json {
        json!({"id": "6f1c1d4e-2b9a-4a7e-9a51-0c1f6f0a1b2c", "born": "1990-02-01",
               "at": "2026-11-26T05:00:00.250Z", "g": "F", "tags": ["a"],
               "choice": {"B": {"x": 1}}})
    }

    #[test]
    fn round_trip_with_defaults_and_logical_types() {
        let value = to_avro(&good(), &schema()).unwrap();
        let back = to_json(&value);
        assert_eq!(back["born"], "1990-02-01");
        assert_eq!(back["at"], "2026-11-26T05:00:00.250Z");
        assert_eq!(back["note"], Json::Null);
        assert_eq!(back["n"], 7);
        let Avro::Record(fields) = &value else {
            panic!()
        };
        assert_eq!(
            fields[7].1,
            Avro::Union(1, Box::new(Avro::Record(vec![("x".into(), Avro::Int(1))])))
        );
        // The encoded value is valid for the schema.
        let schema = schema();
        let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .unwrap();
        writer.write_value_to_vec(value).unwrap();
    }

    #[test]
    fn errors_name_the_field_and_the_expectation() {
        let mut bad = good();
        bad["g"] = json!("X");
        let error = to_avro(&bad, &schema()).unwrap_err();
        assert_eq!(error.path, "g");
        assert_eq!(error.reason, "expected one of F, M", "{error}");

        let mut bad = good();
        bad.as_object_mut().unwrap().remove("tags");
        assert_eq!(
            to_avro(&bad, &schema()).unwrap_err().to_string(),
            "tags: missing required field"
        );

        let mut bad = good();
        bad["colour"] = json!("red");
        assert_eq!(to_avro(&bad, &schema()).unwrap_err().path, "colour");

        let mut bad = good();
        bad["born"] = json!("01.02.1990");
        assert!(
            to_avro(&bad, &schema())
                .unwrap_err()
                .reason
                .contains("YYYY-MM-DD")
        );
    }

    #[test]
    fn nested_errors_name_their_path_and_every_branch() {
        let mut bad = good();
        bad["tags"] = json!(["a", 3]);
        let error = to_avro(&bad, &schema()).unwrap_err();
        assert_eq!(error.path, "tags[1]");
        assert!(error.reason.contains("expected a string"), "{error}");

        let mut bad = good();
        bad["choice"] = json!({"B": {"x": "one"}});
        assert_eq!(to_avro(&bad, &schema()).unwrap_err().path, "choice.x");

        // A value of one branch's kind that still does not fit: the error
        // says why for every branch.
        let schema = Schema::parse_str(
            r#"{"type":"record","name":"S","fields":[{"name":"n","type":["null","int"]}]}"#,
        )
        .unwrap();
        let error = to_avro(&json!({"n": 3.5}), &schema).unwrap_err();
        assert_eq!(error.path, "n");
        assert!(
            error.reason.contains("fits none")
                && error.reason.contains("null: expected null")
                && error.reason.contains("int: expected a 32-bit integer"),
            "{error}"
        );
        assert_eq!(
            to_avro(&json!({"n": 3}), &schema).unwrap(),
            Avro::Record(vec![("n".into(), Avro::Union(1, Box::new(Avro::Int(3))))])
        );
    }

    #[test]
    fn ambiguous_union_values_must_be_wrapped() {
        let mut bad = good();
        bad["choice"] = json!({"x": 1});
        let error = to_avro(&bad, &schema()).unwrap_err();
        assert!(
            error.reason.contains("fits several types (t.A, t.B)"),
            "{error}"
        );
        let mut plain = good();
        plain["note"] = json!("hello");
        let Avro::Record(fields) = to_avro(&plain, &schema()).unwrap() else {
            panic!()
        };
        assert_eq!(
            fields[4].1,
            Avro::Union(1, Box::new(Avro::String("hello".into())))
        );
    }
}
