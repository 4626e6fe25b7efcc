-- Erasure (member_deleted, loyalty/router/erasure.py) reaches every copy of a profile.
--
-- * message_log.erased_at: when the member's erasure emptied the row's rendered body,
--   data and trigger event; status, template, key and times stay, so the log still says
--   which messages went and when.
-- * Partial indexes on the journey outboxes' member_updated rows: the only rows whose
--   stored event carries a profile, found by member without reading the whole outbox.

ALTER TABLE message_log ADD COLUMN erased_at timestamptz;

CREATE INDEX journey_starts_profiles ON journey_starts (program, member_id)
    WHERE event_type = 'member_updated';
CREATE INDEX journey_signals_profiles ON journey_signals (program, member_id)
    WHERE payload->>'type' = 'member_updated';
