//! `psymatch-proof`: proofs of the whole system that anyone can rerun on
//! the local stack (`scripts/stack up`, then `. .stack/env`). Each builds
//! its processors first (`cargo build --workspace`), starts them as
//! processes in an environment of their own (database, topic prefix), and
//! prints a table; the exit status is 1 when an invariant is broken.
//!
//! - `psymatch-proof poison [--per-kind N]`: bad records of seven kinds on
//!   every consumed topic, interleaved with good ones (README, "Proofs").

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
        /// Bad records of each kind per topic (10 topics, 7 kinds).
        #[arg(long, default_value_t = 150)]
        per_kind: usize,
        /// Directory for the processors' logs.
        #[arg(long, default_value = ".stack/proof")]
        logs: PathBuf,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let held = match cli.command {
        Command::Poison { per_kind, logs } => psymatch_proof::poison::run(per_kind, &logs).await?,
    };
    if !held {
        std::process::exit(1);
    }
    Ok(())
}
