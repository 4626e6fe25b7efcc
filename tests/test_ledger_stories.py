"""The ledger as stories: small worked examples with exact balances at every step.

Each story runs against a fresh migrated database (the ``conn`` fixture) and calls the
ledger functions directly, with explicit times: no test reads the wall clock. Expiry
dates are computed the way event processing computes them, with
`loyalty.policies.lot_expiry`, and passed to `ledger.award` by the caller.

Members are called alice, bob and carol; the program is ``default`` and the point
currency ``points``; orders are in EUR.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import NamedTuple

import asyncpg
import pytest

from loyalty import ledger
from loyalty.app import Program
from loyalty.errors import InsufficientPoints, LedgerRefusal
from loyalty.ledger.maturing import expire_due, mature_due, run_housekeeping
from loyalty.ledger.members import member_view
from loyalty.ledger.returns import Clawback, claw_back, record_order
from loyalty.models import Balance, Expiry, LedgerReceipt
from loyalty.policies import ExpiryPolicy, FixedDate, Inactivity, NoExpiry, Rolling, lot_expiry
from loyalty.store.db import Conn

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
WAITING = timedelta(days=14)

DEBT = Program(name="default", return_policy="debt")
FORGIVE = Program(name="default", return_policy="forgive")


async def enrol(conn: Conn, *members: str) -> None:
    for member in members:
        await conn.execute(
            "INSERT INTO members (program, member_id) VALUES ('default', $1)", member
        )


async def store_config(conn: Conn, program: Program) -> None:
    """Store the program's settings in the database, as the worker does at start."""
    await conn.execute(
        "UPDATE programs SET config = $2 WHERE name = $1", program.name, program.config()
    )


async def earn(
    conn: Conn,
    key: str,
    points: int,
    *,
    at: datetime,
    member: str = "alice",
    kind: str = "available",
    expiry: ExpiryPolicy | None = None,
    order: str | None = None,
) -> LedgerReceipt:
    """Award points as event processing does: earned points wait WAITING to mature."""
    return await ledger.award(
        conn,
        program="default",
        member_id=member,
        points=points,
        kind=kind,
        currency="points",
        reason=f"earn {key}",
        source=key,
        key=key,
        occurred_at=at,
        available_at=at + WAITING if kind == "earned" else at,
        expires_at=lot_expiry(expiry or NoExpiry(), at),
        order_id=order,
    )


async def redeem(
    conn: Conn, key: str, points: int, *, at: datetime, member: str = "alice"
) -> LedgerReceipt:
    return await ledger.spend(
        conn,
        program="default",
        member_id=member,
        points=points,
        kind="available",
        currency="points",
        reason=f"redeem {key}",
        source=key,
        key=key,
        occurred_at=at,
    )


async def give_back(
    conn: Conn,
    program: Program,
    key: str,
    order: str,
    amount: str,
    *,
    at: datetime,
    member: str = "alice",
) -> Clawback:
    """Return ``amount`` EUR of an order; returns the one currency's clawback."""
    [result] = await claw_back(
        conn,
        program,
        member_id=member,
        order_id=order,
        amount=Decimal(amount),
        key=key,
        source=key,
        occurred_at=at,
    )
    return result


class Held(NamedTuple):
    """A member's points as the member view shows them; ``debt`` is what they owe."""

    available: int = 0
    earned: int = 0
    debt: int = 0


async def balance(conn: Conn, member: str = "alice") -> Held:
    view = await member_view(conn, "default", member)
    points = view.balances.get("points", Balance())
    return Held(points.available, points.earned, points.debt)


async def lots(conn: Conn) -> list[tuple[str, str, int, int]]:
    """Every lot as (key of the award, state, amount, points held), oldest first."""
    rows = await conn.fetch(
        """SELECT t.idempotency_key, l.state, l.amount, l.held
           FROM lot_states AS l
           JOIN ledger_transactions AS t ON t.id = l.transaction_id
           ORDER BY l.id"""
    )
    return [tuple(row.values()) for row in rows]


async def program_total(conn: Conn, kind: str) -> int:
    """A program account's total: the sum of its legs (no cached balance)."""
    return int(
        await conn.fetchval(
            """SELECT coalesce(sum(g.amount), 0) FROM ledger_legs AS g
               JOIN accounts AS a ON a.id = g.account_id
               WHERE a.member_id IS NULL AND a.kind = $1""",
            kind,
        )
    )


