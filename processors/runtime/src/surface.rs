//! The operating surface of every processor: health, status and metrics on
//! one HTTP port.
//!
//! Metrics follow the Kafka Streams vocabulary with Prometheus conventions:
//! a `psymatch_` prefix, `_total` counters, `_seconds` histograms, and a
//! constant `processor` label.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every metric of the runtime. One place defines each name and its labels.
pub struct Metrics {
    registry: Registry,
    /// Records consumed, by topic.
    pub consumed: IntCounterVec,
    /// Records produced by the relay, by topic.
    pub produced: IntCounterVec,
    /// Input records skipped as duplicates (same event id), by topic.
    pub duplicates: IntCounterVec,
    /// Records sent to a dead-letter topic, by source topic and error code.
    pub dead_letters: IntCounterVec,
    /// Errors by code (including retried ones).
    pub errors: IntCounterVec,
    /// Time to process one record (decode to outputs).
    pub process_seconds: Histogram,
    /// Time to commit one batch's transaction.
    pub commit_seconds: Histogram,
    /// Records per committed batch.
    pub batch_records: Histogram,
    /// Consumer lag per partition (librdkafka statistics).
    pub lag: IntGaugeVec,
    /// Rebalances by kind (assign, revoke, lost).
    pub rebalances: IntCounterVec,
    /// Retries by kind (batch, relay).
    pub retries: IntCounterVec,
    /// Records waiting in the outbox at the relay's last look.
    pub outbox_pending: IntGauge,
    /// Query answers by HTTP status (`crate::query`).
    pub queries: IntCounterVec,
    /// 1 while this replica consumes, 0 while it stands by (a processor
    /// with one active replica at a time).
    pub active: IntGauge,
    /// When the batch a partition is retrying first failed (Unix seconds),
    /// per partition; a partition that is not failing has no series.
    pub failing_since: GaugeVec,
}

