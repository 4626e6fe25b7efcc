"""Purchases, returns and refusals through the router: events in, ledger out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg

from loyalty import ledger
from loyalty.app import LoyaltyApp, Program
from loyalty.policies import Rolling
from starter.client import LoyaltyClient
from tests.conftest import StartWorker

APP = LoyaltyApp(
    programs=[
        Program(name="default", expiry={"points": Rolling(days=365)}),
        Program(name="coffee", return_policy="forgive"),
    ]
)


def deposit(event_id: str, member: str, points: int, **extra: object) -> dict[str, object]:
    return {"type": "points_deposit", "event_id": event_id, "member_id": member,
            "points": points, "kind": "available", "reason": "welcome", **extra}  # fmt: skip


async def test_purchase_paid_with_points_spends_them_and_records_the_order(
    client: LoyaltyClient, start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    await start_worker(app=APP)
    results = await client.emit_many([
        deposit("d1", "m1", 100),
        {"type": "purchase", "event_id": "p1", "member_id": "m1", "order_id": "o1",
         "amount": "42.50", "currency": "EUR", "points_redeemed": 30},
    ])  # fmt: skip
    outcomes = await client.wait(results, timeout=30)
    assert [o.describe() for o in outcomes] == ["applied", "applied"]
    member = await client.member("m1")
    assert member.balances["points"].available == 70
    assert member.entries[0].reason == "paid on order o1"
    order = await conn.fetchrow("SELECT member_id, amount, money_currency FROM orders")
    assert tuple(order.values()) == ("m1", Decimal("42.5000"), "EUR")


async def test_deposit_expires_by_the_programs_policy(
    client: LoyaltyClient, start_worker: StartWorker
) -> None:
    await start_worker(app=APP)
    at = datetime(2026, 3, 1, 12, tzinfo=UTC)
    outcomes = await client.wait(
        await client.emit_many([deposit("d1", "m1", 100, occurred_at=at.isoformat())]),
        timeout=30,
    )
    assert outcomes[0].describe() == "applied"
    member = await client.member("m1")
    assert [(x.points, x.expires_at) for x in member.upcoming_expiries] == [
        (100, at + timedelta(days=365))
    ]


async def test_return_claws_back_the_orders_points_by_policy(
    client: LoyaltyClient, start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    await start_worker(app=APP)
    purchases = await client.emit_many([
        {"type": "purchase", "event_id": f"p-{p}", "member_id": "m1", "order_id": "o1",
         "amount": "100", "currency": "EUR", "program": p}
        for p in ("default", "coffee")
    ])  # fmt: skip
    await client.wait(purchases, timeout=30)
    # What an earn rule will do for the purchase: 120 points linked to the order.
    for program in ("default", "coffee"):
        async with conn.transaction():
            await ledger.award(
                conn, program=program, member_id="m1", points=120, kind="available",
                currency="points", reason="order o1", source="test", key=f"earn-{program}",
                occurred_at=datetime.now(UTC), available_at=datetime.now(UTC), order_id="o1",
            )  # fmt: skip
    spends = await client.emit_many([
        {"type": "points_withdrawal", "event_id": f"w-{p}", "member_id": "m1", "points": 100,
         "kind": "available", "reason": "gift", "program": p}
        for p in ("default", "coffee")
    ])  # fmt: skip
    await client.wait(spends, timeout=30)
    returns = await client.emit_many([
        {"type": "return", "event_id": f"r-{p}", "member_id": "m1", "order_id": "o1",
         "amount": "50", "program": p}
        for p in ("default", "coffee")
    ])  # fmt: skip
    outcomes = await client.wait(returns, timeout=30)
    assert [o.describe() for o in outcomes] == ["applied", "applied"]
    # Half the order: 60 points; 20 were left, 40 were spent.
    debt_side = await client.member("m1")
    assert (debt_side.balances["points"].available, debt_side.balances["points"].debt) == (0, 40)
    forgiving = await client.member("m1", "coffee")
    assert (forgiving.balances["points"].available, forgiving.balances["points"].debt) == (0, 0)
    rows = await conn.fetch(
        "SELECT program, points, from_available, to_debt, forgiven FROM order_clawbacks "
        "ORDER BY program"
    )
    assert [tuple(r.values()) for r in rows] == [
        ("coffee", 60, 20, 0, 40),
        ("default", 60, 20, 40, 0),
    ]


async def test_refusals_name_their_reason_and_write_nothing(
    client: LoyaltyClient, start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    await start_worker(app=APP)
    results = await client.emit_many([
        {"type": "points_withdrawal", "event_id": "w1", "member_id": "ghost", "points": 5,
         "kind": "available", "reason": "x"},
        {"type": "return", "event_id": "r1", "member_id": "m1", "order_id": "nope",
         "amount": "5"},
        deposit("d1", "m1", 10, account="gems"),
        {"type": "purchase", "event_id": "p1", "member_id": "m2", "order_id": "o2",
         "amount": "10", "currency": "EUR"},
        {"type": "return", "event_id": "r2", "member_id": "m2", "order_id": "o2",
         "amount": "11"},
    ])  # fmt: skip
    outcomes = await client.wait(results, timeout=30)
    assert [(o.status, o.outcome) for o in outcomes] == [
        ("rejected", "unknown_member"),
        ("rejected", "unknown_order"),
        ("rejected", "unknown_currency"),
        ("processed", "applied"),
        ("rejected", "return_exceeds_order"),
    ]
    assert "was 10.0000, 0.0000 already returned, cannot return 11" in (outcomes[4].detail or "")
    # The refused events enrolled nobody and moved no points.
    members = await conn.fetch("SELECT member_id FROM members ORDER BY member_id")
    assert [r["member_id"] for r in members] == ["m2"]
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 0
