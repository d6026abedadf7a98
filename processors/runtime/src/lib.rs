//! The shared runtime of the psymatch processors.
//!
//! What every processor and the `psymatch` tool stand on: the topic and
//! schema contracts (`topics.yaml`, `schemas/`), the envelope every value is
//! wrapped in, Avro in the Confluent wire format through the schema registry,
//! JSON for people, the database migrations, and logging.

/// The allocator every psymatch binary uses (`#[global_allocator] static
/// ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;`):
/// decoding, converting and encoding records allocates and frees small
/// values at a high rate, where glibc's malloc spent a third of the
/// runtime's time (perf, README "Benchmark").
pub use mimalloc::MiMalloc as Allocator;

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
pub mod sealed;
pub mod surface;
pub mod telemetry;
pub mod testing;
pub mod text;
pub mod throttle;
pub mod topics;
