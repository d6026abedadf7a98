//! The geocoder's upstream handling against local fakes of Nominatim and
//! OSRM: caching, retries honouring Retry-After, timeouts, malformed
//! answers, the circuit breaker, and the offline fallbacks. PostgreSQL is
//! the stack's (a database per test).

use chrono::Utc;
use psymatch_geocoder::address::Address;
use psymatch_geocoder::breaker::State;
use psymatch_geocoder::config::GeocoderConfig;
use psymatch_geocoder::fake::{self, Behaviour, FakeUpstreams};
use psymatch_geocoder::{
    Destination, Geocoded, Geocoder, Method, Mode, Position, Precision, Source,
};
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::testing::fresh_database;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::time::Duration;

fn address(street: &str, number: &str) -> Address {
    Address {
        street: street.to_string(),
        house_number: Some(number.to_string()),
        postcode: "10115".to_string(),
        city: "Berlin".to_string(),
    }
}

/// A geocoder on the fakes, fast to retry, with `overrides`.
async fn geocoder(fake: &FakeUpstreams, overrides: &[(&str, &str)]) -> (Geocoder, PgPool) {
    let mut vars: BTreeMap<String, String> = [
        ("NOMINATIM_URL", fake.url.as_str()),
        ("OSRM_URL", fake.url.as_str()),
        ("NOMINATIM_RATE_PER_SECOND", "100"),
        ("UPSTREAM_BACKOFF_MS", "20"),
        ("UPSTREAM_TIMEOUT_MS", "400"),
        ("GEOCODER_CONTACT", "tests@example.invalid"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, v) in overrides {
        vars.insert(k.to_string(), v.to_string());
    }
    let config = GeocoderConfig::from_vars(&vars).unwrap();
    let (pool, _) = fresh_database().await;
    (Geocoder::new(config), pool)
}

fn found(answer: &Geocoded) -> (Position, Precision, Source, Option<&str>) {
    match answer {
        Geocoded::Found {
            position,
            precision,
            source,
            note,
        } => (*position, *precision, *source, note.as_deref()),
        other => panic!("expected a position, got {other:?}"),
    }
}

/// The answer is `centre` from the offline dataset, with a note saying why.
fn assert_postcode_centre(answer: &Geocoded, centre: Position, why: &str) {
    let (position, precision, source, note) = found(answer);
    assert_eq!(
        (position, precision, source),
        (centre, Precision::Postcode, Source::OfflinePostcode)
    );
    assert!(note.unwrap().contains(why), "{note:?}");
}

fn requests(geocoder: &Geocoder, upstream: &str, outcome: &str) -> u64 {
    geocoder
        .metrics()
        .upstream_requests
        .with_label_values(&[upstream, outcome])
        .get()
}

#[tokio::test]
async fn the_cache_answers_spelling_variants_refreshes_expired_entries_and_is_cleaned() {
    let fake = FakeUpstreams::start().await;
    let (geocoder, pool) = geocoder(&fake, &[]).await;
    let first = geocoder
        .geocode(&pool, &address("Musterstraße", "7"))
        .await
        .unwrap();
    let (position, precision, source, note) = found(&first);
    assert_eq!(source, Source::Nominatim);
    assert_eq!(precision, Precision::Address);
    assert_eq!(note, None);
    assert_eq!(
        position,
        round7(fake::position_of("Musterstraße 7, 10115 Berlin"))
    );
    assert_eq!(fake.count("/search"), 1);
    // The request named the application and its contact.
    assert!(
        fake.arrivals()[0]
            .user_agent
            .contains("tests@example.invalid")
    );

    let again = geocoder
        .geocode(&pool, &address("Musterstr.", "7"))
        .await
        .unwrap();
    assert_eq!(found(&again).2, Source::Cache);
    assert_eq!(found(&again).0, position);
    assert_eq!(
        fake.count("/search"),
        1,
        "a cache hit makes no upstream call"
    );

    sqlx::query("UPDATE geocoder.geocodes SET expires_at = now() - interval '1 second'")
        .execute(&pool)
        .await
        .unwrap();
    let refreshed = geocoder
        .geocode(&pool, &address("Musterstraße", "7"))
        .await
        .unwrap();
    assert_eq!(found(&refreshed).2, Source::Nominatim);
    assert_eq!(
        fake.count("/search"),
        2,
        "an expired entry is asked for again"
    );
    let expires_in_days: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - now())::float8 / 86400 FROM geocoder.geocodes",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        (89.9..=90.0).contains(&expires_in_days),
        "{expires_in_days}"
    );

    // Cleanup removes expired entries only.
    geocoder
        .geocode(&pool, &address("Anderestraße", "1"))
        .await
        .unwrap();
    sqlx::query("UPDATE geocoder.geocodes SET expires_at = now() - interval '1 second' WHERE precision IS NOT NULL AND latitude <> $1")
        .bind(position.latitude)
        .execute(&pool)
        .await
        .unwrap();
    let mut connection = pool.acquire().await.unwrap();
    let (geocodes, _) = psymatch_geocoder::cache::cleanup(&mut connection, Utc::now())
        .await
        .unwrap();
    assert_eq!(geocodes, 1);
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM geocoder.geocodes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 1);
}

