//! The records of a poison run: the good commands of each round, and for
//! every consumed topic the bad ones of each kind (not Avro, unknown
//! schema, wrong key, values out of their domain), built from templates of
//! real records.

use super::{Kind, MAX_RECORD_BYTES, PLANTED, Seen};
use crate::people;
use crate::processes::consumed;
use anyhow::{Context, bail};
use chrono::Utc;
use psymatch_runtime::codec::Codec;
use psymatch_runtime::contracts::Contracts;
use psymatch_runtime::envelope::{self};
use psymatch_runtime::testing::TestBed;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The good records of one round: commands on every command topic a
/// person or the scheduler writes to (the processors write the events).
pub(crate) fn good_records(round: usize) -> Vec<(&'static str, Value)> {
    let patient = format!("proof-p-{round}");
    let therapist = format!("proof-t-{round}");
    let mut records = vec![
        ("patient-commands", people::registration(&patient, "10115")),
        (
            "therapist-commands",
            people::practice(&therapist, "2", "10117"),
        ),
        (
            "matching-commands",
            json!({"event_type": "matching.run", "payload": {"run_id": format!("proof-run-{round}"), "patient_id": null}}),
        ),
        (
            "geocoding-requests",
            json!({"event_type": "geocoding.geocode_address", "payload": {"request_id": format!("proof-geocode-{round}"),
                "address": {"street": "Beispielstraße", "house_number": "1", "postcode": "10115", "city": "Berlin"}}}),
        ),
        (
            "email-commands",
            json!({"event_type": "email.send_inquiry", "payload": {"inquiry_id": format!("proof-i-{round}"),
                "therapist_id": format!("proof-mail-{round}"),
                "recipient": {"email": format!("praxis-mail-{round}@example.org"), "salutation": "FRAU",
                              "title": null, "last_name": "Beispiel"},
                "patients": [{"patient_id": patient, "age": 35, "gender": "FEMALE", "symptoms": ["Antriebslosigkeit"],
                              "insurer": "Beispielkasse", "therapy_experience": false, "open_to_group": true,
                              "availability": []}]}}),
        ),
        (
            "email-commands",
            json!({"event_type": "email.flush_batches", "payload": {"run_id": format!("proof-flush-{round}")}}),
        ),
    ];
    // Scrapes ask the stand-in search and take time: a few.
    if round.is_multiple_of(25) {
        records.push((
            "scraping-commands",
            json!({"event_type": "scraping.scrape_area", "payload": {"run_id": format!("proof-scrape-{round}"),
                "area": {"postcode": "10115", "radius_km": 3},
                "filters": {"procedures": [], "age_groups": ["ADULTS"], "settings": []}}}),
        ));
    }
    records
}

/// The event type each topic's bad records are built from.
pub(crate) fn template_type(topic: &str) -> &'static str {
    match topic {
        "patient-commands" => "patient.register",
        "therapist-commands" => "therapist.upsert",
        "geocoding-results" => "geocoding.address_geocoded",
        "geocoding-requests" => "geocoding.geocode_address",
        "scraping-commands" => "scraping.scrape_area",
        "patient-events" => "patient.registered",
        "therapist-events" => "therapist.discovered",
        "communication-events" => "email.sent",
        "matching-commands" => "matching.run",
        _ => "email.send_inquiry",
    }
}

