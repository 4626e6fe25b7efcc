-- A rolling window's tier measure kept per member, for the full recomputes of segments
-- (`loyalty.segments.windows`).
--
-- A full recompute of a segment on `qualifying_points()` or `points_to_next_tier()` over a
-- rolling window summed every member's rows in the window: an index scan of the whole
-- program's qualifying_points, half the CPU of such a recompute over 1,000,000 members.
-- Here each member's sum is kept as rows are added, with the span of time over which it
-- is the measure:
--
-- * qualifying_windows: the (program, currency, span) windows kept, those some installed
--   segment reads; the worker adds and removes them at install. A new one is filled from
--   qualifying_points then, at `filled_at`: a member without a row had no row in the
--   window at that time, so for them C starts empty at filled_at.
-- * qualifying_window_totals: per member, `points` is the sum of a set C of the member's
--   rows, and the sum is the member's measure at every time t with
--   valid_from <= t < valid_until. When the window is filled or refreshed at time r,
--   C = the rows with earned_at > r - span, valid_from = greatest(r, the latest
--   earned_at in C) and valid_until = the earliest earned_at in C + span ('infinity'
--   when C is empty, -infinity... never: valid_from is then r). Every row added later is
--   added to C by the trigger below, moving valid_from up to its earned_at and
--   valid_until down to its earned_at + span. So at a valid t every row of C is in the
--   window (t - span, t], and every row in that window is in C: a row not in C was
--   earned at or before r - span <= t - span. Outside that span (a row of C has left
--   the window, or one dated ahead has not entered yet) the reader sums the member's
--   rows itself, and the next refresh puts the member right.
--
-- Rows of qualifying_points are only ever added (0019), so the statement trigger keeps C
-- exact. Refreshes and fills hold the program's ledger lock exclusively, as every writer
-- of qualifying_points holds it shared, so none runs beside an insert.

CREATE TABLE qualifying_windows (
    program   text NOT NULL REFERENCES programs (name),
    currency  text NOT NULL,
    span      interval NOT NULL CHECK (span > interval '0'),
    filled_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program, currency, span)
);

CREATE TABLE qualifying_window_totals (
    program      text NOT NULL,
    currency     text NOT NULL,
    span         interval NOT NULL,
    member_id    text NOT NULL,
    points       bigint NOT NULL,
    valid_from   timestamptz NOT NULL,
    valid_until  timestamptz NOT NULL,
    PRIMARY KEY (program, currency, span, member_id),
    FOREIGN KEY (program, currency, span) REFERENCES qualifying_windows ON DELETE CASCADE
);
-- The members a refresh recomputes: those whose earliest row has left the window.
CREATE INDEX qualifying_window_totals_until
    ON qualifying_window_totals (program, currency, span, valid_until);

CREATE FUNCTION qualifying_windows_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO qualifying_window_totals AS t (program, currency, span, member_id, points,
                                               valid_from, valid_until)
    SELECT n.program, n.currency, w.span, n.member_id, sum(n.points)::bigint,
           greatest(max(n.earned_at), w.filled_at), min(n.earned_at) + w.span
    FROM added AS n
    JOIN qualifying_windows AS w ON w.program = n.program AND w.currency = n.currency
    GROUP BY n.program, n.currency, w.span, w.filled_at, n.member_id
    ORDER BY n.program, n.currency, w.span, n.member_id
    ON CONFLICT (program, currency, span, member_id) DO UPDATE
    SET points = t.points + EXCLUDED.points,
        valid_from = greatest(t.valid_from, EXCLUDED.valid_from),
        valid_until = least(t.valid_until, EXCLUDED.valid_until);
    RETURN NULL;
END
$$;

CREATE TRIGGER qualifying_windows_add AFTER INSERT ON qualifying_points
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION qualifying_windows_add();
