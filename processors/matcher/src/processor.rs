//! The matcher processor: folds patient, therapist, geocoding and email
//! events into its [`World`], and at the end of every batch runs the
//! searches the batch touched: candidates by the rules, ranking, inquiries
//! composed per practice, email commands, and the explanation of each
//! decision. Answers recorded by people place patients, start cooling
//! periods and decline politely when a patient is placed already.
//!
//! Batches take turns on one row lock (`matcher.world`): matching weighs
//! every search against every practice. One replica consumes at a time
//! ([`Processor::exclusive`]), the others stand by; the row lock keeps
//! them consistent all the same (a replica whose memory is behind the
//! committed version reloads it), should two ever consume at once.
//! Within a process, a batch may start from the memory while the batch
//! before it is still encoding and committing its outputs: it takes the
//! row lock only to write, and runs again from the stored state if that
//! batch did not commit.

use crate::config::MatcherConfig;
use crate::events::{Decided, StateLoaded};
use crate::fold::erase;
use crate::input::{self, Input, Refused, inert};
use crate::records::SearchStatus;
use crate::search::Outputs;
use crate::state::{Outcome, Version, World};
use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts};
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::events::Event;
use psymatch_runtime::processor::{
    BatchContext, Context, Incoming, ProcessError, Processor, Scratch, invalid_event,
};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The topic of the matcher's events.
pub(crate) const EVENTS: &str = "matching-events";

/// The matcher's own metrics.
pub(crate) struct Metrics {
    pub(crate) decisions: IntCounterVec,
    pub(crate) search_seconds: Histogram,
    searches: IntGaugeVec,
    waiting: IntGauge,
    pub(crate) loads: prometheus::IntCounter,
}

/// The matcher processor.
pub struct Matcher {
    pub(crate) config: MatcherConfig,
    world: Mutex<World>,
    /// A batch's turn on the memory in this process, from its start to the
    /// end of its matching; its writes follow under the row lock, which
    /// holds batches (and replicas) apart until each commits.
    turns: Arc<Mutex<()>>,
    pub(crate) metrics: Metrics,
}

impl Matcher {
    /// A matcher with these settings; its state loads when it warms up,
    /// and again in any batch that finds another version stored.
    pub fn new(config: MatcherConfig) -> Matcher {
        let rules = config.rules.clone();
        Matcher {
            config,
            world: Mutex::new(World {
                rules,
                ..World::default()
            }),
            turns: Arc::new(Mutex::new(())),
            metrics: Metrics {
                decisions: IntCounterVec::new(
                    Opts::new(
                        "matcher_decisions_total",
                        "Matcher decisions: inquiries, placements, declines, follow-ups, exhausted searches.",
                    ),
                    &["decision"],
                )
                .expect("valid metric"),
                search_seconds: Histogram::with_opts(
                    HistogramOpts::new(
                        "matcher_search_seconds",
                        "Candidate search and ranking for one patient.",
                    )
                    .buckets(vec![0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05]),
                )
                .expect("valid metric"),
                searches: IntGaugeVec::new(
                    Opts::new("matcher_searches", "Searches by status."),
                    &["status"],
                )
                .expect("valid metric"),
                waiting: IntGauge::new(
                    "matcher_batches_waiting",
                    "Batches that have matched and wait for the batch before them to commit.",
                )
                .expect("valid metric"),
                loads: prometheus::IntCounter::new(
                    "matcher_state_loads_total",
                    "Loads of the whole stored state: one at start, one more each time another \
                     replica committed since this one's last batch.",
                )
                .expect("valid metric"),
            },
        }
    }

    /// The stored state at `version`, logged with its size and counted.
    async fn load(&self, db: &mut sqlx::PgConnection, version: i64) -> Result<World, sqlx::Error> {
        let started = std::time::Instant::now();
        let world = World::load(db, version, self.config.rules.clone()).await?;
        StateLoaded {
            version,
            therapists: world.therapists.len(),
            searches: world.searches.len(),
            inquiries: world.inquiries.len(),
            seconds: started.elapsed().as_secs_f64(),
        }
        .emit(&self.metrics);
        Ok(world)
    }

    /// Counts `n` decisions of a kind.
    pub(crate) fn count(&self, decision: &str, count: usize) {
        Decided { decision, count }.emit(&self.metrics);
    }
}

/// What a batch knows of its turn on the state.
#[derive(Default)]
struct Turn {
    /// Every record of the batch is [`inert`]: no lock, no matching.
    idle: bool,
    /// Held from the start of the batch to the end of its matching.
    turn: Option<OwnedMutexGuard<()>>,
    /// The batch this one went on from, still committing at the start:
    /// this one takes the row lock after that batch's end, and checks then
    /// that the state is still the one it started from. `None`: the batch
    /// holds the row lock since its start.
    after: Option<Arc<Outcome>>,
    /// The version this batch wrote, settled when its transaction ends.
    wrote: Option<Arc<Outcome>>,
}

