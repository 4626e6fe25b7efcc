-- Segments (`loyalty.segments`): named conditions over a member's state, defined in the
-- app's code. The worker compiles them and installs them here at start-up: one row per
-- segment in `segments`, and the generated function segments_evaluate(program, ids).
--
-- Membership is kept current in the transaction that changes a member's state:
-- * statement triggers on the tables a condition can read (accounts, member_tiers,
--   members, member_currencies, qualifying_points) mark the members they touched in
--   segment_marks, keyed by the transaction, for programs that have segments;
-- * the first mark of a transaction adds its row to segment_settles, whose deferred
--   constraint trigger runs once at commit: it re-evaluates the marked members with
--   segments_evaluate (one statement per program, every segment of it at once), which
--   writes segment_members, segment_changes and the derived segment_entered /
--   segment_left events that flows listen to, and deletes the transaction's marks.
-- So a member whose balance passes through a range inside one transaction neither
-- enters nor leaves, and what commits, commits with its membership.

CREATE TABLE segments (
    program         text NOT NULL REFERENCES programs (name),
    name            text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]*$' AND length(name) <= 64),
    position        integer NOT NULL,
    definition      text NOT NULL,
    condition       text NOT NULL,
    time_dependent  boolean NOT NULL,
    digest          text NOT NULL,
    installed_at    timestamptz NOT NULL DEFAULT now(),
    refreshed_at    timestamptz,
    PRIMARY KEY (program, name)
);

-- One row per member ever evaluated in a segment; `entries` counts the entries, so the
-- nth entry and the nth departure have ids of their own.
CREATE TABLE segment_members (
    program     text NOT NULL,
    segment     text NOT NULL,
    member_id   text NOT NULL,
    in_segment  boolean NOT NULL,
    entries     integer NOT NULL CHECK (entries >= 0),
    changed_at  timestamptz NOT NULL,
    PRIMARY KEY (program, segment, member_id),
    FOREIGN KEY (program, segment) REFERENCES segments (program, name) ON DELETE CASCADE
);
CREATE INDEX segment_members_in ON segment_members (program, segment, member_id)
    WHERE in_segment;

-- The function's statement of each program that has segments (every segment of the
-- program in one evaluation); segments_evaluate is generated from these rows.
CREATE TABLE segment_programs (
    program   text PRIMARY KEY REFERENCES programs (name),
    evaluate  text NOT NULL
);

-- Every entry and departure, for the counts of `loyalty segments` (pruned with the
-- journey outboxes, kept a day at least). The derived events are written only for the
-- segments and directions a flow listens to.
CREATE TABLE segment_changes (
    program    text NOT NULL,
    segment    text NOT NULL,
    member_id  text NOT NULL,
    entered    boolean NOT NULL,
    entry      integer NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX segment_changes_at ON segment_changes (program, segment, at);

CREATE TABLE segment_marks (
    tx         xid8 NOT NULL,
    program    text NOT NULL,
    member_id  text NOT NULL,
    PRIMARY KEY (tx, program, member_id)
);

CREATE TABLE segment_settles (
    tx  xid8 PRIMARY KEY
);

-- Replaced by the worker (`loyalty.segments.membership.install`).
CREATE FUNCTION segments_evaluate(p text, ids text[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
END
$$;

CREATE FUNCTION segments_mark() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO segment_marks (tx, program, member_id)
    SELECT DISTINCT pg_current_xact_id(), c.program, c.member_id
    FROM changed AS c
    WHERE c.member_id IS NOT NULL
      AND c.program IN (SELECT DISTINCT s.program FROM segments AS s)
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        INSERT INTO segment_settles (tx) VALUES (pg_current_xact_id()) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION segments_settle() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
        WITH gone AS (
            DELETE FROM segment_marks WHERE tx = NEW.tx RETURNING program, member_id
        )
        SELECT g.program, array_agg(g.member_id ORDER BY g.member_id) AS ids
        FROM gone AS g GROUP BY g.program ORDER BY g.program
    LOOP
        PERFORM segments_evaluate(r.program, r.ids);
    END LOOP;
    DELETE FROM segment_settles WHERE tx = NEW.tx;
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER segments_settle AFTER INSERT ON segment_settles
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION segments_settle();

CREATE TRIGGER accounts_segments_insert AFTER INSERT ON accounts
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION segments_mark();
CREATE TRIGGER accounts_segments_update AFTER UPDATE ON accounts
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION segments_mark();
CREATE TRIGGER member_tiers_segments_insert AFTER INSERT ON member_tiers
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION segments_mark();
CREATE TRIGGER member_tiers_segments_update AFTER UPDATE ON member_tiers
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION segments_mark();
CREATE TRIGGER members_segments_insert AFTER INSERT ON members
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION segments_mark();
CREATE TRIGGER members_segments_update AFTER UPDATE ON members
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION segments_mark();
CREATE TRIGGER member_currencies_segments_insert AFTER INSERT ON member_currencies
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION segments_mark();
CREATE TRIGGER member_currencies_segments_update AFTER UPDATE ON member_currencies
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION segments_mark();
CREATE TRIGGER qualifying_points_segments_insert AFTER INSERT ON qualifying_points
    REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION segments_mark();

-- Off while no segment is installed: a database without segments pays nothing for them.
-- `loyalty.segments.membership.install` turns them on with the first segment, off with
-- the last one.
ALTER TABLE accounts DISABLE TRIGGER accounts_segments_insert;
ALTER TABLE accounts DISABLE TRIGGER accounts_segments_update;
ALTER TABLE member_tiers DISABLE TRIGGER member_tiers_segments_insert;
ALTER TABLE member_tiers DISABLE TRIGGER member_tiers_segments_update;
ALTER TABLE members DISABLE TRIGGER members_segments_insert;
ALTER TABLE members DISABLE TRIGGER members_segments_update;
ALTER TABLE member_currencies DISABLE TRIGGER member_currencies_segments_insert;
ALTER TABLE member_currencies DISABLE TRIGGER member_currencies_segments_update;
ALTER TABLE qualifying_points DISABLE TRIGGER qualifying_points_segments_insert;

-- Housekeeping's step that refreshes the segments time alone can change
-- (`loyalty.segments.membership.refresh`), between the reminders and pruning.
ALTER TABLE housekeeping_runs DROP CONSTRAINT housekeeping_runs_step_check;
ALTER TABLE housekeeping_runs ADD CONSTRAINT housekeeping_runs_step_check
    CHECK (step IN ('mature', 'expire', 'remind', 'segments', 'prune', 'done'));
ALTER TABLE housekeeping_runs ADD COLUMN segments_entered bigint NOT NULL DEFAULT 0;
ALTER TABLE housekeeping_runs ADD COLUMN segments_left bigint NOT NULL DEFAULT 0;
