-- The matcher's batch journal: every batch it committed, in commit order,
-- as the partition's offset range and the batch's "now". The records are
-- in the topics; with the journal a replay (psymatch-matcher replay)
-- groups them into the same batches, in the same order, at the same
-- time, and so reproduces the live decisions exactly. One small row per
-- batch, written in the batch's transaction.
CREATE TABLE matcher.batch_journal (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic        text        NOT NULL,
    partition    int         NOT NULL,
    first_offset bigint      NOT NULL,
    next_offset  bigint      NOT NULL,
    decided_at   timestamptz NOT NULL,
    records      int         NOT NULL
);
