//! How far a processor has read its source topic, for decisions that must
//! not be outrun by a record on another partition (the email batcher's
//! flush and the withdrawals it must see first).

use crate::processor::{Context, ProcessError};

/// What [`Context::source_ends`] and [`Context::source_committed`] read.
#[derive(Clone, Copy)]
pub(crate) struct Progress<'a> {
    pub(crate) watermarks: &'a crate::broker::Watermarks,
    /// The processor's schema (its `consumer_offsets`).
    pub(crate) schema: &'a str,
    /// The consumer group whose offsets count.
    pub(crate) group: &'a str,
    /// The prefix of physical topic names (`TOPIC_PREFIX`).
    pub(crate) prefix: &'a str,
}

impl Context<'_> {
    /// Each partition of the record's source topic with its low and high
    /// watermark now: a record published on it before this call lies
    /// below the high one. Empty where no broker is asked (unit tests).
    pub async fn source_ends(&mut self) -> Result<Vec<(i32, i64, i64)>, ProcessError> {
        let Some(progress) = self.progress else {
            return Ok(Vec::new());
        };
        let topic = format!("{}{}", progress.prefix, self.source.topic);
        progress
            .watermarks
            .of(&topic, std::time::Duration::from_secs(10))
            .await
            .map_err(|error| ProcessError::Transient(format!("watermarks: {error}")))
    }

    /// The next offset this processor has committed per partition of the
    /// source topic, read outside the batch's transaction: what every
    /// worker and replica has processed for good. With
    /// [`Context::source_ends`], whether everything published before a
    /// moment has been read (a decision that must not be outrun by a
    /// record on another partition).
    pub async fn source_committed(
        &mut self,
    ) -> Result<std::collections::BTreeMap<i32, i64>, ProcessError> {
        let Some(progress) = self.progress else {
            return Ok(Default::default());
        };
        let rows: Vec<(i32, i64)> = sqlx::query_as(&format!(
            "SELECT partition, next_offset FROM {}.consumer_offsets
              WHERE consumer_group = $1 AND topic = $2",
            progress.schema
        ))
        .bind(progress.group)
        .bind(format!("{}{}", progress.prefix, self.source.topic))
        .fetch_all(self.pool)
        .await?;
        Ok(rows.into_iter().collect())
    }
}
