//! `psymatch-matcher`: runs the matcher processor, or replays its history
//! (`psymatch-matcher replay --help`).

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

use clap::{Parser, Subcommand};

/// The matcher: without a command it runs as a processor.
#[derive(Parser)]
#[command(name = "psymatch-matcher", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the matcher again over its recorded inputs under the live or
    /// other rules, into a scratch database, and reports what would
    /// change; publishes nothing and sends no email.
    Replay(psymatch_matcher::replay::ReplayArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        None => {
            let matcher =
                psymatch_matcher::Matcher::new(psymatch_matcher::MatcherConfig::from_env()?);
            psymatch_runtime::app::run(matcher).await
        }
        Some(Command::Replay(args)) => {
            psymatch_runtime::telemetry::init("matcher-replay");
            psymatch_matcher::replay::run(args).await
        }
    }
}
