//! Batches without a broker: a processor run on records in one transaction
//! the way the runtime runs it, for tests that decide which instance
//! handles which batch; and waiting for a condition.

use sqlx::PgPool;

/// Runs `records` (written as people write them, for `topic`) through
/// `processor` as one batch, in one transaction on `pool`, the way the
/// runtime does: `begin_batch`, `process` for each, `finish_batch`, commit.
/// Returns what the batch emitted as (topic, event type, payload). No
/// broker: tests that must decide which instance handles which batch.
pub async fn run_batch<P: crate::processor::Processor>(
    processor: &P,
    pool: &PgPool,
    topic: &str,
    records: &[serde_json::Value],
) -> Vec<(String, String, serde_json::Value)> {
    open_batch(processor, pool, topic, records)
        .await
        .expect("the batch runs")
        .commit(processor)
        .await
}

/// A batch run up to its commit ([`open_batch`]): its transaction is still
/// open, so a test decides whether it commits or fails, and when.
pub struct OpenBatch {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    scratch: crate::processor::Scratch,
    emitted: Vec<(String, String, crate::envelope::Envelope)>,
}

impl OpenBatch {
    /// Commits the batch and tells `processor` (the one that ran it), as
    /// the runtime does; returns what it emitted as (topic, event type,
    /// payload).
    pub async fn commit<P: crate::processor::Processor>(
        mut self,
        processor: &P,
    ) -> Vec<(String, String, serde_json::Value)> {
        self.tx.commit().await.expect("commit");
        processor.batch_committed(&mut self.scratch);
        self.emitted
            .into_iter()
            .map(|(topic, _, envelope)| {
                let payload = crate::avro_json::to_json(&envelope.payload);
                (topic, envelope.event_type, payload)
            })
            .collect()
    }

    /// Fails the batch at its commit: the transaction rolls back and the
    /// processor's scratch is dropped, as when the runtime's commit fails.
    pub async fn roll_back(self) {
        self.tx.rollback().await.expect("rollback");
    }
}

/// Runs `records` like [`run_batch`] up to the commit, which is left to the
/// caller; an error of a hook or a record is returned (the transaction is
/// rolled back then).
pub async fn open_batch<P: crate::processor::Processor>(
    processor: &P,
    pool: &PgPool,
    topic: &str,
    records: &[serde_json::Value],
) -> Result<OpenBatch, crate::processor::ProcessError> {
    use crate::processor::{Context, Incoming, Scratch};
    let contracts = crate::contracts::Contracts::embedded();
    let (spec, schema) = contracts.topic(topic).expect("a topic with a schema");
    let now = chrono::Utc::now();
    let incoming: Vec<Incoming> = records
        .iter()
        .enumerate()
        .map(|(offset, record)| {
            let (key, envelope) =
                crate::envelope::from_json(record, schema, &spec.key_fields, "test", now)
                    .expect("the test record fits");
            let payload = crate::avro_json::to_json(&envelope.payload);
            Incoming {
                topic: topic.to_string(),
                partition: 0,
                offset: offset as i64,
                key,
                envelope,
                payload,
            }
        })
        .collect();
    let mut tx = pool.begin().await.expect("a transaction");
    let mut scratch = Scratch::default();
    let mut emitted = Vec::new();
    let batch_id = incoming
        .last()
        .map(|r| r.envelope.event_id)
        .unwrap_or_default();
    let refs: Vec<&Incoming> = incoming.iter().collect();
    let name = processor.name();
    let mut batch = hook(&mut tx, pool, &mut scratch, name, now, batch_id, "begin");
    processor.begin_batch(&mut batch, &refs).await?;
    let settle = |deferred: crate::processor::Deferred| {
        deferred
            .settle(contracts, name, now)
            .expect("what the batch hook emitted fits")
    };
    emitted.extend(batch.emitted.drain(..).map(settle));
    for record in &incoming {
        let mut ctx = Context {
            db: &mut tx,
            pool,
            scratch: &mut scratch,
            contracts,
            producer: processor.name(),
            source: record,
            now,
            emitted: Vec::new(),
            tombstones: Vec::new(),
            progress: None,
        };
        processor.process(&mut ctx, record).await?;
        emitted.append(&mut ctx.emitted);
    }
    let mut batch = hook(&mut tx, pool, &mut scratch, name, now, batch_id, "finish");
    processor.finish_batch(&mut batch).await?;
    emitted.extend(batch.emitted.drain(..).map(settle));
    Ok(OpenBatch {
        tx,
        scratch,
        emitted,
    })
}

/// Polls `check` until it returns true, or panics after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: std::time::Duration, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < until,
            "{what}: not reached within {deadline:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The context of a batch hook, as the runtime builds it ([`run_batch`]).
pub(crate) fn hook<'a>(
    db: &'a mut sqlx::PgConnection,
    pool: &'a PgPool,
    scratch: &'a mut crate::processor::Scratch,
    producer: &'static str,
    now: chrono::DateTime<chrono::Utc>,
    batch_id: uuid::Uuid,
    phase: &'static str,
) -> crate::processor::BatchContext<'a> {
    crate::processor::BatchContext {
        db,
        pool,
        scratch,
        contracts: crate::contracts::Contracts::embedded(),
        producer,
        now,
        batch_id,
        phase,
        emitted: Vec::new(),
    }
}