async def clawbacks(conn: Conn, order: str) -> list[tuple[int, int, int, int, int]]:
    """The order's returns as (points, from_earned, from_available, to_debt, forgiven)."""
    rows = await conn.fetch(
        """SELECT points, from_earned, from_available, to_debt, forgiven
           FROM order_clawbacks WHERE order_id = $1 ORDER BY id""",
        order,
    )
    return [tuple(row.values()) for row in rows]


async def ledger_count(conn: Conn) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM ledger_transactions"))


async def last_activity(conn: Conn, member: str) -> datetime:
    value: datetime = await conn.fetchval(
        """SELECT last_activity_at FROM member_currencies
           WHERE program = 'default' AND member_id = $1 AND currency = 'points'""",
        member,
    )
    return value


# --- Earning with a waiting period ------------------------------------------------------


async def test_earned_points_wait_14_days_then_housekeeping_makes_them_available(
    conn: asyncpg.Connection,
) -> None:
    # Alice earns 120 on 2 March; they are usable from 16 March.
    await enrol(conn, "alice")
    await earn(conn, "e1", 120, at=T0, kind="earned")
    assert await balance(conn) == Held(available=0, earned=120, debt=0)
    with pytest.raises(InsufficientPoints):
        await redeem(conn, "too-early", 1, at=T0 + DAY)

    # One second before the date: nothing matures.
    early = await mature_due(conn, "default", T0 + WAITING - SECOND)
    assert (early.lots, early.points, early.transaction_id) == (0, 0, None)
    assert await balance(conn) == Held(available=0, earned=120)

    # On the date: the whole lot moves, with its legs earned -120, available +120.
    done = await mature_due(conn, "default", T0 + WAITING)
    assert (done.lots, done.points) == (1, 120)
    legs = await conn.fetch(
        """SELECT a.kind, g.amount FROM ledger_legs AS g JOIN accounts AS a ON a.id = g.account_id
           WHERE g.transaction_id = $1 ORDER BY a.kind""",
        done.transaction_id,
    )
    assert [(r["kind"], r["amount"]) for r in legs] == [("available", 120), ("earned", -120)]
    assert await lots(conn) == [("e1", "available", 120, 120)]

    view = await member_view(conn, "default", "alice")
    assert view.balances == {
        "points": Balance(available=120, earned=0, debt=0, lifetime_earned=120)
    }
    assert [(e.kind, e.points) for e in view.entries[:2]] == [("available", 120), ("earned", -120)]

    # Now they can be spent.
    await redeem(conn, "r1", 120, at=T0 + WAITING + DAY)
    assert await balance(conn) == Held()


async def test_only_the_lots_that_are_due_mature(conn: asyncpg.Connection) -> None:
    # Alice earns 50 on day 0 and 70 on day 5: maturing on day 14 moves only the first.
    await earn(conn, "e1", 50, at=T0, kind="earned")
    await earn(conn, "e2", 70, at=T0 + 5 * DAY, kind="earned")
    done = await mature_due(conn, "default", T0 + WAITING)
    assert (done.lots, done.points) == (1, 50)
    assert await balance(conn) == Held(available=50, earned=70)
    assert await lots(conn) == [("e1", "available", 50, 50), ("e2", "earned", 70, 70)]
    done = await mature_due(conn, "default", T0 + 5 * DAY + WAITING)
    assert (done.lots, done.points) == (1, 70)
    assert await balance(conn) == Held(available=120)


# --- Spending -----------------------------------------------------------------------------


async def test_spending_takes_the_soonest_expiring_lot_first(conn: asyncpg.Connection) -> None:
    # Alice gets a 100-point welcome bonus valid a year, then 50 campaign points valid 30
    # days. She redeems 70: the 50 that expire first go entirely, then 20 of the bonus.
    await enrol(conn, "alice")
    await earn(conn, "bonus", 100, at=T0, expiry=Rolling(days=365))
    await earn(conn, "campaign", 50, at=T0 + DAY, expiry=Rolling(days=30))
    await redeem(conn, "r1", 70, at=T0 + 2 * DAY)
    assert await lots(conn) == [
        ("bonus", "available", 100, 80),
        ("campaign", "available", 50, 0),
    ]
    assert await balance(conn) == Held(available=80)
    assert await program_total(conn, "issued") == -150
    assert await program_total(conn, "redeemed") == 70

    # A refused spend writes nothing.
    ledger_before = await ledger_count(conn)
    async with conn.transaction():
        with pytest.raises(InsufficientPoints, match="has 80 available points, cannot remove 81"):
            await redeem(conn, "r2", 81, at=T0 + 3 * DAY)
    assert await ledger_count(conn) == ledger_before
    assert await balance(conn) == Held(available=80)