/// Waits for a real record of every consumed topic's template type.
///
/// The inquiry and the flush of round 0 are keyed differently and may sit
/// on different partitions, so the batcher can take the flush first and
/// send nothing: while no email has been sent, every second asks for
/// another flush.
pub(crate) async fn templates(
    bed: &TestBed,
    seen: &Mutex<Seen>,
) -> anyhow::Result<HashMap<&'static str, Value>> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut next_flush = Instant::now() + Duration::from_secs(1);
    let mut flushes = 0;
    loop {
        let found: HashMap<&'static str, Value> = {
            let seen = seen.lock().expect("collector state");
            consumed()
                .iter()
                .filter_map(|(topic, _)| {
                    let key = (topic.to_string(), template_type(topic).to_string());
                    seen.samples.get(&key).map(|v| (*topic, v.clone()))
                })
                .collect()
        };
        if found.len() == consumed().len() {
            return Ok(found);
        }
        if Instant::now() > deadline {
            let missing: Vec<&str> = consumed()
                .iter()
                .map(|(t, _)| *t)
                .filter(|t| !found.contains_key(t))
                .collect();
            bail!("no good record to build bad ones from on {missing:?} within 120 s");
        }
        if !found.contains_key("communication-events") && Instant::now() > next_flush {
            flushes += 1;
            let flush = json!({"event_type": "email.flush_batches",
                "payload": {"run_id": format!("proof-template-flush-{flushes}")}});
            bed.publish("email-commands", &[flush]).await;
            next_flush = Instant::now() + Duration::from_secs(1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The domain values of a good record made invalid (the record still
/// fits its schema).
pub(crate) fn invalidate(topic: &str, record: &mut Value, round: usize) {
    let payload = &mut record["payload"];
    match topic {
        "patient-commands" | "therapist-commands" => {
            payload["details"]["address"]["postcode"] = json!(format!("1X-{PLANTED}"));
            payload["details"]["email"] = json!(format!("{PLANTED}-{round}(at)example"));
        }
        "geocoding-requests" => {
            payload["request_id"] = json!(bad_request_id(round));
            payload["address"]["postcode"] = json!("ABCDE");
        }
        "geocoding-results" => payload["position"] = json!({"latitude": 123.0, "longitude": 13.4}),
        "scraping-commands" => payload["area"]["radius_km"] = json!(-5),
        "patient-events" => {
            payload["profile"]["coordinates"] = json!({"latitude": 123.0, "longitude": 13.4})
        }
        "therapist-events" => {
            payload["therapist_id"] = json!("");
            // The payload names no key now: the record carries one of its own.
            record["key"] = json!(format!("proof-no-id-{round}"));
        }
        "communication-events" => {
            payload["email_id"] = json!("");
            payload["inquiry_ids"] = json!([""]);
        }
        "matching-commands" => payload["patient_id"] = json!(format!("proof-unknown-{round}")),
        _ => payload["recipient"]["email"] = json!("not-an-address"),
    }
}

/// The request id of the `round`-th invalid geocoding request.
pub(crate) fn bad_request_id(round: usize) -> String {
    format!("proof-invalid-{round}")
}

/// One bad record for `topic`: (key, value, envelope id).
pub(crate) async fn bad_record(
    bed: &TestBed,
    codec: &Codec,
    contracts: &Contracts,
    topic: &'static str,
    kind: Kind,
    templates: &HashMap<&'static str, Value>,
    round: usize,
) -> anyhow::Result<(Option<String>, Vec<u8>, Option<Uuid>)> {
    let template = &templates[topic];
    let encode = |schema_topic: &'static str, record: Value| async move {
        let (spec, schema) = contracts.topic(schema_topic)?;
        let (key, envelope) =
            envelope::from_json(&record, schema, &spec.key_fields, "proof", Utc::now())
                .with_context(|| format!("a {schema_topic} record: {record}"))?;
        let id = envelope.event_id;
        let value = envelope.to_avro(schema)?;
        let bytes = codec
            .encode_with(&format!("{}{schema_topic}", bed.prefix), schema, value)
            .await?;
        anyhow::Ok((key, bytes, id))
    };
    let noise = |n: usize| -> Vec<u8> {
        // Deterministic bytes that never start with the magic byte 0.
        (0..n)
            .map(|i| ((i * 31 + round * 7) % 251 + 1) as u8)
            .collect()
    };
    Ok(match kind {
        Kind::Garbage => (
            Some(format!("garbage-{round}")),
            noise(1 + round % 200),
            None,
        ),
        Kind::WrongMagic => {
            let (key, mut bytes, _) = encode(topic, template.clone()).await?;
            bytes[0] = 1;
            (Some(key), bytes, None)
        }
        Kind::UnknownSchema => {
            let (key, mut bytes, _) = encode(topic, template.clone()).await?;
            bytes[1..5].copy_from_slice(&0x7fff_fff0u32.to_be_bytes());
            (Some(key), bytes, None)
        }
        Kind::WrongType => {
            // Another consumed topic's record, under its own (valid) schema id.
            let other = consumed()
                .iter()
                .map(|(t, _)| *t)
                .find(|t| *t != topic && template_type(t) != template_type(topic))
                .expect("more than one topic");
            let (key, bytes, id) = encode(other, templates[other].clone()).await?;
            (Some(key), bytes, Some(id))
        }
        Kind::InvalidValues => {
            let mut record = template.clone();
            invalidate(topic, &mut record, round);
            let (key, bytes, id) = encode(topic, record).await?;
            (Some(key), bytes, Some(id))
        }
        Kind::Oversize => {
            // A valid record, but larger than the processors accept.
            let mut record = template.clone();
            record["correlation_id"] = json!("x".repeat(MAX_RECORD_BYTES + 100));
            let (key, bytes, id) = encode(topic, record).await?;
            (Some(key), bytes, Some(id))
        }
        Kind::KeyMismatch => {
            let (_, bytes, id) = encode(topic, template.clone()).await?;
            (Some(format!("not-the-key-{round}")), bytes, Some(id))
        }
        Kind::NulText => {
            // Another string field of the payload each round; a field
            // whose strings the schema constrains (enums, dates) does not
            // encode with a NUL and is passed over.
            let leaves = string_leaves(&template["payload"], "");
            let mut found = None;
            for n in 0..leaves.len() {
                let mut record = template.clone();
                let path = &leaves[(round + n) % leaves.len()];
                let leaf = path
                    .iter()
                    .fold(&mut record["payload"], |v, step| match step {
                        Step::Field(name) => &mut v[name.as_str()],
                        Step::Item(i) => &mut v[*i],
                    });
                *leaf = json!(format!("{PLANTED}\u{0}{round}"));
                if let Ok(encoded) = encode(topic, record).await {
                    found = Some(encoded);
                    break;
                }
            }
            let (key, bytes, id) =
                found.with_context(|| format!("no string field of {topic} takes a NUL"))?;
            (Some(key), bytes, Some(id))
        }
        Kind::LyingLength => {
            let marker = format!("LYING-LENGTH-{round:08}");
            let mut record = template.clone();
            record["correlation_id"] = json!(marker);
            let (key, bytes, id) = encode(topic, record).await?;
            let lying = psymatch_runtime::testing::lie_about_length(bytes, &marker, 500_000_000);
            (Some(key), lying, Some(id))
        }
        Kind::OversizeText => {
            let mut record = template.clone();
            record["payload"]["details"]["last_name"] =
                json!(format!("{PLANTED}{}", "x".repeat(5_000)));
            let (key, bytes, id) = encode(topic, record).await?;
            (Some(key), bytes, Some(id))
        }
        Kind::FreePlacesOverflow => {
            let record = json!({"event_type": "therapist.set_free_places", "payload": {
                "therapist_id": format!("proof-t-{round}"), "individual_from": null,
                "group_from": i32::MAX}});
            let (key, bytes, id) = encode(topic, record).await?;
            (Some(key), bytes, Some(id))
        }
    })
}

/// One step of a path into a JSON value.
enum Step {
    Field(String),
    Item(usize),
}

/// The paths of every string in `value`.
fn string_leaves(value: &Value, _at: &str) -> Vec<Vec<Step>> {
    match value {
        Value::String(_) => vec![Vec::new()],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .flat_map(|(i, item)| {
                string_leaves(item, "").into_iter().map(move |mut path| {
                    path.insert(0, Step::Item(i));
                    path
                })
            })
            .collect(),
        Value::Object(fields) => fields
            .iter()
            .flat_map(|(name, item)| {
                string_leaves(item, "").into_iter().map(move |mut path| {
                    path.insert(0, Step::Field(name.clone()));
                    path
                })
            })
            .collect(),
        _ => Vec::new(),
    }
}
