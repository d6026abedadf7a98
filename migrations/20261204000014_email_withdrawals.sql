-- Inquiries the matcher takes back before they are sent
-- (email.withdraw_inquiry), and the partition each came from: a flush
-- sends an inquiry only once every record published on its partition
-- before the flush has been read, so a withdrawal published before the
-- flush is never outrun by it.
ALTER TABLE email_batcher.inquiries
    ADD COLUMN source_partition int,
    ADD COLUMN withdrawn_at timestamptz;
DROP INDEX email_batcher.inquiries_waiting;
CREATE INDEX inquiries_waiting ON email_batcher.inquiries (recipient)
    WHERE email_id IS NULL AND withdrawn_at IS NULL;
