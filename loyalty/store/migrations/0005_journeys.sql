-- Journeys (loyalty/outbox.py, activities/journeys.py).
--
-- * journey_starts: the outbox of journeys to start. The router inserts a row for every
--   flow an event triggers, in the batch transaction that processed the event (so a
--   journey is recorded exactly when its trigger is applied), and starts the workflow
--   after commit; started_at stays NULL until Temporal accepted the start (or reported
--   it already started), so a crash between commit and start is recovered by the next
--   batch of the same router partition (mod(member_hash, partitions)).
-- * message_log: what the `log` message provider "sends": one row per idempotency key.

CREATE TABLE journey_starts (
    workflow_id     text PRIMARY KEY,
    program         text NOT NULL REFERENCES programs (name),
    flow            text NOT NULL,
    member_id       text NOT NULL,
    member_hash     integer NOT NULL GENERATED ALWAYS AS (hashtext(member_id) & 2147483647) STORED,
    event_row_id    bigint NOT NULL,
    event_id        text NOT NULL,
    event_type      text NOT NULL,
    payload         jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      text
);
-- The pending starts of a program: small, since rows leave it once started.
CREATE INDEX journey_starts_pending ON journey_starts (program, created_at)
    WHERE started_at IS NULL;

CREATE TABLE message_log (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program          text NOT NULL REFERENCES programs (name),
    member_id        text NOT NULL,
    template         text NOT NULL,
    channel          text NOT NULL,
    data             jsonb NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key  text NOT NULL UNIQUE,
    workflow_id      text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX message_log_member ON message_log (program, member_id, id);
