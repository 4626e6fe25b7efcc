"""Changing a flow's code without breaking its running journeys (`workflow.patched`).

A journey of `tests.versioning_v1` starts the normal way (emit → router batch → outbox →
start) and sleeps 30 days; its worker stops; a worker with `tests.versioning_v2` takes
the same task queue; the clock skips. The old journey finishes with version 1's effects,
a journey started after the deployment takes version 2's path, and neither fails a
workflow task. The `Replayer` then checks the histories: version 2 replays both, the
unguarded `tests.versioning_v2_unsafe` fails on version 1's history with a
`NondeterminismError`, which is what a worker running it would do to that journey.

The router's work is done in process, as its activity does it in each round
(`process_batch`, then `start_journeys`), against the time-skipping server: a router
activity left running there would hold its clock still.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from types import ModuleType
from typing import Any

import asyncpg
import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType, IndexedValueType, WorkflowTaskFailedCause
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.journeys import JourneyActivities
from loyalty.events import Activity
from loyalty.flows.outbox import start_journeys
from loyalty.router.processing import EventProcessor, process_batch
from loyalty.settings import Settings
from loyalty.store.db import prepare_database
from loyalty.temporal import DATA_CONVERTER, SEARCH_ATTRIBUTES
from starter.client import LoyaltyClient
from tests import versioning_v1, versioning_v2, versioning_v2_unsafe

TIMEOUT = 30.0
# The sandbox of `worker.build_worker`.
RUNNER = SandboxedWorkflowRunner(
    restrictions=SandboxRestrictions.default.with_passthrough_modules("loyalty")
)


def signup(event_id: str, member: str) -> Activity:
    return Activity(event_id=event_id, member_id=member, name="signup")


@pytest.fixture
def settings(database_url: str, tmp_path: Any) -> Settings:
    """The test's settings: its database and task queue; Temporal is the time server."""
    return Settings(
        LOYALTY_HOME=tmp_path / "home",
        LOYALTY_DATABASE_URL=database_url,
        LOYALTY_TASK_QUEUE=f"test-{uuid.uuid4().hex}",
    )  # type: ignore[call-arg]


@pytest.fixture
async def loyalty(settings: Settings) -> AsyncIterator[LoyaltyClient]:
    async with await LoyaltyClient.connect(settings, versioning_v1.app) as client:
        yield client


async def add_search_attributes(temporal: Client) -> None:
    """The router's search attributes, on the time server (which cannot list them, so
    `worker.ensure_search_attributes` does not add them there)."""
    await temporal.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=temporal.namespace,
            search_attributes={
                key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for key in SEARCH_ATTRIBUTES
            },
        )
    )


@asynccontextmanager
async def journey_worker(
    temporal: Client, settings: Settings, pool: asyncpg.Pool, version: ModuleType
) -> AsyncIterator[None]:
    """A worker for one version of the app's journeys, on the test's task queue, as
    `worker.build_worker` builds it (``loyalty`` passes through the sandbox, the
    toolkit's activities), but without a workflow cache.

    With a cache, the server sends a journey's next task to the worker that ran it last
    (its sticky queue) and, on a real server, moves it to the task queue when that worker
    is gone; the time-skipping server never does, so the journey would hang.
    """
    async with Worker(
        temporal,
        task_queue=settings.task_queue,
        workflows=[version.Welcome],
        activities=JourneyActivities(pool, version.app).all(),
        max_cached_workflows=0,
        workflow_runner=RUNNER,
    ):
        yield


async def route(
    conn: asyncpg.Connection, temporal: Client, settings: Settings, version: ModuleType
) -> None:
    """One round of the router's activity: apply a batch, start its journeys."""
    processor = EventProcessor(version.app)
    await process_batch(
        conn, processor, program="default", partitions=1, partition=0, batch_size=100,
        max_attempts=5, task_queue=settings.task_queue,
    )  # fmt: skip
    await start_journeys(
        conn, temporal, version.app, program="default", partitions=1, partition=0,
        task_queue=settings.task_queue,
    )  # fmt: skip


async def journey_of(conn: asyncpg.Connection, member: str) -> str:
    workflow_id = await conn.fetchval(
        "SELECT workflow_id FROM journey_starts WHERE member_id = $1 AND started_at IS NOT NULL",
        member,
    )
    assert workflow_id is not None, f"no started journey for {member}"
    return str(workflow_id)


async def sleeping(handle: WorkflowHandle[Any, Any]) -> None:
    """Wait until the journey's timer is started: its first step is in its history."""
    async with asyncio.timeout(TIMEOUT):
        while True:
            history = await handle.fetch_history()
            if any(e.event_type == EventType.EVENT_TYPE_TIMER_STARTED for e in history.events):
                return
            await asyncio.sleep(0.1)


async def ledger(conn: asyncpg.Connection, workflow_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT idempotency_key FROM ledger_transactions WHERE idempotency_key LIKE $1 ORDER BY id",
        f"journey:{workflow_id}:%",
    )
    return [r["idempotency_key"].rsplit(":", 1)[1] for r in rows]


async def messages(conn: asyncpg.Connection, workflow_id: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT template FROM message_log WHERE workflow_id = $1 ORDER BY id", workflow_id
    )
    return [r["template"] for r in rows]


