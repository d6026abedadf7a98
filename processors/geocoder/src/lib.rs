//! The geocoder processor: positions of addresses and travel times, cached
//! in PostgreSQL, with Nominatim throttled for the whole deployment and
//! offline fallbacks when the upstream services fail.
//!
//! Consumes `geocoding-requests`, produces `geocoding-results` (each result
//! keyed by and carrying the request's id and correlation id).

pub mod address;
pub mod breaker;
pub mod cache;
pub mod config;
pub mod fake;
pub mod fallback;
pub mod metrics;
pub mod nominatim;
pub mod osrm;
pub mod upstream;

use address::Address;
use config::GeocoderConfig;
use metrics::GeoMetrics;
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::processor::{BatchContext, Context, Incoming, ProcessError, Processor};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use sqlx::PgPool;
use upstream::{Upstream, UpstreamError};

pub use psymatch_geo::Position;

/// How exact a geocode is (`Precision` in the result schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// The building.
    Address,
    /// The street.
    Street,
    /// The postcode area's centre.
    Postcode,
    /// The city.
    City,
}

impl Precision {
    /// The schema's symbol.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Address => "ADDRESS",
            Precision::Street => "STREET",
            Precision::Postcode => "POSTCODE",
            Precision::City => "CITY",
        }
    }

    /// From the schema's symbol.
    pub fn parse(symbol: &str) -> Option<Precision> {
        match symbol {
            "ADDRESS" => Some(Precision::Address),
            "STREET" => Some(Precision::Street),
            "POSTCODE" => Some(Precision::Postcode),
            "CITY" => Some(Precision::City),
            _ => None,
        }
    }
}

/// Mode of transport (`psymatch.TransportMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Mode {
    /// By car.
    Car,
    /// By bus and train: no OSRM profile, estimated.
    PublicTransport,
    /// On foot.
    Walking,
    /// By bicycle.
    Bicycle,
}

/// Where a geocode came from (`GeocodeSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Asked Nominatim now.
    Nominatim,
    /// From the cache.
    Cache,
    /// The bundled postcode centroids.
    OfflinePostcode,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Nominatim => "NOMINATIM",
            Source::Cache => "CACHE",
            Source::OfflinePostcode => "OFFLINE_POSTCODE",
        }
    }
}

/// The answer to a geocode request.
#[derive(Debug, Clone, PartialEq)]
pub enum Geocoded {
    /// A position.
    Found {
        /// Where.
        position: Position,
        /// How exact.
        precision: Precision,
        /// From where.
        source: Source,
        /// Why a fallback answered.
        note: Option<String>,
    },
    /// No position.
    Failed {
        /// Stable error code.
        code: ErrorCode,
        /// Why, for a person.
        reason: String,
    },
}

/// How a travel time was obtained (`TravelMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Routed with the mode's own profile.
    Routed,
    /// Routed with another profile and scaled.
    OtherProfile,
    /// Estimated from the straight line.
    StraightLine,
}

/// Travel to one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct Travel {
    /// The destination's id.
    pub destination_id: String,
    /// Seconds, `None` when unreachable.
    pub duration: Option<f64>,
    /// Metres.
    pub distance: f64,
    /// How it was obtained.
    pub method: Method,
}

impl Travel {
    fn to_json(&self) -> Json {
        json!({
            "destination_id": self.destination_id,
            "duration_seconds": self.duration,
            "distance_meters": self.distance,
            "approximate": self.method != Method::Routed,
            "method": match self.method {
                Method::Routed => "ROUTED",
                Method::OtherProfile => "OTHER_PROFILE",
                Method::StraightLine => "STRAIGHT_LINE",
            },
        })
    }
}

/// A destination of a travel-time request.
#[derive(Debug, Clone, Deserialize)]
pub struct Destination {
    /// Id the result refers back to.
    pub id: String,
    /// Where.
    pub position: Position,
}

/// At most this many destinations per request: more is a bulk job the
/// requester should split.
pub const MAX_DESTINATIONS: usize = 5_000;

/// The geocoder: its configuration, upstream clients and metrics.
pub struct Geocoder {
    config: GeocoderConfig,
    nominatim: Upstream,
    osrm: Upstream,
    metrics: GeoMetrics,
}

impl Geocoder {
    /// A geocoder with `config`.
    pub fn new(config: GeocoderConfig) -> Geocoder {
        let metrics = GeoMetrics::new();
        Geocoder {
            nominatim: Upstream::new(
                config.nominatim.clone(),
                &config.user_agent,
                metrics.clone(),
            ),
            osrm: Upstream::new(config.osrm.clone(), &config.user_agent, metrics.clone()),
            config,
            metrics,
        }
    }