# --- Returns ------------------------------------------------------------------------------


async def test_partial_returns_after_a_partial_spend_become_debt(
    conn: asyncpg.Connection,
) -> None:
    # Alice buys for 200 EUR (order A) and earns 120 points; she redeems 100 of them.
    await enrol(conn, "alice")
    await record_order(conn, "default", "A", "alice", Decimal("200.00"), "EUR")
    await earn(conn, "e1", 120, at=T0, order="A")
    await redeem(conn, "r1", 100, at=T0 + DAY)
    assert await balance(conn) == Held(available=20)

    # She returns 100 EUR, half the order: 60 points come back, the 20 she still has
    # and 40 she already spent, which become debt.
    first = await give_back(conn, DEBT, "ret1", "A", "100.00", at=T0 + 2 * DAY)
    assert first == Clawback("points", 60, from_earned=0, from_available=20, to_debt=40, forgiven=0)
    assert await balance(conn) == Held(available=0, earned=0, debt=40)

    # She returns 50 EUR more (150 of 200): the target is 90, 60 were taken, 30 more.
    second = await give_back(conn, DEBT, "ret2", "A", "50.00", at=T0 + 3 * DAY)
    assert second == Clawback("points", 30, 0, 0, 30, 0)
    assert await balance(conn) == Held(debt=70)

    # The last 50 EUR: exactly what is left, 30; in all 120, what the order earned.
    third = await give_back(conn, DEBT, "ret3", "A", "50.00", at=T0 + 4 * DAY)
    assert third == Clawback("points", 30, 0, 0, 30, 0)
    assert await balance(conn) == Held(debt=100)
    assert await clawbacks(conn, "A") == [
        (60, 0, 20, 40, 0),
        (30, 0, 0, 30, 0),
        (30, 0, 0, 30, 0),
    ]
    assert await program_total(conn, "clawed_back") == 120
    assert await program_total(conn, "forgiven") == 0
    assert await conn.fetchval("SELECT returned_amount FROM orders") == Decimal("200.0000")
    # Nothing more can come back.
    with pytest.raises(LedgerRefusal, match=r"cannot return 0\.01 more"):
        await give_back(conn, DEBT, "ret4", "A", "0.01", at=T0 + 5 * DAY)


async def test_partial_returns_after_a_partial_spend_are_forgiven(
    conn: asyncpg.Connection,
) -> None:
    # The same story under the forgive policy: what was spent is only recorded.
    await enrol(conn, "alice")
    await record_order(conn, "default", "A", "alice", Decimal("200.00"), "EUR")
    await earn(conn, "e1", 120, at=T0, order="A")
    await redeem(conn, "r1", 100, at=T0 + DAY)

    first = await give_back(conn, FORGIVE, "ret1", "A", "100.00", at=T0 + 2 * DAY)
    assert first == Clawback("points", 60, from_earned=0, from_available=20, to_debt=0, forgiven=40)
    assert await balance(conn) == Held(available=0, earned=0, debt=0)
    second = await give_back(conn, FORGIVE, "ret2", "A", "100.00", at=T0 + 3 * DAY)
    assert second == Clawback("points", 60, 0, 0, 0, 60)

    assert await clawbacks(conn, "A") == [(60, 0, 20, 0, 40), (60, 0, 0, 0, 60)]
    # Only the 20 points that still existed moved; no debt account holds anything.
    assert await program_total(conn, "clawed_back") == 20
    assert await conn.fetchval("SELECT count(*) FROM accounts WHERE kind = 'debt'") == 0
    assert await balance(conn) == Held()
    # Later earnings are all the member's: nothing is owed.
    await earn(conn, "e2", 10, at=T0 + 4 * DAY)
    assert await balance(conn) == Held(available=10)


