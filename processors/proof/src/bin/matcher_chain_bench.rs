//! `psymatch-matcher-chain-bench`: registrations per second end to end,
//! from `patient.register` commands through intake, a geocoder stand-in
//! (positions near six cities, no upstream) and the matcher with a
//! directory of synthetic therapists, until every patient's search has
//! run and its inquiries are published. Baseline in the same run: the
//! runtime alone consuming the same commands.
//!
//! Needs the local stack (`scripts/stack up`, `. .stack/env`).
//! Usage: `psymatch-matcher-chain-bench [REGISTRATIONS] [THERAPISTS]`
//! (defaults 20,000 and 50,000).

use psymatch_intake::Intake;
use psymatch_matcher::index::synthetic;
use psymatch_matcher::{Gender, Matcher, MatcherConfig, Procedure};
use psymatch_runtime::processor::{Context, Incoming, ProcessError, Processor};
use psymatch_runtime::testing::{Noop, Running, TestBed, throughput};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

/// Answers geocoding requests at once with a synthetic position (the
/// patient's number decides where): the chain without an upstream.
struct StandIn;

impl Processor for StandIn {
    fn name(&self) -> &'static str {
        "geocoder"
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec!["geocoding-requests"]
    }

    async fn process(&self, ctx: &mut Context<'_>, record: &Incoming) -> Result<(), ProcessError> {
        let request = record.payload["request_id"].as_str().unwrap_or("");
        if record.event_type() != "geocoding.geocode_address" {
            return Ok(());
        }
        let n: u64 = request
            .trim_start_matches("patient-p-")
            .split('-')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let at = synthetic::position(n, 23);
        ctx.emit(
            "geocoding-results",
            "geocoding.address_geocoded",
            json!({"request_id": request, "position": at.to_json(),
                   "precision": "POSTCODE", "source": "OFFLINE_POSTCODE", "note": null}),
        )
    }
}

/// The stored state of synthetic therapist `n` (what the matcher keeps of
/// a directory entry).
fn therapist_state(n: u64) -> Value {
    let t = synthetic::therapist(n);
    let symbol = |g: Gender| match g {
        Gender::Female => "FEMALE",
        Gender::Male => "MALE",
        Gender::Diverse => "DIVERSE",
    };
    let procedure = |p: &Procedure| match p {
        Procedure::Behavioural => "BEHAVIOURAL",
        Procedure::Psychodynamic => "PSYCHODYNAMIC",
        Procedure::Analytic => "ANALYTIC",
        Procedure::Systemic => "SYSTEMIC",
    };
    let mut age_groups = Vec::new();
    if t.treats_adults {
        age_groups.push("ADULTS");
    }
    if t.treats_children {
        age_groups.push("CHILDREN_AND_ADOLESCENTS");
    }
    let at = t.position.expect("synthetic therapists have positions");
    json!({
        "details": {
            "salutation": "NONE", "title": null, "first_name": "Test", "last_name": format!("Praxis{n}"),
            "gender": symbol(t.gender),
            "address": {"street": "Teststraße", "house_number": "1", "postcode": "10115", "city": "Berlin"},
            "coordinates": at.to_json(),
            "email": t.has_email.then(|| format!("t-{n}@example.org")),
            "procedures": t.procedures.iter().map(procedure).collect::<Vec<_>>(),
            "age_groups": age_groups, "settings": ["INDIVIDUAL"],
        },
        "source": "bench", "geocoded": null, "removed": false,
        "blocked": if t.blocked { json!("synthetic") } else { Value::Null },
        "individual_from": null, "group_from": null, "min_age": null, "max_age": null, "genders": [],
        "prefers_group": t.prefers_group, "first_seen": "2026-01-01T00:00:00Z",
        "last_contact": null, "cooling_until": null,
    })
}

