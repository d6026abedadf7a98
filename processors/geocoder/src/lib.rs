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
mod processor;
pub mod upstream;

mod events;

use address::Address;
use config::GeocoderConfig;
use events::{CacheLookedUp, FallbackUsed};
use metrics::GeoMetrics;
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::events::Event;
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
        CacheLookedUp {
            cache,
            hit,
            count: 1,
        }
        .emit(&self.metrics);
    }

    /// The position of `address`: from the cache, else Nominatim (and then
    /// cached), else the postcode's centroid. Errors only when the shared
    /// rate limit or the cache cannot be reached (retry the record). At
    /// the machine's time: for tools and tests; the processor decides at
    /// its batch's time ([`Geocoder::geocode_with`]).
    pub async fn geocode(&self, pool: &PgPool, address: &Address) -> Result<Geocoded, sqlx::Error> {
        let now = chrono::Utc::now();
        if let Err(reason) = address.validate() {
            return Ok(Geocoded::Failed {
                code: ErrorCode::InvalidCommand,
                reason,
            });
        }
        let cached = cache::geocode(pool, &address.key(), now).await?;
        Ok(self.geocode_with(pool, address, cached, now).await?.0)
    }

    /// [`Geocoder::geocode`] with the cache already consulted (`cached`:
    /// the entry unexpired at `now`, if any). Also returns what the cache
    /// holds for the address afterwards, when that changed.
    pub async fn geocode_with(
        &self,
        pool: &PgPool,
        address: &Address,
        cached: Option<cache::CachedGeocode>,
        now: chrono::DateTime<chrono::Utc>,
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
                        cache::put_geocode(pool, &key, answer, self.config.geocode_ttl, now)
                            .await?;
                        let found = Geocoded::Found {
                            position: found.position,
                            precision: found.precision,
                            source: Source::Nominatim,
                            note: None,
                        };
                        return Ok((found, Some(answer)));
                    }
                    Ok(None) => {
                        cache::put_geocode(pool, &key, None, self.config.geocode_ttl, now).await?;
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
                FallbackUsed {
                    kind: "postcode_centroid",
                }
                .emit(&self.metrics);
                Geocoded::Found {
                    position: *position,
                    precision: Precision::Postcode,
                    source: Source::OfflinePostcode,
                    note: Some(format!("{note}; centre of postcode {postcode}")),
                }
            }
            None => Geocoded::Failed {
                code: ErrorCode::AddressNotFound,
                reason: format!("{note}, and the postcode is not in the offline dataset"),
            },
        };
        Ok((answer, stored))
    }

    /// Travel from `origin` to every destination by `mode`: cached, else
    /// routed by OSRM (and then cached), else estimated from the straight
    /// line. Errors only when the cache cannot be reached. The cache's
    /// entries are read and written at `now`.
    pub async fn travel_times(
        &self,
        pool: &PgPool,
        mode: Mode,
        origin: Position,
        destinations: &[Destination],
        now: chrono::DateTime<chrono::Utc>,
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
        let mut known = cache::travel_times(pool, profile, &origin_key, &keys, now).await?;
        let hits = keys.iter().filter(|k| known.contains_key(*k)).count();
        for (hit, count) in [(true, hits), (false, keys.len() - hits)] {
            let cache = "travel_time";
            let count = count as u64;
            CacheLookedUp { cache, hit, count }.emit(&self.metrics);
        }
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
                        now,
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
                    FallbackUsed {
                        kind: "straight_line",
                    }
                    .emit(&self.metrics);
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
