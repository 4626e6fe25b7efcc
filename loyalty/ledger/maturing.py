"""Bulk ledger work: maturing earned points and expiring points, set-based.

Each step moves a cut-off (``ledger_cutoffs``; see ``migrations/0003_cutoffs.sql``) and
posts one ledger transaction per program (and currency, for expiry) with a leg per
member account, in one statement whatever the number of lots. Lots are read, never
rewritten (except those of inactive members, which expire one by one), so a million lots
take seconds. Each step holds the program's ledger lock exclusively (writers hold it
shared, ``ledger.hold``), so no writer sees a cut-off move in the middle of its
transaction. Running again with the same ``at`` changes nothing; a later ``at`` takes
what became due since. The idempotency key holds the cut-off time.

The housekeeping loop (`workflows.housekeeping`) runs these steps, recorded run by run:
see `loyalty.ledger.housekeeping`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from loyalty.app import Program
from loyalty.ingest import derived
from loyalty.ledger import postings
from loyalty.policies import Inactivity
from loyalty.store.db import Conn

# Cut-off rows for every currency the program has issued, so that each can move.
_CUTOFF_ROWS = """
INSERT INTO ledger_cutoffs (program, currency)
SELECT program, currency FROM accounts
WHERE program = $1 AND member_id IS NULL AND kind = 'issued'
ON CONFLICT DO NOTHING
"""


def _bulk_post(moves_sql: str, kind: str, reason: str, legs_sql: str, cutoff_sql: str) -> str:
    """One bulk step as one statement: read what moves, post one transaction, move the
    cut-off.

    ``moves_sql`` returns the moving points (columns ``lots`` and ``points``, and what
    ``legs_sql`` needs to name the accounts);
    ``legs_sql`` turns ``moves`` into (account_id, amount) legs; ``cutoff_sql`` updates
    ledger_cutoffs. Parameters: $1 program, $2 cut-off, $3 idempotency key. The
    transaction has no ON CONFLICT: a key used already raises, and the whole statement
    rolls back.
    """
    return f"""
WITH moves AS ({moves_sql}),
tx AS (
    INSERT INTO ledger_transactions (program, idempotency_key, member_id, kind, reason,
                                     source, occurred_at)
    SELECT $1, $3, NULL, '{kind}', '{reason}', 'housekeeping', $2
    WHERE EXISTS (SELECT 1 FROM moves WHERE points > 0)
    RETURNING id
),
legs AS (
    INSERT INTO ledger_legs (transaction_id, account_id, amount)
    SELECT tx.id, leg.account_id, leg.amount
    FROM tx, ({legs_sql}) AS leg
    WHERE leg.amount <> 0
    RETURNING 1
),
cutoff AS ({cutoff_sql} RETURNING 1)
SELECT (SELECT id FROM tx) AS transaction_id,
       coalesce(sum(lots), 0)::bigint AS lots, coalesce(sum(points), 0)::bigint AS points,
       (SELECT count(*) FROM cutoff) AS moved
