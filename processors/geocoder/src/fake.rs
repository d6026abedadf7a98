//! Local stand-ins for Nominatim and OSRM that answer in their formats,
//! for tests and demos without network: string `lat`/`lon`, `code: "Ok"`,
//! table matrices. They can be told to fail (status with Retry-After,
//! slowness, malformed bodies) and record when each request arrived.
//!
//! Positions are a deterministic function of the query, travel is the
//! straight line with a detour, so a test can compute what to expect.

use crate::Position;
use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use psymatch_geo::great_circle_m;
use serde_json::json;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the fake does with a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Behaviour {
    /// Answers correctly.
    Answer,
    /// Answers this status with an optional Retry-After value.
    Status(u16, Option<String>),
    /// Answers correctly after this delay.
    Slow(Duration),
    /// Answers 200 with a body that is not the service's format.
    Malformed,
}

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// When (this process's clock).
    pub at: Instant,
    /// Path and query.
    pub target: String,
    /// The User-Agent header.
    pub user_agent: String,
}

#[derive(Default)]
struct FakeState {
    script: Mutex<VecDeque<Behaviour>>,
    default: Mutex<Option<Behaviour>>,
    arrivals: Mutex<Vec<Arrival>>,
}

/// A running fake of both services on one loopback port.
pub struct FakeUpstreams {
    /// Base URL (`http://127.0.0.1:port`), for NOMINATIM_URL and OSRM_URL.
    pub url: String,
    state: Arc<FakeState>,
}

/// A query containing this finds nothing (an unknown address).
pub const UNKNOWN_STREET: &str = "Nirgendwostraße";

impl FakeUpstreams {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> FakeUpstreams {
        FakeUpstreams::start_on("127.0.0.1:0")
            .await
            .expect("binding a loopback port")
    }

    /// Starts the fake on `address` (`psymatch-geocoder fake`, demos).
    pub async fn start_on(address: &str) -> std::io::Result<FakeUpstreams> {
        let listener = tokio::net::TcpListener::bind(address).await?;
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let state = Arc::new(FakeState::default());
        let app = Router::new()
            .route("/search", get(search))
            .route("/route/v1/{profile}/{coordinates}", get(route))
            .route("/table/v1/{profile}/{coordinates}", get(table))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeUpstreams { url, state })
    }

    /// The next requests get these behaviours, in order; then the default.
    pub fn script(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.state
            .script
            .lock()
            .expect("fake lock")
            .extend(behaviours);
    }

    /// What requests get once the script is used up (initially: answers).
    pub fn set_default(&self, behaviour: Behaviour) {
        *self.state.default.lock().expect("fake lock") = Some(behaviour);
    }

    /// Every request so far.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.state.arrivals.lock().expect("fake lock").clone()
    }

    /// Requests so far whose path starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.state
            .arrivals
            .lock()
            .expect("fake lock")
            .iter()
            .filter(|a| a.target.starts_with(prefix))
            .count()
    }
}

/// The position the fake gives a query: a hash of it spread over Germany.
pub fn position_of(query: &str) -> Position {
    // FNV-1a: stable across runs and platforms.
    let hash = query.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let unit = |bits: u64| (bits & 0xffff) as f64 / 65535.0;
    Position {
        latitude: 47.5 + 7.0 * unit(hash),
        longitude: 6.5 + 8.0 * unit(hash >> 16),
    }
}

/// The fake router's trip: straight line with a 1.3 detour at 50 km/h;
/// destinations west of 6° E are unreachable.
pub fn trip(from: Position, to: Position) -> Option<(f64, f64)> {
    if to.longitude < 6.0 {
        return None;
    }
    let distance = great_circle_m(from, to) * 1.3;
    Some((distance / (50.0 / 3.6), distance))
}