impl Metrics {
    /// Metrics labelled with the processor's name.
    pub fn new(processor: &str) -> Metrics {
        let labels = [("processor".to_string(), processor.to_string())].into();
        let registry =
            Registry::new_custom(Some("psymatch".into()), Some(labels)).expect("valid registry");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let level = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let seconds = prometheus::exponential_buckets(0.0001, 4.0, 10).expect("valid buckets");
        Metrics {
            consumed: counter("records_consumed_total", "Records consumed.", &["topic"]),
            produced: counter(
                "records_produced_total",
                "Records published by the outbox relay.",
                &["topic"],
            ),
            duplicates: counter(
                "records_duplicate_total",
                "Input records skipped as already processed.",
                &["topic"],
            ),
            dead_letters: counter(
                "dlq_records_total",
                "Records sent to a dead-letter topic.",
                &["topic", "code"],
            ),
            errors: counter(
                "errors_total",
                "Errors by code, retried ones included.",
                &["code"],
            ),
            process_seconds: histogram(
                "process_duration_seconds",
                "Time to process one record.",
                seconds.clone(),
            ),
            commit_seconds: histogram(
                "commit_duration_seconds",
                "Time to commit one batch.",
                seconds,
            ),
            batch_records: histogram(
                "batch_records",
                "Records per committed batch.",
                prometheus::exponential_buckets(1.0, 2.0, 12).expect("valid buckets"),
            ),
            lag: gauge(
                "consumer_lag",
                "Consumer lag in records per partition.",
                &["topic", "partition"],
            ),
            rebalances: counter("rebalances_total", "Rebalances by kind.", &["kind"]),
            retries: counter("retries_total", "Retries by kind.", &["kind"]),
            queries: counter(
                "queries_total",
                "Query answers by HTTP status.",
                &["status"],
            ),
            outbox_pending: level("outbox_pending", "Records waiting in the outbox."),
            active: level(
                "active",
                "1 while this replica consumes; 0 while it stands by for the active one.",
            ),
            failing_since: {
                let metric = GaugeVec::new(
                    Opts::new(
                        "partition_failing_since_timestamp_seconds",
                        "When the batch a partition keeps retrying first failed (no series while none fails).",
                    ),
                    &["topic", "partition"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(metric.clone()))
                    .expect("unique metric");
                metric
            },
            registry,
        }
    }

    /// Adds a processor's own metric (it gets the prefix and the label).
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) -> anyhow::Result<()> {
        self.registry
            .register(collector)
            .map_err(|e| anyhow::anyhow!("registering a processor metric: {e}"))
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// What `/health/status` reports, updated by the runtime.
#[derive(Default)]
pub struct Status {
    /// Partitions assigned now.
    pub assigned: Mutex<BTreeSet<(String, i32)>>,
    /// Lag per partition.
    pub lag: Mutex<BTreeMap<(String, i32), i64>>,
    /// The last error, for a person looking.
    pub last_error: Mutex<Option<String>>,
    /// Partitions whose batch keeps failing: since when, and why last.
    pub failing: Mutex<BTreeMap<(String, i32), (Instant, String)>>,
}

impl Status {
    /// Records an error as the last one.
    pub fn error(&self, message: impl Into<String>) {
        *self.last_error.lock().expect("status lock") = Some(message.into());
    }

    /// Notes that the batch of `topic`/`partition` failed (again) with
    /// `reason`; the first failure's time is kept until it commits.
    pub fn failing(&self, metrics: &Metrics, topic: &str, partition: i32, reason: &str) {
        let mut failing = self.failing.lock().expect("status lock");
        let entry = failing
            .entry((topic.to_string(), partition))
            .or_insert_with(|| {
                let since = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                metrics
                    .failing_since
                    .with_label_values(&[topic, &partition.to_string()])
                    .set(since.as_secs_f64());
                (Instant::now(), String::new())
            });
        entry.1 = reason.to_string();
    }

    /// Notes that the batch of `topic`/`partition` committed.
    pub fn recovered(&self, metrics: &Metrics, topic: &str, partition: i32) {
        let mut failing = self.failing.lock().expect("status lock");
        if failing.remove(&(topic.to_string(), partition)).is_some() {
            let _ = metrics
                .failing_since
                .remove_label_values(&[topic, &partition.to_string()]);
        }
    }

    /// The partitions that have been failing for longer than `bound`, for
    /// readiness: each with how long and why, and what to do.
    pub fn stuck(&self, bound: Duration) -> Result<(), String> {
        let failing = self.failing.lock().expect("status lock");
        let stuck: Vec<String> = failing
            .iter()
            .filter(|(_, (since, _))| since.elapsed() > bound)
            .map(|((topic, partition), (since, reason))| {
                format!(
                    "{topic}/{partition} has failed for {} s ({reason})",
                    since.elapsed().as_secs()
                )
            })
            .collect();
        if stuck.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{}; see docs/operations.md, runbook PartitionStuck",
                stuck.join("; ")
            ))
        }
    }
}

/// A readiness probe of one dependency.
pub type Probe =
    Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Shared state of the HTTP surface.
