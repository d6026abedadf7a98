-- The geocoder's caches and its deployment-wide request slots.
--
-- Addresses are personal data: the geocode cache is keyed by a SHA-256 of
-- the normalised address and keeps no address text, so the table alone
-- does not say who lives where.

CREATE TABLE geocoder.geocodes (
    address_key bytea PRIMARY KEY,
    -- NULL coordinates: the upstream knows no such address (cached too, so
    -- an unknown address is not asked for again until it expires).
    latitude    double precision,
    longitude   double precision,
    precision   text,
    fetched_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX geocodes_expires_at ON geocoder.geocodes (expires_at);

-- Routed travel between two positions rounded to 4 decimals (about 11 m),
-- per routing profile. Straight-line estimates are never cached.
CREATE TABLE geocoder.travel_times (
    profile          text NOT NULL,
    origin           text NOT NULL,
    destination      text NOT NULL,
    -- NULL: the router found no route.
    duration_seconds double precision,
    distance_meters  double precision NOT NULL,
    fetched_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (profile, origin, destination)
);
CREATE INDEX travel_times_expires_at ON geocoder.travel_times (expires_at);
CREATE INDEX travel_times_origin ON geocoder.travel_times (origin);

-- The next free request slot per upstream, shared by every replica: a
-- replica reserves a slot by moving it one interval on (GCRA's theoretical
-- arrival time), so the upstream sees the configured rate for the whole
-- deployment however many replicas run.
CREATE TABLE geocoder.request_slots (
    upstream  text PRIMARY KEY,
    next_slot timestamptz NOT NULL
);
