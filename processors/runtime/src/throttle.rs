//! A request rate for a whole deployment, whatever the number of replicas:
//! one request to an upstream at a time, and the next one no sooner than an
//! interval after the previous one was answered.
//!
//! The replica that sends holds a PostgreSQL advisory lock for the upstream
//! (a leased token) from before its request until after the answer, and
//! records when the next request may go (`<schema>.request_slots`). The
//! next holder waits for that moment by the database's clock. Because a
//! request starts only after the previous answer arrived plus the interval,
//! the upstream sees its requests at least an interval apart however the
//! processes are scheduled: there is no tolerance to state. Within a process
//! a mutex queues the callers, so a replica holds at most one connection
//! for this.

use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;

/// The shared rate of one upstream.
pub struct SharedRate {
    schema: &'static str,
    upstream: &'static str,
    interval: Duration,
    local: tokio::sync::Mutex<()>,
}

/// What a call under the rate returns besides its value: the upstream
/// asked everyone to hold back this long (a Retry-After).
pub type HoldBack = Option<Duration>;

impl SharedRate {
    /// A rate of one request per `interval` to `upstream`, kept in
    /// `schema.request_slots`.
    pub fn new(schema: &'static str, upstream: &'static str, interval: Duration) -> SharedRate {
        SharedRate {
            schema,
            upstream,
            interval,
            local: tokio::sync::Mutex::new(()),
        }
    }

    /// Runs `request` when this replica holds the upstream's token and the
    /// interval since the last answer has passed. Returns its value and
    /// how long it waited for its turn.
    pub async fn run<T, F, Fut>(
        &self,
        pool: &PgPool,
        request: F,
    ) -> Result<(T, Duration), sqlx::Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (T, HoldBack)>,
    {
        let started = std::time::Instant::now();
        let _turn = self.local.lock().await;
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))")
            .bind(format!("{}.{}", self.schema, self.upstream))
            .execute(&mut *tx)
            .await?;
        let wait: Option<f64> = sqlx::query_scalar(&format!(
            "SELECT greatest(extract(epoch FROM next_slot - clock_timestamp())::float8, 0)
               FROM {}.request_slots WHERE upstream = $1",
            self.schema
        ))
        .bind(self.upstream)
        .fetch_optional(&mut *tx)
        .await?;
        tokio::time::sleep(Duration::from_secs_f64(wait.unwrap_or(0.0))).await;
        let waited = started.elapsed();
        // Committed before the request: should this replica die during it,
        // the next holder still waits an interval from its start.
        self.set_next(pool, self.interval).await?;
        let (value, hold_back) = request().await;
        let pause = hold_back.map_or(self.interval, |h| h.max(self.interval));
        self.set_next(&mut *tx, pause).await?;
        tx.commit().await?;
        Ok((value, waited))
    }

    /// The next request may go `pause` from now.
    async fn set_next<'e>(
        &self,
        db: impl sqlx::PgExecutor<'e>,
        pause: Duration,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "INSERT INTO {}.request_slots (upstream, next_slot)
             VALUES ($1, clock_timestamp() + make_interval(secs => $2))
             ON CONFLICT (upstream) DO UPDATE SET next_slot = excluded.next_slot",
            self.schema
        ))
        .bind(self.upstream)
        .bind(pause.as_secs_f64())
        .execute(db)
        .await?;
        Ok(())
    }
}
