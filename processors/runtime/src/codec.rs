//! Avro values in the Confluent wire format (magic byte 0, 4-byte schema id,
//! Avro body), through the schema registry.
//!
//! Encoding and decoding go through schema_registry_converter, which caches
//! schemas by subject and id. Registration talks to the REST API directly so
//! that an incompatible schema fails with the registry's own reason.

use crate::contracts::{Contracts, value_subject};
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value as Avro;
use apache_avro::writer::datum::GenericDatumWriter;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::schema_registry_common::SubjectNameStrategy;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The default registry: the local stack's.
pub const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:8081";

/// `SCHEMA_REGISTRY_URL` from the environment, else [`DEFAULT_REGISTRY_URL`].
pub fn registry_url() -> String {
    std::env::var("SCHEMA_REGISTRY_URL").unwrap_or_else(|_| DEFAULT_REGISTRY_URL.to_string())
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The registry could not be asked, or refused (a retry may help if `retriable`).
    #[error("schema registry: {message}")]
    Registry {
        /// What went wrong.
        message: String,
        /// Whether trying again may succeed.
        retriable: bool,
    },
    /// The bytes are not in the wire format, or do not decode with their schema.
    #[error("cannot decode: {0}")]
    Decode(String),
    /// The value does not fit the registered schema.
    #[error("cannot encode: {0}")]
    Encode(String),
}