async def test_returns_in_thirds_round_down_the_cumulative_share(
    conn: asyncpg.Connection,
) -> None:
    # 100 points on a 3.00 EUR order, returned 1.00 at a time: 33.3 → 33, 66.6 → 66 (33
    # more), 100 → 34 more. Never more than earned; in all exactly what was earned.
    await record_order(conn, "default", "A", "alice", Decimal("3.00"), "EUR")
    await earn(conn, "e1", 100, at=T0, order="A")
    taken = [
        (await give_back(conn, DEBT, f"ret{i}", "A", "1.00", at=T0 + i * DAY)).points
        for i in (1, 2, 3)
    ]
    assert taken == [33, 33, 34]
    assert await balance(conn) == Held()
    assert await lots(conn) == [("e1", "available", 100, 0)]


async def test_a_return_before_maturing_takes_the_earned_points(conn: asyncpg.Connection) -> None:
    # The worked example of loyalty.ledger.returns: order A (100 EUR) earned 120 points, not yet
    # matured; 50 EUR come back: 60 leave the earned lot; then the rest.
    await record_order(conn, "default", "A", "alice", Decimal("100.00"), "EUR")
    await earn(conn, "e1", 120, at=T0, kind="earned", order="A")
    half = await give_back(conn, DEBT, "ret1", "A", "50.00", at=T0 + DAY)
    assert half == Clawback("points", 60, from_earned=60, from_available=0, to_debt=0, forgiven=0)
    assert await balance(conn) == Held(earned=60)
    rest = await give_back(conn, DEBT, "ret2", "A", "50.00", at=T0 + 2 * DAY)
    assert rest == Clawback("points", 60, 60, 0, 0, 0)
    assert await balance(conn) == Held()
    # Nothing is left to mature.
    done = await mature_due(conn, "default", T0 + WAITING)
    assert (done.lots, done.points) == (0, 0)


async def test_a_return_takes_the_orders_own_lot_before_other_points(
    conn: asyncpg.Connection,
) -> None:
    # Alice has a 50-point bonus (no order) and 100 points from order A. She returns
    # half of A: the 50 points must come out of A's own lot, and her bonus stays whole
    # (loyalty.ledger.returns: "the order's own lots first, then the soonest-expiring").
    await record_order(conn, "default", "A", "alice", Decimal("100.00"), "EUR")
    await earn(conn, "bonus", 50, at=T0)
    await earn(conn, "e1", 100, at=T0 + DAY, order="A")
    taken = await give_back(conn, DEBT, "ret1", "A", "50.00", at=T0 + 2 * DAY)
    assert taken == Clawback("points", 50, 0, 50, 0, 0)
    assert await balance(conn) == Held(available=100)
    assert await lots(conn) == [("bonus", "available", 50, 50), ("e1", "available", 100, 50)]


async def test_a_return_takes_the_orders_own_earned_lot_before_other_earned_points(
    conn: asyncpg.Connection,
) -> None:
    # The same before maturing: a 40-point earned bonus and 100 earned on order A. Half
    # of A comes back: 50 leave A's lot; the bonus still matures whole on its date.
    await record_order(conn, "default", "A", "alice", Decimal("100.00"), "EUR")
    await earn(conn, "bonus", 40, at=T0, kind="earned")
    await earn(conn, "e1", 100, at=T0 + 5 * DAY, kind="earned", order="A")
    taken = await give_back(conn, DEBT, "ret1", "A", "50.00", at=T0 + 6 * DAY)
    assert taken == Clawback("points", 50, 50, 0, 0, 0)
    assert await lots(conn) == [("bonus", "earned", 40, 40), ("e1", "earned", 100, 50)]
    done = await mature_due(conn, "default", T0 + WAITING)
    assert (done.lots, done.points) == (1, 40)
    assert await balance(conn) == Held(available=40, earned=50)


async def test_repeating_a_return_key_returns_the_first_result(conn: asyncpg.Connection) -> None:
    await record_order(conn, "default", "A", "alice", Decimal("100.00"), "EUR")
    await earn(conn, "e1", 100, at=T0, order="A")
    first = await give_back(conn, DEBT, "ret1", "A", "30.00", at=T0 + DAY)
    again = await give_back(conn, DEBT, "ret1", "A", "30.00", at=T0 + DAY)
    assert first == again == Clawback("points", 30, 0, 30, 0, 0)
    assert await balance(conn) == Held(available=70)
    assert await conn.fetchval("SELECT returned_amount FROM orders") == Decimal("30.0000")


