-- Therapists as people enter them by command: the details of manually
-- created ones, and the operational facts of any therapist (blocked, free
-- places, own patient preferences), whether it came from the scraper or a
-- person.
CREATE TABLE intake.therapists (
    therapist_id    text PRIMARY KEY,
    details         jsonb,
    blocked         boolean NOT NULL DEFAULT false,
    block_reason    text,
    blocked_at      timestamptz,
    individual_from date,
    group_from      date,
    min_age         integer,
    max_age         integer,
    genders         jsonb NOT NULL DEFAULT '[]',
    prefers_group   boolean NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
