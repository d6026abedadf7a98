//! The read-only query surface, in the spirit of Kafka Streams'
//! interactive queries: JSON over HTTP on a processor's surface port,
//! answered from what the processor has committed (so two replicas give
//! the same answer), behind bearer tokens with a role.
//!
//! Tokens come from `QUERY_TOKENS`: `name:role:token` entries separated by
//! commas; the role is `staff` (may read personal data) or `ops`
//! (pseudonymous data only). A token is compared in constant time (as a
//! SHA-256 digest, so its length does not show) and never logged. Health
//! and metrics stay open.

use crate::events::{Event, QueryAnswered};
use crate::surface::Metrics;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// What a caller may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Staff: personal data too.
    Staff,
    /// Operations: pseudonymous data only.
    Ops,
}

impl Role {
    /// The role's name in `QUERY_TOKENS`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Staff => "staff",
            Role::Ops => "ops",
        }
    }
}

/// Who asks: the token's name and role (a request extension for handlers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name (logged with each personal-data read).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// The configured tokens.
#[derive(Clone, Default)]
pub struct Tokens(Vec<([u8; 32], Caller)>);

impl std::fmt::Debug for Tokens {
    /// Names and roles only: a token never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(_, c)| (&c.name, c.role)))
            .finish()
    }
}

fn digest(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

impl Tokens {
    /// Parses `name:role:token,...`; an entry that does not fit is an
    /// error naming the entry's position and name (never its token).
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut tokens = Vec::new();
        for (n, entry) in text.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let mut parts = entry.splitn(3, ':');
            let (name, role, token) = (parts.next(), parts.next(), parts.next());
            let name = name
                .filter(|s| !s.is_empty())
                .ok_or_else(|| format!("QUERY_TOKENS entry {}: expected name:role:token", n + 1))?;
            let role = match role {
                Some("staff") => Role::Staff,
                Some("ops") => Role::Ops,
                other => {
                    return Err(format!(
                        "QUERY_TOKENS entry {} ({name}): role {:?}, expected staff or ops",
                        n + 1,
                        other.unwrap_or("")
                    ));
                }
            };
            let token = token.filter(|t| t.len() >= 16).ok_or_else(|| {
                format!(
                    "QUERY_TOKENS entry {} ({name}): a token of at least 16 characters",
                    n + 1
                )
            })?;
            let caller = Caller {
                name: name.to_string(),
                role,
            };
            tokens.push((digest(token), caller));
        }
        Ok(Tokens(tokens))
    }

    /// The caller a presented token belongs to. Every entry is compared,
    /// each in constant time, so the answer's timing tells nothing.
    pub fn caller(&self, presented: &str) -> Option<&Caller> {
        let presented = digest(presented);
        let mut found = None;
        for (token, caller) in &self.0 {
            if aws_lc_rs::constant_time::verify_slices_are_equal(token, &presented).is_ok() {
                found = Some(caller);
            }
        }
        found
    }

    /// Whether no token is configured (every query is refused).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A refused or failed query, as JSON: `{"error": kind, "message": ...}`.
#[derive(Debug)]
pub struct QueryError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable kind (`not_found`, `bad_request`, ...).
    pub error: &'static str,
    /// For a person.
    pub message: String,
}

impl QueryError {
    /// 404: no `kind` (patient, therapist, ...) with this id.
    pub fn not_found(kind: &str, id: &str) -> QueryError {
        QueryError {
            status: StatusCode::NOT_FOUND,
            error: "not_found",
            message: format!("no {kind} with id {id}"),
        }
    }

    /// 400: the request does not make sense.
    pub fn bad_request(message: impl Into<String>) -> QueryError {
        QueryError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            message: message.into(),
        }
    }

    /// 403: the caller's role may not read this.
    pub fn forbidden(message: impl Into<String>) -> QueryError {
        QueryError {
            status: StatusCode::FORBIDDEN,
            error: "forbidden",
            message: message.into(),
        }
    }

    /// 503: the processor's store did not answer (never the caller's fault).
    pub fn unavailable(error: impl std::fmt::Display) -> QueryError {
        QueryError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "unavailable",
            message: format!("the processor's store did not answer: {error}"),
        }
    }
}

impl From<sqlx::Error> for QueryError {
    fn from(error: sqlx::Error) -> QueryError {
        QueryError::unavailable(error)
    }
}

impl IntoResponse for QueryError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.error, "message": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

/// The longest id a query takes (the rule is [`crate::text::valid_id`]).
pub use crate::text::MAX_ID;

