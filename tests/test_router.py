"""The event router end to end: real PostgreSQL inbox, real Temporal dev server."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from activities.router import linger_seconds
from loyalty.events import PointsDeposit, PointsWithdrawal
from starter.client import LoyaltyClient
from tests.conftest import StartWorker


def deposit(event_id: str, member: str, points: int, program: str = "default") -> PointsDeposit:
    return PointsDeposit(
        event_id=event_id,
        member_id=member,
        points=points,
        kind="available",
        reason="test",
        program=program,
    )


def withdrawal(event_id: str, member: str, points: int) -> PointsWithdrawal:
    return PointsWithdrawal(
        event_id=event_id, member_id=member, points=points, kind="available", reason="test"
    )


async def test_deposit_is_applied_and_woken_by_notify(
    client: LoyaltyClient, start_worker: StartWorker
) -> None:
    # The routers' idle poll is an hour: once the router is idle, only NOTIFY can wake it.
    await start_worker()
    first = await client.wait(await client.emit_many([deposit("e0", "m1", 1)]), timeout=30)
    assert [o.describe() for o in first] == ["applied"]
    await asyncio.sleep(0.5)
    results = await client.emit_many([deposit("e1", "m1", 119)])
    outcomes = await client.wait(results, timeout=30)
    assert [o.describe() for o in outcomes] == ["applied"]
    member = await client.member("m1")
    assert member.balances["points"].available == 120
    assert [(e.points, e.source) for e in member.entries] == [(119, "event:e1"), (1, "event:e0")]


async def test_duplicate_event_is_applied_once(
    client: LoyaltyClient, start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    await start_worker()
    first = await client.emit(deposit("e1", "m1", 120))
    again = await client.emit(deposit("e1", "m1", 120))
    assert (first.accepted, again.accepted) == (True, False)
    outcomes = await client.wait([first, again], timeout=30)
    assert [o.describe() for o in outcomes] == ["applied", "duplicate"]
    assert (await client.member("m1")).balances["points"].available == 120
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 1


async def test_batches_across_partitions_apply_every_event_once(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
) -> None:
    await start_worker(LOYALTY_ROUTER_PARTITIONS=3, LOYALTY_ROUTER_BATCH_SIZE=50)
    events = [deposit(f"e{i}", f"m{i % 40}", 1 + i % 7) for i in range(1200)]
    results = await client.emit_many(events)
    outcomes = await client.wait(results, timeout=60)
    assert {o.status for o in outcomes} == {"processed"}
    expected: dict[str, int] = {}
    for e in events:
        expected[e.member_id] = expected.get(e.member_id, 0) + e.points
    balances = await conn.fetch(
        "SELECT member_id, balance FROM accounts WHERE member_id IS NOT NULL"
    )
    assert {r["member_id"]: r["balance"] for r in balances} == expected
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 1200
    # A batch is one transaction of one partition: its events share processed_at (the
    # transaction's now()). Two partitions can start a batch in the same microsecond.
    batches = await conn.fetch(
        """SELECT processed_at, member_hash % 3, count(*) AS n FROM events
           GROUP BY processed_at, member_hash % 3"""
    )
    sizes = [r["n"] for r in batches]
    assert max(sizes) <= 50
    assert max(sizes) > 1
    assert len(sizes) >= 1200 // 50


async def test_each_members_events_apply_in_order(
    client: LoyaltyClient, start_worker: StartWorker
) -> None:
    await start_worker(LOYALTY_ROUTER_PARTITIONS=2, LOYALTY_ROUTER_BATCH_SIZE=7)
    # Every withdrawal takes exactly what the deposit before it gave: out of order, one
    # would find an empty balance and be rejected.
    events: list[PointsDeposit | PointsWithdrawal] = []
    for member in range(10):
        for step in range(20):
            events.append(deposit(f"d-{member}-{step}", f"m{member}", 10 + step))
            events.append(withdrawal(f"w-{member}-{step}", f"m{member}", 10 + step))
    outcomes = await client.wait(await client.emit_many(events), timeout=60)
    assert [o.describe() for o in outcomes] == ["applied"] * len(events)
    for member in range(10):
        assert (await client.member(f"m{member}")).balances["points"].available == 0


async def test_refused_withdrawal_is_rejected_with_reason_and_not_retried(
    client: LoyaltyClient, start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    await start_worker()
    results = await client.emit_many([deposit("e1", "m1", 50), withdrawal("e2", "m1", 80)])
    outcomes = await client.wait(results, timeout=30)
    assert outcomes[0].describe() == "applied"
    assert outcomes[1].status == "rejected"
    assert outcomes[1].outcome == "insufficient_points"
    assert "has 50 available points, cannot remove 80" in (outcomes[1].detail or "")
    row = await conn.fetchrow("SELECT attempts, status FROM events WHERE event_id = 'e2'")
    assert (row["attempts"], row["status"]) == (1, "rejected")
    assert (await client.member("m1")).balances["points"].available == 50


async def test_unhandled_types_are_processed_without_effect(
    client: LoyaltyClient, start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    await start_worker()
    results = await client.emit_many(
        [
            {"type": "activity", "event_id": "a1", "member_id": "m1", "name": "web_login"},
            {"type": "referral", "event_id": "r1", "member_id": "m1", "friend_id": "m2"},
            {
                "type": "member_updated",
                "event_id": "u1",
                "member_id": "m1",
                "profile": {"name": "Ada", "email": "ada@example.com"},
            },
        ]
    )
    outcomes = await client.wait(results, timeout=30)
    assert [o.describe() for o in outcomes] == ["no_effect", "no_effect", "applied"]
    assert await conn.fetchval("SELECT count(*) FROM events WHERE status = 'pending'") == 0
    member = await client.member("m1")
    assert member.profile == {"name": "Ada", "email": "ada@example.com"}
    erased = await client.emit({"type": "member_deleted", "event_id": "x1", "member_id": "m1"})
    await client.wait([erased], timeout=30)
    assert (await client.member("m1")).profile == {}


async def test_poisoned_event_is_dead_lettered_and_does_not_block_others(
    client: LoyaltyClient, start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    # The database refuses every ledger write for member "poison": its events fail on
    # every attempt, like an event that hits a bug.
    await conn.execute(
        """CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
               IF NEW.member_id = 'poison' THEN RAISE EXCEPTION 'poisoned write'; END IF;
               RETURN NEW;
           END $$;
           CREATE TRIGGER refuse_poison BEFORE INSERT ON ledger_transactions
               FOR EACH ROW EXECUTE FUNCTION refuse_poison();"""
    )
    await start_worker(LOYALTY_EVENT_MAX_ATTEMPTS=3)
    results = await client.emit_many(
        [deposit("p1", "poison", 10)] + [deposit(f"e{i}", "m1", 1) for i in range(20)]
    )
    outcomes = await client.wait(results, timeout=60)
    assert outcomes[0].status == "dead"
    assert "poisoned write" in (outcomes[0].detail or "")
    assert {o.describe() for o in outcomes[1:]} == {"applied"}
    assert (await client.member("m1")).balances["points"].available == 20
    failed = await client.failed_events()
    assert [(f.event_id, f.attempts) for f in failed] == [("p1", 3)]


async def test_events_for_two_programs_go_to_their_own_routers(
    client: LoyaltyClient, start_worker: StartWorker
) -> None:
    await start_worker()
    results = await client.emit_many(
        [deposit("e1", "m1", 5), deposit("e1", "m1", 7, program="coffee")]
    )
    outcomes = await client.wait(results, timeout=30)
    assert [o.describe() for o in outcomes] == ["applied", "applied"]
    assert (await client.member("m1")).balances["points"].available == 5
    assert (await client.member("m1", "coffee")).balances["points"].available == 7


async def test_events_sent_one_by_one_are_applied_together_after_the_linger(
    client: LoyaltyClient, start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    """While events flow, a trickle of single emits is claimed once the linger is over,
    in one batch, not one transaction per event."""
    await start_worker(LOYALTY_ROUTER_LINGER_SECONDS=1)
    warm = await client.emit(deposit("w0", "m0", 1))
    await client.wait([warm], timeout=30)
    before = await conn.fetchval("SELECT sum(batches) FROM router_totals")
    # Sent right after the first batch: the router lingers a second before it claims.
    sent = [await client.emit(deposit(f"e{i}", f"m{i}", 10)) for i in range(5)]
    outcomes = await client.wait(sent, timeout=30)
    assert [o.describe() for o in outcomes] == ["applied"] * 5
    assert await conn.fetchval("SELECT sum(batches) FROM router_totals") == before + 1


@pytest.mark.parametrize(
    ("gather", "since_last_batch", "expected"),
    [(True, 0.2, 0.05), (True, 5.0, 0.0), (False, 0.2, 0.0), (True, float("inf"), 0.0)],
)
def test_the_router_lingers_only_while_events_flow(
    gather: bool, since_last_batch: float, expected: float
) -> None:
    """After a part batch or a wake-up while batches come often, the router waits for
    more; after a quiet spell (or at a session's start) a lone event is claimed at once."""
    assert linger_seconds(0.05, gather, since_last_batch) == expected
