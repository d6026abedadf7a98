//! Synthetic people and records for tests, proofs and benchmarks, in one
//! place: commands as a person writes them (a patient's registration, a
//! practice), and the events intake and the scraper publish for them. A
//! test changes the fields it cares about (planted values, a postcode, a
//! reach) with [`with_details`] or by hand.

use serde_json::{Value, json};

/// A record as a person writes it for `psymatch publish`.
pub fn command(event_type: &str, payload: Value) -> Value {
    json!({"event_type": event_type, "payload": payload})
}

/// `patient.register` for patient `id` living at `postcode` in Berlin,
/// with an email address of its own, searching within 20 km by car.
pub fn registration(id: &str, postcode: &str) -> Value {
    json!({"event_type": "patient.register", "payload": {"patient_id": id, "details": {
        "salutation": "NONE", "first_name": "Synthetisch", "last_name": format!("Person-{id}"),
        "address": {"street": "Probeweg", "house_number": "1", "postcode": postcode, "city": "Berlin"},
        "email": format!("{id}@example.org"), "phone": null, "date_of_birth": "1990-06-01",
        "gender": "FEMALE", "insurer": "Beispielkasse", "diagnosis_icd10": "F32.1",
        "consultation_hour_attended": true, "symptoms": ["Antriebslosigkeit"],
        "therapy_experience": false, "last_therapy_session": null, "open_to_group": true,
        "availability": [], "max_distance_km": 20, "max_travel_minutes": null, "transport": "CAR",
        "preferred_therapist_gender": "ANY", "preferred_procedures": [], "languages": [],
        "excluded_therapists": [], "consent_given_at": "2026-11-01T09:30:00Z"}}})
}

/// `therapist.upsert` for therapist `id`: a behavioural therapist for
/// adults at `house_number`, Teststraße, `postcode` Berlin, with an email
/// address of its own.
pub fn practice(id: &str, house_number: &str, postcode: &str) -> Value {
    json!({"event_type": "therapist.upsert", "payload": {"therapist_id": id, "details": {
        "salutation": "FRAU", "title": null, "first_name": "Test", "last_name": format!("Praxis-{id}"),
        "gender": "FEMALE",
        "address": {"street": "Teststraße", "house_number": house_number, "postcode": postcode, "city": "Berlin"},
        "email": format!("praxis-{id}@example.org"), "procedures": ["BEHAVIOURAL"],
        "age_groups": ["ADULTS"], "settings": ["INDIVIDUAL"], "phone_hours": []}}})
}

/// Sets fields of a record's `payload.details` (planted values).
pub fn with_details(mut record: Value, fields: Value) -> Value {
    if let (Some(details), Some(fields)) = (
        record["payload"]["details"].as_object_mut(),
        fields.as_object(),
    ) {
        for (name, value) in fields {
            details.insert(name.clone(), value.clone());
        }
    }
    record
}

/// `therapist.discovered` as the scraper publishes it: therapist
/// `t-<n>`, a behavioural therapist for adults with an email address of
/// its own, at `position`.
pub fn discovered(n: usize, position: (f64, f64)) -> Value {
    command(
        "therapist.discovered",
        json!({"therapist_id": format!("t-{n}"), "source": "test", "source_id": null, "flags": [],
        "details": {
            "salutation": "FRAU", "title": null, "first_name": "Test", "last_name": format!("Praxis{n}"),
            "gender": "FEMALE",
            "address": {"street": "Teststraße", "house_number": "1", "postcode": "10115", "city": "Berlin"},
            "coordinates": {"latitude": position.0, "longitude": position.1},
            "email": format!("praxis-{n}@example.org"), "statutory_licence": true,
            "procedures": ["BEHAVIOURAL"], "age_groups": ["ADULTS"], "settings": ["INDIVIDUAL"],
        }}),
    )
}

/// `patient.registered` as intake publishes it: the pseudonymous profile
/// of patient `p-<n>`, `age` years old, at `position`, searching within
/// 20 km by car.
pub fn registered(n: usize, age: i64, position: (f64, f64)) -> Value {
    let id = format!("p-{n}");
    command(
        "patient.registered",
        json!({"patient_id": id, "profile": {
        "patient_id": id, "age": age, "gender": "MALE", "postcode": "10115",
        "coordinates": {"latitude": position.0, "longitude": position.1},
        "transport": "CAR", "max_distance_km": 20, "max_travel_minutes": null,
        "preferred_therapist_gender": "ANY", "preferred_procedures": [], "languages": [],
        "excluded_therapists": [],
        "summary": {"patient_id": id, "age": age, "gender": "MALE", "symptoms": [], "insurer": "Beispielkasse",
                    "therapy_experience": false, "open_to_group": false, "availability": []},
        "status": "ACTIVE"}}),
    )
}
