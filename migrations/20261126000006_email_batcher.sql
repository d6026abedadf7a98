-- The email batcher's state: inquiries waiting for their recipient's next
-- window, every email with its attempt recorded before it is handed to
-- SMTP, and the weekly-limit store.

CREATE TABLE email_batcher.inquiries (
    inquiry_id   text PRIMARY KEY,
    therapist_id text NOT NULL,
    -- Lower-case address: all inquiries to one address go into one email.
    recipient    text NOT NULL,
    -- Salutation, title and last name for the greeting.
    addressee    jsonb NOT NULL,
    -- Pseudonymous patient summaries (no names, no contact data).
    patients     jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    -- The email that carries it; NULL while it waits.
    email_id     uuid
);
CREATE INDEX inquiries_waiting ON email_batcher.inquiries (recipient) WHERE email_id IS NULL;
CREATE INDEX inquiries_email ON email_batcher.inquiries (email_id);

CREATE TABLE email_batcher.emails (
    email_id     uuid PRIMARY KEY,
    kind         text NOT NULL,
    recipient    text NOT NULL,
    therapist_id text,
    message_id   text NOT NULL,
    -- ATTEMPTED (recorded before SMTP), SENT, FAILED, UNKNOWN (the process
    -- stopped while handing it over; never resent inside its window).
    status       text NOT NULL,
    inquiry_ids  text[] NOT NULL DEFAULT '{}',
    patient_ids  text[] NOT NULL DEFAULT '{}',
    attempted_at timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    error_code   text,
    reason       text,
    permanent    boolean NOT NULL DEFAULT false,
    -- Whether its outcome is on communication-events yet.
    reported     boolean NOT NULL DEFAULT false
);
CREATE INDEX emails_unreported ON email_batcher.emails (attempted_at) WHERE NOT reported;
CREATE INDEX emails_attempted ON email_batcher.emails (attempted_at) WHERE status = 'ATTEMPTED';

-- One inquiry email per address per window, enforced by the database: a
-- window is opened by an upsert that only succeeds when the address's last
-- window is over, so replicas racing for one address cannot both win.
CREATE TABLE email_batcher.windows (
    recipient text PRIMARY KEY,
    opened_at timestamptz NOT NULL,
    email_id  uuid NOT NULL
);