/// A registered schema id with its prepared writer.
pub type PreparedWriter = (u32, Arc<GenericDatumWriter<'static>>);

/// A writer schema prepared for reading with this build's schema.
struct PreparedReader {
    /// Decodes with the writer schema alone.
    datum: GenericDatumReader<'static>,
    /// `None` when writer and reader schema have the same canonical form:
    /// the written value is the value this build reads, no resolution.
    resolution: Option<Resolution>,
}

/// What resolving a writer's value to this build's schema needs.
struct Resolution {
    reader: &'static apache_avro::Schema,
    names: apache_avro::schema::ResolvedSchema<'static>,
    /// Per branch of the writer's payload union, the reader branch of the
    /// same record name (`None`: this build does not know that record).
    branches: Vec<Option<(usize, &'static apache_avro::Schema)>>,
    /// Full names of the writer's payload branches, for errors.
    writer_names: Vec<String>,
}

/// The branches of the `payload` union of an envelope schema.
fn payload_union(schema: &apache_avro::Schema) -> Option<&[apache_avro::Schema]> {
    let apache_avro::Schema::Record(record) = schema else {
        return None;
    };
    record
        .fields
        .iter()
        .find(|f| f.name == "payload")
        .and_then(|f| match &f.schema {
            apache_avro::Schema::Union(union) => Some(union.variants()),
            _ => None,
        })
}

fn full_name(schema: &apache_avro::Schema) -> Option<String> {
    schema.name().map(|name| name.fullname(None))
}

impl Resolution {
    fn new(
        writer: &'static apache_avro::Schema,
        reader: &'static apache_avro::Schema,
    ) -> Result<Resolution, String> {
        let names = apache_avro::schema::ResolvedSchema::try_from(reader)
            .map_err(|error| format!("this build's schema does not resolve: {error}"))?;
        let writer_branches = payload_union(writer).unwrap_or_default();
        let reader_branches = payload_union(reader).unwrap_or_default();
        let branches = writer_branches
            .iter()
            .map(|w| {
                let name = full_name(w)?;
                reader_branches
                    .iter()
                    .enumerate()
                    .find(|(_, r)| full_name(r).as_deref() == Some(name.as_str()))
            })
            .collect();
        Ok(Resolution {
            reader,
            names,
            branches,
            writer_names: writer_branches
                .iter()
                .map(|w| full_name(w).unwrap_or_default())
                .collect(),
        })
    }

    /// Resolves a value written with the writer schema to the reader's.
    ///
    /// apache-avro resolves a union by trying the reader's branches in
    /// order and taking the first the value fits, which confuses payload
    /// records of the same shape (a pause and a resume command, both just
    /// an id). Avro's rule is to match by name, so the payload is resolved
    /// against the reader branch named like the writer's.
    fn resolve(&self, value: Avro) -> Result<Avro, String> {
        let payload = match &value {
            Avro::Record(fields) => fields.iter().find_map(|(name, value)| match value {
                Avro::Union(index, inner) if name == "payload" => Some((*index, (**inner).clone())),
                _ => None,
            }),
            _ => None,
        };
        let names = self.names.get_names();
        let resolved = value
            .resolve_with_names(self.reader, names)
            .map_err(|error| format!("cannot be read as this build's schema: {error}"))?;
        let Some((index, inner)) = payload else {
            return Ok(resolved);
        };
        let (reader_index, branch) = self
            .branches
            .get(index as usize)
            .copied()
            .flatten()
            .ok_or_else(|| {
                let name = self
                    .writer_names
                    .get(index as usize)
                    .map_or("?", String::as_str);
                format!("payload record {name} is unknown to this build")
            })?;
        let inner = inner
            .resolve_with_names(branch, names)
            .map_err(|error| format!("payload cannot be read as this build's schema: {error}"))?;
        let Avro::Record(mut fields) = resolved else {
            return Err("not a record".into());
        };
        for (name, value) in &mut fields {
            if name == "payload" {
                *value = Avro::Union(reader_index as u32, Box::new(inner));
                break;
            }
        }
        Ok(Avro::Record(fields))
    }
}

/// Encoder and decoder sharing one registry.
///
/// Prepared Avro readers and writers are cached per schema id. They borrow
/// their schemas, so the schemas of a cache entry are leaked: a process sees
/// a handful of schema ids in its life, and building the resolution tables
/// per record costs more than the whole rest of decoding.
pub struct Codec {
    url: String,
    http: reqwest::Client,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    readers: Mutex<HashMap<(u32, usize), Arc<PreparedReader>>>,
    writers: Mutex<HashMap<(String, usize), PreparedWriter>>,
}

impl Codec {
    /// A codec for the registry at `url`.
    pub fn new(url: &str) -> Codec {
        // TLS and authorization as registered for the URL.
        let settings = crate::registry_client::settings(url);
        Codec {
            url: url.to_string(),
            http: settings.http(),
            encoder: AvroEncoder::new(settings.converter(url)),
            decoder: AvroDecoder::new(settings.converter(url)),
            readers: Mutex::new(HashMap::new()),
            writers: Mutex::new(HashMap::new()),
        }
    }

    /// Encodes `value` with the latest schema registered for `<topic>-value`.
    pub async fn encode(&self, topic: &str, value: Avro) -> Result<Vec<u8>, CodecError> {
        let strategy = SubjectNameStrategy::TopicNameStrategy(topic.to_string(), false);
        self.encoder
            .encode_value(value, &strategy)
            .await
            .map_err(|error| {
                if error.error.contains("Could not get") || error.retriable {
                    CodecError::Registry {
                        message: error.to_string(),
                        retriable: error.retriable,
                    }
                } else {
                    CodecError::Encode(error.to_string())
                }
            })
    }

    /// Decodes wire-format bytes with the schema they were written with.
    pub async fn decode(&self, bytes: &[u8]) -> Result<Avro, CodecError> {
        if bytes.len() < 5 || bytes[0] != 0 {
            return Err(CodecError::Decode(
                "not the Confluent wire format (magic byte 0 and a 4-byte schema id)".into(),
            ));
        }
        self.decoder
            .decode(Some(bytes))
            .await
            .map(|result| result.value)
            .map_err(|error| {
                if error.retriable {
                    CodecError::Registry {
                        message: error.to_string(),
                        retriable: true,
                    }
                } else {
                    CodecError::Decode(error.to_string())
                }
            })
    }
}

/// Why wire-format bytes could not be read, classified for dead-lettering.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Not magic byte 0 plus a schema id.
    #[error("not the Confluent wire format (magic byte 0 and a 4-byte schema id)")]
    NotWireFormat,
    /// The registry does not know the schema id.
    #[error("schema id {0} is unknown to the registry: {1}")]
    UnknownSchema(u32, String),
    /// The registry could not be asked (retry).
    #[error("schema registry unreachable: {0}")]
    Registry(String),
    /// The body does not decode, or not into this build's schema.
    #[error("{0}")]
    Body(String),
}

impl Codec {
    /// Decodes wire-format bytes written with any registered schema and
    /// resolves them to `reader`, the schema this build was compiled with,
    /// so older and newer producers both work (Avro schema resolution).
    pub async fn decode_as(
        &self,
        bytes: &[u8],
        reader: &apache_avro::Schema,
    ) -> Result<Avro, ReadError> {
        if bytes.len() < 5 || bytes[0] != 0 {
            return Err(ReadError::NotWireFormat);
        }
        let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        // Readers are keyed by the reader schema's address too: a process
        // may read with more than one build of a schema (tests do).
        let key = (id, reader as *const apache_avro::Schema as usize);
        let cached = self
            .readers
            .lock()
            .expect("reader cache")
            .get(&key)
            .cloned();
        let datum = match cached {
            Some(datum) => datum,
            None => {
                let writer = self.decoder.get_schema(id).await.map_err(|error| {
                    if error.retriable {
                        ReadError::Registry(error.to_string())
                    } else {
                        ReadError::UnknownSchema(id, error.to_string())
                    }
                })?;
                let writer: &'static apache_avro::Schema =
                    Box::leak(Box::new(writer.parsed.clone()));
                let datum = GenericDatumReader::builder(writer)
                    .build()
                    .map_err(|error| {
                        ReadError::Body(format!("schema {id} cannot be read: {error}"))
                    })?;
                let same = writer.canonical_form() == reader.canonical_form();
                let resolution = if same {
                    None
                } else {
                    let reader: &'static apache_avro::Schema = Box::leak(Box::new(reader.clone()));
                    Some(Resolution::new(writer, reader).map_err(ReadError::Body)?)
                };
                let datum = Arc::new(PreparedReader { datum, resolution });
                self.readers
                    .lock()
                    .expect("reader cache")
                    .insert(key, datum.clone());
                datum
            }
        };
        let mut body = &bytes[5..];
        let value = datum.datum.read_value(&mut body).map_err(|error| {
            ReadError::Body(format!("body does not decode with schema {id}: {error}"))
        })?;
        if !body.is_empty() {
            return Err(ReadError::Body(format!(
                "{} bytes left after the value",
                body.len()
            )));
        }
        match &datum.resolution {
            None => Ok(value),
            Some(resolution) => resolution
                .resolve(value)
                .map_err(|error| ReadError::Body(format!("schema {id}: {error}"))),
        }
    }

    /// Encodes `value` with `schema` (this build's) for `topic`, registering
    /// the schema under `<topic>-value` if the registry lacks it (the
    /// registry checks compatibility), and caching the id.
    pub async fn encode_with(
        &self,
        topic: &str,
        schema: &crate::schemas::TopicSchema,
        value: Avro,
    ) -> Result<Vec<u8>, CodecError> {
        let (id, datum) = self.writer(topic, schema).await?;
        write(id, &datum, value)
    }

    /// The schema id and prepared writer of `schema` for `topic` (see
    /// [`Codec::encode_with`]): what [`write`] needs, so that many values
    /// can be encoded on several threads without asking again.
    pub async fn writer(
        &self,
        topic: &str,
        schema: &crate::schemas::TopicSchema,
    ) -> Result<PreparedWriter, CodecError> {
        let key = (
            topic.to_string(),
            &schema.schema as *const apache_avro::Schema as usize,
        );
        let cached = self
            .writers
            .lock()
            .expect("writer cache")
            .get(&key)
            .cloned();
        if let Some(entry) = cached {
            return Ok(entry);
        }
        // Register (or find) exactly this schema: the converter's cache is
        // per subject and would hand out the id of whatever schema it saw
        // first for the subject.
        let id = self.register(topic, &schema.json).await?;
        let leaked: &'static apache_avro::Schema = Box::leak(Box::new(schema.schema.clone()));
        // Every value written was converted guided by this schema
        // (`avro_json`, `Envelope::into_avro`), which refuses what does not
        // fit: validating it again before each write took a sixth of the
        // encoding.
        let datum = GenericDatumWriter::builder(leaked)
            .validate(false)
            .build()
            .map_err(|error| CodecError::Encode(error.to_string()))?;
        let entry = (id, Arc::new(datum));
        self.writers
            .lock()
            .expect("writer cache")
            .insert(key, entry.clone());
        Ok(entry)
    }
}

/// A value in the Confluent wire format: magic byte, schema id, Avro body.
pub fn write(
    id: u32,
    datum: &GenericDatumWriter<'static>,
    value: Avro,
) -> Result<Vec<u8>, CodecError> {
    let mut bytes = Vec::with_capacity(128);
    bytes.push(0);
    bytes.extend_from_slice(&id.to_be_bytes());
    datum
        .write_value(&mut bytes, value)
        .map_err(|error| CodecError::Encode(error.to_string()))?;
    Ok(bytes)
}

impl Codec {
    /// The id of `schema` under `<topic>-value`, registering it if needed.
    async fn register(&self, topic: &str, schema: &Value) -> Result<u32, CodecError> {
        let url = format!(
            "{}/subjects/{}/versions",
            self.url.trim_end_matches('/'),
            value_subject(topic)
        );
        let refused =
            |message: String, retriable: bool| CodecError::Registry { message, retriable };
        let response = self
            .http
            .post(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&json!({"schema": schema.to_string()}))
            .send()
            .await
            .map_err(|error| refused(format!("{url}: {error}"), true))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        match body["id"].as_u64() {
            Some(id) if status.is_success() => Ok(id as u32),
            _ => Err(refused(
                format!(
                    "{url}: {status}: {}",
                    body["message"].as_str().unwrap_or("no id in the answer")
                ),
                status.is_server_error(),
            )),
        }
    }
}

/// Bounds what the Avro decoder may allocate for one length prefix (a
/// string, bytes, an array's items) to four records of `max_record_bytes`
/// (1 MiB at least), so that a small record that claims a huge length is
/// refused before the memory is taken. The library keeps the first bound
/// set in a process; this returns the bound in force.
pub fn bound_allocations(max_record_bytes: usize) -> usize {
    apache_avro::util::max_allocation_bytes(max_record_bytes.saturating_mul(4).max(1 << 20))
}

/// Reads an Avro body written with `schema` itself (no registry: the
/// fuzz targets and tools that know the writer). The whole body must be
/// one value.
pub fn read_body(schema: &apache_avro::Schema, mut body: &[u8]) -> Result<Avro, String> {
    let reader = GenericDatumReader::builder(schema)
        .build()
        .map_err(|error| error.to_string())?;
    let value = reader
        .read_value(&mut body)
        .map_err(|error| error.to_string())?;
    if body.is_empty() {
        Ok(value)
    } else {
        Err(format!("{} bytes left after the value", body.len()))
    }
}

/// One subject's registration outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The subject, `<topic>-value`.
    pub subject: String,
    /// The schema id.
    pub id: i64,
    /// The version under the subject.
    pub version: Option<i64>,
}

