//! The geocoder on the stream: requests decoded, each answered from the
//! cache or the upstreams, the results published; the sealed address of a
//! patient read with its key.

use super::{Destination, Geocoded, Geocoder, MAX_DESTINATIONS, Mode, Position, Travel, cache};
use crate::address::Address;
use crate::events::CacheEntriesRemoved;
use psymatch_geo::subject::{Kind, Subject};
use psymatch_runtime::errors::ErrorCode;
use psymatch_runtime::events::Event;
use psymatch_runtime::processor::{BatchContext, Context, Incoming, ProcessError, Processor};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
pub(crate) struct GeocodeRequest {
    request_id: String,
}

/// The patient whose home a request asks for, by its subject.
pub(crate) fn patient_of(payload: &serde_json::Value) -> Option<String> {
    Subject::of(payload)
        .filter(|s| s.kind == Kind::PatientHome)
        .map(|s| s.id)
}

/// The subject of a request, copied onto its result as it came.
fn subject(record: &Incoming) -> serde_json::Value {
    record.payload["subject"].clone()
}

/// The address of a geocoding request: in clear (a practice's), or sealed
/// with the patient's key (`None` once the patient is erased: the key is
/// gone and there is nothing left to geocode).
pub(crate) async fn request_address(
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
            let patient = patient_of(payload).ok_or_else(|| {
                invalid(format!(
                    "a sealed address is a patient's home: request {request} names no patient"
                ))
            })?;
            match psymatch_runtime::sealed::open_stored(db, &patient, sealed).await? {
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
pub(crate) struct TravelRequest {
    request_id: String,
    mode: Mode,
    origin: Position,
    destinations: Vec<Destination>,
}

#[derive(Deserialize)]
pub(crate) struct PlainRequest {
    request_id: String,
}

pub(crate) const RESULTS: &str = "geocoding-results";

/// Why a travel-time request cannot be answered: a position that is not
/// one, or more destinations than one request may carry.
fn travel_request_refused(request: &TravelRequest) -> Option<String> {
    let bad = std::iter::once(("origin", &request.origin))
        .chain(
            request
                .destinations
                .iter()
                .map(|d| (d.id.as_str(), &d.position)),
        )
        .find(|(_, position)| !position.is_valid());
    if let Some((what, position)) = bad {
        return Some(format!(
            "position of {what} ({}, {}) is not a latitude and longitude",
            position.latitude, position.longitude
        ));
    }
    (request.destinations.len() > MAX_DESTINATIONS).then(|| {
        format!(
            "{} destinations; at most {MAX_DESTINATIONS} per request",
            request.destinations.len()
        )
    })
}

/// The cached geocodes of a batch's addresses, looked up once per batch.
#[derive(Default)]
pub(crate) struct Known {
    /// Whether the batch's lookup ran (else each record looks up its own).
    loaded: bool,
    entries: std::collections::HashMap<[u8; 32], cache::CachedGeocode>,
}

pub(crate) fn failed(
    ctx: &mut Context<'_>,
    record: &Incoming,
    request_id: &str,
    code: ErrorCode,
    reason: &str,
) -> Result<(), ProcessError> {
    ctx.emit(
        RESULTS,
        "geocoding.failed",
        json!({"request_id": request_id, "subject": subject(record),
               "error_code": code.as_str(), "reason": reason}),
    )
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(record: &Incoming) -> Result<T, ProcessError> {
    serde_json::from_value(record.payload.clone()).map_err(|error| ProcessError::Invalid {
        code: ErrorCode::InvalidCommand,
        reason: format!("{} does not fit its payload: {error}", record.event_type()),
    })
}

impl Processor for Geocoder {
    fn name(&self) -> &'static str {
        "geocoder"
    }

    fn settings_prefixes(&self) -> &'static [&'static str] {
        &[
            "NOMINATIM_",
            "OSRM_",
            "GEOCODER_",
            "GEOCODE_",
            "BREAKER_",
            "UPSTREAM_",
            "TRAVEL_TIME_",
        ]
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
        let now = batch.now();
        let found = cache::geocodes(batch.db(), &keys, now).await?;
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
                if let Some(patient) = patient_of(&record.payload) {
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
                    cache::geocode(&pool, &key, ctx.now()).await?
                };
                let (answer, stored) = self
                    .geocode_with(&pool, &address, cached, ctx.now())
                    .await?;
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
                            "subject": subject(record),
                            "position": position,
                            "precision": precision.as_str(),
                            "source": source.as_str(),
                            "note": note,
                        }),
                    ),
                    Geocoded::Failed { code, reason } => {
                        failed(ctx, record, &request.request_id, code, &reason)
                    }
                }
            }
            "geocoding.compute_travel_times" => {
                let request: TravelRequest = parse(record)?;
                if let Some(reason) = travel_request_refused(&request) {
                    let code = ErrorCode::InvalidCommand;
                    return failed(ctx, record, &request.request_id, code, &reason);
                }
                let results = self
                    .travel_times(
                        &pool,
                        request.mode,
                        request.origin,
                        &request.destinations,
                        ctx.now(),
                    )
                    .await?;
                let mode = record.payload["mode"].clone();
                ctx.emit(
                    RESULTS,
                    "geocoding.travel_times_computed",
                    json!({
                        "request_id": request.request_id,
                        "subject": subject(record),
                        "mode": mode,
                        "results": results.iter().map(Travel::to_json).collect::<Vec<_>>(),
                    }),
                )
            }
            "geocoding.cleanup_cache" => {
                let request: PlainRequest = parse(record)?;
                let now = ctx.now();
                let (geocodes, travel) = cache::cleanup(ctx.db(), now).await?;
                CacheEntriesRemoved {
                    reason: "expired",
                    geocodes,
                    travel_times: travel,
                }
                .emit(&self.metrics);
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
                CacheEntriesRemoved {
                    reason: "erased",
                    geocodes,
                    travel_times: travel,
                }
                .emit(&self.metrics);
                Ok(())
            }
            other => Err(ProcessError::Invalid {
                code: ErrorCode::InvalidCommand,
                reason: format!("the geocoder does not handle {other}"),
            }),
        }
    }
}
