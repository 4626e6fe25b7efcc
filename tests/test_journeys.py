"""Journeys: recorded with their trigger, started after commit, toolkit steps applied once."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from temporalio.client import (
    Client,
    Interceptor,
    OutboundInterceptor,
    StartWorkflowInput,
    WorkflowHandle,
)
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.journeys import JourneyActivities
from loyalty.events import Activity
from loyalty.flows import outbox
from loyalty.models import (
    AwardPointsInput,
    GetMemberInput,
    RemovePointsInput,
    SendMessageInput,
)
from loyalty.store.db import prepare_database
from loyalty.temporal import FLOW, MEMBER_ID, PROGRAM, TRIGGER
from starter.client import LoyaltyClient
from tests.conftest import StartWorker
from tests.journeys_app import Welcome, app


def login(event_id: str, member: str = "m1", program: str = "default") -> Activity:
    return Activity(event_id=event_id, member_id=member, name="web_login", program=program)


async def started(conn: asyncpg.Connection, count: int, timeout: float = 30) -> list[str]:
    """The ids of the started journeys, once ``count`` of them are started."""
    async with asyncio.timeout(timeout):
        while True:
            rows = await conn.fetch(
                "SELECT workflow_id FROM journey_starts WHERE started_at IS NOT NULL "
                "ORDER BY workflow_id"
            )
            if len(rows) >= count:
                return [r["workflow_id"] for r in rows]
            await asyncio.sleep(0.1)


async def finish(client: Client, workflow_ids: list[str]) -> list[Any]:
    handles: list[WorkflowHandle[Any, Any]] = [client.get_workflow_handle(w) for w in workflow_ids]
    async with asyncio.timeout(30):
        return [await h.result() for h in handles]


async def test_an_event_starts_one_journey_per_matching_flow_with_search_attributes(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    settings = await start_worker(app=app)
    queue = settings.task_queue
    outcomes = await client.wait([await client.emit(login("e1"))], timeout=30)
    # No earn rule: no effect on the ledger, and still a trigger.
    assert [o.describe() for o in outcomes] == ["no_effect"]
    ids = await started(conn, 2)
    # The coffee-only flow does not start for a default-program event.
    assert ids == [
        f"journey/default/LoginBonus/m1/event/e1@{queue}",
        f"journey/default/first-login/m1@{queue}",
    ]
    results = await finish(dev_env.client, ids)
    assert results[0] in (25, 125)  # LoginBonus reads the balance; FirstLogin may be first
    description = await dev_env.client.get_workflow_handle(ids[0]).describe()
    attributes = description.typed_search_attributes
    assert (
        attributes.get(MEMBER_ID),
        attributes.get(FLOW),
        attributes.get(PROGRAM),
        attributes.get(TRIGGER),
    ) == ("m1", "LoginBonus", "default", "activity")
    assert description.task_queue == queue
    assert await description.static_summary() == (
        "Journey LoginBonus of member m1 in program default, triggered by activity e1"
    )
    member = await client.member("m1")
    assert member.balances["points"].available == 125
    keys = await conn.fetch(
        "SELECT idempotency_key FROM ledger_transactions ORDER BY idempotency_key"
    )
    assert [r["idempotency_key"] for r in keys] == [
        f"journey:journey/default/LoginBonus/m1/event/e1@{queue}:login-bonus",
        f"journey:journey/default/first-login/m1@{queue}:step-1",
    ]
    messages = await conn.fetch("SELECT member_id, template, channel, data FROM message_log")
    assert [dict(r) for r in messages] == [
        {
            "member_id": "m1",
            "template": "thanks_for_visiting",
            "channel": "email",
            "data": {"points": 25},
        }
    ]


async def test_duplicate_trigger_and_once_per_member_start_one_journey(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    await start_worker(app=app)
    results = [await client.emit(login("e1")), await client.emit(login("e1"))]
    results.append(await client.emit(login("e2")))
    outcomes = await client.wait(results, timeout=30)
    assert [o.describe() for o in outcomes] == ["no_effect", "duplicate", "no_effect"]
    # e1 and e2 each start a LoginBonus; the once-per-member flow starts once.
    ids = await started(conn, 3)
    assert len(ids) == 3
    assert sum("/first-login/" in i for i in ids) == 1
    await finish(dev_env.client, ids)
    # Another partition round cannot start more: the outbox holds exactly these.
    await asyncio.sleep(0.5)
    assert await conn.fetchval("SELECT count(*) FROM journey_starts") == 3
    assert (await client.member("m1")).balances["points"].available == 25 + 25 + 100


async def test_a_journey_recorded_but_not_started_is_started_by_the_next_round(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    settings_env: dict[str, object],
    dev_env: WorkflowEnvironment,
) -> None:
    # As after a crash between the batch's commit and the start: the row is committed,
    # started_at is NULL, no workflow exists.
    queue = str(settings_env["LOYALTY_TASK_QUEUE"])
    workflow_id = f"journey/default/LoginBonus/m9/event/lost@{queue}"
    event = login("lost", member="m9")
    await conn.execute(
        """INSERT INTO journey_starts
               (workflow_id, program, flow, member_id, event_row_id, event_id, event_type,
                payload)
           VALUES ($1, 'default', 'LoginBonus', 'm9', 0, 'lost', 'activity', $2)""",
        workflow_id, event.model_dump(mode="json"),
    )  # fmt: skip
    await start_worker(app=app)
    # A batch for another member; the round after it starts the leftover too.
    await client.wait([await client.emit(login("e1", member="m1"))], timeout=30)
    ids = await started(conn, 3)
    assert workflow_id in ids
    await finish(dev_env.client, [workflow_id])
    assert (await client.member("m9")).balances["points"].available == 25
    row = await conn.fetchrow(
        "SELECT attempts, last_error FROM journey_starts WHERE workflow_id = $1", workflow_id
    )
    assert (row["attempts"], row["last_error"]) == (1, None)


class HeldStarts(Interceptor):
    """Holds every journey's start until ``release`` is set (a slow or busy Temporal)."""

    def __init__(self) -> None:
        self.release, self.attempted = asyncio.Event(), asyncio.Event()
        self.attempts: Counter[str] = Counter()

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        held = self

        class Outbound(OutboundInterceptor):
            async def start_workflow(self, input: StartWorkflowInput) -> WorkflowHandle[Any, Any]:
                if input.id.startswith("journey/"):
                    held.attempts[input.id] += 1
                    held.attempted.set()
                    await held.release.wait()
                return await super().start_workflow(input)

        return Outbound(next)