    /// Its metrics.
    pub fn metrics(&self) -> &GeoMetrics {
        &self.metrics
    }

    /// The Nominatim client.
    pub fn nominatim(&self) -> &Upstream {
        &self.nominatim
    }

    fn lookup(&self, cache: &str, hit: bool) {
        let outcome = if hit { "hit" } else { "miss" };
        self.metrics
            .cache_lookups
            .with_label_values(&[cache, outcome])
            .inc();
    }

    /// The position of `address`: from the cache, else Nominatim (and then
    /// cached), else the postcode's centroid. Errors only when the shared
    /// rate limit or the cache cannot be reached (retry the record).
    pub async fn geocode(&self, pool: &PgPool, address: &Address) -> Result<Geocoded, sqlx::Error> {
        if let Err(reason) = address.validate() {
            return Ok(Geocoded::Failed {
                code: ErrorCode::InvalidCommand,
                reason,
            });
        }
        let cached = cache::geocode(pool, &address.key()).await?;
        Ok(self.geocode_with(pool, address, cached).await?.0)
    }

    /// [`Geocoder::geocode`] with the cache already consulted (`cached`:
    /// the unexpired entry, if any). Also returns what the cache holds for
    /// the address afterwards, when that changed.
    pub async fn geocode_with(
        &self,
        pool: &PgPool,
        address: &Address,
        cached: Option<cache::CachedGeocode>,
    ) -> Result<(Geocoded, Option<cache::CachedGeocode>), sqlx::Error> {
        if let Err(reason) = address.validate() {
            let failed = Geocoded::Failed {
                code: ErrorCode::InvalidCommand,
                reason,
            };
            return Ok((failed, None));
        }
        let key = address.key();
        self.lookup("geocode", cached.is_some());
        let mut stored = None;
        let note = match cached {
            Some(Some((position, precision))) => {
                let found = Geocoded::Found {
                    position,
                    precision,
                    source: Source::Cache,
                    note: None,
                };
                return Ok((found, None));
            }
            Some(None) => "Nominatim knows no such address (cached answer)".to_string(),
            None if self.config.nominatim.offline() => {
                "no Nominatim configured (NOMINATIM_URL=offline)".to_string()
            }
            None => {
                let path = nominatim::search_path(&address.query());
                match self
                    .nominatim
                    .get(pool, &path, nominatim::parse_search)
                    .await
                {
                    Ok(Some(found)) => {
                        let answer = Some((found.position, found.precision));
                        cache::put_geocode(pool, &key, answer, self.config.geocode_ttl).await?;
                        let found = Geocoded::Found {
                            position: found.position,
                            precision: found.precision,
                            source: Source::Nominatim,
                            note: None,
                        };
                        return Ok((found, Some(answer)));
                    }
                    Ok(None) => {
                        cache::put_geocode(pool, &key, None, self.config.geocode_ttl).await?;
                        stored = Some(None);
                        "Nominatim knows no such address".to_string()
                    }
                    Err(UpstreamError::Database(error)) => return Err(error),
                    // Not cached: the next request asks Nominatim again.
                    Err(error) => error.to_string(),
                }
            }
        };
        let postcode = address.postcode.trim();
        let answer = match psymatch_geo::postcodes().get(postcode) {
            Some(position) => {
                self.metrics
                    .fallbacks
                    .with_label_values(&["postcode_centroid"])
                    .inc();
                Geocoded::Found {
                    position: *position,
                    precision: Precision::Postcode,
                    source: Source::OfflinePostcode,
                    note: Some(format!("{note}; centre of postcode {postcode}")),
                }
            }
            None => Geocoded::Failed {
                code: ErrorCode::AddressNotFound,
                reason: format!("{note}, and postcode {postcode} is not in the offline dataset"),
            },
        };
        Ok((answer, stored))
    }

