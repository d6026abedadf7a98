//! `psymatch-email-batcher`: runs the email batcher (templates are loaded
//! and checked first; a broken one stops the start with its name).

use psymatch_email_batcher::EmailBatcher;
use psymatch_email_batcher::config::BatcherConfig;
use psymatch_runtime::{app, telemetry};

#[global_allocator]
static ALLOCATOR: psymatch_runtime::Allocator = psymatch_runtime::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("email_batcher");
    let batcher = EmailBatcher::new(BatcherConfig::from_env()?)?;
    app::run(batcher).await
}
