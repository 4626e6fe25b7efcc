"""Tier maintenance as worked examples: demotion, grace, policies, chunks, concurrency.

The coffee program's scheme: bronze (0), silver (30, retain 20), gold (60, retain 50)
over a rolling 365 days; 1 point per EUR. Members reach their tier by purchases applied
as the router applies them; maintenance runs at fixed times.
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from loyalty.app import LoyaltyApp, Program
from loyalty.events import Purchase
from loyalty.ingest.inbox import insert_events
from loyalty.ledger.members import member_view
from loyalty.router.processing import EventProcessor
from loyalty.rules import PerAmount
from loyalty.store.db import Conn, connect, prepare_database
from loyalty.tiers import Schedule, Tier, TierScheme
from loyalty.tiers.maintenance import history, run_chunk, run_maintenance, start_run
from loyalty.tiers.status import next_anniversary

T0 = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TIERS = (
    Tier(name="bronze", threshold=0),
    Tier(name="silver", threshold=30, retain=20),
    Tier(name="gold", threshold=60, retain=50),
)


def coffee(**scheme: Any) -> Program:
    scheme.setdefault("window", timedelta(days=365))
    return Program(
        name="coffee", earn_rules=(PerAmount(),),
        tier_schemes=(TierScheme(tiers=TIERS, **scheme),),
    )  # fmt: skip


async def setup(database_url: str, program: Program) -> EventProcessor:
    app = LoyaltyApp(programs=[program])
    await prepare_database(database_url, app)
    return EventProcessor(app)


async def buy(conn: Conn, proc: EventProcessor, member: str, amount: int, at: datetime) -> None:
    event = Purchase(
        event_id=f"{member}-{at.isoformat()}-{amount}", member_id=member, program="coffee",
        order_id=f"o-{member}-{at.isoformat()}-{amount}", amount=Decimal(amount),
        currency="EUR", occurred_at=at,
    )  # fmt: skip
    await insert_events(conn, [event])
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO members (program, member_id) VALUES ('coffee', $1) ON CONFLICT DO NOTHING",
            member,
        )
        await proc.apply(conn, event)


async def tiers(conn: Conn) -> dict[str, str]:
    rows = await conn.fetch(
        """SELECT m.member_id, coalesce(t.tier, m.tier) AS tier FROM members AS m
           LEFT JOIN member_tiers AS t ON t.program = m.program AND t.member_id = m.member_id
           ORDER BY m.member_id"""
    )
    return {r["member_id"]: r["tier"] for r in rows}


async def moves(conn: Conn, cause: str | None = None) -> list[tuple[str, str, str, str]]:
    rows = await conn.fetch(
        """SELECT member_id, payload->>'from_tier' AS f, payload->>'to_tier' AS t,
                  payload->>'cause' AS c
           FROM events WHERE type = 'new_stage' ORDER BY id"""
    )
    return [(r["member_id"], r["f"], r["t"], r["c"]) for r in rows if cause in (None, r["c"])]


async def test_a_quiet_year_demotes_to_the_highest_tier_still_met(
    conn: asyncpg.Connection, database_url: str
) -> None:
    program = coffee()
    proc = await setup(database_url, program)
    await buy(conn, proc, "ann", 70, T0)  # gold
    await buy(conn, proc, "bob", 70, T0)  # gold
    await buy(conn, proc, "bob", 25, T0 + 200 * DAY)  # still 25 in the window a year on
    run = await run_maintenance(conn, program, program.tier_schemes[0], T0 + 100 * DAY)
    assert (run.scanned, run.promoted, run.demoted) == (2, 0, 0)
    run = await run_maintenance(conn, program, program.tier_schemes[0], T0 + 366 * DAY)
    assert (run.scanned, run.promoted, run.demoted, run.in_grace) == (2, 0, 2, 0)
    # ann: 0 points left, bronze; bob: 25 ≥ silver's retain 20, silver.
    assert await tiers(conn) == {"ann": "bronze", "bob": "silver"}
    assert await moves(conn, "maintenance") == [
        ("ann", "gold", "bronze", "maintenance"), ("bob", "gold", "silver", "maintenance")
    ]  # fmt: skip
    event_id = await conn.fetchval(
        "SELECT event_id FROM events WHERE type = 'new_stage' AND member_id = 'ann'"
        " AND payload->>'cause' = 'maintenance'"
    )
    assert event_id == f"new_stage:main:bronze:maintenance:{(T0 + 366 * DAY).isoformat()}:ann"
    assert await conn.fetchval("SELECT tier FROM members WHERE member_id = 'ann'") == "bronze"


async def test_one_down_policy_demotes_one_tier(
    conn: asyncpg.Connection, database_url: str
) -> None:
    program = coffee(demotion="one_down")
    proc = await setup(database_url, program)
    await buy(conn, proc, "ann", 70, T0)
    await run_maintenance(conn, program, program.tier_schemes[0], T0 + 366 * DAY)
    assert await tiers(conn) == {"ann": "silver"}
    # Still below silver's retain: the next run takes one more step.
    await run_maintenance(conn, program, program.tier_schemes[0], T0 + 367 * DAY)
    assert await tiers(conn) == {"ann": "bronze"}


async def test_the_grace_period_delays_demotion_and_earning_back_ends_it(
    conn: asyncpg.Connection, database_url: str
) -> None:
    program = coffee(grace_period=30 * DAY)
    scheme = program.tier_schemes[0]
    proc = await setup(database_url, program)
    await buy(conn, proc, "ann", 70, T0)
    await buy(conn, proc, "bob", 70, T0)
    first = await run_maintenance(conn, program, scheme, T0 + 366 * DAY)
    assert (first.demoted, first.in_grace) == (0, 2)
    below = await conn.fetchval("SELECT below_since FROM member_tiers WHERE member_id = 'ann'")
    assert below == T0 + 366 * DAY
    # The member view tells when the grace ends and when the next review is (daily).
    status = (await member_view(conn, "coffee", "ann")).tiers[0]
    assert (status.tier, status.grace_until, status.reviewed_at) == (
        "gold",
        T0 + 396 * DAY,
        T0 + 367 * DAY,
    )
    # bob earns back over gold's retain during his grace: it ends.
    await buy(conn, proc, "bob", 55, T0 + 370 * DAY)
    mid = await run_maintenance(conn, program, scheme, T0 + 380 * DAY)
    assert (mid.demoted, mid.in_grace) == (0, 0)
    assert (
        await conn.fetchval("SELECT below_since FROM member_tiers WHERE member_id = 'bob'") is None
    )
    last = await run_maintenance(conn, program, scheme, T0 + 396 * DAY)
    assert (last.demoted, last.in_grace) == (1, 0)
    assert await tiers(conn) == {"ann": "bronze", "bob": "gold"}


async def test_maintenance_promotes_members_whose_promotion_was_missed(
    conn: asyncpg.Connection, database_url: str
) -> None:
    program = coffee()
    await setup(database_url, program)
    await conn.execute("INSERT INTO members (program, member_id) VALUES ('coffee', 'cy')")
    # Qualifying points recorded without the promotion (as before a scheme existed).
    await conn.execute(
        """INSERT INTO qualifying_points (program, member_id, currency, earned_at, points, source)
           VALUES ('coffee', 'cy', 'points', $1, 40, 'import:1')""",
        T0,
    )
    run = await run_maintenance(conn, program, program.tier_schemes[0], T0 + DAY)
    assert (run.promoted, run.demoted) == (1, 0)
    assert await moves(conn) == [("cy", "bronze", "silver", "maintenance")]
    assert await tiers(conn) == {"cy": "silver"}


async def test_a_stopped_run_resumes_after_its_last_chunk_and_counts_once(
    conn: asyncpg.Connection, database_url: str
) -> None:
    program = coffee()
    scheme = program.tier_schemes[0]
    proc = await setup(database_url, program)
    for n in range(25):
        await buy(conn, proc, f"m{n:02d}", 70 if n % 2 else 10, T0)
    as_of = T0 + 366 * DAY
    run = await start_run(conn, "coffee", "main", as_of)
    run = await run_chunk(conn, program, scheme, run, 10)  # then the worker "dies"
    assert (run.cursor, run.chunks, run.scanned, run.finished_at) == ("m09", 1, 10, None)
    done = await run_maintenance(conn, program, scheme, as_of, chunk=10)
    assert (done.chunks, done.scanned, done.demoted) == (3, 25, 12)
    assert done.finished_at is not None
    # The same run again: finished, nothing twice.
    again = await run_maintenance(conn, program, scheme, as_of, chunk=10)
    assert again == done
    assert len(await moves(conn, "maintenance")) == 12
    assert [r.as_of for r in await history(conn, "coffee")] == [as_of]


async def test_earning_during_maintenance_ends_in_the_right_tier_with_one_event_per_change(
    database_url: str, conn: asyncpg.Connection
) -> None:
    """Gold members who went quiet are demoted while half of them earn again (concurrently,
    on other connections, before ``as_of``): every member ends in the tier their final
    points give, and their new_stage events form one unbroken chain of real changes."""
    program = coffee()
    scheme = program.tier_schemes[0]
    proc = await setup(database_url, program)
    members = [f"m{n:03d}" for n in range(120)]
    for member in members:
        await buy(conn, proc, member, 70, T0)
    as_of = T0 + 400 * DAY
    earners = set(random.Random(7).sample(members, 60))

    async def earn(chunk: list[str]) -> None:
        earner = await connect(database_url)
        try:
            for member in chunk:
                await buy(earner, proc, member, 65, as_of - DAY)
        finally:
            await earner.close()

    async def pause(progress: object) -> None:
        await asyncio.sleep(0.01)  # let the earners in between chunks

    ordered = sorted(earners)
    tasks = [asyncio.create_task(earn(ordered[i::3])) for i in range(3)]
    async with asyncio.timeout(30):
        while not await conn.fetchval("SELECT count(*) FROM orders WHERE amount = 65"):
            await asyncio.sleep(0.005)
    await run_maintenance(conn, program, scheme, as_of, chunk=3, progress=pause)
    await asyncio.gather(*tasks)
    final = await tiers(conn)
    assert final == {m: "gold" if m in earners else "bronze" for m in members}
    chains: dict[str, list[tuple[str, str]]] = {}
    for member, from_tier, to_tier, _ in await moves(conn):
        chains.setdefault(member, []).append((from_tier, to_tier))
    for member in members:
        tier = "bronze"
        for from_tier, to_tier in chains[member]:
            assert from_tier == tier, (member, chains[member])
            assert to_tier != from_tier
            tier = to_tier
        assert tier == final[member], (member, chains[member])
    # Non-earners: promoted once, demoted once; earners: never demoted, or demoted then
    # promoted again by the earning that committed after their chunk.
    for member in members:
        if member not in earners:
            assert chains[member] == [("bronze", "gold"), ("gold", "bronze")]
        else:
            assert chains[member] in (
                [("bronze", "gold")],
                [("bronze", "gold"), ("gold", "bronze"), ("bronze", "gold")],
            )


async def test_promotions_earned_while_a_run_is_in_progress_survive_it(
    database_url: str, conn: asyncpg.Connection
) -> None:
    """Silver at 300, no grace; 30 bronze members hold 295. While a run reviews them one
    per chunk, 20 of them earn 10 (after the run's ``as_of``, as a login during a real
    run does) on three connections: an earning commits between each two chunks, for a
    member reviewed already or not yet, and the rest race the last chunks for the ledger
    lock. Every earner ends silver with one ``new_stage``, the others stay bronze with
    none, and the next run changes nothing."""
    program = Program(
        name="coffee", earn_rules=(PerAmount(),),
        tier_schemes=(TierScheme(tiers=(
            Tier(name="bronze", threshold=0), Tier(name="silver", threshold=300),
            Tier(name="gold", threshold=1000),
        ), window=timedelta(days=365)),),
    )  # fmt: skip
    scheme = program.tier_schemes[0]
    proc = await setup(database_url, program)
    members = [f"m{n:02d}" for n in range(30)]
    for member in members:
        await buy(conn, proc, member, 295, T0)
    as_of = T0 + 30 * DAY
    earners = random.Random(12).sample(members, 20)
    todo: asyncio.Queue[str | None] = asyncio.Queue()
    committed = asyncio.Condition()
    done: list[str] = []

    async def earn() -> None:
        earner = await connect(database_url)
        try:
            while (member := await todo.get()) is not None:
                await buy(earner, proc, member, 10, as_of + timedelta(hours=1))
                async with committed:
                    done.append(member)
                    committed.notify_all()
        finally:
            await earner.close()

    released = 0

    async def between_chunks(progress: object) -> None:
        nonlocal released
        if released < len(earners) - 5:
            # One earning commits before the next chunk takes the ledger lock.
            released += 1
            await todo.put(earners[released - 1])
            async with committed:
                await committed.wait_for(lambda: len(done) == released)
        elif released < len(earners):
            # The last ones are left to race the chunks.
            released += 1
            await todo.put(earners[released - 1])

    tasks = [asyncio.create_task(earn()) for _ in range(3)]
    run = await run_maintenance(conn, program, scheme, as_of, chunk=1, progress=between_chunks)
    for _ in tasks:
        await todo.put(None)
    await asyncio.gather(*tasks)
    assert sorted(done) == sorted(earners)
    assert run.demoted == 0
    final = await tiers(conn)
    assert final == {m: "silver" if m in earners else "bronze" for m in members}
    assert sorted(await moves(conn)) == sorted((m, "bronze", "silver", "earn") for m in earners)
    # The next run finds every tier supported: nothing moves, nothing is derived.
    again = await run_maintenance(conn, program, scheme, as_of + DAY)
    assert (again.promoted, again.demoted) == (0, 0)
    assert await tiers(conn) == final
    assert len(await moves(conn)) == len(earners)


@pytest.mark.parametrize("size", [1, 1000])
async def test_chunk_size_does_not_change_the_outcome(
    conn: asyncpg.Connection, database_url: str, size: int
) -> None:
    program = coffee(grace_period=0 * DAY)
    proc = await setup(database_url, program)
    for n, amount in enumerate((10, 35, 65, 70, 0)):
        if amount:
            await buy(conn, proc, f"m{n}", amount, T0)
    await buy(conn, proc, "m3", 55, T0 + 300 * DAY)
    run = await run_maintenance(conn, program, program.tier_schemes[0], T0 + 366 * DAY, chunk=size)
    assert await tiers(conn) == {"m0": "bronze", "m1": "bronze", "m2": "bronze", "m3": "gold"}
    assert (run.scanned, run.demoted) == (4, 2)


async def test_a_schedule_anchored_on_join_dates_reviews_members_on_their_anniversary(
    conn: asyncpg.Connection, database_url: str
) -> None:
    program = coffee(schedule=Schedule(every=30 * DAY, anchor="join_date"))
    scheme = program.tier_schemes[0]
    proc = await setup(database_url, program)
    earned = datetime(2025, 6, 1, tzinfo=UTC)
    for member, joined in (("ann", datetime(2025, 3, 10, tzinfo=UTC)),
                           ("bob", datetime(2025, 9, 10, tzinfo=UTC))):  # fmt: skip
        await buy(conn, proc, member, 70, earned)
        await conn.execute(
            "UPDATE members SET created_at = $2 WHERE member_id = $1", member, joined
        )
    # The first run reviews everyone: both still hold 70 points in the window.
    first = await run_maintenance(conn, program, scheme, datetime(2026, 1, 1, tzinfo=UTC))
    assert (first.scanned, first.demoted) == (2, 0)
    # Their points left the window on 1 June; only ann's anniversary (10 March) passed.
    second = await run_maintenance(conn, program, scheme, datetime(2026, 7, 1, tzinfo=UTC))
    assert (second.scanned, second.demoted) == (1, 1)
    assert second.previous_as_of == datetime(2026, 1, 1, tzinfo=UTC)
    assert await tiers(conn) == {"ann": "bronze", "bob": "gold"}
    third = await run_maintenance(conn, program, scheme, datetime(2026, 10, 1, tzinfo=UTC))
    assert (third.scanned, third.demoted) == (1, 1)
    assert await tiers(conn) == {"ann": "bronze", "bob": "bronze"}
    # Reviewed next on the member's own anniversary.
    now = await conn.fetchval("SELECT now()")
    view = await member_view(conn, "coffee", "bob")
    assert view.tiers[0].reviewed_at == next_anniversary(datetime(2025, 9, 10, tzinfo=UTC), now)
    assert view.tiers[0].reviewed_at.strftime("%m-%d") == "09-10"


def test_the_next_anniversary_of_29_february_is_28_february() -> None:
    joined = datetime(2024, 2, 29, 10, 0, tzinfo=UTC)
    assert next_anniversary(joined, datetime(2026, 1, 1, tzinfo=UTC)) == datetime(
        2026, 2, 28, 10, 0, tzinfo=UTC
    )
    assert next_anniversary(joined, datetime(2027, 12, 1, tzinfo=UTC)) == datetime(
        2028, 2, 29, 10, 0, tzinfo=UTC
    )


def test_a_schedule_is_every_or_cron_and_finds_the_next_run() -> None:
    at = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    assert Schedule().next_after(at) == at + DAY
    assert Schedule(every=7 * DAY).next_after(at) == at + 7 * DAY
    assert Schedule(cron="0 3 1 * *").next_after(at) == datetime(2026, 2, 1, 3, 0, tzinfo=UTC)
    with pytest.raises(ValueError, match="give every or cron, not both"):
        Schedule(every=DAY, cron="0 3 * * *")
    with pytest.raises(ValueError, match="schedule: cron 'every day': "):
        Schedule(cron="every day")