/// Checks an id from a path with the one id rule
/// ([`crate::text::valid_id`], the rule intake applies); anything else is
/// a 400 naming the id kind.
pub fn id(kind: &str, raw: &str) -> Result<String, QueryError> {
    if crate::text::valid_id(raw) {
        Ok(raw.to_string())
    } else {
        Err(QueryError::bad_request(format!(
            "a {kind} id is 1 to {MAX_ID} letters, digits, '-', '_' or '.'"
        )))
    }
}

/// What the guard needs.
#[derive(Clone)]
struct Guard {
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
}

/// `routes` behind the bearer-token guard: a request without a known
/// token is answered 401 before any handler runs; a known one carries its
/// [`Caller`] as an extension. Every answer is counted by status.
pub fn guarded(routes: Router, tokens: Arc<Tokens>, metrics: Arc<Metrics>) -> Router {
    routes.layer(axum::middleware::from_fn_with_state(
        Guard { tokens, metrics },
        guard,
    ))
}

async fn guard(State(guard): State<Guard>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(bearer);
    let caller = presented
        .and_then(|token| guard.tokens.caller(token))
        .cloned();
    let response = match caller {
        // Nothing the caller sends can help: say so, and what to set.
        None if guard.tokens.is_empty() => QueryError {
            status: StatusCode::UNAUTHORIZED,
            error: "unauthorized",
            message: "this processor has no query tokens configured: start it with QUERY_TOKENS=name:role:token (docs/queries.md)"
                .to_string(),
        }
        .into_response(),
        None => QueryError {
            status: StatusCode::UNAUTHORIZED,
            error: "unauthorized",
            message: "a query needs Authorization: Bearer <token> with a configured token"
                .to_string(),
        }
        .into_response(),
        Some(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
    };
    QueryAnswered {
        status: response.status().as_u16(),
    }
    .emit(&guard.metrics);
    response
}

/// The token of an `Authorization: Bearer <token>` value; the scheme's
/// name is matched without regard to case (RFC 9110, section 11.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Notes that `caller` read the personal data of `what` `id` (logged
/// without the data), after checking that the caller's role may.
pub fn personal_read(caller: &Caller, what: &str, id: &str) -> Result<(), QueryError> {
    if caller.role != Role::Staff {
        return Err(QueryError::forbidden(format!(
            "the {} role may not read personal data",
            caller.role.as_str()
        )));
    }
    tracing::info!(caller = caller.name, what, id, "personal data read");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_callers_and_bad_entries_are_refused_without_the_token() {
        let tokens =
            Tokens::parse("alice:staff:0123456789abcdef0123, bob:ops:fedcba9876543210fedc")
                .unwrap();
        assert_eq!(
            tokens
                .caller("0123456789abcdef0123")
                .map(|c| (&c.name[..], c.role)),
            Some(("alice", Role::Staff))
        );
        assert_eq!(
            tokens.caller("fedcba9876543210fedc").map(|c| c.role),
            Some(Role::Ops)
        );
        assert_eq!(tokens.caller("0123456789abcdef012"), None);
        assert_eq!(tokens.caller(""), None);
        assert!(!format!("{tokens:?}").contains("0123456789"));
        let error = Tokens::parse("carol:admin:0123456789abcdef0123").unwrap_err();
        assert!(
            error.contains("carol") && error.contains("admin"),
            "{error}"
        );
        assert!(!error.contains("0123456789"), "{error}");
        assert!(Tokens::parse("dave:ops:short").unwrap_err().contains("16"));
        assert!(Tokens::parse("").unwrap().is_empty());
    }

    #[test]
    fn the_bearer_scheme_is_matched_without_case() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "Bearer  abc"] {
            assert_eq!(bearer(value), Some("abc"), "{value}");
        }
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearerabc"), None);
    }

    #[test]
    fn ids_are_checked_before_any_lookup() {
        assert_eq!(id("patient", "p-1.a_2").unwrap(), "p-1.a_2");
        for bad in ["", "p 1", "p/1", "p%2F1", &"x".repeat(MAX_ID + 1)] {
            let error = id("patient", bad).unwrap_err();
            assert_eq!(error.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(error.message.contains("patient"), "{bad}");
        }
    }

    #[test]
    fn only_staff_reads_personal_data() {
        let ops = Caller {
            name: "bob".into(),
            role: Role::Ops,
        };
        let staff = Caller {
            name: "alice".into(),
            role: Role::Staff,
        };
        assert_eq!(
            personal_read(&ops, "patient", "p-1").unwrap_err().status,
            StatusCode::FORBIDDEN
        );
        personal_read(&staff, "patient", "p-1").unwrap();
    }
}
