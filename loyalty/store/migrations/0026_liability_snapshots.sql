-- Liability over time (`loyalty report --history`, loyalty/ledger/history.py).
--
-- * liability_snapshots: one row per program, point currency and UTC day, written by the
--   housekeeping loop's `snapshot` step (the day of the run's as_of) with the figures
--   `loyalty report` computes: outstanding (what members hold, less what they owe) and
--   its parts issued, redeemed, expired, clawed back. A retried or repeated run of the
--   same day upserts the same row, so the last run of a day gives the day's figures.
--   Points only: the money value (a program's point_value) is applied when read.
-- * housekeeping_runs: the `snapshot` step, between refreshing segments and pruning,
--   and the number of rows it wrote.

CREATE TABLE liability_snapshots (
    program      text NOT NULL REFERENCES programs (name),
    currency     text NOT NULL,
    day          date NOT NULL,
    outstanding  bigint NOT NULL,
    issued       bigint NOT NULL,
    redeemed     bigint NOT NULL,
    expired      bigint NOT NULL,
    clawed_back  bigint NOT NULL,
    taken_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (program, day, currency)
);

ALTER TABLE housekeeping_runs DROP CONSTRAINT housekeeping_runs_step_check;
ALTER TABLE housekeeping_runs ADD CONSTRAINT housekeeping_runs_step_check
    CHECK (step IN ('mature', 'expire', 'remind', 'segments', 'snapshot', 'prune', 'done'));
ALTER TABLE housekeeping_runs ADD COLUMN snapshots integer NOT NULL DEFAULT 0;
