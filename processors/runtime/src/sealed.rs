//! Crypto-shredding: a patient's personal data that travels through topics
//! nobody compacts (the registration, the address to geocode) is sealed
//! with AES-256-GCM under a key of that patient, kept in
//! `keystore.patient_keys`. Erasure deletes the key; every copy of the
//! record (topic, dead-letter topic, backup) is then unreadable.
//!
//! A sealed value is base64 of nonce (12 bytes) followed by ciphertext and
//! tag; the patient id is the associated data, so a value sealed for one
//! patient does not open as another's.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use sqlx::PgConnection;

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SealError {
    /// No key: the patient was erased (or never had one).
    #[error("no key for patient {0}: erased, or never registered")]
    NoKey(String),
    /// Not a value this module sealed for this patient with this key.
    #[error("the sealed value does not open with patient {0}'s key")]
    Corrupt(String),
}

fn key(bytes: &[u8]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 256-bit key"))
}

/// A new random key.
pub fn new_key() -> Vec<u8> {
    let mut bytes = vec![0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    bytes
}

/// Seals `value` (as JSON) for `patient` under `key_bytes`.
pub fn seal(key_bytes: &[u8], patient: &str, value: &Value) -> String {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .expect("the system's random source works");
    let mut data = serde_json::to_vec(value).expect("JSON serialises");
    key(key_bytes)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(patient.as_bytes()),
            &mut data,
        )
        .expect("sealing cannot fail for a valid key");
    let mut out = nonce.to_vec();
    out.extend(data);
    STANDARD.encode(out)
}

/// Opens what [`seal`] sealed for `patient`.
pub fn open(key_bytes: &[u8], patient: &str, sealed: &str) -> Result<Value, SealError> {
    let corrupt = || SealError::Corrupt(patient.to_string());
    let bytes = STANDARD.decode(sealed).map_err(|_| corrupt())?;
    if bytes.len() < NONCE_LEN {
        return Err(corrupt());
    }
    let (nonce, rest) = bytes.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| corrupt())?;
    let mut data = rest.to_vec();
    let plain = key(key_bytes)
        .open_in_place(nonce, Aad::from(patient.as_bytes()), &mut data)
        .map_err(|_| corrupt())?;
    serde_json::from_slice(plain).map_err(|_| corrupt())
}

/// The statement that makes patient `$1` the key `$2` unless the patient
/// has one, and yields the patient's key, in one round trip. `with` are
/// the caller's own common table expressions (parameters from `$3`), run
/// in the same statement.
pub fn key_made_or_found(with: &[&str]) -> String {
    let mut parts = vec![
        "made AS (INSERT INTO keystore.patient_keys (patient_id, key) VALUES ($1, $2)
                  ON CONFLICT (patient_id) DO NOTHING RETURNING key)",
    ];
    parts.extend(with);
    // The statement's snapshot does not see the row it inserts, so exactly
    // one branch yields the key.
    format!(
        "WITH {} SELECT key FROM made
         UNION ALL SELECT key FROM keystore.patient_keys WHERE patient_id = $1
         LIMIT 1",
        parts.join(", ")
    )
}

/// The patient's key; with `create`, one is made if there is none.
pub async fn key_of(
    db: &mut PgConnection,
    patient: &str,
    create: bool,
) -> Result<Option<Vec<u8>>, sqlx::Error> {
    if create {
        return sqlx::query_scalar(&key_made_or_found(&[]))
            .bind(patient)
            .bind(new_key())
            .fetch_optional(&mut *db)
            .await;
    }
    sqlx::query_scalar("SELECT key FROM keystore.patient_keys WHERE patient_id = $1")
        .bind(patient)
        .fetch_optional(&mut *db)
        .await
}

/// Destroys the patient's key (erasure).
pub async fn destroy(db: &mut PgConnection, patient: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM keystore.patient_keys WHERE patient_id = $1")
        .bind(patient)
        .execute(&mut *db)
        .await?;
    Ok(())
}

/// Opens `sealed` for `patient` with the key in the store.
pub async fn open_stored(
    db: &mut PgConnection,
    patient: &str,
    sealed: &str,
) -> Result<Result<Value, SealError>, sqlx::Error> {
    Ok(match key_of(db, patient, false).await? {
        Some(key) => open(&key, patient, sealed),
        None => Err(SealError::NoKey(patient.to_string())),
    })
}

/// A person's patient command as `psymatch publish` sends it: the details
/// of a registration or update sealed with the patient's key (made if the
/// patient has none). Other records pass unchanged.
pub async fn seal_command(db: &mut PgConnection, record: &mut Value) -> Result<(), sqlx::Error> {
    let event_type = record["event_type"].as_str().unwrap_or_default();
    if !matches!(event_type, "patient.register" | "patient.update") {
        return Ok(());
    }
    let payload = &mut record["payload"];
    let (Some(patient), false) = (
        payload["patient_id"].as_str().map(str::to_string),
        payload["details"].is_null(),
    ) else {
        return Ok(());
    };
    let key = key_of(db, &patient, true).await?.expect("just made");
    payload["sealed_details"] = Value::String(seal(&key, &patient, &payload["details"]));
    payload["details"] = Value::Null;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sealed_values_open_only_with_their_key_and_patient() {
        let key = new_key();
        let value = json!({"last_name": "Beispiel", "email": "x@example.org"});
        let sealed = seal(&key, "p-1", &value);
        assert!(!sealed.contains("Beispiel"));
        assert_eq!(open(&key, "p-1", &sealed), Ok(value.clone()));
        // Another patient's id, another key, a changed byte: no.
        assert!(open(&key, "p-2", &sealed).is_err());
        assert!(open(&new_key(), "p-1", &sealed).is_err());
        let mut bytes = STANDARD.decode(&sealed).unwrap();
        bytes[20] ^= 1;
        assert!(open(&key, "p-1", &STANDARD.encode(bytes)).is_err());
        // Two seals of one value differ (fresh nonces).
        assert_ne!(seal(&key, "p-1", &value), sealed);
    }
}
