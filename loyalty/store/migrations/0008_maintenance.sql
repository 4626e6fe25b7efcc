-- Tier maintenance (loyalty/maintenance.py).
--
-- * member_tiers.below_since: when maintenance first found the member below the retain
--   threshold of their tier; the grace period runs from there. NULL when the member
--   meets it (or was just promoted or demoted).
-- * maintenance_runs: one row per run of a scheme's maintenance, identified by the time
--   it measures at (as_of, fixed when the run starts, so a retried run measures the
--   same way). The chunk transactions move `cursor` (the last member id done) and the
--   counts forward with their own changes, so a run that stopped resumes exactly after
--   the last committed chunk. finished_at is set by the last chunk.

ALTER TABLE member_tiers ADD COLUMN below_since timestamptz;

CREATE TABLE maintenance_runs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program      text NOT NULL REFERENCES programs (name),
    scheme       text NOT NULL,
    as_of        timestamptz NOT NULL,
    -- The as_of of the scheme's previous finished run: a schedule anchored on join
    -- dates reviews the members whose anniversary falls in (previous_as_of, as_of].
    previous_as_of  timestamptz,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    cursor       text NOT NULL DEFAULT '',
    chunks       integer NOT NULL DEFAULT 0,
    scanned      bigint NOT NULL DEFAULT 0,
    promoted     bigint NOT NULL DEFAULT 0,
    demoted      bigint NOT NULL DEFAULT 0,
    in_grace     bigint NOT NULL DEFAULT 0,
    UNIQUE (program, scheme, as_of)
);
CREATE INDEX maintenance_runs_latest ON maintenance_runs (program, scheme, started_at DESC);
