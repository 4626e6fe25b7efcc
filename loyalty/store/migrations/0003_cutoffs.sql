-- Cut-offs: maturing and date expiry move a per-program, per-currency cut-off instead of
-- rewriting every lot, so a million lots mature or expire by writing only the legs.
--
-- * A member's lots all live in the member's `available` account (its "pocket"), also
--   while they are earned. A lot's state follows from its dates and the cut-offs of its
--   program and currency (a missing cut-offs row counts as -infinity):
--     expired   remaining > 0 and expires_at <= expired_through (its points went to
--               `expired` when the cut-off passed them; or, expired one by one under an
--               inactivity policy: remaining 0 and `expired` > 0);
--     earned    not expired, and available_at > matured_through;
--     available the other lots with points (available_at NULL: usable from the start).
-- * Maturing and date expiry move a cut-off forward and post, in the same transaction,
--   one ledger transaction with a leg per member account for every lot between the old
--   and the new cut-off. New lots are never created behind a cut-off: an award clamps
--   its dates to just after them, so the lot matures or expires at the next run.
-- * Every writer of a program's ledger holds the shared advisory lock
--   ('loyalty-ledger:' || program) from the start of its transaction; the bulk steps take
--   it exclusively. A writer's statements therefore never mix cut-offs from before and
--   after a bulk step (see loyalty/ledger.py, `hold`).

CREATE TABLE ledger_cutoffs (
    program          text NOT NULL REFERENCES programs (name),
    currency         text NOT NULL,
    matured_through  timestamptz NOT NULL DEFAULT '-infinity',
    expired_through  timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (program, currency)
);

-- The cut-offs a writer's statement uses: the function first takes the program's shared
-- ledger lock (waiting while a bulk step runs), then reads the row. Being VOLATILE, its
-- query sees what committed up to then, also when the calling statement started before
-- a bulk step committed; the lock keeps the values until the writer's transaction ends.
CREATE FUNCTION ledger_cutoffs_held(p_program text, p_currency text,
                                    OUT matured_through timestamptz,
                                    OUT expired_through timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('loyalty-ledger:' || p_program, 0));
    SELECT c.matured_through, c.expired_through INTO matured_through, expired_through
    FROM ledger_cutoffs AS c WHERE c.program = p_program AND c.currency = p_currency;
    IF NOT FOUND THEN
        matured_through := '-infinity';
        expired_through := '-infinity';
    END IF;
END $$;

-- Earned lots move into their member's available account, which every member with an
-- earned lot now has.
INSERT INTO accounts (program, member_id, currency, kind)
SELECT DISTINCT a.program, a.member_id, a.currency, 'available'
FROM lots AS l JOIN accounts AS a ON a.id = l.account_id
WHERE a.kind = 'earned'
ON CONFLICT DO NOTHING;

-- Existing lots keep their state with cut-offs at -infinity: lots not maturing are
-- usable from the start (available_at NULL), maturing lots are earned until a run.
INSERT INTO ledger_cutoffs (program, currency)
SELECT program, currency FROM accounts WHERE member_id IS NULL AND kind = 'issued';

UPDATE lots SET available_at = NULL WHERE NOT maturing AND available_at IS NOT NULL;

UPDATE lots AS l SET account_id = p.id
FROM accounts AS a
JOIN accounts AS p ON p.program = a.program AND p.member_id = a.member_id
                  AND p.currency = a.currency AND p.kind = 'available'
WHERE a.id = l.account_id AND a.kind = 'earned';

DROP INDEX lots_maturing;
ALTER TABLE lots DROP COLUMN maturing;
-- The bulk steps read the lots between two cut-offs through these.
CREATE INDEX lots_due ON lots (available_at) WHERE available_at IS NOT NULL;
DROP INDEX lots_expiring;
CREATE INDEX lots_expiring ON lots (expires_at) WHERE expires_at IS NOT NULL;

-- Foreign keys on legs checked row by row took a KEY SHARE lock on the program's
-- `issued` account at every award (a hot row shared by all writers) and cost a lookup
-- per leg in bulk steps. The statement trigger checks them set-based instead; accounts
-- and transactions are never deleted, nor their ids changed, so nothing can disappear
-- from under a leg.
ALTER TABLE ledger_legs DROP CONSTRAINT ledger_legs_transaction_id_fkey;
ALTER TABLE ledger_legs DROP CONSTRAINT ledger_legs_account_id_fkey;

-- Two plans for one query. The trigger updates the member balances and, in the same
-- query, looks for a leg on a missing account or of a missing transaction; before that,
-- for an unbalanced transaction. Any of them raises, which undoes the whole statement.
-- A statement of a few legs (one movement) runs the query as static SQL, whose plan
-- PL/pgSQL caches, with sequential scans off so the cached plan goes by primary key
-- whatever the tables' sizes were when it was made (0001 planned at every call, which
-- cost more than the movement itself). A bulk statement runs the same query through
-- EXECUTE, planned for its real size each time.
CREATE OR REPLACE FUNCTION ledger_legs_post() RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off AS $$
DECLARE
    legs bigint;
    unbalanced bigint;
    no_account bigint;
    no_transaction bigint;
