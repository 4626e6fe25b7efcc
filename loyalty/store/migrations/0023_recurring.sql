-- Recurring flows (loyalty/flows/recurring.py, workflows/recurring.py).
--
-- A Temporal Schedule per recurring flow and program starts a RecurringFlow run for each
-- scheduled time. The run snapshots the segment's members once, then starts one journey
-- per member in throttled batches.
-- * recurring_runs: one row per (program, flow, scheduled time), inserted with the
--   snapshot in one transaction. Its presence means "the snapshot is taken": a retried
--   activity, a crashed worker or a second run for the same scheduled time reuses it, so
--   the members started are always those in the segment when the snapshot was first
--   taken (also when there were none). `started` counts the members marked started.
-- * recurring_snapshots: the members of that snapshot; `started` is set once Temporal
--   accepted the member's journey (or reported it already started).

CREATE TABLE recurring_runs (
    program       text NOT NULL REFERENCES programs (name),
    flow          text NOT NULL,
    scheduled_at  timestamptz NOT NULL,
    segment       text NOT NULL,
    members       integer NOT NULL CHECK (members >= 0),
    started       integer NOT NULL DEFAULT 0 CHECK (started BETWEEN 0 AND members),
    taken_at      timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    PRIMARY KEY (program, flow, scheduled_at)
);

CREATE TABLE recurring_snapshots (
    program       text NOT NULL,
    flow          text NOT NULL,
    scheduled_at  timestamptz NOT NULL,
    member_id     text NOT NULL,
    started       boolean NOT NULL DEFAULT false,
    PRIMARY KEY (program, flow, scheduled_at, member_id),
    FOREIGN KEY (program, flow, scheduled_at)
        REFERENCES recurring_runs (program, flow, scheduled_at) ON DELETE CASCADE
);
