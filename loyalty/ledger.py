"""The points ledger: double-entry transactions over accounts, with lots.

Every function here runs inside the caller's transaction on one connection, so the
router can apply a whole batch of events atomically. Invariants live in the database
(see ``migrations/0001_foundation.sql``): legs of a transaction sum to zero, member
balances never go below zero, a ledger key is used once per program.

Worked example: a member is given 120 points (``available``). Legs: member
``available`` +120, program ``issued`` -120. The member withdraws 50: member
``available`` -50, program ``redeemed`` +50; the oldest-expiring lots give up their
points first. Outstanding liability is what members hold: 70.
"""

from __future__ import annotations

from datetime import datetime

from loyalty.db import Conn
from loyalty.errors import InsufficientPoints
from loyalty.models import LedgerReceipt

MEMBER_KINDS = ("available", "earned", "debt")
PROGRAM_KINDS = ("issued", "redeemed", "expired", "clawed_back", "forgiven")

# Member and program accounts are looked up separately: `=` and `IS NULL` can both use
# the unique index, `IS NOT DISTINCT FROM` cannot.
_FIND_ACCOUNTS = """
SELECT a.id, a.member_id, a.kind
FROM accounts AS a
WHERE a.program = $1 AND a.member_id = $2 AND a.currency = $3 AND a.kind = ANY($4::text[])
UNION ALL
SELECT a.id, NULL, a.kind
FROM accounts AS a
WHERE a.program = $1 AND a.member_id IS NULL AND a.currency = $3 AND a.kind = ANY($5::text[])
"""

_CREATE_ACCOUNTS = """
INSERT INTO accounts (program, member_id, currency, kind)
SELECT $1, w.member_id, $3, w.kind FROM unnest($2::text[], $4::text[]) AS w(member_id, kind)
ON CONFLICT DO NOTHING
"""

_INSERT_TRANSACTION = """
INSERT INTO ledger_transactions (program, idempotency_key, member_id, kind, reason, source,
                                 occurred_at)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (program, idempotency_key) DO NOTHING
RETURNING id
"""

_AWARD = f"""
WITH tx AS ({_INSERT_TRANSACTION}),
legs AS (
    INSERT INTO ledger_legs (transaction_id, account_id, amount)
    SELECT tx.id, leg.account_id, leg.amount
    FROM tx, unnest($8::bigint[], $9::bigint[]) AS leg(account_id, amount)
    RETURNING 1
),
lot AS (
    INSERT INTO lots (account_id, transaction_id, amount, remaining, available_at, expires_at,
                      order_id)
    SELECT $10, tx.id, $11, $11, $12, $13, $14 FROM tx
    RETURNING id
)
SELECT (SELECT id FROM tx) AS transaction_id, (SELECT count(*) FROM legs) AS legs
"""

# Lots give up points soonest-expiring first (never-expiring last), oldest first on ties:
# each lot gives min(remaining, what is still owed after the lots before it).
_SPEND = f"""
WITH tx AS ({_INSERT_TRANSACTION}),
legs AS (
    INSERT INTO ledger_legs (transaction_id, account_id, amount)
    SELECT tx.id, leg.account_id, leg.amount
    FROM tx, unnest($8::bigint[], $9::bigint[]) AS leg(account_id, amount)
    RETURNING 1
),
consumed AS (
    UPDATE lots AS l
    SET remaining = l.remaining - least(l.remaining, $11 - o.before)
    FROM (
        SELECT id,
               sum(remaining) OVER (ORDER BY expires_at NULLS LAST, id) - remaining AS before
        FROM lots
        WHERE account_id = $10 AND remaining > 0
    ) AS o
    WHERE l.id = o.id AND o.before < $11 AND EXISTS (SELECT 1 FROM tx)
    RETURNING l.id
)
SELECT (SELECT id FROM tx) AS transaction_id, (SELECT count(*) FROM consumed) AS lots
"""


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

    async def find() -> dict[tuple[str | None, str], int]:
        rows = await conn.fetch(
            _FIND_ACCOUNTS, program, member, currency, member_kinds, program_kinds
        )
        return {(row["member_id"], row["kind"]): row["id"] for row in rows}

    ids = await find()
    missing = [key for key in wanted if key not in ids]
    if missing:
        await conn.execute(
            _CREATE_ACCOUNTS, program, [m for m, _ in missing], currency, [k for _, k in missing]
        )
        ids = await find()
    return ids


async def _existing(conn: Conn, program: str, key: str, points: int) -> LedgerReceipt:
    transaction_id = await conn.fetchval(
        "SELECT id FROM ledger_transactions WHERE program = $1 AND idempotency_key = $2",
        program,
        key,
    )
    return LedgerReceipt(
        transaction_id=transaction_id, idempotency_key=key, points=points, duplicate=True
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
    """Give a member points as a new lot: member account +points, ``issued`` -points.

    ``kind`` is ``available`` (usable now) or ``earned`` (usable from ``available_at``).
    A key already used returns the first transaction, without a second effect.
    """
    ids = await ensure_accounts(conn, program, currency, [(member_id, kind), (None, "issued")])
    member_account = ids[(member_id, kind)]
    row = await conn.fetchrow(
        _AWARD,
        program,
        key,
        member_id,
        f"award_{kind}",
        reason,
        source,
        occurred_at,
        [member_account, ids[(None, "issued")]],
        [points, -points],
        member_account,
        points,
        available_at,
        expires_at,
        order_id,
    )
    assert row is not None
    if row["transaction_id"] is None:
        return await _existing(conn, program, key, points)
    return LedgerReceipt(transaction_id=row["transaction_id"], idempotency_key=key, points=points)


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
        InsufficientPoints: the account holds fewer points than asked; nothing is written.
    """
    ids = await ensure_accounts(conn, program, currency, [(member_id, kind), (None, counter)])
    member_account = ids[(member_id, kind)]
    balance = await conn.fetchval(
        "SELECT balance FROM accounts WHERE id = $1 FOR UPDATE", member_account
    )
    used = await conn.fetchval(
        "SELECT 1 FROM ledger_transactions WHERE program = $1 AND idempotency_key = $2",
        program,
        key,
    )
    if used:
        return await _existing(conn, program, key, points)
    if balance < points:
        raise InsufficientPoints(
            f"member {member_id} has {balance} {kind} {currency}, cannot remove {points}"
        )
    row = await conn.fetchrow(
        _SPEND,
        program,
        key,
        member_id,
        f"spend_{kind}",
        reason,
        source,
        occurred_at,
        [member_account, ids[(None, counter)]],
        [-points, points],
        member_account,
        points,
    )
    assert row is not None
    if row["transaction_id"] is None:
        return await _existing(conn, program, key, points)
    return LedgerReceipt(transaction_id=row["transaction_id"], idempotency_key=key, points=points)