/// Registers every topic's value schema; stops at the first refusal with the
/// registry's reason (an incompatible change names the rule it breaks).
pub async fn register_all(url: &str, contracts: &Contracts) -> anyhow::Result<Vec<Registered>> {
    register_all_prefixed(url, contracts, "").await
}

/// [`register_all`] for topics whose physical names carry `prefix`.
pub async fn register_all_prefixed(
    url: &str,
    contracts: &Contracts,
    prefix: &str,
) -> anyhow::Result<Vec<Registered>> {
    let client = crate::registry_client::settings(url).http();
    let mut out = Vec::new();
    for (topic, schema) in &contracts.schemas {
        let subject = value_subject(&format!("{prefix}{topic}"));
        let response = client
            .post(format!(
                "{}/subjects/{subject}/versions",
                url.trim_end_matches('/')
            ))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&json!({"schema": schema.json.to_string(), "schemaType": "AVRO"}))
            .send()
            .await
            .map_err(|error| {
                anyhow::anyhow!(
                    "{}",
                    crate::registry_client::explain(url, None, &format!("{error:?}"))
                )
            })?;
        let status = response.status();
        if matches!(status.as_u16(), 401 | 403) {
            anyhow::bail!("{}", crate::registry_client::explain(url, Some(status), ""));
        }
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!(
                "{subject} refused by the registry ({status}, error_code {}): {}",
                body["error_code"],
                body["message"].as_str().unwrap_or("no message")
            );
        }
        out.push(Registered {
            subject,
            id: body["id"].as_i64().unwrap_or_default(),
            version: body["version"].as_i64(),
        });
    }
    Ok(out)
}