    /// Travel from `origin` to every destination by `mode`: cached, else
    /// routed by OSRM (and then cached), else estimated from the straight
    /// line. Errors only when the cache cannot be reached.
    pub async fn travel_times(
        &self,
        pool: &PgPool,
        mode: Mode,
        origin: Position,
        destinations: &[Destination],
    ) -> Result<Vec<Travel>, sqlx::Error> {
        let profile = self.config.profiles[&mode].as_str();
        let routed = if mode == Mode::PublicTransport {
            Method::OtherProfile
        } else {
            Method::Routed
        };
        let scale = if routed == Method::OtherProfile {
            self.config.public_transport_factor
        } else {
            1.0
        };
        let origin_key = cache::position_key(origin);
        let keys: Vec<String> = destinations
            .iter()
            .map(|d| cache::position_key(d.position))
            .collect();
        let mut known = cache::travel_times(pool, profile, &origin_key, &keys).await?;
        let hits = keys.iter().filter(|k| known.contains_key(*k)).count();
        self.metrics
            .cache_lookups
            .with_label_values(&["travel_time", "hit"])
            .inc_by(hits as u64);
        self.metrics
            .cache_lookups
            .with_label_values(&["travel_time", "miss"])
            .inc_by((keys.len() - hits) as u64);
        // Each distinct uncached position once.
        let mut missing: Vec<(String, Position)> = Vec::new();
        for (key, destination) in keys.iter().zip(destinations) {
            if !known.contains_key(key) && !missing.iter().any(|(k, _)| k == key) {
                missing.push((key.clone(), destination.position));
            }
        }
        // Without an OSRM every time is estimated.
        let mut routing_failed = self.config.osrm.offline();
        for chunk in missing.chunks(self.config.table_max) {
            if routing_failed {
                break;
            }
            match self.route(pool, profile, origin, chunk).await {
                Ok(trips) => {
                    cache::put_travel_times(
                        pool,
                        profile,
                        &origin_key,
                        &trips,
                        self.config.travel_time_ttl,
                    )
                    .await?;
                    known.extend(trips);
                }
                Err(UpstreamError::Database(error)) => return Err(error),
                Err(error) => {
                    tracing::warn!(%error, "routing failed; estimating from straight lines");
                    routing_failed = true;
                }
            }
        }
        Ok(keys
            .iter()
            .zip(destinations)
            .map(|(key, destination)| match known.get(key) {
                Some((duration, distance)) => Travel {
                    destination_id: destination.id.clone(),
                    duration: duration.map(|d| d * scale),
                    distance: *distance,
                    method: routed,
                },
                None => {
                    self.metrics
                        .fallbacks
                        .with_label_values(&["straight_line"])
                        .inc();
                    let (distance, duration) =
                        fallback::straight_line(mode, origin, destination.position);
                    Travel {
                        destination_id: destination.id.clone(),
                        duration: Some(duration),
                        distance,
                        method: Method::StraightLine,
                    }
                }
            })
            .collect())
    }

    /// Routes one chunk of destinations: `/route` for one, `/table` for more.
    async fn route(
        &self,
        pool: &PgPool,
        profile: &str,
        origin: Position,
        chunk: &[(String, Position)],
    ) -> Result<Vec<(String, cache::CachedTrip)>, UpstreamError> {
        if let [(key, position)] = chunk {
            let path = osrm::route_path(profile, origin, *position);
            let trip = self.osrm.get(pool, &path, osrm::parse_route).await?;
            return Ok(vec![(key.clone(), (trip.duration, trip.distance))]);
        }
        let positions: Vec<Position> = chunk.iter().map(|(_, p)| *p).collect();
        let path = osrm::table_path(profile, origin, &positions);
        let rows = self
            .osrm
            .get(pool, &path, |body| osrm::parse_table(body, positions.len()))
            .await?;
        Ok(chunk
            .iter()
            .zip(rows)
            .map(|((key, position), (duration, distance))| {
                // Older OSRM answers durations only: the distance is then the
                // straight line's with its detour.
                let distance = distance.unwrap_or_else(|| {
                    let (detour, _) = fallback::detour_and_speed(Mode::Car);
                    psymatch_geo::great_circle_m(origin, *position) * detour
                });
                (key.clone(), (duration, distance))
            })
            .collect())
    }
}

#[derive(Deserialize)]
struct GeocodeRequest {
    request_id: String,
}

/// The patient a request id `patient-<patient id>-<n>` is about.
fn patient_of(request_id: &str) -> Option<&str> {
    request_id
        .strip_prefix("patient-")
        .and_then(|rest| rest.rsplit_once('-'))
        .map(|(patient, _)| patient)
}

