//! A local stand-in for the doctor search, answering like the real one:
//! the start page sets a session cookie, `POST /api/data` wants that
//! cookie, the Basic credential and the `req-val` token of the coordinates
//! (else a bare HTTP 500, as the site answers), and lists at most 50
//! practices within the radius with `moreResults` when there are more.
//! Tests change its directory between runs, make it fail, and read when
//! requests arrived.

use crate::kbv;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Practices per answer, as the real search.
pub const PAGE: usize = 50;

#[derive(Default)]
struct FakeState {
    /// Practices by id: the `arztPraxisDatas` entries, with `lat`/`lon`.
    directory: Mutex<BTreeMap<String, Value>>,
    credential: String,
    sessions: Mutex<Vec<String>>,
    next_session: AtomicU64,
    /// The next this many searches answer HTTP 500.
    failures: AtomicUsize,
    /// (when, path, whether it was accepted).
    arrivals: Mutex<Vec<(Instant, String, bool)>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

/// A running fake doctor search.
pub struct FakeKbv {
    /// Base URL, for KBV_URL.
    pub url: String,
    state: Arc<FakeState>,
}

/// A synthetic practice at a position; `n` makes names and ids unique.
pub fn practice(n: usize, latitude: f64, longitude: f64) -> Value {
    let female = n.is_multiple_of(2);
    json!({
        "id": format!("fake-{n:05}"),
        "anrede": if female { "Frau" } else { "Herr" },
        "titel": if n.is_multiple_of(3) { "Dr." } else { "" },
        "vorname": format!("Vorname{n}"),
        "name": format!("Nachname{n}"),
        "geschlecht": if female { "W" } else { "M" },
        "strasse": "Teststraße",
        "hausnummer": (n % 90 + 1).to_string(),
        "plz": "10115",
        "ort": "Berlin",
        "tel": format!("030 {:07}", 1_000_000 + n),
        "fax": "",
        "email": format!("praxis{n}@example.org"),
        "web": "",
        "lat": latitude,
        "lon": longitude,
        "keineSprechzeiten": false,
        "fs": ["Englisch"],
        "ag": [{"key": "12", "value": "Psychologische Psychotherapeutin"}],
        "psy": [{"key": "V", "value": "Verhaltenstherapie"}],
        "tsz": [{"d": "Montag", "t": "", "tszDesTyps": [
            {"typ": "Telefonische Erreichbarkeit", "sprechzeiten": [{"zeit": "08:00-08:50"}]},
            {"typ": "Psychotherapeutische Sprechstunde", "sprechzeiten": [{"zeit": "09:00-12:00"}]}
        ]}]
    })
}

impl FakeKbv {
    /// Starts the fake on a free loopback port; `credential` is what it
    /// expects after "Basic ".
    pub async fn start(credential: &str) -> FakeKbv {
        FakeKbv::start_on("127.0.0.1:0", credential)
            .await
            .expect("binding a loopback port")
    }

    /// Starts the fake on `address`.
    pub async fn start_on(address: &str, credential: &str) -> std::io::Result<FakeKbv> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(FakeState {
            credential: credential.to_string(),
            ..FakeState::default()
        });
        let app = Router::new()
            .route("/", get(start_page))
            .route("/api/data", post(search))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeKbv { url, state })
    }

    /// Adds or replaces practices (by `id`).
    pub fn put(&self, practices: impl IntoIterator<Item = Value>) {
        let mut directory = self.state.directory.lock().expect("fake lock");
        for practice in practices {
            let id = practice["id"]
                .as_str()
                .expect("a practice has an id")
                .to_string();
            directory.insert(id, practice);
        }
    }

    /// Removes a practice.
    pub fn remove(&self, id: &str) {
        self.state.directory.lock().expect("fake lock").remove(id);
    }

    /// Changes one field of a practice.
    pub fn change(&self, id: &str, field: &str, value: Value) {
        if let Some(practice) = self.state.directory.lock().expect("fake lock").get_mut(id) {
            practice[field] = value;
        }
    }

    /// The next `n` searches answer HTTP 500.
    pub fn fail_next(&self, n: usize) {
        self.state.failures.store(n, Ordering::SeqCst);
    }

    /// Requests so far: (when, path, accepted).
    pub fn arrivals(&self) -> Vec<(Instant, String, bool)> {
        self.state.arrivals.lock().expect("fake lock").clone()
    }

    /// The most searches that were ever answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

async fn start_page(State(state): State<Arc<FakeState>>) -> Response {
    let session = format!("s{}", state.next_session.fetch_add(1, Ordering::SeqCst));
    state
        .sessions
        .lock()
        .expect("fake lock")
        .push(session.clone());
    state
        .arrivals
        .lock()
        .expect("fake lock")
        .push((Instant::now(), "/".into(), true));
    (
        [(
            "set-cookie",
            format!("JSESSIONID={session}; Path=/; HttpOnly"),
        )],
        axum::response::Html(
            "<html><head><title>Arztsuche</title></head><body>Arztsuche</body></html>",
        ),
    )
        .into_response()
}

fn refused(state: &FakeState) -> Response {
    state
        .arrivals
        .lock()
        .expect("fake lock")
        .push((Instant::now(), "/api/data".into(), false));
    StatusCode::INTERNAL_SERVER_ERROR.into_response()
}

async fn search(State(state): State<Arc<FakeState>>, headers: HeaderMap, body: String) -> Response {
    let flight = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(flight, Ordering::SeqCst);
    let response = answer(&state, &headers, &body);
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    response
}

fn answer(state: &FakeState, headers: &HeaderMap, body: &str) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let session_ok = {
        let sessions = state.sessions.lock().expect("fake lock");
        header("cookie")
            .split(';')
            .filter_map(|c| c.trim().strip_prefix("JSESSIONID="))
            .any(|s| sessions.iter().any(|known| known == s))
    };
    let auth_ok = header("authorization") == format!("Basic {}", state.credential);
    let Ok(request) = serde_json::from_str::<Value>(body) else {
        return refused(state);
    };
    let (Some(latitude), Some(longitude), Some(radius)) = (
        request["lat"].as_f64(),
        request["lon"].as_f64(),
        request["r"].as_f64(),
    ) else {
        return refused(state);
    };
    let token_ok = header("req-val") == kbv::request_token(latitude, longitude);
    let failing = state
        .failures
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if !(session_ok && auth_ok && token_ok) || failing {
        return refused(state);
    }
    state
        .arrivals
        .lock()
        .expect("fake lock")
        .push((Instant::now(), "/api/data".into(), true));
    let directory = state.directory.lock().expect("fake lock");
    let mut within: Vec<(f64, Value)> = directory
        .values()
        .filter_map(|p| {
            let (lat, lon) = (p["lat"].as_f64()?, p["lon"].as_f64()?);
            let dy = (lat - latitude) * 111.2;
            let dx = (lon - longitude) * 111.2 * latitude.to_radians().cos();
            let km = (dx * dx + dy * dy).sqrt();
            (km <= radius).then(|| {
                let mut entry = p.clone();
                entry["distance"] = json!((km * 1000.0).round());
                (km, entry)
            })
        })
        .collect();
    within.sort_by(|a, b| a.0.total_cmp(&b.0));
    let more = within.len() > PAGE;
    let page: Vec<Value> = within.into_iter().take(PAGE).map(|(_, p)| p).collect();
    axum::Json(json!({"arztPraxisDatas": page, "moreResults": more})).into_response()
}
