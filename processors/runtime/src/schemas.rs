//! The value schemas of every topic (`schemas/`), bundled and checked.
//!
//! Types used on several topics (genders, procedures, time slots, the
//! rejection record, ...) are written once in `schemas/common.avsc`. A topic's
//! file refers to them by full name; [`bundle`] inlines each at its first use,
//! so the schema registered for `<topic>-value` is self-contained, as every
//! Kafka client expects, while the repository keeps one definition.
//!
//! Every topic value is an envelope (docs/design.md, "Topics") whose `payload` is a
//! union of records. Each of those records names its `event_type` in a custom
//! attribute; that attribute is how an envelope's `event_type` and its payload
//! branch stay one and the same thing, for people publishing JSON and for
//! processors alike.

use apache_avro::Schema;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// Why a schema file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Not JSON.
    #[error("{file}: not valid JSON: {reason}")]
    Json {
        /// The file.
        file: String,
        /// Parser message.
        reason: String,
    },
    /// JSON, but apache-avro refuses it.
    #[error("{file}: not a valid Avro schema: {reason}")]
    Avro {
        /// The file.
        file: String,
        /// apache-avro's message.
        reason: String,
    },
    /// Valid Avro that breaks psymatch's conventions.
    #[error("{file}: {reason}")]
    Convention {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

/// The fields every envelope has, in this order, before `payload`.
pub const ENVELOPE_FIELDS: [&str; 7] = [
    "event_id",
    "event_type",
    "version",
    "timestamp",
    "producer",
    "correlation_id",
    "payload",
];

/// One record type a topic carries.
#[derive(Debug, Clone)]
pub struct Branch {
    /// Position in the payload union.
    pub index: u32,
    /// Full Avro name of the record, e.g. `psymatch.patient.RegisterPatient`.
    pub record: String,
    /// The envelope `event_type` this record travels under, e.g. `patient.register`.
    pub event_type: String,
}

/// A topic's value schema, bundled and parsed.
#[derive(Debug, Clone)]
pub struct TopicSchema {
    /// The topic.
    pub topic: String,
    /// The self-contained schema as registered.
    pub json: Value,
    /// The parsed schema.
    pub schema: Schema,
    /// The payload union's records.
    pub branches: Vec<Branch>,
    /// Every named type of the schema, resolved once (JSON conversion
    /// follows references through it).
    pub names: std::collections::HashMap<apache_avro::schema::Name, Schema>,
}

impl TopicSchema {
    /// `json` resolved against the schema's named record `name` (full
    /// name, `psymatch.PatientDetails`) the way a value of the topic is:
    /// defaults filled in, every misfit named with its path. For values
    /// that travel inside a seal, which the topic's schema cannot check.
    pub fn resolve_named(&self, name: &str, json: &Value) -> Result<Value, String> {
        let full = apache_avro::schema::Name::new(name).map_err(|e| e.to_string())?;
        let schema = self
            .names
            .get(&full)
            .ok_or_else(|| format!("the schema of {} has no type {name}", self.topic))?;
        let avro = crate::avro_json::to_avro_within(json, schema, &self.names)
            .map_err(|error| error.to_string())?;
        Ok(crate::avro_json::to_json(&avro))
    }

    /// Every misfit of `json` against the named type `name` of this topic's
    /// schema, each as `path: reason` (empty when it fits).
    pub fn misfits_named(&self, name: &str, json: &Value) -> Vec<String> {
        let Some(schema) = apache_avro::schema::Name::new(name)
            .ok()
            .and_then(|full| self.names.get(&full))
        else {
            return vec![format!("the schema of {} has no type {name}", self.topic)];
        };
        crate::avro_json::misfits_within(json, schema, &self.names)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Bundles `topic_json` with the shared types and checks the conventions:
    /// the envelope fields, a `doc` on every field, and one distinct
    /// `event_type` per payload record.
    pub fn new(
        topic: &str,
        file: &str,
        common: &Value,
        topic_json: &Value,
    ) -> Result<Self, SchemaError> {
        let convention = |reason: String| SchemaError::Convention {
            file: file.to_string(),
            reason,
        };
        let json = bundle(common, topic_json).map_err(convention)?;
        let schema = Schema::parse(&json).map_err(|error| SchemaError::Avro {
            file: file.to_string(),
            reason: error.to_string(),
        })?;
        let mut missing_docs = Vec::new();
        fields_without_doc(&json, "", &mut missing_docs);
        if !missing_docs.is_empty() {
            return Err(convention(format!(
                "fields without a doc: {}",
                missing_docs.join(", ")
            )));
        }
        let fields: Vec<&str> = json["fields"]
            .as_array()
            .map(|fields| fields.iter().filter_map(|f| f["name"].as_str()).collect())
            .unwrap_or_default();
        if fields != ENVELOPE_FIELDS {
            return Err(convention(format!(
                "the envelope must have the fields {ENVELOPE_FIELDS:?}, found {fields:?}"
            )));
        }
        let branches = branches(&json).map_err(convention)?;
        let names = apache_avro::schema::ResolvedSchema::try_from(&schema)
            .map_err(|error| SchemaError::Avro {
                file: file.to_string(),
                reason: error.to_string(),
            })?
            .get_names()
            .iter()
            .map(|(name, schema)| (name.clone(), (*schema).clone()))
            .collect();
        Ok(TopicSchema {
            topic: topic.to_string(),
            json,
            schema,
            branches,
            names,
        })
    }

    /// The branch an `event_type` travels in.
    pub fn branch_for(&self, event_type: &str) -> Option<&Branch> {
        self.branches.iter().find(|b| b.event_type == event_type)
    }

    /// Every `event_type` this topic carries.
    pub fn event_types(&self) -> Vec<&str> {
        self.branches
            .iter()
            .map(|b| b.event_type.as_str())
            .collect()
    }

    /// The parsed payload union (its variants are the branches, in order).
    pub fn payload_schema(&self) -> &Schema {
        match &self.schema {
            Schema::Record(record) => &record.fields[ENVELOPE_FIELDS.len() - 1].schema,
            _ => unreachable!("checked in new(): the envelope is a record"),
        }
    }
}

fn branches(json: &Value) -> Result<Vec<Branch>, String> {
    let payload = json["fields"]
        .as_array()
        .and_then(|fields| fields.iter().find(|f| f["name"] == "payload"))
        .ok_or("no payload field")?;
    let union = payload["type"]
        .as_array()
        .ok_or("payload must be a union of records")?;
    let envelope_ns = json["namespace"].as_str().unwrap_or("");
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (index, member) in union.iter().enumerate() {
        let event_type = member["event_type"]
            .as_str()
            .ok_or_else(|| format!("payload branch {index} has no \"event_type\" attribute"))?;
        if !seen.insert(event_type.to_string()) {
            return Err(format!(
                "event_type {event_type} is used by two payload records"
            ));
        }
        let name = member["name"].as_str().unwrap_or_default();
        let namespace = member["namespace"].as_str().unwrap_or(envelope_ns);
        out.push(Branch {
            index: index as u32,
            record: full_name(name, namespace),
            event_type: event_type.to_string(),
        });
    }
    Ok(out)
}

fn fields_without_doc(value: &Value, path: &str, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            let here = map
                .get("name")
                .and_then(Value::as_str)
                .map(|name| format!("{path}/{name}"))
                .unwrap_or_else(|| path.to_string());
            if let Some(Value::Array(fields)) = map.get("fields") {
                for field in fields {
                    let doc = field.get("doc").and_then(Value::as_str).unwrap_or("");
                    if doc.trim().is_empty() {
                        out.push(format!("{here}.{}", field["name"].as_str().unwrap_or("?")));
                    }
                    fields_without_doc(&field["type"], &here, out);
                }
            }
            for key in ["type", "items", "values"] {
                if let Some(inner) = map.get(key) {
                    fields_without_doc(inner, &here, out);
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| fields_without_doc(item, path, out)),
        _ => {}
    }
}

const PRIMITIVES: [&str; 8] = [
    "null", "boolean", "int", "long", "float", "double", "bytes", "string",
];

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_string()
    } else {
        format!("{namespace}.{name}")
    }
}

