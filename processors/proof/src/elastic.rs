//! The elastic run: the whole chain at load (synthetic therapists and
//! patients through intake, geocoder, matcher and email batcher, a scrape,
//! the scheduler's flushes and re-matches) while a driver scales each
//! processor between 1 and 3 replicas every few seconds, as an autoscaler
//! would: up by starting a replica, down by SIGTERM (the graceful way) or
//! SIGKILL (a node lost), in the partition-assignment mode asked
//! (PostgreSQL leases or Kafka consumer groups). Then the chaos run's
//! invariants, and the records per second against the same input with one
//! replica each and no scaling, in the same mode.

use crate::chaos::{
    flush, matcher_settings, outcome_figures, patient_commands, processors, publish_waves, settle,
    therapist_commands,
};
use crate::processes::{self, Process};
use psymatch_runtime::testing::{TestBed, scratch_dir};
use rand::Rng;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Most replicas of a processor.
const MOST: usize = 3;
/// A graceful stop is over within this (the runtime's drain: 10 s).
const GRACE: Duration = Duration::from_secs(20);

/// What the driver did.
#[derive(Debug, Default)]
struct Scalings {
    up: usize,
    terminated: usize,
    /// Graceful stops that did not exit 0: the processor and how it ended.
    unclean: Vec<String>,
    killed: usize,
}

/// One run of the chain in `bed`; with `scale`, the driver scales while
/// the patients come (and a few steps beyond, so that even a short run
/// sees every kind scaled and both ways down). Returns the seconds from
/// the first patient to the chain settled after the last, what the driver
/// did, and the processes.
async fn pass(
    bed: &TestBed,
    mode: &str,
    patients: usize,
    therapists: usize,
    scale: bool,
    logs: &Path,
) -> anyhow::Result<(f64, Scalings, Vec<Vec<Process>>)> {
    std::fs::create_dir_all(logs)?;
    let mail = scratch_dir("psymatch-elastic-mail");
    let (kbv, scraper) = processes::fake_kbv(logs)?;
    let settings = processors(&mail, &scraper, logs)?;
    let mut extra = matcher_settings().to_vec();
    extra.push(("PARTITION_ASSIGNMENT", mode.to_string()));
    let mut fleet: Vec<Vec<Process>> = Vec::new();
    for (name, binary, own) in &settings {
        let mut with = own.clone();
        with.extend(extra.iter().cloned());
        fleet.push(vec![
            processes::start(bed, name, binary, &with, logs).await?,
        ]);
    }
    publish_waves(bed, therapist_commands(therapists)).await?;
    let started = Instant::now();
    let mut done = Scalings::default();
    // Set once the patients are published: the driver then stops after
    // its current step.
    let published_all = AtomicBool::new(false);
    let publishing = publish_waves(bed, patient_commands(patients));
    let driver = async {
        if !scale {
            return anyhow::Ok(());
        }
        let mut rng = rand::rng();
        // Every few seconds, until the patients are in: a kind in turn, up
        // at one replica, down at three, either way between.
        for step in 0.. {
            tokio::time::sleep(Duration::from_millis(rng.random_range(1_000..3_000))).await;
            if started.elapsed() > Duration::from_secs(600) {
                break;
            }
            let kind = step % fleet.len();
            let (name, binary, own) = &settings[kind];
            let replicas = &mut fleet[kind];
            let up = replicas.len() == 1 || (replicas.len() < MOST && rng.random_bool(0.5));
            if up {
                let mut with = own.clone();
                with.extend(extra.iter().cloned());
                replicas.push(processes::start(bed, name, binary, &with, logs).await?);
                done.up += 1;
            } else {
                let mut gone = replicas.remove(rng.random_range(0..replicas.len()));
                if rng.random_bool(0.5) {
                    done.terminated += 1;
                    let exited = gone.terminate(GRACE).await;
                    if !exited.is_some_and(|s| s.success()) {
                        let how = exited.map_or("still running".to_string(), |s| s.to_string());
                        done.unclean.push(format!("{}: {how}", gone.name));
                    }
                } else {
                    gone.kill();
                    done.killed += 1;
                }
            }
            if step >= 2 * fleet.len()
                && done.terminated > 0
                && done.killed > 0
                && published_all.load(Ordering::SeqCst)
            {
                break;
            }
        }
        Ok(())
    };
    let (published, driven) = tokio::join!(
        async {
            // Each wave is published once the one before has settled: the
            // last one settled, the patients are through.
            let result = publishing.await;
            published_all.store(true, Ordering::SeqCst);
            result.map(|()| started.elapsed().as_secs_f64())
        },
        driver
    );
    let seconds = published?;
    driven?;
    settle(bed).await?;
    flush(bed, "elastic-flush-last").await?;
    drop(kbv);
    Ok((seconds, done, fleet))
}

