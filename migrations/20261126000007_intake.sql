-- Intake's store of patients: the only place with their personal data
-- (names, contact data, address, health data). Everything downstream sees
-- the pseudonymous search profile. Erasure deletes the row.
CREATE TABLE intake.patients (
    patient_id       text PRIMARY KEY,
    details          jsonb NOT NULL,
    status           text NOT NULL,
    -- Home position rounded to about 100 m, once geocoded.
    latitude         double precision,
    longitude        double precision,
    -- The geocoding request whose answer is awaited (the latest address).
    geocode_request  text,
    geocode_sequence integer NOT NULL DEFAULT 0,
    registered_at    timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX patients_geocode_request ON intake.patients (geocode_request);

-- Ids of erased patients, so that a late command about one is refused
-- instead of creating them anew. Holds no personal data.
CREATE TABLE intake.erased (
    patient_id text PRIMARY KEY,
    erased_at  timestamptz NOT NULL DEFAULT now()
);
