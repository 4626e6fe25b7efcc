"""Segments: every condition against worked examples, membership kept in the writing
transaction, derived events, installs, refreshes, and incremental = full recompute."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio import workflow

from activities.journeys import JourneyActivities
from loyalty.app import LoyaltyApp, Program
from loyalty.errors import ConfigurationError, InvalidSegments
from loyalty.events import (
    AnyEvent,
    MemberDeleted,
    MemberUpdated,
    PointsDeposit,
    PointsWithdrawal,
    Purchase,
    any_event_adapter,
)
from loyalty.flows import flow
from loyalty.ingest.inbox import insert_events
from loyalty.ledger.maturing import expire_due, mature_due
from loyalty.models import AwardPointsInput
from loyalty.policies import Rolling
from loyalty.router.processing import EventProcessor, process_batch
from loyalty.rules import PerAmount
from loyalty.segments import (
    Segment,
    balance,
    consent,
    enrolled,
    in_segment,
    last_activity,
    lifetime_earned,
    points_to_next_tier,
    profile,
    qualifying_points,
    tier_in,
    tier_not_in,
)
from loyalty.segments import membership as segment_membership
from loyalty.segments.membership import (
    install,
    list_segments,
    member_ranges,
    members,
    recompute,
    refresh,
)
from loyalty.store.db import Conn, connect, prepare_database
from loyalty.tiers import Tier, TierScheme
from loyalty.tiers.maintenance import run_maintenance
from loyalty.triggers import Custom, EnteredSegment


@flow(trigger=Custom("segment_entered", lambda event: True), name="any-entry")
@workflow.defn
class AnyEntry:
    """Listens to every entry, so that each is derived into the inbox."""

    @workflow.run
    async def run(self, trigger: object) -> None:
        pass


@flow(trigger=Custom("segment_left", lambda event: True), name="any-departure")
@workflow.defn
class AnyDeparture:
    """Listens to every departure."""

    @workflow.run
    async def run(self, trigger: object) -> None:
        pass


LISTENING = [AnyEntry, AnyDeparture]
NOW = datetime.now(UTC).replace(microsecond=0)
LONG_AGO = NOW - timedelta(days=200)

SHOP = Program(
    name="shop",
    currencies=("points", "stars"),
    earn_rules=(PerAmount(),),
    tier_schemes=(
        TierScheme(
            tiers=(
                Tier(name="bronze", threshold=0),
                Tier(name="silver", threshold=100),
                Tier(name="gold", threshold=500),
            )
        ),
    ),
)

EVERY_CONDITION = [
    Segment("almost-gold", "shop", where=balance().between(401, 499)),
    Segment("rich", "shop", where=balance().at_least(500)),
    Segment("poor", "shop", where=balance().at_most(0)),
    Segment("above-300", "shop", where=balance().above(300)),
    Segment("stars", "shop", where=balance("stars").below(10) & balance("stars").at_least(1)),
    Segment("waiting", "shop", where=balance(kind="earned").at_least(1)),
    Segment("silver", "shop", where=tier_in("silver")),
    Segment("not-bronze", "shop", where=tier_not_in("bronze")),
    Segment("qualifying", "shop", where=qualifying_points().at_least(150)),
    Segment("near-next", "shop", where=points_to_next_tier().at_most(50)),
    Segment("lifetime", "shop", where=lifetime_earned().at_least(600)),
    Segment("dormant", "shop", where=last_activity().older_than(timedelta(days=90))),
    Segment("active", "shop", where=last_activity().newer_than(timedelta(days=90))),
    Segment("new", "shop", where=enrolled().after(NOW - timedelta(hours=1))),
    Segment("old", "shop", where=enrolled().before(NOW - timedelta(hours=1))),
    Segment("aarhus", "shop", where=profile("city").equals("Aarhus")),
    Segment("danes", "shop", where=profile("city").is_in(["Aarhus", "Odense"])),
    Segment("has-zip", "shop", where=profile("address.zip").exists()),
    Segment("mailable", "shop", where=consent("email")),
    Segment("rich-or-silver", "shop", where=in_segment("rich") | in_segment("silver")),
    Segment("mailable-danes", "shop", where=in_segment("danes") & ~in_segment("poor")),
]
APP = LoyaltyApp(programs=[SHOP], segments=EVERY_CONDITION)
PROC = EventProcessor(APP)


async def apply(
    conn: Conn, *events: AnyEvent, processor: EventProcessor = PROC, careful: bool = False
) -> None:
    """Put the events in the inbox, then let the router apply them in one batch."""
    await insert_events(conn, list(events))
    done = await process_batch(
        conn, processor, program="shop", partitions=1, partition=0, batch_size=500,
        max_attempts=3, task_queue="segments", careful=careful,
    )  # fmt: skip
    assert done.events >= len(events)


_ids = iter(range(10**9))


def deposit(member: str, points: int, kind: str = "available", **more: object) -> PointsDeposit:
    return PointsDeposit(
        event_id=f"d{next(_ids)}", member_id=member, program="shop", points=points,
        kind=kind, reason="gift", **more,
    )  # fmt: skip


def withdraw(member: str, points: int) -> PointsWithdrawal:
    return PointsWithdrawal(
        event_id=f"w{next(_ids)}", member_id=member, program="shop", points=points,
        kind="available", reason="fix",
    )  # fmt: skip


def buy(member: str, amount: int, at: datetime = NOW) -> Purchase:
    return Purchase(
        event_id=f"p{next(_ids)}", member_id=member, program="shop", order_id=f"o{next(_ids)}",
        amount=Decimal(amount), currency="EUR", occurred_at=at,
    )  # fmt: skip


def update(member: str, **fields: object) -> MemberUpdated:
    return MemberUpdated(
        event_id=f"u{next(_ids)}", member_id=member, program="shop", profile=fields
    )


async def membership(conn: Conn, program: str = "shop") -> dict[str, list[str]]:
    rows = await conn.fetch(
        """SELECT segment, array_agg(member_id ORDER BY member_id) AS ids
           FROM segment_members WHERE program = $1 AND in_segment GROUP BY segment""",
        program,
    )
    return {r["segment"]: list(r["ids"]) for r in rows}


async def changes(conn: Conn) -> list[tuple[str, str, str]]:
    """(event_id, member, segment) of every derived segment event, in order."""
    rows = await conn.fetch(
        """SELECT event_id, member_id, payload FROM events
           WHERE type IN ('segment_entered', 'segment_left') ORDER BY id"""
    )
    found = []
    for r in rows:
        event = any_event_adapter.validate_python(r["payload"])
        assert (event.event_id, event.member_id) == (r["event_id"], r["member_id"])
        found.append((r["event_id"], r["member_id"], getattr(event, "segment", "")))
    return found


async def test_every_condition_against_worked_examples(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await prepare_database(database_url, APP)
    await install(conn, APP)
    # ann: 450 available (almost gold), silver by 450 qualifying points, Aarhus, no mail.
    await apply(conn, buy("ann", 450), update("ann", city="Aarhus", consent={"email": False}))
    # bob: 600 available, gold, lifetime 600, Odense with a zip code.
    await apply(conn, buy("bob", 600), update("bob", city="Odense", address={"zip": "5000"}))
    # cat: 5 stars, 20 earned points waiting, nothing available; active long ago.
    await apply(
        conn,
        deposit("cat", 5, account="stars", occurred_at=LONG_AGO),
        deposit("cat", 20, kind="earned", occurred_at=LONG_AGO),
    )
    # dan: 120 qualifying (silver), spent 100 of it: 20 left; 380 to gold.
    await apply(conn, buy("dan", 120), withdraw("dan", 100))
    # eve: 460 qualifying points then 40 more: silver, 0 to... 500 is gold: gold.
    await apply(conn, buy("eve", 460), buy("eve", 20))
    # Enrolled two hours ago (the created_at of the member row).
    await conn.execute(
        "UPDATE members SET created_at = $1 WHERE program = 'shop' AND member_id = 'cat'",
        NOW - timedelta(hours=2),
    )
    assert await membership(conn) == {
        "almost-gold": ["ann", "eve"],
        "rich": ["bob"],
        "poor": ["cat"],
        "above-300": ["ann", "bob", "eve"],
        "stars": ["cat"],
        "waiting": ["cat"],
        "silver": ["ann", "dan", "eve"],
        "not-bronze": ["ann", "bob", "dan", "eve"],
        "qualifying": ["ann", "bob", "eve"],
        "near-next": ["ann", "eve"],
        "lifetime": ["bob"],
        "dormant": ["cat"],
        "active": ["ann", "bob", "dan", "eve"],
        "new": ["ann", "bob", "dan", "eve"],
        "old": ["cat"],
        "aarhus": ["ann"],
        "danes": ["ann", "bob"],
        "has-zip": ["bob"],
        "mailable": ["bob", "cat", "dan", "eve"],
        "rich-or-silver": ["ann", "bob", "dan", "eve"],
        "mailable-danes": ["ann", "bob"],
    }
    # A full recompute finds what the transactions kept.
    assert all(
        (r.entered, r.left) == (0, 0) for r in await recompute(conn, APP, "shop", emit=False)
    )
    # Erasure empties the profile: out of every profile segment, and no consent.
    await apply(conn, MemberDeleted(event_id="x1", member_id="bob", program="shop"))
    found = await membership(conn)
    assert not any("bob" in found.get(s, []) for s in ("danes", "has-zip", "mailable"))
    assert "bob" in found["rich"]  # the ledger is kept


async def test_a_recompute_read_in_member_id_ranges_finds_what_the_writers_kept(
    database_url: str, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The parallel read of a large program's recompute (one part per member id range),
    forced on a small one: every member is found once, in its part."""
    app = LoyaltyApp(programs=[SHOP], segments=EVERY_CONDITION, flows=LISTENING)
    await prepare_database(database_url, app)
    await install(conn, app)
    for i in range(12):
        member = f"m{i:02d}"
        # 45 to 540 qualifying and available points: bronze, silver and gold, almost gold,
        # rich; every other one in Aarhus, every third one without email.
        profile_fields: dict[str, object] = {"city": "Aarhus" if i % 2 else "Odense"}
        if i % 3 == 0:
            profile_fields["consent"] = {"email": False}
        await apply(
            conn, buy(member, 45 * (i + 1)), update(member, **profile_fields),
            deposit(member, i + 1, account="stars"),
        )  # fmt: skip
    kept = await membership(conn)
    assert kept["rich"] == ["m11"]
    assert kept["almost-gold"] == ["m08", "m09", "m10"]
    await conn.execute("SET max_parallel_workers_per_gather = 2")
    monkeypatch.setattr(segment_membership, "PARALLEL_MEMBERS", 0)
    ranges = await member_ranges(conn, "shop")
    assert len(ranges) > 2
    assert (ranges[0][0], ranges[-1][1]) == (None, None)
    assert all(a[1] == b[0] for a, b in pairwise(ranges))
    # Everyone new, as at install: the parts find every member of every segment once.
    await conn.execute("DELETE FROM segment_members WHERE program = 'shop'")
    found = await recompute(conn, app, "shop", emit=False)
    assert await membership(conn) == kept
    assert [(r.segment, r.entered, r.left) for r in found] == [
        (r.segment, len(kept.get(r.segment, [])), 0) for r in found
    ]
    # A change no marking trigger saw (as time changes a window): m11 moved to Berlin; the
    # refresh finds the departures, derives their events, and leaves the planner's
    # settings as they were.
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            """UPDATE members SET profile = profile || '{"city": "Berlin"}'
               WHERE program = 'shop' AND member_id = 'm11'"""
        )
    async with conn.transaction():
        found = await recompute(conn, app, "shop", emit=True)
        assert await conn.fetchval("SHOW enable_hashjoin") == "on"
    moved = {r.segment: (r.entered, r.left) for r in found if (r.entered, r.left) != (0, 0)}
    assert moved == {"aarhus": (0, 1), "danes": (0, 1), "mailable-danes": (0, 1)}
    assert [c[0] for c in await changes(conn)][-3:] == [  # in the segments' order
        "segment_left:aarhus:1:m11",
        "segment_left:danes:1:m11",
        "segment_left:mailable-danes:1:m11",
    ]


