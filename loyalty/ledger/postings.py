"""The points ledger: double-entry transactions over accounts, with lots.

Every function here runs inside the caller's transaction on one connection, so the
router can apply a whole batch of events atomically. Invariants live in the database
(see ``migrations/``): the legs of a transaction sum to zero, member ``available`` and
``earned`` balances never go below zero, a ledger key is used once per program.

Sign convention: a member account's balance is what the program owes the member.
``issued`` goes negative as points are given; ``redeemed``, ``expired`` and
``clawed_back`` go positive as points leave members. A member's ``debt`` account goes
negative by what the member owes (points clawed back after they were spent).

Worked example: a member is given 120 points (``available``). Legs: member
``available`` +120, program ``issued`` -120. The member withdraws 50: member
``available`` -50, program ``redeemed`` +50; the soonest-expiring lots give up their
points first. Outstanding liability is what members hold: 70.

Lots and cut-offs (``migrations/0003_cutoffs.sql``): all of a member's lots in a currency
live in the member's ``available`` account, earned ones too; whether a lot is earned,
available or expired follows from its dates and the program's cut-offs, which maturing
and expiry move forward in bulk. Every function here that writes takes the program's
shared ledger lock (``hold``) before it reads anything that depends on the cut-offs, and
keeps it until the transaction ends: the bulk steps, which take it exclusively, never
run in the middle of a writer. An award takes it inside its one statement, through
``ledger_cutoffs_held``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from loyalty.errors import InsufficientPoints, LedgerOutOfStep, LedgerRefusal
from loyalty.models import LedgerReceipt
from loyalty.store.db import Conn

MEMBER_KINDS = ("available", "earned", "debt")
PROGRAM_KINDS = ("issued", "redeemed", "expired", "clawed_back", "forgiven")

# Member and program accounts are looked up separately: `=` and `IS NULL` can both use
# the unique index, `IS NOT DISTINCT FROM` cannot.
_FIND_ACCOUNTS = """
SELECT a.id, a.member_id, a.kind, a.balance
FROM accounts AS a
WHERE a.program = $1 AND a.member_id = $2 AND a.currency = $3 AND a.kind = ANY($4::text[])
UNION ALL
SELECT a.id, NULL, a.kind, a.balance
FROM accounts AS a
WHERE a.program = $1 AND a.member_id IS NULL AND a.currency = $3 AND a.kind = ANY($5::text[])
"""

_CREATE_ACCOUNTS = """
INSERT INTO accounts (program, member_id, currency, kind)
SELECT $1, w.member_id, $3, w.kind FROM unnest($2::text[], $4::text[]) AS w(member_id, kind)
ON CONFLICT DO NOTHING
"""

# The shared lock every writer of a program's ledger holds; the bulk steps of
# `housekeeping` take it exclusively.
LEDGER_LOCK = "hashtextextended('loyalty-ledger:' || {program}, 0)"


async def hold(conn: Conn, program: str) -> None:
    """Take the program's shared ledger lock for the rest of the current transaction.

    The functions of this module take it themselves, before they read anything that
    depends on the cut-offs. Call it first in a transaction that reads lot states and
    then writes the ledger by other means; taking it again is free.
    """
    await conn.execute(
        f"SELECT pg_advisory_xact_lock_shared({LEDGER_LOCK.format(program='$1')})", program
    )


# The cut-offs of the program and currency of an account, -infinity when none was set,
# for readers and for writers that hold the lock already.
CUTOFFS = """(
    SELECT coalesce(max(c.matured_through), '-infinity') AS matured_through,
           coalesce(max(c.expired_through), '-infinity') AS expired_through
    FROM accounts AS ca JOIN ledger_cutoffs AS c
      ON c.program = ca.program AND c.currency = ca.currency
    WHERE ca.id = {account}
)"""

# A lot's state under the cut-offs `cut` (see the migration): live lots are those with
# points that have not expired; live ones are earned until the maturing cut-off passes.
LIVE = "({l}.remaining > 0 AND ({l}.expires_at IS NULL OR {l}.expires_at > {cut}.expired_through))"
EARNED = "coalesce({l}.available_at > {cut}.matured_through, false)"

# Lots give up points in this order: the lots of the preferred order first (returns take
# back an order's own points first), then soonest-expiring, never-expiring last, oldest
# first on ties. Each lot gives min(remaining, what is still owed after those before it).
# Only live lots of the state asked for ({earned}: earned or available) are taken, under
# the cut-offs of the enclosing statement's `cut`.
_CONSUME = f"""
UPDATE lots AS l
SET remaining = l.remaining - least(l.remaining, {{points}} - o.before)
FROM (
    SELECT lot.id, lot.remaining AS had,
           sum(lot.remaining) OVER (
               ORDER BY coalesce(lot.order_id = {{order}}::text, false) DESC,
                        lot.expires_at NULLS LAST, lot.id
           ) - lot.remaining AS before
    FROM lots AS lot, cut
    WHERE lot.account_id = {{account}} AND {LIVE.format(l="lot", cut="cut")}
      AND {EARNED.format(l="lot", cut="cut")} = {{earned}}
) AS o
WHERE l.id = o.id AND o.before < {{points}}
"""


def lot_dates(available_at: str, expires_at: str) -> str:
    """A new lot's dates, never behind a cut-off of `cut`: a lot already due or past its
    date matures or expires at the next run. NULL available_at: usable at once."""
    return f"""
    CASE WHEN {available_at}::timestamptz IS NOT NULL
         THEN greatest({available_at}::timestamptz,
                       cut.matured_through + interval '1 microsecond') END,
    CASE WHEN {expires_at}::timestamptz IS NOT NULL
         THEN greatest({expires_at}::timestamptz,
                       cut.expired_through + interval '1 microsecond') END"""


# One statement per movement: the transaction (skipped if its key was used), its legs,
# at most one new lot, at most one consumption of lots, and the member's activity.
_POST = f"""
WITH cut AS (SELECT * FROM ledger_cutoffs_held($1, $19::text)),
tx AS (
    INSERT INTO ledger_transactions (program, idempotency_key, member_id, kind, reason,
                                     source, occurred_at, order_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $14::text)
    ON CONFLICT (program, idempotency_key) DO NOTHING
    RETURNING id
),
legs AS (
    INSERT INTO ledger_legs (transaction_id, account_id, amount)
    SELECT tx.id, leg.account_id, leg.amount
    FROM tx, unnest($8::bigint[], $9::bigint[]) AS leg(account_id, amount)
    RETURNING 1
),
lot AS (
    INSERT INTO lots (account_id, transaction_id, amount, remaining, available_at,
                      expires_at, order_id)
    SELECT $10::bigint, tx.id, $11::bigint, $11::bigint, {lot_dates("$12", "$13")}, $14::text
    FROM tx, cut
    WHERE $11::bigint > 0
    RETURNING 1
),
consumed AS (
    {
    _CONSUME.format(points="$17::bigint", order="$18", account="$16::bigint", earned="$15::boolean")
}
      AND EXISTS (SELECT 1 FROM tx)
    RETURNING o.had - l.remaining AS taken
),
activity AS (
    INSERT INTO member_currencies (program, member_id, currency, lifetime_earned,
                                   last_activity_at)
    SELECT $1, $3, $19::text, $20::bigint, $7 FROM tx WHERE $21::boolean
    ON CONFLICT (program, member_id, currency) DO UPDATE
    SET lifetime_earned = member_currencies.lifetime_earned + EXCLUDED.lifetime_earned,
        last_activity_at = greatest(member_currencies.last_activity_at,
                                    EXCLUDED.last_activity_at)
    RETURNING 1
)
SELECT (SELECT id FROM tx) AS id, (SELECT coalesce(sum(taken), 0) FROM consumed) AS taken
"""

# The common award in one round trip: the member's accounts (the one credited and the
# `available` one that holds the lot) and the program's `issued` account exist and the
# member owes nothing. `ready` is empty otherwise, nothing is
# written, and `award` takes the general path.
_AWARD_FAST = f"""
WITH acct AS (
    SELECT
        (SELECT id FROM accounts WHERE program = $1 AND member_id = $3 AND currency = $9
                                    AND kind = $10) AS member_account,
        (SELECT id FROM accounts WHERE program = $1 AND member_id = $3 AND currency = $9
                                    AND kind = 'available') AS pocket,
        (SELECT id FROM accounts WHERE program = $1 AND member_id IS NULL AND currency = $9
                                    AND kind = 'issued') AS issued_account,
        (SELECT balance FROM accounts WHERE program = $1 AND member_id = $3
                                         AND currency = $9 AND kind = 'debt') AS debt
),
ready AS (
    SELECT * FROM acct
    WHERE member_account IS NOT NULL AND pocket IS NOT NULL AND issued_account IS NOT NULL
      AND coalesce(debt, 0) = 0
),
tx AS (
    INSERT INTO ledger_transactions (program, idempotency_key, member_id, kind, reason,
                                     source, occurred_at, order_id)
    SELECT $1, $2, $3, $4, $5, $6, $7, $13::text FROM ready
    ON CONFLICT (program, idempotency_key) DO NOTHING
    RETURNING id
),
legs AS (
    INSERT INTO ledger_legs (transaction_id, account_id, amount)
    SELECT tx.id, leg.account_id, leg.amount
    FROM tx, ready,
         LATERAL (VALUES (ready.member_account, $8::bigint),
                         (ready.issued_account, -$8::bigint)) AS leg(account_id, amount)
    RETURNING 1
),
lot AS (
    INSERT INTO lots (account_id, transaction_id, amount, remaining, available_at,
                      expires_at, order_id)
    SELECT ready.pocket, tx.id, $8::bigint, $8::bigint, {lot_dates("$11", "$12")}, $13::text
    FROM tx, ready, ledger_cutoffs_held($1, $9) AS cut
    RETURNING 1
),
activity AS (
    INSERT INTO member_currencies (program, member_id, currency, lifetime_earned,
                                   last_activity_at)
    SELECT $1, $3, $9, $8::bigint, $7 FROM tx
    ON CONFLICT (program, member_id, currency) DO UPDATE
    SET lifetime_earned = member_currencies.lifetime_earned + EXCLUDED.lifetime_earned,
        last_activity_at = greatest(member_currencies.last_activity_at,
                                    EXCLUDED.last_activity_at)
    RETURNING 1
)
SELECT (SELECT id FROM tx) AS transaction_id, (SELECT count(*) FROM ready) AS ready
"""

_CONSUME_ALONE = (
    "WITH cut AS (SELECT c.* FROM accounts AS a,"
    " ledger_cutoffs_held(a.program, a.currency) AS c WHERE a.id = $1::bigint) "
    + _CONSUME.format(points="$2::bigint", order="$3", account="$1::bigint", earned="$4::boolean")
    + " RETURNING o.had - l.remaining AS taken"
)


@dataclass
class Movement:
    """One ledger transaction as `_POST` writes it."""

    program: str
    key: str
    member_id: str | None
    kind: str
    reason: str
    source: str
    occurred_at: datetime
    legs: list[tuple[int, int]]
    currency: str = ""
    lot_account: int | None = None
    lot_points: int = 0
    available_at: datetime | None = None
    expires_at: datetime | None = None
    order_id: str | None = None
    consume_account: int | None = None
    consume_points: int = 0
    consume_earned: bool = False
    prefer_order: str | None = None
    earned: int = 0
    activity: bool = False


def _out_of_step(account_id: int | None, points: int, taken: int) -> LedgerOutOfStep:
    return LedgerOutOfStep(
        f"the lots of account {account_id} gave {taken} of {points} points: lots and "
        "balance are out of step (was the program's ledger lock held? see ledger.hold)"
    )


async def post(conn: Conn, m: Movement) -> int | None:
    """Write one movement; returns its transaction id, or None if its key was used.

    Raises:
        LedgerOutOfStep: the lots to consume hold fewer points than asked.
    """
    row = await conn.fetchrow(
        _POST,
        m.program, m.key, m.member_id, m.kind, m.reason, m.source, m.occurred_at,
        [a for a, _ in m.legs], [p for _, p in m.legs],
        m.lot_account, m.lot_points, m.available_at, m.expires_at, m.order_id,
        m.consume_earned, m.consume_account, m.consume_points, m.prefer_order,
        m.currency, m.earned, m.activity and m.member_id is not None,
    )  # fmt: skip
    assert row is not None
    transaction_id: int | None = row["id"]
    consumed = m.consume_account is not None and transaction_id is not None
    if consumed and row["taken"] != m.consume_points:
        raise _out_of_step(m.consume_account, m.consume_points, row["taken"])
    return transaction_id


async def consume(
    conn: Conn, pocket: int, points: int, prefer_order: str | None, *, earned: bool = False
) -> None:
    """Take points from the earned or available lots of a member's ``available`` account.

    The order's lots go first, then the soonest-expiring.

    Raises:
        LedgerOutOfStep: the lots hold fewer points than asked.
    """
    taken = await conn.fetchval(
        f"WITH c AS ({_CONSUME_ALONE}) SELECT coalesce(sum(taken), 0) FROM c",
        pocket, points, prefer_order, earned,
    )  # fmt: skip
    if taken != points:
        raise _out_of_step(pocket, points, taken)


async def find_accounts(
    conn: Conn,
    program: str,
    currency: str,
    member_id: str | None,
    member_kinds: list[str],
    program_kinds: list[str],
) -> dict[tuple[str | None, str], tuple[int, int]]:
    """Existing accounts as {(member_id or None, kind): (id, balance)}; creates nothing."""
    rows = await conn.fetch(
        _FIND_ACCOUNTS, program, member_id, currency, member_kinds, program_kinds
    )
    return {(row["member_id"], row["kind"]): (row["id"], row["balance"]) for row in rows}


async def ensure_accounts(
    conn: Conn,
    program: str,
    currency: str,
    wanted: list[tuple[str | None, str]],
) -> dict[tuple[str | None, str], int]:
    """Get or create the accounts of one member (and of the program, as ``None``).

    Returns their ids keyed by (member_id or None, kind). Accounts are read first and
    created only when missing; the read after the insert is a new statement, so it also
    sees an account that a concurrent transaction created meanwhile.
    """
    members = {member for member, _ in wanted if member is not None}
    assert len(members) <= 1, "accounts of one member at a time"
    member = next(iter(members), None)
    member_kinds = [kind for m, kind in wanted if m is not None]
    program_kinds = [kind for m, kind in wanted if m is None]
    found = await find_accounts(conn, program, currency, member, member_kinds, program_kinds)
    missing = [key for key in wanted if key not in found]
    if missing:
        await conn.execute(
            _CREATE_ACCOUNTS, program, [m for m, _ in missing], currency, [k for _, k in missing]
        )
        found = await find_accounts(conn, program, currency, member, member_kinds, program_kinds)
    return {key: account_id for key, (account_id, _) in found.items()}


async def _existing(conn: Conn, program: str, key: str) -> LedgerReceipt:
    """The receipt of the transaction that first used ``key``, with its own points."""
    row = await conn.fetchrow(
        """SELECT t.id, coalesce(sum(g.amount) FILTER (WHERE g.amount > 0), 0)::bigint AS points
           FROM ledger_transactions AS t JOIN ledger_legs AS g ON g.transaction_id = t.id
           WHERE t.program = $1 AND t.idempotency_key = $2
           GROUP BY t.id""",
        program, key,
    )  # fmt: skip
    assert row is not None
    return LedgerReceipt(
        transaction_id=row["id"], idempotency_key=key, points=row["points"], duplicate=True
    )


async def award(
    conn: Conn,
    *,
    program: str,
    member_id: str,
    points: int,
    kind: str,
    currency: str,
    reason: str,
    source: str,
    key: str,
    occurred_at: datetime,
    available_at: datetime | None,
    expires_at: datetime | None = None,
    order_id: str | None = None,
) -> LedgerReceipt:
    """Give a member points: a new lot, after paying off any debt first.

    ``kind`` is ``available`` (usable now; ``available_at`` is ignored) or ``earned``
    (usable from ``available_at``, when maturing passes it). Legs: ``issued`` -points;
    ``debt`` +what pays it off; the member's ``kind`` account +the rest. The lot is kept
    in the member's ``available`` account either way. A key already used returns the
    first transaction, without a second effect.

    The common case (accounts exist, no debt) is one statement; a debt being created
    concurrently by another writer is then paid off by the member's next award.
    """
    if kind == "available":
        available_at = None
    elif available_at is None:
        raise ValueError("earned points need an available_at")
    fast = await conn.fetchrow(
        _AWARD_FAST,
        program, key, member_id, f"award_{kind}", reason, source, occurred_at,
        points, currency, kind, available_at, expires_at, order_id,
    )  # fmt: skip
    assert fast is not None
    if fast["transaction_id"] is not None:
        return LedgerReceipt(
            transaction_id=fast["transaction_id"], idempotency_key=key, points=points
        )
    if fast["ready"]:
        return await _existing(conn, program, key)
    kinds = sorted({kind, "available", "debt"})
    found = await find_accounts(conn, program, currency, member_id, kinds, ["issued"])
    wanted = [(member_id, kind), (member_id, "available"), (None, "issued")]
    if any(key not in found for key in wanted):
        await ensure_accounts(conn, program, currency, wanted)
        found = await find_accounts(conn, program, currency, member_id, kinds, ["issued"])
    member_account = found[(member_id, kind)][0]
    legs = [(found[(None, "issued")][0], -points)]
    pay_off = 0
    if (member_id, "debt") in found and found[(member_id, "debt")][1] < 0:
        debt_account = found[(member_id, "debt")][0]
        owed = -await conn.fetchval(
            "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE", debt_account
        )
        pay_off = min(points, owed)
        if pay_off:
            legs.append((debt_account, pay_off))
    if points > pay_off:
        legs.append((member_account, points - pay_off))
    transaction_id = await post(
        conn,
        Movement(
            program=program, key=key, member_id=member_id, kind=f"award_{kind}",
            reason=reason, source=source, occurred_at=occurred_at, legs=legs,
            currency=currency, lot_account=found[(member_id, "available")][0],
            lot_points=points - pay_off, available_at=available_at, expires_at=expires_at,
            order_id=order_id, earned=points, activity=True,
        ),
    )  # fmt: skip
    if transaction_id is None:
        return await _existing(conn, program, key)
    return LedgerReceipt(transaction_id=transaction_id, idempotency_key=key, points=points)


async def spend(
    conn: Conn,
    *,
    program: str,
    member_id: str,
    points: int,
    kind: str,
    currency: str,
    reason: str,
    source: str,
    key: str,
    occurred_at: datetime,
    counter: str = "redeemed",
) -> LedgerReceipt:
    """Take points from a member account into the program account ``counter``.

    The member account row is locked first, which serializes every movement of that
    account; the key is checked under that lock so that a retried spend returns its first
    result instead of failing on the balance it already reduced.

    Raises:
        LedgerRefusal: ``unknown_member`` if the program has never seen the member.
        InsufficientPoints: the account holds fewer points than asked; nothing is written.
    """
    await hold(conn, program)
    found = await find_accounts(conn, program, currency, member_id, [kind, "available"], [])
    if (member_id, kind) not in found:
        known = await conn.fetchval(
            "SELECT 1 FROM members WHERE program = $1 AND member_id = $2", program, member_id
        )
        if not known:
            raise LedgerRefusal(
                "unknown_member", f"member {member_id} is unknown in program {program}"
            )
        raise InsufficientPoints(
            f"member {member_id} has 0 {kind} {currency}, cannot remove {points}"
        )
    member_account = found[(member_id, kind)][0]
    counter_account = (await ensure_accounts(conn, program, currency, [(None, counter)]))[
        (None, counter)
    ]
    # The member's activity row first, then the account: an award locks them in that
    # order too (its statement upserts the activity, then its trigger the balance).
    balance = await conn.fetchval(
        """WITH activity AS (
               SELECT 1 FROM member_currencies
               WHERE program = $2 AND member_id = $3 AND currency = $4 FOR UPDATE)
           SELECT balance FROM accounts
           WHERE id = $1 AND (SELECT count(*) FROM activity) >= 0 FOR UPDATE""",
        member_account, program, member_id, currency,
    )  # fmt: skip
    used = await conn.fetchval(
        "SELECT 1 FROM ledger_transactions WHERE program = $1 AND idempotency_key = $2",
        program,
        key,
    )
    if used:
        return await _existing(conn, program, key)
    if balance < points:
        raise InsufficientPoints(
            f"member {member_id} has {balance} {kind} {currency}, cannot remove {points}"
        )
    transaction_id = await post(
        conn,
        Movement(
            program=program, key=key, member_id=member_id, kind=f"spend_{kind}",
            reason=reason, source=source, occurred_at=occurred_at,
            legs=[(member_account, -points), (counter_account, points)], currency=currency,
            consume_account=found[(member_id, "available")][0], consume_points=points,
            consume_earned=kind == "earned", activity=True,
        ),
    )  # fmt: skip
    if transaction_id is None:
        return await _existing(conn, program, key)
    return LedgerReceipt(transaction_id=transaction_id, idempotency_key=key, points=points)