BEGIN
    SELECT (SELECT count(*) FROM (SELECT 1 FROM new_legs LIMIT 17) AS few),
           (SELECT n.transaction_id FROM new_legs AS n
            GROUP BY n.transaction_id HAVING sum(n.amount) <> 0 LIMIT 1)
    INTO legs, unbalanced;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: its legs must sum to zero',
            unbalanced USING ERRCODE = 'check_violation';
    END IF;
    IF legs <= 16 THEN
        WITH sums AS (
            SELECT account_id, sum(amount) AS amount FROM new_legs GROUP BY account_id
        ),
        updated AS (
            UPDATE accounts AS a SET balance = a.balance + s.amount
            FROM sums AS s
            WHERE a.id = s.account_id AND a.member_id IS NOT NULL
            RETURNING 1
        )
        SELECT (SELECT s.account_id FROM sums AS s
                WHERE NOT EXISTS (SELECT 1 FROM accounts AS a WHERE a.id = s.account_id)
                LIMIT 1),
               (SELECT t.transaction_id
                FROM (SELECT DISTINCT transaction_id FROM new_legs) AS t
                WHERE NOT EXISTS (SELECT 1 FROM ledger_transactions AS x
                                  WHERE x.id = t.transaction_id) LIMIT 1)
        INTO no_account, no_transaction
        FROM (SELECT count(*) FROM updated) AS done;
    ELSE
        PERFORM set_config('enable_seqscan', 'on', true);
        EXECUTE $bulk$
            WITH sums AS (
                SELECT account_id, sum(amount) AS amount FROM new_legs GROUP BY account_id
            ),
            updated AS (
                UPDATE accounts AS a SET balance = a.balance + s.amount
                FROM sums AS s
                WHERE a.id = s.account_id AND a.member_id IS NOT NULL
                RETURNING 1
            )
            SELECT (SELECT s.account_id FROM sums AS s
                    WHERE NOT EXISTS (SELECT 1 FROM accounts AS a WHERE a.id = s.account_id)
                    LIMIT 1),
                   (SELECT t.transaction_id
                    FROM (SELECT DISTINCT transaction_id FROM new_legs) AS t
                    WHERE NOT EXISTS (SELECT 1 FROM ledger_transactions AS x
                                      WHERE x.id = t.transaction_id) LIMIT 1)
            FROM (SELECT count(*) FROM updated) AS done
        $bulk$ INTO no_account, no_transaction;
    END IF;
    IF no_account IS NOT NULL THEN
        RAISE EXCEPTION 'ledger leg on account %, which does not exist', no_account
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF no_transaction IS NOT NULL THEN
        RAISE EXCEPTION 'ledger leg of transaction %, which does not exist', no_transaction
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

-- The commit-time check plans once per connection too; with sequential scans off, the
-- cached plan reads the legs index whatever the table's size was when it was made.
ALTER FUNCTION ledger_transaction_has_legs() RESET plan_cache_mode;
ALTER FUNCTION ledger_transaction_has_legs() SET enable_seqscan = off;

CREATE FUNCTION ledger_keep() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% rows are kept for the ledger: they cannot be deleted or renumbered',
        TG_TABLE_NAME USING ERRCODE = 'restrict_violation';
END $$;
CREATE TRIGGER accounts_keep BEFORE DELETE OR UPDATE OF id OR TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_keep();
CREATE TRIGGER ledger_transactions_keep
    BEFORE DELETE OR UPDATE OF id OR TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_keep();

-- Room in each page for a new version of every row: a bulk step updates the balance of
-- hundreds of thousands of accounts at once, and each update then stays on its page
-- (no index writes). Applies to pages written from now on.
ALTER TABLE accounts SET (fillfactor = 50);

-- Every lot with its state under the cut-offs, and what it still holds (an expired lot
-- holds nothing, whether its cut-off passed it or it expired alone). For `loyalty
-- verify`, tests and operators; the writers use the same conditions inline.
CREATE VIEW lot_states AS
SELECT l.id, l.account_id, a.program, a.member_id, a.currency, l.transaction_id, l.amount,
       l.remaining, l.expired, l.available_at, l.expires_at, l.order_id,
       CASE WHEN l.expired > 0 OR (l.remaining > 0 AND l.expires_at <= cut.expired_through)
                THEN 'expired'
            WHEN l.available_at > cut.matured_through THEN 'earned'
            ELSE 'available'
       END AS state,
       CASE WHEN l.expires_at <= cut.expired_through THEN 0 ELSE l.remaining END AS held
FROM lots AS l
JOIN accounts AS a ON a.id = l.account_id
LEFT JOIN ledger_cutoffs AS c ON c.program = a.program AND c.currency = a.currency
CROSS JOIN LATERAL (
    SELECT coalesce(c.matured_through, '-infinity') AS matured_through,
           coalesce(c.expired_through, '-infinity') AS expired_through
) AS cut;

-- Fewer index writes per award. Every award updates the member's activity row: without
-- an index on last_activity_at, and with room in each page, that update stays on its
-- page (the inactivity step reads the program's rows through the primary key instead).
-- Nothing reads transactions by member; the member view goes through the legs.
DROP INDEX member_currencies_activity;
ALTER TABLE member_currencies SET (fillfactor = 50);
DROP INDEX ledger_transactions_member;
