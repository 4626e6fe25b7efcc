"""The TierMaintenance loop in Temporal: months on the time-skipping server, operator
controls, and a worker restarted in the middle of a run on the dev server.

The coffee program's scheme: bronze (0), silver (30, retain 20), gold (60, retain 50)
over a rolling 365 days. Points are earned by purchases applied as the router applies
them, at times relative to the Temporal server's clock (which the time-skipping server
moves on).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest_asyncio
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.maintenance import MaintenanceActivities
from loyalty.app import LoyaltyApp, Program
from loyalty.events import Purchase
from loyalty.ingest.inbox import insert_events
from loyalty.models import MaintenanceLoopInput, MaintenanceProgress
from loyalty.router.processing import EventProcessor
from loyalty.rules import PerAmount
from loyalty.settings import Settings
from loyalty.store.db import Conn, create_pool, prepare_database
from loyalty.tiers import Schedule, Tier, TierScheme
from worker import build_worker, start_loops
from workflows.maintenance import TierMaintenance, maintenance_workflow_id

DAY = timedelta(days=1)
TIMEOUT = 60.0
TIERS = (
    Tier(name="bronze", threshold=0),
    Tier(name="silver", threshold=30, retain=20),
    Tier(name="gold", threshold=60, retain=50),
)


def coffee(**scheme: Any) -> LoyaltyApp:
    scheme.setdefault("window", timedelta(days=365))
    program = Program(
        name="coffee", earn_rules=(PerAmount(),),
        tier_schemes=(TierScheme(tiers=TIERS, **scheme),),
    )  # fmt: skip
    return LoyaltyApp(programs=[program])


async def buy(conn: Conn, app: LoyaltyApp, member: str, amount: int, at: datetime) -> None:
    event = Purchase(
        event_id=f"{member}-{at.isoformat()}", member_id=member, program="coffee",
        order_id=f"o-{member}-{at.isoformat()}", amount=Decimal(amount), currency="EUR",
        occurred_at=at,
    )  # fmt: skip
    await insert_events(conn, [event])
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO members (program, member_id) VALUES ('coffee', $1) ON CONFLICT DO NOTHING",
            member,
        )
        await EventProcessor(app).apply(conn, event)


async def tiers(conn: Conn) -> dict[str, str]:
    rows = await conn.fetch(
        """SELECT m.member_id, coalesce(t.tier, 'bronze') AS tier FROM members AS m
           LEFT JOIN member_tiers AS t ON t.program = m.program AND t.member_id = m.member_id
           ORDER BY m.member_id"""
    )
    return {r["member_id"]: r["tier"] for r in rows}


async def maintenance_moves(conn: Conn) -> list[tuple[str, str, str]]:
    rows = await conn.fetch(
        """SELECT member_id, payload->>'from_tier' AS f, payload->>'to_tier' AS t FROM events
           WHERE type = 'new_stage' AND payload->>'cause' = 'maintenance' ORDER BY id"""
    )
    return [(r["member_id"], r["f"], r["t"]) for r in rows]


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    created = await create_pool(database_url, size=4)
    yield created
    await created.close()


def loop_settings(database_url: str, **extra: Any) -> Settings:
    return Settings(LOYALTY_DATABASE_URL=database_url, **extra)  # type: ignore[arg-type]


def maintenance_worker(
    client: Client, settings: Settings, pool: asyncpg.Pool, app: LoyaltyApp, **options: Any
) -> Worker:
    activities = MaintenanceActivities(pool, app, settings)
    return build_worker(client, settings, activities.all(), [TierMaintenance], **options)


async def start_loop(
    client: Client, settings: Settings, **options: Any
) -> WorkflowHandle[TierMaintenance, None]:
    return await client.start_workflow(
        TierMaintenance.run,
        MaintenanceLoopInput(program="coffee", scheme="main"),
        id=maintenance_workflow_id(settings.task_queue, "coffee", "main"),
        task_queue=settings.task_queue,
        **options,
    )


async def test_months_of_scheduled_runs_demote_after_a_quiet_year_and_the_grace_period(
    time_env: WorkflowEnvironment, database_url: str, pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    app = coffee(grace_period=30 * DAY, schedule=Schedule(every=30 * DAY))
    await prepare_database(database_url, app)
    t0 = await time_env.get_current_time()
    await buy(conn, app, "ann", 70, t0)  # gold, then quiet
    await buy(conn, app, "bob", 70, t0)
    await buy(conn, app, "bob", 60, t0 + 200 * DAY)  # keeps gold's retain a year on
    settings = loop_settings(database_url, LOYALTY_TASK_QUEUE="loop-months")
    client = time_env.client
    async with maintenance_worker(client, settings, pool, app, max_cached_workflows=0):
        handle = await start_loop(client, settings)
        # Runs every 30 days from the start: day 390 finds ann below (grace from there),
        # day 420 demotes her.
        await time_env.sleep(400 * DAY)
        assert await tiers(conn) == {"ann": "gold", "bob": "gold"}
        assert (
            await conn.fetchval("SELECT count(*) FROM member_tiers WHERE below_since IS NOT NULL")
            == 1
        )
        await time_env.sleep(25 * DAY)
        assert await tiers(conn) == {"ann": "bronze", "bob": "gold"}
        assert await maintenance_moves(conn) == [("ann", "gold", "bronze")]
        status = await handle.query(TierMaintenance.status)
        assert status.runs == 14
        assert status.last is not None
        assert status.last.demoted == 1
        runs = await conn.fetchval(
            "SELECT count(*) FROM maintenance_runs WHERE finished_at IS NOT NULL"
        )
        assert runs == 14
        # Each run continued as new: the current execution's history is a few events.
        history = await handle.fetch_history()
        assert len(history.events) < 40
        await handle.terminate("test finished")


async def test_run_now_pause_and_resume(
    time_env: WorkflowEnvironment, database_url: str, pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    app = coffee(schedule=Schedule(every=30 * DAY))
    await prepare_database(database_url, app)
    t0 = await time_env.get_current_time()
    await buy(conn, app, "ann", 70, t0 - 400 * DAY)  # gold long ago: due for demotion
    settings = loop_settings(database_url, LOYALTY_TASK_QUEUE="loop-controls")
    client = time_env.client
    async with maintenance_worker(client, settings, pool, app, max_cached_workflows=0):
        # Paused with the start: the signal is handled in the loop's first workflow task,
        # before its run method, which must not undo it.
        handle = await start_loop(client, settings, start_signal="pause")
        await time_env.sleep(40 * DAY)
        status = await handle.query(TierMaintenance.status)
        assert (status.paused, status.runs) == (True, 0)
        assert await tiers(conn) == {"ann": "gold"}
        # Run now runs even while paused, and answers with the run's counts.
        async with asyncio.timeout(TIMEOUT):
            done: MaintenanceProgress = await handle.execute_update(TierMaintenance.run_now)
        assert (done.scanned, done.demoted, done.finished_at is not None) == (1, 1, True)
        assert await tiers(conn) == {"ann": "bronze"}
        await handle.signal(TierMaintenance.resume)
        await time_env.sleep(DAY)
        status = await handle.query(TierMaintenance.status)
        assert status.paused is False
        assert status.next_run_at is not None
        await handle.terminate("test finished")


async def test_a_worker_restarted_in_the_middle_of_a_run_demotes_each_member_once(
    dev_env: WorkflowEnvironment, database_url: str, pool: asyncpg.Pool, conn: asyncpg.Connection
) -> None:
    app = coffee(schedule=Schedule(every=DAY))
    await prepare_database(database_url, app)
    now = await conn.fetchval("SELECT now()")
    members = [f"m{n:02d}" for n in range(40)]
    for member in members:
        await buy(conn, app, member, 70, now - 400 * DAY)
    settings = loop_settings(
        database_url, LOYALTY_TASK_QUEUE=f"loop-restart-{id(conn)}", LOYALTY_MAINTENANCE_CHUNK=2,
        LOYALTY_MAINTENANCE_PAUSE_SECONDS=0.1,
    )  # fmt: skip
    client = dev_env.client
    first = maintenance_worker(client, settings, pool, app)
    worker_task = asyncio.create_task(first.run())
    try:
        await start_loops(client, settings, app)
        handle = client.get_workflow_handle_for(
            TierMaintenance.run, maintenance_workflow_id(settings.task_queue, "coffee", "main")
        )
        update = asyncio.create_task(handle.execute_update(TierMaintenance.run_now))
        async with asyncio.timeout(TIMEOUT):
            while (await conn.fetchval("SELECT max(chunks) FROM maintenance_runs") or 0) < 3:
                await asyncio.sleep(0.02)
        await first.shutdown()  # the run is cancelled in the middle
        await worker_task
        stopped = await conn.fetchrow("SELECT chunks, finished_at FROM maintenance_runs")
        assert stopped["finished_at"] is None
        assert 3 <= stopped["chunks"] < 21
        async with maintenance_worker(client, settings, pool, app):
            async with asyncio.timeout(TIMEOUT):
                done = await update
        # 20 full chunks, and an empty one that finds the end.
        assert (done.scanned, done.demoted, done.chunks) == (40, 40, 21)
        assert await tiers(conn) == dict.fromkeys(members, "bronze")
        moves = await maintenance_moves(conn)
        assert sorted(moves) == [(m, "gold", "bronze") for m in members]
        await handle.terminate("test finished")
    finally:
        if not worker_task.done():
            await first.shutdown()
        with contextlib.suppress(Exception):
            await worker_task
