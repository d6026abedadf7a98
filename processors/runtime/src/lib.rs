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
/// runtime's time (perf, docs/benchmarks.md).
pub use mimalloc::MiMalloc as Allocator;

/// mimalloc's `purge_delay` option: its place in mimalloc 3's
/// `mi_option_e` (libmimalloc-sys names no constant for it; a test checks
/// its default).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps memory the program freed for 10 s before returning it to the
/// system (mimalloc's default is 1 s). A batch allocates and frees tens of
/// megabytes; with 1 s the pages went back between batches and came back
/// zeroed by the kernel: in the chain benchmark that clearing was 9 % of
/// the process's samples (perf), with 170,000 page faults a run, 35,000
/// with 10 s. Called by [`telemetry::init`], at every binary's start.
pub fn tune_allocator() {
    // SAFETY: setting an option is safe at any time; mimalloc reads it
    // when it next decides to purge.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 10_000) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_is_the_one_tuned() {
        // mimalloc 3's defaults: purge_delay 1,000 ms; no other option
        // starts at 1,000. A mimalloc whose options moved fails here.
        // SAFETY: reading an option is safe at any time.
        let before = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(before, 1_000);
        super::tune_allocator();
        let after = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(after, 10_000);
    }
}

pub mod acls;
mod admin_ffi;
pub mod app;
pub mod avro_json;
pub mod broker;
pub mod clock;
pub mod codec;
pub mod config;
pub mod contracts;
pub mod db;
pub mod envelope;
pub mod errors;
pub mod events;
pub mod example;
pub mod processor;
mod progress;
pub mod query;
pub mod registry_client;
pub mod schemas;
pub mod sealed;
pub mod surface;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod text;
pub mod throttle;
pub mod topics;