/// Inlines the named types of `common` (a JSON array of Avro named types)
/// that `schema` refers to, each at its first use; later uses stay references.
pub fn bundle(common: &Value, schema: &Value) -> Result<Value, String> {
    let mut library = BTreeMap::new();
    for definition in common
        .as_array()
        .ok_or("common types must be a JSON array")?
    {
        let name = definition["name"]
            .as_str()
            .ok_or("a common type has no name")?;
        let namespace = definition["namespace"].as_str().unwrap_or("");
        library.insert(full_name(name, namespace), definition.clone());
    }
    let mut defined = BTreeSet::new();
    Ok(inline(schema, "", &library, &mut defined))
}

fn inline(
    value: &Value,
    namespace: &str,
    library: &BTreeMap<String, Value>,
    defined: &mut BTreeSet<String>,
) -> Value {
    match value {
        Value::String(name) if !PRIMITIVES.contains(&name.as_str()) => {
            let full = full_name(name, namespace);
            if defined.contains(&full) {
                return value.clone();
            }
            match library.get(&full) {
                Some(definition) => inline(definition, namespace, library, defined),
                None => value.clone(),
            }
        }
        Value::Array(members) => Value::Array(
            members
                .iter()
                .map(|member| inline(member, namespace, library, defined))
                .collect(),
        ),
        Value::Object(map) => inline_object(map, namespace, library, defined),
        _ => value.clone(),
    }
}

