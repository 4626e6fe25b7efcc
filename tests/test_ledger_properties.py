"""Property tests: random histories of awards, spends, returns, maturing and expiry.

Hypothesis draws a program (return policy, an expiry policy per currency), a few orders
with what they earned, and a sequence of steps: awards (``available`` or ``earned``,
with or without an order, in one of two currencies), spends (which may be refused),
returns, time passing, housekeeping, and retries of earlier keys. The steps run against
real PostgreSQL, and after every step the ledger's invariants are checked with SQL.

How the examples run: pytest-asyncio (1.x) supports ``@given`` on an ``async def`` test:
it wraps Hypothesis's inner test so that each example is awaited in the session's event
loop. Function-scoped fixtures are then created once per test, not per example, hence
the suppressed health check: here that is the point, since the test's ``conn`` (one
connection on the test's fresh database) serves every example. Creating a database per
example would be slow; instead each example runs inside one transaction that is rolled
back at its end, so examples never see each other's rows (each starts by checking that
the ledger is empty). The deferred "every transaction has legs" trigger would then never
fire (it runs at commit), so the checks fire it with ``SET CONSTRAINTS ALL IMMEDIATE``.
Each step runs in a savepoint, as the router applies events, so that a refused step
leaves nothing behind. An example takes a few milliseconds per step; the invariants are
one query, so that a failing example also shrinks in well under the per-test timeout.

Two tests share the machinery:

* `test_ledger_invariants_hold_after_every_step`: the double-entry and lot invariants,
  the exact effect of each award (debt paid off first) and spend, refusals only when the
  balance is short, the inactivity clock, housekeeping leaving nothing due, and retried
  award, spend and housekeeping keys changing nothing.
* `test_returns_take_back_what_the_order_earned`: also checks each return: it takes back
  exactly the rounded-down cumulative share of what the order earned (debt pay-off
  included), from the order's own lots first, and a retried return changes nothing.

``--hypothesis-show-statistics`` shows how often histories reached returns and debt.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Any

import asyncpg
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from loyalty import ledger
from loyalty.app import Program
from loyalty.errors import InsufficientPoints, LedgerRefusal
from loyalty.ledger.maturing import expire_due, mature_due
from loyalty.ledger.returns import claw_back, record_order
from loyalty.models import LedgerReceipt
from loyalty.policies import ExpiryPolicy, FixedDate, Inactivity, NoExpiry, Rolling, lot_expiry

# A week before new year, so that fixed-date expiries fall inside the histories.
T0 = datetime(2026, 12, 24, 12, 0, tzinfo=UTC)
MEMBERS = ("alice", "bob")
CURRENCIES = ("points", "tier")
CENT = Decimal("0.01")

# --- What Hypothesis draws ------------------------------------------------------------------


@dataclass(frozen=True)
class Award:
    member: int
    currency: str
    points: int
    kind: str
    order: int | None
    waiting_days: int


@dataclass(frozen=True)
class Spend:
    member: int
    currency: str
    points: int  # 0: everything the account holds
    kind: str = "available"


@dataclass(frozen=True)
class Return:
    order: int
    percent: int  # of the order's amount; 100: whatever is left


@dataclass(frozen=True)
class Advance:
    hours: int


@dataclass(frozen=True)
class Housekeep:
    hours: int
    steps: str
    twice: bool


@dataclass(frozen=True)
class Retry:
    index: int


@dataclass(frozen=True)
class Order:
    """A purchase, recorded at the start with what it earned: (currency, kind, points)."""

    owner: int
    amount: Decimal
    earned: tuple[tuple[str, str, int], ...] = ()


Step = Award | Spend | Return | Advance | Housekeep | Retry

expiry_policies: st.SearchStrategy[ExpiryPolicy] = st.one_of(
    st.just(NoExpiry()),
    st.builds(Rolling, days=st.integers(1, 40)),
    st.builds(
        FixedDate,
        month=st.integers(1, 12),
        day=st.integers(1, 28),
        years_after=st.integers(0, 1),
    ),
    st.builds(Inactivity, days=st.integers(1, 40)),
)

programs = st.builds(
    lambda policy, expiry: Program(
        name="default", currencies=CURRENCIES, return_policy=policy, expiry=expiry
    ),
    st.sampled_from(["debt", "forgive"]),
    st.fixed_dictionaries({currency: expiry_policies for currency in CURRENCIES}),
)

orders = st.lists(
    st.builds(
        Order,
        owner=st.integers(0, len(MEMBERS) - 1),
        amount=st.integers(1, 50_000).map(lambda cents: Decimal(cents) * CENT),
        earned=st.lists(
            st.tuples(
                st.sampled_from(CURRENCIES),
                st.sampled_from(["available", "earned"]),
                st.integers(1, 200),
            ),
            max_size=2,
        ).map(tuple),
    ),
    min_size=1,
    max_size=3,
)

members = st.integers(0, len(MEMBERS) - 1)
# Most steps in one currency, so that they meet on the same accounts.
currencies = st.sampled_from([CURRENCIES[0], CURRENCIES[0], CURRENCIES[1]])

awards = st.builds(
    Award,
    member=members,
    currency=currencies,
    points=st.integers(1, 200),
    kind=st.sampled_from(["available", "earned"]),
    order=st.none() | st.integers(0, 3),
    waiting_days=st.integers(0, 20),
)
# Awards are drawn three times as often as other steps, so that there is something to
# spend, return, mature and expire.
steps: st.SearchStrategy[Step] = st.one_of(
    awards,
    awards,
    awards,
    st.builds(
        Spend,
        member=members,
        currency=currencies,
        points=st.integers(0, 150),
        kind=st.sampled_from(["available", "available", "available", "earned"]),
    ),
    st.builds(Return, order=st.integers(0, 3), percent=st.integers(1, 100)),
    st.builds(Advance, hours=st.integers(1, 24 * 20)),
    st.builds(
        Housekeep,
        hours=st.integers(1, 24 * 20),
        steps=st.sampled_from(["mature", "expire", "both"]),
        twice=st.booleans(),
    ),
    st.builds(Retry, index=st.integers(0, 1000)),
)

# Chunks of steps: generation draws histories of about 15 steps, while shrinking can still
# cut a failing one down to a single step (a list with min_size=15 could not).
histories = st.lists(st.lists(steps, min_size=1, max_size=5), min_size=1, max_size=10).map(
    lambda chunks: [step for chunk in chunks for step in chunk]
)

PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    # One bug at a time: shrinking several distinct failures takes minutes.
    report_multiple_bugs=False,
)

# --- Reading the database -----------------------------------------------------------------


async def rows(conn: asyncpg.Connection, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(row.values()) for row in await conn.fetch(sql, *args)]


async def member_balances(conn: asyncpg.Connection) -> dict[tuple[str, str, str], int]:
    """Every member account's cached balance, by (member, currency, kind)."""
    found = await conn.fetch(
        "SELECT member_id, currency, kind, balance FROM accounts WHERE member_id IS NOT NULL"
    )
    return {(r["member_id"], r["currency"], r["kind"]): r["balance"] for r in found}