async def test_repeating_a_return_key_of_an_order_without_points_changes_nothing(
    conn: asyncpg.Connection,
) -> None:
    # Order B earned no points (no earn rule matched). Its return of 30 EUR is retried
    # with the same key: the order must count 30 EUR returned, not 60, and the remaining
    # 70 EUR can still be returned.
    await record_order(conn, "default", "B", "alice", Decimal("100.00"), "EUR")
    for _ in range(2):
        assert (
            await claw_back(
                conn,
                DEBT,
                member_id="alice",
                order_id="B",
                amount=Decimal("30.00"),
                key="ret1",
                source="ret1",
                occurred_at=T0,
            )
            == []
        )
    assert await conn.fetchval("SELECT returned_amount FROM orders") == Decimal("30.0000")
    await claw_back(
        conn,
        DEBT,
        member_id="alice",
        order_id="B",
        amount=Decimal("70.00"),
        key="ret2",
        source="ret2",
        occurred_at=T0 + DAY,
    )


async def test_returning_an_order_whose_points_expired_takes_nothing_else(
    conn: asyncpg.Connection,
) -> None:
    # Order A earned 100 points valid 30 days; Alice never used them and they expired.
    # She also holds a 50-point bonus. She returns A on day 40: the order's points are
    # already gone (to `expired`), she spent none of them, so her bonus stays whole and
    # she owes nothing (README: only "what the member already spent" becomes debt).
    program = Program(name="default", expiry={"points": Rolling(days=30)})
    await record_order(conn, "default", "A", "alice", Decimal("100.00"), "EUR")
    await earn(conn, "e1", 100, at=T0, order="A", expiry=program.expiry_for("points"))
    await earn(conn, "bonus", 50, at=T0)
    await expire_due(conn, program, T0 + 30 * DAY)
    assert await balance(conn) == Held(available=50)

    taken = await give_back(conn, program, "ret1", "A", "100.00", at=T0 + 40 * DAY)
    assert taken == Clawback("points", 100, 0, 0, to_debt=0, forgiven=0, from_expired=100)
    assert await balance(conn) == Held(available=50, debt=0)
    assert await lots(conn) == [("e1", "expired", 100, 0), ("bonus", "available", 50, 50)]
    # The program never recovers more than the order gave: 100 expired, none clawed back.
    assert await program_total(conn, "expired") == 100
    assert await program_total(conn, "clawed_back") == 0


async def test_returning_an_order_partly_spent_partly_expired(conn: asyncpg.Connection) -> None:
    # Order A (100 EUR) earned 100 points valid 30 days. Alice spends 60 on day 10 (the
    # soonest-expiring lot, A's, gives them); the other 40 expire on day 30. She holds a
    # 50-point bonus that never expires. She returns half of A, then the rest.
    program = Program(name="default", expiry={"points": Rolling(days=30)})
    await record_order(conn, "default", "A", "alice", Decimal("100.00"), "EUR")
    await earn(conn, "e1", 100, at=T0, order="A", expiry=program.expiry_for("points"))
    await earn(conn, "bonus", 50, at=T0)
    await redeem(conn, "r1", 60, at=T0 + 10 * DAY)
    assert await lots(conn) == [("e1", "available", 100, 40), ("bonus", "available", 50, 50)]
    [expired] = await expire_due(conn, program, T0 + 30 * DAY)
    assert (expired.lots, expired.points) == (1, 40)
    # The lot keeps what it held when its date passed; it holds nothing any more.
    assert await conn.fetchrow(
        "SELECT state, remaining, held FROM lot_states WHERE order_id = 'A'"
    ) == ("expired", 40, 0)

    # Half: 50 points are due; the 40 that expired are gone already, 10 were spent and
    # come out of her other points.
    half = await give_back(conn, program, "ret1", "A", "50.00", at=T0 + 40 * DAY)
    assert half == Clawback("points", 50, 0, 10, to_debt=0, forgiven=0, from_expired=40)
    assert await balance(conn) == Held(available=40)
    # The rest: 50 more, all spent: 40 from her bonus, 10 become debt.
    rest = await give_back(conn, program, "ret2", "A", "50.00", at=T0 + 41 * DAY)
    assert rest == Clawback("points", 50, 0, 40, to_debt=10, forgiven=0, from_expired=0)
    assert await balance(conn) == Held(available=0, debt=10)
    # In all she gave back the 60 she spent: 50 from her bonus, 10 owed.
    assert await program_total(conn, "clawed_back") == 60
    assert await program_total(conn, "expired") == 40


# --- Debt ---------------------------------------------------------------------------------


