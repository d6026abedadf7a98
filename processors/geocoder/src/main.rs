//! `psymatch-geocoder`: runs the geocoder processor, or removes expired
//! cache entries once (`psymatch-geocoder cleanup`).

use clap::{Parser, Subcommand};
use psymatch_geocoder::config::GeocoderConfig;
use psymatch_geocoder::{Geocoder, cache, fake};
use psymatch_runtime::{app, db, telemetry};

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

#[derive(Parser)]
#[command(version, about = "The psymatch geocoder: addresses and travel times")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the processor (the default).
    Run,
    /// Removes expired geocode and travel-time entries once and exits.
    Cleanup,
    /// Serves local stand-ins for Nominatim and OSRM (demos without
    /// network; synthetic positions) until interrupted.
    Fake {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8089")]
        listen: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => {
            let config = GeocoderConfig::from_env()?;
            app::run(Geocoder::new(config)).await
        }
        Command::Cleanup => {
            telemetry::init("geocoder");
            let pool = db::connect(&db::database_url()).await?;
            db::ensure_migrated(&pool).await?;
            let mut connection = pool.acquire().await?;
            // A person's command: expired by the machine's clock.
            let (geocodes, travel) = cache::cleanup(&mut connection, chrono::Utc::now()).await?;
            println!("removed {geocodes} expired geocodes and {travel} expired travel times");
            Ok(())
        }
        Command::Fake { listen } => {
            telemetry::init("geocoder-fake");
            let fake = fake::FakeUpstreams::start_on(&listen).await?;
            tracing::info!(url = %fake.url, "fake Nominatim and OSRM listening");
            telemetry::shutdown_signal().await;
            Ok(())
        }
    }
}
