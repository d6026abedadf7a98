-- The scraper's state: its runs, every therapist it has seen with a
-- fingerprint (change detection), which complete areas contained whom
-- (removal), and the shared request slots of the KBV search.

CREATE TABLE scraper.runs (
    run_id       text PRIMARY KEY,
    source       text NOT NULL,
    description  text NOT NULL,
    areas_total  integer NOT NULL DEFAULT 0,
    areas_done   integer NOT NULL DEFAULT 0,
    seen         integer NOT NULL DEFAULT 0,
    new          integer NOT NULL DEFAULT 0,
    changed      integer NOT NULL DEFAULT 0,
    removed      integer NOT NULL DEFAULT 0,
    invalid      integer NOT NULL DEFAULT 0,
    -- Areas that still had more results at the smallest radius.
    truncated    integer NOT NULL DEFAULT 0,
    status       text NOT NULL DEFAULT 'RUNNING',
    detail       text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE TABLE scraper.therapists (
    therapist_id uuid PRIMARY KEY,
    -- The source's id; NULL for therapists known only from saved pages.
    source_id    text UNIQUE,
    -- Folded first name, last name and postcode: the identity without an id.
    name_key     text NOT NULL,
    details      jsonb NOT NULL,
    flags        jsonb NOT NULL,
    fingerprint  bytea NOT NULL,
    removed      boolean NOT NULL DEFAULT false,
    first_seen   timestamptz NOT NULL DEFAULT now(),
    last_seen    timestamptz NOT NULL DEFAULT now(),
    last_run     text
);
CREATE INDEX therapists_name_key ON scraper.therapists (name_key);

-- Who a completely scraped area contained, and in how many complete
-- scrapes of it since they were missing.
CREATE TABLE scraper.area_members (
    area_key     text NOT NULL,
    therapist_id uuid NOT NULL REFERENCES scraper.therapists ON DELETE CASCADE,
    missed       integer NOT NULL DEFAULT 0,
    PRIMARY KEY (area_key, therapist_id)
);
CREATE INDEX area_members_therapist ON scraper.area_members (therapist_id);

CREATE TABLE scraper.request_slots (
    upstream  text PRIMARY KEY,
    next_slot timestamptz NOT NULL
);
