//! Logging and the shutdown signal.

/// Installs JSON-line logging on stderr, filtered by `RUST_LOG` (default
/// `info`). Every line carries the component name. Logs never carry personal
/// data: callers log ids, never names, addresses or free text from people.
pub fn init(component: &'static str) {
    use tracing_subscriber::EnvFilter;
    crate::tune_allocator();
    crate::config::note_read("RUST_LOG");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let installed = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    if installed.is_ok() {
        tracing::info!(component, version = env!("CARGO_PKG_VERSION"), "starting");
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown signal received");
}
