"""``bonus_expiring`` reminders, against real PostgreSQL (`loyalty.ledger.reminders`).

The shop program has two currencies, points expiring 60 days after each lot was earned
and miles 90 days after; its app has flows warning 7 and 30 days before points expire.
Deposits are applied with `EventProcessor.apply` as the router applies them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
from temporalio import workflow

from loyalty.app import LoyaltyApp, Program
from loyalty.events import BonusExpiring, PointsDeposit, PointsWithdrawal, any_event_adapter
from loyalty.flows import flow
from loyalty.ingest.derived import derived_id
from loyalty.ingest.inbox import insert_events
from loyalty.ledger.maturing import expire_due
from loyalty.ledger.reminders import derive_reminders, reminder_days
from loyalty.policies import Inactivity, Rolling
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
        event_id=f"bonus_expiring:{n}:{account}:{expires_at.isoformat()}:{member}",
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
    expires = (T0 + 60 * DAY).isoformat()
    assert [e.event_id for e in await reminders(conn)] == [
        derived_id("bonus_expiring", 7, "points", expires, member),
        derived_id("bonus_expiring", 30, "points", expires, member),
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
