"""``bonus_expiring`` reminders, against real PostgreSQL (`loyalty.ledger.reminders`).

The shop program has two currencies, points expiring 60 days after each lot was earned
and miles 90 days after; its app has flows warning 7 and 30 days before points expire.
Deposits are applied with `EventProcessor.apply` as the router applies them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from pydantic import ValidationError
from temporalio import workflow

from loyalty.app import LoyaltyApp, Program
from loyalty.events import BonusExpiring, PointsDeposit, PointsWithdrawal, any_event_adapter
from loyalty.flows import flow
from loyalty.ingest.derived import derived_id
from loyalty.ingest.inbox import insert_events
from loyalty.ledger.maturing import expire_due, mature_due
from loyalty.ledger.members import member_view
from loyalty.ledger.reminders import derive_reminders, reminder_days
from loyalty.policies import FixedDate, Inactivity, Rolling
from loyalty.router.processing import EventProcessor
from loyalty.store.db import Conn, prepare_database
from loyalty.triggers import BonusExpiring as BonusExpiringTrigger

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@flow(trigger=BonusExpiringTrigger(days_before=7))
@workflow.defn
class WarnAWeekBefore:
    @workflow.run
    async def run(self, trigger: object) -> None:
        pass


@flow(trigger=BonusExpiringTrigger(days_before=30), name="warn-a-month-before")
@workflow.defn
class WarnAMonthBefore:
    @workflow.run
    async def run(self, trigger: object) -> None:
        pass


SHOP = Program(
    name="shop", currencies=("points", "miles"),
    expiry={"points": Rolling(days=60), "miles": Rolling(days=90)},
)  # fmt: skip
APP = LoyaltyApp(programs=[SHOP], flows=[WarnAWeekBefore, WarnAMonthBefore])


async def apply(conn: Conn, event: PointsDeposit | PointsWithdrawal, app: LoyaltyApp = APP) -> None:
    await insert_events(conn, [event])
    async with conn.transaction():
        await EventProcessor(app).apply(conn, event)


async def deposit(
    conn: Conn, event_id: str, member: str, points: int, at: datetime, account: str = "points",
    app: LoyaltyApp = APP,
) -> None:  # fmt: skip
    await apply(conn, PointsDeposit(
        event_id=event_id, member_id=member, program="shop", points=points, kind="available",
        account=account, reason="gift", occurred_at=at,
    ), app)  # fmt: skip


async def reminders(conn: Conn) -> list[BonusExpiring]:
    rows = await conn.fetch(
        "SELECT payload, occurred_at FROM events WHERE type = 'bonus_expiring' ORDER BY id"
    )
    found = []
    for row in rows:
        event = any_event_adapter.validate_python(row["payload"])
        assert isinstance(event, BonusExpiring)
        assert row["occurred_at"] == event.occurred_at
        found.append(event)
    return found


def reminder(member: str, n: int, expires_at: datetime, points: int, account: str = "points"):  # type: ignore[no-untyped-def]
    return BonusExpiring(
        event_id=f"bonus_expiring:{n}:{account}:{expires_at.date().isoformat()}:{member}",
        member_id=member, program="shop", occurred_at=expires_at - n * DAY, points=points,
        expires_at=expires_at, days_left=n, account=account,
    )  # fmt: skip


def test_reminder_days_are_those_of_the_programs_bonus_expiring_flows() -> None:
    assert reminder_days(APP, "shop") == (7, 30)
    assert reminder_days(LoyaltyApp(programs=[SHOP]), "shop") == ()


async def test_one_reminder_per_member_currency_date_and_n_never_repeated(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await prepare_database(database_url, APP)
    await deposit(conn, "a1", "alice", 100, T0)
    await deposit(conn, "a2", "alice", 20, T0)  # the same date: one reminder for both
    await deposit(conn, "a3", "alice", 50, T0 + 10 * DAY)  # expires on day 70
    await deposit(conn, "a4", "alice", 40, T0, account="miles")  # expires on day 90
    await deposit(conn, "b1", "bob", 80, T0)
    await deposit(conn, "c1", "carol", 30, T0)
    await apply(
        conn,
        PointsWithdrawal(
            event_id="c2",
            member_id="carol",
            program="shop",
            points=30,
            kind="available",
            reason="spent",
            occurred_at=T0 + DAY,
        ),
    )  # fmt: skip  (carol's lot is spent: nothing to remind her of)

    # On day 55: points of day 60 are within 7 and 30 days, those of day 70 within 30;
    # miles of day 90 within neither. Chunks of one account each go through the keyset.
    as_of = T0 + 55 * DAY
    assert await derive_reminders(conn, APP, SHOP, as_of, chunk=1) == 5
    assert await reminders(conn) == [
        reminder("alice", 7, T0 + 60 * DAY, 120),
        reminder("alice", 30, T0 + 60 * DAY, 120),
        reminder("alice", 30, T0 + 70 * DAY, 50),
        reminder("bob", 7, T0 + 60 * DAY, 80),
        reminder("bob", 30, T0 + 60 * DAY, 80),
    ]
    # Runs again, the same day or the next, derive nothing new.
    assert await derive_reminders(conn, APP, SHOP, as_of) == 0
    assert await derive_reminders(conn, APP, SHOP, as_of + DAY, chunk=2) == 0
    assert len(await reminders(conn)) == 5

    # On day 61 (expiry not run yet: the lots of day 60 are past as_of, not announced),
    # the miles of day 90 are within 30 days: labelled 30 even though 29 days are left.
    assert await derive_reminders(conn, APP, SHOP, T0 + 61 * DAY) == 1
    assert (await reminders(conn))[-1] == reminder("alice", 30, T0 + 90 * DAY, 40, "miles")


async def test_expired_lots_are_not_announced(database_url: str, conn: asyncpg.Connection) -> None:
    await prepare_database(database_url, APP)
    await deposit(conn, "a1", "alice", 100, T0)
    # Expired under the cut-off already, though the reminder run is earlier in time.
    await expire_due(conn, SHOP, T0 + 60 * DAY)
    assert await derive_reminders(conn, APP, SHOP, T0 + 55 * DAY) == 0
    assert await reminders(conn) == []


async def test_without_bonus_expiring_flows_nothing_is_derived(
    database_url: str, conn: asyncpg.Connection
) -> None:
    app = LoyaltyApp(programs=[SHOP])
    await prepare_database(database_url, app)
    await deposit(conn, "a1", "alice", 100, T0)
    assert await derive_reminders(conn, app, SHOP, T0 + 55 * DAY) == 0


async def test_ids_of_long_member_ids_are_hashed(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await prepare_database(database_url, APP)
    member = "m" * 128
    await deposit(conn, "a1", member, 100, T0)
    await derive_reminders(conn, APP, SHOP, T0 + 55 * DAY)
    day = (T0 + 60 * DAY).date().isoformat()
    assert [e.event_id for e in await reminders(conn)] == [
        derived_id("bonus_expiring", 7, "points", day, member),
        derived_id("bonus_expiring", 30, "points", day, member),
    ]
    assert all(len(e.event_id) <= 128 for e in await reminders(conn))


async def test_an_expiry_time_with_microseconds_has_pythons_iso_text(
    database_url: str, conn: asyncpg.Connection
) -> None:
    await prepare_database(database_url, APP)
    at = T0.replace(microsecond=120)
    await deposit(conn, "a1", "alice", 10, at)
    await derive_reminders(conn, APP, SHOP, T0 + 55 * DAY)
    assert (await reminders(conn))[0] == reminder("alice", 7, at + 60 * DAY, 10)


async def test_points_under_an_inactivity_policy_are_announced_before_the_date_activity_sets(
    database_url: str, conn: asyncpg.Connection
) -> None:
    shop = Program(name="shop", expiry={"points": Inactivity(days=90)})
    app = LoyaltyApp(programs=[shop], flows=[WarnAWeekBefore])
    await prepare_database(database_url, app)
    await deposit(conn, "a1", "alice", 100, T0, app=app)
    await deposit(conn, "a2", "alice", 50, T0 + 10 * DAY, app=app)  # alice's date: day 100
    await deposit(conn, "b1", "bob", 30, T0, app=app)  # bob's: day 90

    assert await derive_reminders(conn, app, shop, T0 + 85 * DAY) == 1
    assert await reminders(conn) == [reminder("bob", 7, T0 + 90 * DAY, 30)]
    # On day 94 bob's date has passed; alice holds 150 that go on day 100.
    assert await derive_reminders(conn, app, shop, T0 + 94 * DAY, chunk=1) == 1
    assert (await reminders(conn))[-1] == reminder("alice", 7, T0 + 100 * DAY, 150)
    assert await derive_reminders(conn, app, shop, T0 + 95 * DAY) == 0

    # Spending on day 95 moves alice's date to day 185: a new reminder comes before it.
    await apply(conn, PointsWithdrawal(
        event_id="a3", member_id="alice", program="shop", points=20, kind="available",
        reason="spent", occurred_at=T0 + 95 * DAY,
    ), app)  # fmt: skip
    assert await derive_reminders(conn, app, shop, T0 + 170 * DAY) == 0
    assert await derive_reminders(conn, app, shop, T0 + 179 * DAY) == 1
    assert (await reminders(conn))[-1] == reminder("alice", 7, T0 + 185 * DAY, 130)
    # Once expired, nothing is left to announce.
    await expire_due(conn, shop, T0 + 186 * DAY)
    assert await derive_reminders(conn, app, shop, T0 + 186 * DAY) == 0


def day_reminder(member: str, n: int, expires_at: datetime, points: int, day: str) -> BonusExpiring:
    """A reminder of the lots expiring on ``day`` (the program's time zone), the first
    of them at ``expires_at``."""
    return BonusExpiring(
        event_id=f"bonus_expiring:{n}:points:{day}:{member}", member_id=member, program="shop",
        occurred_at=expires_at - n * DAY, points=points, expires_at=expires_at, days_left=n,
        account="points",
    )  # fmt: skip


async def test_lots_expiring_on_one_day_make_one_reminder_per_n_with_all_their_points(
    database_url: str, conn: asyncpg.Connection
) -> None:
    """A purchase's points and its flows' bonuses expire minutes apart, each lot 60 days
    after its own time: one reminder per N for the day, carrying every lot of that day,
    also those past the N days' window (as_of + 7 days reaches 09:00 on day 60 only)."""
    await prepare_database(database_url, APP)
    for event_id, points, at in (
        ("buy", 100, T0),  # 09:00
        ("bonus", 50, T0 + timedelta(seconds=5)),
        ("welcome", 20, T0 + timedelta(minutes=3)),
        ("evening", 10, T0 + timedelta(hours=14)),  # 23:00, still day 0 in UTC
        ("next-day", 5, T0 + timedelta(hours=16)),  # 01:00 the next day
    ):
        await deposit(conn, event_id, "alice", points, at)
    day60, day61 = "2026-05-01", "2026-05-02"
    next_day = T0 + 60 * DAY + timedelta(hours=16)
    assert await derive_reminders(conn, APP, SHOP, T0 + 53 * DAY) == 3
    assert await reminders(conn) == [
        day_reminder("alice", 7, T0 + 60 * DAY, 180, day60),
        day_reminder("alice", 30, T0 + 60 * DAY, 180, day60),
        day_reminder("alice", 30, next_day, 5, day61),
    ]
    # A day later the next day is within 7 days too; day 60 is not announced again.
    assert await derive_reminders(conn, APP, SHOP, T0 + 54 * DAY) == 1
    assert (await reminders(conn))[3:] == [day_reminder("alice", 7, next_day, 5, day61)]


async def test_the_expiry_day_is_the_programs_time_zone(
    database_url: str, conn: asyncpg.Connection
) -> None:
    """23:30 and 02:00 UTC are two days in UTC, one evening in New York."""
    first = T0.replace(hour=23, minute=30)
    second = first + timedelta(hours=2, minutes=30)
    for timezone in ("UTC", "America/New_York"):
        shop = SHOP.model_copy(update={"timezone": timezone})
        app = LoyaltyApp(programs=[shop], flows=[WarnAWeekBefore])
        await prepare_database(database_url, app)
        member = f"m-{timezone}"
        await deposit(conn, f"{member}-1", member, 10, first, app=app)
        await deposit(conn, f"{member}-2", member, 20, second, app=app)
        await derive_reminders(conn, app, shop, T0 + 55 * DAY)
        found = [e for e in await reminders(conn) if e.member_id == member]
        if timezone == "America/New_York":
            assert found == [
                day_reminder(member, 7, first + 60 * DAY, 30, "2026-05-01"),
            ]
        else:
            assert [(e.event_id, e.points) for e in found] == [
                (f"bonus_expiring:7:points:2026-05-01:{member}", 10),
                (f"bonus_expiring:7:points:2026-05-02:{member}", 20),
            ]


def test_a_program_time_zone_is_an_iana_name() -> None:
    assert Program(name="shop").timezone == "UTC"
    assert Program(name="shop", timezone="Europe/Paris").timezone == "Europe/Paris"
    with pytest.raises(ValidationError, match="timezone: unknown time zone 'Mars/Olympus'"):
        Program(name="shop", timezone="Mars/Olympus")


def test_expiry_periods_take_whole_days_or_a_duration() -> None:
    assert Rolling(days=365).duration == timedelta(days=365)
    assert Rolling(period=timedelta(minutes=10)).duration == timedelta(minutes=10)
    assert Inactivity(period=timedelta(hours=2)).duration == timedelta(hours=2)
    for bad, message in (
        ({}, "give days or period"),
        ({"days": 3, "period": timedelta(days=3)}, "give days or period, not both"),
        ({"period": timedelta(0)}, "period: must be a positive duration"),
    ):
        with pytest.raises(ValidationError, match=message):
            Rolling(**bad)  # type: ignore[arg-type]
    # Stored with the program (as JSON) and read back the same.
    policy = Rolling(period=timedelta(minutes=10))
    assert Rolling.model_validate_json(policy.model_dump_json()) == policy


async def test_an_accelerated_program_expires_points_within_minutes(
    database_url: str, conn: asyncpg.Connection
) -> None:
    """Points that expire ten minutes after they were earned, and a member's points
    after two hours without activity: the member view shows when, housekeeping takes
    them."""
    shop = Program(
        name="shop", currencies=("points", "miles"),
        expiry={"points": Rolling(period=timedelta(minutes=10)),
                "miles": Inactivity(period=timedelta(hours=2))},
        earned_waiting_period=timedelta(minutes=2),
    )  # fmt: skip
    app = LoyaltyApp(programs=[shop])
    await prepare_database(database_url, app)
    await deposit(conn, "p1", "alice", 100, T0, app=app)
    await deposit(conn, "m1", "alice", 40, T0, account="miles", app=app)
    await apply(conn, PointsDeposit(
        event_id="p2", member_id="alice", program="shop", points=5, kind="earned",
        reason="gift", occurred_at=T0,
    ), app)  # fmt: skip
    view = await member_view(conn, "shop", "alice")
    assert [(e.currency, e.points, e.expires_at) for e in view.upcoming_expiries] == [
        ("points", 105, T0 + timedelta(minutes=10)),
        ("miles", 40, T0 + timedelta(hours=2)),
    ]
    assert (await mature_due(conn, "shop", T0 + timedelta(minutes=3))).points == 5
    results = await expire_due(conn, shop, T0 + timedelta(minutes=11))
    assert [(r.currency, r.points) for r in results] == [("points", 105), ("miles", 0)]
    results = await expire_due(conn, shop, T0 + timedelta(hours=2, minutes=1))
    assert [(r.currency, r.points) for r in results] == [("points", 0), ("miles", 40)]
    balances = (await member_view(conn, "shop", "alice")).balances
    assert (balances["points"].available, balances["miles"].available) == (0, 0)


def test_a_fixed_date_ends_with_the_day_in_the_programs_time_zone() -> None:
    paris = Program(
        name="shop", timezone="Europe/Paris", expiry={"points": FixedDate(month=12, day=31)}
    )
    utc = paris.model_copy(update={"timezone": "UTC"})
    june = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    assert paris.lot_expiry("points", june) == datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    assert utc.lot_expiry("points", june) == datetime(2027, 1, 1, 0, 0, tzinfo=UTC)
    # 23:30 UTC on 31 December is already the next year in Paris.
    late = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    assert paris.lot_expiry("points", late) == datetime(2027, 12, 31, 23, 0, tzinfo=UTC)
