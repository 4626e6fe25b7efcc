"""``points_above`` on every change of the watched balance, whatever made it.

The watched balance is alice's available points in the program's first currency; the
app's flows watch 200 and 500. Router events are applied with `EventProcessor.apply` as
the router's batch applies them; journey steps through the toolkit's activities
(`activities.journeys.JourneyActivities`), adjustments as `loyalty adjust` applies them
and maturing as housekeeping runs it, all against real PostgreSQL. A crossing fires
once, with an id derived from its cause; any decrease, whatever made it, re-arms.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
from temporalio import workflow

from activities.journeys import JourneyActivities
from loyalty.app import LoyaltyApp, Program
from loyalty.events import (
    AnyEvent,
    PointsAbove,
    PointsDeposit,
    PointsWithdrawal,
    Purchase,
    Return,
    any_event_adapter,
)
from loyalty.flows import flow
from loyalty.ingest import derived
from loyalty.ingest.inbox import insert_events
from loyalty.ledger import adjust
from loyalty.ledger.housekeeping import mature_step, start_run
from loyalty.ledger.maturing import expire_due, mature_due
from loyalty.models import AwardPointsInput, RemovePointsInput
from loyalty.policies import Rolling
from loyalty.router.processing import EventProcessor
from loyalty.rules import PerAmount
from loyalty.store.db import Conn, prepare_database
from loyalty.triggers import PointsAbove as PointsAboveTrigger

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WAITING = timedelta(days=14)


@flow(trigger=PointsAboveTrigger(200))
@workflow.defn
class Above200:
    @workflow.run
    async def run(self, trigger: object) -> None:
        pass


@flow(trigger=PointsAboveTrigger(500), name="above-500")
@workflow.defn
class Above500:
    @workflow.run
    async def run(self, trigger: object) -> None:
        pass


SHOP = Program(
    name="default", earn_rules=(PerAmount(),), expiry={"points": Rolling(days=30)},
    earned_waiting_period=WAITING,
)  # fmt: skip
APP = LoyaltyApp(programs=[SHOP], flows=[Above200, Above500])
PROC = EventProcessor(APP)


async def apply(conn: Conn, event: AnyEvent) -> None:
    """Put the event in the inbox, then apply it in one transaction as the router does."""
    await insert_events(conn, [event])
    async with conn.transaction():
        await PROC.apply(conn, event)


async def deposit(
    conn: Conn, event_id: str, points: int, kind: str = "available", member: str = "alice"
) -> None:
    await apply(conn, PointsDeposit(
        event_id=event_id, member_id=member, points=points, kind=kind, reason="gift",
        occurred_at=T0,
    ))  # fmt: skip


def step(key: str, points: int, member: str = "alice") -> dict[str, object]:
    return {"program": "default", "member_id": member, "points": points, "reason": "bonus",
            "idempotency_key": key, "workflow_id": "journey/default/bonus/alice"}  # fmt: skip


async def crossings(conn: Conn) -> list[tuple[str, str, int, int, str | None]]:
    """(event_id, member, threshold, balance, cause) of every points_above, in order."""
    rows = await conn.fetch(
        """SELECT d.event_id, d.payload, c.event_id AS cause
           FROM events AS d LEFT JOIN events AS c ON c.id = d.caused_by
           WHERE d.type = 'points_above' ORDER BY d.id"""
    )
    found = []
    for row in rows:
        event = any_event_adapter.validate_python(row["payload"])
        assert isinstance(event, PointsAbove)
        assert event.event_id == row["event_id"]
        found.append(
            (event.event_id, event.member_id, event.threshold, event.balance, row["cause"])
        )
    return found


async def test_a_journey_award_that_crosses_fires_and_a_later_deposit_does_not(
    database_url: str, pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """The issue's case: 190 deposited, a journey awards 50 (240), then a deposit of 1."""
    await prepare_database(database_url, APP)
    journeys = JourneyActivities(pool, APP)
    await deposit(conn, "d1", 190)
    await journeys.award_points(AwardPointsInput(**step("journey:wf-1:bonus", 50)))
    await deposit(conn, "d2", 1)
    assert await crossings(conn) == [
        ("points_above:journey:wf-1:bonus:200", "alice", 200, 240, None)
    ]
    # The step retried (its key used already) derives nothing twice.
    again = await journeys.award_points(AwardPointsInput(**step("journey:wf-1:bonus", 50)))
    assert again.duplicate
    assert len(await crossings(conn)) == 1


