"""Audit of the points ledger: recompute what is cached or derived, and report totals.

The legs are the record (they are immutable); everything else is checked against them.
``verify`` runs these checks, each one set-based SQL statement over the whole ledger, in
one read-only snapshot:

* ``transactions``: the legs of every transaction sum to zero in each currency (the
  database only checks the sum over all currencies, per statement).
* ``legless``: every transaction has legs.
* ``leg_programs``: every leg is on an account of its transaction's program.
* ``balances``: every member account's cached ``balance`` equals the sum of its legs.
* ``lots``: for every member ``available`` and ``earned`` account, the ``remaining`` of
  the member's live lots in that state (see ``migrations/0003_cutoffs.sql``: all lots
  are in the ``available`` account; the cut-offs tell earned, available and expired
  apart) sum to its balance as the legs give it. Comparing with the legs rather than the
  cached balance reports a wrong cached balance once, under ``balances``.
* ``lot_states``: no lot has ``remaining`` below 0 or above its ``amount``; lots are
  only in members' ``available`` accounts.
* ``debts``: no ``debt`` account is above 0 (by its legs): members owe, never hold, there.
* ``lifetime_earned``: per member and currency, ``member_currencies.lifetime_earned``
  is the points of every award. An award is a transaction of kind ``award_*``; what it
  gave is minus its ``issued`` leg (its other legs, the member's account and any debt
  pay-off, add up to the same). Returns, spends and expiry do not lower it.
* ``qualifying_totals``: the tier measure's totals per member, currency and year (UTC)
  equal the sum of their ``qualifying_points`` (the fast path measures with them).
* ``qualifying_windows``: each kept rolling-window sum (``qualifying_window_totals``,
  which segments' full recomputes read) that is the member's measure now equals the sum
  of the member's rows in the window; a member with rows in a kept window has a sum.

Each check lists at most ``LISTED`` differences but counts them all.

``report`` gives, per program and currency, the points issued, redeemed, expired and
clawed back (legs on the program accounts), forgiven (``order_clawbacks``) and what
members hold. Worked example: 460 issued, 290 redeemed, 10 expired, 120 clawed back
leave 40 outstanding: 60 held by members, less 20 that a member owes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from loyalty.store.db import Conn

LISTED = 100


class Difference(BaseModel):
    """One departure from an invariant; fields that do not apply are ``None``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str
    member_id: str | None = None
    currency: str | None = None
    kind: str | None = None
    account_id: int | None = None
    transaction_id: int | None = None
    lot_id: int | None = None
    expected: int | None = None
    found: int | None = None
    detail: str


class CheckResult(BaseModel):
    """One check: how many differences it found, and the first ``LISTED`` of them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str
    count: int
    differences: tuple[Difference, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the check found nothing."""
        return self.count == 0


class VerifyReport(BaseModel):
    """Every check of ``verify``, in the order they ran."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        """Whether no check found anything."""
        return all(check.ok for check in self.checks)


class ProgramReport(BaseModel):
    """Totals of one program and currency, in points.

    ``debt`` is what members owe (positive); ``outstanding`` is the liability,
    ``available + earned - debt``, which equals ``issued - redeemed - expired -
    clawed_back`` when the ledger verifies.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str
    currency: str
    issued: int
    redeemed: int
    expired: int
    clawed_back: int
    forgiven: int
    available: int
    earned: int
    debt: int
    outstanding: int
    members_with_points: int
    members_in_debt: int


@dataclass(frozen=True)
class _Check:
    name: str
    description: str
    sql: str


# Every check selects the fields of Difference, plus `differences`, their full count.
_TOTALS = "totals AS (SELECT account_id, sum(amount)::bigint AS total FROM ledger_legs"
_TOTALS += " GROUP BY account_id)"
_ACCOUNT = "a.id AS account_id, a.program, a.member_id, a.currency, a.kind"

