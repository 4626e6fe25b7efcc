"""LoyaltyClient: validation before writing, atomic batches, waiting, member reads."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from loyalty.errors import InvalidEvent, UnknownMember
from loyalty.events import NewStage, PointsDeposit
from starter.client import LoyaltyClient


def deposit(event_id: str, program: str = "default") -> dict[str, object]:
    return {
        "type": "points_deposit",
        "event_id": event_id,
        "member_id": "m1",
        "points": 5,
        "kind": "available",
        "reason": "r",
        "program": program,
    }


async def test_emit_many_validates_everything_before_writing(
    client: LoyaltyClient, conn: asyncpg.Connection
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        await client.emit_many([deposit("a"), {**deposit("b"), "points": 0}, deposit("c")])
    assert caught.value.problems == ["event 1: points: Input should be greater than 0"]
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_unknown_program_rejects_the_whole_call(
    client: LoyaltyClient, conn: asyncpg.Connection
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        await client.emit_many([deposit("a"), deposit("b", program="tea")])
    assert caught.value.problems[0].startswith("program: unknown program 'tea'; known:")
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_duplicates_within_and_across_calls(
    client: LoyaltyClient, conn: asyncpg.Connection
) -> None:
    first = await client.emit_many([deposit("a"), deposit("a"), deposit("b")])
    assert [r.accepted for r in first] == [True, False, True]
    again = await client.emit(PointsDeposit.model_validate(deposit("b")))
    assert not again.accepted
    assert await conn.fetchval("SELECT count(*) FROM events") == 2


async def test_accepted_events_are_durable_and_notify(
    client: LoyaltyClient, conn: asyncpg.Connection
) -> None:
    heard: list[str] = []
    await conn.add_listener("loyalty_inbox", lambda *args: heard.append(args[3]))
    await client.emit_many([deposit("a"), deposit("b", program="coffee")])
    rows = await conn.fetch("SELECT program, event_id, status, payload FROM events ORDER BY id")
    assert [(r["program"], r["event_id"], r["status"]) for r in rows] == [
        ("default", "a", "pending"),
        ("coffee", "b", "pending"),
    ]
    assert rows[0]["payload"]["points"] == 5
    async with asyncio.timeout(10):
        while len(heard) < 2:
            await asyncio.sleep(0.01)
    assert sorted(heard) == ["coffee", "default"]


async def test_wait_times_out_without_a_worker(client: LoyaltyClient) -> None:
    results = await client.emit_many([deposit("a")])
    with pytest.raises(TimeoutError):
        await client.wait(results, timeout=1.5)


async def test_unknown_member_is_an_error(client: LoyaltyClient) -> None:
    with pytest.raises(UnknownMember, match="member 'nobody' is unknown in program 'default'"):
        await client.member("nobody")


async def test_derived_event_objects_cannot_be_emitted(
    client: LoyaltyClient, conn: asyncpg.Connection
) -> None:
    stage = NewStage(
        event_id="s1", member_id="m1", from_tier=None, to_tier="gold", direction="up", cause="earn"
    )
    with pytest.raises(InvalidEvent) as caught:
        await client.emit(stage)
    assert caught.value.problems == [
        "event 0: type: 'new_stage' is derived by the engine and cannot be emitted"
    ]
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_unknown_program_in_a_late_chunk_writes_no_chunk(
    client: LoyaltyClient, conn: asyncpg.Connection
) -> None:
    events = [deposit(f"e{i}") for i in range(10)] + [deposit("late", program="tea")]
    with pytest.raises(InvalidEvent, match="unknown program 'tea'"):
        await client.emit_many(events, chunk_size=3)
    assert await conn.fetchval("SELECT count(*) FROM events") == 0
    results = await client.emit_many(events[:10], chunk_size=3)
    assert [r.accepted for r in results] == [True] * 10