/// The fake writes 7 decimals; the parsed position is that string's value.
fn round7(position: Position) -> Position {
    Position {
        latitude: format!("{:.7}", position.latitude).parse().unwrap(),
        longitude: format!("{:.7}", position.longitude).parse().unwrap(),
    }
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after() {
    let fake = FakeUpstreams::start().await;
    let (geocoder, pool) = geocoder(&fake, &[]).await;
    fake.script([Behaviour::Status(429, Some("1".into()))]);
    let answer = geocoder
        .geocode(&pool, &address("Wartestraße", "1"))
        .await
        .unwrap();
    assert_eq!(found(&answer).2, Source::Nominatim);
    let arrivals = fake.arrivals();
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1].at - arrivals[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, asked to wait 1 s"
    );
    assert_eq!(requests(&geocoder, "nominatim", "rate_limited"), 1);
    assert_eq!(requests(&geocoder, "nominatim", "ok"), 1);
}

#[tokio::test]
async fn a_retry_after_beyond_the_limit_falls_back_at_once() {
    let fake = FakeUpstreams::start().await;
    let (geocoder, pool) = geocoder(&fake, &[("RETRY_AFTER_MAX_SECS", "5")]).await;
    fake.script([Behaviour::Status(429, Some("3600".into()))]);
    let answer = geocoder
        .geocode(&pool, &address("Wartestraße", "2"))
        .await
        .unwrap();
    let (_, precision, source, note) = found(&answer);
    assert_eq!(
        (precision, source),
        (Precision::Postcode, Source::OfflinePostcode)
    );
    assert!(note.unwrap().contains("HTTP 429"), "{note:?}");
    assert_eq!(fake.count("/search"), 1);
}

#[tokio::test]
async fn server_errors_and_timeouts_are_retried() {
    let fake = FakeUpstreams::start().await;
    let (geocoder, pool) = geocoder(&fake, &[("UPSTREAM_ATTEMPTS", "3")]).await;
    fake.script([
        Behaviour::Status(503, None),
        Behaviour::Slow(Duration::from_secs(2)),
    ]);
    let answer = geocoder
        .geocode(&pool, &address("Langsamweg", "3"))
        .await
        .unwrap();
    assert_eq!(found(&answer).2, Source::Nominatim);
    assert_eq!(fake.count("/search"), 3);
    assert_eq!(requests(&geocoder, "nominatim", "server_error"), 1);
    assert_eq!(requests(&geocoder, "nominatim", "timeout"), 1);
    assert_eq!(requests(&geocoder, "nominatim", "ok"), 1);
}

