-- Journeys waiting for a member's event (loyalty/signals.py, `wait_for_event`).
--
-- * journey_waits: one row per open wait, inserted by the journey's register activity
--   and deleted when the wait ends (event received or timed out). An event processed
--   by the router matches the waits of its program, member and type registered before
--   the event reached the inbox (registered_at <= events.received_at).
-- * journey_signals: the outbox of signals to send. The router inserts one row per
--   (wait, event) in the batch transaction that processed the event and sends the
--   "loyalty_event" signal after commit; sent_at stays NULL until Temporal accepted it
--   (or reported the workflow gone), so a crash between commit and signal is recovered
--   by the next round of the same router partition. The unique key makes a batch
--   processed again record nothing new.

CREATE TABLE journey_waits (
    workflow_id    text NOT NULL,
    wait_key       text NOT NULL,
    program        text NOT NULL REFERENCES programs (name),
    member_id      text NOT NULL,
    event_type     text NOT NULL,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, wait_key)
);
CREATE INDEX journey_waits_member ON journey_waits (program, member_id, event_type);

CREATE TABLE journey_signals (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_id    text NOT NULL,
    wait_key       text NOT NULL,
    program        text NOT NULL REFERENCES programs (name),
    member_id      text NOT NULL,
    member_hash    integer NOT NULL GENERATED ALWAYS AS (hashtext(member_id) & 2147483647) STORED,
    event_row_id   bigint NOT NULL,
    event_id       text NOT NULL,
    payload        jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    sent_at        timestamptz,
    attempts       integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error     text,
    UNIQUE (workflow_id, wait_key, event_row_id)
);
-- The pending signals of a program: small, since rows leave it once sent.
CREATE INDEX journey_signals_pending ON journey_signals (program, id) WHERE sent_at IS NULL;
