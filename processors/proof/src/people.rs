//! Synthetic people for the proofs: a patient's registration and a
//! practice as a person enters them. A proof changes the fields it cares
//! about (planted values, a postcode, a reach).

use serde_json::{Value, json};

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
