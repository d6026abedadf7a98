//! The shared runtime of the psymatch processors.
//!
//! What every processor and the `psymatch` tool stand on: the topic and
//! schema contracts (`topics.yaml`, `schemas/`), the envelope every value is
//! wrapped in, Avro in the Confluent wire format through the schema registry,
//! JSON for people, the database migrations, and logging.

pub mod app;
pub mod avro_json;
pub mod codec;
pub mod config;
pub mod contracts;
pub mod db;
pub mod envelope;
pub mod errors;
pub mod example;
pub mod processor;
pub mod schemas;
pub mod surface;
pub mod telemetry;
pub mod testing;
pub mod text;
pub mod throttle;
pub mod topics;
