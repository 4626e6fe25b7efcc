-- Client events and the events the engine derives live in separate id spaces.
--
-- Until now both shared the inbox's unique (program, event_id), and derived events are
-- inserted "on conflict do nothing": a client event that took the id the engine was
-- about to derive (`referral_friend_approved:<id>`) silently suppressed it, and a
-- derived event could take an id a client wanted to use later. `origin` says who made
-- the event, and the unique key includes it, so neither can ever suppress the other.
--
-- Existing rows: a client can never emit a derived type (emit refuses them) and the
-- engine derives nothing else, so the type tells each row's origin. The column has no
-- default afterwards: every writer states the origin, and one that forgets it fails
-- instead of landing in the wrong space.

ALTER TABLE events ADD COLUMN origin text NOT NULL DEFAULT 'client'
    CHECK (origin IN ('client', 'engine'));
UPDATE events SET origin = 'engine'
WHERE type IN ('new_stage', 'points_above', 'bonus_expiring', 'points_matured',
               'referral_friend_approved');
ALTER TABLE events ALTER COLUMN origin DROP DEFAULT;

ALTER TABLE events DROP CONSTRAINT events_program_event_id_key;
ALTER TABLE events ADD CONSTRAINT events_program_origin_event_id_key
    UNIQUE (program, origin, event_id);