async def test_entering_leaving_and_entering_again_derive_numbered_events(
    database_url: str, conn: asyncpg.Connection
) -> None:
    app = LoyaltyApp(programs=[SHOP], segments=[EVERY_CONDITION[0]], flows=LISTENING)
    await prepare_database(database_url, app)
    await install(conn, app)
    proc = EventProcessor(app)

    async def run(*events: AnyEvent, careful: bool = False) -> None:
        await apply(conn, *events, processor=proc, careful=careful)

    await run(deposit("ann", 300))
    await run(deposit("ann", 150))  # 450: in
    await run(deposit("ann", 10))  # 460: still in, nothing new
    await run(withdraw("ann", 200))  # 260: out
    await run(deposit("ann", 200))  # 460: in again
    assert await changes(conn) == [
        ("segment_entered:almost-gold:1:ann", "ann", "almost-gold"),
        ("segment_left:almost-gold:1:ann", "ann", "almost-gold"),
        ("segment_entered:almost-gold:2:ann", "ann", "almost-gold"),
    ]
    # One batch (one transaction): only where it ends counts.
    await run(withdraw("ann", 460), deposit("ann", 10))  # 0, then 10: out
    assert len(await changes(conn)) == 4
    await run(deposit("ann", 430), withdraw("ann", 200))  # 440 would be in; 240: out
    assert len(await changes(conn)) == 4
    await run(deposit("ann", 300), withdraw("ann", 100), careful=True)  # 440: in
    assert [c[0] for c in await changes(conn)][-2:] == [
        "segment_left:almost-gold:2:ann",
        "segment_entered:almost-gold:3:ann",
    ]


