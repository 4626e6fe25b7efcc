-- Earn rules (loyalty/rules.py): what each rule awarded, and the rows that its caps lock.
--
-- * earn_rule_awards: one row per award of a rule for an event (unique per program, rule
--   and event), with the points, the currency, whether they qualify for tiers and the
--   ledger transaction. The sliding-window cap of a rule counts these rows.
-- * earn_rule_usage: one row per (program, rule, member), locked by every capped award of
--   the rule for the member before it counts; `awards` is the member's lifetime count.
-- * earn_rule_totals: one row per (program, rule) with a `max_total`, locked likewise;
--   `awards` is the rule's lifetime count over all members.

CREATE TABLE earn_rule_awards (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program         text NOT NULL REFERENCES programs (name),
    rule            text NOT NULL,
    member_id       text NOT NULL,
    event_id        text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    currency        text NOT NULL,
    points          bigint NOT NULL CHECK (points > 0),
    qualifying      boolean NOT NULL,
    transaction_id  bigint NOT NULL,
    UNIQUE (program, rule, event_id)
);
CREATE INDEX earn_rule_awards_window ON earn_rule_awards (program, rule, member_id, occurred_at);

CREATE TABLE earn_rule_usage (
    program    text NOT NULL REFERENCES programs (name),
    rule       text NOT NULL,
    member_id  text NOT NULL,
    awards     bigint NOT NULL DEFAULT 0 CHECK (awards >= 0),
    PRIMARY KEY (program, rule, member_id)
);

CREATE TABLE earn_rule_totals (
    program  text NOT NULL REFERENCES programs (name),
    rule     text NOT NULL,
    awards   bigint NOT NULL DEFAULT 0 CHECK (awards >= 0),
    PRIMARY KEY (program, rule)
);
