//! The matcher's state: what it knows of therapists, searches and
//! inquiries ([`crate::records`]), kept in memory for the candidate search
//! and written to PostgreSQL (`matcher.*`) at the end of every batch,
//! record by record as jsonb. The rules' views ([`Patient`],
//! [`Therapist`]) and the index are derived from the records.

use crate::index::Index;
use crate::inquiries::{Contact, Practices};
use crate::records::{InquiryRecord, SearchRecord, SearchStatus, TherapistRecord};
use crate::rules::{History, Patient};
use serde::Serialize;
use sqlx::PgConnection;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

/// Keys written or deleted since the last flush.
#[derive(Debug, Default)]
pub struct Dirty {
    /// Therapists changed.
    pub therapists: BTreeSet<String>,
    /// Searches changed or (when gone from memory) deleted.
    pub searches: BTreeSet<String>,
    /// Inquiries changed or deleted.
    pub inquiries: BTreeSet<String>,
}

/// Which stored version of the state the memory reflects.
#[derive(Debug, Default)]
pub enum Version {
    /// None known: a batch is open, or one failed after changing the
    /// memory. The next batch reloads unless it follows an open one.
    #[default]
    Unknown,
    /// This version, committed.
    Committed(i64),
    /// This version, written by a batch whose transaction may not have
    /// ended yet: the next batch may go on from it in memory and learns
    /// whether it was committed when it takes the lock on the stored state.
    Written(i64, Arc<Outcome>),
}

impl Version {
    /// The committed version the memory is known to reflect.
    pub fn committed(&self) -> Option<i64> {
        match self {
            Version::Committed(v) => Some(*v),
            Version::Written(v, outcome) if outcome.get() == Some(true) => Some(*v),
            _ => None,
        }
    }

    /// The version written by a batch whose transaction is still open,
    /// with that batch's outcome.
    pub fn in_flight(&self) -> Option<(i64, Arc<Outcome>)> {
        match self {
            Version::Written(v, outcome) if outcome.get().is_none() => Some((*v, outcome.clone())),
            _ => None,
        }
    }
}

/// Whether the transaction of a batch committed: open until it ends.
#[derive(Debug, Default)]
pub struct Outcome(AtomicU8, tokio::sync::Notify);

impl Outcome {
    const COMMITTED: u8 = 1;
    const FAILED: u8 = 2;

    /// Records the end of the transaction (the first report counts).
    pub fn settle(&self, committed: bool) {
        let value = if committed {
            Outcome::COMMITTED
        } else {
            Outcome::FAILED
        };
        let _ = self
            .0
            .compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire);
        self.1.notify_waiters();
    }

    /// Waits until the transaction ended; true if it committed.
    pub async fn ended(&self) -> bool {
        loop {
            // Registered before the check, so a settle in between wakes it.
            let woken = self.1.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Some(committed) = self.get() {
                return committed;
            }
            woken.await;
        }
    }

    /// `Some(committed)` once the transaction ended.
    pub fn get(&self) -> Option<bool> {
        match self.0.load(Ordering::Acquire) {
            Outcome::COMMITTED => Some(true),
            Outcome::FAILED => Some(false),
            _ => None,
        }
    }
}

/// Everything the matcher knows, in memory.
#[derive(Debug, Default)]
pub struct World {
    /// Which stored version the memory reflects.
    pub version: Version,
    /// The version the open batch started from.
    pub base: i64,
    /// Therapists by id.
    pub therapists: HashMap<String, TherapistRecord>,
    /// The rules' views of therapists with details, on the grid.
    pub index: Index,
    /// Contacts of therapists with details.
    pub contacts: HashMap<String, Contact>,
    /// Therapists by practice address.
    pub members: HashMap<String, BTreeSet<String>>,
    /// Searches by patient.
    pub searches: HashMap<String, SearchRecord>,
    /// The rules' views of searches.
    pub patients: HashMap<String, Patient>,
    /// Inquiries by id.
    pub inquiries: HashMap<String, InquiryRecord>,
    /// Open inquiries by practice address.
    pub open_by_email: HashMap<String, BTreeSet<String>>,
    /// Open inquiries by patient.
    pub open_by_patient: HashMap<String, BTreeSet<String>>,
    /// Pending patients and cooling periods, for rule 9.
    pub history: History,
    /// What the open batch changed.
    pub dirty: Dirty,
    /// Searches to run at the end of the batch.
    pub to_match: BTreeSet<String>,
    /// Of those, the ones whose explanation is published even without a
    /// new inquiry (a person or a change asked for it).
    pub to_explain: BTreeSet<String>,
    /// Of those, the ones a person asked about: every therapist considered.
    pub explain_fully: BTreeSet<String>,
    /// Therapists that became available or moved in the open batch.
    pub changed_therapists: BTreeSet<String>,
    /// Searches paused in the open batch, with the reason given.
    pub pending_pause: Vec<(String, Option<String>)>,
    /// The run id of each `matching.run` for one patient in the open
    /// batch, by patient: each explanation goes out under its own run.
    pub run_ids: std::collections::BTreeMap<String, String>,
    /// The run id of a `matching.run` of every active search in the open
    /// batch.
    pub run_all: Option<String>,
    /// The rules the views and the room of practices follow.
    pub rules: std::sync::Arc<crate::rulebook::Rulebook>,
}

