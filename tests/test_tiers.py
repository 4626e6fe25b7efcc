"""Tiers as worked examples: promotion in the transaction that earns, exact measures.

Events go into the inbox and are applied with `EventProcessor.apply` inside a
transaction on a fresh database, at fixed times, as the router applies them. The coffee
program's main scheme: bronze (0), silver (30), gold (60), lifetime; logins earn 10
points, purchases 1 point per EUR.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from loyalty.app import LoyaltyApp, Program
from loyalty.events import Activity, AnyEvent, Purchase, Return
from loyalty.ingest.inbox import insert_events
from loyalty.ledger.members import member_view
from loyalty.router.processing import EventProcessor
from loyalty.rules import OnActivity, PerAmount
from loyalty.store.db import Conn, prepare_database
from loyalty.tiers import Tier, TierScheme, Window

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TIERS = (Tier(name="bronze", threshold=0), Tier(name="silver", threshold=30),
         Tier(name="gold", threshold=60))  # fmt: skip


def coffee(*schemes: TierScheme, **extra: Any) -> LoyaltyApp:
    extra.setdefault(
        "earn_rules",
        (OnActivity("web_login", points=10), PerAmount(),
         OnActivity("survey", points=40, qualifying=False)),
    )  # fmt: skip
    return LoyaltyApp(
        programs=[
            Program(name="coffee", tier_schemes=schemes or (TierScheme(tiers=TIERS),), **extra)
        ]
    )


async def setup(database_url: str, app: LoyaltyApp) -> EventProcessor:
    await prepare_database(database_url, app)
    return EventProcessor(app)


async def apply(conn: Conn, proc: EventProcessor, event: AnyEvent) -> str:
    """Insert the event into the inbox (as emit does) and apply it in one transaction."""
    await insert_events(conn, [event])
    async with conn.transaction():
        return await proc.apply(conn, event)


def login(
    event_id: str, at: datetime = T0, member: str = "ann", name: str = "web_login"
) -> Activity:
    return Activity(
        event_id=event_id, member_id=member, program="coffee", name=name, occurred_at=at
    )


def purchase(event_id: str, amount: int, at: datetime = T0, member: str = "ann") -> Purchase:
    return Purchase(
        event_id=event_id, member_id=member, program="coffee", order_id=f"o-{event_id}",
        amount=Decimal(amount), currency="EUR", occurred_at=at,
    )  # fmt: skip


async def tier(conn: Conn, member: str = "ann", scheme: str = "main") -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT tier FROM member_tiers WHERE member_id = $1 AND scheme = $2", member, scheme
    )
    return value


async def stages(conn: Conn) -> list[dict[str, Any]]:
    """The derived new_stage events, with the event that caused them."""
    rows = await conn.fetch(
        """SELECT d.event_id, d.member_id, d.payload, c.event_id AS cause
           FROM events AS d LEFT JOIN events AS c ON c.id = d.caused_by
           WHERE d.type = 'new_stage' ORDER BY d.id"""
    )
    return [
        {"event_id": r["event_id"], "cause": r["cause"],
         "move": (r["payload"]["from_tier"], r["payload"]["to_tier"]),
         "scheme": r["payload"]["scheme"],
         "why": (r["payload"]["direction"], r["payload"]["cause"])}
        for r in rows
    ]  # fmt: skip


async def test_the_login_that_crosses_the_threshold_promotes_in_its_transaction(
    conn: asyncpg.Connection, database_url: str
) -> None:
    proc = await setup(database_url, coffee())
    for day in range(2):
        await apply(conn, proc, login(f"l{day}", T0 + day * DAY))
    assert await tier(conn) is None  # still in the starting tier, bronze
    assert await stages(conn) == []
    await apply(conn, proc, login("l2", T0 + 2 * DAY))
    assert await tier(conn) == "silver"
    assert await stages(conn) == [
        {"event_id": "new_stage:main:silver:l2", "cause": "l2", "move": ("bronze", "silver"),
         "scheme": "main", "why": ("up", "earn")}
    ]  # fmt: skip
    view = await member_view(conn, "coffee", "ann")
    assert view.tier == "silver"
    status = view.tiers[0]
    assert (status.tier, status.qualifying, status.next_tier, status.points_to_next) == (
        "silver",
        30,
        "gold",
        30,
    )
    assert status.since == T0 + 2 * DAY


async def test_one_purchase_can_skip_a_tier_with_one_event(
    conn: asyncpg.Connection, database_url: str
) -> None:
    proc = await setup(database_url, coffee())
    await apply(conn, proc, purchase("p1", 75))
    assert await tier(conn) == "gold"
    assert [s["move"] for s in await stages(conn)] == [("bronze", "gold")]
    view = await member_view(conn, "coffee", "ann")
    assert (view.tier, view.tiers[0].next_tier, view.tiers[0].points_to_next) == (
        "gold",
        None,
        None,
    )


async def test_an_event_applied_twice_promotes_once(
    conn: asyncpg.Connection, database_url: str
) -> None:
    proc = await setup(database_url, coffee())
    await apply(conn, proc, purchase("p1", 40))
    async with conn.transaction():
        await proc.apply(conn, purchase("p1", 40))
    assert await conn.fetchval("SELECT sum(points) FROM qualifying_points") == 40
    assert [s["event_id"] for s in await stages(conn)] == ["new_stage:main:silver:p1"]


async def test_points_that_do_not_qualify_do_not_promote(
    conn: asyncpg.Connection, database_url: str
) -> None:
    proc = await setup(database_url, coffee())
    await apply(conn, proc, login("s1", name="survey"))
    view = await member_view(conn, "coffee", "ann")
    assert view.balances["points"].available == 40
    assert (view.tier, view.tiers[0].qualifying) == ("bronze", 0)
    assert await stages(conn) == []


async def test_a_new_member_starts_in_the_lowest_tier(
    conn: asyncpg.Connection, database_url: str
) -> None:
    await setup(database_url, coffee())
    await conn.execute("INSERT INTO members (program, member_id) VALUES ('coffee', 'new')")
    assert await conn.fetchval("SELECT tier FROM members WHERE member_id = 'new'") == "bronze"


@pytest.mark.parametrize(
    ("window", "second_at", "promoted"),
    [
        # 20 points at T0, 20 more later: 40 reaches silver only if both count.
        ("lifetime", T0 + 400 * DAY, True),
        (timedelta(days=365), T0 + 364 * DAY, True),
        (timedelta(days=365), T0 + 366 * DAY, False),
        ("calendar_year", datetime(2026, 12, 31, 23, 0, tzinfo=UTC), True),
        ("calendar_year", datetime(2027, 1, 1, 0, 30, tzinfo=UTC), False),
    ],
)
async def test_the_window_decides_which_points_count(
    conn: asyncpg.Connection,
    database_url: str,
    window: Window,
    second_at: datetime,
    promoted: bool,
) -> None:
    proc = await setup(database_url, coffee(TierScheme(tiers=TIERS, window=window)))
    await apply(conn, proc, purchase("p1", 20))
    await apply(conn, proc, purchase("p2", 20, at=second_at))
    assert await tier(conn) == ("silver" if promoted else None)


async def test_a_return_takes_its_share_of_the_measure_and_never_demotes(
    conn: asyncpg.Connection, database_url: str
) -> None:
    proc = await setup(database_url, coffee())
    await apply(conn, proc, purchase("p1", 50))
    assert await tier(conn) == "silver"
    ret = Return(event_id="r1", member_id="ann", program="coffee", order_id="o-p1",
                 amount=Decimal(25), occurred_at=T0 + DAY)  # fmt: skip
    await apply(conn, proc, ret)
    view = await member_view(conn, "coffee", "ann")
    # Half of the order's 50 qualifying points left the measure; demotion is maintenance's.
    assert (view.tier, view.tiers[0].qualifying) == ("silver", 25)
    # 25 + 34 = 59: not gold yet; one more point is.
    await apply(conn, proc, purchase("p2", 34, at=T0 + 2 * DAY))
    assert await tier(conn) == "silver"
    await apply(conn, proc, purchase("p3", 1, at=T0 + 3 * DAY))
    assert await tier(conn) == "gold"
    # The rest of the first order comes back in two parts: exactly its 50 in all.
    for n, amount in enumerate((Decimal("12.5"), Decimal("12.5"))):
        await apply(conn, proc, Return(
            event_id=f"r{n + 2}", member_id="ann", program="coffee", order_id="o-p1",
            amount=amount, occurred_at=T0 + 4 * DAY,
        ))  # fmt: skip
    taken = await conn.fetchval(
        "SELECT -sum(points) FROM qualifying_points WHERE order_id = 'o-p1' AND points < 0"
    )
    assert taken == 50
    assert (await member_view(conn, "coffee", "ann")).tiers[0].qualifying == 35


async def test_each_scheme_promotes_on_its_own(conn: asyncpg.Connection, database_url: str) -> None:
    test_scheme = TierScheme(
        name="test", tiers=(Tier(name="a", threshold=0), Tier(name="b", threshold=10))
    )
    proc = await setup(database_url, coffee(TierScheme(tiers=TIERS), test_scheme))
    await apply(conn, proc, login("l1"))
    assert (await tier(conn), await tier(conn, scheme="test")) == (None, "b")
    await apply(conn, proc, purchase("p1", 25))
    assert (await tier(conn), await tier(conn, scheme="test")) == ("silver", "b")
    assert [(s["scheme"], s["move"]) for s in await stages(conn)] == [
        ("test", ("a", "b")), ("main", ("bronze", "silver"))
    ]  # fmt: skip
    # members.tier follows the first scheme only.
    assert await conn.fetchval("SELECT tier FROM members WHERE member_id = 'ann'") == "silver"
    view = await member_view(conn, "coffee", "ann")
    assert [(t.scheme, t.tier) for t in view.tiers] == [("main", "silver"), ("test", "b")]


async def test_a_scheme_on_another_currency_measures_only_that_currency(
    conn: asyncpg.Connection, database_url: str
) -> None:
    app = coffee(
        TierScheme(tiers=TIERS, currency="status"),
        currencies=("points", "status"),
        earn_rules=(PerAmount(), OnActivity("web_login", points=30, currency="status")),
    )
    proc = await setup(database_url, app)
    await apply(conn, proc, purchase("p1", 100))
    assert await tier(conn) is None
    await apply(conn, proc, login("l1"))
    assert await tier(conn) == "silver"


@pytest.mark.parametrize(
    ("scheme", "problem"),
    [
        (lambda: TierScheme(tiers=(Tier(name="a", threshold=5),)),
         "tiers[0] ('a') is where members start; its threshold must be 0, not 5"),
        (lambda: TierScheme(tiers=(Tier(name="a", threshold=0), Tier(name="b", threshold=0))),
         "tiers must be in ascending order of threshold; 'b' (0) follows 'a' (0)"),
        (lambda: TierScheme(tiers=(Tier(name="a", threshold=0), Tier(name="a", threshold=9))),
         "tier names used twice: a"),
        (lambda: Tier(name="a", threshold=10, retain=11),
         "tier 'a': retain (11) must not exceed threshold (10)"),
        (lambda: TierScheme(tiers=TIERS, window=timedelta(0)),
         "window must be a positive duration"),
        (lambda: TierScheme(tiers=()), "tiers\n  Tuple should have at least 1 item"),
        (lambda: Program(name="p", tier_schemes=(TierScheme(tiers=TIERS, currency="miles"),)),
         "tier scheme 'main': currency 'miles' is not one of the program's currencies (points)"),
        (lambda: Program(name="p", tier_schemes=(TierScheme(tiers=TIERS), TierScheme(tiers=TIERS))),
         "tier scheme names used twice: main"),
    ],
)  # fmt: skip
def test_bad_schemes_are_refused_with_a_clear_message(scheme: Any, problem: str) -> None:
    with pytest.raises(ValidationError) as raised:
        scheme()
    assert problem in str(raised.value)


@pytest.mark.parametrize("window", ["lifetime", timedelta(days=365), "calendar_year"])
async def test_events_applied_out_of_their_time_order_still_promote(
    conn: asyncpg.Connection, database_url: str, window: Window
) -> None:
    """Concurrent senders reach the inbox in any order: the later purchase is applied
    first, and neither event's own time sees both; the member's latest points do."""
    proc = await setup(database_url, coffee(TierScheme(tiers=TIERS, window=window)))
    await apply(conn, proc, purchase("p2", 20, at=T0 + DAY))
    await apply(conn, proc, purchase("p1", 20, at=T0))
    assert await tier(conn) == "silver"
    assert await stages(conn) == [
        {"event_id": "new_stage:main:silver:p1", "cause": "p1", "move": ("bronze", "silver"),
         "scheme": "main", "why": ("up", "earn")}
    ]  # fmt: skip
    status = (await member_view(conn, "coffee", "ann")).tiers[0]
    assert (status.tier, status.qualifying, status.since) == ("silver", 40, T0 + DAY)