CHECKS: tuple[_Check, ...] = (
    _Check("transactions", "the legs of every transaction sum to zero in each currency", """
WITH sums AS (
    SELECT g.transaction_id, a.currency, sum(g.amount)::bigint AS total
    FROM ledger_legs AS g JOIN accounts AS a ON a.id = g.account_id
    GROUP BY g.transaction_id, a.currency
    HAVING sum(g.amount) <> 0
)
SELECT s.transaction_id, t.program, t.member_id, s.currency, t.kind, 0::bigint AS expected,
       s.total AS found, 'legs in this currency do not sum to zero' AS detail,
       count(*) OVER () AS differences
FROM sums AS s JOIN ledger_transactions AS t ON t.id = s.transaction_id
ORDER BY s.transaction_id, s.currency LIMIT $1"""),
    _Check("legless", "every transaction has legs", """
SELECT t.id AS transaction_id, t.program, t.member_id, t.kind,
       'transaction has no legs' AS detail, count(*) OVER () AS differences
FROM ledger_transactions AS t
WHERE NOT EXISTS (SELECT 1 FROM ledger_legs AS g WHERE g.transaction_id = t.id)
ORDER BY t.id LIMIT $1"""),
    _Check("leg_programs", "every leg is on an account of its transaction's program", f"""
SELECT {_ACCOUNT}, t.id AS transaction_id, g.amount AS found,
       format('leg of a transaction of program %s', t.program) AS detail,
       count(*) OVER () AS differences
FROM ledger_legs AS g
JOIN ledger_transactions AS t ON t.id = g.transaction_id
JOIN accounts AS a ON a.id = g.account_id
WHERE a.program <> t.program
ORDER BY g.id LIMIT $1"""),
    _Check("balances", "member account balances equal the sum of their legs", f"""
WITH {_TOTALS}
SELECT {_ACCOUNT}, coalesce(t.total, 0) AS expected, a.balance AS found,
       'balance differs from the sum of its legs' AS detail, count(*) OVER () AS differences
FROM accounts AS a LEFT JOIN totals AS t ON t.account_id = a.id
WHERE a.member_id IS NOT NULL AND a.balance <> coalesce(t.total, 0)
ORDER BY a.id LIMIT $1"""),
    _Check("lots", "the lots of available and earned accounts hold their balance", f"""
WITH {_TOTALS},
held AS (
    SELECT program, member_id, currency, state AS kind, sum(held)::bigint AS held
    FROM lot_states WHERE state <> 'expired'
    GROUP BY 1, 2, 3, 4
),
member_accounts AS (
    SELECT * FROM accounts WHERE member_id IS NOT NULL AND kind IN ('available', 'earned')
)
SELECT a.id AS account_id, coalesce(a.program, h.program) AS program,
       coalesce(a.member_id, h.member_id) AS member_id,
       coalesce(a.currency, h.currency) AS currency, coalesce(a.kind, h.kind) AS kind,
       coalesce(t.total, 0) AS expected, coalesce(h.held, 0) AS found,
       'lots hold another amount than the legs give the account' AS detail,
       count(*) OVER () AS differences
FROM member_accounts AS a
LEFT JOIN totals AS t ON t.account_id = a.id
FULL JOIN held AS h ON h.program = a.program AND h.member_id = a.member_id
                   AND h.currency = a.currency AND h.kind = a.kind
WHERE coalesce(h.held, 0) <> coalesce(t.total, 0)
ORDER BY 2, 3, 4, 5 LIMIT $1"""),
    _Check("lot_states", "lots are within bounds and in members' available accounts", f"""
SELECT *, count(*) OVER () AS differences FROM (
    SELECT {_ACCOUNT}, l.transaction_id, l.id AS lot_id, l.remaining AS found,
           CASE WHEN l.remaining < 0 THEN 0 WHEN l.remaining > l.amount THEN l.amount
           END AS expected,
           CASE WHEN l.remaining < 0 THEN 'remaining below 0'
                WHEN l.remaining > l.amount THEN 'remaining above the lot amount'
                WHEN a.kind <> 'available'
                    THEN format('lot in the member''s %s account, not in the available one',
                                a.kind)
           END AS detail
    FROM lots AS l JOIN accounts AS a ON a.id = l.account_id
) AS s
WHERE detail IS NOT NULL
ORDER BY lot_id LIMIT $1"""),
    _Check("debts", "debt accounts are at or below 0", f"""
WITH {_TOTALS}
SELECT {_ACCOUNT}, 0::bigint AS expected, t.total AS found,
       'debt account above 0' AS detail, count(*) OVER () AS differences
FROM accounts AS a JOIN totals AS t ON t.account_id = a.id
WHERE a.kind = 'debt' AND t.total > 0
ORDER BY a.id LIMIT $1"""),
    _Check("lifetime_earned", "lifetime earned points equal the points of all awards", """
WITH awarded AS (
    SELECT t.program, t.member_id, a.currency, -sum(g.amount)::bigint AS points
    FROM ledger_transactions AS t
    JOIN ledger_legs AS g ON g.transaction_id = t.id
    JOIN accounts AS a ON a.id = g.account_id AND a.kind = 'issued'
    WHERE left(t.kind, 6) = 'award_'
    GROUP BY t.program, t.member_id, a.currency
)
SELECT coalesce(m.program, w.program) AS program,
       coalesce(m.member_id, w.member_id) AS member_id,
       coalesce(m.currency, w.currency) AS currency,
       coalesce(w.points, 0) AS expected, m.lifetime_earned AS found,
       CASE WHEN m.program IS NULL THEN 'awards without a member_currencies row'
            ELSE 'lifetime_earned differs from the points awarded' END AS detail,
       count(*) OVER () AS differences
FROM member_currencies AS m
FULL JOIN awarded AS w
  ON w.program = m.program AND w.member_id = m.member_id AND w.currency = m.currency
WHERE m.lifetime_earned IS DISTINCT FROM coalesce(w.points, 0)
ORDER BY 1, 2, 3 LIMIT $1"""),
    _Check("qualifying_totals", "the tier measure's totals equal its qualifying points", """
WITH sums AS (
    SELECT program, member_id, currency,
           extract(year FROM earned_at AT TIME ZONE 'UTC')::integer AS year,
           sum(points)::bigint AS points
    FROM qualifying_points GROUP BY 1, 2, 3, 4
)
SELECT coalesce(t.program, s.program) AS program,
       coalesce(t.member_id, s.member_id) AS member_id,
       coalesce(t.currency, s.currency) AS currency,
       coalesce(s.points, 0) AS expected, t.points AS found,
       format('qualifying points of %s', coalesce(t.year, s.year)) AS detail,
       count(*) OVER () AS differences
FROM qualifying_totals AS t
FULL JOIN sums AS s ON s.program = t.program AND s.member_id = t.member_id
                   AND s.currency = t.currency AND s.year = t.year
WHERE coalesce(t.points, 0) <> coalesce(s.points, 0)
ORDER BY 1, 2, 3 LIMIT $1"""),
    _Check("qualifying_windows", "kept rolling-window measures equal their qualifying points", """
WITH kept AS (
    SELECT program, member_id, currency, span, points,
           valid_from <= now() AND now() < valid_until AS current
    FROM qualifying_window_totals
),
sums AS (
    SELECT w.program, q.member_id, w.currency, w.span, sum(q.points)::bigint AS points
    FROM qualifying_windows AS w
    JOIN qualifying_points AS q
      ON q.program = w.program AND q.currency = w.currency
     AND q.earned_at > now() - w.span AND q.earned_at <= now()
    GROUP BY 1, 2, 3, 4
)
SELECT coalesce(k.program, s.program) AS program,
       coalesce(k.member_id, s.member_id) AS member_id,
       coalesce(k.currency, s.currency) AS currency,
       coalesce(s.points, 0) AS expected, k.points AS found,
       CASE WHEN k.program IS NULL
            THEN format('no kept sum of the rolling window of %s', s.span)
            ELSE format('kept sum of the rolling window of %s', k.span) END AS detail,
       count(*) OVER () AS differences
FROM kept AS k
FULL JOIN sums AS s ON s.program = k.program AND s.member_id = k.member_id
                   AND s.currency = k.currency AND s.span = k.span
WHERE coalesce(k.current, true) AND coalesce(k.points, 0) <> coalesce(s.points, 0)
ORDER BY 1, 2, 3 LIMIT $1"""),
)  # fmt: skip