async def test_a_rolled_back_transaction_leaves_membership_as_it_was(
    database_url: str, conn: asyncpg.Connection
) -> None:
    app = LoyaltyApp(programs=[SHOP], segments=[EVERY_CONDITION[0]])
    await prepare_database(database_url, app)
    await install(conn, app)
    event = deposit("ann", 450)
    await insert_events(conn, [event])
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await EventProcessor(app).apply(conn, event)
            raise RuntimeError("crash before commit")
    assert await membership(conn) == {}
    assert await conn.fetchval("SELECT count(*) FROM segment_marks") == 0
    assert await conn.fetchval("SELECT count(*) FROM segment_settles") == 0


async def test_install_recomputes_changed_segments_silently_and_removes_gone_ones(
    database_url: str, conn: asyncpg.Connection
) -> None:
    first = LoyaltyApp(programs=[SHOP])
    await prepare_database(database_url, first)
    await install(conn, first)
    marking = (
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%_segments_%' AND tgenabled <> 'D'"
    )
    assert await conn.fetchval(marking) == 0
    await apply(conn, deposit("ann", 450), deposit("bob", 50))
    app = LoyaltyApp(
        programs=[SHOP], segments=[Segment("band", "shop", where=balance().between(401, 499))]
    )
    done = await install(conn, app)
    assert done.changed == [("shop", "band")]
    assert await conn.fetchval(marking) == 9
    assert await membership(conn) == {"band": ["ann"]}
    assert await changes(conn) == []  # a deploy is not a member's change
    assert (await install(conn, app)).changed == []  # nothing new: nothing written
    wider = LoyaltyApp(
        programs=[SHOP], segments=[Segment("band", "shop", where=balance().between(1, 499))]
    )
    assert (await install(conn, wider)).changed == [("shop", "band")]
    assert await membership(conn) == {"band": ["ann", "bob"]}
    # The evaluate function follows the new definition.
    await apply(conn, deposit("cat", 5))
    assert await membership(conn) == {"band": ["ann", "bob", "cat"]}
    gone = await install(conn, first)
    assert gone.removed == [("shop", "band")]
    assert await membership(conn) == {}
    assert await conn.fetchval("SELECT count(*) FROM segment_members") == 0
    # Without segments, the marking triggers are off again.
    assert await conn.fetchval(marking) == 0
    await apply(conn, deposit("cat", 5))
    assert await conn.fetchval("SELECT count(*) FROM segment_marks") == 0


