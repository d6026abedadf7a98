-- One row per job occurrence (the time the cron expression gave, in UTC):
-- the primary key is the lease, so exactly one replica runs each
-- occurrence. A replica that dies while running leaves its lease to
-- expire; another takes the occurrence over (the command's event id is
-- derived from job and occurrence, so consumers drop a repeat).
CREATE TABLE scheduler.runs (
    job         text NOT NULL,
    occurrence  timestamptz NOT NULL,
    run_id      text NOT NULL,
    -- RUNNING, SUCCEEDED, DEAD_LETTERED (every attempt failed)
    status      text NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    owner       text NOT NULL,
    lease_until timestamptz NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- What was published, or the last error.
    outcome     text,
    PRIMARY KEY (job, occurrence)
);
CREATE INDEX runs_running ON scheduler.runs (lease_until) WHERE status = 'RUNNING';