async def test_a_journey_removal_re_arms_and_the_next_award_fires_again(
    database_url: str, pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await prepare_database(database_url, APP)
    journeys = JourneyActivities(pool, APP)
    await deposit(conn, "d1", 250)
    await journeys.remove_points(RemovePointsInput(**step("journey:wf-1:take", 100)))  # 150
    await journeys.award_points(AwardPointsInput(**step("journey:wf-1:give", 60)))  # 210
    assert [(c[0], c[3]) for c in await crossings(conn)] == [
        ("points_above:200:d1", 250),
        ("points_above:journey:wf-1:give:200", 210),
    ]


async def test_an_adjustment_that_crosses_fires_once_per_line_key(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await prepare_database(database_url, APP)
    await deposit(conn, "d1", 150)
    data = (
        b"member_id,points,kind,reason,id\n"
        b"alice,100,available,goodwill,fix-1\n"  # 250: crosses 200
        b"alice,-60,available,correction,fix-2\n"  # 190: re-armed
        b"alice,400,available,goodwill,fix-3\n"  # 590: crosses 200 and 500
    )
    parsed = adjust.parse(data, APP)
    now = T0 + timedelta(days=1)
    for _ in range(2):  # the same file twice: every line applies, and derives, once
        for line in parsed.adjustments:
            await adjust.apply_one(conn, APP, line, now, create_members=True)
    assert await crossings(conn) == [
        ("points_above:adjust:fix-1:200", "alice", 200, 250, None),
        ("points_above:adjust:fix-3:200", "alice", 200, 590, None),
        ("points_above:adjust:fix-3:500", "alice", 500, 590, None),
    ]


async def test_maturing_that_crosses_fires_per_member_in_the_maturing_statement(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await prepare_database(database_url, APP)
    await deposit(conn, "a1", 150)
    await deposit(conn, "a2", 100, kind="earned")  # alice: 150 → 250
    await deposit(conn, "b1", 100, kind="earned", member="bob")  # bob: 0 → 100
    await deposit(conn, "c1", 450, member="carol")  # carol: above 200 already
    await deposit(conn, "c2", 100, kind="earned", member="carol")  # 450 → 550
    assert len(await crossings(conn)) == 1  # carol's first deposit
    at = T0 + WAITING
    async with conn.transaction():
        run = await start_run(conn, "default", at)
        await mature_step(conn, APP, SHOP, run)
    iso = at.isoformat()
    assert (await crossings(conn))[1:] == [
        (f"points_above:mature:points:{iso}:alice:200", "alice", 200, 250, None),
        (f"points_above:mature:points:{iso}:carol:500", "carol", 500, 550, None),
    ]
    # The same cut-off again matures and derives nothing more.
    await mature_due(conn, "default", at, watch=derived.watch(APP, "default"))
    assert len(await crossings(conn)) == 3


async def test_expiry_re_arms_and_the_next_deposit_fires_again(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await prepare_database(database_url, APP)
    await deposit(conn, "d1", 250)
    await expire_due(conn, SHOP, T0 + timedelta(days=31))  # 250 → 0
    await deposit(conn, "d2", 201)
    assert [c[0] for c in await crossings(conn)] == ["points_above:200:d1", "points_above:200:d2"]


async def test_what_pays_off_debt_is_not_counted_until_the_debt_is_paid(
    database_url: str, conn: asyncpg.Connection
) -> None:
    """Debt: 100 EUR earned 100 points, all spent, then the order came back: 100 owed."""
    await prepare_database(database_url, APP)
    await apply(conn, Purchase(
        event_id="p1", member_id="alice", order_id="o1", amount=Decimal(100), currency="EUR",
        occurred_at=T0,
    ))  # fmt: skip
    await apply(conn, PointsWithdrawal(
        event_id="w1", member_id="alice", points=100, kind="available", reason="spent",
        occurred_at=T0,
    ))  # fmt: skip
    await apply(conn, Return(
        event_id="r1", member_id="alice", order_id="o1", amount=Decimal(100), occurred_at=T0
    ))  # fmt: skip
    await deposit(conn, "d1", 300)  # 100 pay the debt off: 200 available, not above 200
    await deposit(conn, "d2", 1)
    assert [(c[0], c[3]) for c in await crossings(conn)] == [("points_above:200:d2", 201)]


async def test_concurrent_writers_fire_once_per_crossing(
    database_url: str, pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    """Journey steps (on the pool's connections) and router deposits (on this one) give
    alice 10 points each, all at once: 0 → 600 crosses 200 and 500 exactly once each."""
    await prepare_database(database_url, APP)
    await deposit(conn, "d0", 10)
    journeys = JourneyActivities(pool, APP)

    async def deposits() -> None:
        for n in range(1, 20):
            await deposit(conn, f"d{n}", 10)

    await asyncio.gather(
        deposits(),
        *(journeys.award_points(AwardPointsInput(**step(f"journey:wf-1:s{n}", 10)))
          for n in range(40)),
    )  # fmt: skip
    found = await crossings(conn)
    assert [(c[2], c[3]) for c in found] == [(200, 210), (500, 510)]
    balance = await conn.fetchval(
        "SELECT balance FROM accounts WHERE member_id = 'alice' AND kind = 'available'"
    )
    assert balance == 600
