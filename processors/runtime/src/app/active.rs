//! One active replica at a time, for a processor whose work does not
//! divide among replicas ([`Processor::exclusive`]): the others stand by,
//! serve their surface (queries answer from committed rows) and take over
//! when the active one stops or dies.
//!
//! The active replica holds a lease row in `<schema>.active_replica` per
//! consumer group, renewed on the database's clock. A row rather than a
//! session advisory lock: a PostgreSQL restart ends every session, and with
//! it every advisory lock, so the replica that reconnected first would win
//! and the active one would have to stop; a row outlives the restart, and
//! its holder renews it as soon as PostgreSQL answers again. A graceful
//! stop deletes the row, so a standby takes over within
//! [`STANDBY_POLL`]; a killed replica's row expires after [`LEASE`]. The
//! lease is kept on a connection of its own: the pool's connections may all
//! be busy for seconds (batches waiting for their turn), and a renewal
//! waiting for one let the lease expire under a replica that was working.

use super::Shared;
use super::retry::backoff;
use crate::processor::Processor;
use sqlx::{ConnectOptions, PgConnection};
use std::str::FromStr;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long the active replica's lease lasts without a renewal: the time
/// a standby waits after the active one was killed.
pub(super) const LEASE: Duration = Duration::from_secs(10);
/// How often the active replica renews its lease.
const RENEW: Duration = Duration::from_secs(1);
/// How often a standby asks whether the lease is free.
const STANDBY_POLL: Duration = Duration::from_millis(500);

/// This replica's claim on the active role of its consumer group, and the
/// connection it is kept on.
pub(super) struct Lease {
    holder: Uuid,
    connection: Option<PgConnection>,
}

impl Lease {
    /// Takes the lease, or renews it when this replica holds it already:
    /// whether this replica holds it now. A failed connection is dropped
    /// and made again on the next call.
    async fn claim<P: Processor>(&mut self, shared: &Shared<P>) -> Result<bool, sqlx::Error> {
        let connection = match &mut self.connection {
            Some(connection) => connection,
            None => {
                let options =
                    sqlx::postgres::PgConnectOptions::from_str(&shared.config.database_url)?
                        .application_name(&format!("psymatch-active-{}", shared.schema));
                self.connection.insert(options.connect().await?)
            }
        };
        let sql = format!(
            "INSERT INTO {schema}.active_replica (group_id, holder, expires_at)
             VALUES ($1, $2, now() + $3 * interval '1 millisecond')
             ON CONFLICT (group_id) DO UPDATE
                SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
              WHERE active_replica.holder = EXCLUDED.holder OR active_replica.expires_at < now()
             RETURNING holder",
            schema = shared.schema
        );
        let taken: Result<Option<Uuid>, sqlx::Error> = sqlx::query_scalar(&sql)
            .bind(&shared.config.group)
            .bind(self.holder)
            .bind(LEASE.as_millis() as f64)
            .fetch_optional(connection)
            .await;
        if taken.is_err() {
            self.connection = None;
        }
        Ok(taken? == Some(self.holder))
    }

    /// Stands by until this replica becomes the active one. Never returns
    /// an error: PostgreSQL out of reach is waited out.
    pub(super) async fn acquire<P: Processor>(shared: &Shared<P>) -> Lease {
        let mut lease = Lease {
            holder: Uuid::new_v4(),
            connection: None,
        };
        let mut attempt = 0u32;
        let mut announced = false;
        loop {
            match lease.claim(shared).await {
                Ok(true) => break,
                Ok(false) => {
                    attempt = 0;
                    if !announced {
                        tracing::info!("another replica is active; standing by");
                        announced = true;
                    }
                    tokio::time::sleep(STANDBY_POLL).await;
                }
                Err(error) => {
                    attempt += 1;
                    shared.status.error(format!("active lease: {error}"));
                    tokio::time::sleep(backoff(attempt, Duration::from_secs(2))).await;
                }
            }
        }
        tracing::info!("active: this replica consumes");
        lease
    }

    /// Renews the lease until it is lost: returns only when another
    /// replica holds it (this one could not reach PostgreSQL for longer
    /// than [`LEASE`] and a standby took over).
    pub(super) async fn lost<P: Processor>(&mut self, shared: &Shared<P>) {
        let mut renewed = Instant::now();
        loop {
            tokio::time::sleep(RENEW).await;
            match self.claim(shared).await {
                Ok(true) => renewed = Instant::now(),
                Ok(false) => {
                    shared.metrics.active.set(0);
                    return;
                }
                Err(error) => {
                    shared.status.error(format!("active lease: {error}"));
                    if renewed.elapsed() > LEASE {
                        tracing::warn!(
                            seconds = renewed.elapsed().as_secs(),
                            "the active lease could not be renewed; another replica may take over"
                        );
                    }
                }
            }
        }
    }

    /// Gives the lease up after a graceful stop, so that a standby takes
    /// over at once instead of after [`LEASE`].
    pub(super) async fn release<P: Processor>(self, shared: &Shared<P>) {
        let sql = format!(
            "DELETE FROM {}.active_replica WHERE group_id = $1 AND holder = $2",
            shared.schema
        );
        // On the pool: the lease's own connection may be the one that failed.
        let released = sqlx::query(&sql)
            .bind(&shared.config.group)
            .bind(self.holder)
            .execute(&shared.pool)
            .await;
        if let Err(error) = released {
            tracing::warn!(%error, "the active lease was not released; it expires");
        }
        shared.metrics.active.set(0);
    }
}