async def skip_until_closed(
    time_env: WorkflowEnvironment, *handles: WorkflowHandle[Any, Any]
) -> None:
    """Skip the server's clock until the journeys are closed: the router's handles are
    plain ones, whose ``result()`` does not skip time."""
    async with asyncio.timeout(TIMEOUT):
        for handle in handles:
            while (await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
                await time_env.sleep(timedelta(days=1))


def replayer(version: ModuleType) -> Replayer:
    """A replayer with the worker's sandbox (``loyalty`` passes through)."""
    return Replayer(
        workflows=[version.Welcome],
        data_converter=DATA_CONVERTER,
        workflow_runner=RUNNER,
    )


def task_failures(history: WorkflowHistory) -> list[tuple[int, str]]:
    """(cause, message) of every failed workflow task in the history."""
    return [
        (e.workflow_task_failed_event_attributes.cause,
         e.workflow_task_failed_event_attributes.failure.message)
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED
    ]  # fmt: skip


async def test_a_patched_change_keeps_running_journeys_on_their_version(
    time_env: WorkflowEnvironment,
    settings: Settings,
    loyalty: LoyaltyClient,
    pool: asyncpg.Pool,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    await prepare_database(database_url, versioning_v1.app)
    temporal = time_env.client
    await add_search_attributes(temporal)
    async with journey_worker(temporal, settings, pool, versioning_v1):
        await loyalty.emit(signup("s1", "old"))
        await route(conn, temporal, settings, versioning_v1)
        old = temporal.get_workflow_handle(await journey_of(conn, "old"))
        await sleeping(old)
    assert await ledger(conn, old.id) == ["welcome"]

    # Deployed: version 2 on the same task queue; the old journey is still asleep.
    async with journey_worker(temporal, settings, pool, versioning_v2):
        await loyalty.emit(signup("s2", "new"))
        await route(conn, temporal, settings, versioning_v2)
        new = temporal.get_workflow_handle(await journey_of(conn, "new"))
        await sleeping(new)
        await skip_until_closed(time_env, old, new)
        assert [await old.result(), await new.result()] == ["v1", "v2"]
    for handle in (old, new):
        assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
        assert task_failures(await handle.fetch_history()) == []
    assert old.id == f"journey/default/VersionedWelcome/old/event/s1@{settings.task_queue}"
    # Version 1's effects for the journey it began: 50 + 50 points, no message.
    assert await ledger(conn, old.id) == ["welcome", "later"]
    assert await messages(conn, old.id) == []
    assert (await loyalty.member("old")).balances["points"].available == 100
    # Version 2's for the journey begun after the deployment: 50 points and a message.
    assert await ledger(conn, new.id) == ["welcome"]
    assert await messages(conn, new.id) == ["welcome_month_later"]
    assert (await loyalty.member("new")).balances["points"].available == 50

    # The check to run before deploying: replay the histories with the new code.
    old_history = await old.fetch_history()
    new_history = await new.fetch_history()
    await replayer(versioning_v2).replay_workflow(old_history)
    await replayer(versioning_v2).replay_workflow(new_history)
    await replayer(versioning_v1).replay_workflow(old_history)
    # Without the guard, version 2 does not match what version 1's journey did.
    with pytest.raises(workflow.NondeterminismError):
        await replayer(versioning_v2_unsafe).replay_workflow(old_history)
    failed = await replayer(versioning_v2_unsafe).replay_workflow(
        old_history, raise_on_replay_failure=False
    )
    assert isinstance(failed.replay_failure, workflow.NondeterminismError)


async def test_an_unguarded_change_fails_the_workflow_task_of_a_sleeping_journey(
    time_env: WorkflowEnvironment,
    settings: Settings,
    loyalty: LoyaltyClient,
    pool: asyncpg.Pool,
    conn: asyncpg.Connection,
    database_url: str,
) -> None:
    await prepare_database(database_url, versioning_v1.app)
    temporal = time_env.client
    await add_search_attributes(temporal)
    async with journey_worker(temporal, settings, pool, versioning_v1):
        await loyalty.emit(signup("s1", "old"))
        await route(conn, temporal, settings, versioning_v1)
        old = temporal.get_workflow_handle(await journey_of(conn, "old"))
        await sleeping(old)
    # Before deploying, the replayer tells the unsafe change from the patched one.
    asleep = await old.fetch_history()
    await replayer(versioning_v2).replay_workflow(asleep)
    with pytest.raises(workflow.NondeterminismError):
        await replayer(versioning_v2_unsafe).replay_workflow(asleep)

    # Deployed anyway: the timer fires, the worker replays the journey and cannot match it.
    async with journey_worker(temporal, settings, pool, versioning_v2_unsafe):
        async with asyncio.timeout(TIMEOUT):
            while not task_failures(await old.fetch_history()):
                await time_env.sleep(timedelta(days=1))
    [(cause, message), *_] = task_failures(await old.fetch_history())
    assert cause == WorkflowTaskFailedCause.WORKFLOW_TASK_FAILED_CAUSE_NON_DETERMINISTIC_ERROR
    assert "Nondeterminism error" in message
    assert "journey_award_points" in message
    # The journey does not fail: it retries its task until a worker with compatible
    # code takes it; meanwhile nothing of version 2 happened.
    assert (await old.describe()).status == WorkflowExecutionStatus.RUNNING
    assert await ledger(conn, old.id) == ["welcome"]
    assert await messages(conn, old.id) == []
    await old.terminate("test finished")