async def test_later_earnings_pay_off_debt_first(conn: asyncpg.Connection) -> None:
    # Alice earned 100 on order A (100 EUR), spent them all, returned the whole order:
    # she owes 100.
    await enrol(conn, "alice")
    await record_order(conn, "default", "A", "alice", Decimal("100.00"), "EUR")
    await earn(conn, "e1", 100, at=T0, order="A")
    await redeem(conn, "r1", 100, at=T0 + DAY)
    await give_back(conn, DEBT, "ret1", "A", "100.00", at=T0 + 2 * DAY)
    assert await balance(conn) == Held(debt=100)

    # She earns 30: all of it pays off debt; no lot is created.
    await earn(conn, "e2", 30, at=T0 + 3 * DAY)
    assert await balance(conn) == Held(available=0, debt=70)
    # Earned points pay off debt too, at once.
    await earn(conn, "e3", 20, at=T0 + 4 * DAY, kind="earned")
    assert await balance(conn) == Held(available=0, earned=0, debt=50)
    # She earns 80: 50 pay off the rest, 30 are hers.
    await earn(conn, "e4", 80, at=T0 + 5 * DAY)
    view = await member_view(conn, "default", "alice")
    assert view.balances["points"] == Balance(available=30, earned=0, debt=0, lifetime_earned=230)
    assert await lots(conn) == [("e1", "available", 100, 0), ("e4", "available", 30, 30)]
    # Lifetime earnings count every award, whatever paid off debt.
    assert await conn.fetchval("SELECT lifetime_earned FROM member_currencies") == 230
    assert await program_total(conn, "issued") == -230
    with pytest.raises(InsufficientPoints):
        await redeem(conn, "r2", 31, at=T0 + 6 * DAY)
    await redeem(conn, "r3", 30, at=T0 + 6 * DAY)
    assert await balance(conn) == Held()


async def test_returning_an_order_whose_points_paid_off_debt_claws_them_all_back(
    conn: asyncpg.Connection,
) -> None:
    # Alice owes 40 (order A, spent and returned). She buys for 50 EUR (order B) and earns
    # 100: 40 pay off the debt, 60 are available. She returns B entirely: the order
    # earned 100, so 100 come back (60 available, 40 debt again), as if B never happened.
    await record_order(conn, "default", "A", "alice", Decimal("40.00"), "EUR")
    await earn(conn, "e1", 40, at=T0, order="A")
    await redeem(conn, "r1", 40, at=T0 + DAY)
    await give_back(conn, DEBT, "retA", "A", "40.00", at=T0 + 2 * DAY)
    assert await balance(conn) == Held(debt=40)

    await record_order(conn, "default", "B", "alice", Decimal("50.00"), "EUR")
    await earn(conn, "e2", 100, at=T0 + 3 * DAY, order="B")
    assert await balance(conn) == Held(available=60, debt=0)

    taken = await give_back(conn, DEBT, "retB", "B", "50.00", at=T0 + 4 * DAY)
    assert taken == Clawback(
        "points", 100, from_earned=0, from_available=60, to_debt=40, forgiven=0
    )
    assert await balance(conn) == Held(available=0, debt=40)


# --- Expiry -------------------------------------------------------------------------------


async def test_rolling_expiry_takes_each_lot_30_days_after_it_was_earned(
    conn: asyncpg.Connection,
) -> None:
    program = Program(name="default", expiry={"points": Rolling(days=30)})
    policy = program.expiry_for("points")
    await earn(conn, "e1", 100, at=T0, expiry=policy)
    await earn(conn, "e2", 50, at=T0 + 10 * DAY, expiry=policy)
    await redeem(conn, "r1", 30, at=T0 + 20 * DAY)
    assert await lots(conn) == [("e1", "available", 100, 70), ("e2", "available", 50, 50)]

    [before] = await expire_due(conn, program, T0 + 30 * DAY - SECOND)
    assert (before.lots, before.points, before.transaction_id) == (0, 0, None)
    assert await balance(conn) == Held(available=120)

    [first] = await expire_due(conn, program, T0 + 30 * DAY)
    assert (first.currency, first.lots, first.points) == ("points", 1, 70)
    assert await balance(conn) == Held(available=50)
    assert await lots(conn) == [("e1", "expired", 100, 0), ("e2", "available", 50, 50)]

    [second] = await expire_due(conn, program, T0 + 40 * DAY)
    assert (second.lots, second.points) == (1, 50)
    assert await balance(conn) == Held()
    assert await program_total(conn, "expired") == 120
    assert await program_total(conn, "redeemed") == 30


