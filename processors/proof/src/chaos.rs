//! The chaos run: synthetic therapists and patients flow through intake,
//! geocoder, matcher and email batcher, a scrape of the stand-in doctor
//! search through the scraper, and the scheduler's flushes and re-matches,
//! on a broker and a PostgreSQL of the run's own, while a driver kills
//! processor processes with SIGKILL at random moments (every kind in
//! turn), restarts the broker once and PostgreSQL once, and runs a second
//! replica of every processor part of the time. Then it checks the
//! invariants, on the tables and on every record of every topic, and
//! prints them as a table.
//!
//! Secured (`--secured`), the same on the three-node SASL_SSL cluster of
//! `scripts/kafka-cluster` (three replicas, two to acknowledge) and a
//! PostgreSQL of its own over TLS (verify-full), every processor its own
//! principal held to topics.yaml's ACLs; the broker's faults are then a
//! SIGKILL of the active controller, a SIGKILL of the leader of the
//! busiest partition and a graceful restart of a broker, each under load,
//! and after each a command's answer is timed: how long the loss stopped
//! the chain.

use crate::people;
use crate::processes::{self, Process, Settings};
use psymatch_runtime::testing::cluster::Cluster;
use psymatch_runtime::testing::tls::Ca;
use psymatch_runtime::testing::{OwnBroker, OwnPostgres, TestBed, cluster, of_type, scratch_dir};
use rand::Rng;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// Berlin postcodes the synthetic people live and work in (the offline
/// geocoder places them at their centres).
const POSTCODES: [&str; 8] = [
    "10115", "10117", "10119", "10178", "10243", "10435", "10551", "10961",
];

fn therapist(n: usize) -> Value {
    let house = format!("{}", n % 90 + 1);
    people::practice(
        &format!("chaos-t-{n}"),
        &house,
        POSTCODES[n % POSTCODES.len()],
    )
}

fn patient(n: usize) -> Value {
    let id = format!("chaos-p-{n}");
    let registration = people::registration(&id, POSTCODES[n % POSTCODES.len()]);
    people::with_details(registration, json!({"max_distance_km": 30}))
}

/// The scheduler's jobs in the run: a flush every 2 seconds (so that
/// inquiries are sent while the faults strike) and a re-match of every
/// search every 20 seconds.
const SCHEDULE: &str = r#"timezone: Europe/Berlin
jobs:
  - name: chaos-flush
    cron: "*/2 * * * * *"
    topic: email-commands
    event_type: email.flush_batches
    payload: {run_id: "{run_id}"}
    max_attempts: 8
    missed: run_once
  - name: chaos-rematch
    cron: "*/20 * * * * *"
    topic: matching-commands
    event_type: matching.run
    payload: {run_id: "{run_id}", patient_id: null}
    max_attempts: 8
    missed: skip
"#;

/// Every processor of the run: the chain, the scraper (asking the stand-in
/// doctor search) and the scheduler.
pub(crate) fn processors(
    mail: &Path,
    scraper: &(&'static str, &'static str, Settings),
    logs: &Path,
) -> anyhow::Result<Vec<(&'static str, &'static str, Settings)>> {
    let schedule = logs.join("schedule.yaml");
    std::fs::write(&schedule, SCHEDULE)?;
    let mut settings = processes::chain(mail);
    settings.push(scraper.clone());
    settings.push(processes::scheduler(&schedule));
    Ok(settings)
}

/// The scrape of the run: every practice of the stand-in search.
fn scrape() -> Value {
    json!({"event_type": "scraping.scrape_area", "payload": {"run_id": "chaos-scrape",
        "area": {"postcode": "10115", "radius_km": 5},
        "filters": {"procedures": [], "age_groups": [], "settings": []}}})
}

/// Records per wave of input: the patients come as registrations do in
/// life, a few hundred at a time, each wave once the chain has settled the
/// one before, in the chaos run and the fault-free one alike.
const WAVE: usize = 500;