impl World {
    /// Loads the state committed at `version`.
    pub async fn load(
        db: &mut PgConnection,
        version: i64,
        rules: std::sync::Arc<crate::rulebook::Rulebook>,
    ) -> Result<World, sqlx::Error> {
        let mut world = World {
            version: Version::Committed(version),
            base: version,
            rules,
            ..World::default()
        };
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT therapist_id, state::text FROM matcher.therapists")
                .fetch_all(&mut *db)
                .await?;
        for (id, state) in rows {
            match serde_json::from_str::<TherapistRecord>(&state) {
                Ok(record) => world.put_therapist(&id, record),
                Err(error) => {
                    tracing::error!(therapist_id = id, %error, "unreadable therapist row skipped")
                }
            }
        }
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT patient_id, state::text FROM matcher.searches")
                .fetch_all(&mut *db)
                .await?;
        for (id, state) in rows {
            match serde_json::from_str::<SearchRecord>(&state) {
                Ok(record) => world.put_search(&id, record),
                Err(error) => {
                    tracing::error!(patient_id = id, %error, "unreadable search row skipped")
                }
            }
        }
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT inquiry_id, state::text FROM matcher.inquiries")
                .fetch_all(&mut *db)
                .await?;
        for (id, state) in rows {
            match serde_json::from_str::<InquiryRecord>(&state) {
                Ok(record) => world.put_inquiry(&id, record),
                Err(error) => {
                    tracing::error!(inquiry_id = id, %error, "unreadable inquiry row skipped")
                }
            }
        }
        world.dirty = Dirty::default();
        Ok(world)
    }

    /// Stores a therapist and refreshes its views.
    pub fn put_therapist(&mut self, id: &str, record: TherapistRecord) {
        if let Some(old) = self.contacts.get(id).and_then(|c| c.email.clone())
            && let Some(members) = self.members.get_mut(&old)
        {
            members.remove(id);
        }
        match record.view(id) {
            Some(view) => self.index.upsert(view),
            None => self.index.remove(id),
        }
        match record.contact() {
            Some(contact) => {
                if let Some(email) = &contact.email {
                    self.members
                        .entry(email.clone())
                        .or_default()
                        .insert(id.to_string());
                }
                self.contacts.insert(id.to_string(), contact);
            }
            None => {
                self.contacts.remove(id);
            }
        }
        match record.cooling_until {
            Some(until) => {
                self.history.cooling_until.insert(id.to_string(), until);
            }
            None => {
                self.history.cooling_until.remove(id);
            }
        }
        self.therapists.insert(id.to_string(), record);
        self.dirty.therapists.insert(id.to_string());
    }

    /// Stores a search and refreshes its view.
    pub fn put_search(&mut self, id: &str, record: SearchRecord) {
        self.patients
            .insert(id.to_string(), record.view(id, &self.rules));
        self.searches.insert(id.to_string(), record);
        self.dirty.searches.insert(id.to_string());
    }

    /// Whether patient `id` is searching.
    pub fn is_active(&self, id: &str) -> bool {
        self.searches
            .get(id)
            .is_some_and(|s| s.status == SearchStatus::Active)
    }