/// The address of a geocoding request: in clear (a practice's), or sealed
/// with the patient's key (`None` once the patient is erased: the key is
/// gone and there is nothing left to geocode).
async fn request_address(
    db: &mut sqlx::PgConnection,
    payload: &serde_json::Value,
) -> Result<Option<Address>, ProcessError> {
    let invalid = |reason: String| ProcessError::Invalid {
        code: ErrorCode::InvalidCommand,
        reason,
    };
    let value = match payload["sealed_address"].as_str() {
        None => payload["address"].clone(),
        Some(sealed) => {
            let request = payload["request_id"].as_str().unwrap_or_default();
            let patient = patient_of(request).ok_or_else(|| {
                invalid(format!(
                    "a sealed address needs a request id patient-<id>-<n>, not {request}"
                ))
            })?;
            match psymatch_runtime::sealed::open_stored(db, patient, sealed).await? {
                Ok(value) => value,
                Err(psymatch_runtime::sealed::SealError::NoKey(_)) => return Ok(None),
                Err(error) => return Err(invalid(error.to_string())),
            }
        }
    };
    serde_json::from_value(value)
        .map(Some)
        .map_err(|error| invalid(format!("the address: {error}")))
}

#[derive(Deserialize)]
struct TravelRequest {
    request_id: String,
    mode: Mode,
    origin: Position,
    destinations: Vec<Destination>,
}

#[derive(Deserialize)]
struct PlainRequest {
    request_id: String,
}

const RESULTS: &str = "geocoding-results";

/// The cached geocodes of a batch's addresses, looked up once per batch.
#[derive(Default)]
struct Known {
    /// Whether the batch's lookup ran (else each record looks up its own).
    loaded: bool,
    entries: std::collections::HashMap<[u8; 32], cache::CachedGeocode>,
}

fn failed(
    ctx: &mut Context<'_>,
    request_id: &str,
    code: ErrorCode,
    reason: &str,
) -> Result<(), ProcessError> {
    ctx.emit(
        RESULTS,
        "geocoding.failed",
        json!({"request_id": request_id, "error_code": code.as_str(), "reason": reason}),
    )
}

fn parse<T: serde::de::DeserializeOwned>(record: &Incoming) -> Result<T, ProcessError> {
    serde_json::from_value(record.payload.clone()).map_err(|error| ProcessError::Invalid {
        code: ErrorCode::InvalidCommand,
        reason: format!("{} does not fit its payload: {error}", record.event_type()),
    })
}