/// Publishes `records` in waves, each once the chain has settled the one
/// before.
pub(crate) async fn publish_waves(
    bed: &TestBed,
    records: Vec<(&'static str, Value)>,
) -> anyhow::Result<()> {
    for wave in records.chunks(WAVE) {
        bed.publish_all(wave).await;
        settle(bed).await?;
    }
    Ok(())
}

/// The run's therapists: published and placed before any patient comes,
/// so that every search sees the same directory of practices of its own
/// (the scraped ones come while the searches run), in the chaos run and in
/// the fault-free one.
pub(crate) fn therapist_commands(therapists: usize) -> Vec<(&'static str, Value)> {
    (0..therapists)
        .map(|n| ("therapist-commands", therapist(n)))
        .collect()
}

/// The run's patients, with the scrape in the middle.
pub(crate) fn patient_commands(patients: usize) -> Vec<(&'static str, Value)> {
    let mut records: Vec<(&'static str, Value)> = (0..patients)
        .map(|n| ("patient-commands", patient(n)))
        .collect();
    records.insert(records.len() / 2, ("scraping-commands", scrape()));
    records
}

/// Two places per patient: with at least as many therapists as half the
/// patients there is room for all (6 per practice), so the places asked do
/// not depend on the order the searches ran in.
pub(crate) fn matcher_settings() -> [(&'static str, String); 1] {
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/rules-two-practices.yaml"
    );
    [("MATCHER_RULES", rules.to_string())]
}

/// Asks the email batcher to send and waits until it has.
pub(crate) async fn flush(bed: &TestBed, run: &str) -> anyhow::Result<()> {
    bed.publish(
        "email-commands",
        &[json!({"event_type": "email.flush_batches", "payload": {"run_id": run}})],
    )
    .await;
    settle(bed).await
}

/// Waits until the chain has done everything (10 minutes at most).
pub(crate) async fn settle(bed: &TestBed) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        // A broker or database still recovering is not settled either.
        let behind = match processes::backlog(bed).await {
            Ok(None) => return Ok(()),
            Ok(Some(behind)) => behind,
            Err(error) => format!("{error:#}"),
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "the chain did not settle in 10 minutes: {behind}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until no scheduled run from before now is still running (a run
/// whose scheduler was killed is taken over when its lease ends), at most
/// two minutes; returns how many of the runs from before now did not
/// succeed, and how many there were.
pub(crate) async fn scheduled(bed: &TestBed) -> (i64, i64) {
    let until = chrono::Utc::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (running, failed, all) = sqlx::query_as::<_, (i64, i64, i64)>(
            "SELECT count(*) FILTER (WHERE status = 'RUNNING'),
                    count(*) FILTER (WHERE status <> 'SUCCEEDED'), count(*)
               FROM scheduler.runs WHERE occurrence < $1",
        )
        .bind(until)
        .fetch_one(&bed.pool)
        .await
        .unwrap_or((-1, -1, 0));
        if running == 0 || Instant::now() > deadline {
            return (failed, all);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The final state in figures that do not depend on how the work was cut
/// into batches or in which order the searches ran: patients, therapists,
/// searches, places asked, practices scraped, therapists the matcher knows.
/// (Which practices are asked, and so how many emails go out, depends on
/// that order when patients share a position.)
pub(crate) async fn outcome_figures(bed: &TestBed) -> [i64; 6] {
    let mut figures = [0; 6];
    for (figure, sql) in figures.iter_mut().zip([
        "SELECT count(*) FROM intake.patients",
        "SELECT count(*) FROM intake.therapists",
        "SELECT count(*) FROM matcher.searches",
        "SELECT coalesce(sum(cardinality(patient_ids)), 0)::bigint FROM matcher.inquiries",
        "SELECT count(*) FROM scraper.therapists",
        "SELECT count(*) FROM matcher.therapists",
    ]) {
        *figure = scalar(bed, sql).await;
    }
    figures
}

/// A figure from the run's database (-1 if it cannot be read, which no
/// invariant accepts).
pub(crate) async fn scalar(bed: &TestBed, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(&bed.pool)
        .await
        .unwrap_or(-1)
}

/// The run's Kafka and the faults it takes.
enum Kafka {
    /// A broker of the run's own, plaintext: restarted once.
    Own(OwnBroker),
    /// The secured three-node cluster: nodes killed and restarted.
    Cluster(&'static Cluster),
}

/// One fault of the cluster and how long a command published right after
/// it took to be answered.
struct Stall {
    fault: String,
    seconds: f64,
}

/// Publishes `matching.run` for a patient nobody registered and waits for
/// the matcher's refusal on matching-events: a command through a consumer,
/// the outbox and a producer with `acks=all`. Seconds it took.
async fn probe(bed: &TestBed, n: usize) -> anyhow::Result<f64> {
    let id = format!("probe-{n}");
    let began = Instant::now();
    bed.publish(
        "matching-commands",
        &[json!({"event_type": "matching.run", "payload": {"run_id": id, "patient_id": id}})],
    )
    .await;
    let records = bed
        .read_until("matching-events", Duration::from_secs(300), |records| {
            of_type(records, "command.rejected")
                .iter()
                .any(|r| r.payload()["subject_id"] == id.as_str())
        })
        .await;
    anyhow::ensure!(
        of_type(&records, "command.rejected")
            .iter()
            .any(|r| r.payload()["subject_id"] == id.as_str()),
        "the probe {id} was not answered within 5 minutes"
    );
    Ok(began.elapsed().as_secs_f64())
}

/// The node leading the partition with the most records of the bed's
/// topics, with that partition's name.
fn busiest_leader(bed: &TestBed) -> anyhow::Result<(i32, String)> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = psymatch_runtime::broker::client(&bed.brokers).create()?;
    let timeout = Duration::from_secs(10);
    let mut busiest: Option<(i64, i32, String)> = None;
    for topic in [
        "patient-commands",
        "patient-events",
        "matching-events",
        "email-commands",
    ] {
        let physical = format!("{}{topic}", bed.prefix);
        let metadata = consumer.fetch_metadata(Some(&physical), timeout)?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer.fetch_watermarks(&physical, partition.id(), timeout)?;
            if busiest
                .as_ref()
                .is_none_or(|(most, _, _)| high - low > *most)
            {
                busiest = Some((
                    high - low,
                    partition.leader(),
                    format!("{topic}/{}", partition.id()),
                ));
            }
        }
    }
    busiest
        .map(|(_, leader, partition)| (leader, partition))
        .ok_or_else(|| anyhow::anyhow!("no partition found"))
}

/// Waits until every partition of the bed's topics has all three replicas
/// in sync again (a restarted node has caught up), at most three minutes.
async fn all_in_sync(bed: &TestBed) -> anyhow::Result<()> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = psymatch_runtime::broker::client(&bed.brokers).create()?;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let metadata = consumer.fetch_metadata(None, Duration::from_secs(10));
        let short = metadata.map_or(1, |m| {
            m.topics()
                .iter()
                .filter(|t| t.name().starts_with(&bed.prefix))
                .flat_map(|t| t.partitions())
                .filter(|p| p.isr().len() < 3)
                .count()
        });
        if short == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{short} partitions still short of three in-sync replicas after 3 minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

impl Kafka {
    /// The broker fault due at the `k`-th of `kills` processor kills, if
    /// any: the own broker restarts at a third; the cluster loses its
    /// active controller at a sixth, the busiest partition's leader at a
    /// third, and restarts a broker gracefully at a half. A cluster fault
    /// is timed with a probe and healed before the run goes on.
    async fn fault(
        &mut self,
        bed: &TestBed,
        k: usize,
        kills: usize,
    ) -> anyhow::Result<Option<Stall>> {
        let cluster = match self {
            Kafka::Own(broker) => {
                if k == kills / 3 {
                    broker.restart();
                    return Ok(Some(Stall {
                        fault: "broker restarted".into(),
                        seconds: f64::NAN,
                    }));
                }
                return Ok(None);
            }
            Kafka::Cluster(cluster) => *cluster,
        };
        let script = |args: &[&str]| cluster.script(args);
        let (node, fault, graceful) = if k == kills / 6 {
            let node = cluster
                .controller()
                .ok_or_else(|| anyhow::anyhow!("the active controller could not be found"))?;
            (
                node,
                format!("SIGKILL of the active controller (node {node})"),
                false,
            )
        } else if k == kills / 3 {
            let (node, partition) = busiest_leader(bed)?;
            (
                node,
                format!("SIGKILL of node {node}, leader of the busiest partition {partition}"),
                false,
            )
        } else if k == kills / 2 {
            let (node, _) = busiest_leader(bed)?;
            (node, format!("graceful restart of node {node}"), true)
        } else {
            return Ok(None);
        };
        let node_arg = node.to_string();
        script(&[if graceful { "stop" } else { "kill" }, &node_arg]);
        let seconds = probe(bed, k).await?;
        script(&["start", &node_arg]);
        all_in_sync(bed).await?;
        Ok(Some(Stall { fault, seconds }))
    }
}

/// Runs the chaos run; prints its table; returns whether it held.
pub async fn run(
    patients: usize,
    therapists: usize,
    kills: usize,
    logs: &Path,
    secured: bool,
) -> anyhow::Result<bool> {
    std::fs::create_dir_all(logs)?;
    // Secured: PostgreSQL over TLS with a CA of the run's own, every
    // connection verify-full.
    let ca = secured.then(|| Ca::new("psymatch chaos CA"));
    let postgres = match &ca {
        Some(ca) => OwnPostgres::start_tls(ca),
        None => OwnPostgres::start(),
    };
    let (mut kafka, bed) = match &ca {
        Some(ca) => {
            let url = format!(
                "{}?sslmode=verify-full&sslrootcert={}",
                postgres.url(),
                ca.cert.display()
            );
            (
                Kafka::Cluster(cluster::up()),
                TestBed::secured_on(&url).await,
            )
        }
        None => {
            let broker = OwnBroker::start();
            let bed = TestBed::with(&broker.address(), &postgres.url()).await;
            (Kafka::Own(broker), bed)
        }
    };
    let mail = scratch_dir("psymatch-chaos-mail");
    let (_kbv, scraper) = processes::fake_kbv(logs)?;
    let settings = processors(&mail, &scraper, logs)?;
    let mut running: Vec<Process> =
        processes::start_all(&bed, settings.clone(), &matcher_settings(), logs).await?;
    let mut replicas: Vec<Process> = Vec::new();
    let started = Instant::now();

    // The therapists, then the patients while the faults strike.
    publish_waves(&bed, therapist_commands(therapists)).await?;
    // A command's answer time before any fault, to read the stalls against.
    let calm_probe = if secured {
        probe(&bed, usize::MAX).await?
    } else {
        f64::NAN
    };
    let mut stalls: Vec<Stall> = Vec::new();
    let publishing = publish_waves(&bed, patient_commands(patients));
    let (mut broker_restarts, mut postgres_restarts, mut killed) = (0, 0, 0);
    let mut kinds_hit = std::collections::BTreeSet::new();
    // The faults spread over about as long as the patients take to come.
    let spacing = (patients / 1_000).max(1) as u64;
    let faults = async {
        let mut rng = rand::rng();
        for k in 0..kills {
            // A random moment: the faults are the schedule, not a wait for state.
            tokio::time::sleep(Duration::from_millis(rng.random_range(200..900) * spacing)).await;
            let victim = k % running.len();
            let (name, binary, extra) = settings[victim].clone();
            running[victim].kill();
            killed += 1;
            kinds_hit.insert(name);
            let mut extra = extra;
            extra.extend(matcher_settings());
            running[victim] = processes::start(&bed, name, binary, &extra, logs).await?;
            if k == kills / 4 {
                // Second replicas of every processor, for half the run.
                replicas =
                    processes::start_all(&bed, settings.clone(), &matcher_settings(), logs).await?;
            }
            if k == 3 * kills / 4 {
                for replica in &mut replicas {
                    replica.kill();
                    killed += 1;
                }
                replicas.clear();
            }
            if let Some(stall) = kafka.fault(&bed, k, kills).await? {
                broker_restarts += 1;
                stalls.push(stall);
            }
            if k == 2 * kills / 3 {
                postgres.pg_ctl("restart");
                postgres_restarts += 1;
            }
        }
        anyhow::Ok(())
    };
    let (published, faulted) = tokio::join!(publishing, faults);
    published?;
    faulted?;
    settle(&bed).await?;
    flush(&bed, "chaos-flush-last").await?;
    let (mut counted, repeats) =
        crate::invariants::Run::settled(&bed, patients, therapists).await?;
    let chaos_seconds = started.elapsed().as_secs_f64();

    // The same input without faults, in an environment of its own on the
    // local stack: the final matching state must be the same.
    let calm = TestBed::new().await;
    let calm_mail = scratch_dir("psymatch-chaos-calm-mail");
    let calm_logs = logs.join("fault-free");
    std::fs::create_dir_all(&calm_logs)?;
    let calm_running = processes::start_all(
        &calm,
        processors(&calm_mail, &scraper, &calm_logs)?,
        &matcher_settings(),
        &calm_logs,
    )
    .await?;
    publish_waves(&calm, therapist_commands(therapists)).await?;
    publish_waves(&calm, patient_commands(patients)).await?;
    flush(&calm, "calm-flush").await?;
    counted.fault_free = outcome_figures(&calm).await;
    drop(calm_running);

    let count = |sql: &'static str| scalar(&bed, sql);
    let inquiries = count("SELECT count(*) FROM matcher.inquiries").await;
    let emails = count("SELECT count(*) FROM email_batcher.emails WHERE status = 'SENT'").await;
    let mut exited = 0;
    for process in &mut running {
        exited += process.exited().is_some() as usize;
    }
    counted.processes = (running.len(), exited);
    let rows = crate::invariants::rows(&bed, &counted).await;
    println!(
        "{patients} patients, {therapists} therapists; {killed} SIGKILLs ({} kinds), {broker_restarts} broker fault(s), {postgres_restarts} PostgreSQL restart, second replicas for half the run; {:.0} s",
        kinds_hit.len(),
        chaos_seconds
    );
    println!(
        "{inquiries} inquiries, {emails} emails sent; {} records on the topics, {} of them published again under their own event id (dropped by consumers)\n",
        repeats.records, repeats.same_id
    );
    for example in &repeats.examples {
        println!("applied twice: {example}");
    }
    if secured {
        println!(
            "broker faults, each under load; a command published right after it answered in (before any fault: {calm_probe:.1} s):"
        );
        for stall in &stalls {
            println!("  {:<72} {:>6.1} s", stall.fault, stall.seconds);
        }
        println!();
    }
    let held = crate::invariants::print(rows);
    println!("\nchaos run {}", if held { "HELD" } else { "FAILED" });
    Ok(held)
}