    /// The patients searching.
    pub fn active_searches(&self) -> Vec<String> {
        self.searches
            .iter()
            .filter(|(_, s)| s.status == SearchStatus::Active)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Changes a stored search (its view and the dirty mark follow);
    /// false when there is none.
    pub fn update_search(&mut self, id: &str, change: impl FnOnce(&mut SearchRecord)) -> bool {
        let Some(mut search) = self.searches.get(id).cloned() else {
            return false;
        };
        change(&mut search);
        self.put_search(id, search);
        true
    }

    /// Changes a stored therapist like [`World::update_search`].
    pub fn update_therapist(&mut self, id: &str, change: impl FnOnce(&mut TherapistRecord)) {
        if let Some(mut therapist) = self.therapists.get(id).cloned() {
            change(&mut therapist);
            self.put_therapist(id, therapist);
        }
    }

    /// Forgets a search (erasure).
    pub fn drop_search(&mut self, id: &str) {
        self.patients.remove(id);
        self.searches.remove(id);
        self.to_match.remove(id);
        self.to_explain.remove(id);
        self.explain_fully.remove(id);
        self.dirty.searches.insert(id.to_string());
    }

    /// Stores an inquiry and refreshes what is pending where.
    pub fn put_inquiry(&mut self, id: &str, record: InquiryRecord) {
        let old = self.inquiries.remove(id);
        let email = record.email.clone();
        for patient in old.iter().flat_map(|o| o.patients.iter()) {
            if let Some(open) = self.open_by_patient.get_mut(patient) {
                open.remove(id);
            }
        }
        if let Some(open) = self.open_by_email.get_mut(&email) {
            open.remove(id);
        }
        if record.open() {
            for patient in &record.patients {
                self.open_by_patient
                    .entry(patient.clone())
                    .or_default()
                    .insert(id.to_string());
            }
            self.open_by_email
                .entry(email.clone())
                .or_default()
                .insert(id.to_string());
        }
        self.inquiries.insert(id.to_string(), record);
        self.refresh_pending(&email);
        self.dirty.inquiries.insert(id.to_string());
    }

    /// Deletes an inquiry (erasure of its last patient).
    pub fn drop_inquiry(&mut self, id: &str) {
        if let Some(record) = self.inquiries.remove(id) {
            for patient in &record.patients {
                if let Some(open) = self.open_by_patient.get_mut(patient) {
                    open.remove(id);
                }
            }
            if let Some(open) = self.open_by_email.get_mut(&record.email) {
                open.remove(id);
            }
            self.refresh_pending(&record.email);
        }
        self.dirty.inquiries.insert(id.to_string());
    }

    /// Rule 9 for every therapist of a practice: the patients its open
    /// inquiries hold are pending with each of them (one practice, one
    /// inquiry per patient).
    fn refresh_pending(&mut self, email: &str) {
        let held: crate::rules::FastSet<String> = self
            .open_by_email
            .get(email)
            .into_iter()
            .flatten()
            .filter_map(|id| self.inquiries.get(id))
            .flat_map(|i| i.patients.iter().cloned())
            .collect();
        let mut members = self.members_of(email);
        for inquiry in self.open_by_email.get(email).into_iter().flatten() {
            if let Some(i) = self.inquiries.get(inquiry) {
                members.push(i.therapist_id.clone());
            }
        }
        for member in members {
            if held.is_empty() {
                self.history.pending.remove(&member);
            } else {
                self.history.pending.insert(member, held.clone());
            }
        }
    }

    /// The therapists writing from `email` (one practice).
    pub fn members_of(&self, email: &str) -> Vec<String> {
        self.members
            .get(email)
            .map(|m| m.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Patients the practice at `email` still waits to answer about.
    pub fn pending_at(&self, email: &str) -> usize {
        self.open_by_email
            .get(email)
            .into_iter()
            .flatten()
            .filter_map(|id| self.inquiries.get(id))
            .map(|i| i.patients.len())
            .sum()
    }

    /// The rows of what changed since the last call, serialized now: they
    /// can be written ([`Rows::write`]) while the state changes further,
    /// and what changes again is written by the next call.
    pub fn take_rows(&mut self) -> Rows {
        let dirty = std::mem::take(&mut self.dirty);
        let table = |ids: &BTreeSet<String>, state: &dyn Fn(&String) -> Option<String>| {
            let mut table = Table::default();
            for id in ids {
                match state(id) {
                    Some(state) => {
                        table.ids.push(id.clone());
                        table.states.push(state);
                    }
                    None => table.gone.push(id.clone()),
                }
            }
            table
        };
        let mut rows = Rows {
            therapists: table(&dirty.therapists, &|id| self.therapists.get(id).map(json)),
            searches: table(&dirty.searches, &|id| self.searches.get(id).map(json)),
            inquiries: table(&dirty.inquiries, &|id| self.inquiries.get(id).map(json)),
            patients: Vec::new(),
            therapist_ids: Vec::new(),
        };
        for id in &rows.inquiries.ids {
            let record = &self.inquiries[id];
            // Postgres arrays of arrays must be rectangular: the ids
            // travel as one text each, split in SQL.
            rows.patients.push(record.patients.join("\u{1f}"));
            rows.therapist_ids.push(record.therapist_id.clone());
        }
        rows
    }
}

/// Changed records of one table: ids with their state, and ids deleted.
#[derive(Default)]
struct Table {
    ids: Vec<String>,
    states: Vec<String>,
    gone: Vec<String>,
}

/// Serialized records to write (see [`World::take_rows`]).
pub struct Rows {
    therapists: Table,
    searches: Table,
    inquiries: Table,
    /// Per changed inquiry: its patients (joined) and its therapist.
    patients: Vec<String>,
    therapist_ids: Vec<String>,
}

impl Rows {
    /// Writes the rows: whole records, one statement per table and kind.
    pub async fn write(self, db: &mut PgConnection) -> Result<(), sqlx::Error> {
        upsert(db, "therapists", "therapist_id", &self.therapists).await?;
        upsert(db, "searches", "patient_id", &self.searches).await?;
        let inquiries = &self.inquiries;
        if !inquiries.ids.is_empty() {
            sqlx::query(
                "INSERT INTO matcher.inquiries (inquiry_id, therapist_id, patient_ids, state)
                 SELECT i, t, string_to_array(p, E'\\x1f'), s::jsonb
                   FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS u(i, t, p, s)
                 ON CONFLICT (inquiry_id) DO UPDATE
                    SET patient_ids = EXCLUDED.patient_ids, state = EXCLUDED.state, updated_at = now()",
            )
            .bind(&inquiries.ids)
            .bind(&self.therapist_ids)
            .bind(&self.patients)
            .bind(&inquiries.states)
            .execute(&mut *db)
            .await?;
        }
        if !inquiries.gone.is_empty() {
            sqlx::query("DELETE FROM matcher.inquiries WHERE inquiry_id = ANY($1)")
                .bind(&inquiries.gone)
                .execute(&mut *db)
                .await?;
        }
        Ok(())
    }
}

fn json<T: Serialize>(record: &T) -> String {
    serde_json::to_string(record).expect("records serialize")
}

/// Upserts the present records and deletes the absent ones of a table
/// keyed by `key` with a `state` column.
async fn upsert(
    db: &mut PgConnection,
    table: &str,
    key: &str,
    rows: &Table,
) -> Result<(), sqlx::Error> {
    if !rows.ids.is_empty() {
        sqlx::query(&format!(
            "INSERT INTO matcher.{table} ({key}, state)
             SELECT k, s::jsonb FROM UNNEST($1::text[], $2::text[]) AS u(k, s)
             ON CONFLICT ({key}) DO UPDATE SET state = EXCLUDED.state, updated_at = now()"
        ))
        .bind(&rows.ids)
        .bind(&rows.states)
        .execute(&mut *db)
        .await?;
    }
    if !rows.gone.is_empty() {
        sqlx::query(&format!(
            "DELETE FROM matcher.{table} WHERE {key} = ANY($1)"
        ))
        .bind(&rows.gone)
        .execute(&mut *db)
        .await?;
    }
    Ok(())
}

impl Practices for World {
    fn contact(&self, therapist: &str) -> Option<&Contact> {
        self.contacts.get(therapist)
    }

    fn members(&self, email: &str) -> Vec<(&str, &Contact)> {
        self.members
            .get(email)
            .into_iter()
            .flatten()
            .filter_map(|id| self.contacts.get(id).map(|c| (id.as_str(), c)))
            .collect()
    }

    fn room(&self, email: &str) -> usize {
        self.rules
            .max_patients_per_inquiry
            .saturating_sub(self.pending_at(email))
    }
}
