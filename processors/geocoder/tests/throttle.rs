//! Nominatim sees at most the configured rate for the whole deployment:
//! three geocoder processes share 50 uncached addresses, and the fake
//! Nominatim records when each request arrives.
//!
//! The limit here is 5 requests per second (200 ms). The test asserts no two
//! arrivals closer than 200 ms, with no tolerance: a replica sends only
//! while it holds the upstream's token, and the next request starts an
//! interval after the previous answer, which the fake sends after it
//! recorded the arrival. However the three processes are scheduled on two
//! busy cores, arrivals cannot come closer than the interval.

use psymatch_geocoder::fake::FakeUpstreams;
use psymatch_runtime::testing::{KillOnDrop, TestBed, free_port, metric, scratch_dir};
use serde_json::json;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);
const LIMIT: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread")]
async fn three_replicas_together_keep_the_nominatim_rate() {
    let fake = FakeUpstreams::start().await;
    let bed = TestBed::new().await;
    let log = scratch_dir("throttle").join("geocoders.log");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let _replicas: Vec<KillOnDrop> = ports
        .iter()
        .map(|port| {
            let mut env = bed.env("geocoder");
            env.extend(
                [
                    ("NOMINATIM_URL", fake.url.as_str()),
                    ("OSRM_URL", fake.url.as_str()),
                    ("NOMINATIM_RATE_PER_SECOND", "5"),
                    ("RUST_LOG", "info"),
                ]
                .map(|(k, v)| (k.to_string(), v.to_string())),
            );
            env.push(("HTTP_LISTEN".into(), format!("127.0.0.1:{port}")));
            KillOnDrop::spawn(env!("CARGO_BIN_EXE_psymatch-geocoder"), &env, &log)
        })
        .collect();
    // Every replica holds partitions before the work arrives.
    bed.wait_for("all three replicas hold partitions", DEADLINE, || async {
        let mut all = true;
        for port in &ports {
            let status = reqwest::get(format!("http://127.0.0.1:{port}/health/status")).await;
            let held = match status {
                Ok(response) => response
                    .json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|s| s["assigned_partitions"].as_array().map(|a| !a.is_empty()))
                    .unwrap_or(false),
                Err(_) => false,
            };
            all &= held;
        }
        all
    })
    .await;

    let requests: Vec<_> = (0..50)
        .map(|i| {
            json!({
                "event_type": "geocoding.geocode_address",
                "payload": {
                    "request_id": format!("r-{i}"),
                    "address": {"street": format!("Taktstraße {i}"), "postcode": "10115", "city": "Berlin"}
                }
            })
        })
        .collect();
    bed.publish("geocoding-requests", &requests).await;
    bed.read_until("geocoding-results", DEADLINE, |records| records.len() >= 50)
        .await;

    let mut arrivals: Vec<_> = fake.arrivals().into_iter().map(|a| a.at).collect();
    arrivals.sort();
    assert_eq!(arrivals.len(), 50, "one request per uncached address");
    let gaps: Vec<Duration> = arrivals.windows(2).map(|w| w[1] - w[0]).collect();
    let smallest = *gaps.iter().min().unwrap();
    let span = arrivals[49] - arrivals[0];
    println!(
        "50 requests from 3 replicas: smallest gap {smallest:?}, mean gap {:?}, limit {LIMIT:?}",
        span / 49
    );
    assert!(
        smallest >= LIMIT,
        "two requests {smallest:?} apart; the limit is {LIMIT:?}"
    );
    for port in &ports {
        let made = metric(
            *port,
            "psymatch_geocoder_upstream_requests_total",
            &["outcome=\"ok\"", "upstream=\"nominatim\""],
        )
        .await;
        assert!(made > 0.0, "the replica on port {port} made no request");
    }
}
