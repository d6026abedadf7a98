//! A request rate for a whole deployment, whatever the number of replicas:
//! the next free request slot of an upstream lives in a table of the
//! processor's schema (`<schema>.request_slots`), and a replica reserves a
//! slot by moving it one interval on in one atomic statement (GCRA, one
//! theoretical arrival time, the database's clock deciding). The statement
//! returns how long the caller waits for its slot.

use sqlx::PgPool;
use std::time::Duration;

/// Reserves the next slot of `upstream` in `schema.request_slots` and
/// returns how long to wait for it.
pub async fn reserve_slot(
    pool: &PgPool,
    schema: &str,
    upstream: &str,
    interval: Duration,
) -> Result<Duration, sqlx::Error> {
    // The row lock of the upsert orders concurrent reservations; each one
    // gets the slot after the previous one.
    let wait: f64 = sqlx::query_scalar(&format!(
        "INSERT INTO {schema}.request_slots AS s (upstream, next_slot)
         VALUES ($1, clock_timestamp() + make_interval(secs => $2))
         ON CONFLICT (upstream) DO UPDATE
            SET next_slot = greatest(s.next_slot, clock_timestamp()) + make_interval(secs => $2)
         RETURNING greatest(extract(epoch FROM s.next_slot - clock_timestamp())::float8 - $2, 0)"
    ))
    .bind(upstream)
    .bind(interval.as_secs_f64())
    .fetch_one(pool)
    .await?;
    Ok(Duration::from_secs_f64(wait))
}

/// Moves the next slot of `upstream` at least `wait` into the future (the
/// upstream asked everyone to hold back).
pub async fn push_slot(
    pool: &PgPool,
    schema: &str,
    upstream: &str,
    wait: Duration,
) -> Result<(), sqlx::Error> {
    sqlx::query(&format!(
        "UPDATE {schema}.request_slots
            SET next_slot = greatest(next_slot, clock_timestamp() + make_interval(secs => $2))
          WHERE upstream = $1"
    ))
    .bind(upstream)
    .bind(wait.as_secs_f64())
    .execute(pool)
    .await?;
    Ok(())
}
