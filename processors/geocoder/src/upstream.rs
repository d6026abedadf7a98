//! One upstream web service (Nominatim, OSRM) behind the protections its
//! usage needs: a rate limit, timeouts, retries with backoff that honour
//! Retry-After, and a circuit breaker.
//!
//! The rate limit has two stages. governor paces each process on its own;
//! a limit for the whole deployment needs state all replicas see, so for a
//! shared upstream every request also takes the upstream's token in
//! PostgreSQL (`psymatch_runtime::throttle`): one request at a time, the
//! next an interval after the previous answer. A 429 holds everyone back
//! for its Retry-After.

use crate::breaker::{Breaker, State};
use crate::config::UpstreamConfig;
use crate::events::{BreakerRefused, UpstreamAnswered};
use crate::metrics::GeoMetrics;
use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use psymatch_runtime::events::Event;
use psymatch_runtime::throttle;
use sqlx::PgPool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Why a call to an upstream gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The breaker is open: the call was not made.
    #[error("{0} is unavailable (circuit breaker open after repeated failures)")]
    Unavailable(&'static str),
    /// Every attempt failed, or the answer cannot be used.
    #[error("{upstream} failed: {reason}")]
    Failed {
        /// Which upstream.
        upstream: &'static str,
        /// The last attempt's failure, for a person.
        reason: String,
    },
    /// The shared slot could not be reserved (retry the record later).
    #[error("reserving a request slot: {0}")]
    Database(#[from] sqlx::Error),
}

/// How one attempt failed.
#[derive(Debug)]
struct Attempt {
    reason: String,
    /// Trying again may help (timeouts, 429, 5xx).
    retryable: bool,
    /// The upstream asked to wait this long.
    retry_after: Option<Duration>,
    /// Not an upstream failure: give up at once, the error says why.
    fatal: Option<UpstreamError>,
}

impl Attempt {
    fn failed(reason: String, retryable: bool) -> Attempt {
        Attempt {
            reason,
            retryable,
            retry_after: None,
            fatal: None,
        }
    }
}

/// A rate-limited, retried, breaker-guarded HTTP client of one service.
pub struct Upstream {
    config: UpstreamConfig,
    /// The deployment-wide rate, for a shared upstream.
    rate: Option<throttle::SharedRate>,
    client: reqwest::Client,
    local: DefaultDirectRateLimiter,
    breaker: Mutex<Breaker>,
    metrics: GeoMetrics,
}

impl Upstream {
    /// A client for `config`, identifying itself with `user_agent`.
    pub fn new(config: UpstreamConfig, user_agent: &str, metrics: GeoMetrics) -> Upstream {
        let client = reqwest::Client::builder()
            .user_agent(user_agent)
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .build()
            .expect("an HTTP client without custom TLS builds");
        let quota = Quota::with_period(config.interval.max(Duration::from_micros(1)))
            .expect("a non-zero period");
        metrics
            .breaker_state
            .with_label_values(&[config.name])
            .set(State::Closed.gauge());
        Upstream {
            breaker: Mutex::new(Breaker::new(
                config.breaker_failures,
                config.breaker_open_for,
                Instant::now(),
            )),
            local: RateLimiter::direct(quota),
            rate: config
                .shared
                .then(|| throttle::SharedRate::new("geocoder", config.name, config.interval)),
            client,
            config,
            metrics,
        }
    }

    /// The breaker's state now.
    pub fn breaker_state(&self) -> State {
        self.breaker.lock().expect("breaker lock").state()
    }

    /// GETs `path_and_query` (appended to the base URL) and parses the body
    /// with `parse`, retrying what may pass on a later attempt.
    pub async fn get<T>(
        &self,
        pool: &PgPool,
        path_and_query: &str,
        parse: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, UpstreamError> {
        let url = format!("{}{path_and_query}", self.config.base_url);
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.config.backoff)
            .with_max_delay(self.config.backoff * 16)
            .with_max_times(self.config.attempts.saturating_sub(1) as usize)
            .with_jitter();
        let max_wait = self.config.retry_after_max;
        let result = (|| self.attempt(pool, &url, &parse))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|attempt: &Attempt| attempt.retryable && attempt.fatal.is_none())
            .adjust(
                move |attempt: &Attempt, planned| match attempt.retry_after {
                    // A wait longer than we accept ends the call: the caller
                    // falls back rather than holding its batch for minutes.
                    Some(wait) if wait > max_wait => None,
                    Some(wait) => Some(planned.map_or(wait, |p| p.max(wait))),
                    None => planned,
                },
            )
            .notify(|attempt: &Attempt, wait| {
                tracing::info!(
                    upstream = self.config.name,
                    reason = %attempt.reason,
                    wait_ms = wait.as_millis() as u64,
                    "retrying"
                );
            })
            .await;
        result.map_err(|attempt| {
            attempt.fatal.unwrap_or(UpstreamError::Failed {
                upstream: self.config.name,
                reason: attempt.reason,
            })
        })
    }

    async fn attempt<T>(
        &self,
        pool: &PgPool,
        url: &str,
        parse: &impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, Attempt> {
        let name = self.config.name;
        if !self
            .breaker
            .lock()
            .expect("breaker lock")
            .allow(Instant::now())
        {
            BreakerRefused { upstream: name }.emit(&self.metrics);
            return Err(Attempt {
                fatal: Some(UpstreamError::Unavailable(name)),
                ..Attempt::failed("breaker open".into(), false)
            });
        }
        self.publish_breaker_state();
        let waited = Instant::now();
        self.local.until_ready().await;
        self.metrics
            .throttle_wait
            .with_label_values(&[name, "local"])
            .observe(waited.elapsed().as_secs_f64());
        let outcome = match &self.rate {
            None => self.send(url).await,
            Some(rate) => {
                let (outcome, waited) = rate
                    .run(pool, || async {
                        let outcome = self.send(url).await;
                        let hold_back = match &outcome {
                            Err((_, attempt)) => attempt.retry_after,
                            Ok(_) => None,
                        };
                        (outcome, hold_back)
                    })
                    .await
                    .map_err(|error| Attempt {
                        fatal: Some(UpstreamError::Database(error)),
                        ..Attempt::failed("request slot".into(), false)
                    })?;
                self.metrics
                    .throttle_wait
                    .with_label_values(&[name, "shared"])
                    .observe(waited.as_secs_f64());
                outcome
            }
        };
        let (label, result) = match outcome {
            Ok(body) => match parse(&body) {
                Ok(value) => ("ok", Ok(value)),
                Err(reason) => (
                    "malformed",
                    Err(Attempt::failed(format!("unusable answer: {reason}"), false)),
                ),
            },
            Err((label, attempt)) => (label, Err(attempt)),
        };
        UpstreamAnswered {
            upstream: name,
            outcome: label,
        }
        .emit(&self.metrics);
        {
            let mut breaker = self.breaker.lock().expect("breaker lock");
            // A client error means the service answered: it is up.
            if matches!(label, "ok" | "client_error") {
                breaker.success();
            } else {
                breaker.failure(Instant::now());
            }
        }
        self.publish_breaker_state();
        result
    }

    /// Sends one GET; on failure, the outcome label and the attempt.
    async fn send(&self, url: &str) -> Result<Vec<u8>, (&'static str, Attempt)> {
        let seconds = self.config.timeout.as_secs_f64();
        let response = self.client.get(url).send().await.map_err(|error| {
            if error.is_timeout() {
                let reason = format!("no answer within {seconds} s");
                ("timeout", Attempt::failed(reason, true))
            } else {
                let reason = format!("connection failed: {}", without_url(&error));
                ("connection", Attempt::failed(reason, true))
            }
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_retry_after);
        let body = response.bytes().await.map_err(|error| {
            let kind = if error.is_timeout() {
                "timeout"
            } else {
                "connection"
            };
            let reason = format!("reading the answer: {}", without_url(&error));
            (kind, Attempt::failed(reason, true))
        })?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        let snippet: String = String::from_utf8_lossy(&body).chars().take(200).collect();
        let reason = format!("HTTP {}: {}", status.as_u16(), snippet.trim());
        if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            Err((
                "rate_limited",
                Attempt {
                    retry_after: Some(retry_after.unwrap_or(self.config.backoff)),
                    ..Attempt::failed(reason, true)
                },
            ))
        } else if status.is_server_error() {
            Err((
                "server_error",
                Attempt {
                    retry_after,
                    ..Attempt::failed(reason, true)
                },
            ))
        } else {
            Err(("client_error", Attempt::failed(reason, false)))
        }
    }

    fn publish_breaker_state(&self) {
        let state = self.breaker_state();
        self.metrics
            .breaker_state
            .with_label_values(&[self.config.name])
            .set(state.gauge());
    }
}

/// The error without the URL: URLs carry addresses (personal data) and
/// must not reach logs or events.
fn without_url(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    if let Some(url) = error.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

/// Retry-After as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 "), Some(Duration::ZERO));
        let later = chrono::Utc::now() + chrono::Duration::seconds(120);
        let wait = parse_retry_after(&later.to_rfc2822()).unwrap();
        assert!((110..=120).contains(&wait.as_secs()), "{wait:?}");
        let past = "Wed, 21 Oct 2015 07:28:00 GMT";
        assert_eq!(parse_retry_after(past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
