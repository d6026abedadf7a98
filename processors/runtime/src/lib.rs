//! The shared runtime of the psymatch processors.
//!
//! What every processor and the `psymatch` tool stand on: the topic and
//! schema contracts (`topics.yaml`, `schemas/`), the envelope every value is
//! wrapped in, Avro in the Confluent wire format through the schema registry,
//! JSON for people, the database migrations, and logging.

pub mod avro_json;
pub mod codec;
pub mod contracts;
pub mod db;
pub mod envelope;
pub mod schemas;
pub mod telemetry;
pub mod testing;
pub mod topics;
