//! The live doctor search: a browser-like session (the start page first,
//! its cookies kept), the Basic credential and the `req-val` token on every
//! search, politeness (one request per interval for the whole deployment,
//! an identifying User-Agent), and backoff on the HTTP 500 the site answers
//! when it does not like a session (a new session is started then).

use crate::config::ScraperConfig;
use crate::events::KbvAnswered;
use crate::kbv::{self, Answer, Filters};
use crate::metrics::ScraperMetrics;
use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use psymatch_runtime::events::Event;
use psymatch_runtime::throttle;
use sqlx::PgPool;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Why a search gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// Every attempt failed; the reason of the last.
    #[error("the doctor search failed: {0}")]
    Failed(String),
    /// The shared rate's token could not be taken.
    #[error("taking the doctor search's token: {0}")]
    Database(#[from] sqlx::Error),
}

struct Attempt {
    reason: String,
    retryable: bool,
    database: Option<sqlx::Error>,
}

/// A client of the doctor search.
pub struct KbvClient {
    config: ScraperConfig,
    http: reqwest::Client,
    /// Whether the current session was started (start page fetched).
    session: AtomicBool,
    local: DefaultDirectRateLimiter,
    rate: throttle::SharedRate,
    metrics: ScraperMetrics,
}

impl KbvClient {
    /// A client for `config`.
    pub fn new(config: ScraperConfig, metrics: ScraperMetrics) -> KbvClient {
        let http = reqwest::Client::builder()
            .user_agent(&config.user_agent)
            .cookie_store(true)
            .timeout(config.timeout)
            .build()
            .expect("an HTTP client without custom TLS builds");
        let quota = Quota::with_period(config.interval.max(Duration::from_micros(1)))
            .expect("a non-zero period");
        KbvClient {
            http,
            session: AtomicBool::new(false),
            local: RateLimiter::direct(quota),
            rate: throttle::SharedRate::new("scraper", "kbv", config.interval),
            config,
            metrics,
        }
    }

    /// Searches around a position.
    pub async fn search(
        &self,
        pool: &PgPool,
        latitude: f64,
        longitude: f64,
        radius_km: u32,
        filters: &Filters,
    ) -> Result<Answer, SearchError> {
        let body = kbv::request_body(latitude, longitude, radius_km, filters);
        let token = kbv::request_token(latitude, longitude);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.backoff)
            .with_max_delay(self.config.backoff * 16)
            .with_max_times(self.config.attempts.saturating_sub(1) as usize)
            .with_jitter();
        (|| self.attempt(pool, &body, &token))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|a: &Attempt| a.retryable && a.database.is_none())
            .notify(|a: &Attempt, wait| {
                tracing::info!(reason = %a.reason, wait_ms = wait.as_millis() as u64, "doctor search: retrying");
            })
            .await
            .map_err(|a| match a.database {
                Some(error) => SearchError::Database(error),
                None => SearchError::Failed(a.reason),
            })
    }

    /// Sends `request` when this process and the deployment may: governor
    /// per process, then the upstream's shared token.
    async fn polite<T, F, Fut>(&self, pool: &PgPool, request: F) -> Result<T, Attempt>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let waited = Instant::now();
        self.local.until_ready().await;
        let (value, _) = self
            .rate
            .run(pool, || async { (request().await, None) })
            .await
            .map_err(|error| Attempt {
                reason: "the shared rate's token".into(),
                retryable: false,
                database: Some(error),
            })?;
        self.metrics
            .throttle_wait
            .observe(waited.elapsed().as_secs_f64());
        Ok(value)
    }

    fn failed(&self, outcome: &str, reason: String, retryable: bool) -> Attempt {
        KbvAnswered { outcome }.emit(&self.metrics);
        Attempt {
            reason,
            retryable,
            database: None,
        }
    }

    async fn attempt(
        &self,
        pool: &PgPool,
        body: &serde_json::Value,
        token: &str,
    ) -> Result<Answer, Attempt> {
        if !self.session.load(Ordering::SeqCst) {
            let start = self
                .polite(pool, || {
                    self.http.get(format!("{}/", self.config.base_url)).send()
                })
                .await?;
            match start {
                Ok(response) if response.status().is_success() => {
                    KbvAnswered { outcome: "session" }.emit(&self.metrics);
                    self.session.store(true, Ordering::SeqCst);
                }
                Ok(response) => {
                    let reason = format!("start page answered HTTP {}", response.status().as_u16());
                    return Err(self.failed("session_failed", reason, true));
                }
                Err(error) => {
                    return Err(self.failed(
                        "connection",
                        format!("start page: {}", error.without_url()),
                        true,
                    ));
                }
            }
        }
        let mut request = self
            .http
            .post(format!("{}/api/data", self.config.base_url))
            .header("req-val", token)
            .header(reqwest::header::ACCEPT, "application/json")
            .json(body);
        if let Some(credential) = &self.config.basic_auth {
            request = match credential.split_once(':') {
                Some((user, password)) => request.basic_auth(user, Some(password)),
                None => request.header(
                    reqwest::header::AUTHORIZATION,
                    format!("Basic {credential}"),
                ),
            };
        }
        let sent = self
            .polite(pool, || async {
                match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        response.bytes().await.map(|bytes| (status, bytes))
                    }
                    Err(error) => Err(error),
                }
            })
            .await?;
        let (status, bytes) = match sent {
            Ok(response) => response,
            Err(error) if error.is_timeout() => {
                let reason = format!("no answer within {} s", self.config.timeout.as_secs());
                return Err(self.failed("timeout", reason, true));
            }
            Err(error) => {
                return Err(self.failed(
                    "connection",
                    format!("connection failed: {}", error.without_url()),
                    true,
                ));
            }
        };
        if status.as_u16() == 500 || status.as_u16() == 401 || status.as_u16() == 403 {
            // The site refuses a session it does not trust with a bare 500:
            // start a new one before the next attempt.
            self.session.store(false, Ordering::SeqCst);
            let reason = format!(
                "HTTP {} (session refused; starting a new one)",
                status.as_u16()
            );
            return Err(self.failed("refused", reason, true));
        }
        if !status.is_success() {
            let retryable = status.as_u16() == 429 || status.is_server_error();
            let reason = format!("HTTP {}", status.as_u16());
            return Err(self.failed("http_error", reason, retryable));
        }
        match kbv::parse_answer(&bytes) {
            Ok(answer) => {
                KbvAnswered { outcome: "ok" }.emit(&self.metrics);
                Ok(answer)
            }
            Err(reason) => Err(self.failed("malformed", reason, false)),
        }
    }
}
