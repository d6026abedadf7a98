//! The envelope every topic value is wrapped in (docs/design.md, "Topics"), and its
//! JSON form for people.
//!
//! A record as a person writes it:
//!
//! ```json
//! {"event_type": "patient.pause_search",
//!  "payload": {"patient_id": "p-1", "reason": "holiday"},
//!  "correlation_id": "optional", "event_id": "optional uuid", "key": "optional"}
//! ```
//!
//! The `event_type` picks the payload record; the Kafka key comes from the
//! payload's key field (topics.yaml) and must agree with `key` when both are
//! given, so a record's key and content can never disagree.

use crate::avro_json::{self, FitError};
use crate::errors::ErrorCode;
use crate::schemas::TopicSchema;
use apache_avro::types::Value as Avro;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value as Json};
use uuid::Uuid;

/// Kafka header names that repeat envelope fields, so that `kcat -f '%h'`
/// and header-based routing work without decoding Avro.
pub mod header {
    /// The envelope's `event_id`.
    pub const EVENT_ID: &str = "event_id";
    /// The envelope's `event_type`.
    pub const EVENT_TYPE: &str = "event_type";
    /// The envelope's `producer`.
    pub const PRODUCER: &str = "producer";
    /// The envelope's `correlation_id`, when it has one.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// The pseudonymous patient ids a record about several patients lists
    /// (`patients[].patient_id` or `patient_ids`), comma-separated: such
    /// records are keyed by something else (an inquiry, an email), and
    /// this finds a patient's without decoding every value.
    pub const PATIENT_IDS: &str = "psymatch.patient_ids";
}

/// The ids of the patients a payload lists: its `patients` records'
/// `patient_id`, else its `patient_ids` strings. Empty for a payload
/// about one patient (keyed by it) or none.
fn listed_patients(payload: &Avro) -> Vec<String> {
    let Avro::Record(fields) = payload else {
        return Vec::new();
    };
    let field = |name: &str| fields.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    let text = |value: &Avro| match value {
        Avro::String(s) => Some(s.clone()),
        Avro::Union(_, inner) => match inner.as_ref() {
            Avro::String(s) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    let items = |value: Option<&Avro>| match value {
        Some(Avro::Array(items)) => items.clone(),
        _ => Vec::new(),
    };
    let from_records: Vec<String> = items(field("patients"))
        .iter()
        .filter_map(|p| match p {
            Avro::Record(fields) => fields
                .iter()
                .find(|(n, _)| n == "patient_id")
                .and_then(|(_, v)| text(v)),
            _ => None,
        })
        .collect();
    if !from_records.is_empty() {
        return from_records;
    }
    items(field("patient_ids"))
        .iter()
        .filter_map(text)
        .collect()
}

/// Why a record cannot be wrapped or unwrapped.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The JSON is not an object with the fields above.
    #[error("{0}")]
    Shape(String),
    /// The topic carries no such `event_type`.
    #[error("topic {topic} carries no event_type '{event_type}'; it carries {known}")]
    UnknownEventType {
        /// The topic.
        topic: String,
        /// What was asked for.
        event_type: String,
        /// What the topic carries, comma-separated.
        known: String,
    },
    /// A value does not fit the schema.
    #[error("does not fit the schema of {topic}: {error}")]
    Fit {
        /// The topic.
        topic: String,
        /// Where and why.
        error: FitError,
    },
    /// No key could be found, or the given key disagrees with the payload.
    #[error("{0}")]
    Key(String),
}

/// An envelope with its payload as an Avro record value.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Unique id of this event; consumers drop a second record with the same id.
    pub event_id: Uuid,
    /// What happened or is asked for, e.g. `patient.registered`.
    pub event_type: String,
    /// Version of the event's meaning (not of the schema).
    pub version: i32,
    /// When the event happened, in milliseconds since the epoch (UTC).
    pub timestamp_millis: i64,
    /// Who produced it (`cli`, `intake`, ...).
    pub producer: String,
    /// Ties together the records of one flow (a request and its result).
    pub correlation_id: Option<String>,
    /// The payload record (not wrapped in its union).
    pub payload: Avro,
}

impl Envelope {
    /// The Avro value of the whole envelope for `schema`.
    pub fn to_avro(&self, schema: &TopicSchema) -> Result<Avro, EnvelopeError> {
        self.clone().into_avro(schema)
    }

    /// [`Envelope::to_avro`], consuming the envelope (no copy of the payload).
    pub fn into_avro(self, schema: &TopicSchema) -> Result<Avro, EnvelopeError> {
        let branch = schema
            .branch_for(&self.event_type)
            .ok_or_else(|| unknown_event_type(schema, &self.event_type))?;
        Ok(Avro::Record(vec![
            ("event_id".into(), Avro::Uuid(self.event_id)),
            ("event_type".into(), Avro::String(self.event_type)),
            ("version".into(), Avro::Int(self.version)),
            (
                "timestamp".into(),
                Avro::TimestampMillis(self.timestamp_millis),
            ),
            ("producer".into(), Avro::String(self.producer)),
            (
                "correlation_id".into(),
                match self.correlation_id {
                    Some(id) => Avro::Union(1, Box::new(Avro::String(id))),
                    None => Avro::Union(0, Box::new(Avro::Null)),
                },
            ),
            (
                "payload".into(),
                Avro::Union(branch.index, Box::new(self.payload)),
            ),
        ]))
    }

