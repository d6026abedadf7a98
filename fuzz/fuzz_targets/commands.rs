//! Command validation: a JSON payload checked as a patient registration's
//! details and as a therapist's details, its id as a patient id, and the
//! search profile intake derives from details it accepted.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use psymatch_intake::{profile, therapists, validate};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(payload) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let now = Utc.with_ymd_and_hms(2026, 11, 26, 12, 0, 0).unwrap();
    let details = &payload["details"];
    let id = payload["patient_id"].as_str().unwrap_or("");
    let _ = validate::patient_id(id);
    let _ = therapists::problems(details);
    if validate::details(details, now).is_empty() {
        let _ = profile(id, details, "ACTIVE", Some(psymatch_geo::Position::new(52.5, 13.4)), now);
    }
});
