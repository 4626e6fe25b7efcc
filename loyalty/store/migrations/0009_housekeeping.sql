-- The housekeeping loop (workflows/housekeeping.py, loyalty/expiring.py).
--
-- * housekeeping_runs: one row per run of a program's housekeeping, identified by the
--   time it works at (as_of, fixed when the run starts, so a retried run does the same
--   work). `step` is the next step to do: each step's transaction records its counts
--   and moves `step` on, so a run that stopped resumes at the step it was in. The
--   bonus_expiring step goes through the program's member accounts in chunks, keyset
--   on (member_id, currency): each chunk's transaction moves the cursor with its own
--   inserts, so a resumed run starts after the last committed chunk. finished_at is set
--   by the last step; `duration` follows from it.

CREATE TABLE housekeeping_runs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program          text NOT NULL REFERENCES programs (name),
    as_of            timestamptz NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    duration         interval GENERATED ALWAYS AS (finished_at - started_at) STORED,
    step             text NOT NULL DEFAULT 'mature'
                     CHECK (step IN ('mature', 'expire', 'remind', 'prune', 'done')),
    matured_lots     bigint NOT NULL DEFAULT 0,
    matured_points   bigint NOT NULL DEFAULT 0,
    expired_lots     bigint NOT NULL DEFAULT 0,
    expired_points   bigint NOT NULL DEFAULT 0,
    cursor_member    text NOT NULL DEFAULT '',
    cursor_currency  text NOT NULL DEFAULT '',
    chunks           integer NOT NULL DEFAULT 0,
    reminders        bigint NOT NULL DEFAULT 0,
    pruned_starts    bigint NOT NULL DEFAULT 0,
    pruned_signals   bigint NOT NULL DEFAULT 0,
    CHECK ((step = 'done') = (finished_at IS NOT NULL)),
    UNIQUE (program, as_of)
);
CREATE INDEX housekeeping_runs_latest ON housekeeping_runs (program, started_at DESC);