    /// Reads an envelope from a decoded Avro value.
    pub fn from_avro(value: Avro) -> Result<Envelope, EnvelopeError> {
        let shape = |what: &str| EnvelopeError::Shape(format!("not an envelope: {what}"));
        let Avro::Record(fields) = value else {
            return Err(shape("not a record"));
        };
        let mut envelope = Envelope {
            event_id: Uuid::nil(),
            event_type: String::new(),
            version: 0,
            timestamp_millis: 0,
            producer: String::new(),
            correlation_id: None,
            payload: Avro::Null,
        };
        for (name, value) in fields {
            let value = match value {
                Avro::Union(_, inner) => *inner,
                other => other,
            };
            match (name.as_str(), value) {
                ("event_id", Avro::Uuid(id)) => envelope.event_id = id,
                ("event_id", Avro::String(text)) => {
                    envelope.event_id =
                        Uuid::parse_str(&text).map_err(|_| shape("event_id is not a UUID"))?
                }
                ("event_type", Avro::String(text)) => envelope.event_type = text,
                ("version", Avro::Int(n)) => envelope.version = n,
                ("timestamp", Avro::TimestampMillis(n) | Avro::Long(n)) => {
                    envelope.timestamp_millis = n
                }
                ("producer", Avro::String(text)) => envelope.producer = text,
                ("correlation_id", Avro::String(text)) => envelope.correlation_id = Some(text),
                ("correlation_id", Avro::Null) => envelope.correlation_id = None,
                ("payload", payload) => envelope.payload = payload,
                (other, _) => return Err(shape(&format!("unexpected field or type of {other}"))),
            }
        }
        Ok(envelope)
    }

    /// The headers that travel with the record.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            (header::EVENT_ID, self.event_id.to_string()),
            (header::EVENT_TYPE, self.event_type.clone()),
            (header::PRODUCER, self.producer.clone()),
        ];
        if let Some(id) = &self.correlation_id {
            headers.push((header::CORRELATION_ID, id.clone()));
        }
        let patients = listed_patients(&self.payload);
        if !patients.is_empty() {
            headers.push((header::PATIENT_IDS, patients.join(",")));
        }
        headers
    }

    /// The JSON form for people (the inverse of [`from_json`] up to defaults).
    pub fn to_json(&self) -> Json {
        let mut object = Map::new();
        object.insert("event_id".into(), Json::String(self.event_id.to_string()));
        object.insert("event_type".into(), Json::String(self.event_type.clone()));
        object.insert("version".into(), Json::from(self.version));
        object.insert(
            "timestamp".into(),
            avro_json::to_json(&Avro::TimestampMillis(self.timestamp_millis)),
        );
        object.insert("producer".into(), Json::String(self.producer.clone()));
        object.insert(
            "correlation_id".into(),
            self.correlation_id.clone().map_or(Json::Null, Json::String),
        );
        object.insert("payload".into(), avro_json::to_json(&self.payload));
        Json::Object(object)
    }
}

fn unknown_event_type(schema: &TopicSchema, event_type: &str) -> EnvelopeError {
    EnvelopeError::UnknownEventType {
        topic: schema.topic.clone(),
        event_type: event_type.to_string(),
        known: schema.event_types().join(", "),
    }
}

/// The key of a payload: the first of `key_fields` that the payload has as a
/// non-empty string.
pub fn key_of(payload: &Json, key_fields: &[String]) -> Option<String> {
    key_fields.iter().find_map(|field| {
        payload
            .get(field)
            .and_then(Json::as_str)
            .filter(|key| !key.is_empty())
            .map(str::to_string)
    })
}

/// Checks a decoded value against what its topic carries: an envelope whose
/// `event_type` the topic knows, whose payload is that event's record, and
/// whose payload's key is the record's `key`. Returns the envelope and its
/// payload as JSON, or the error code and reason a dead letter carries.
pub fn check(
    schema: &TopicSchema,
    key_fields: &[String],
    key: &str,
    value: Avro,
) -> Result<(Envelope, Json), (ErrorCode, String)> {
    let logical = &schema.topic;
    let branch = payload_branch(&value);
    let envelope = Envelope::from_avro(value)
        .map_err(|error| (ErrorCode::NotAnEnvelope, error.to_string()))?;
    match schema.branch_for(&envelope.event_type) {
        None => {
            return Err((
                ErrorCode::NotAnEnvelope,
                format!(
                    "event_type {} is not carried by {logical}",
                    envelope.event_type
                ),
            ));
        }
        Some(expected) if Some(expected.index) != branch => {
            return Err((
                ErrorCode::NotAnEnvelope,
                format!(
                    "event_type {} announces {}, but the payload is another record",
                    envelope.event_type, expected.record
                ),
            ));
        }
        Some(_) => {}
    }
    let payload = avro_json::to_json(&envelope.payload);
    match key_of(&payload, key_fields) {
        Some(expected) if expected != key => Err((
            ErrorCode::KeyMismatch,
            format!("key '{key}' disagrees with the payload's key '{expected}'"),
        )),
        _ => Ok((envelope, payload)),
    }
}

