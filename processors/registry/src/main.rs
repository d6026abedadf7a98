//! `psymatch-registry`: serves the schema registry API.
//!
//! Configuration (environment):
//! - `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/psymatch`):
//!   where the `registry` schema lives; migrations run at start.
//! - `REGISTRY_LISTEN` (default `127.0.0.1:8081`, Confluent's port).

use anyhow::Context;
use psymatch_runtime::{db, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init("registry");
    let listen = std::env::var("REGISTRY_LISTEN").unwrap_or_else(|_| "127.0.0.1:8081".into());
    let pool = db::connect(&db::database_url()).await?;
    db::ensure_migrated(&pool).await?;
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(listen = %listener.local_addr()?, "schema registry listening");
    axum::serve(listener, psymatch_registry::router(pool))
        .with_graceful_shutdown(telemetry::shutdown_signal())
        .await?;
    Ok(())
}