async def test_conditions_on_time_are_refreshed_with_events(
    database_url: str, conn: asyncpg.Connection
) -> None:
    app = LoyaltyApp(
        programs=[SHOP],
        flows=LISTENING,
        segments=[
            Segment("lapsing", "shop", where=last_activity().older_than(timedelta(seconds=1))),
            Segment("lapsing-rich", "shop", where=in_segment("lapsing") & balance().at_least(1)),
            Segment("plain", "shop", where=balance().at_least(1)),
        ],
    )
    await prepare_database(database_url, app)
    await install(conn, app)
    await apply(conn, deposit("ann", 10, occurred_at=datetime.now(UTC)))
    assert await membership(conn) == {"plain": ["ann"]}
    await asyncio.sleep(1.2)
    refreshed = await refresh(conn, app, "shop")
    assert [(r.segment, r.entered, r.left) for r in refreshed] == [
        ("lapsing", 1, 0),
        ("lapsing-rich", 1, 0),
    ]
    assert [c[0] for c in await changes(conn)] == [
        "segment_entered:plain:1:ann",
        "segment_entered:lapsing:1:ann",
        "segment_entered:lapsing-rich:1:ann",
    ]
    listed = {s.name: s for s in await list_segments(conn, "shop")}
    assert (listed["lapsing"].time_dependent, listed["plain"].time_dependent) == (True, False)
    assert (listed["lapsing-rich"].size, listed["lapsing-rich"].entered_last_day) == (1, 1)
    assert [m for m, _ in await members(conn, "shop", "lapsing")] == ["ann"]
    assert await members(conn, "shop", "lapsing", after="ann") == []