/// The registration of synthetic patient `n`.
fn registration(n: u64) -> Value {
    let p = synthetic::patient(n);
    let birth_year = 2026 - p.age as i64 - 1;
    json!({"event_type": "patient.register", "payload": {"patient_id": format!("p-{n}"), "details": {
        "salutation": "NONE", "first_name": "Synthetisch", "last_name": format!("Person{n}"),
        "address": {"street": "Probeweg", "house_number": "1", "postcode": "10115", "city": "Berlin"},
        "email": format!("person{n}@example.org"), "phone": null, "date_of_birth": format!("{birth_year}-06-01"),
        "gender": if p.gender == Gender::Female { "FEMALE" } else { "MALE" },
        "insurer": "Beispielkasse", "diagnosis_icd10": "F32.1", "consultation_hour_attended": true,
        "symptoms": ["Antriebslosigkeit"], "therapy_experience": false, "last_therapy_session": null,
        "open_to_group": p.open_to_group, "availability": [],
        "max_distance_km": p.max_distance_km.map(|km| km.round() as i64), "max_travel_minutes": null,
        "transport": "CAR", "preferred_therapist_gender": "ANY", "preferred_procedures": [],
        "languages": [], "excluded_therapists": [], "consent_given_at": "2026-11-01T09:30:00Z"
    }}})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    psymatch_runtime::telemetry::init("chain-bench");
    let registrations = args.first().copied().unwrap_or(20_000);
    let therapists = args.get(1).copied().unwrap_or(50_000);
    let bed = TestBed::new().await;
    let pool = bed.pool.clone();

    let (ids, states): (Vec<String>, Vec<String>) = (0..therapists)
        .map(|n| (format!("t-{n}"), therapist_state(n).to_string()))
        .unzip();
    sqlx::query(
        "INSERT INTO matcher.therapists (therapist_id, state)
         SELECT i, s::jsonb FROM UNNEST($1::text[], $2::text[]) AS u(i, s)",
    )
    .bind(&ids)
    .bind(&states)
    .execute(&pool)
    .await?;
    let published = Instant::now();
    for chunk in (0..registrations).collect::<Vec<_>>().chunks(5_000) {
        let records: Vec<Value> = chunk.iter().map(|n| registration(*n)).collect();
        bed.publish("patient-commands", &records).await;
    }
    eprintln!(
        "published {registrations} registrations in {:.1} s",
        published.elapsed().as_secs_f64()
    );

    let (seconds, covered) = throughput(
        &bed,
        &pool,
        Noop {
            name: "intake",
            input: "patient-commands",
        },
        "noop",
        registrations as i64,
    )
    .await?;
    let baseline = covered as f64 / seconds;
    // The no-op ran as intake: its record of processed ids would make the
    // real intake skip every command as a duplicate.
    sqlx::query("TRUNCATE intake.consumer_offsets, intake.processed_events, intake.outbox")
        .execute(&pool)
        .await?;

    // The chain: every processor at once, timed from intake's first commit
    // until the matcher has run every search and published its outbox.
    let intake = Running::start(Intake, bed.config("intake"));
    let geocoder = Running::start(StandIn, bed.config("geocoder"));
    let matcher = Running::start(
        Matcher::new(MatcherConfig::default()),
        bed.config("matcher"),
    );
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(1_800);
    // When each stage had seen every registration (seconds from the first).
    let mut stages: [Option<f64>; 3] = [None; 3];
    loop {
        // Read off the consumers' committed offsets (a few rows), not by
        // counting the stored patients and searches: a poll that reads
        // every search's state ten times a second took a good part of the
        // database's time from the chain it measures. Every result is for
        // a patient (intake folds it in), and the matcher sees two events
        // per patient (registered, then positioned). The outbox is looked
        // at only once every search has run, by its index: a scan walks
        // the dead rows of every record published so far (6 ms a poll).
        let (started, positioned, searched, pending): (bool, i64, i64, bool) = sqlx::query_as(
            "WITH o AS (
               SELECT (SELECT coalesce(sum(next_offset), 0)::bigint FROM intake.consumer_offsets
                        WHERE topic LIKE '%.geocoding-results') AS positioned,
                      (SELECT coalesce(sum(next_offset), 0)::bigint FROM matcher.consumer_offsets
                        WHERE topic LIKE '%.patient-events') AS searched)
             SELECT $1 OR EXISTS (SELECT 1 FROM intake.patients), positioned, searched,
                    CASE WHEN searched >= $2
                         THEN EXISTS (SELECT 1 FROM matcher.outbox ORDER BY id LIMIT 1)
                         ELSE true END
               FROM o",
        )
        .bind(first.is_some())
        .bind(2 * registrations as i64)
        .fetch_one(&pool)
        .await?;
        if started && first.is_none() {
            first = Some(Instant::now());
        }
        let all = registrations as i64;
        for (stage, done) in stages.iter_mut().zip([
            positioned >= all,
            searched >= 2 * all,
            searched >= 2 * all && !pending,
        ]) {
            if done && stage.is_none() {
                *stage = first.map(|f| f.elapsed().as_secs_f64());
            }
        }
        if stages[2].is_some() {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the chain did not finish: the matcher has taken {searched} of {} patient events",
            2 * registrations
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let chain_seconds = first.expect("intake committed").elapsed().as_secs_f64();
    let (inquiries, patients_asked): (i64, i64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(cardinality(patient_ids)), 0)::bigint FROM matcher.inquiries",
    )
    .fetch_one(&pool)
    .await?;
    matcher.stop().await;
    geocoder.stop().await;
    intake.stop().await;
    let chain = registrations as f64 / chain_seconds;

    println!("{registrations} registrations, {therapists} therapists in the matcher's directory\n");
    println!("| path | registrations/s | ratio to the runtime alone |");
    println!("|---|---|---|");
    println!("| runtime alone (no-op over the commands, baseline) | {baseline:.0} | 1.00 |");
    println!(
        "| intake → geocoder stand-in → intake → matcher, inquiries published | {chain:.0} | {:.2} |",
        chain / baseline
    );
    let stage = |i: usize| stages[i].unwrap_or(f64::NAN);
    println!(
        "\nstages (s after intake's first commit): every position folded in by intake {:.1}, every search run {:.1}, matcher's outbox published {:.1}",
        stage(0),
        stage(1),
        stage(2)
    );
    println!(
        "{inquiries} inquiries holding {patients_asked} patient places; goal: >= 2,000 registrations/s end to end"
    );
    Ok(())
}
