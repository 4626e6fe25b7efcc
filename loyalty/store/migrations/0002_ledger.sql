-- The full ledger: per-program configuration, lifetime and activity per member and
-- currency, orders and their returns, and lot states for maturing and expiry.

-- The app's program settings (expiry and return policies), written by the worker and
-- `loyalty migrate --app`, so that SQL and every client read the same policies.
ALTER TABLE programs ADD COLUMN config jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Room in each page lets a balance update stay on its page (a HOT update, no index
-- writes): balances change at every movement, and in bulk during housekeeping.
ALTER TABLE accounts SET (fillfactor = 85);

-- Per member and currency: what was ever earned (for the member view and, later,
-- tiers) and when the member last earned or spent (for inactivity expiry).
CREATE TABLE member_currencies (
    program           text NOT NULL REFERENCES programs (name),
    member_id         text NOT NULL,
    currency          text NOT NULL,
    lifetime_earned   bigint NOT NULL DEFAULT 0 CHECK (lifetime_earned >= 0),
    last_activity_at  timestamptz,
    PRIMARY KEY (program, member_id, currency)
);
CREATE INDEX member_currencies_activity
    ON member_currencies (program, currency, last_activity_at);

-- A lot in an `earned` account waits for maturing; the flag keeps the maturing scan on a
-- small partial index instead of a join with accounts.
ALTER TABLE lots ADD COLUMN maturing boolean NOT NULL DEFAULT false;
-- What expired of a lot: a return must not take those points again from the member.
ALTER TABLE lots ADD COLUMN expired bigint NOT NULL DEFAULT 0
    CHECK (expired >= 0 AND expired + remaining <= amount);
CREATE INDEX lots_maturing ON lots (available_at) WHERE maturing AND remaining > 0;
CREATE INDEX lots_expiring ON lots (expires_at)
    WHERE remaining > 0 AND expires_at IS NOT NULL;
DROP INDEX lots_order;
CREATE INDEX lots_order ON lots (order_id, id) WHERE order_id IS NOT NULL;

-- Orders seen in purchase events, with how much of each was returned.
CREATE TABLE orders (
    program          text NOT NULL REFERENCES programs (name),
    order_id         text NOT NULL CHECK (length(order_id) BETWEEN 1 AND 128),
    member_id        text NOT NULL,
    amount           numeric(22, 4) NOT NULL CHECK (amount >= 0),
    money_currency   text NOT NULL,
    returned_amount  numeric(22, 4) NOT NULL DEFAULT 0
                     CHECK (returned_amount >= 0 AND returned_amount <= amount),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program, order_id)
);

-- The order an award was earned for: a return takes back what its order's awards gave,
-- including the part that paid off debt and so never became a lot.
ALTER TABLE ledger_transactions ADD COLUMN order_id text;
CREATE INDEX ledger_transactions_order ON ledger_transactions (program, order_id)
    WHERE order_id IS NOT NULL;

-- One row per return: the key that makes a repeated return return its first result.
CREATE TABLE order_returns (
    program          text NOT NULL,
    idempotency_key  text NOT NULL,
    order_id         text NOT NULL,
    amount           numeric(22, 4) NOT NULL CHECK (amount > 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (program, idempotency_key),
    FOREIGN KEY (program, order_id) REFERENCES orders (program, order_id)
);

-- One row per return and point currency: what the return took back, from where.
CREATE TABLE order_clawbacks (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program          text NOT NULL,
    order_id         text NOT NULL,
    currency         text NOT NULL,
    idempotency_key  text NOT NULL,
    returned_amount  numeric(22, 4) NOT NULL CHECK (returned_amount > 0),
    points           bigint NOT NULL CHECK (points >= 0),
    from_earned      bigint NOT NULL CHECK (from_earned >= 0),
    from_available   bigint NOT NULL CHECK (from_available >= 0),
    -- The order's points that had already expired: gone, nothing more to take.
    from_expired     bigint NOT NULL CHECK (from_expired >= 0),
    to_debt          bigint NOT NULL CHECK (to_debt >= 0),
    forgiven         bigint NOT NULL CHECK (forgiven >= 0),
    transaction_id   bigint REFERENCES ledger_transactions (id),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (points = from_earned + from_available + from_expired + to_debt + forgiven),
    FOREIGN KEY (program, order_id) REFERENCES orders (program, order_id),
    UNIQUE (program, idempotency_key, currency)
);
CREATE INDEX order_clawbacks_order ON order_clawbacks (program, order_id, currency);
