-- The runtime's tables in every processor's schema: consumed offsets, ids of
-- processed events, and the outbox. A record's state change, its partition's
-- next offset and the records it emits commit in one transaction; the relay
-- publishes the outbox afterwards (DESIGN.md, Guarantees).
CREATE SCHEMA IF NOT EXISTS example;

DO $$
DECLARE
    s text;
BEGIN
    FOREACH s IN ARRAY ARRAY['intake', 'scraper', 'geocoder', 'matcher', 'email_batcher',
                             'scheduler', 'example']
    LOOP
        -- Next offset to process per partition: the source of truth, not the
        -- broker's committed offsets.
        EXECUTE format('CREATE TABLE %I.consumer_offsets (
            consumer_group text    NOT NULL,
            topic          text    NOT NULL,
            partition      integer NOT NULL,
            next_offset    bigint  NOT NULL,
            updated_at     timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (consumer_group, topic, partition))', s);
        -- Ids of processed input events: a record re-published by a relay
        -- after a crash is recognised and skipped. No index on the time:
        -- each record pays for every index, a clean-up can scan.
        EXECUTE format('CREATE TABLE %I.processed_events (
            event_id     uuid PRIMARY KEY,
            processed_at timestamptz NOT NULL DEFAULT now())', s);
        -- Records to publish, in order; deleted once the broker acknowledged them.
        EXECUTE format('CREATE TABLE %I.outbox (
            id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            event_id   uuid   NOT NULL,
            topic      text   NOT NULL,
            key        text,
            value      bytea,
            -- JSON array of [name, value] pairs, kept as text: PostgreSQL
            -- never looks inside, so it need not parse it.
            headers    text   NOT NULL DEFAULT ''[]'',
            created_at timestamptz NOT NULL DEFAULT now())', s);
    END LOOP;
END
$$;

-- State of the example processor (runtime docs, tests, benchmark): how many
-- records it has seen per key.
CREATE TABLE example.counts (
    key   text PRIMARY KEY,
    count bigint NOT NULL
);
