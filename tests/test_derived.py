"""Derived events: written to the inbox in the causing transaction, never lost, never doubled.

Events are put in the inbox (so that ``caused_by`` has a row to name) and applied with
`EventProcessor.apply` in a transaction, as the router's batch applies them. The app has
flows with ``PointsAbove(200)`` and ``PointsAbove(500)`` triggers; the member is alice.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from temporalio import workflow

from loyalty.app import LoyaltyApp, Program
from loyalty.errors import InsufficientPoints
from loyalty.events import (
    Activity,
    AnyEvent,
    PointsDeposit,
    PointsMatured,
    PointsWithdrawal,
    ReferralApproved,
    any_event_adapter,
)
from loyalty.flows import flow
from loyalty.ingest.derived import derived_id, listens, thresholds
from loyalty.ingest.inbox import fetch_outcomes, insert_events
from loyalty.ledger.maturing import mature_due
from loyalty.router.processing import EventProcessor
from loyalty.store.db import Conn
from loyalty.triggers import PointsAbove

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
WAITING = timedelta(days=14)


@flow(trigger=PointsAbove(200))
@workflow.defn
class Above200:
    @workflow.run
    async def run(self, trigger: object) -> None:
        pass


@flow(trigger=PointsAbove(500), name="above-500")
@workflow.defn
class Above500:
    @workflow.run
    async def run(self, trigger: object) -> None:
        pass


APP = LoyaltyApp(programs=[Program(name="default")], flows=[Above200, Above500])
PROC = EventProcessor(APP)


def deposit(event_id: str, points: int, member: str = "alice", **extra: Any) -> PointsDeposit:
    return PointsDeposit(
        event_id=event_id, member_id=member, points=points, reason="gift", occurred_at=T0,
        **{"kind": "available", **extra},
    )  # fmt: skip


def withdrawal(event_id: str, points: int) -> PointsWithdrawal:
    return PointsWithdrawal(
        event_id=event_id, member_id="alice", points=points, kind="available", reason="spent",
        occurred_at=T0,
    )  # fmt: skip


async def emit_and_apply(conn: Conn, event: AnyEvent, proc: EventProcessor = PROC) -> str:
    """Put the event in the inbox, then apply it in one transaction as the router does."""
    await insert_events(conn, [event])
    async with conn.transaction():
        return await proc.apply(conn, event)


async def derived_rows(conn: Conn, type_: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        """SELECT d.event_id, d.member_id, d.payload, d.status, c.event_id AS cause
           FROM events AS d LEFT JOIN events AS c ON c.id = d.caused_by
           WHERE d.type = $1 ORDER BY d.id""",
        type_,
    )


async def test_crossing_200_fires_once_with_threshold_balance_and_cause(
    conn: asyncpg.Connection,
) -> None:
    await emit_and_apply(conn, deposit("d1", 150))
    assert await derived_rows(conn, "points_above") == []
    # 150 → 250 crosses 200.
    assert await emit_and_apply(conn, deposit("d2", 100)) == "applied"
    rows = await derived_rows(conn, "points_above")
    assert [(r["event_id"], r["member_id"], r["status"], r["cause"]) for r in rows] == [
        ("points_above:200:d2", "alice", "pending", "d2")
    ]
    event = any_event_adapter.validate_python(rows[0]["payload"])
    assert event == any_event_adapter.validate_python(
        {"type": "points_above", "event_id": "points_above:200:d2", "member_id": "alice",
         "occurred_at": T0.isoformat(), "threshold": 200, "balance": 250}
    )  # fmt: skip
    # Staying above 200 (250 → 300) fires nothing more.
    await emit_and_apply(conn, deposit("d3", 50))
    assert len(await derived_rows(conn, "points_above")) == 1


async def test_falling_back_re_arms_and_a_second_crossing_fires_a_distinct_event(
    conn: asyncpg.Connection,
) -> None:
    await emit_and_apply(conn, deposit("d1", 250))
    # 250 → 200: exactly the threshold is "not above": re-armed, nothing fires.
    await emit_and_apply(conn, withdrawal("w1", 50))
    await emit_and_apply(conn, deposit("d2", 1))
    rows = await derived_rows(conn, "points_above")
    assert [(r["event_id"], r["payload"]["balance"]) for r in rows] == [
        ("points_above:200:d1", 250),
        ("points_above:200:d2", 201),
    ]


async def test_reapplying_the_causing_event_does_not_double(conn: asyncpg.Connection) -> None:
    event = deposit("d1", 300)
    await insert_events(conn, [event])
    # A batch applied, then rolled back (the router redoes it carefully)...
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await PROC.apply(conn, event)
            assert len(await derived_rows(conn, "points_above")) == 1
            raise RuntimeError("batch rolled back")
    # ...leaves no derived event, since they share the transaction.
    assert await derived_rows(conn, "points_above") == []
    async with conn.transaction():
        await PROC.apply(conn, event)
    # The same event applied again (the ledger key makes it a repeat): still one.
    async with conn.transaction():
        await PROC.apply(conn, event)
    rows = await derived_rows(conn, "points_above")
    assert [r["event_id"] for r in rows] == ["points_above:200:d1"]
    assert await conn.fetchval("SELECT count(*) FROM events") == 2


async def test_one_award_crossing_several_thresholds_fires_one_event_each(
    conn: asyncpg.Connection,
) -> None:
    await emit_and_apply(conn, deposit("d1", 600))
    rows = await derived_rows(conn, "points_above")
    assert [(r["payload"]["threshold"], r["payload"]["balance"]) for r in rows] == [
        (200, 600),
        (500, 600),
    ]


async def test_no_threshold_means_no_balance_reads_and_no_event(
    conn: asyncpg.Connection,
) -> None:
    plain = EventProcessor(LoyaltyApp(programs=[Program(name="default")]))
    assert thresholds(plain.app, "default") == ()
    await emit_and_apply(conn, deposit("d1", 600), plain)
    assert await derived_rows(conn, "points_above") == []


async def test_a_refused_event_derives_nothing(conn: asyncpg.Connection) -> None:
    await emit_and_apply(conn, deposit("d1", 100))
    with pytest.raises(InsufficientPoints):
        await emit_and_apply(conn, withdrawal("w1", 500))
    assert await derived_rows(conn, "points_above") == []


async def test_referral_approved_derives_referral_friend_approved_for_the_referrer(
    conn: asyncpg.Connection,
) -> None:
    approved = ReferralApproved(
        event_id="ra1", member_id="bob", referrer_id="alice", occurred_at=T0
    )
    assert await emit_and_apply(conn, approved) == "no_effect"
    rows = await derived_rows(conn, "referral_friend_approved")
    assert [(r["event_id"], r["member_id"], r["cause"]) for r in rows] == [
        ("referral_friend_approved:ra1", "alice", "ra1")
    ]
    event = any_event_adapter.validate_python(rows[0]["payload"])
    assert event.type == "referral_friend_approved"
    assert event.friend_id == "bob"
    assert event.occurred_at == T0
    # Delivered twice, derived once; the derived event itself derives nothing.
    await emit_and_apply(conn, approved)
    async with conn.transaction():
        assert await PROC.apply(conn, event) == "no_effect"
    assert len(await derived_rows(conn, "referral_friend_approved")) == 1


async def test_a_client_event_cannot_take_the_id_of_an_engine_event(
    conn: asyncpg.Connection,
) -> None:
    """Client events and derived events have separate id spaces: a client event that has
    the id the engine will derive suppresses nothing, and is not suppressed either."""
    squatter = Activity(
        event_id="points_above:200:d1", member_id="mallory", name="noop", occurred_at=T0
    )
    assert [r.accepted for r in await insert_events(conn, [squatter])] == [True]
    await emit_and_apply(conn, deposit("d1", 600))
    rows = await derived_rows(conn, "points_above")
    assert [(r["event_id"], r["member_id"], r["cause"]) for r in rows] == [
        ("points_above:200:d1", "alice", "d1"),
        ("points_above:500:d1", "alice", "d1"),
    ]
    # The other way round: the id of an engine event is free for a client event.
    late = squatter.model_copy(update={"event_id": "points_above:500:d1"})
    assert [r.accepted for r in await insert_events(conn, [late])] == [True]
    assert await conn.fetchval("SELECT count(*) FROM events") == 5
    # Outcomes read by a client's (program, event_id) are its own events'.
    await conn.execute(
        """UPDATE events SET status = 'rejected', outcome = 'test', processed_at = now()
           WHERE type = 'activity'"""
    )
    keys = [("default", "points_above:200:d1"), ("default", "points_above:500:d1")]
    assert {k: o.status for k, o in (await fetch_outcomes(conn, keys)).items()} == {
        keys[0]: "rejected",
        keys[1]: "rejected",
    }


def test_long_ids_are_hashed_deterministically() -> None:
    long_id = "x" * 128
    first = derived_id("points_above", 200, long_id)
    assert len(first) <= 128
    assert first == derived_id("points_above", 200, long_id)
    assert first != derived_id("points_above", 500, long_id)
    assert derived_id("points_above", 200, "d1") == "points_above:200:d1"


async def earned(conn: Conn, event_id: str, member: str, points: int) -> None:
    await emit_and_apply(conn, deposit(event_id, points, member, kind="earned"))


async def test_mature_due_derives_points_matured_per_member_when_enabled(
    conn: asyncpg.Connection,
) -> None:
    await earned(conn, "e1", "alice", 30)
    await earned(conn, "e2", "alice", 20)
    await earned(conn, "e3", "bob", 70)
    at = T0 + WAITING
    done = await mature_due(conn, "default", at, derive_events=True)
    assert (done.lots, done.points) == (3, 120)
    rows = await derived_rows(conn, "points_matured")
    assert [(r["event_id"], r["member_id"], r["cause"]) for r in rows] == [
        (f"points_matured:points:{at.isoformat()}:alice", "alice", None),
        (f"points_matured:points:{at.isoformat()}:bob", "bob", None),
    ]
    # The payload is what inbox.insert_events writes for the model.
    events = [any_event_adapter.validate_python(r["payload"]) for r in rows]
    assert events[0] == PointsMatured(
        event_id=f"points_matured:points:{at.isoformat()}:alice", member_id="alice",
        occurred_at=at, points=50, account="points",
    )  # fmt: skip
    assert isinstance(events[1], PointsMatured)
    assert events[1].points == 70
    # Running again with the same cut-off changes nothing.
    await mature_due(conn, "default", at, derive_events=True)
    assert len(await derived_rows(conn, "points_matured")) == 2


async def test_mature_due_derives_nothing_by_default(conn: asyncpg.Connection) -> None:
    await earned(conn, "e1", "alice", 30)
    done = await mature_due(conn, "default", T0 + WAITING)
    assert done.points == 30
    assert await derived_rows(conn, "points_matured") == []


async def test_points_matured_ids_of_long_member_ids_are_hashed(
    conn: asyncpg.Connection,
) -> None:
    member = "m" * 128
    await earned(conn, "e1", member, 30)
    at = T0 + WAITING
    await mature_due(conn, "default", at, derive_events=True)
    rows = await derived_rows(conn, "points_matured")
    assert [r["event_id"] for r in rows] == [
        derived_id("points_matured", "points", at.isoformat(), member)
    ]


async def test_a_rolled_back_maturing_leaves_no_derived_event(conn: asyncpg.Connection) -> None:
    await earned(conn, "e1", "alice", 30)
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await mature_due(conn, "default", T0 + WAITING, derive_events=True)
            raise RuntimeError("rolled back")
    assert await derived_rows(conn, "points_matured") == []


def test_listens_finds_flows_by_event_type_and_program() -> None:
    assert listens(APP, "points_above", "default")
    assert not listens(APP, "points_matured", "default")