async def snapshot(conn: asyncpg.Connection) -> tuple[Any, ...]:
    """Everything a ledger step can change, to compare before and after a retry."""
    row = await conn.fetchrow(
        """SELECT
                 (SELECT count(*) FROM ledger_transactions),
                 (SELECT count(*) FROM ledger_legs),
                 (SELECT array_agg(balance ORDER BY id) FROM accounts),
                 (SELECT array_agg(ROW(id, account_id, remaining, expired, available_at,
                                       expires_at)::text ORDER BY id)
                  FROM lots),
                 (SELECT array_agg(ROW(currency, matured_through, expired_through)::text
                                   ORDER BY currency)
                  FROM ledger_cutoffs),
                 (SELECT array_agg(ROW(member_id, currency, lifetime_earned, last_activity_at)
                                   ::text ORDER BY member_id, currency)
                  FROM member_currencies),
                 (SELECT array_agg(ROW(order_id, returned_amount)::text ORDER BY order_id)
                  FROM orders),
                 (SELECT count(*) FROM order_clawbacks)"""
    )
    assert row is not None
    return tuple(row)


# The ledger's invariants: each query lists the rows that break one. $1: the program's
# return policy is `forgive`.
INVARIANTS = {
    "legs of a transaction sum to zero, in each currency": """
        SELECT g.transaction_id, a.currency, sum(g.amount)
        FROM ledger_legs AS g JOIN accounts AS a ON a.id = g.account_id
        GROUP BY g.transaction_id, a.currency HAVING sum(g.amount) <> 0""",
    "every ledger transaction has legs": """
        SELECT t.id FROM ledger_transactions AS t
        WHERE NOT EXISTS (SELECT 1 FROM ledger_legs AS g WHERE g.transaction_id = t.id)""",
    "a member balance is the sum of its legs (a program one stays 0)": """
        SELECT a.member_id, a.currency, a.kind, a.balance, s.total
        FROM accounts AS a
        LEFT JOIN (SELECT account_id, sum(amount) AS total FROM ledger_legs
                   GROUP BY account_id) AS s ON s.account_id = a.id
        WHERE (a.member_id IS NOT NULL AND a.balance <> coalesce(s.total, 0))
           OR (a.member_id IS NULL AND a.balance <> 0)""",
    "an available/earned balance is what its member's lots in that state hold": """
        SELECT a.member_id, a.currency, a.kind, a.balance, s.held
        FROM (SELECT * FROM accounts WHERE kind IN ('available', 'earned')) AS a
        FULL JOIN (SELECT program, member_id, currency, state, sum(held) AS held
                   FROM lot_states WHERE state <> 'expired'
                   GROUP BY 1, 2, 3, 4) AS s
          ON s.program = a.program AND s.member_id = a.member_id
         AND s.currency = a.currency AND s.state = a.kind
        WHERE coalesce(a.balance, 0) <> coalesce(s.held, 0)""",
    "0 <= remaining <= amount, and lots are only in members' available accounts": """
        SELECT l.id, a.kind, l.amount, l.remaining
        FROM lots AS l JOIN accounts AS a ON a.id = l.account_id
        WHERE NOT (l.remaining BETWEEN 0 AND l.amount) OR l.amount <= 0
           OR a.kind <> 'available'""",
    "available and earned are never negative, debt never positive": """
        SELECT member_id, currency, kind, balance FROM accounts
        WHERE (kind IN ('available', 'earned') AND balance < 0)
           OR (kind = 'debt' AND balance > 0)""",
    "no debt under the forgive policy": """
        SELECT a.member_id, a.currency, a.balance FROM accounts AS a
        WHERE $1 AND a.kind = 'debt'
          AND (a.balance <> 0
               OR EXISTS (SELECT 1 FROM ledger_legs AS g WHERE g.account_id = a.id))
        UNION ALL
        SELECT order_id, currency, to_debt FROM order_clawbacks WHERE $1 AND to_debt <> 0""",
    # What an order earned: the issued legs of the awards linked to it (including the
    # part that paid off debt and so never became a lot).
    "returns never take back more than the order earned": """
        SELECT c.order_id, c.currency, sum(c.points), e.earned
        FROM order_clawbacks AS c
        LEFT JOIN (SELECT t.order_id, a.currency, -sum(g.amount) AS earned
                   FROM ledger_transactions AS t
                   JOIN ledger_legs AS g ON g.transaction_id = t.id
                   JOIN accounts AS a ON a.id = g.account_id AND a.kind = 'issued'
                   WHERE t.order_id IS NOT NULL
                   GROUP BY t.order_id, a.currency) AS e
               ON e.order_id = c.order_id AND e.currency = c.currency
        GROUP BY c.order_id, c.currency, e.earned
        HAVING sum(c.points) > coalesce(e.earned, 0)""",
    "the expired account holds what lots lost to expiry": """
        SELECT moved, recorded FROM (
            SELECT (SELECT coalesce(sum(g.amount), 0) FROM ledger_legs AS g
                    JOIN accounts AS a ON a.id = g.account_id
                    WHERE a.kind = 'expired') AS moved,
                   (SELECT coalesce(sum(expired + remaining - held), 0) FROM lot_states)
                       AS recorded) AS t
        WHERE moved <> recorded""",
    "0 <= expired, expired + remaining <= amount": """
        SELECT id, amount, remaining, expired FROM lots
        WHERE expired < 0 OR expired + remaining > amount""",
    "returns count as expired no more than the order's lots lost to expiry": """
        SELECT c.order_id, c.currency, sum(c.from_expired), (
                   SELECT sum(l.expired + l.remaining - l.held) FROM lot_states AS l
                   WHERE l.order_id = c.order_id AND l.currency = c.currency)
        FROM order_clawbacks AS c
        GROUP BY c.order_id, c.currency
        HAVING sum(c.from_expired) > coalesce((
                   SELECT sum(l.expired + l.remaining - l.held) FROM lot_states AS l
                   WHERE l.order_id = c.order_id AND l.currency = c.currency), 0)""",
    "clawed_back holds what the returns recorded moving": """
        SELECT moved, recorded FROM (
            SELECT (SELECT coalesce(sum(g.amount), 0) FROM ledger_legs AS g
                    JOIN accounts AS a ON a.id = g.account_id
                    WHERE a.kind = 'clawed_back') AS moved,
                   (SELECT coalesce(sum(from_earned + from_available + to_debt), 0)
                    FROM order_clawbacks) AS recorded) AS t
        WHERE moved <> recorded""",
}
NAMES = list(INVARIANTS)
# One round trip per check: the checks run after every step of every example.
CHECK_ALL = "\nUNION ALL\n".join(
    f"SELECT {number} AS invariant, v::text AS row FROM ({sql}) AS v"
    for number, sql in enumerate(INVARIANTS.values())
)