async def test_earned_points_past_their_date_expire_without_maturing(
    conn: asyncpg.Connection,
) -> None:
    # A 10-day rolling expiry on points that wait 14 days: they expire while still
    # earned, so nothing ever becomes available.
    program = Program(name="default", expiry={"points": Rolling(days=10)})
    await earn(conn, "e1", 80, at=T0, kind="earned", expiry=program.expiry_for("points"))
    await run_housekeeping(conn, program, T0 + 10 * DAY)
    assert await balance(conn) == Held(available=0, earned=0)
    assert await lots(conn) == [("e1", "expired", 80, 0)]
    assert await program_total(conn, "expired") == 80
    mature, _ = await run_housekeeping(conn, program, T0 + WAITING)
    assert (mature.lots, mature.points) == (0, 0)


async def test_fixed_date_expiry_takes_the_points_of_2026_on_new_year(
    conn: asyncpg.Connection,
) -> None:
    program = Program(name="default", expiry={"points": FixedDate(month=12, day=31)})
    policy = program.expiry_for("points")
    new_year = datetime(2027, 1, 1, tzinfo=UTC)
    await earn(conn, "march", 100, at=datetime(2026, 3, 15, 10, 0, tzinfo=UTC), expiry=policy)
    await earn(conn, "eve", 40, at=datetime(2026, 12, 31, 22, 0, tzinfo=UTC), expiry=policy)
    await earn(conn, "newyear", 25, at=new_year, expiry=policy)
    expiries = await conn.fetch("SELECT expires_at FROM lots ORDER BY id")
    assert [r["expires_at"] for r in expiries] == [
        new_year,
        new_year,
        datetime(2028, 1, 1, tzinfo=UTC),
    ]

    [before] = await expire_due(conn, program, new_year - SECOND)
    assert (before.lots, before.points) == (0, 0)
    [done] = await expire_due(conn, program, new_year)
    assert (done.lots, done.points) == (2, 140)
    assert await balance(conn) == Held(available=25)
    assert await lots(conn) == [
        ("march", "expired", 100, 0),
        ("eve", "expired", 40, 0),
        ("newyear", "available", 25, 25),
    ]


async def test_inactivity_expires_everything_after_90_quiet_days(
    conn: asyncpg.Connection,
) -> None:
    program = Program(name="default", expiry={"points": Inactivity(days=90)})
    policy = program.expiry_for("points")
    assert lot_expiry(policy, T0) is None
    await enrol(conn, "alice", "bob", "carol")
    # Alice earns 100 and 20 (earned, not matured), then is quiet.
    await earn(conn, "a1", 100, at=T0, member="alice", expiry=policy)
    await earn(conn, "a2", 20, at=T0, member="alice", kind="earned", expiry=policy)
    # Bob earns 100 on day 0 and spends 30 on day 60: his clock restarts on day 60.
    await earn(conn, "b1", 100, at=T0, member="bob", expiry=policy)
    await redeem(conn, "b2", 30, at=T0 + 60 * DAY, member="bob")
    # Carol earns 50 on day 0 and 10 on day 80: her clock restarts on day 80.
    await earn(conn, "c1", 50, at=T0, member="carol", expiry=policy)
    await earn(conn, "c2", 10, at=T0 + 80 * DAY, member="carol", expiry=policy)
    assert await last_activity(conn, "alice") == T0
    assert await last_activity(conn, "bob") == T0 + 60 * DAY
    assert await last_activity(conn, "carol") == T0 + 80 * DAY
    # With the program's settings stored (as the worker does), the member view shows
    # when everything a member holds expires.
    await store_config(conn, program)
    for member, held, last in [("alice", 120, T0), ("bob", 70, T0 + 60 * DAY)]:
        view = await member_view(conn, "default", member)
        assert view.upcoming_expiries == [
            Expiry(currency="points", points=held, expires_at=last + 90 * DAY)
        ]

    [quiet] = await expire_due(conn, program, T0 + 90 * DAY - SECOND)
    assert (quiet.lots, quiet.points) == (0, 0)
    [alice] = await expire_due(conn, program, T0 + 90 * DAY)
    assert (alice.lots, alice.points) == (2, 120)
    assert await balance(conn, "alice") == Held(available=0, earned=0)
    assert await balance(conn, "bob") == Held(available=70)
    assert await balance(conn, "carol") == Held(available=60)

    [none] = await expire_due(conn, program, T0 + 150 * DAY - SECOND)
    assert (none.lots, none.points) == (0, 0)
    [bob] = await expire_due(conn, program, T0 + 150 * DAY)
    assert (bob.lots, bob.points) == (1, 70)
    assert await balance(conn, "bob") == Held()
    assert (await member_view(conn, "default", "bob")).upcoming_expiries == []
    assert await balance(conn, "carol") == Held(available=60)

    [carol] = await expire_due(conn, program, T0 + 170 * DAY)
    assert (carol.lots, carol.points) == (2, 60)
    assert await balance(conn, "carol") == Held()
    assert await program_total(conn, "expired") == 120 + 70 + 60


