-- One active matcher per consumer group: the replica holding the row
-- consumes, the others stand by until it lets go (a graceful stop deletes
-- the row) or its lease expires (it was killed). Renewed every second on
-- the database's clock; a row outlives a PostgreSQL restart, where an
-- advisory lock would not.
CREATE TABLE matcher.active_replica (
    group_id   text        PRIMARY KEY,
    holder     uuid        NOT NULL,
    expires_at timestamptz NOT NULL
);
