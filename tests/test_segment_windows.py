"""Rolling windows' measures kept per member (`loyalty.segments.windows`, migration 0025):
the kept sums are each member's measure while they hold, the full recompute reads them
and falls back to the member's rows when time has moved a row out (or in), refreshes put
them right, and a window no segment reads any more is dropped."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loyalty.app import LoyaltyApp, Program
from loyalty.events import Purchase
from loyalty.ingest.inbox import insert_events
from loyalty.ledger.audit import verify
from loyalty.router.processing import EventProcessor, process_batch
from loyalty.rules import PerAmount
from loyalty.segments import Segment, balance, points_to_next_tier, qualifying_points
from loyalty.segments import membership as segment_membership
from loyalty.segments.membership import Recomputed, install, recompute
from loyalty.segments.windows import keep, refresh
from loyalty.store.db import Conn, connect, prepare_database
from loyalty.tiers import Tier, TierScheme

# A window of three seconds, so that rows leave it while the test runs.
SPAN = timedelta(seconds=3)
BRIEF = Program(
    name="brief",
    currencies=("points",),
    earn_rules=(PerAmount(),),
    tier_schemes=(
        TierScheme(
            tiers=(Tier(name="bronze", threshold=0), Tier(name="silver", threshold=100)),
            window=SPAN,
        ),
    ),
)
SEGMENTS = [
    Segment("qualified", "brief", where=qualifying_points().at_least(60)),
    Segment("near", "brief", where=points_to_next_tier().at_most(50)),
]
APP = LoyaltyApp(programs=[BRIEF], segments=SEGMENTS)
PROC = EventProcessor(APP)
_ids = iter(range(10**9))


def buy(member: str, amount: int, at: datetime) -> Purchase:
    return Purchase(
        event_id=f"p{next(_ids)}", member_id=member, program="brief", order_id=f"o{next(_ids)}",
        amount=Decimal(amount), currency="EUR", occurred_at=at,
    )  # fmt: skip


async def apply(conn: Conn, *events: Purchase) -> None:
    await insert_events(conn, list(events))
    done = await process_batch(
        conn, PROC, program="brief", partitions=1, partition=0, batch_size=500,
        max_attempts=3, task_queue="windows",
    )  # fmt: skip
    assert done.events >= len(events)


# Per member: the measure the full recompute reads, the plain sum of the member's rows in
# the window, and whether the kept sum is the measure now; at one now().
_COMPARE = """
WITH kept AS (
    SELECT t.member_id,
           t.valid_from <= now() AND now() < t.valid_until AS current,
           CASE WHEN t.valid_from <= now() AND now() < t.valid_until THEN t.points END AS kept
    FROM qualifying_window_totals AS t
    WHERE t.program = 'brief' AND t.currency = 'points' AND t.span = $1
),
plain AS (
    SELECT member_id, sum(points)::bigint AS points FROM qualifying_points
    WHERE program = 'brief' AND currency = 'points'
      AND earned_at > now() - $1::interval AND earned_at <= now()
    GROUP BY member_id
)
SELECT coalesce(k.member_id, p.member_id) AS member_id, k.current, k.kept,
       coalesce(p.points, 0) AS plain
