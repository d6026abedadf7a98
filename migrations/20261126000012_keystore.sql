-- Crypto-shredding (issue 9): a patient's personal data that must travel
-- through non-compacted topics (the registration on patient-commands, the
-- address on geocoding-requests) is encrypted with a key of that patient;
-- erasure deletes the key, and every copy left in a topic, a dead-letter
-- topic or a backup becomes unreadable. Intake creates and destroys keys
-- (psymatch publish creates one when it seals a registration, with the
-- owner's role); the geocoder only reads them to open addresses.
CREATE SCHEMA IF NOT EXISTS keystore;

CREATE TABLE keystore.patient_keys (
    patient_id text PRIMARY KEY,
    -- 256-bit AES-GCM key.
    key        bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

GRANT USAGE ON SCHEMA keystore TO psymatch_intake, psymatch_geocoder;
GRANT SELECT, INSERT, DELETE ON keystore.patient_keys TO psymatch_intake;
GRANT SELECT ON keystore.patient_keys TO psymatch_geocoder;

-- The cache entries the geocoder made for a patient's addresses, so that
-- erasure can remove them without being told the address again.
CREATE TABLE geocoder.patient_addresses (
    patient_id  text  NOT NULL,
    address_key bytea NOT NULL,
    PRIMARY KEY (patient_id, address_key)
);