FROM moves
"""


# The lots of one currency that mature: earned (available_at past the currency's old
# cut-off $3), due by the new one ($2), and not expired ($4: the expiry cut-off). Their
# points move, per member, from the earned account to the available one, which holds the
# lots, as legs of transaction $7. The cut-offs are values, not a join, so that the plan
# is made for the real number of lots: one range of an index, then one row per member.
_MATURE_CURRENCY = """
WITH due AS (
    SELECT account_id AS pocket, count(*) AS lots, sum(remaining)::bigint AS points
    FROM lots
    WHERE available_at > $3::text::timestamptz AND available_at <= $2 AND remaining > 0
      AND (expires_at IS NULL OR expires_at > $4::text::timestamptz)
    GROUP BY account_id
),
moves AS (
    SELECT due.*, e.id AS earned_account, a.member_id
    FROM due
    JOIN accounts AS a ON a.id = due.pocket AND a.program = $1 AND a.currency = $5
                      AND a.kind = 'available'
    JOIN accounts AS e ON e.program = $1 AND e.member_id = a.member_id AND e.currency = $5
                      AND e.kind = 'earned'
),
legs AS (
    INSERT INTO ledger_legs (transaction_id, account_id, amount)
    SELECT $6::bigint, earned_account, -points FROM moves
    UNION ALL
    SELECT $6::bigint, pocket, points FROM moves
    RETURNING 1
)
SELECT coalesce(sum(lots), 0)::bigint AS lots, coalesce(sum(points), 0)::bigint AS points
FROM moves
"""


def _mature_sql(*, matured: bool, above: bool) -> str:
    """`_MATURE_CURRENCY`, also deriving one ``points_matured`` per member (``matured``)
    and the ``points_above`` crossings of the watched currency (``above``; $8 the
    thresholds); $7 is the cut-off as text when either is on."""
    ctes = (derived.matured_events_sql() if matured else "") + (
        derived.points_above_sql() if above else ""
    )
    return _MATURE_CURRENCY.replace("legs AS (", f"{ctes}\nlegs AS (", 1)


_MATURE_SQL = {
    (matured, above): _mature_sql(matured=matured, above=above)
    for matured in (False, True)
    for above in (False, True)
}


class _NothingMatured(Exception):
    """No lot was due: the maturing transaction is undone, the cut-off still moves."""


# Lots that expire now, in currency $4: those past the old expiry cut-off and not past
# the new one ($2), in their state (earned or available) at this moment.
_DATED = """
    SELECT l.account_id AS pocket, coalesce(l.available_at > c.matured_through, false) AS earned,
           count(*) AS lots, sum(l.remaining)::bigint AS points, a.currency, a.member_id
    FROM ledger_cutoffs AS c
    JOIN lots AS l ON l.expires_at > c.expired_through AND l.expires_at <= $2
    JOIN accounts AS a ON a.id = l.account_id
    WHERE c.program = $1 AND c.currency = $4 AND c.expired_through < $2
      AND a.program = $1 AND a.currency = $4 AND l.remaining > 0
    GROUP BY 1, 2, a.currency, a.member_id"""

# Under an inactivity policy, every live lot of the members of that currency who neither
# earned nor spent since $5 expires, one by one: the lot keeps what expired in `expired`.
# Lots past the new cut-off are counted by _DATED already. $5 NULL: no such policy.
_INACTIVE = """
    UPDATE lots AS l SET expired = l.expired + l.remaining, remaining = 0
    FROM member_currencies AS m
    JOIN accounts AS a ON a.program = m.program AND a.member_id = m.member_id
                      AND a.currency = m.currency AND a.kind = 'available'
    CROSS JOIN (SELECT matured_through FROM ledger_cutoffs
                WHERE program = $1 AND currency = $4) AS c
    WHERE m.program = $1 AND m.currency = $4 AND m.last_activity_at <= $5
      AND l.account_id = a.id AND l.remaining > 0
      AND (l.expires_at IS NULL OR l.expires_at > $2)
    RETURNING l.account_id AS pocket, coalesce(l.available_at > c.matured_through, false)
              AS earned, l.expired AS points, a.currency, a.member_id"""

_EXPIRE = _bulk_post(
    f"""
    {_DATED}
    UNION ALL
    SELECT pocket, earned, count(*), sum(points)::bigint, currency, member_id
    FROM inactive GROUP BY 1, 2, 5, 6""",
    "expire",
    "points expired",
    """
    SELECT CASE WHEN m.earned THEN e.id ELSE m.pocket END AS account_id,
           -sum(m.points) AS amount
    FROM moves AS m
    LEFT JOIN accounts AS e ON m.earned AND e.program = $1 AND e.member_id = m.member_id
                           AND e.currency = m.currency AND e.kind = 'earned'
    GROUP BY 1
    UNION ALL
    SELECT $6::bigint, sum(points) FROM moves""",
    """UPDATE ledger_cutoffs SET expired_through = $2
    WHERE program = $1 AND currency = $4 AND expired_through < $2""",
).replace("WITH moves AS (", f"WITH inactive AS ({_INACTIVE}),\nmoves AS (", 1)


@dataclass(frozen=True)
class BulkResult:
    """One bulk step: how many lots and points, in which ledger transaction."""

    step: str
    currency: str
    lots: int
    points: int
    transaction_id: int | None


async def _exclusive(conn: Conn, program: str) -> None:
    """Hold the program's ledger lock exclusively: no writer is between two statements.

    Also gives the bulk statement room to hash a million lots in memory.
    """
    await conn.execute(
        f"SELECT pg_advisory_xact_lock({postings.LEDGER_LOCK.format(program='$1')})", program
    )
    await conn.execute("SET LOCAL work_mem = '256MB'")
    await conn.execute(_CUTOFF_ROWS, program)


async def mature_due(
    conn: Conn,
    program: str,
    at: datetime,
    *,
    derive_events: bool = False,
    watch: derived.Watch | None = None,
) -> BulkResult:
    """Mature every earned lot with ``available_at <= at``: earned → available per member.

    One ledger transaction for the program, with legs per currency; moves each currency's
    maturing cut-off to ``at``. A cut-off at or before the current one changes nothing.
    With ``derive_events``, the same statement also writes one ``points_matured`` event
    per member and currency to the inbox (see `loyalty.ingest.derived`); off by default, as a
    run can mature millions of members: turn it on when a flow listens to them.
    ``watch`` (`loyalty.ingest.derived.watch`: the app's ``PointsAbove`` thresholds for
    the program) makes the statement of the watched currency derive the ``points_above``
    events of the members whose available balance maturing lifts over a threshold.
    """
    lots = points = 0
    transaction_id = None
    try:
        async with conn.transaction():
            await _exclusive(conn, program)
            # Cut-offs as the text of their values: asyncpg reads -infinity as a naive
            # datetime, which it would write back as the year 1.
            cuts = await conn.fetch(
                """SELECT currency, matured_through::text AS since,
                          expired_through::text AS expired
                   FROM ledger_cutoffs WHERE program = $1 AND matured_through < $2
                   ORDER BY currency""",
                program, at,
            )  # fmt: skip
            try:
                async with conn.transaction():
                    transaction_id = await conn.fetchval(
                        """INSERT INTO ledger_transactions (program, idempotency_key, kind,
                               reason, source, occurred_at)
                           VALUES ($1, $2, 'mature', 'earned points matured', 'housekeeping',
                                   $3)
                           RETURNING id""",
                        program, f"mature:{at.isoformat()}", at,
                    )  # fmt: skip
                    for cut in cuts:
                        args: list[object] = [program, at, cut["since"], cut["expired"],
                                              cut["currency"], transaction_id]  # fmt: skip
                        above = watch is not None and cut["currency"] == watch.currency
                        if derive_events or above:
                            args.append(at.isoformat())
                        if watch is not None and above:
                            args.append(list(watch.thresholds))
                        row = await conn.fetchrow(_MATURE_SQL[derive_events, above], *args)
                        assert row is not None
                        lots, points = lots + row["lots"], points + row["points"]
                    if not lots:
                        raise _NothingMatured
            except _NothingMatured:
                transaction_id = None
            await conn.execute(
                """UPDATE ledger_cutoffs SET matured_through = $2
                   WHERE program = $1 AND matured_through < $2""",
                program, at,
            )  # fmt: skip
    except asyncpg.UniqueViolationError:
        # This cut-off was matured already: nothing more to do for it.
        return BulkResult("mature", "*", 0, 0, None)
    return BulkResult("mature", "*", lots, points, transaction_id)


async def expire_due(conn: Conn, program: Program, at: datetime) -> list[BulkResult]:
    """Expire, per currency, lots past their date and the points of inactive members.

    Moves each currency's expiry cut-off to ``at``.
    """
    results = []
    for currency in program.currencies:
        policy = program.expiry_for(currency)
        # Without an inactivity policy the second half of _EXPIRING matches nothing.
        inactive_since = at - policy.duration if isinstance(policy, Inactivity) else None
        try:
            async with conn.transaction():
                await _exclusive(conn, program.name)
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


async def run_housekeeping(
    conn: Conn,
    program: Program,
    at: datetime,
    *,
    derive_events: bool = False,
    watch: derived.Watch | None = None,
) -> list[BulkResult]:
    """Mature, then expire: points that mature and expire at once are expired.

    ``derive_events``: write ``points_matured`` events; ``watch``: derive the
    ``points_above`` crossings maturing causes (see `mature_due`).
    """
    return [
        await mature_due(conn, program.name, at, derive_events=derive_events, watch=watch),
        *await expire_due(conn, program, at),
    ]
