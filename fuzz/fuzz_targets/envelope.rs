//! Avro envelope decoding: the first byte picks a topic, the rest is read
//! as a value of its schema and checked as the runtime checks a record
//! before a processor sees it (envelope, event type, payload branch, key).
#![no_main]

use libfuzzer_sys::fuzz_target;
use psymatch_runtime::contracts::Contracts;
use std::sync::LazyLock;

static CONTRACTS: LazyLock<&'static Contracts> = LazyLock::new(Contracts::embedded);

fuzz_target!(|data: &[u8]| {
    let Some((pick, body)) = data.split_first() else {
        return;
    };
    let schemas: Vec<_> = CONTRACTS.schemas.values().collect();
    let schema = schemas[*pick as usize % schemas.len()];
    let spec = CONTRACTS
        .topics
        .topic(&schema.topic)
        .expect("a topic with a schema is declared");
    if let Ok(value) = psymatch_runtime::codec::read_body(&schema.schema, body) {
        let _ = psymatch_runtime::envelope::check(schema, &spec.key_fields, "k", value);
    }
});
