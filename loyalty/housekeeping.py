"""Bulk ledger work: maturing earned points and expiring points, set-based.

Each step is one ledger transaction per program (and currency, for expiry), written by
a few statements whatever the number of lots, so that a million lots take seconds. The
idempotency key holds the cut-off time: running again with the same ``at`` changes
nothing, a later ``at`` takes what became due since.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from loyalty.app import Program
from loyalty.db import Conn
from loyalty.policies import Inactivity

_MATURE_ACCOUNTS = """
INSERT INTO accounts (program, member_id, currency, kind)
SELECT DISTINCT a.program, a.member_id, a.currency, 'available'
FROM lots AS l JOIN accounts AS a ON a.id = l.account_id
WHERE l.maturing AND l.remaining > 0 AND l.available_at <= $2 AND a.program = $1
  AND NOT EXISTS (
      SELECT 1 FROM accounts AS t
      WHERE t.program = a.program AND t.member_id = a.member_id
        AND t.currency = a.currency AND t.kind = 'available')
ON CONFLICT DO NOTHING
"""


def _bulk_post(changed: str, lots_sql: str, kind: str, reason: str, moves_sql: str) -> str:
    """One bulk step as one statement: change the lots, then post one transaction.

    ``lots_sql`` updates lots and returns what moved (at least ``remaining``);
    ``moves_sql`` turns those rows into (account_id, amount) legs. Parameters: $1
    program, $2 cut-off, $3 idempotency key. The transaction has no ON CONFLICT: a key
    used already raises, and the lots changed in the same statement roll back.
    """
    return f"""
WITH {changed} AS ({lots_sql}),
tx AS (
    INSERT INTO ledger_transactions (program, idempotency_key, member_id, kind, reason,
                                     source, occurred_at)
    SELECT $1, $3, NULL, '{kind}', '{reason}', 'housekeeping', $2
    WHERE EXISTS (SELECT 1 FROM {changed})
    RETURNING id
),
legs AS (
    INSERT INTO ledger_legs (transaction_id, account_id, amount)
    SELECT tx.id, moves.account_id, moves.amount
    FROM tx, ({moves_sql}) AS moves
    RETURNING 1
)
SELECT (SELECT id FROM tx) AS transaction_id, count(*) AS lots,
       coalesce(sum(remaining), 0)::bigint AS points
FROM {changed}
"""


# Matured lots move, whole, from the member's earned account to the available one, so
# their expiry and source order stay with them.
_MATURE = _bulk_post(
    "moved",
    """
    UPDATE lots AS l SET account_id = t.id, maturing = false
    FROM accounts AS a, accounts AS t
    WHERE a.id = l.account_id AND a.program = $1
      AND t.program = a.program AND t.member_id = a.member_id
      AND t.currency = a.currency AND t.kind = 'available'
      AND l.maturing AND l.remaining > 0 AND l.available_at <= $2
    RETURNING l.remaining, a.id AS from_account, t.id AS to_account""",
    "mature",
    "earned points matured",
    """
    SELECT from_account AS account_id, -sum(remaining) AS amount
    FROM moved GROUP BY from_account
    UNION ALL
    SELECT to_account, sum(remaining) FROM moved GROUP BY to_account""",
)

# Lots that expire now: by date, or, under an inactivity policy, every open lot of the
# members of that currency who neither earned nor spent since the cut-off.
_EXPIRING = """
SELECT l.id, l.remaining, l.account_id
FROM lots AS l JOIN accounts AS a ON a.id = l.account_id
WHERE l.remaining > 0 AND l.expires_at <= $2 AND a.program = $1 AND a.currency = $4
UNION ALL
SELECT l.id, l.remaining, l.account_id
FROM member_currencies AS m
JOIN accounts AS a ON a.program = m.program AND a.member_id = m.member_id
                  AND a.currency = m.currency AND a.kind IN ('available', 'earned')
JOIN lots AS l ON l.account_id = a.id AND l.remaining > 0
WHERE m.program = $1 AND m.currency = $4 AND m.last_activity_at <= $5
  -- Lots past their date are in the first half already: no duplicate to remove.
  AND (l.expires_at IS NULL OR l.expires_at > $2)
"""

# A lot expires whole, once: while it has points its `expired` is still 0, so the new
# `expired` is what it held. The values are those of the row as updated, also when a
# concurrent spend changed it first. $4 currency, $5 inactive since, $6 expired account.
_EXPIRE = _bulk_post(
    "emptied",
    f"""
    UPDATE lots AS l SET expired = l.expired + l.remaining, remaining = 0
    FROM ({_EXPIRING}) AS e
    WHERE l.id = e.id AND l.remaining > 0
    RETURNING l.account_id, l.expired AS remaining""",
    "expire",
    "points expired",
    """
    SELECT account_id, -sum(remaining) AS amount FROM emptied GROUP BY account_id
    UNION ALL
    SELECT $6::bigint, sum(remaining) FROM emptied""",
)


@dataclass(frozen=True)
class BulkResult:
    """One bulk step: how many lots and points, in which ledger transaction."""

    step: str
    currency: str
    lots: int
    points: int
    transaction_id: int | None


async def mature_due(conn: Conn, program: str, at: datetime) -> BulkResult:
    """Move every earned lot with ``available_at <= at`` to its available account."""
    try:
        async with conn.transaction():
            await conn.execute(_MATURE_ACCOUNTS, program, at)
            row = await conn.fetchrow(_MATURE, program, at, f"mature:{at.isoformat()}")
    except asyncpg.UniqueViolationError:
        # This cut-off was matured already: nothing more to do for it.
        return BulkResult("mature", "*", 0, 0, None)
    assert row is not None
    return BulkResult("mature", "*", row["lots"], row["points"], row["transaction_id"])


async def expire_due(conn: Conn, program: Program, at: datetime) -> list[BulkResult]:
    """Expire, per currency, lots past their date and the points of inactive members."""
    results = []
    for currency in program.currencies:
        policy = program.expiry_for(currency)
        # Without an inactivity policy the second half of _EXPIRING matches nothing.
        inactive_since = (
            at - timedelta(days=policy.days) if isinstance(policy, Inactivity) else None
        )
        try:
            async with conn.transaction():
                await conn.execute(
                    """INSERT INTO accounts (program, member_id, currency, kind)
                       VALUES ($1, NULL, $2, 'expired') ON CONFLICT DO NOTHING""",
                    program.name, currency,
                )  # fmt: skip
                expired_account = await conn.fetchval(
                    """SELECT id FROM accounts WHERE program = $1 AND member_id IS NULL
                       AND currency = $2 AND kind = 'expired'""",
                    program.name, currency,
                )  # fmt: skip
                row = await conn.fetchrow(
                    _EXPIRE, program.name, at, f"expire:{currency}:{at.isoformat()}",
                    currency, inactive_since, expired_account,
                )  # fmt: skip
        except asyncpg.UniqueViolationError:
            # This cut-off was expired already for the currency.
            results.append(BulkResult("expire", currency, 0, 0, None))
            continue
        assert row is not None
        results.append(
            BulkResult("expire", currency, row["lots"], row["points"], row["transaction_id"])
        )
    return results


async def run_housekeeping(conn: Conn, program: Program, at: datetime) -> list[BulkResult]:
    """Mature, then expire: points that mature and expire at once are expired."""
    return [await mature_due(conn, program.name, at), *await expire_due(conn, program, at)]
