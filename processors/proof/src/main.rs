//! `psymatch-proof`: proofs of the whole system that anyone can rerun on
//! the local stack (`scripts/stack up`, then `. .stack/env`). Each builds
//! its processors first (`cargo build --workspace`), starts them as
//! processes in an environment of their own (database, topic prefix), and
//! prints a table; the exit status is 1 when an invariant is broken.
//!
//! - `psymatch-proof poison [--per-kind N]`: bad records of eleven kinds on
//!   every consumed topic, interleaved with good ones (docs/proofs.md).
//! - `psymatch-proof elastic [--mode lease|group|both]`: replicas that
//!   come and go under load (docs/proofs.md).
//! - `psymatch-proof readme`: the README's tour and "Asking psymatch" as
//!   written, on the stack `scripts/run` left (processors/proof/src/readme.rs).
//! - `psymatch-proof erasure-scan --values-file FILE`: where values of a
//!   person (one per line) remain: tables, topics, mail capture, files.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about = "Proofs of psymatch under bad input")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bad records of every kind on every consumed topic, between good
    /// ones, through every processor: each bad one must reach a dead-letter
    /// topic or a rejection with its reason, each good one must be
    /// processed, and no process may exit.
    Poison {
        /// Bad records of each kind per topic (10 topics, 9 kinds, 2 more on intake's).
        #[arg(long, default_value_t = 150)]
        per_kind: usize,
        /// Directory for the processors' logs.
        #[arg(long, default_value = ".stack/proof")]
        logs: PathBuf,
    },
    /// Synthetic therapists and patients through intake, geocoder, matcher
    /// and email batcher, a scrape through the scraper and the scheduler's
    /// flushes and re-matches, on a broker and a PostgreSQL of the run's
    /// own, while processes are killed with SIGKILL (every kind in turn),
    /// the broker and PostgreSQL restart once each, and second replicas run
    /// for half the run; then the invariants as a table.
    Chaos {
        /// Patients registered.
        #[arg(long, default_value_t = 10_000)]
        patients: usize,
        /// Therapists created.
        #[arg(long, default_value_t = 5_000)]
        therapists: usize,
        /// SIGKILLs of single processes (replicas come on top).
        #[arg(long, default_value_t = 40)]
        kills: usize,
        /// Directory for the processors' logs.
        #[arg(long, default_value = ".stack/chaos")]
        logs: PathBuf,
        /// On the secured three-node cluster (scripts/kafka-cluster, started
        /// if needed) and a PostgreSQL over TLS (verify-full), each
        /// processor its own principal under topics.yaml's ACLs; the faults
        /// add SIGKILLs of the active controller and of the busiest
        /// partition's leader and a graceful broker restart.
        #[arg(long)]
        secured: bool,
    },
    /// The chain at load while a driver scales each processor between 1
    /// and 3 replicas every few seconds (up by starting one, down by
    /// SIGTERM or SIGKILL), in one partition-assignment mode or both; then
    /// the chaos run's invariants and the records per second against the
    /// same input without scaling.
    Elastic {
        /// `lease`, `group` or `both`.
        #[arg(long, default_value = "both", value_parser = ["lease", "group", "both"])]
        mode: String,
        /// Patients registered.
        #[arg(long, default_value_t = 10_000)]
        patients: usize,
        /// Therapists created.
        #[arg(long, default_value_t = 5_000)]
        therapists: usize,
        /// Directory for the processors' logs.
        #[arg(long, default_value = ".stack/elastic")]
        logs: PathBuf,
    },
    /// The README's tour and "Asking psymatch" run as written, in one
    /// shell, on the stack `scripts/run` left, from the repository: every
    /// command must succeed and show what the README says it shows.
    Readme {
        /// Directory for the commands' output and the generated script.
        #[arg(long, default_value = ".stack/readme")]
        logs: PathBuf,
    },
    /// Looks for a person's values (name, email address, phone number,
    /// street; one per line of the file, `-` for standard input, so that
    /// they appear in no command line) in every table of the database
    /// (DATABASE_URL, a role that reads every schema), every record of
    /// every topic (KAFKA_BROKERS), the mail capture (MAILDEV_URL, if set)
    /// and the given directories of log or mail files. Prints the places
    /// that hold one (never the values) and exits 1 if there is any.
    ErasureScan {
        /// File with the values, one per line.
        #[arg(long)]
        values_file: PathBuf,
        /// A directory of log or mail files to search too (repeatable).
        #[arg(long = "files")]
        files: Vec<PathBuf>,
        /// Physical topic prefix (isolated environments).
        #[arg(long, default_value = "", env = "TOPIC_PREFIX")]
        prefix: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let held = match cli.command {
        Command::Poison { per_kind, logs } => psymatch_proof::poison::run(per_kind, &logs).await?,
        Command::Chaos {
            patients,
            therapists,
            kills,
            logs,
            secured,
        } => psymatch_proof::chaos::run(patients, therapists, kills, &logs, secured).await?,
        Command::Elastic {
            mode,
            patients,
            therapists,
            logs,
        } => {
            let modes: Vec<&str> = match mode.as_str() {
                "both" => vec!["lease", "group"],
                one => vec![one],
            };
            let mut held = true;
            for mode in modes {
                let logs = logs.join(mode);
                held &= psymatch_proof::elastic::run(mode, patients, therapists, &logs).await?;
            }
            held
        }
        Command::Readme { logs } => {
            psymatch_proof::readme::run(&psymatch_proof::readme::root()?, &logs).await?
        }
        Command::ErasureScan {
            values_file,
            files,
            prefix,
        } => {
            let text = if values_file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&values_file)?
            };
            let values: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string)
                .collect();
            anyhow::ensure!(!values.is_empty(), "no values to look for");
            let scope = psymatch_proof::scan::Scope {
                brokers: std::env::var("KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
                prefix,
                pool: psymatch_runtime::db::connect(&psymatch_runtime::db::database_url()).await?,
                maildev_url: std::env::var("MAILDEV_URL").ok(),
                files,
            };
            let (findings, scanned) = psymatch_proof::scan::scan(&scope, &values).await?;
            psymatch_proof::scan::print(&findings, &scanned);
            findings.is_empty()
        }
    };
    if !held {
        std::process::exit(1);
    }
    Ok(())
}