/// Runs the elastic run in `mode` (`lease` or `group`); prints its table;
/// returns whether it held.
pub async fn run(
    mode: &str,
    patients: usize,
    therapists: usize,
    logs: &Path,
) -> anyhow::Result<bool> {
    anyhow::ensure!(
        matches!(mode, "lease" | "group"),
        "mode {mode}: lease or group"
    );
    let bed = TestBed::new().await;
    let (elastic_seconds, scalings, mut fleet) = pass(
        &bed,
        mode,
        patients,
        therapists,
        true,
        &logs.join("elastic"),
    )
    .await?;
    let (mut counted, repeats) =
        crate::invariants::Run::settled(&bed, patients, therapists).await?;
    let (mut running, mut exited) = (0, 0);
    for process in fleet.iter_mut().flatten() {
        running += 1;
        exited += process.exited().is_some() as usize;
    }
    drop(fleet);

    // The same input with one replica each and no scaling.
    let calm = TestBed::new().await;
    let (calm_seconds, _, calm_fleet) =
        pass(&calm, mode, patients, therapists, false, &logs.join("calm")).await?;
    counted.fault_free = outcome_figures(&calm).await;
    // What each processor needs at this load: one replica each, the whole
    // input (the manifests' requests and limits come from these).
    println!("{mode} mode, one replica each, the whole run: what each processor used\n");
    println!("| processor | peak RSS MiB | CPU s | CPU s per second of the patients' phase |");
    println!("|---|---|---|---|");
    for process in calm_fleet.iter().flatten() {
        if let Some((rss, cpu)) = process.usage() {
            println!(
                "| {} | {rss:.0} | {cpu:.1} | {:.2} |",
                process.name,
                cpu / calm_seconds.max(1e-3)
            );
        }
    }
    println!();
    drop(calm_fleet);

    counted.processes = (running, exited);
    let mut rows = crate::invariants::rows(&bed, &counted).await;
    rows.push((
        "graceful scale-downs (SIGTERM) that did not exit 0 within 20 s",
        format!(
            "{} of {}{}",
            scalings.unclean.len(),
            scalings.terminated,
            if scalings.unclean.is_empty() {
                String::new()
            } else {
                format!(" ({})", scalings.unclean.join(", "))
            }
        ),
        "0".into(),
        scalings.unclean.is_empty() && scalings.terminated > 0,
    ));
    let records = (patients + 1) as f64;
    let (elastic_rate, calm_rate) = (records / elastic_seconds, records / calm_seconds);
    println!(
        "{mode} mode: {patients} patients, {therapists} therapists; {} replicas started, {} stopped by SIGTERM, {} by SIGKILL (1 to {MOST} of each processor)",
        scalings.up, scalings.terminated, scalings.killed
    );
    println!(
        "patients to a settled chain: {elastic_seconds:.1} s while scaling ({elastic_rate:.0} records/s), {calm_seconds:.1} s without ({calm_rate:.0} records/s): ratio {:.2}\n",
        elastic_rate / calm_rate
    );
    for example in &repeats.examples {
        println!("applied twice: {example}");
    }
    let held = crate::invariants::print(rows);
    println!(
        "\nelastic run ({mode}) {}",
        if held { "HELD" } else { "FAILED" }
    );
    Ok(held)
}
