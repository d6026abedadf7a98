//! Cache expiry on the runtime's clock, through the real topics: a
//! geocode is answered from the cache on the day before its TTL ends and
//! asked of Nominatim again on the day it ends; the same for travel times
//! and OSRM. Weeks pass on a test clock, not in the test.

use chrono::{DateTime, Duration, Utc};
use psymatch_geocoder::Geocoder;
use psymatch_geocoder::config::GeocoderConfig;
use psymatch_geocoder::fake::FakeUpstreams;
use psymatch_runtime::clock::ManualClock;
use psymatch_runtime::testing::{Received, Running, TestBed};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

fn geocode(request: &str) -> Value {
    json!({"event_type": "geocoding.geocode_address", "payload": {"request_id": request,
        "address": {"street": "Uhrweg", "house_number": "3", "postcode": "10115", "city": "Berlin"}}})
}

fn travel(request: &str) -> Value {
    json!({"event_type": "geocoding.compute_travel_times", "payload": {"request_id": request,
        "mode": "CAR", "origin": {"latitude": 52.52, "longitude": 13.40},
        "destinations": [{"id": "t-1", "position": {"latitude": 52.50, "longitude": 13.45}}]}})
}

/// Publishes `record` and returns the source of its answer.
async fn answered(bed: &TestBed, record: Value) -> String {
    let request = record["payload"]["request_id"]
        .as_str()
        .unwrap()
        .to_string();
    bed.publish("geocoding-requests", &[record]).await;
    let records = bed
        .read_until("geocoding-results", DEADLINE, |r: &[Received]| {
            r.iter().any(|r| r.key.as_deref() == Some(request.as_str()))
        })
        .await;
    let result = records
        .iter()
        .find(|r| r.key.as_deref() == Some(request.as_str()))
        .unwrap()
        .payload();
    match result["source"].as_str() {
        Some(source) => source.to_string(),
        None => result["results"][0]["method"].as_str().unwrap().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cache_entries_expire_on_the_day_their_ttl_ends_and_not_the_day_before() {
    let fake = FakeUpstreams::start().await;
    let bed = TestBed::new().await;
    let vars: BTreeMap<String, String> = [
        ("NOMINATIM_URL", fake.url.as_str()),
        ("OSRM_URL", fake.url.as_str()),
        ("GEOCODE_TTL_DAYS", "90"),
        ("TRAVEL_TIME_TTL_DAYS", "30"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let start: DateTime<Utc> = "2027-01-04T08:00:00Z".parse().unwrap();
    let clock = ManualClock::at(start);
    let mut config = bed.config("geocoder");
    config.clock = Arc::new(clock.clone());
    let running = Running::start(
        Geocoder::new(GeocoderConfig::from_vars(&vars).unwrap()),
        config,
    );

    assert_eq!(answered(&bed, geocode("g-0")).await, "NOMINATIM");
    assert_eq!(answered(&bed, travel("r-0")).await, "ROUTED");
    let (searches, routes) = (fake.count("/search"), fake.count("/route"));
    assert_eq!((searches, routes), (1, 1));

    // Travel times: 30 days.
    clock.set(start + Duration::days(30) - Duration::minutes(1));
    assert_eq!(answered(&bed, travel("r-29")).await, "ROUTED");
    assert_eq!(fake.count("/route"), 1, "asked OSRM before the TTL ended");
    clock.set(start + Duration::days(30));
    assert_eq!(answered(&bed, travel("r-30")).await, "ROUTED");
    assert_eq!(fake.count("/route"), 2, "the expired travel time was used");

    // Geocodes: 90 days.
    clock.set(start + Duration::days(90) - Duration::minutes(1));
    assert_eq!(answered(&bed, geocode("g-89")).await, "CACHE");
    assert_eq!(fake.count("/search"), 1);
    clock.set(start + Duration::days(90));
    assert_eq!(answered(&bed, geocode("g-90")).await, "NOMINATIM");
    assert_eq!(fake.count("/search"), 2);
    let expires: DateTime<Utc> = sqlx::query_scalar("SELECT expires_at FROM geocoder.geocodes")
        .fetch_one(&bed.pool)
        .await
        .unwrap();
    assert_eq!(
        expires,
        start + Duration::days(180),
        "stored at the clock's time"
    );
    running.stop().await;
}