#[tokio::test]
async fn malformed_answers_and_unknown_addresses_fall_back_to_the_postcode_centre() {
    let fake = FakeUpstreams::start().await;
    let (geocoder, pool) = geocoder(&fake, &[]).await;
    let centre = psymatch_geo::postcodes()["10115"];
    fake.script([Behaviour::Malformed]);
    let answer = geocoder
        .geocode(&pool, &address("Kaputtweg", "4"))
        .await
        .unwrap();
    assert_postcode_centre(&answer, centre, "unusable answer");
    assert_eq!(
        fake.count("/search"),
        1,
        "a malformed answer is not retried"
    );

    let unknown = address(fake::UNKNOWN_STREET, "1");
    let answer = geocoder.geocode(&pool, &unknown).await.unwrap();
    assert!(found(&answer).3.unwrap().contains("knows no such address"));
    // The negative answer is cached too.
    let again = geocoder.geocode(&pool, &unknown).await.unwrap();
    assert!(found(&again).3.unwrap().contains("cached"));
    assert_eq!(fake.count("/search"), 2);

    let nowhere = Address {
        postcode: "00000".into(),
        ..unknown
    };
    match geocoder.geocode(&pool, &nowhere).await.unwrap() {
        Geocoded::Failed { code, reason } => {
            assert_eq!(code, ErrorCode::AddressNotFound);
            assert!(
                reason.contains("the postcode is not in the offline dataset"),
                "{reason}"
            );
        }
        other => panic!("expected a failure, got {other:?}"),
    }
    match geocoder
        .geocode(
            &pool,
            &Address {
                postcode: "1011".into(),
                ..address("Weg", "1")
            },
        )
        .await
        .unwrap()
    {
        Geocoded::Failed { code, .. } => assert_eq!(code, ErrorCode::InvalidCommand),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[tokio::test]
async fn the_breaker_opens_after_repeated_failures_and_closes_after_a_good_probe() {
    let fake = FakeUpstreams::start().await;
    let (geocoder, pool) = geocoder(
        &fake,
        &[
            ("UPSTREAM_ATTEMPTS", "1"),
            ("BREAKER_FAILURES", "3"),
            ("BREAKER_OPEN_MS", "300"),
        ],
    )
    .await;
    fake.set_default(Behaviour::Status(500, None));
    for i in 0..3 {
        let answer = geocoder
            .geocode(&pool, &address("Ausfallweg", &i.to_string()))
            .await
            .unwrap();
        assert_eq!(found(&answer).2, Source::OfflinePostcode);
    }
    assert_eq!(geocoder.nominatim().breaker_state(), State::Open);
    let refused = geocoder
        .geocode(&pool, &address("Ausfallweg", "9"))
        .await
        .unwrap();
    assert!(found(&refused).3.unwrap().contains("circuit breaker open"));
    assert_eq!(fake.count("/search"), 3, "an open breaker makes no call");
    let gauge = geocoder
        .metrics()
        .breaker_state
        .with_label_values(&["nominatim"])
        .get();
    assert_eq!(gauge, 1);

    // The service recovers; after the cool-down one probe goes through and
    // closes the breaker.
    fake.set_default(Behaviour::Answer);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let answer = geocoder
            .geocode(&pool, &address("Ausfallweg", "10"))
            .await
            .unwrap();
        if found(&answer).2 == Source::Nominatim {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the breaker never half-opened"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(geocoder.nominatim().breaker_state(), State::Closed);
    assert_eq!(fake.count("/search"), 4);
}

fn destinations(positions: &[Position]) -> Vec<Destination> {
    positions
        .iter()
        .enumerate()
        .map(|(i, p)| Destination {
            id: format!("therapist-{i}"),
            position: *p,
        })
        .collect()
}

#[tokio::test]
async fn travel_times_are_routed_cached_and_estimated_when_routing_fails() {
    let fake = FakeUpstreams::start().await;
    let (geocoder, pool) = geocoder(&fake, &[("UPSTREAM_ATTEMPTS", "1")]).await;
    let origin = Position {
        latitude: 52.52,
        longitude: 13.40,
    };
    let targets = [
        Position {
            latitude: 52.50,
            longitude: 13.45,
        },
        Position {
            latitude: 52.40,
            longitude: 5.90,
        }, // unreachable in the fake
        Position {
            latitude: 52.55,
            longitude: 13.30,
        },
    ];
    let wanted = destinations(&targets);
    let results = geocoder
        .travel_times(&pool, Mode::Car, origin, &wanted, Utc::now())
        .await
        .unwrap();
    assert_eq!(fake.count("/table/v1/driving/"), 1);
    for (result, target) in results.iter().zip(targets) {
        let expected = fake::trip(origin, target);
        assert_eq!(result.method, Method::Routed);
        match expected {
            Some((duration, distance)) => {
                assert!((result.duration.unwrap() - duration).abs() < 1.0);
                assert!((result.distance - distance).abs() < 1.0);
            }
            None => assert_eq!(result.duration, None),
        }
    }
    // Cached: no second call; one destination alone goes to /route.
    let again = geocoder
        .travel_times(&pool, Mode::Car, origin, &wanted, Utc::now())
        .await
        .unwrap();
    assert_eq!(again, results);
    assert_eq!(fake.arrivals().len(), 1);
    let single = Position {
        latitude: 52.60,
        longitude: 13.50,
    };
    geocoder
        .travel_times(
            &pool,
            Mode::Walking,
            origin,
            &destinations(&[single]),
            Utc::now(),
        )
        .await
        .unwrap();
    assert_eq!(fake.count("/route/v1/foot/"), 1);

    // Public transport: routed with the configured profile, scaled, estimated.
    let transit = geocoder
        .travel_times(&pool, Mode::PublicTransport, origin, &wanted, Utc::now())
        .await
        .unwrap();
    assert_eq!(transit[0].method, Method::OtherProfile);
    assert!((transit[0].duration.unwrap() - results[0].duration.unwrap() * 1.6).abs() < 1.0);

    // The router fails: straight-line estimates, flagged.
    fake.set_default(Behaviour::Status(502, None));
    let elsewhere = destinations(&[Position {
        latitude: 51.0,
        longitude: 12.0,
    }]);
    let estimated = geocoder
        .travel_times(&pool, Mode::Bicycle, origin, &elsewhere, Utc::now())
        .await
        .unwrap();
    assert_eq!(estimated[0].method, Method::StraightLine);
    let (distance, duration) =
        psymatch_geocoder::fallback::straight_line(Mode::Bicycle, origin, elsewhere[0].position);
    assert_eq!(estimated[0].distance, distance);
    assert_eq!(estimated[0].duration, Some(duration));
    let cached: i64 =
        sqlx::query_scalar("SELECT count(*) FROM geocoder.travel_times WHERE profile = 'bike'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(cached, 0, "estimates are not cached");
}

#[tokio::test]
async fn offline_the_postcode_centres_and_straight_lines_answer_without_upstreams() {
    let fake = FakeUpstreams::start().await;
    let (geocoder, pool) = geocoder(
        &fake,
        &[("NOMINATIM_URL", "offline"), ("OSRM_URL", "offline")],
    )
    .await;
    let centre = psymatch_geo::postcodes()["10115"];
    let answer = geocoder
        .geocode(&pool, &address("Offlineweg", "1"))
        .await
        .unwrap();
    assert_postcode_centre(&answer, centre, "NOMINATIM_URL=offline");
    let destinations = [Destination {
        id: "t-1".into(),
        position: Position {
            latitude: 52.55,
            longitude: 13.40,
        },
    }];
    let travel = geocoder
        .travel_times(&pool, Mode::Car, centre, &destinations, Utc::now())
        .await
        .unwrap();
    assert_eq!(travel[0].method, Method::StraightLine);
    assert!(travel[0].duration.unwrap() > 0.0);
    assert_eq!(fake.count("/"), 0, "no upstream was asked");
}