FROM kept AS k FULL JOIN plain AS p ON p.member_id = k.member_id
ORDER BY 1
"""


async def compare(conn: Conn) -> dict[str, tuple[bool | None, int]]:
    """Each member's (kept sum is current, plain measure); asserts that every current
    kept sum is the plain measure and that every member measured has a kept sum."""
    async with conn.transaction():
        rows = await conn.fetch(_COMPARE, SPAN)
    for r in rows:
        assert r["current"] is not None or r["plain"] == 0, dict(r)
        if r["current"]:
            assert r["kept"] == r["plain"], dict(r)
    return {r["member_id"]: (r["current"], r["plain"]) for r in rows}


async def membership(conn: Conn) -> dict[str, list[str]]:
    rows = await conn.fetch(
        """SELECT segment, array_agg(member_id ORDER BY member_id) AS ids FROM segment_members
           WHERE program = 'brief' AND in_segment GROUP BY segment"""
    )
    return {r["segment"]: list(r["ids"]) for r in rows}


async def test_kept_sums_hold_until_a_row_leaves_and_refreshes_put_them_right(
    database_url: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await prepare_database(database_url, APP)
    await install(conn, APP)
    assert await conn.fetchval("SELECT count(*) FROM qualifying_windows") == 1
    now = datetime.now(UTC)
    # ann: 80 now. bob: 70 earned 2 s ago, gone in 1 s. cat: 40 long ago (never in the
    # window) and 30 now. dan: 90 dated 1.5 s ahead (clocks drift), not in it yet.
    await apply(
        conn,
        buy("ann", 80, now),
        buy("bob", 70, now - timedelta(seconds=2)),
        buy("cat", 40, now - timedelta(seconds=10)),
        buy("cat", 30, now),
        buy("dan", 90, now + timedelta(seconds=1.5)),
    )
    found = await compare(conn)
    assert {m: plain for m, (_, plain) in found.items()} == {
        "ann": 80, "bob": 70, "cat": 30, "dan": 0,
    }  # fmt: skip
    # dan's row, dated ahead, is not counted yet: his kept sum (0) holds until it enters.
    assert found["dan"] == (True, 0)
    # The full recompute, read whole and read in member id ranges, finds what the
    # transactions kept (each evaluated its members from their own rows).
    assert all((r.entered, r.left) == (0, 0) for r in await recompute(conn, APP, "brief"))
    assert await membership(conn) == {"qualified": ["ann", "bob"], "near": ["ann", "bob"]}

    await asyncio.sleep(
        max(0.0, (now + timedelta(seconds=1.6) - datetime.now(UTC)).total_seconds())
    )
    # bob's row has left the window, dan's has entered: neither kept sum holds now. The
    # recompute (in ranges, as a large program's) sums their rows itself and finds that
    # bob left and dan entered; housekeeping's refresh then writes their sums again.
    found = await compare(conn)
    assert (found["bob"], found["dan"]) == ((False, 0), (False, 90))
    await conn.execute("SET max_parallel_workers_per_gather = 2")
    monkeypatch.setattr(segment_membership, "PARALLEL_MEMBERS", 0)
    done = {r.segment: (r.entered, r.left) for r in await recompute(conn, APP, "brief")}
    assert done == {"qualified": (1, 1), "near": (1, 1)}
    assert await membership(conn) == {"qualified": ["ann", "dan"], "near": ["ann", "dan"]}
    assert (await compare(conn))["bob"] == (False, 0)
    assert await segment_membership.refresh(conn, APP, "brief") == [
        Recomputed("qualified", 0, 0),
        Recomputed("near", 0, 0),
    ]
    found = await compare(conn)
    assert (found["bob"], found["dan"]) == ((True, 0), (True, 90))
    # bob earns again: his refreshed sum (0, the window empty) takes the new row.
    await apply(conn, buy("bob", 65, datetime.now(UTC)))
    assert (await compare(conn))["bob"] == (True, 65)
    assert (await verify(conn)).ok


async def test_a_window_no_segment_reads_is_dropped_and_filled_again_from_history(
    database_url: str, conn: asyncpg.Connection
) -> None:
    plain = LoyaltyApp(
        programs=[BRIEF], segments=[Segment("rich", "brief", where=balance().at_least(1))]
    )
    await prepare_database(database_url, APP)
    now = datetime.now(UTC)
    await apply(conn, buy("ann", 80, now), buy("bob", 20, now - timedelta(seconds=1)))
    # Rows earned before any segment read the window: the install fills it from them.
    await install(conn, APP)
    assert await compare(conn) == {"ann": (True, 80), "bob": (True, 20)}
    await install(conn, plain)
    assert await conn.fetchval("SELECT count(*) FROM qualifying_windows") == 0
    assert await conn.fetchval("SELECT count(*) FROM qualifying_window_totals") == 0
    await apply(conn, buy("cat", 70, datetime.now(UTC)))
    await install(conn, APP)
    assert await compare(conn) == {"ann": (True, 80), "bob": (True, 20), "cat": (True, 70)}
    assert await membership(conn) == {"qualified": ["ann", "cat"], "near": ["ann", "cat"]}


# Offsets in seconds from now: ahead of the clock, in the window, out of it, far out.
offsets = st.sampled_from([1.0, 0.5, 0.0, -0.5, -1.5, -2.5, -2.99, -3.5, -10.0])
rows = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), offsets, st.integers(-50, 200).filter(bool)),
    min_size=1,
    max_size=6,
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    statements=st.lists(rows, min_size=1, max_size=5),
    fill_after=st.integers(0, 5),
    refresh_after=st.sets(st.integers(0, 5)),
)
async def test_kept_sums_equal_the_rows_whatever_the_order_of_inserts_fill_and_refreshes(
    database_url: str,
    statements: list[list[tuple[str, float, int]]],
    fill_after: int,
    refresh_after: set[int],
) -> None:
    """Rows dated anywhere around the window, added in statements, the window filled
    and refreshed between them: every current kept sum is the plain measure."""
    conn = await connect(database_url)
    example = f"x{next(_ids)}-"
    try:
        await prepare_database(database_url, APP)
        # Each example fills the window itself (the examples share the database).
        await conn.execute("DELETE FROM qualifying_windows WHERE program = 'brief'")
        for n, statement in enumerate(statements):
            if n == fill_after:
                await keep(conn, APP)
            if n in refresh_after:
                await refresh(conn, "brief", [("points", SPAN)])
            await conn.execute(
                """INSERT INTO qualifying_points (program, member_id, currency, earned_at,
                                                  points, source)
                   SELECT 'brief', m, 'points', now() + make_interval(secs => at), p, s
                   FROM unnest($1::text[], $2::float8[], $3::bigint[], $4::text[])
                        AS r(m, at, p, s)""",
                [example + m for m, _, _ in statement],
                [at for _, at, _ in statement],
                [points for _, _, points in statement],
                [f"s{next(_ids)}" for _ in statement],
            )
        await keep(conn, APP)
        if len(statements) in refresh_after:
            await refresh(conn, "brief", [("points", SPAN)])
        await compare(conn)
    finally:
        await conn.close()