def test_wrong_definitions_are_refused_naming_the_segment() -> None:
    with pytest.raises(ConfigurationError, match=r"between\(500, 400\): impossible range"):
        balance().between(500, 400)
    with pytest.raises(ConfigurationError, match="never negative"):
        balance().below(0)
    with pytest.raises(ConfigurationError, match="name must be"):
        Segment("Almost Gold", "shop", where=balance().at_least(1))
    with pytest.raises(InvalidSegments) as refused:
        LoyaltyApp(
            programs=[SHOP],
            segments=[
                Segment("a", "shop", where=balance("euro").at_least(1)),
                Segment("b", "shop", where=tier_in("platinum")),
                Segment("c", "shop", where=in_segment("nowhere")),
                Segment("d", "shop", where=in_segment("e")),
                Segment("e", "shop", where=in_segment("d")),
                Segment("f", "club", where=consent("sms")),
                Segment("g", "shop", where=points_to_next_tier("vip").at_most(5)),
                Segment("a", "shop", where=consent("sms")),
            ],
        )
    assert refused.value.problems == [
        "segment 'a': defined twice in program 'shop'",
        "segment 'a': unknown currency 'euro'; currencies: points, stars",
        "segment 'b': unknown tier 'platinum' in scheme 'main'; tiers: bronze, silver, gold",
        "segment 'c': in_segment('nowhere'): unknown segment; segments: a, b, c, d, e, g",
        "segment 'g': unknown tier scheme 'vip'; schemes: main",
        "segment 'd': it names itself through in_segment",
        "segment 'e': it names itself through in_segment",
        "segment 'f': program 'club' is not defined by the app; programs: shop",
    ]


