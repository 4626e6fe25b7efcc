"""`EmitEvents` started by name with the `temporal` CLI, as a service in any language would.

The CLI sends its ``--input`` text unchanged as a ``json/plain`` payload, as other SDKs
send JSON; the tests read the result and the failures from ``-o json``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment

from activities.emit import EmitActivities
from loyalty.models import EmitResult
from loyalty.settings import Settings
from loyalty.store.embedded import find_binary
from starter.client import LoyaltyClient
from tests.conftest import StartWorker
from tests.test_cli import deposit
from worker import build_worker
from workflows.emit import EMIT_EVENTS, EmitEvents

TEMPORAL = find_binary("temporal")


@dataclass(frozen=True)
class Execution:
    """What `temporal workflow execute -o json` printed, and its exit code."""

    code: int
    out: dict[str, Any]
    err: str

    @property
    def result(self) -> Any:
        return self.out["result"]

    @property
    def failure(self) -> dict[str, Any]:
        closing = self.out["closeEvent"]["workflowExecutionFailedEventAttributes"]
        failure: dict[str, Any] = closing["failure"]
        return failure

    @property
    def problems(self) -> list[str]:
        message: str = self.failure["message"]
        return message.splitlines()


async def execute(
    settings: Settings, workflow_id: str, events: Any = None, *options: str
) -> Execution:
    """`temporal workflow execute --type EmitEvents` with the events as its JSON input
    (text as given, or a value to serialize; None: no input)."""
    given = [] if events is None else ["--input", events if isinstance(events, str) else
                                       json.dumps({"events": events})]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        TEMPORAL, "workflow", "execute", "--type", EMIT_EVENTS,
        "--task-queue", settings.task_queue, "--workflow-id", workflow_id,
        "--address", settings.effective_temporal_address, "-o", "json", *given, *options,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):  # a hang guard only
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Execution(proc.returncode, json.loads(out) if out.strip() else {}, err.decode())


def purchase(event_id: str, amount: str, **extra: Any) -> str:
    """A purchase as JSON text, with ``amount`` written as a JSON number, digit for digit."""
    fields = {"type": "purchase", "event_id": event_id, "member_id": "m1",
              "order_id": event_id, "currency": "EUR", **extra}  # fmt: skip
    return json.dumps(fields)[:-1] + f', "amount": {amount}}}'


async def inbox(conn: asyncpg.Connection) -> list[str]:
    return [r["event_id"] for r in await conn.fetch("SELECT event_id FROM events ORDER BY id")]


def wid() -> str:
    return f"emit-{uuid.uuid4().hex}"


async def test_emit_events_accepts_a_batch_that_the_router_applies_with_money_exact(
    start_worker: StartWorker, client: LoyaltyClient, conn: asyncpg.Connection
) -> None:
    settings = await start_worker()
    batch = f'{{"events": [{json.dumps(deposit("e1"))}, {purchase("o1", "42.50")}]}}'
    run = await execute(settings, wid(), batch)
    assert run.code == 0, run.err
    assert run.result == {
        "results": [
            {"event_id": "e1", "program": "default", "status": "accepted"},
            {"event_id": "o1", "program": "default", "status": "accepted"},
        ]
    }
    assert await inbox(conn) == ["e1", "o1"]
    # Stored from the digits that were sent, not through a float.
    amount = await conn.fetchval("SELECT payload->>'amount' FROM events WHERE event_id = 'o1'")
    assert amount == "42.50"
    sent = [EmitResult(program="default", event_id=e, accepted=True) for e in ("e1", "o1")]
    outcomes = await client.wait(sent, timeout=30)
    assert [o.status for o in outcomes] == ["processed", "processed"]
    member = await client.member("m1")
    assert member.balances["points"].available == 120


async def test_events_sent_again_are_duplicates_and_written_once(
    start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    settings = await start_worker()
    first = await execute(settings, wid(), [deposit("e1")])
    assert first.code == 0, first.err
    # Another call (another workflow id): e1 again, and e2 twice in the call.
    again = await execute(settings, wid(), [deposit("e1"), deposit("e2"), deposit("e2")])
    assert again.code == 0, again.err
    assert [r["status"] for r in again.result["results"]] == ["duplicate", "accepted", "duplicate"]
    assert await inbox(conn) == ["e1", "e2"]


async def test_an_invalid_batch_fails_for_good_naming_each_field_and_writes_nothing(
    start_worker: StartWorker, conn: asyncpg.Connection, dev_env: WorkflowEnvironment
) -> None:
    settings = await start_worker()
    workflow_id = wid()
    batch = (
        f'{{"events": [{json.dumps(deposit("e1"))}, {json.dumps(deposit("e2", points=0))}, '
        f"{purchase('o1', '169.99999999999999999')}, "
        f'{json.dumps({**deposit("e3"), "extra": 1})}, 7, {{"type": "new_stage"}}]}}'
    )
    run = await execute(settings, workflow_id, batch)
    assert run.code != 0
    assert run.failure["applicationFailureInfo"]["type"] == "InvalidEvent"
    assert run.failure["applicationFailureInfo"]["nonRetryable"] is True
    expected = [
        "events[1].points: Input should be greater than 0",
        # As a float this amount is 170.0 and would pass: its digits reached the check.
        "events[2].amount: Decimal input should have no more than 4 decimal places",
        "events[3].extra: unknown field",
        "events[4]: must be an object",
        "events[5].type: 'new_stage' is derived by the engine and cannot be emitted",
    ]
    assert run.problems == expected
    # The same lines as one detail: a list of strings.
    assert run.failure["applicationFailureInfo"]["details"] == [expected]
    # Refused by the activity at its first attempt, not retried.
    history = await dev_env.client.get_workflow_handle(workflow_id).fetch_history()
    started = [
        event.activity_task_started_event_attributes.attempt
        for event in history.events
        if event.HasField("activity_task_started_event_attributes")
    ]
    assert started == [1]
    assert await inbox(conn) == []


@pytest.mark.parametrize(
    ("given", "problem"),
    [
        (None, 'input: required: {"events": [...]}'),
        ("[1]", 'input: must be a JSON object: {"events": [...]}'),
        ('{"event": []}', "event: unknown field\nevents: field required"),
        ('{"events": {}}', "events: must be a list of events"),
        (
            json.dumps({"events": [{}] * 1001}),
            "events: at most 1000 events per call, not 1001; split them",
        ),
        (
            '{"events": [{"type": "points_deposit", "program": "nope", "event_id": "e1", '
            '"member_id": "m1", "points": 1, "kind": "available", "reason": "x"}]}',
            "events[0].program: unknown program 'nope'; known: coffee, default",
        ),
    ],
)
async def test_a_malformed_call_is_refused_naming_what_is_wrong(
    start_worker: StartWorker, conn: asyncpg.Connection, given: str | None, problem: str
) -> None:
    settings = await start_worker()
    run = await execute(settings, wid(), given)
    assert run.code != 0
    assert run.failure["applicationFailureInfo"]["type"] == "InvalidEvent"
    assert run.problems == problem.splitlines()
    assert await inbox(conn) == []


async def test_a_reused_event_id_with_other_content_is_a_conflict_and_writes_nothing(
    start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    settings = await start_worker()
    assert (await execute(settings, wid(), [deposit("e1")])).code == 0
    run = await execute(settings, wid(), [deposit("e9"), deposit("e1", points=60)])
    assert run.code != 0
    assert run.failure["applicationFailureInfo"]["type"] == "EventConflict"
    assert run.problems == [
        "events[1].points: conflict: event_id 'e1' was already sent with another points"
    ]
    # Within one call: the first version is the call's own.
    run = await execute(settings, wid(), [deposit("e5"), deposit("e5", points=60, reason="x")])
    assert run.failure["applicationFailureInfo"]["type"] == "EventConflict"
    assert run.problems == [
        "events[1].points: conflict: event_id 'e5' comes earlier (events[0]) with another points",
        "events[1].reason: conflict: event_id 'e5' comes earlier (events[0]) with another reason",
    ]
    assert await inbox(conn) == ["e1"]


async def test_the_same_workflow_id_returns_the_first_result_and_inserts_once(
    start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    """With the id reuse policy RejectDuplicate, `execute` again with the same workflow id
    returns the first run and its result, whatever the new input; with the default
    policy (AllowDuplicate) it runs again, and the inbox answers duplicate."""
    settings = await start_worker()
    workflow_id = wid()
    policy = ("--id-reuse-policy", "RejectDuplicate")
    first = await execute(settings, workflow_id, [deposit("e1")], *policy)
    second = await execute(settings, workflow_id, [deposit("e1"), deposit("e2")], *policy)
    assert first.code == second.code == 0, second.err
    assert second.out["runId"] == first.out["runId"]
    assert (
        second.result
        == first.result
        == {"results": [{"event_id": "e1", "program": "default", "status": "accepted"}]}
    )
    assert await inbox(conn) == ["e1"]
    rerun = await execute(settings, workflow_id, [deposit("e1")])
    assert rerun.code == 0, rerun.err
    assert rerun.out["runId"] != first.out["runId"]
    assert rerun.result["results"][0]["status"] == "duplicate"
    assert await inbox(conn) == ["e1"]


async def test_a_database_outage_is_retried_until_the_events_are_in(
    settings: Settings,
    dev_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    pg_admin_dsn: str,
    database_url: str,
) -> None:
    """The activity's attempts fail while the database refuses connections; Temporal
    retries them, and the call completes once the database is back."""
    database = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(pg_admin_dsn)
    worker = build_worker(
        dev_env.client, settings, EmitActivities(pool, settings).all(), [EmitEvents]
    )
    try:
        async with worker:
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                database,
            )
            handle = await dev_env.client.start_workflow(
                EMIT_EVENTS,
                {"events": [deposit("e1")]},
                id=wid(),
                task_queue=settings.task_queue,
                execution_timeout=timedelta(seconds=60),
            )
            async with asyncio.timeout(30):
                while True:
                    pending = (await handle.describe()).raw_description.pending_activities
                    if pending and pending[0].attempt >= 2:
                        break
                    await asyncio.sleep(0.2)
            # Refused connections, failing the attempt but not the call.
            failure = pending[0].last_failure
            assert "not currently accepting connections" in failure.message
            assert not failure.application_failure_info.non_retryable
            await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
            async with asyncio.timeout(30):
                result = await handle.result()
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true')
        await admin.close()
    assert result == {"results": [{"event_id": "e1", "program": "default", "status": "accepted"}]}
    fresh = await asyncpg.connect(database_url)
    try:
        assert [r["event_id"] for r in await fresh.fetch("SELECT event_id FROM events")] == ["e1"]
    finally:
        await fresh.close()
