//! The geocoder as a processor: requests on `geocoding-requests`, answers
//! on `geocoding-results` with the request's key and correlation id,
//! through the real broker, registry and PostgreSQL of the local stack.

use psymatch_geocoder::Geocoder;
use psymatch_geocoder::config::GeocoderConfig;
use psymatch_geocoder::fake::FakeUpstreams;
use psymatch_runtime::testing::{Received, Running, TestBed};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

fn geocode(request: &str, correlation: &str, street: &str, postcode: &str) -> Value {
    json!({
        "event_type": "geocoding.geocode_address",
        "correlation_id": correlation,
        "payload": {
            "request_id": request,
            "address": {"street": street, "house_number": "7", "postcode": postcode, "city": "Berlin"}
        }
    })
}

fn results_for<'a>(records: &'a [Received], request: &str) -> Vec<&'a Received> {
    records
        .iter()
        .filter(|r| r.key.as_deref() == Some(request))
        .collect()
}

async fn answers(bed: &TestBed, requests: &[&str]) -> Vec<Received> {
    bed.read_until("geocoding-results", DEADLINE, |records| {
        requests.iter().all(|r| !results_for(records, r).is_empty())
    })
    .await
}

fn one<'a>(records: &'a [Received], request: &str) -> &'a Received {
    results_for(records, request)
        .first()
        .copied()
        .unwrap_or_else(|| panic!("no result for {request}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn requests_are_answered_with_their_correlation_id_cached_forgotten_and_cleaned() {
    let fake = FakeUpstreams::start().await;
    let bed = TestBed::new().await;
    let vars: BTreeMap<String, String> = [
        ("NOMINATIM_URL", fake.url.as_str()),
        ("OSRM_URL", fake.url.as_str()),
        ("NOMINATIM_RATE_PER_SECOND", "50"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let geocoder = Geocoder::new(GeocoderConfig::from_vars(&vars).unwrap());
    let running = Running::start(geocoder, bed.config("geocoder"));

    bed.publish(
        "geocoding-requests",
        &[
            geocode("r-1", "search-1", "Musterstraße", "10115"),
            geocode("r-bad", "search-2", "Musterstraße", "1011"),
            json!({
                "event_type": "geocoding.compute_travel_times",
                "correlation_id": "search-3",
                "payload": {
                    "request_id": "r-travel",
                    "mode": "CAR",
                    "origin": {"latitude": 52.52, "longitude": 13.40},
                    "destinations": [
                        {"id": "t-1", "position": {"latitude": 52.50, "longitude": 13.45}},
                        {"id": "t-2", "position": {"latitude": 52.55, "longitude": 13.30}}
                    ]
                }
            }),
        ],
    )
    .await;
    let records = answers(&bed, &["r-1", "r-bad", "r-travel"]).await;
    let first = one(&records, "r-1");
    let envelope = first.envelope.as_ref().unwrap();
    assert_eq!(envelope.event_type, "geocoding.address_geocoded");
    assert_eq!(envelope.correlation_id.as_deref(), Some("search-1"));
    assert_eq!(envelope.producer, "geocoder");
    assert_eq!(first.payload()["source"], "NOMINATIM");
    assert_eq!(first.headers["correlation_id"], "search-1");
    let bad = one(&records, "r-bad");
    assert_eq!(
        bad.envelope.as_ref().unwrap().event_type,
        "geocoding.failed"
    );
    assert_eq!(bad.payload()["error_code"], "PSY-V-001");
    let payload = bad.payload();
    let reason = payload["reason"].as_str().unwrap();
    assert!(
        reason.contains("postcode is not five digits") && !reason.contains("1011"),
        "the reason names the field, not the address: {reason}"
    );
    let travel = one(&records, "r-travel");
    assert_eq!(
        travel.envelope.as_ref().unwrap().correlation_id.as_deref(),
        Some("search-3")
    );
    let legs = travel.payload()["results"].as_array().unwrap().clone();
    assert_eq!(legs.len(), 2);
    assert_eq!(legs[0]["destination_id"], "t-1");
    assert_eq!(legs[0]["method"], "ROUTED");
    assert_eq!(legs[0]["approximate"], false);
    assert!(legs[0]["duration_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(fake.count("/search"), 1);

    // A spelling variant is answered from the cache, no upstream call.
    bed.publish(
        "geocoding-requests",
        &[geocode("r-2", "search-4", "Musterstr.", "10115")],
    )
    .await;
    let records = answers(&bed, &["r-2"]).await;
    let second = one(&records, "r-2");
    assert_eq!(second.payload()["source"], "CACHE");
    assert_eq!(second.payload()["position"], first.payload()["position"]);
    assert_eq!(fake.count("/search"), 1);

    // Forgetting the address (an erased patient) removes its geocode and
    // the travel times from it: the next request asks Nominatim again.
    let forget = json!({
        "event_type": "geocoding.forget_address",
        "payload": {
            "request_id": "r-forget",
            "address": {"street": "Musterstraße", "house_number": "7", "postcode": "10115", "city": "Berlin"}
        }
    });
    bed.publish("geocoding-requests", &[forget]).await;
    bed.wait_for("the address is forgotten", DEADLINE, || async {
        bed.count("SELECT count(*) FROM geocoder.geocodes").await == 0
    })
    .await;
    bed.publish(
        "geocoding-requests",
        &[geocode("r-3", "search-5", "Musterstraße", "10115")],
    )
    .await;
    let records = answers(&bed, &["r-3"]).await;
    assert_eq!(one(&records, "r-3").payload()["source"], "NOMINATIM");
    assert_eq!(fake.count("/search"), 2);

    // Everything expires; the cleanup command removes it and says how much.
    let travel_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM geocoder.travel_times")
        .fetch_one(&bed.pool)
        .await
        .unwrap();
    assert!(travel_rows > 0);
    sqlx::query("UPDATE geocoder.geocodes SET expires_at = now() - interval '1 second'")
        .execute(&bed.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE geocoder.travel_times SET expires_at = now() - interval '1 second'")
        .execute(&bed.pool)
        .await
        .unwrap();
    bed.publish(
        "geocoding-requests",
        &[json!({"event_type": "geocoding.cleanup_cache", "payload": {"request_id": "r-clean"}})],
    )
    .await;
    let records = answers(&bed, &["r-clean"]).await;
    let cleaned = one(&records, "r-clean").payload();
    assert_eq!(cleaned["geocodes_removed"], 1);
    assert_eq!(cleaned["travel_times_removed"], travel_rows);

    running.stop().await;
}
