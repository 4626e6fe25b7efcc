-- The tier measure kept incrementally: a member's qualifying points per currency and
-- calendar year (UTC), summed as rows are added to qualifying_points.
--
-- The router's fast path measures a member at an event's time without reading the
-- member's whole history: over the lifetime, the sum of these rows minus the few
-- qualifying points dated after the event; over a calendar year, that year's row minus
-- the same tail. (A rolling window reads its own rows, which the window bounds.) Rows of
-- qualifying_points are only ever added, so a statement trigger keeps the sums exact.

CREATE TABLE qualifying_totals (
    program    text NOT NULL REFERENCES programs (name),
    member_id  text NOT NULL,
    currency   text NOT NULL,
    year       integer NOT NULL,
    points     bigint NOT NULL,
    PRIMARY KEY (program, member_id, currency, year)
);

INSERT INTO qualifying_totals (program, member_id, currency, year, points)
SELECT program, member_id, currency,
       extract(year FROM earned_at AT TIME ZONE 'UTC')::integer, sum(points)::bigint
FROM qualifying_points
GROUP BY 1, 2, 3, 4;

CREATE FUNCTION qualifying_totals_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO qualifying_totals (program, member_id, currency, year, points)
    SELECT n.program, n.member_id, n.currency,
           extract(year FROM n.earned_at AT TIME ZONE 'UTC')::integer, sum(n.points)::bigint
    FROM added AS n
    GROUP BY 1, 2, 3, 4
    ORDER BY 1, 2, 3, 4
    ON CONFLICT (program, member_id, currency, year) DO UPDATE
    SET points = qualifying_totals.points + EXCLUDED.points;
    RETURN NULL;
END
$$;

CREATE TRIGGER qualifying_totals_add AFTER INSERT ON qualifying_points
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION qualifying_totals_add();