/// The payload record `event_type` travels in, converted from JSON.
pub fn payload_of(
    schema: &TopicSchema,
    event_type: &str,
    payload: &Json,
) -> Result<Avro, EnvelopeError> {
    let branch = schema
        .branch_for(event_type)
        .ok_or_else(|| unknown_event_type(schema, event_type))?;
    let apache_avro::Schema::Union(union) = schema.payload_schema() else {
        return Err(EnvelopeError::Shape(
            "the payload schema is not a union".into(),
        ));
    };
    let branch_schema = &union.variants()[branch.index as usize];
    avro_json::to_avro_within(payload, branch_schema, &schema.names).map_err(|error| {
        EnvelopeError::Fit {
            topic: schema.topic.clone(),
            error: FitError {
                path: format!("payload.{}", error.path)
                    .trim_end_matches('.')
                    .to_string(),
                reason: error.reason,
            },
        }
    })
}

/// Wraps a record written by a person (see the module docs) into an envelope
/// for `schema`, returning the Kafka key with it.
pub fn from_json(
    json: &Json,
    schema: &TopicSchema,
    key_fields: &[String],
    producer: &str,
    now: DateTime<Utc>,
) -> Result<(String, Envelope), EnvelopeError> {
    let shape = |why: String| EnvelopeError::Shape(why);
    let Json::Object(object) = json else {
        return Err(shape(
            "a record must be a JSON object with event_type and payload".into(),
        ));
    };
    const ALLOWED: [&str; 7] = [
        "event_type",
        "payload",
        "key",
        "correlation_id",
        "event_id",
        "timestamp",
        "version",
    ];
    if let Some(unknown) = object.keys().find(|k| !ALLOWED.contains(&k.as_str())) {
        return Err(shape(format!(
            "unknown field '{unknown}' in the record; allowed: {}",
            ALLOWED.join(", ")
        )));
    }
    let text = |field: &str| -> Result<Option<String>, EnvelopeError> {
        match object.get(field) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(shape(format!("'{field}' must be a string"))),
        }
    };
    let event_type = text("event_type")?.ok_or_else(|| {
        shape(format!(
            "'event_type' is missing; {} carries {}",
            schema.topic,
            schema.event_types().join(", ")
        ))
    })?;
    let payload_json = object
        .get("payload")
        .ok_or_else(|| shape("'payload' is missing".into()))?;
    let payload = payload_of(schema, &event_type, payload_json)?;
    let derived = key_of(payload_json, key_fields);
    let key = match (text("key")?, derived) {
        (Some(given), Some(derived)) if given != derived => {
            return Err(EnvelopeError::Key(format!(
                "key '{given}' disagrees with the payload's key '{derived}'"
            )));
        }
        (Some(key), _) | (None, Some(key)) => key,
        (None, None) => {
            return Err(EnvelopeError::Key(format!(
                "no key: the payload has none of {} and no 'key' was given",
                key_fields.join(", ")
            )));
        }
    };
    let event_id = match text("event_id")? {
        Some(id) => {
            Uuid::parse_str(&id).map_err(|_| shape(format!("event_id '{id}' is not a UUID")))?
        }
        None => Uuid::new_v4(),
    };
    let timestamp_millis = match object.get("timestamp") {
        None | Some(Json::Null) => now.timestamp_millis(),
        Some(Json::String(at)) => DateTime::parse_from_rfc3339(at)
            .map_err(|_| shape(format!("timestamp '{at}' is not RFC 3339")))?
            .timestamp_millis(),
        Some(Json::Number(n)) => n
            .as_i64()
            .ok_or_else(|| shape("timestamp must be an integer".into()))?,
        Some(_) => return Err(shape("timestamp must be a string or a number".into())),
    };
    let version = match object.get("version") {
        None | Some(Json::Null) => 1,
        Some(v) => v
            .as_i64()
            .and_then(|v| i32::try_from(v).ok())
            .ok_or_else(|| shape("version must be an integer".into()))?,
    };
    Ok((
        key,
        Envelope {
            event_id,
            event_type,
            version,
            timestamp_millis,
            producer: producer.to_string(),
            correlation_id: text("correlation_id")?,
            payload,
        },
    ))
}

/// The union index of an envelope value's payload (which record it holds),
/// before the envelope is unwrapped.
pub fn payload_branch(value: &Avro) -> Option<u32> {
    match value {
        Avro::Record(fields) => fields.iter().find_map(|(name, value)| match value {
            Avro::Union(index, _) if name == "payload" => Some(*index),
            _ => None,
        }),
        _ => None,
    }
}
