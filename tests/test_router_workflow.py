"""The EventRouter workflow on the time-skipping server: sessions, totals, continue-as-new."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from temporalio.testing import WorkflowEnvironment

from activities.router import InboxListener, RouterActivities
from loyalty.events import PointsDeposit
from loyalty.models import RouterInput, RouterProgress
from loyalty.router.processing import EventProcessor
from loyalty.settings import Settings
from starter.client import LoyaltyClient
from tests.conftest import TEST_APP
from worker import build_worker
from workflows.router import EventRouter


async def test_router_continues_as_new_and_carries_its_totals(
    time_env: WorkflowEnvironment,
    settings_env: dict[str, object],
    pool: asyncpg.Pool,
    client: LoyaltyClient,
    database_url: str,
) -> None:
    settings = Settings(**{**settings_env, "LOYALTY_ROUTER_SESSION_SECONDS": 0.3})  # type: ignore[arg-type]
    listener = InboxListener(database_url)
    activities = RouterActivities(
        pool, listener, EventProcessor(TEST_APP), settings, time_env.client
    )
    worker = build_worker(time_env.client, settings, [activities.route_events], [EventRouter])
    results = await client.emit_many(
        [
            PointsDeposit(
                event_id=f"e{i}", member_id="m1", points=2, kind="available", reason="test"
            )
            for i in range(25)
        ]
    )
    workflow_id = f"router-test-{uuid.uuid4().hex}"
    try:
        async with worker:
            handle = await time_env.client.start_workflow(
                EventRouter.run,
                RouterInput(program="default", partition=0, partitions=1, sessions_per_run=2),
                id=workflow_id,
                task_queue=settings.task_queue,
            )
            first_run = handle.result_run_id
            await client.wait(results, timeout=60)
            # Two sessions of 0.3 s make a run: wait for a later run to exist.
            async with asyncio.timeout(60):
                while (await handle.describe()).run_id == first_run:
                    await asyncio.sleep(0.2)
            latest = time_env.client.get_workflow_handle(workflow_id)
            totals = await latest.query(EventRouter.progress)
            assert isinstance(totals, RouterProgress)
            assert (totals.events, totals.applied) == (25, 25)
            await latest.terminate("test finished")
    finally:
        await listener.close()
    assert (await client.member("m1")).balances["points"].available == 50
