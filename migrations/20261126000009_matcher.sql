-- The matcher's state: pseudonymous search profiles, the therapist
-- directory as matching sees it, inquiries with their answers. The
-- matcher keeps it in memory and writes what a batch changed as whole
-- records (jsonb) at the end of the batch; `world.version` counts the
-- committed batches, so a process whose memory is behind reloads.
CREATE TABLE matcher.world (
    id      boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL
);
INSERT INTO matcher.world (version) VALUES (0);

-- One row per therapist: directory facts (scraper or a person), the
-- decisions of people (blocked, free places, preferences), contacts and
-- the cooling period. Public directory data, no patient data.
CREATE TABLE matcher.therapists (
    therapist_id text PRIMARY KEY,
    state        jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- One row per patient search: the pseudonymous profile from intake and the
-- search's own state (status, exclusions, travel times). Erasure deletes it.
CREATE TABLE matcher.searches (
    patient_id text PRIMARY KEY,
    state      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Inquiries: one therapist (practice), 1-6 pseudonymous patient ids, the
-- answers per patient. Also the per-patient contact log (SGB V 13(3)).
CREATE TABLE matcher.inquiries (
    inquiry_id   text PRIMARY KEY,
    therapist_id text NOT NULL,
    patient_ids  text[] NOT NULL,
    state        jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inquiries_patient_ids ON matcher.inquiries USING gin (patient_ids);
