"""The router's totals count what committed, once, even when a session times out.

A session whose batch outlasts its heartbeat timeout is retried by Temporal while the
stale attempt finishes its transaction; the stale attempt's result never reaches the
workflow, but its batch committed. The totals must count it once, and the stale attempt
must end with one log line naming the session and why it stopped, not a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

import asyncpg
import pytest
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import WorkflowHandle
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

# The test's own lock: the router's ledger writes wait for it while the test holds it.
GATE = 424_242
EVENTS = 40


async def second_attempt_started(handle: WorkflowHandle[EventRouter, None]) -> None:
    """Wait until Temporal has given up on the first attempt and started a retry."""
    while True:
        pending = (await handle.describe()).raw_description.pending_activities
        if (
            pending
            and pending[0].attempt >= 2
            and pending[0].state == (PendingActivityState.PENDING_ACTIVITY_STATE_STARTED)
        ):
            return
        await asyncio.sleep(0.2)


@pytest.mark.timeout(180)
async def test_a_timed_out_session_is_counted_once_and_logged_in_one_line(
    dev_env: WorkflowEnvironment,
    settings_env: dict[str, object],
    pool: asyncpg.Pool,
    client: LoyaltyClient,
    conn: asyncpg.Connection,
    database_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await conn.execute(
        f"""CREATE FUNCTION gate() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_advisory_xact_lock_shared({GATE}); RETURN NEW; END $$;
            CREATE TRIGGER gate BEFORE INSERT ON ledger_transactions
                FOR EACH ROW EXECUTE FUNCTION gate();"""
    )
    # Long enough that the stale attempt is still in its session when it learns it timed out.
    settings = Settings(**{**settings_env, "LOYALTY_ROUTER_SESSION_SECONDS": 20})  # type: ignore[arg-type]
    listener = InboxListener(database_url)
    activities = RouterActivities(
        pool, listener, EventProcessor(TEST_APP), settings, dev_env.client
    )
    worker = build_worker(dev_env.client, settings, [activities.route_events], [EventRouter])
    results = await client.emit_many(
        PointsDeposit(event_id=f"e{i}", member_id=f"m{i}", points=1, kind="available",
                      reason="t")
        for i in range(EVENTS)
    )  # fmt: skip
    workflow_id = f"router-test-{uuid.uuid4().hex}"
    caplog.set_level(logging.INFO)
    try:
        async with worker:
            await conn.execute("SELECT pg_advisory_lock($1)", GATE)
            handle = await dev_env.client.start_workflow(
                EventRouter.run,
                RouterInput(program="default", partition=0, partitions=1, sessions_per_run=1),
                id=workflow_id,
                task_queue=settings.task_queue,
            )
            # The first attempt's batch waits on the gate past the heartbeat timeout.
            async with asyncio.timeout(60):
                await second_attempt_started(handle)
            await conn.execute("SELECT pg_advisory_unlock($1)", GATE)
            await client.wait(results, timeout=60)
            # The session that ends is the retry; its run then continues as new.
            async with asyncio.timeout(90):
                while (await handle.describe()).run_id == handle.result_run_id:
                    await asyncio.sleep(0.2)
            totals = await dev_env.client.get_workflow_handle(workflow_id).query(
                EventRouter.progress
            )
            await dev_env.client.get_workflow_handle(workflow_id).terminate("test finished")
    finally:
        await listener.close()
    assert isinstance(totals, RouterProgress)
    assert (totals.events, totals.applied, totals.batches) == (EVENTS, EVENTS, 1)
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == EVENTS

    tracebacks = [r for r in caplog.records if r.exc_info or r.exc_text]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]
    # Only the first run's session timed out; terminating the run that followed may stop
    # its session too, which is logged in its own words.
    first_run = handle.result_run_id
    stopped = [
        r.getMessage()
        for r in caplog.records
        if "router session" in r.getMessage() and f"'{first_run}'" in r.getMessage()
    ]
    assert len(stopped) == 1, stopped
    assert "router session of program default, partition 1 of 1 (attempt 1)" in stopped[0]
    assert "heartbeat timed out" in stopped[0], stopped
    # A session stopped by the terminate does not claim its heartbeat timed out.
    others = [
        r.getMessage()
        for r in caplog.records
        if "router session" in r.getMessage() and f"'{first_run}'" not in r.getMessage()
    ]
    assert not [m for m in others if "heartbeat timed out" in m], others
