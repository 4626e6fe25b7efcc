"""The Housekeeping loop in Temporal, on the time-skipping server: months of daily runs.

The shop program: earned points wait 14 days, then mature; every lot expires 60 days
after it was earned (``Rolling(days=60)``); the app has a flow warning 7 days before
points expire (``BonusExpiring(days_before=7)``). Points are given as ``earned`` deposits
applied as the router applies them, at times relative to the Temporal server's clock
(which the time-skipping server moves on). No router runs: derived events stay in the
inbox, where the test counts them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest_asyncio
from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.housekeeping import HousekeepingActivities
from loyalty.app import LoyaltyApp, Program
from loyalty.events import BonusExpiring, PointsDeposit, any_event_adapter
from loyalty.flows import flow
from loyalty.ingest.inbox import insert_events
from loyalty.models import HousekeepingLoopInput, HousekeepingProgress
from loyalty.policies import Rolling
from loyalty.router.processing import EventProcessor
from loyalty.settings import Settings
from loyalty.store.db import Conn, create_pool, prepare_database
from loyalty.tiers import Schedule
from loyalty.triggers import BonusExpiring as BonusExpiringTrigger
from worker import build_worker
from workflows.housekeeping import Housekeeping, housekeeping_workflow_id

DAY = timedelta(days=1)
TIMEOUT = 60.0


@flow(trigger=BonusExpiringTrigger(days_before=7))
@workflow.defn
class WarnAWeekBefore:
    @workflow.run
    async def run(self, trigger: object) -> None:
        pass


def shop(**program: Any) -> LoyaltyApp:
    return LoyaltyApp(
        programs=[Program(name="shop", expiry={"points": Rolling(days=60)}, **program)],
        flows=[WarnAWeekBefore],
    )


async def earn(conn: Conn, app: LoyaltyApp, member: str, points: int, at: datetime) -> None:
    event = PointsDeposit(
        event_id=f"{member}-{at.isoformat()}", member_id=member, program="shop",
        points=points, kind="earned", reason="welcome", occurred_at=at,
    )  # fmt: skip
    await insert_events(conn, [event])
    async with conn.transaction():
        await EventProcessor(app).apply(conn, event)


async def balances(conn: Conn, member: str) -> dict[str, int]:
    rows = await conn.fetch(
        """SELECT kind, balance FROM accounts
           WHERE program = 'shop' AND member_id = $1 AND currency = 'points'""",
        member,
    )
    return {r["kind"]: r["balance"] for r in rows if r["kind"] in ("available", "earned")}


async def warnings(conn: Conn) -> list[BonusExpiring]:
    rows = await conn.fetch("SELECT payload FROM events WHERE type = 'bonus_expiring' ORDER BY id")
    found = [any_event_adapter.validate_python(r["payload"]) for r in rows]
    assert all(isinstance(e, BonusExpiring) for e in found)
    return found  # type: ignore[return-value]


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(database_url, size=4)
    yield created
    await created.close()


def housekeeping_worker(
    client: Client, settings: Settings, pool: asyncpg.Pool, app: LoyaltyApp, **options: Any
) -> Worker:
    activities = HousekeepingActivities(pool, app, settings, chunk=2)
    return build_worker(client, settings, activities.all(), [Housekeeping], **options)


async def start_loop(client: Client, settings: Settings) -> WorkflowHandle[Housekeeping, None]:
    return await client.start_workflow(
        Housekeeping.run,
        HousekeepingLoopInput(program="shop"),
        id=housekeeping_workflow_id(settings.task_queue, "shop"),
        task_queue=settings.task_queue,
    )


def loop_settings(database_url: str, queue: str) -> Settings:
    return Settings(LOYALTY_DATABASE_URL=database_url, LOYALTY_TASK_QUEUE=queue)  # type: ignore[arg-type]


async def test_months_of_daily_runs_mature_warn_once_and_expire(
    time_env: WorkflowEnvironment, database_url: str, pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    app = shop()  # housekeeping every day by default
    await prepare_database(database_url, app)
    t0 = await time_env.get_current_time()
    await earn(conn, app, "ann", 100, t0)  # matures on day 14, expires on day 60
    await earn(conn, app, "ann", 30, t0 + 20 * DAY)  # matures on day 34, expires on day 80
    await earn(conn, app, "bob", 10, t0)
    settings = loop_settings(database_url, "housekeeping-months")
    client = time_env.client
    async with housekeeping_worker(client, settings, pool, app, max_cached_workflows=0):
        handle = await start_loop(client, settings)
        await time_env.sleep(13 * DAY)
        assert await balances(conn, "ann") == {"available": 0, "earned": 130}
        await time_env.sleep(2 * DAY)  # day 15: the run of day 14 matured the first lot
        assert await balances(conn, "ann") == {"available": 100, "earned": 30}
        assert await balances(conn, "bob") == {"available": 10, "earned": 0}
        await time_env.sleep(37 * DAY)  # day 52
        assert await warnings(conn) == []
        await time_env.sleep(2 * DAY)  # day 54: the run of day 53 warned, 7 days ahead
        found = await warnings(conn)
        assert [(e.member_id, e.points, e.days_left, e.account) for e in found] == [
            ("ann", 100, 7, "points"),
            ("bob", 10, 7, "points"),
        ]
        assert found[0].expires_at == t0 + 60 * DAY
        assert found[0].occurred_at == t0 + 53 * DAY
        await time_env.sleep(5 * DAY)  # day 59: daily runs did not warn again
        assert len(await warnings(conn)) == 2
        assert await balances(conn, "ann") == {"available": 130, "earned": 0}
        await time_env.sleep(2 * DAY)  # day 61: the run of day 60 expired the first lots
        assert await balances(conn, "ann") == {"available": 30, "earned": 0}
        assert await balances(conn, "bob") == {"available": 0, "earned": 0}
        await time_env.sleep(21.5 * DAY)  # day 82½: the second lot was warned of, expired
        found = await warnings(conn)
        assert [(e.member_id, e.points, e.expires_at) for e in found[2:]] == [
            ("ann", 30, t0 + 80 * DAY)
        ]
        assert await balances(conn, "ann") == {"available": 0, "earned": 0}
        status = await handle.query(Housekeeping.status)
        assert status.runs == 82
        assert status.last is not None
        assert status.last.step == "done"
        runs = await conn.fetch(
            """SELECT matured_points, expired_points, reminders, duration
               FROM housekeeping_runs ORDER BY as_of"""
        )
        assert len(runs) == 82
        assert all(r["duration"] is not None for r in runs)
        assert [i + 1 for i, r in enumerate(runs) if r["matured_points"]] == [14, 34]
        assert [i + 1 for i, r in enumerate(runs) if r["expired_points"]] == [60, 80]
        assert [i + 1 for i, r in enumerate(runs) if r["reminders"]] == [53, 73]
        # Each run continued as new: the current execution's history is a few events.
        history = await handle.fetch_history()
        assert len(history.events) < 60
        await handle.terminate("test finished")


async def test_run_now_pause_and_resume(
    time_env: WorkflowEnvironment, database_url: str, pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    app = shop(housekeeping=Schedule(every=30 * DAY))
    await prepare_database(database_url, app)
    t0 = await time_env.get_current_time()
    for member in ("ann", "bob", "cid", "dan", "eve"):
        await earn(conn, app, member, 20, t0 - 20 * DAY)  # due, expiring on day 40
    settings = loop_settings(database_url, "housekeeping-controls")
    client = time_env.client
    async with housekeeping_worker(client, settings, pool, app, max_cached_workflows=0):
        handle = await start_loop(client, settings)
        await handle.signal(Housekeeping.pause)
        await time_env.sleep(35 * DAY)  # the run due on day 30 was skipped
        status = await handle.query(Housekeeping.status)
        assert (status.paused, status.runs) == (True, 0)
        assert await balances(conn, "ann") == {"available": 0, "earned": 20}
        # Run now runs even while paused, and answers with the run's counts.
        async with asyncio.timeout(TIMEOUT):
            done: HousekeepingProgress = await handle.execute_update(Housekeeping.run_now)
        assert (done.matured_points, done.expired_points, done.step) == (100, 0, "done")
        # Five accounts in chunks of two: three chunks, the last one short.
        assert (done.reminders, done.chunks) == (5, 3)
        assert done.finished_at is not None
        assert await balances(conn, "ann") == {"available": 20, "earned": 0}
        await handle.signal(Housekeeping.resume)
        await time_env.sleep(DAY)
        status = await handle.query(Housekeeping.status)
        assert status.paused is False
        assert status.next_run_at is not None
        await handle.terminate("test finished")
