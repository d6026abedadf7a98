//! The geocode and travel-time caches in PostgreSQL, with expiry.
//!
//! Reads see only entries unexpired at the batch's `now` (the runtime's
//! clock, so a test moves past a TTL without waiting); an expired one is
//! a miss and is overwritten by the fresh answer. Cache writes go through the pool, not
//! the batch's transaction: an upstream answer is worth keeping even when
//! the batch that asked for it is rolled back and redone.

use crate::{Position, Precision};
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, PgPool};
use std::collections::HashMap;
use std::time::Duration;

/// A cached geocode: `None` when the upstream knew no such address.
pub type CachedGeocode = Option<(Position, Precision)>;

/// Looks up an address key.
pub async fn geocode<'e>(
    db: impl PgExecutor<'e>,
    key: &[u8; 32],
    now: DateTime<Utc>,
) -> Result<Option<CachedGeocode>, sqlx::Error> {
    Ok(geocodes(db, std::slice::from_ref(key), now)
        .await?
        .remove(key))
}

/// A geocode row: key, latitude, longitude, precision.
type Row = (Vec<u8>, Option<f64>, Option<f64>, Option<String>);

/// Looks up many address keys in one query: the unexpired entries found.
pub async fn geocodes<'e>(
    db: impl PgExecutor<'e>,
    keys: &[[u8; 32]],
    now: DateTime<Utc>,
) -> Result<HashMap<[u8; 32], CachedGeocode>, sqlx::Error> {
    let keys: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT address_key, latitude, longitude, precision FROM geocoder.geocodes
          WHERE address_key = ANY($1) AND expires_at > $2",
    )
    .bind(&keys)
    .bind(now)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(key, latitude, longitude, precision)| {
            let key: [u8; 32] = key.try_into().ok()?;
            Some((key, entry(latitude, longitude, precision)))
        })
        .collect())
}

fn entry(
    latitude: Option<f64>,
    longitude: Option<f64>,
    precision: Option<String>,
) -> CachedGeocode {
    match (
        latitude,
        longitude,
        precision.as_deref().and_then(Precision::parse),
    ) {
        (Some(latitude), Some(longitude), Some(precision)) => Some((
            Position {
                latitude,
                longitude,
            },
            precision,
        )),
        _ => None,
    }
}

/// Stores the answer for an address key for `ttl`.
pub async fn put_geocode(
    pool: &PgPool,
    key: &[u8; 32],
    answer: CachedGeocode,
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO geocoder.geocodes
                (address_key, latitude, longitude, precision, fetched_at, expires_at)
         VALUES ($1, $2, $3, $4, $6, $6 + make_interval(secs => $5))
         ON CONFLICT (address_key) DO UPDATE
            SET latitude = excluded.latitude, longitude = excluded.longitude,
                precision = excluded.precision, fetched_at = excluded.fetched_at,
                expires_at = excluded.expires_at",
    )
    .bind(&key[..])
    .bind(answer.map(|(p, _)| p.latitude))
    .bind(answer.map(|(p, _)| p.longitude))
    .bind(answer.map(|(_, precision)| precision.as_str()))
    .bind(ttl.as_secs_f64())
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// The key of a position in the travel-time cache: 4 decimals, about 11 m,
/// so positions a few metres apart share their travel times.
pub fn position_key(position: Position) -> String {
    format!("{:.4},{:.4}", position.latitude, position.longitude)
}

/// A cached trip: duration (None: no route) and distance.
pub type CachedTrip = (Option<f64>, f64);

/// The unexpired travel times from `origin` to any of `destinations` (keys).
pub async fn travel_times<'e>(
    db: impl PgExecutor<'e>,
    profile: &str,
    origin: &str,
    destinations: &[String],
    now: DateTime<Utc>,
) -> Result<HashMap<String, CachedTrip>, sqlx::Error> {
    let rows: Vec<(String, Option<f64>, f64)> = sqlx::query_as(
        "SELECT destination, duration_seconds, distance_meters FROM geocoder.travel_times
          WHERE profile = $1 AND origin = $2 AND destination = ANY($3) AND expires_at > $4",
    )
    .bind(profile)
    .bind(origin)
    .bind(destinations)
    .bind(now)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(destination, duration, distance)| (destination, (duration, distance)))
        .collect())
}

/// Stores routed trips from `origin` for `ttl`.
pub async fn put_travel_times(
    pool: &PgPool,
    profile: &str,
    origin: &str,
    trips: &[(String, CachedTrip)],
    ttl: Duration,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    if trips.is_empty() {
        return Ok(());
    }
    let destinations: Vec<&str> = trips.iter().map(|(d, _)| d.as_str()).collect();
    let durations: Vec<Option<f64>> = trips.iter().map(|(_, (t, _))| *t).collect();
    let distances: Vec<f64> = trips.iter().map(|(_, (_, d))| *d).collect();
    sqlx::query(
        "INSERT INTO geocoder.travel_times
                (profile, origin, destination, duration_seconds, distance_meters, fetched_at, expires_at)
         SELECT $1, $2, d.destination, d.duration, d.distance, $7, $7 + make_interval(secs => $6)
           FROM unnest($3::text[], $4::float8[], $5::float8[]) AS d(destination, duration, distance)
         ON CONFLICT (profile, origin, destination) DO UPDATE
            SET duration_seconds = excluded.duration_seconds,
                distance_meters = excluded.distance_meters,
                fetched_at = excluded.fetched_at, expires_at = excluded.expires_at",
    )
    .bind(profile)
    .bind(origin)
    .bind(&destinations)
    .bind(&durations)
    .bind(&distances)
    .bind(ttl.as_secs_f64())
    .bind(now)
    .execute(pool)
    .await?;
    Ok(())
}

/// Removes entries expired at `now`: (geocodes, travel times) removed.
pub async fn cleanup(
    db: &mut sqlx::PgConnection,
    now: DateTime<Utc>,
) -> Result<(u64, u64), sqlx::Error> {
    let geocodes = sqlx::query("DELETE FROM geocoder.geocodes WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *db)
        .await?
        .rows_affected();
    let travel = sqlx::query("DELETE FROM geocoder.travel_times WHERE expires_at <= $1")
        .bind(now)
        .execute(&mut *db)
        .await?
        .rows_affected();
    Ok((geocodes, travel))
}

/// Removes everything cached about one address (an erased patient's): its
/// geocode and the travel times from its position (patients are always
/// the origin of a travel-time request).
pub async fn forget(
    db: &mut sqlx::PgConnection,
    key: &[u8; 32],
) -> Result<(u64, u64), sqlx::Error> {
    let position: Option<(Option<f64>, Option<f64>)> = sqlx::query_as(
        "DELETE FROM geocoder.geocodes WHERE address_key = $1 RETURNING latitude, longitude",
    )
    .bind(&key[..])
    .fetch_optional(&mut *db)
    .await?;
    let Some((Some(latitude), Some(longitude))) = position else {
        return Ok((position.is_some() as u64, 0));
    };
    let at = position_key(Position {
        latitude,
        longitude,
    });
    let travel = sqlx::query("DELETE FROM geocoder.travel_times WHERE origin = $1")
        .bind(&at)
        .execute(&mut *db)
        .await?
        .rows_affected();
    Ok((1, travel))
}