# --- incremental membership equals a full recompute ------------------------------------

RANDOM = LoyaltyApp(
    programs=[SHOP],
    flows=LISTENING,
    segments=[
        Segment("band", "shop", where=balance().between(100, 300)),
        Segment("silver", "shop", where=tier_in("silver") & ~in_segment("band")),
        Segment("close", "shop", where=points_to_next_tier().at_most(60) | profile("vip").exists()),
        Segment("mail", "shop", where=consent("email") & lifetime_earned().at_least(50)),
    ],
)
RANDOM_PROC = EventProcessor(RANDOM)

steps = st.lists(
    st.tuples(
        st.sampled_from(["ann", "bob", "cat"]),
        st.sampled_from(["deposit", "withdraw", "buy", "vip", "optout", "delete"]),
        st.integers(min_value=1, max_value=250),
    ),
    min_size=1,
    max_size=25,
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=steps, split=st.integers(min_value=1, max_value=5))
async def test_incremental_membership_equals_a_full_recompute(
    database_url: str, steps: list[tuple[str, str, int]], split: int
) -> None:
    conn = await connect(database_url)
    # Each example has members of its own in the one database; the recompute covers all.
    example = f"x{next(_ids)}-"
    try:
        await prepare_database(database_url, RANDOM)
        await install(conn, RANDOM)
        events: list[AnyEvent] = []
        for name, kind, n in steps:
            member = example + name
            if kind == "deposit":
                events.append(deposit(member, n))
            elif kind == "withdraw":
                events.append(withdraw(member, n))
            elif kind == "buy":
                events.append(buy(member, n))
            elif kind == "vip":
                events.append(update(member, vip=True, consent={"email": True}))
            elif kind == "optout":
                events.append(update(member, consent={"email": False}))
            else:
                events.append(
                    MemberDeleted(event_id=f"x{next(_ids)}", member_id=member, program="shop")
                )
        await insert_events(conn, events)
        # Router batches of `split` events, each one transaction.
        while True:
            done = await process_batch(
                conn, RANDOM_PROC, program="shop", partitions=1, partition=0,
                batch_size=split, max_attempts=3, task_queue="segments",
            )  # fmt: skip
            if done.events == 0:
                break
        kept = await membership(conn)
        found = await recompute(conn, RANDOM, "shop", emit=False)
        assert [(r.segment, r.entered, r.left) for r in found] == [
            (s, 0, 0) for s in ("band", "silver", "close", "mail")
        ], kept
        assert await membership(conn) == kept
        # Every member's events alternate entered/left, numbered 1, 1, 2, 2, …
        by_member: dict[tuple[str, str], list[str]] = {}
        for event_id, member, segment in await changes(conn):
            if not member.startswith(example):
                continue
            by_member.setdefault((member, segment), []).append(event_id)
        for (member, segment), ids in by_member.items():
            expected = [
                f"segment_{'entered' if i % 2 == 0 else 'left'}:{segment}:{i // 2 + 1}:{member}"
                for i in range(len(ids))
            ]
            assert ids == expected
            assert (member in kept.get(segment, [])) == (len(ids) % 2 == 1)
    finally:
        await conn.close()


# --- every writer, not only the router -----------------------------------------------------

AGED = Program(
    name="shop",
    currencies=("points",),
    earn_rules=(PerAmount(),),
    earned_waiting_period=timedelta(days=14),
    expiry={"points": Rolling(days=30)},
    tier_schemes=(
        TierScheme(
            tiers=(Tier(name="bronze", threshold=0), Tier(name="silver", threshold=100)),
            window=timedelta(days=30),
        ),
    ),
)
WRITERS = LoyaltyApp(
    programs=[AGED],
    flows=LISTENING,
    segments=[
        Segment("spendable", "shop", where=balance().at_least(1)),
        Segment("waiting", "shop", where=balance(kind="earned").at_least(1)),
        Segment("silver", "shop", where=tier_in("silver")),
    ],
)


