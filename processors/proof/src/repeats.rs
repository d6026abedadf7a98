//! Effects applied twice, read off the topics: every record of every topic
//! is decoded, and each effect that has an identity of its own (a patient
//! registered, an inquiry created or sent, an address geocoded, a
//! scheduled command) must be published under one event id only. A
//! record published again under its own event id (a relay that died
//! between the broker's acknowledgement and its outbox commit) is dropped
//! by every consumer by design and counted apart.

use psymatch_runtime::codec::Codec;
use psymatch_runtime::contracts::Contracts;
use psymatch_runtime::envelope::Envelope;
use psymatch_runtime::testing::TestBed;
use rdkafka::Message;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

/// What the topics tell.
#[derive(Debug, Default)]
pub struct Repeats {
    /// Records read (dead-letter topics included).
    pub records: usize,
    /// Records whose event id came before on the same topic.
    pub same_id: usize,
    /// Per "topic event type": identities published under more than one
    /// event id (an effect applied twice).
    pub new_id: BTreeMap<String, usize>,
    /// A few of those, to start looking from.
    pub examples: Vec<String>,
}

impl Repeats {
    /// Identities published under more than one event id, in all.
    pub fn applied_twice(&self) -> usize {
        self.new_id.values().sum()
    }
}

/// The identities of the effect a record stands for, if it has any.
fn identities(topic: &str, event_type: &str, payload: &Value) -> Vec<String> {
    let field = |name: &str| payload[name].as_str().map(str::to_string);
    let one = match (topic, event_type) {
        ("patient-events", "patient.registered") => field("patient_id"),
        ("therapist-events", "therapist.discovered") => field("therapist_id"),
        ("matching-events", "matching.inquiry_created") => field("inquiry_id"),
        ("email-commands", "email.send_inquiry") => field("inquiry_id"),
        ("email-commands", "email.flush_batches") => field("run_id"),
        ("matching-commands", "matching.run") => field("run_id"),
        ("geocoding-requests", "geocoding.geocode_address") => field("request_id"),
        ("geocoding-results", "geocoding.address_geocoded") => field("request_id"),
        ("scraping-events", "scraping.run_completed") => field("run_id"),
        // An inquiry in two sent emails was sent twice.
        ("communication-events", "email.sent") => {
            return payload["inquiry_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|id| id.as_str().map(str::to_string))
                .collect();
        }
        _ => None,
    };
    one.into_iter().collect()
}

/// Reads and checks every record of every topic of `bed`.
pub async fn count(bed: &TestBed) -> anyhow::Result<Repeats> {
    let contracts = Contracts::embedded();
    let mut raw: Vec<(String, Vec<u8>)> = Vec::new();
    let records = crate::scan::read_topics(&bed.brokers, &bed.prefix, |logical, message| {
        if contracts.schemas.contains_key(logical)
            && let Some(value) = message.payload()
        {
            raw.push((logical.to_string(), value.to_vec()));
        }
    })?;
    let codec = Codec::new(&bed.registry_url);
    let mut repeats = Repeats {
        records,
        ..Repeats::default()
    };
    let mut ids: HashSet<(String, Uuid)> = HashSet::new();
    let mut effects: HashMap<(String, String, String), HashSet<Uuid>> = HashMap::new();
    for (topic, bytes) in raw {
        let schema = &contracts.schemas[&topic];
        let envelope = Envelope::from_avro(codec.decode_as(&bytes, &schema.schema).await?)?;
        if !ids.insert((topic.clone(), envelope.event_id)) {
            repeats.same_id += 1;
            continue;
        }
        let payload = psymatch_runtime::avro_json::to_json(&envelope.payload);
        for identity in identities(&topic, &envelope.event_type, &payload) {
            effects
                .entry((topic.clone(), envelope.event_type.clone(), identity))
                .or_default()
                .insert(envelope.event_id);
        }
    }
    for ((topic, event_type, identity), events) in effects {
        if events.len() > 1 {
            *repeats
                .new_id
                .entry(format!("{topic} {event_type}"))
                .or_default() += 1;
            if repeats.examples.len() < 5 {
                repeats.examples.push(format!(
                    "{topic} {event_type} {identity}: {} event ids",
                    events.len()
                ));
            }
        }
    }
    Ok(repeats)
}