async def check_invariants(conn: asyncpg.Connection, program: Program) -> None:
    """Check every invariant over every row of the example's transaction."""
    # The deferred "has legs" trigger runs at commit, which never comes: run it now.
    await conn.execute("SET CONSTRAINTS ALL IMMEDIATE; SET CONSTRAINTS ALL DEFERRED")
    broken = await conn.fetch(CHECK_ALL, program.return_policy == "forgive")
    assert not broken, "\n".join(f"{NAMES[r['invariant']]}: {r['row']}" for r in broken)


# --- Running a history --------------------------------------------------------------------


@dataclass
class History:
    """One example: the program, its orders, the clock and what the model expects."""

    conn: asyncpg.Connection
    program: Program
    orders: list[Order]
    check_returns: bool
    now: datetime = T0
    # Points awarded per (order, currency), whatever part of them paid off debt.
    awarded: dict[tuple[int, str], int] = field(default_factory=lambda: defaultdict(int))
    taken: dict[tuple[int, str], int] = field(default_factory=lambda: defaultdict(int))
    returned: dict[int, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    done: list[tuple[Step, Any, Any]] = field(default_factory=list)
    keys: int = 0

    def key(self, prefix: str) -> str:
        self.keys += 1
        return f"{prefix}{self.keys}"

    async def run(self, step: Step) -> None:
        if isinstance(step, Award):
            await self.award(step)
        elif isinstance(step, Spend):
            await self.spend(step)
        elif isinstance(step, Return):
            await self.give_back(step)
        elif isinstance(step, Advance):
            self.now += timedelta(hours=step.hours)
        elif isinstance(step, Housekeep):
            await self.housekeep(step)
        else:
            await self.retry(step)

    async def award(self, step: Award, key: str | None = None) -> LedgerReceipt:
        member = MEMBERS[step.member]
        order_id = None
        number = None if step.order is None else step.order % len(self.orders)
        if number is not None:
            order_id = f"O{number}"
            member = MEMBERS[self.orders[number].owner]
        retry = key is not None
        key = key or self.key("award")
        before = await member_balances(self.conn)
        async with self.conn.transaction():
            receipt = await ledger.award(
                self.conn, program="default", member_id=member, points=step.points,
                kind=step.kind, currency=step.currency, reason="award", source=key, key=key,
                occurred_at=self.now,
                available_at=self.now + timedelta(days=step.waiting_days),
                expires_at=lot_expiry(self.program.expiry_for(step.currency), self.now),
                order_id=order_id,
            )  # fmt: skip
        after = await member_balances(self.conn)
        if retry:
            return receipt
        assert not receipt.duplicate
        # Debt is paid off first, the rest goes to the account of the award's kind.
        owed = -before.get((member, step.currency, "debt"), 0)
        pay_off = min(owed, step.points)
        expected = dict(before)
        if pay_off:
            expected[(member, step.currency, "debt")] = -owed + pay_off
        kind_key = (member, step.currency, step.kind)
        expected[kind_key] = before.get(kind_key, 0) + step.points - pay_off
        assert {k: v for k, v in after.items() if v or k in before} == {
            k: v for k, v in expected.items() if v or k in before
        }
        await self.check_activity(member, step.currency)
        if pay_off:
            event("award paid off debt", "with an order" if number is not None else "alone")
        if number is not None:
            self.awarded[(number, step.currency)] += step.points
        self.done.append((step, key, receipt))
        return receipt

    async def spend(self, step: Spend, key: str | None = None) -> LedgerReceipt | None:
        member = MEMBERS[step.member]
        retry = key is not None
        key = key or self.key("spend")
        before = await member_balances(self.conn)
        account = (member, step.currency, step.kind)
        has = before.get(account, 0)
        step = replace(step, points=step.points or max(has, 1))
        try:
            async with self.conn.transaction():
                receipt = await ledger.spend(
                    self.conn, program="default", member_id=member, points=step.points,
                    kind=step.kind, currency=step.currency, reason="spend", source=key,
                    key=key, occurred_at=self.now,
                )  # fmt: skip
        except InsufficientPoints:
            event("spend refused")
            assert not retry, "a retried spend returns its first result"
            assert has < step.points, f"refused a spend of {step.points} with {has} available"
            assert await member_balances(self.conn) == before
            return None
        if retry:
            return receipt
        assert has >= step.points
        assert not receipt.duplicate
        after = await member_balances(self.conn)
        assert after == {**before, account: has - step.points}
        await self.check_activity(member, step.currency)
        self.done.append((step, key, receipt))
        return receipt

    async def check_activity(self, member: str, currency: str) -> None:
        """Earning and spending restart the inactivity clock (time only moves forward)."""
        last = await self.conn.fetchval(
            """SELECT last_activity_at FROM member_currencies
               WHERE program = 'default' AND member_id = $1 AND currency = $2""",
            member,
            currency,
        )
        assert last == self.now

    async def give_back(self, step: Return, key: str | None = None) -> Any:
        number = step.order % len(self.orders)
        order = self.orders[number]
        order_id = f"O{number}"
        if step.percent == 100:
            amount = max(CENT, order.amount - self.returned[number])
        else:
            amount = max(CENT, (order.amount * step.percent / 100).quantize(CENT, ROUND_FLOOR))
        retry = key is not None
        key = key or self.key("return")
        before = await self.order_lots(order_id)
        try:
            async with self.conn.transaction():
                results = await claw_back(
                    self.conn, self.program, member_id=MEMBERS[order.owner],
                    order_id=order_id, amount=amount, key=key, source=key,
                    occurred_at=self.now,
                )  # fmt: skip
        except LedgerRefusal as refusal:
            refused: str | None = refusal.code
        else:
            refused = None
        if refused is not None:
            assert not retry, "a retried return returns its first result"
            assert refused == "return_exceeds_order"
            assert self.returned[number] + amount > order.amount
            return None
        if retry:
            return results
        assert self.returned[number] + amount <= order.amount
        self.returned[number] += amount
        assert {r.currency for r in results} <= set(CURRENCIES)
        if self.check_returns:
            by_currency = {r.currency: r for r in results}
            for currency in CURRENCIES:
                earned = self.awarded[(number, currency)]
                target = min(
                    earned,
                    int(earned * self.returned[number] / order.amount),
                )
                expected = max(0, target - self.taken[(number, currency)])
                got = by_currency[currency].points if currency in by_currency else 0
                assert got == expected, (
                    f"return of {amount} on {order_id} ({currency}): the order earned "
                    f"{earned}, {self.returned[number]} of {order.amount} returned, "
                    f"{self.taken[(number, currency)]} taken before: expected "
                    f"{expected} more, took {got}"
                )
                # The order's own lots give up their points first.
                after = await self.order_lots(order_id)
                held_before = before.get(currency, 0)
                assert after.get(currency, 0) == held_before - min(got, held_before), (
                    f"the return took {got} {currency} but {order_id}'s lots went from "
                    f"{held_before} to {after.get(currency, 0)}"
                )
        event("return", "took points" if any(r.points for r in results) else "took nothing")
        if any(r.to_debt for r in results):
            event("return left debt")
        for result in results:
            self.taken[(number, result.currency)] += result.points
        self.done.append((step, key, results))
        return results

    async def order_lots(self, order_id: str) -> dict[str, int]:
        found = await self.conn.fetch(
            """SELECT currency, sum(held)::bigint AS remaining
               FROM lot_states WHERE order_id = $1 GROUP BY currency""",
            order_id,
        )
        return {r["currency"]: r["remaining"] for r in found}

    async def housekeep(self, step: Housekeep) -> None:
        # Always a new cut-off: a cut-off already used is a no-op by design.
        self.now += timedelta(hours=step.hours)
        for attempt in range(2 if step.twice else 1):
            before = await snapshot(self.conn)
            if step.steps in ("mature", "both"):
                matured = await mature_due(self.conn, "default", self.now)
                if attempt:
                    assert (matured.lots, matured.points, matured.transaction_id) == (0, 0, None)
            if step.steps in ("expire", "both"):
                for expired in await expire_due(self.conn, self.program, self.now):
                    if attempt:
                        assert (expired.lots, expired.points, expired.transaction_id) == (
                            0,
                            0,
                            None,
                        )
            if attempt:
                assert await snapshot(self.conn) == before
        if step.steps in ("mature", "both"):
            due = await rows(
                self.conn,
                """SELECT id FROM lot_states
                   WHERE state = 'earned' AND held > 0 AND available_at <= $1""",
                self.now,
            )
            assert due == [], "maturing leaves no due lot behind"
        if step.steps in ("expire", "both"):
            late = await rows(
                self.conn,
                "SELECT id FROM lot_states WHERE held > 0 AND expires_at <= $1",
                self.now,
            )
            assert late == [], "expiry leaves no lot past its date"
            for currency in CURRENCIES:
                policy = self.program.expiry_for(currency)
                if not isinstance(policy, Inactivity):
                    continue
                idle = await rows(
                    self.conn,
                    """SELECT m.member_id, sum(l.remaining) FROM member_currencies AS m
                       JOIN accounts AS a ON a.program = m.program
                            AND a.member_id = m.member_id AND a.currency = m.currency
                       JOIN lots AS l ON l.account_id = a.id AND l.remaining > 0
                       WHERE m.currency = $1 AND m.last_activity_at <= $2
                       GROUP BY m.member_id""",
                    currency,
                    self.now - timedelta(days=policy.days),
                )
                assert idle == [], f"inactive members keep no {currency}"

    async def retry(self, step: Retry) -> None:
        if not self.done:
            return
        first_step, key, first = self.done[step.index % len(self.done)]
        before = await snapshot(self.conn)
        if isinstance(first_step, Award):
            again: Any = await self.award(first_step, key)
            assert (again.transaction_id, again.points, again.duplicate) == (
                first.transaction_id,
                first.points,
                True,
            )
        elif isinstance(first_step, Spend):
            again = await self.spend(first_step, key)
            assert again is not None
            assert (again.transaction_id, again.points, again.duplicate) == (
                first.transaction_id,
                first.points,
                True,
            )
        else:
            assert isinstance(first_step, Return)
            if not self.check_returns:
                return
            again = await self.give_back(first_step, key)
            assert again == first
        assert await snapshot(self.conn) == before, f"retrying {key} changed the ledger"


async def run_history(
    conn: asyncpg.Connection,
    program: Program,
    orders_: list[Order],
    history: list[Step],
    *,
    check_returns: bool,
) -> None:
    tr = conn.transaction()
    await tr.start()
    try:
        # Every example starts from the empty migrated database: the last one rolled back.
        assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 0
        await conn.execute(
            "INSERT INTO members (program, member_id) SELECT 'default', unnest($1::text[])",
            list(MEMBERS),
        )
        state = History(conn, program, orders_, check_returns)
        for number, order in enumerate(orders_):
            await record_order(
                conn, "default", f"O{number}", MEMBERS[order.owner], order.amount, "EUR"
            )
            for currency, kind, points in order.earned:
                await state.run(Award(order.owner, currency, points, kind, number, 14))
        await check_invariants(conn, program)
        for step in history:
            await state.run(step)
            await check_invariants(conn, program)
    finally:
        await tr.rollback()


@PROPERTY_SETTINGS
@given(program=programs, orders_=orders, history=histories)
async def test_ledger_invariants_hold_after_every_step(
    conn: asyncpg.Connection, program: Program, orders_: list[Order], history: list[Step]
) -> None:
    await run_history(conn, program, orders_, history, check_returns=False)


@PROPERTY_SETTINGS
@given(program=programs, orders_=orders, history=histories)
async def test_returns_take_back_what_the_order_earned(
    conn: asyncpg.Connection, program: Program, orders_: list[Order], history: list[Step]
) -> None:
    await run_history(conn, program, orders_, history, check_returns=True)