async def test_journey_steps_maturing_expiry_and_maintenance_keep_membership(
    database_url: str, pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    await prepare_database(database_url, WRITERS)
    await install(conn, WRITERS)
    proc = EventProcessor(WRITERS)
    earlier = NOW - timedelta(days=40)
    # 100 qualifying points 40 days ago: silver then, by the router.
    await apply(conn, buy("ann", 100, at=earlier), processor=proc)
    assert await membership(conn) == {"silver": ["ann"], "spendable": ["ann"]}
    # A journey step awards earned points: waiting, in the step's transaction.
    journeys = JourneyActivities(pool, WRITERS)
    await journeys.award_points(AwardPointsInput(
        program="shop", member_id="ann", points=5, kind="earned", reason="bonus",
        idempotency_key="journey:wf-1:bonus", workflow_id="journey/shop/bonus/ann",
    ))  # fmt: skip
    assert (await membership(conn))["waiting"] == ["ann"]
    # Maturing makes them available: out of waiting.
    await mature_due(conn, "shop", NOW + timedelta(days=15))
    assert "waiting" not in await membership(conn)
    # Expiry takes what was earned 40 days ago (30-day rolling): 5 stay spendable.
    await expire_due(conn, AGED, NOW)
    found = await membership(conn)
    assert found["spendable"] == ["ann"]
    # Maintenance reviews the 30-day window now: nothing qualifies, back to bronze.
    await run_maintenance(conn, AGED, AGED.tier_schemes[0], NOW)
    assert "silver" not in await membership(conn)
    assert [c[0] for c in await changes(conn)] == [
        "segment_entered:silver:1:ann",  # one transaction: in segment order
        "segment_entered:spendable:1:ann",
        "segment_entered:waiting:1:ann",
        "segment_left:waiting:1:ann",
        "segment_left:silver:1:ann",
    ]
    assert all(
        (r.entered, r.left) == (0, 0) for r in await recompute(conn, WRITERS, "shop", emit=False)
    )


@flow(trigger=EnteredSegment("band"), name="band-welcome")
@workflow.defn
class BandWelcome:
    @workflow.run
    async def run(self, trigger: object) -> None:
        pass


async def test_only_the_changes_a_flow_listens_to_are_derived_every_change_is_logged(
    database_url: str, conn: asyncpg.Connection
) -> None:
    app = LoyaltyApp(
        programs=[SHOP],
        flows=[BandWelcome],
        segments=[
            Segment("band", "shop", where=balance().between(100, 300)),
            Segment("rich", "shop", where=balance().at_least(500)),
        ],
    )
    await prepare_database(database_url, app)
    await install(conn, app)
    proc = EventProcessor(app)
    await apply(conn, deposit("ann", 200), processor=proc)  # band: in
    await apply(conn, deposit("ann", 400), processor=proc)  # 600: band out, rich in
    assert [c[0] for c in await changes(conn)] == ["segment_entered:band:1:ann"]
    logged = await conn.fetch(
        "SELECT segment, member_id, entered, entry FROM segment_changes ORDER BY at, segment"
    )
    assert [tuple(r) for r in logged] == [
        ("band", "ann", True, 1),
        ("band", "ann", False, 1),
        ("rich", "ann", True, 1),
    ]
    listed = {s.name: (s.entered_last_day, s.left_last_day) for s in await list_segments(conn)}
    assert listed == {"band": (1, 1), "rich": (1, 0)}
    # A flow that starts listening: the function changes, nothing is recomputed.
    both = LoyaltyApp(
        programs=[SHOP],
        flows=[BandWelcome, AnyDeparture],
        segments=[
            Segment("band", "shop", where=balance().between(100, 300)),
            Segment("rich", "shop", where=balance().at_least(500)),
        ],
    )
    assert (await install(conn, both)).changed == []
    await apply(conn, withdraw("ann", 200), processor=EventProcessor(both))  # 400: rich out
    assert [c[0] for c in await changes(conn)][-1] == "segment_left:rich:1:ann"