pub struct Surface {
    /// Processor name.
    pub processor: String,
    /// Consumer group.
    pub group: String,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Status.
    pub status: Arc<Status>,
    /// Probes for readiness, by dependency name.
    pub probes: Vec<(&'static str, Probe)>,
    /// Start time.
    pub started: Instant,
}

/// The readiness probes of the three dependencies every processor has:
/// the database, the schema registry and the broker.
pub fn dependency_probes(
    pool: sqlx::PgPool,
    registry: String,
    brokers: String,
) -> Vec<(&'static str, Probe)> {
    vec![
        (
            "database",
            Box::new(move || {
                let pool = pool.clone();
                Box::pin(async move {
                    sqlx::query("SELECT 1")
                        .execute(&pool)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                })
            }),
        ),
        (
            "registry",
            Box::new(move || {
                let url = format!("{}/subjects", registry.trim_end_matches('/'));
                let http = crate::registry_client::settings(&registry).http();
                let registry = registry.clone();
                Box::pin(async move {
                    let explain = |status, error: String| {
                        crate::registry_client::explain(&registry, status, &error)
                    };
                    let response = http
                        .get(&url)
                        .send()
                        .await
                        .map_err(|e| explain(None, format!("{e:?}")))?;
                    let status = response.status();
                    response
                        .error_for_status()
                        .map(|_| ())
                        .map_err(|e| explain(Some(status), e.to_string()))
                })
            }),
        ),
        (
            "broker",
            Box::new(move || {
                let brokers = brokers.clone();
                Box::pin(async move {
                    tokio::task::spawn_blocking(move || {
                        crate::broker::check(&brokers, Duration::from_secs(2))
                            .map_err(|e| e.to_string())
                    })
                    .await
                    .map_err(|e| e.to_string())?
                })
            }),
        ),
    ]
}

/// Binds `listen` (port 0: any free port) and serves the surface there
/// until the process ends; the address bound and the server's task.
pub async fn serve(
    surface: Arc<Surface>,
    listen: &str,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    serve_with(surface, listen, None).await
}

/// [`serve`], with the processor's query routes (already guarded, see
/// [`crate::query::guarded`]) beside the health and metrics routes.
pub async fn serve_with(
    surface: Arc<Surface>,
    listen: &str,
    queries: Option<Router>,
) -> anyhow::Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let address = listener.local_addr()?;
    let mut app = router(surface);
    if let Some(queries) = queries {
        app = app.merge(queries);
    }
    let app = refusals_as_json(app);
    let task = tokio::spawn(accept(listener, app, Limits::default()));
    Ok((address, task))
}

/// What one surface accepts from its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more wait in the listen queue.
    pub connections: usize,
    /// Time a client has to send a request's headers (and, on a kept-alive
    /// connection, the next request's): a half-sent request is closed.
    pub header_read: Duration,
    /// Largest request head (request line and headers) read.
    pub header_bytes: usize,
    /// Largest request body read.
    pub body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 256,
            header_read: Duration::from_secs(10),
            header_bytes: 16 * 1024,
            body_bytes: 64 * 1024,
        }
    }
}

/// Serves `app` on `listener` within `limits`, one task per connection.
/// axum::serve sets no header-read timeout and no connection limit: a
/// client holding thousands of half-sent requests would hold as many file
/// descriptors.
pub async fn accept(listener: tokio::net::TcpListener, app: Router, limits: Limits) {
    let app = app.layer(axum::extract::DefaultBodyLimit::max(limits.body_bytes));
    let open = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_header_size(limits.header_bytes)
        .max_buf_size(64 * 1024);
    loop {
        let Ok(permit) = open.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of descriptors or a reset before accept: try again shortly.
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let stream = JsonAutoRefusals {
            inner: stream,
            pending: None,
        };
        let connection = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
}

/// A connection's stream as hyper writes to it. hyper answers a request
/// it cannot parse (400, a path too long: 414, headers beyond its buffer:
/// 431) by itself, with an empty body, before any route runs; this
/// rewrites that one answer into the surface's JSON refusal. Answers of
/// the routes always carry a content type and pass untouched.
struct JsonAutoRefusals<S> {
    inner: S,
    /// The JSON answer being written in place of hyper's, how much of it
    /// is written, and the length of hyper's answer to report once done.
    pending: Option<(Vec<u8>, usize, usize)>,
}

/// The JSON answer for hyper's own `head`, if `head` is one: an error
/// status and no content type.
fn json_for_automatic(head: &[u8]) -> Option<Vec<u8>> {
    let status: u16 = std::str::from_utf8(head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?)
        .ok()?
        .parse()
        .ok()?;
    let end = head.windows(4).position(|w| w == b"\r\n\r\n")?;
    let lower = head[..end].to_ascii_lowercase();
    if status < 400 || lower.windows(13).any(|w| w == b"content-type:") {
        return None;
    }
    let (error, message) = match status {
        414 => (
            "uri_too_long",
            "the request's path is longer than the surface reads",
        ),
        431 => (
            "request_header_fields_too_large",
            "the request's headers are larger than the surface reads (16 KiB)",
        ),
        _ => ("bad_request", "the request is not valid HTTP/1.1"),
    };
    let body = json!({"error": error, "message": message}).to_string();
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for JsonAutoRefusals<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for JsonAutoRefusals<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.pending.is_none() {
            match json_for_automatic(buf) {
                Some(answer) => this.pending = Some((answer, 0, buf.len())),
                None => return std::pin::Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        let (answer, written, reported) = this.pending.as_mut().expect("set above");
        while *written < answer.len() {
            match std::pin::Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *written += n,
                other => return other,
            }
        }
        let reported = *reported;
        this.pending = None;
        Poll::Ready(Ok(reported))
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Every refusal of the surface as JSON with a code, as the query
/// surface's own: unknown paths (404), methods (405), and what axum's
/// extractors refuse (a path that does not decode, a body too large), which
/// would otherwise answer in plain text or with an empty body.
pub fn refusals_as_json(app: Router) -> Router {
    app.fallback(|| async {
        refusal(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such route; see docs/openapi.yaml",
        )
    })
    .method_not_allowed_fallback(|| async {
        refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route answers GET only",
        )
    })
    .layer(axum::middleware::map_response(json_refusal))
    .layer(axum::middleware::from_fn(uri_bound))
}

/// The longest path and query a route is asked with: ids are 128
/// characters at most, so anything near this is not a query.
const MAX_URI: usize = 4096;

/// Refuses a path and query longer than [`MAX_URI`] (414) before routing.
async fn uri_bound(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let length = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if length > MAX_URI {
        return refusal(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            &format!("the path and query are {length} bytes; at most {MAX_URI} are read"),
        );
    }
    next.run(request).await
}

/// A refusal as `{"error": kind, "message": ...}`.
fn refusal(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "message": message})),
    )
        .into_response()
}