async fn arrive(state: &FakeState, target: String, headers: &HeaderMap) -> Option<Response> {
    let user_agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    state.arrivals.lock().expect("fake lock").push(Arrival {
        at: Instant::now(),
        target,
        user_agent,
    });
    let next = state.script.lock().expect("fake lock").pop_front();
    let behaviour = next
        .or_else(|| state.default.lock().expect("fake lock").clone())
        .unwrap_or(Behaviour::Answer);
    match behaviour {
        Behaviour::Answer => None,
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
        Behaviour::Malformed => Some((StatusCode::OK, "<html>Bad Gateway</html>").into_response()),
        Behaviour::Status(code, retry_after) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, "upstream says no").into_response();
            if let Some(value) = retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", value.parse().expect("a header value"));
            }
            Some(response)
        }
    }
}

async fn search(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let raw = query.unwrap_or_default();
    if let Some(response) = arrive(&state, format!("/search?{raw}"), &headers).await {
        return response;
    }
    let q = form_urlencoded::parse(raw.as_bytes())
        .find(|(name, _)| name == "q")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    if q.contains(UNKNOWN_STREET) {
        return axum::Json(json!([])).into_response();
    }
    let position = position_of(&q);
    axum::Json(json!([{
        "place_id": 1000,
        "licence": "Data © OpenStreetMap contributors, ODbL 1.0. https://osm.org/copyright",
        "lat": format!("{:.7}", position.latitude),
        "lon": format!("{:.7}", position.longitude),
        "class": "place",
        "type": "house",
        "place_rank": 30,
        "addresstype": "place",
        "display_name": "synthetic place",
        "address": {"country_code": "de"}
    }]))
    .into_response()
}

fn positions(coordinates: &str) -> Option<Vec<Position>> {
    coordinates
        .split(';')
        .map(|pair| {
            let (lon, lat) = pair.split_once(',')?;
            Some(Position {
                latitude: lat.parse().ok()?,
                longitude: lon.parse().ok()?,
            })
        })
        .collect()
}

fn invalid(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"code": "InvalidQuery", "message": message})),
    )
        .into_response()
}

async fn route(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Path((profile, coordinates)): Path<(String, String)>,
) -> Response {
    if let Some(response) = arrive(
        &state,
        format!("/route/v1/{profile}/{coordinates}"),
        &headers,
    )
    .await
    {
        return response;
    }
    let Some([from, to]) = positions(&coordinates)
        .as_deref()
        .map(<[Position]>::to_vec)
        .and_then(|v| <[Position; 2]>::try_from(v).ok())
    else {
        return invalid("Query string malformed close to position 0");
    };
    match trip(from, to) {
        None => axum::Json(json!({"code": "NoRoute", "message": "Impossible route between points"})).into_response(),
        Some((duration, distance)) => axum::Json(json!({
            "code": "Ok",
            "routes": [{"duration": duration, "distance": distance, "weight": duration, "weight_name": "routability", "legs": []}],
            "waypoints": [
                {"location": [from.longitude, from.latitude], "name": ""},
                {"location": [to.longitude, to.latitude], "name": ""}
            ]
        }))
        .into_response(),
    }
}

async fn table(
    State(state): State<Arc<FakeState>>,
    headers: HeaderMap,
    Path((profile, coordinates)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let target = format!(
        "/table/v1/{profile}/{coordinates}?{}",
        query.clone().unwrap_or_default()
    );
    if let Some(response) = arrive(&state, target, &headers).await {
        return response;
    }
    let Some(all) = positions(&coordinates) else {
        return invalid("Query string malformed close to position 0");
    };
    let Some(from) = all.first().copied() else {
        return invalid("no coordinates");
    };
    let durations: Vec<Option<f64>> = all[1..]
        .iter()
        .map(|to| trip(from, *to).map(|t| t.0))
        .collect();
    let distances: Vec<Option<f64>> = all[1..]
        .iter()
        .map(|to| trip(from, *to).map(|t| t.1))
        .collect();
    axum::Json(json!({
        "code": "Ok",
        "durations": [durations],
        "distances": [distances],
        "sources": [{"location": [from.longitude, from.latitude]}],
        "destinations": all[1..].iter().map(|p| json!({"location": [p.longitude, p.latitude]})).collect::<Vec<_>>()
    }))
    .into_response()
}