impl Processor for Geocoder {
    fn name(&self) -> &'static str {
        "geocoder"
    }

    fn inputs(&self) -> Vec<&'static str> {
        vec!["geocoding-requests"]
    }

    fn collectors(&self) -> Vec<Box<dyn prometheus::core::Collector>> {
        self.metrics.collectors()
    }

    /// Looks up the cached geocodes of every address of the batch in one
    /// query.
    async fn begin_batch(
        &self,
        batch: &mut BatchContext<'_>,
        records: &[&Incoming],
    ) -> Result<(), ProcessError> {
        let mut keys: Vec<[u8; 32]> = Vec::new();
        for record in records
            .iter()
            .filter(|r| r.event_type() == "geocoding.geocode_address")
        {
            // A request that cannot be read fails again, with its reason, in `process`.
            if let Ok(Some(address)) = request_address(batch.db(), &record.payload).await {
                keys.push(address.key());
            }
        }
        if keys.is_empty() {
            return Ok(());
        }
        let found = cache::geocodes(batch.db(), &keys).await?;
        let known = batch.scratch::<Known>();
        known.loaded = true;
        known.entries = found;
        Ok(())
    }

    async fn process(&self, ctx: &mut Context<'_>, record: &Incoming) -> Result<(), ProcessError> {
        let pool = ctx.pool().clone();
        match record.event_type() {
            "geocoding.geocode_address" => {
                let request: GeocodeRequest = parse(record)?;
                let Some(address) = request_address(ctx.db(), &record.payload).await? else {
                    tracing::info!("a geocoding request of an erased patient; nothing to do");
                    return Ok(());
                };
                let key = address.key();
                if let Some(patient) = patient_of(&request.request_id) {
                    // Erasure removes what was cached for the patient.
                    sqlx::query(
                        "INSERT INTO geocoder.patient_addresses (patient_id, address_key) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(patient)
                    .bind(&key[..])
                    .execute(ctx.db())
                    .await?;
                }
                let known = ctx.scratch::<Known>();
                let cached = if known.loaded {
                    known.entries.get(&key).copied()
                } else {
                    cache::geocode(&pool, &key).await?
                };
                let (answer, stored) = self.geocode_with(&pool, &address, cached).await?;
                if let Some(stored) = stored {
                    // A later request of the batch for the same address hits.
                    ctx.scratch::<Known>().entries.insert(key, stored);
                }
                match answer {
                    Geocoded::Found {
                        position,
                        precision,
                        source,
                        note,
                    } => ctx.emit(
                        RESULTS,
                        "geocoding.address_geocoded",
                        json!({
                            "request_id": request.request_id,
                            "position": position,
                            "precision": precision.as_str(),
                            "source": source.as_str(),
                            "note": note,
                        }),
                    ),
                    Geocoded::Failed { code, reason } => {
                        failed(ctx, &request.request_id, code, &reason)
                    }
                }
            }
            "geocoding.compute_travel_times" => {
                let request: TravelRequest = parse(record)?;
                let bad = std::iter::once(("origin", &request.origin))
                    .chain(
                        request
                            .destinations
                            .iter()
                            .map(|d| (d.id.as_str(), &d.position)),
                    )
                    .find(|(_, position)| !position.is_valid());
                if let Some((what, position)) = bad {
                    let reason = format!(
                        "position of {what} ({}, {}) is not a latitude and longitude",
                        position.latitude, position.longitude
                    );
                    return failed(ctx, &request.request_id, ErrorCode::InvalidCommand, &reason);
                }
                if request.destinations.len() > MAX_DESTINATIONS {
                    let reason = format!(
                        "{} destinations; at most {MAX_DESTINATIONS} per request",
                        request.destinations.len()
                    );
                    return failed(ctx, &request.request_id, ErrorCode::InvalidCommand, &reason);
                }
                let results = self
                    .travel_times(&pool, request.mode, request.origin, &request.destinations)
                    .await?;
                let mode = record.payload["mode"].clone();
                ctx.emit(
                    RESULTS,
                    "geocoding.travel_times_computed",
                    json!({
                        "request_id": request.request_id,
                        "mode": mode,
                        "results": results.iter().map(Travel::to_json).collect::<Vec<_>>(),
                    }),
                )
            }
            "geocoding.cleanup_cache" => {
                let request: PlainRequest = parse(record)?;
                let (geocodes, travel) = cache::cleanup(ctx.db()).await?;
                self.metrics
                    .cache_removed
                    .with_label_values(&["geocode", "expired"])
                    .inc_by(geocodes);
                self.metrics
                    .cache_removed
                    .with_label_values(&["travel_time", "expired"])
                    .inc_by(travel);
                tracing::info!(
                    geocodes,
                    travel_times = travel,
                    "expired cache entries removed"
                );
                ctx.emit(
                    RESULTS,
                    "geocoding.cache_cleaned",
                    json!({
                        "request_id": request.request_id,
                        "geocodes_removed": geocodes.min(i32::MAX as u64),
                        "travel_times_removed": travel.min(i32::MAX as u64),
                    }),
                )
            }
            "geocoding.forget_address" => {
                #[derive(Deserialize)]
                struct Forget {
                    request_id: String,
                    address: Option<Address>,
                }
                let request: Forget = parse(record)?;
                // An erased patient's addresses: the ones geocoded for them.
                let keys: Vec<Vec<u8>> = match (&request.address, request.request_id.strip_prefix("erase-")) {
                    (Some(address), _) => vec![address.key().to_vec()],
                    (None, Some(patient)) => sqlx::query_scalar(
                        "DELETE FROM geocoder.patient_addresses WHERE patient_id = $1 RETURNING address_key",
                    )
                    .bind(patient)
                    .fetch_all(ctx.db())
                    .await?,
                    (None, None) => {
                        return Err(ProcessError::Invalid {
                            code: ErrorCode::InvalidCommand,
                            reason: "forget_address needs an address or a request id erase-<patient id>".into(),
                        });
                    }
                };
                let (mut geocodes, mut travel) = (0, 0);
                for key in keys {
                    let key: [u8; 32] = key.try_into().unwrap_or([0; 32]);
                    let (g, t) = cache::forget(ctx.db(), &key).await?;
                    geocodes += g;
                    travel += t;
                }
                tracing::info!(
                    geocodes,
                    travel_times = travel,
                    "cache entries of an address forgotten"
                );
                self.metrics
                    .cache_removed
                    .with_label_values(&["geocode", "erased"])
                    .inc_by(geocodes);
                self.metrics
                    .cache_removed
                    .with_label_values(&["travel_time", "erased"])
                    .inc_by(travel);
                Ok(())
            }
            other => Err(ProcessError::Invalid {
                code: ErrorCode::InvalidCommand,
                reason: format!("the geocoder does not handle {other}"),
            }),
        }
    }
}
