"""What the Web UI shows of the long-lived workflows across continue-as-new.

Temporal keeps a workflow's static summary on its first run only (a continue-as-new
command carries no user metadata), so every run of a loop or a router names what it is
in its current details; a run that has continued as new no longer reads "Running".
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from activities.router import InboxListener, RouterActivities
from loyalty.events import PointsDeposit
from loyalty.models import RouterInput
from loyalty.router.processing import EventProcessor
from loyalty.settings import Settings
from starter.client import LoyaltyClient
from tests.conftest import TEST_APP, StartWorker
from tests.e2e_app import app
from worker import build_worker
from workflows.housekeeping import Housekeeping, housekeeping_workflow_id
from workflows.maintenance import TierMaintenance, maintenance_workflow_id
from workflows.router import EventRouter

TIMEOUT = 60.0


async def current_details(client: Client, workflow_id: str, run_id: str | None = None) -> str:
    """The current details of a run, as the Web UI reads them (a closed run is replayed)."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


async def next_run(handle: WorkflowHandle[object, object], first_run: str | None) -> str:
    """Wait until the workflow has continued as new; the new run's id."""
    async with asyncio.timeout(TIMEOUT):
        while (run_id := (await handle.describe()).run_id) == first_run:
            await asyncio.sleep(0.1)
    return run_id


async def test_loops_name_themselves_after_continue_as_new_and_a_closed_run_is_not_running(
    start_worker: StartWorker, dev_env: WorkflowEnvironment
) -> None:
    settings = await start_worker(app=app)
    client = dev_env.client
    loops = {
        maintenance_workflow_id(settings.task_queue, "coffee", "main"): (
            TierMaintenance.run_now,
            "Tier maintenance of program coffee, scheme main",
        ),
        housekeeping_workflow_id(settings.task_queue, "coffee"): (
            Housekeeping.run_now,
            "Housekeeping of program coffee",
        ),
    }
    for workflow_id, (run_now, summary) in loops.items():
        handle = client.get_workflow_handle(workflow_id)
        first = await handle.describe()
        assert await first.static_summary() == summary
        async with asyncio.timeout(TIMEOUT):
            await handle.execute_update(run_now)  # type: ignore[arg-type]
        later = await next_run(handle, first.run_id)

        shown = await current_details(client, workflow_id, later)
        assert shown.splitlines()[0] == f"**{summary}**", shown
        assert "Last run (as of " in shown, shown

        closed = await current_details(client, workflow_id, first.run_id)
        assert closed.splitlines()[0] == f"**{summary}**", closed
        assert "Running" not in closed, closed
        assert "Continued as new" in closed, closed


async def test_a_router_names_itself_in_every_run(
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
        [PointsDeposit(event_id="e1", member_id="m1", points=2, kind="available", reason="t")]
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
            await client.wait(results, timeout=TIMEOUT)
            later = await next_run(handle, handle.result_run_id)
            shown = await current_details(time_env.client, workflow_id, later)
            assert shown.splitlines()[0] == "**Event router of program default, partition 1 of 1**"
            assert "1 events in " in shown, shown
            await time_env.client.get_workflow_handle(workflow_id).terminate("test finished")
    finally:
        await listener.close()