# --- Idempotency --------------------------------------------------------------------------


async def test_housekeeping_again_at_the_same_time_changes_nothing(
    conn: asyncpg.Connection,
) -> None:
    program = Program(name="default", expiry={"points": Rolling(days=30)})
    policy = program.expiry_for("points")
    await earn(conn, "e1", 60, at=T0, kind="earned", expiry=policy)
    await earn(conn, "e2", 40, at=T0 - 20 * DAY, expiry=policy)
    at = T0 + WAITING

    first = await mature_due(conn, "default", at)
    assert (first.lots, first.points) == (1, 60)
    [expired] = await expire_due(conn, program, at)
    assert (expired.lots, expired.points) == (1, 40)
    count = await ledger_count(conn)
    state = await lots(conn)

    again = await mature_due(conn, "default", at)
    assert (again.lots, again.points, again.transaction_id) == (0, 0, None)
    [expired_again] = await expire_due(conn, program, at)
    assert (expired_again.lots, expired_again.points, expired_again.transaction_id) == (
        0,
        0,
        None,
    )
    assert await ledger_count(conn) == count
    assert await lots(conn) == state
    assert await balance(conn) == Held(available=60)


async def test_repeated_award_and_spend_keys_return_the_first_result(
    conn: asyncpg.Connection,
) -> None:
    await enrol(conn, "alice")
    first = await earn(conn, "e1", 100, at=T0)
    again = await earn(conn, "e1", 100, at=T0)
    assert (again.transaction_id, again.duplicate, first.duplicate) == (
        first.transaction_id,
        True,
        False,
    )
    # A retry that (wrongly) asks for other points still gets the first receipt.
    odd = await earn(conn, "e1", 999, at=T0 + DAY)
    assert (odd.transaction_id, odd.points, odd.duplicate) == (first.transaction_id, 100, True)
    spent = await redeem(conn, "r1", 100, at=T0 + DAY)
    # The balance is 0 now: the retried spend returns its first result, not a refusal.
    retried = await redeem(conn, "r1", 100, at=T0 + DAY)
    assert (retried.transaction_id, retried.duplicate) == (spent.transaction_id, True)
    assert await balance(conn) == Held()
    assert await ledger_count(conn) == 2
    assert await lots(conn) == [("e1", "available", 100, 0)]
    assert await conn.fetchval("SELECT lifetime_earned FROM member_currencies") == 100


# --- Member view --------------------------------------------------------------------------


async def test_member_view_lists_every_upcoming_expiry(conn: asyncpg.Connection) -> None:
    # Two lots expire on 1 April (30 days after 2 March), one on 31 March 2027 (a year
    # after 31 March 2026), one never; 20 points are spent from the soonest.
    await enrol(conn, "alice")
    await earn(conn, "e1", 30, at=T0, expiry=Rolling(days=30))
    await earn(conn, "e2", 45, at=T0, kind="earned", expiry=Rolling(days=30))
    await earn(conn, "e3", 70, at=datetime(2026, 3, 31, tzinfo=UTC), expiry=Rolling(days=365))
    await earn(conn, "e4", 500, at=T0)
    await redeem(conn, "r1", 20, at=T0 + DAY)
    view = await member_view(conn, "default", "alice")
    assert view.upcoming_expiries == [
        Expiry(currency="points", points=10 + 45, expires_at=T0 + 30 * DAY),
        Expiry(currency="points", points=70, expires_at=datetime(2027, 3, 31, tzinfo=UTC)),
    ]
    assert view.balances["points"] == Balance(available=580, earned=45, lifetime_earned=645)