async def verify(
    conn: Conn, *, listed: int = LISTED, progress: Callable[[str], None] | None = None
) -> VerifyReport:
    """Run every check of the module docstring over the whole ledger.

    Args:
        conn: a connection; outside a transaction, the checks run in one read-only
            repeatable-read snapshot, so writers may go on meanwhile.
        listed: how many differences each check lists (all are counted).
        progress: called with each check's description before it runs.

    Returns:
        One result per check; ``ok`` when none found a difference.
    """
    results = []
    async with contextlib.AsyncExitStack() as stack:
        if not conn.is_in_transaction():
            await stack.enter_async_context(
                conn.transaction(isolation="repeatable_read", readonly=True)
            )
        for check in CHECKS:
            if progress is not None:
                progress(check.description)
            rows = await conn.fetch(check.sql, listed)
            differences = tuple(
                Difference(**{k: v for k, v in row.items() if k != "differences"}) for row in rows
            )
            count = rows[0]["differences"] if rows else 0
            results.append(CheckResult(name=check.name, description=check.description,
                                       count=count, differences=differences))  # fmt: skip
    return VerifyReport(checks=tuple(results))


# Program accounts have no cached balance: their totals are sums of legs, read through
# the (account_id, id) index, one program account at a time.
_REPORT = """
WITH program_totals AS (
    SELECT a.program, a.currency,
           -sum(s.total) FILTER (WHERE a.kind = 'issued') AS issued,
           sum(s.total) FILTER (WHERE a.kind = 'redeemed') AS redeemed,
           sum(s.total) FILTER (WHERE a.kind = 'expired') AS expired,
           sum(s.total) FILTER (WHERE a.kind = 'clawed_back') AS clawed_back
    FROM accounts AS a
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(g.amount), 0) AS total FROM ledger_legs AS g
        WHERE g.account_id = a.id
    ) AS s
    WHERE a.member_id IS NULL AND ($1::text IS NULL OR a.program = $1)
    GROUP BY a.program, a.currency
),
member_totals AS (
    SELECT program, currency,
           sum(balance) FILTER (WHERE kind = 'available') AS available,
           sum(balance) FILTER (WHERE kind = 'earned') AS earned,
           -sum(balance) FILTER (WHERE kind = 'debt') AS debt,
           count(DISTINCT member_id)
               FILTER (WHERE kind IN ('available', 'earned') AND balance > 0)
               AS members_with_points,
           count(DISTINCT member_id) FILTER (WHERE kind = 'debt' AND balance < 0)
               AS members_in_debt
    FROM accounts
    WHERE member_id IS NOT NULL AND ($1::text IS NULL OR program = $1)
    GROUP BY program, currency
),
forgiven AS (
    SELECT program, currency, sum(forgiven) AS forgiven FROM order_clawbacks
    WHERE $1::text IS NULL OR program = $1
    GROUP BY program, currency
),
keys AS (
    SELECT program, currency FROM program_totals
    UNION SELECT program, currency FROM member_totals
    UNION SELECT program, currency FROM forgiven
)
SELECT k.program, k.currency,
       coalesce(p.issued, 0)::bigint AS issued,
       coalesce(p.redeemed, 0)::bigint AS redeemed,
       coalesce(p.expired, 0)::bigint AS expired,
       coalesce(p.clawed_back, 0)::bigint AS clawed_back,
       coalesce(f.forgiven, 0)::bigint AS forgiven,
       coalesce(m.available, 0)::bigint AS available,
       coalesce(m.earned, 0)::bigint AS earned,
       coalesce(m.debt, 0)::bigint AS debt,
       (coalesce(m.available, 0) + coalesce(m.earned, 0) - coalesce(m.debt, 0))::bigint
           AS outstanding,
       coalesce(m.members_with_points, 0) AS members_with_points,
       coalesce(m.members_in_debt, 0) AS members_in_debt
FROM keys AS k
LEFT JOIN program_totals AS p USING (program, currency)
LEFT JOIN member_totals AS m USING (program, currency)
LEFT JOIN forgiven AS f USING (program, currency)
ORDER BY k.program, k.currency
"""


async def report(conn: Conn, program: str | None = None) -> list[ProgramReport]:
    """Totals per program and currency (of one program if named), in one statement."""
    rows = await conn.fetch(_REPORT, program)
    return [ProgramReport(**dict(row.items())) for row in rows]
