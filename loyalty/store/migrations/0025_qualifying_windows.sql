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
--   qualifying_points at `filled_at`; a member without a row in qualifying_window_totals
--   then had no row earned after filled_at - span.
-- * qualifying_window_totals: per member, `points` is the member's measure (the sum of
--   its rows earned in (t - span, t]) at every time t with valid_from <= t < valid_until.
--   A fill or refresh at time r writes the measure at r, valid from r until the earliest
--   row in the window leaves it (its earned_at + span) or a row dated ahead enters it
--   (its earned_at), whichever comes first ('infinity' if neither).
--
-- The trigger below keeps that true as rows are added (rows of qualifying_points are only
-- ever added, 0019). A row earned at e is counted when e <= now(): the measure gains its
-- points from e on, so the span starts at e at the earliest and ends at e + span at the
-- latest. A row dated ahead (e > now(), clocks drift) is not counted: the span ends at e
-- at the latest, and the refresh after e counts it. Time alone ends a span: a full
-- recompute reads a kept sum where it holds at its now() and sums the member's rows
-- (qualifying_window_sum) where it does not; housekeeping refreshes the sums whose span
-- has ended, holding the program's ledger lock exclusively (every writer of
-- qualifying_points holds it shared).

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

-- The sums whose span has ended, for a refresh (valid_until changes only when a member's
-- first row in the window is added, so most updates stay HOT).
CREATE INDEX qualifying_window_totals_until
    ON qualifying_window_totals (program, currency, span, valid_until);

-- A member's measure now from its own rows, where a kept sum does not hold now. A
-- function (not a subquery) so that a full recompute calling it still reads in parallel.
CREATE FUNCTION qualifying_window_sum(p text, member text, cur text, span interval)
RETURNS bigint LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN (SELECT coalesce(sum(points), 0)::bigint FROM qualifying_points
            WHERE program = p AND member_id = member AND currency = cur
              AND earned_at > now() - span AND earned_at <= now());
END
$$;

CREATE FUNCTION qualifying_windows_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO qualifying_window_totals AS t (program, currency, span, member_id, points,
                                               valid_from, valid_until)
    SELECT n.program, n.currency, w.span, n.member_id,
           coalesce(sum(n.points) FILTER (WHERE n.earned_at <= now()), 0)::bigint,
           greatest(max(n.earned_at) FILTER (WHERE n.earned_at <= now()), w.filled_at),
           coalesce(least(min(n.earned_at) FILTER (WHERE n.earned_at <= now()) + w.span,
                          min(n.earned_at) FILTER (WHERE n.earned_at > now())), 'infinity')
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