async def test_batches_go_on_while_journeys_start(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Starting journeys waits on Temporal; the router applies the next batches meanwhile.
    monkeypatch.setattr(outbox, "START_TIMEOUT", timedelta(minutes=10))
    held = HeldStarts()
    temporal = Client(**{**dev_env.client.config(), "interceptors": [held]})
    await start_worker(app=app, temporal=temporal)
    await client.wait([await client.emit(login("e1"))], timeout=30)
    await asyncio.wait_for(held.attempted.wait(), timeout=30)
    # The first batch's two journeys are still starting: a later login is applied anyway.
    outcomes = await client.wait([await client.emit(login("e2", member="m2"))], timeout=30)
    assert [o.describe() for o in outcomes] == ["no_effect"]
    # By the same router session: none gave up on a start and retried it.
    assert sorted(held.attempts.values()) == [1, 1]
    held.release.set()
    ids = await started(conn, 4)
    await finish(dev_env.client, ids)
    assert (await client.member("m2")).balances["points"].available == 125


async def test_a_start_already_done_counts_as_started(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    settings = await start_worker(app=app)
    await client.wait([await client.emit(login("e1"))], timeout=30)
    ids = await started(conn, 2)
    await finish(dev_env.client, ids)
    # Forget that they were started (a crash after the start, before the mark): the
    # next round finds the ids taken and marks them, without a second journey.
    await conn.execute("UPDATE journey_starts SET started_at = NULL")
    await client.wait([await client.emit(login("e2", member="m2"))], timeout=30)
    assert len(await started(conn, 4)) == 4
    assert (
        await conn.fetchval("SELECT count(*) FROM journey_starts WHERE last_error IS NOT NULL") == 0
    )
    assert (await client.member("m1")).balances["points"].available == 125
    assert settings.task_queue in ids[0]


async def test_toolkit_steps_apply_once_under_retry(
    pool: asyncpg.Pool, database_url: str, conn: asyncpg.Connection
) -> None:
    await prepare_database(database_url, app)
    activities = JourneyActivities(pool, app)
    step = AwardPointsInput(
        program="default", member_id="m1", points=40, reason="bonus",
        idempotency_key="journey:w1:step-1", workflow_id="w1",
    )  # fmt: skip
    first = await activities.award_points(step)
    again = await activities.award_points(step)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.transaction_id == first.transaction_id
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 1
    remove = RemovePointsInput(
        program="default", member_id="m1", points=15, reason="undo",
        idempotency_key="journey:w1:step-2", workflow_id="w1",
    )  # fmt: skip
    assert (await activities.remove_points(remove)).points == 15
    assert (await activities.remove_points(remove)).duplicate
    too_much = remove.model_copy(update={"points": 26, "idempotency_key": "journey:w1:step-3"})
    with pytest.raises(ApplicationError) as refused:
        await activities.remove_points(too_much)
    assert (refused.value.type, refused.value.non_retryable) == ("InsufficientPoints", True)
    message = SendMessageInput(
        program="default", member_id="m1", template="hello", idempotency_key="journey:w1:m",
        workflow_id="w1",
    )  # fmt: skip
    sent = await activities.send_message(message)
    resent = await activities.send_message(message)
    assert (resent.message_id, resent.duplicate) == (sent.message_id, True)
    assert await conn.fetchval("SELECT count(*) FROM message_log") == 1
    view = await activities.get_member(GetMemberInput(program="default", member_id="m1"))
    assert view.balances["points"].available == 25
    with pytest.raises(ApplicationError) as unknown:
        await activities.get_member(GetMemberInput(program="default", member_id="nobody"))
    assert unknown.value.type == "UnknownMember"


async def test_journey_sleeps_thirty_days_between_awards(
    time_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
    database_url: str,
    conn: asyncpg.Connection,
) -> None:
    await prepare_database(database_url, app)
    queue = f"test-{uuid.uuid4().hex}"
    activities = JourneyActivities(pool, app)
    async with Worker(
        time_env.client, task_queue=queue, workflows=[Welcome], activities=activities.all()
    ):
        handle = await time_env.client.start_workflow(
            Welcome.run,
            Activity(event_id="s1", member_id="m1", name="signup"),
            id=f"journey-welcome-{uuid.uuid4().hex}",
            task_queue=queue,
        )
        before = await time_env.get_current_time()
        await handle.result()
        assert await time_env.get_current_time() - before >= timedelta(days=30)
    rows = await conn.fetch("SELECT idempotency_key, reason FROM ledger_transactions ORDER BY id")
    assert [(r["idempotency_key"], r["reason"]) for r in rows] == [
        (f"journey:{handle.id}:step-1", "welcome"),
        (f"journey:{handle.id}:step-2", "welcome, a month later"),
    ]
    view = await conn.fetchval(
        "SELECT balance FROM accounts WHERE member_id = 'm1' AND kind = 'available'"
    )
    assert view == 100
