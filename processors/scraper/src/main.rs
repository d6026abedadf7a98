//! `psymatch-scraper`: runs the scraper processor, or serves a local
//! stand-in for the doctor search (`psymatch-scraper fake`).

use clap::{Parser, Subcommand};
use psymatch_runtime::config::RuntimeConfig;
use psymatch_runtime::{app, telemetry};
use psymatch_scraper::Scraper;
use psymatch_scraper::config::ScraperConfig;

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

#[derive(Parser)]
#[command(
    version,
    about = "The psymatch scraper: the therapist directory from the KBV doctor search"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the processor (the default).
    Run,
    /// Serves a local stand-in for the doctor search with synthetic
    /// practices around Berlin-Mitte (demos without network).
    Fake {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: String,
        /// The Basic credential it expects.
        #[arg(long, env = "KBV_BASIC_AUTH", default_value = "ZGVtbzpkZW1v")]
        credential: String,
        /// How many synthetic practices.
        #[arg(long, default_value_t = 120)]
        practices: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command.unwrap_or(Command::Run) {
        Command::Run => {
            telemetry::init("scraper");
            let mut runtime = RuntimeConfig::from_env("scraper")?;
            // One area per transaction unless configured otherwise: an area
            // is a slow request, and a batch of them would hold its
            // transaction (and lose its progress on a crash) for minutes.
            if std::env::var("BATCH_SIZE").is_err() {
                runtime.batch_size = 1;
            }
            let scraper = Scraper::new(ScraperConfig::from_env()?);
            app::refuse_unknown_settings(&scraper)?;
            app::exit(app::run_with(scraper, runtime, telemetry::shutdown_signal()).await)
        }
        Command::Fake {
            listen,
            credential,
            practices,
        } => {
            telemetry::init("scraper-fake");
            let fake = psymatch_scraper::fake::FakeKbv::start_on(&listen, &credential).await?;
            fake.put((0..practices).map(|n| {
                let angle = n as f64 * 2.399;
                let km = 0.3 * (n as f64).sqrt();
                psymatch_scraper::fake::practice(
                    n,
                    52.532 + km * angle.sin() / 111.2,
                    13.385 + km * angle.cos() / 68.0,
                )
            }));
            tracing::info!(url = %fake.url, practices, "fake doctor search listening");
            telemetry::shutdown_signal().await;
            Ok(())
        }
    }
}
