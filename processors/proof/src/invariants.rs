//! The invariants of a run under faults (the chaos run, the elastic run):
//! nothing lost, no effect twice, the contact limits, every run finished,
//! the final state as without faults. Counted on the run's tables; printed
//! as a table.

use crate::chaos::scalar;
use psymatch_runtime::testing::TestBed;

/// One invariant: what, found, expected, holds.
pub type Row = (&'static str, String, String, bool);

/// What the run counted besides the tables.
pub struct Run {
    /// Patients published.
    pub patients: usize,
    /// Therapists published.
    pub therapists: usize,
    /// The final figures (`chaos::outcome_figures`) of the run.
    pub faulty: [i64; 6],
    /// Without faults.
    pub fault_free: [i64; 6],
    /// Scheduled runs from before the end not succeeded, and all of them.
    pub scheduled: (i64, i64),
    /// Effects published again under a new event id.
    pub applied_twice: usize,
    /// Processes that should be running at the end, and those that exited.
    pub processes: (usize, usize),
}

impl Run {
    /// What the tables of `bed` say once the run settled (the scheduled
    /// runs, the final figures, the effects published twice), and the
    /// repeats found; the caller adds the fault-free figures and the
    /// processes.
    pub async fn settled(
        bed: &TestBed,
        patients: usize,
        therapists: usize,
    ) -> anyhow::Result<(Run, crate::repeats::Repeats)> {
        let scheduled = crate::chaos::scheduled(bed).await;
        let faulty = crate::chaos::outcome_figures(bed).await;
        let repeats = crate::repeats::count(bed).await?;
        let run = Run {
            patients,
            therapists,
            faulty,
            fault_free: [0; 6],
            scheduled,
            applied_twice: repeats.applied_twice(),
            processes: (0, 0),
        };
        Ok((run, repeats))
    }
}

/// The invariants of `run` on the tables of `bed`.
pub async fn rows(bed: &TestBed, run: &Run) -> Vec<Row> {
    let (patients, therapists) = (run.patients, run.therapists);
    let (faulty, fault_free) = (run.faulty, run.fault_free);
    let (unfinished_runs, scheduled_runs) = run.scheduled;
    let (running, exited) = run.processes;
    let count = |sql: &'static str| scalar(bed, sql);
    let [stored_patients, stored_therapists, searches, ..] = faulty;
    let twice_asked = count(
        "SELECT count(*) FROM (SELECT therapist_id, p FROM matcher.inquiries, unnest(patient_ids) p
          GROUP BY 1, 2 HAVING count(*) > 1) x",
    )
    .await;
    let over_quota = count(
        "SELECT count(*) FROM (SELECT p FROM matcher.inquiries, unnest(patient_ids) p
          GROUP BY p HAVING count(*) > 2) x",
    )
    .await;
    let over_six = count(
        "SELECT count(*) FROM (SELECT therapist_id FROM matcher.inquiries, unnest(patient_ids) p
          GROUP BY 1 HAVING count(*) > 6) x",
    )
    .await;
    let impossible = count(
        "SELECT count(*) FROM matcher.searches
          WHERE state->>'status' NOT IN ('ACTIVE', 'PAUSED', 'PLACED', 'CANCELLED')",
    )
    .await;
    let most_emails = count(
        "SELECT coalesce(max(n), 0) FROM (SELECT recipient, count(*) n FROM email_batcher.emails
          WHERE kind = 'inquiry' GROUP BY recipient) x",
    )
    .await;
    let scrapes_unfinished =
        count("SELECT count(*) FROM scraper.runs WHERE status <> 'COMPLETED'").await;

    let rows: Vec<(&str, String, String, bool)> = vec![
        (
            "therapists stored (inputs lost: 0)",
            stored_therapists.to_string(),
            therapists.to_string(),
            stored_therapists == therapists as i64,
        ),
        (
            "patients stored (inputs lost: 0)",
            stored_patients.to_string(),
            patients.to_string(),
            stored_patients == patients as i64,
        ),
        (
            "searches in the matcher",
            searches.to_string(),
            patients.to_string(),
            searches == patients as i64,
        ),
        (
            "a patient twice with one therapist (applied twice)",
            twice_asked.to_string(),
            "0".into(),
            twice_asked == 0,
        ),
        (
            "patients with more than 2 places asked (the rules of examples/rules-two-practices.yaml)",
            over_quota.to_string(),
            "0".into(),
            over_quota == 0,
        ),
        (
            "therapists with more than 6 patients asked",
            over_six.to_string(),
            "0".into(),
            over_six == 0,
        ),
        (
            "an effect published again under a new event id (applied twice)",
            run.applied_twice.to_string(),
            "0".into(),
            run.applied_twice == 0,
        ),
        (
            "scheduled runs not succeeded (scheduler killed while running)",
            format!("{unfinished_runs} of {scheduled_runs}"),
            "0".into(),
            unfinished_runs == 0 && scheduled_runs > 0,
        ),
        (
            "scrape runs not completed (scraper killed midway)",
            scrapes_unfinished.to_string(),
            "0".into(),
            scrapes_unfinished == 0,
        ),
        (
            "searches in an impossible state",
            impossible.to_string(),
            "0".into(),
            impossible == 0,
        ),
        (
            "most inquiry emails to one practice in the 7-day window",
            most_emails.to_string(),
            "<= 1".into(),
            (0..=1).contains(&most_emails),
        ),
        (
            "final state (patients, therapists, searches, places asked, practices scraped, therapists known to the matcher) as without faults",
            format!("{faulty:?}"),
            format!("{fault_free:?}"),
            faulty == fault_free,
        ),
        (
            "processes running at the end",
            (running - exited).to_string(),
            running.to_string(),
            exited == 0,
        ),
    ];
    rows
}

/// Prints the rows as a table; whether every invariant holds.
pub fn print(rows: Vec<Row>) -> bool {
    println!("| invariant | found | expected | holds |");
    println!("|---|---|---|---|");
    let mut held = true;
    for (what, found, expected, holds) in rows {
        held &= holds;
        println!(
            "| {what} | {found} | {expected} | {} |",
            if holds { "yes" } else { "NO" }
        );
    }
    held
}
