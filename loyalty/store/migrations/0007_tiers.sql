-- Tiers (loyalty/tiers.py).
--
-- * qualifying_points: the movements of the tier measure. An earn-rule award that
--   qualifies adds a row (source: the award's ledger key); a return takes its share of
--   the order's qualifying points back with a negative row dated like the order's
--   points (source: the return's key), so it leaves a rolling window with them. A
--   scheme's measure for a member at time t is the sum of the rows in its currency
--   earned within its window ending at t.
-- * member_tiers: each member's tier in each scheme, with its rank (0 = the lowest
--   tier, where members start: a member without a row is there). Promotion only ever
--   raises the rank, in the transaction that earned the points.
-- * members.tier keeps the tier of the program's first scheme, the one the member view
--   shows first; a member inserted without one starts in that scheme's lowest tier.

CREATE TABLE qualifying_points (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program    text NOT NULL REFERENCES programs (name),
    member_id  text NOT NULL,
    currency   text NOT NULL,
    earned_at  timestamptz NOT NULL,
    points     bigint NOT NULL CHECK (points <> 0),
    order_id   text,
    source     text NOT NULL,
    UNIQUE (program, source, currency)
);
CREATE INDEX qualifying_points_member
    ON qualifying_points (program, member_id, currency, earned_at) INCLUDE (points);
CREATE INDEX qualifying_points_order
    ON qualifying_points (program, order_id, currency) WHERE order_id IS NOT NULL;

CREATE TABLE member_tiers (
    program    text NOT NULL REFERENCES programs (name),
    scheme     text NOT NULL,
    member_id  text NOT NULL,
    tier       text NOT NULL,
    rank       integer NOT NULL CHECK (rank >= 0),
    since      timestamptz NOT NULL,
    PRIMARY KEY (program, scheme, member_id)
);

CREATE FUNCTION members_starting_tier() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.tier IS NULL THEN
        SELECT p.config #>> '{tier_schemes,0,tiers,0,name}' INTO NEW.tier
        FROM programs AS p WHERE p.name = NEW.program;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER members_starting_tier BEFORE INSERT ON members
    FOR EACH ROW EXECUTE FUNCTION members_starting_tier();
