-- Foundation: programs, members, the events inbox and the double-entry points ledger.
--
-- Ledger design (extended, never replaced, by later migrations):
--   * accounts: one row per (program, member, currency, kind). Member accounts are
--     `available`, `earned` and `debt`; program accounts (member_id NULL) are `issued`,
--     `redeemed`, `expired`, `clawed_back` and `forgiven`.
--   * ledger_transactions: one per movement, unique on (program, idempotency_key), with
--     reason, source and time. ledger_legs: the signed amounts per account; the legs of a
--     transaction sum to zero: a statement trigger checks that the legs each INSERT adds
--     to a transaction sum to zero, and a deferred constraint trigger checks, at commit,
--     that no transaction was left without legs.
--   * accounts.balance is kept by the same statement trigger, for member accounts only:
--     program accounts are touched by every movement of the program, and a cached
--     balance there would serialize all writers on one row. Their totals are sums of legs.
--   * lots: what a member account holds, piece by piece (amount left, available_at,
--     expires_at, source order). For every member account the sum of `remaining` over its
--     lots equals its balance; `loyalty verify` (next migration set) checks it.

CREATE TABLE programs (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]*$' AND length(name) <= 64),
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO programs (name) VALUES ('default');

CREATE TABLE members (
    program     text NOT NULL REFERENCES programs (name),
    member_id   text NOT NULL CHECK (length(member_id) BETWEEN 1 AND 128),
    profile     jsonb NOT NULL DEFAULT '{}'::jsonb,
    tier        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    erased_at   timestamptz,
    PRIMARY KEY (program, member_id)
);

CREATE TABLE events (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program       text NOT NULL REFERENCES programs (name),
    event_id      text NOT NULL CHECK (length(event_id) BETWEEN 1 AND 128),
    type          text NOT NULL,
    member_id     text NOT NULL CHECK (length(member_id) BETWEEN 1 AND 128),
    -- Stored so that the partition of a member never changes under a running router.
    member_hash   integer NOT NULL GENERATED ALWAYS AS (hashtext(member_id) & 2147483647) STORED,
    payload       jsonb NOT NULL,
    occurred_at   timestamptz NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'processed', 'rejected', 'dead')),
    outcome       text,
    detail        text,
    attempts      integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error    text,
    not_before    timestamptz,
    processed_at  timestamptz,
    caused_by     bigint REFERENCES events (id),
    UNIQUE (program, event_id),
    CHECK ((status = 'pending') = (processed_at IS NULL))
);
CREATE INDEX events_pending ON events (program, id) WHERE status = 'pending';
CREATE INDEX events_member ON events (program, member_id, id);
CREATE INDEX events_dead ON events (program, id) WHERE status = 'dead';
-- Events waiting for a retry, which hold back their member's later events.
CREATE INDEX events_retrying ON events (program, member_id, id)
    WHERE status = 'pending' AND not_before IS NOT NULL;

-- Wake the routers of a program when events arrive: one notification per program and
-- statement, delivered at commit, so a router never polls for work.
CREATE FUNCTION events_notify_inbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('loyalty_inbox', p.program)
    FROM (SELECT DISTINCT program FROM new_events) AS p;
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify_inbox AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify_inbox();

CREATE TABLE accounts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program    text NOT NULL REFERENCES programs (name),
    member_id  text,
    currency   text NOT NULL CHECK (currency ~ '^[a-z][a-z0-9_]*$'),
    kind       text NOT NULL CHECK (kind IN ('available', 'earned', 'debt', 'issued',
                                             'redeemed', 'expired', 'clawed_back', 'forgiven')),
    balance    bigint NOT NULL DEFAULT 0,
    CHECK ((member_id IS NULL) = (kind IN ('issued', 'redeemed', 'expired', 'clawed_back',
                                           'forgiven'))),
    CHECK (kind NOT IN ('available', 'earned') OR balance >= 0),
    UNIQUE NULLS NOT DISTINCT (program, member_id, currency, kind)
);

CREATE TABLE ledger_transactions (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    program          text NOT NULL REFERENCES programs (name),
    idempotency_key  text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 400),
    member_id        text,
    kind             text NOT NULL,
    reason           text NOT NULL,
    source           text NOT NULL,
    occurred_at      timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (program, idempotency_key)
);
CREATE INDEX ledger_transactions_member ON ledger_transactions (program, member_id, id);

CREATE TABLE ledger_legs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transaction_id  bigint NOT NULL REFERENCES ledger_transactions (id),
    account_id      bigint NOT NULL REFERENCES accounts (id),
    amount          bigint NOT NULL CHECK (amount <> 0)
);
CREATE INDEX ledger_legs_transaction ON ledger_legs (transaction_id);
CREATE INDEX ledger_legs_account ON ledger_legs (account_id, id);

-- force_custom_plan: each call plans with the real size of its transition table and of
-- accounts. A plan cached while accounts was small (a hash join over all of it) would
-- otherwise be kept by the connection, and every award would scan every account.
CREATE FUNCTION ledger_legs_post() RETURNS trigger LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan AS $$
DECLARE
    unbalanced bigint;
BEGIN
    -- Each statement's legs balance per transaction, so every transaction always
    -- balances, however many statements add to it; no read of older legs is needed.
    SELECT n.transaction_id INTO unbalanced
    FROM new_legs AS n
    GROUP BY n.transaction_id
    HAVING sum(n.amount) <> 0
    LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: its legs must sum to zero',
            unbalanced USING ERRCODE = 'check_violation';
    END IF;
    UPDATE accounts AS a
    SET balance = a.balance + s.amount
    FROM (SELECT account_id, sum(amount) AS amount FROM new_legs GROUP BY account_id) AS s
    WHERE a.id = s.account_id AND a.member_id IS NOT NULL;
    RETURN NULL;
END $$;
CREATE TRIGGER ledger_legs_post AFTER INSERT ON ledger_legs
    REFERENCING NEW TABLE AS new_legs
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_legs_post();

CREATE FUNCTION ledger_legs_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger legs are immutable: post a correcting transaction instead'
        USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER ledger_legs_immutable BEFORE UPDATE OR DELETE ON ledger_legs
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_legs_immutable();

-- force_custom_plan: a plan cached while ledger_legs was still small would scan the
-- whole table at every commit once it has grown.
CREATE FUNCTION ledger_transaction_has_legs() RETURNS trigger LANGUAGE plpgsql
SET plan_cache_mode = force_custom_plan AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM ledger_legs WHERE transaction_id = NEW.id) THEN
        RAISE EXCEPTION 'ledger transaction % has no legs', NEW.id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER ledger_transaction_has_legs AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_transaction_has_legs();

CREATE TABLE lots (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id      bigint NOT NULL REFERENCES accounts (id),
    transaction_id  bigint NOT NULL REFERENCES ledger_transactions (id),
    amount          bigint NOT NULL CHECK (amount > 0),
    remaining       bigint NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    available_at    timestamptz,
    expires_at      timestamptz,
    order_id        text,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX lots_open ON lots (account_id, expires_at NULLS LAST, id) WHERE remaining > 0;
CREATE INDEX lots_order ON lots (order_id) WHERE order_id IS NOT NULL;
