"""LoyaltyClient: validation before writing, atomic batches, waiting, member reads."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest

from loyalty.errors import EventConflict, InvalidEvent, UnknownMember
from loyalty.events import (
    NewStage,
    PointsDeposit,
    Purchase,
    any_event_adapter,
    differing_fields,
    parse_event,
)
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


# --- one event_id, one content --------------------------------------------------------------


async def test_a_reused_id_with_other_content_is_a_conflict_and_writes_nothing(
    client: LoyaltyClient, conn: asyncpg.Connection
) -> None:
    """The idempotency-key convention: the same (program, event_id) with another payload
    is refused, naming every conflicting id and the fields that differ; nothing of the
    batch is written, and the first version stays."""
    await client.emit_many([deposit("a"), deposit("b")])
    batch = [
        deposit("c"),
        {**deposit("a"), "points": 6},
        {**deposit("b"), "member_id": "m2", "reason": "other"},
    ]
    with pytest.raises(EventConflict) as caught:
        await client.emit_many(batch)
    assert isinstance(caught.value, InvalidEvent)
    assert caught.value.problems == [
        "a conflict: points",
        "b conflict: member_id, reason",
    ]
    assert [(c.program, c.event_id, c.fields) for c in caught.value.conflicts] == [
        ("default", "a", ["points"]),
        ("default", "b", ["member_id", "reason"]),
    ]
    rows = await conn.fetch("SELECT event_id, payload FROM events ORDER BY id")
    assert [(r["event_id"], r["payload"]["points"]) for r in rows] == [("a", 5), ("b", 5)]


async def test_one_id_twice_in_one_batch_with_other_content_is_a_conflict(
    client: LoyaltyClient, conn: asyncpg.Connection
) -> None:
    with pytest.raises(EventConflict, match="a conflict: points"):
        await client.emit_many([deposit("a"), {**deposit("a"), "points": 7}])
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_a_conflict_in_a_late_chunk_writes_no_chunk(
    client: LoyaltyClient, conn: asyncpg.Connection
) -> None:
    await client.emit(deposit("old"))
    events = [deposit(f"e{i}") for i in range(10)] + [{**deposit("old"), "kind": "earned"}]
    with pytest.raises(EventConflict, match="old conflict: kind"):
        await client.emit_many(events, chunk_size=3)
    assert await conn.fetchval("SELECT count(*) FROM events") == 1


async def test_identical_content_stays_a_duplicate(client: LoyaltyClient) -> None:
    """The same content, however it is written, is a duplicate: a retry without
    ``occurred_at`` (filled in with another time), an amount with a trailing zero, the
    same instant in another time zone, defaults given explicitly."""
    first = await client.emit(deposit("a"))
    await asyncio.sleep(0.01)  # a retry fills occurred_at with another "now"
    again = await client.emit(deposit("a"))
    explicit = await client.emit({**deposit("a"), "account": "points", "attributes": {}})
    assert (first.accepted, again.accepted, explicit.accepted) == (True, False, False)
    at = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    order = Purchase(
        event_id="p1", member_id="m1", order_id="o1", amount=Decimal("42.50"), currency="EUR",
        occurred_at=at, attributes={"channel": "app", "ratio": 0.5, "big": 1e300},
    )  # fmt: skip
    assert (await client.emit(order)).accepted
    same = {
        **order.model_dump(mode="json"),
        "amount": "42.5",
        "occurred_at": at.astimezone(timezone(timedelta(hours=2))).isoformat(),
    }
    assert not (await client.emit(same)).accepted
    # A sender that gave occurred_at once and omits it on the retry sent no other time.
    assert not (await client.emit({k: v for k, v in same.items() if k != "occurred_at"})).accepted


async def test_another_occurred_at_given_by_the_sender_is_a_conflict(
    client: LoyaltyClient,
) -> None:
    at = "2026-03-02T09:00:00Z"
    await client.emit({**deposit("a"), "occurred_at": at})
    with pytest.raises(EventConflict) as caught:
        await client.emit({**deposit("a"), "occurred_at": "2026-03-02T09:00:01Z"})
    assert caught.value.problems == ["a conflict: occurred_at"]
    with pytest.raises(EventConflict, match=r"^a conflict: attributes \(program coffee\)$"):
        await client.emit_many([
            {**deposit("a", program="coffee")},
            {**deposit("a", program="coffee"), "attributes": {"x": 1}},
        ])  # fmt: skip


async def test_the_python_api_refuses_floats_for_money_and_unstorable_text(
    client: LoyaltyClient, conn: asyncpg.Connection
) -> None:
    order = {"type": "purchase", "event_id": "p1", "member_id": "m1", "order_id": "o1",
             "amount": 12.3, "currency": "EUR"}  # fmt: skip
    login = {"type": "activity", "event_id": "l1", "member_id": "m1", "name": "web_login",
             "attributes": {"note": "\ud800"}}  # fmt: skip
    far = {**deposit("d1"), "occurred_at": datetime(9999, 12, 30, tzinfo=UTC)}
    with pytest.raises(InvalidEvent) as caught:
        await client.emit_many([order, login, far])
    assert caught.value.problems == [
        "event 0: amount: must be a Decimal or a string, not a float (floats are inexact)",
        "event 1: attributes: at note: must not contain lone surrogates (\\ud800-\\udfff)",
        "event 2: occurred_at: must not be more than 1 day in the future",
    ]
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_attributes_read_back_from_the_inbox_validate_as_they_did(
    client: LoyaltyClient, conn: asyncpg.Connection
) -> None:
    """jsonb writes numbers in full (1e300 comes back as a 301-digit integer): what was
    accepted still validates when the router reads it back, and the size limit counts
    numbers as jsonb writes them."""
    sent = {**deposit("a"), "attributes": {"big": 1e300, "small": -1.5e-300, "n": 10**300}}
    await client.emit(sent)
    payload = await conn.fetchval("SELECT payload FROM events")
    assert payload["attributes"]["big"] == 10**300
    event = any_event_adapter.validate_python(payload)
    assert differing_fields(event, parse_event(sent), occurred_at=False) == []
    tiny = {f"k{i}": 1e-300 for i in range(60)}
    with pytest.raises(InvalidEvent, match="event 0: attributes: serialized size is 18"):
        await client.emit({**deposit("b"), "attributes": tiny})
    assert await conn.fetchval("SELECT count(*) FROM events") == 1