impl Drop for Turn {
    /// A batch dropped before the runtime reported its commit failed (or
    /// was given up): the memory it leaves is not the stored state.
    fn drop(&mut self) {
        if let Some(outcome) = self.wrote.take() {
            outcome.settle(false);
        }
    }
}

/// Takes one off `gauge` when dropped.
fn uncounted_on_drop(gauge: &IntGauge) -> impl Drop + '_ {
    struct Counted<'g>(&'g IntGauge);
    impl Drop for Counted<'_> {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    Counted(gauge)
}

/// The stored version, locked until the batch's transaction ends.
async fn lock_version(db: &mut sqlx::PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT version FROM matcher.world FOR UPDATE")
        .fetch_one(db)
        .await
}

impl Processor for Matcher {
    fn name(&self) -> &'static str {
        "matcher"
    }

    fn queries(&self, pool: &sqlx::PgPool) -> Option<axum::Router> {
        Some(crate::queries::routes(pool.clone(), self.config.clone()))
    }

    fn journal(&self) -> bool {
        true
    }

    /// Every batch weighs every search against every practice: replicas
    /// taking turns would each reload what the other committed (at 8,000
    /// patients the chain crawled), so one consumes and the others stand by.
    fn exclusive(&self) -> bool {
        true
    }

    fn settings_prefixes(&self) -> &'static [&'static str] {
        &["MATCHER_"]
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec![
            "patient-events",
            "therapist-events",
            "geocoding-results",
            "communication-events",
            "matching-commands",
        ]
    }

    /// Loads the stored state from one snapshot before the first batch:
    /// with 50,000 therapists that takes a second, which the first batch
    /// would otherwise spend while records wait. The batch then finds the
    /// version it loaded still stored, or reloads.
    async fn warm_up(&self, pool: &sqlx::PgPool) -> Result<(), ProcessError> {
        let _turn = self.turns.lock().await;
        let mut tx = pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .execute(&mut *tx)
            .await?;
        let version: i64 = sqlx::query_scalar("SELECT version FROM matcher.world")
            .fetch_one(&mut *tx)
            .await?;
        let world = self.load(&mut tx, version).await?;
        tx.rollback().await?;
        *self.world.lock().await = world;
        Ok(())
    }

    async fn begin_batch(
        &self,
        batch: &mut BatchContext<'_>,
        records: &[&Incoming],
    ) -> Result<(), ProcessError> {
        // Positions of patients' homes are intake's: a batch of nothing
        // else leaves the state alone and need not wait for its turn.
        if records.iter().all(|r| inert(r)) {
            batch.scratch::<Turn>().idle = true;
            return Ok(());
        }
        let turn = self.turns.clone().lock_owned().await;
        let mut world = self.world.lock().await;
        // The batch before is still committing: go on from what it wrote
        // in memory; the row lock, taken to write, tells whether it did.
        let (base, after) = match world.version.in_flight() {
            Some((written, outcome)) => (written, Some(outcome)),
            None => {
                // Batches take turns: the lock is held until this batch commits.
                let version = lock_version(batch.db()).await?;
                if world.version.committed() != Some(version) {
                    *world = self.load(batch.db(), version).await?;
                }
                (version, None)
            }
        };
        // Until this batch has written, the memory is ahead of the database.
        world.version = Version::Unknown;
        world.base = base;
        let scratch = batch.scratch::<Turn>();
        scratch.turn = Some(turn);
        scratch.after = after;
        Ok(())
    }

    async fn process(&self, ctx: &mut Context<'_>, record: &Incoming) -> Result<(), ProcessError> {
        // Before anything changes: a refused record leaves the state as it was.
        let input = match input::decode(record) {
            Ok(input) => input,
            Err(Refused::Event(reason)) => return Err(invalid_event(reason)),
            Err(Refused::Command(reason)) => {
                return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
            }
        };
        if inert(record) {
            return Ok(());
        }
        let mut world = self.world.lock().await;
        let now = ctx.now();
        match input {
            Input::Profile {
                patient_id,
                profile,
                reason,
            } => self.profile(&mut world, patient_id, *profile, reason, now),
            Input::Erased {
                patient_id,
                keep_contact_log,
            } => erase(&mut world, &patient_id, keep_contact_log),
            Input::Therapist {
                therapist_id,
                change,
            } => self.therapist(&mut world, therapist_id, change, now),
            Input::PracticePlaced {
                therapist_id,
                position,
            } => self.practice_placed(&mut world, &therapist_id, position, now),
            Input::TravelTimes {
                request_id,
                patient_id,
                seconds,
            } => self.travel_times(&mut world, &request_id, patient_id, seconds),
            Input::EmailSent { inquiries, sent_at } => {
                self.email_sent(&mut world, &inquiries, sent_at)
            }
            Input::EmailFailed { inquiries } => self.email_failed(&mut world, &inquiries),
            Input::Answer(command) => return self.answer(&mut world, ctx, command),
            Input::Exclude {
                patient_id,
                therapist_id,
            } => return self.exclude(&mut world, ctx, patient_id, therapist_id),
            Input::Run { run_id, patient_id } => {
                return self.run(&mut world, ctx, run_id, patient_id);
            }
            Input::Sweep => return self.sweep(&mut world, ctx),
            Input::UnknownCommand(other) => {
                let reason = format!("the matcher does not handle {other}");
                return ctx.reject(EVENTS, ErrorCode::InvalidCommand, &reason);
            }
            Input::Ignored => {}
        }
        Ok(())
    }

    async fn finish_batch(&self, batch: &mut BatchContext<'_>) -> Result<(), ProcessError> {
        let (idle, after) = {
            let turn = batch.scratch::<Turn>();
            (turn.idle, turn.after.take())
        };
        if idle {
            return Ok(());
        }
        let mut world = self.world.lock().await;
        let started = std::time::Instant::now();
        let searches = world.to_match.len();
        let base = world.base;
        let now = batch.now();
        let mut outputs = Outputs::default();
        let handle = tokio::runtime::Handle::current();
        if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread {
            // The searches take two threads for a while: this one is lent.
            tokio::task::block_in_place(|| self.match_searches(&mut world, now, &mut outputs));
        } else {
            self.match_searches(&mut world, now, &mut outputs);
        }
        let matched = started.elapsed();
        // What the records and the matching changed, serialized: written
        // below, after the turn.
        let rows = world.take_rows();
        let next = world.base + 1;
        let mut by_status: BTreeMap<SearchStatus, i64> = SearchStatus::ALL
            .into_iter()
            .map(|status| (status, 0))
            .collect();
        for search in world.searches.values() {
            *by_status.entry(search.status).or_default() += 1;
        }
        for (status, n) in by_status {
            self.metrics
                .searches
                .with_label_values(&[status.as_str()])
                .set(n);
        }
        let outcome = Arc::new(Outcome::default());
        world.version = Version::Written(next, outcome.clone());
        drop(world);
        // The next batch may start now, while this one writes, encodes its
        // outputs and commits: it waits for this batch's end only to write,
        // and runs again if this batch fails.
        let turn = batch.scratch::<Turn>();
        turn.wrote = Some(outcome);
        turn.turn = None;
        if let Some(before) = after {
            // Started from a version not yet committed. Waiting for that
            // batch's end first keeps the writes in order: waiters on a row
            // lock are not woken in the order they came.
            let committed = {
                // Counted while waiting, also if the wait is given up.
                self.metrics.waiting.inc();
                let _counted = uncounted_on_drop(&self.metrics.waiting);
                before.ended().await
            };
            if !committed {
                return Err(ProcessError::Transient(format!(
                    "the batch before this one did not commit (this one started from version \
                     {base}); it runs again from the stored state"
                )));
            }
            // Still the stored version (another replica may have written)?
            let stored = lock_version(batch.db()).await?;
            if stored != base {
                // The batch before did not commit, or another replica's did:
                // the memory is not what is stored. The retry reloads.
                return Err(ProcessError::Transient(format!(
                    "the matcher's state is at version {stored}, this batch started from {base}; \
                     it runs again from the stored state"
                )));
            }
        }
        rows.write(batch.db()).await?;
        sqlx::query("UPDATE matcher.world SET version = $1")
            .bind(next)
            .execute(batch.db())
            .await?;
        for (topic, event_type, payload) in outputs.0 {
            batch.emit(topic, event_type, payload)?;
        }
        tracing::debug!(
            searches,
            match_seconds = matched.as_secs_f64(),
            seconds = started.elapsed().as_secs_f64(),
            "batch matched and written"
        );
        Ok(())
    }

    fn batch_committed(&self, scratch: &mut Scratch) {
        if let Some(outcome) = scratch.get::<Turn>().wrote.take() {
            outcome.settle(true);
        }
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        vec![
            Box::new(self.metrics.decisions.clone()),
            Box::new(self.metrics.search_seconds.clone()),
            Box::new(self.metrics.searches.clone()),
            Box::new(self.metrics.waiting.clone()),
            Box::new(self.metrics.loads.clone()),
        ]
    }
}
