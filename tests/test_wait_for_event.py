"""wait_for_event: a journey waits for a member's event, delivered by the router as a signal."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from decimal import Decimal

import asyncpg
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.journeys import JourneyActivities
from loyalty.events import Activity, Purchase
from loyalty.flows.signals import send_signals
from loyalty.models import EndWaitInput, RegisterWaitInput
from loyalty.router.processing import EventProcessor, process_batch
from loyalty.store.db import prepare_database
from loyalty.store.embedded import find_binary
from loyalty.temporal import DATA_CONVERTER
from starter.client import LoyaltyClient
from tests.conftest import StartWorker
from tests.waits_app import AwaitPurchase, app


def purchase(event_id: str, member: str = "m1", amount: str = "10") -> Purchase:
    return Purchase(
        event_id=event_id, member_id=member, order_id=f"o-{event_id}", amount=Decimal(amount),
        currency="EUR",
    )  # fmt: skip


def signup(event_id: str, member: str = "m1") -> Activity:
    return Activity(event_id=event_id, member_id=member, name="signup")


async def waiting(conn: asyncpg.Connection, count: int, timeout: float = 30) -> list[str]:
    """The workflow ids of the open waits, once there are ``count`` of them."""
    async with asyncio.timeout(timeout):
        while True:
            rows = await conn.fetch("SELECT workflow_id FROM journey_waits ORDER BY workflow_id")
            if len(rows) >= count:
                return [r["workflow_id"] for r in rows]
            await asyncio.sleep(0.1)


async def test_a_waiting_journey_gets_the_members_purchase_and_nothing_else(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    await start_worker(app=app)
    await client.wait([await client.emit(signup("s1"))], timeout=30)
    [workflow_id] = await waiting(conn, 1)
    # Another member's purchase and another event type of the member: no signal.
    others = [
        await client.emit(purchase("other", member="m2")),
        await client.emit(Activity(event_id="login", member_id="m1", name="web_login")),
    ]
    await client.wait(others, timeout=30)
    assert await conn.fetchval("SELECT count(*) FROM journey_signals") == 0
    # The member's purchase, delivered twice, then another one: the first is the answer.
    emitted = [await client.emit(purchase("p1", amount="42.50"))]
    emitted.append(await client.emit(purchase("p1", amount="42.50")))
    outcomes = await client.wait(emitted, timeout=30)
    assert [o.describe() for o in outcomes] == ["applied", "duplicate"]
    handle = dev_env.client.get_workflow_handle(workflow_id, result_type=Purchase)
    async with asyncio.timeout(30):
        received = await handle.result()
    assert received == purchase("p1", amount="42.50").model_copy(
        update={"occurred_at": received.occurred_at}
    )
    assert (received.event_id, received.amount) == ("p1", Decimal("42.50"))
    rows = await conn.fetch("SELECT workflow_id, event_id, sent_at FROM journey_signals")
    assert [(r["workflow_id"], r["event_id"]) for r in rows] == [(workflow_id, "p1")]
    assert rows[0]["sent_at"] is not None
    # The wait is gone: a later purchase signals nobody.
    assert await conn.fetchval("SELECT count(*) FROM journey_waits") == 0
    await client.wait([await client.emit(purchase("p2"))], timeout=30)
    assert await conn.fetchval("SELECT count(*) FROM journey_signals") == 1


async def test_a_wait_times_out_after_seven_days_with_none(
    pool: asyncpg.Pool,
    database_url: str,
    conn: asyncpg.Connection,
) -> None:
    await prepare_database(database_url, app)
    queue = f"test-{uuid.uuid4().hex}"
    # Its own time-skipping server: an activity another test left running on the shared
    # one holds its clock still.
    time_env = await WorkflowEnvironment.start_time_skipping(
        data_converter=DATA_CONVERTER,
        test_server_existing_path=find_binary("temporal-test-server"),
    )
    try:
        async with Worker(
            time_env.client,
            task_queue=queue,
            workflows=[AwaitPurchase],
            activities=JourneyActivities(pool, app).all(),
        ):
            handle = await time_env.client.start_workflow(
                AwaitPurchase.run,
                signup("s1"),
                id=f"journey-await-{uuid.uuid4().hex}",
                task_queue=queue,
                result_type=Purchase,
            )
            before = await time_env.get_current_time()
            assert await handle.result() is None
            assert await time_env.get_current_time() - before >= timedelta(days=7)
    finally:
        await time_env.shutdown()
    assert await conn.fetchval("SELECT count(*) FROM journey_waits") == 0


async def test_a_batch_processed_again_records_one_signal_and_a_gone_journey_counts_as_sent(
    client: LoyaltyClient,
    pool: asyncpg.Pool,
    database_url: str,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    await prepare_database(database_url, app)
    # A purchase that reached the inbox before the wait was registered does not count.
    await client.emit(purchase("early"))
    activities = JourneyActivities(pool, app)
    wait = RegisterWaitInput(
        program="default", member_id="m1", event_type="purchase", workflow_id="no-such-journey",
        wait_key="wait-1",
    )  # fmt: skip
    first = await activities.register_wait(wait)
    assert (await activities.register_wait(wait)).registered_at == first.registered_at
    await client.emit(purchase("p1"))
    processor = EventProcessor(app)
    batch = {
        "program": "default", "partitions": 1, "partition": 0, "batch_size": 100,
        "max_attempts": 3, "task_queue": "q",
    }  # fmt: skip
    assert (await process_batch(conn, processor, **batch)).events == 2  # type: ignore[arg-type]
    # As after a crash before the outcome counted: the same inbox rows processed again.
    await conn.execute("UPDATE events SET status = 'pending', processed_at = NULL")
    assert (await process_batch(conn, processor, **batch)).events == 2  # type: ignore[arg-type]
    rows = await conn.fetch("SELECT event_id, sent_at FROM journey_signals")
    assert [(r["event_id"], r["sent_at"]) for r in rows] == [("p1", None)]
    # The journey does not exist (finished long ago): the signal is done, the wait removed.
    sent = await send_signals(conn, dev_env.client, program="default", partitions=1, partition=0)
    assert sent == 1
    assert await conn.fetchval("SELECT sent_at IS NOT NULL FROM journey_signals")
    assert await conn.fetchval("SELECT count(*) FROM journey_waits") == 0
    assert (
        await send_signals(conn, dev_env.client, program="default", partitions=1, partition=0) == 0
    )
    ended = await activities.end_wait(
        EndWaitInput(workflow_id="no-such-journey", wait_key="wait-1")
    )
    assert ended.registered_at is None