/// An error response that is not JSON (axum's extractor rejections)
/// rewritten as JSON, keeping its status and its text as the message.
async fn json_refusal(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let bytes = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("refused").to_string()
    } else {
        text.trim().to_string()
    };
    let kind = status
        .canonical_reason()
        .unwrap_or("error")
        .to_lowercase()
        .replace(' ', "_");
    refusal(status, &kind, &message)
}

/// The router: `/health/liveness`, `/health/readiness`, `/health/status`, `/metrics`.
pub fn router(surface: Arc<Surface>) -> Router {
    Router::new()
        .route("/health/liveness", get(|| async { "ok" }))
        .route("/health/readiness", get(readiness))
        .route("/health/status", get(status))
        .route("/metrics", get(metrics))
        .with_state(surface)
}

async fn readiness(State(surface): State<Arc<Surface>>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut ready = true;
    for (name, probe) in &surface.probes {
        let outcome = match tokio::time::timeout(Duration::from_secs(3), probe()).await {
            Ok(result) => result,
            Err(_) => Err("no answer within 3 s".to_string()),
        };
        ready &= outcome.is_ok();
        checks.insert(
            name.to_string(),
            match outcome {
                Ok(()) => json!("ok"),
                Err(reason) => json!(reason),
            },
        );
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(json!({"ready": ready, "checks": checks}))).into_response()
}

async fn status(State(surface): State<Arc<Surface>>) -> Response {
    let assigned: Vec<String> = surface
        .status
        .assigned
        .lock()
        .expect("status lock")
        .iter()
        .map(|(topic, partition)| format!("{topic}/{partition}"))
        .collect();
    let lag: serde_json::Map<String, serde_json::Value> = surface
        .status
        .lag
        .lock()
        .expect("status lock")
        .iter()
        .map(|((topic, partition), lag)| (format!("{topic}/{partition}"), json!(lag)))
        .collect();
    axum::Json(json!({
        "processor": surface.processor,
        "version": env!("CARGO_PKG_VERSION"),
        "group": surface.group,
        "uptime_seconds": surface.started.elapsed().as_secs(),
        "role": if surface.metrics.active.get() == 1 { "active" } else { "standby" },
        "assigned_partitions": assigned,
        "lag": lag,
        "last_error": *surface.status.last_error.lock().expect("status lock"),
    }))
    .into_response()
}

async fn metrics(State(surface): State<Arc<Surface>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        surface.metrics.render(),
    )
        .into_response()
}