fn inline_object(
    map: &Map<String, Value>,
    namespace: &str,
    library: &BTreeMap<String, Value>,
    defined: &mut BTreeSet<String>,
) -> Value {
    let mut out = map.clone();
    let kind = map.get("type").and_then(Value::as_str).unwrap_or("");
    let mut inner_ns = namespace.to_string();
    if matches!(kind, "record" | "error" | "enum" | "fixed") {
        let name = map.get("name").and_then(Value::as_str).unwrap_or("");
        let own_ns = map
            .get("namespace")
            .and_then(Value::as_str)
            .unwrap_or(namespace);
        let full = full_name(name, own_ns);
        inner_ns = full
            .rsplit_once('.')
            .map(|(ns, _)| ns.to_string())
            .unwrap_or_default();
        defined.insert(full);
    }
    if let Some(Value::Array(fields)) = map.get("fields") {
        let fields = fields
            .iter()
            .map(|field| {
                let mut field = field.clone();
                if let Some(kind) = field.get("type") {
                    field["type"] = inline(kind, &inner_ns, library, defined);
                }
                field
            })
            .collect();
        out.insert("fields".into(), Value::Array(fields));
    }
    for key in ["items", "values"] {
        if let Some(inner) = map.get(key) {
            out.insert(key.into(), inline(inner, &inner_ns, library, defined));
        }
    }
    if let Some(inner @ (Value::Object(_) | Value::Array(_))) = map.get("type") {
        out.insert("type".into(), inline(inner, &inner_ns, library, defined));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn common() -> Value {
        json!([
            {"type": "enum", "name": "Gender", "namespace": "psymatch", "doc": "g",
             "symbols": ["FEMALE", "MALE", "DIVERSE"]},
            {"type": "record", "name": "Slot", "namespace": "psymatch", "doc": "s",
             "fields": [{"name": "g", "type": "psymatch.Gender", "doc": "d"}]}
        ])
    }

    #[test]
    fn bundle_inlines_first_use_and_keeps_later_references() {
        let topic = json!({"type": "record", "name": "T", "namespace": "psymatch.t", "fields": [
            {"name": "a", "type": "psymatch.Slot", "doc": "x"},
            {"name": "b", "type": {"type": "array", "items": "psymatch.Gender"}, "doc": "y"}
        ]});
        let bundled = bundle(&common(), &topic).unwrap();
        assert_eq!(bundled["fields"][0]["type"]["name"], "Slot");
        assert_eq!(
            bundled["fields"][0]["type"]["fields"][0]["type"]["name"],
            "Gender"
        );
        assert_eq!(bundled["fields"][1]["type"]["items"], "psymatch.Gender");
        Schema::parse(&bundled).expect("bundled schema parses");
    }

    #[test]
    fn conventions_are_enforced() {
        let envelope = |payload_doc: &str, branches: Value| {
            json!({"type": "record", "name": "E", "namespace": "psymatch.t", "fields": [
                {"name": "event_id", "type": {"type": "string", "logicalType": "uuid"}, "doc": "i"},
                {"name": "event_type", "type": "string", "doc": "t"},
                {"name": "version", "type": "int", "doc": "v"},
                {"name": "timestamp", "type": {"type": "long", "logicalType": "timestamp-millis"}, "doc": "t"},
                {"name": "producer", "type": "string", "doc": "p"},
                {"name": "correlation_id", "type": ["null", "string"], "default": null, "doc": "c"},
                {"name": "payload", "type": branches, "doc": payload_doc}
            ]})
        };
        let branch = |name: &str, event_type: &str| {
            json!({"type": "record", "name": name, "event_type": event_type, "doc": "r",
                   "fields": [{"name": "g", "type": "psymatch.Gender", "doc": "g"}]})
        };
        let good = envelope("p", json!([branch("A", "t.a"), branch("B", "t.b")]));
        let schema = TopicSchema::new("t", "t.avsc", &common(), &good).unwrap();
        assert_eq!(schema.event_types(), vec!["t.a", "t.b"]);
        assert_eq!(schema.branch_for("t.b").unwrap().record, "psymatch.t.B");
        assert_eq!(schema.branch_for("t.b").unwrap().index, 1);

        let no_doc = envelope("", json!([branch("A", "t.a")]));
        let error = TopicSchema::new("t", "t.avsc", &common(), &no_doc).unwrap_err();
        assert!(error.to_string().contains("/E.payload"), "{error}");

        let twice = envelope("p", json!([branch("A", "t.a"), branch("B", "t.a")]));
        let error = TopicSchema::new("t", "t.avsc", &common(), &twice).unwrap_err();
        assert!(error.to_string().contains("used by two"), "{error}");
    }
}
