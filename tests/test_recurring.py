"""Recurring runs: one journey per member of the segment's snapshot, once per scheduled time.

The app is `tests.recurring_app`: flow ``weekly-nudge`` (every Monday 09:00 in
Copenhagen, segment ``almost-gold`` of program ``coffee``). In the weeks on the
time-skipping server, members enter and leave the segment by their own events (deposits
and withdrawals applied by the router's batch, so the segments' triggers keep
membership); elsewhere they are placed in and out by writing ``segment_members`` as that
code does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from temporalio.client import Client, Interceptor, OutboundInterceptor, StartWorkflowInput
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.recurring import RecurringActivities
from loyalty.errors import InvalidFlows
from loyalty.events import AnyEvent, PointsDeposit, PointsWithdrawal
from loyalty.flows import Entry, check_app, flow, journey_id
from loyalty.flows.recurring import RecurringProgress, RecurringRunInput
from loyalty.flows.spec import flow_spec
from loyalty.ingest.inbox import insert_events
from loyalty.router.processing import EventProcessor, process_batch
from loyalty.segments.membership import install
from loyalty.settings import Settings
from loyalty.store.db import create_pool, prepare_database
from loyalty.temporal import FLOW
from loyalty.triggers import Custom, Recurring
from tests.conftest import StartWorker
from tests.recurring_app import WEEKLY, WeeklyNudge, app, make_app
from tests.test_loop_details import current_details
from workflows.recurring import RecurringFlow, recurring_id

T = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)  # Monday 09:00 in Copenhagen
WEEKLY_ZONE = ZoneInfo("Europe/Copenhagen")


async def place(
    conn: asyncpg.Connection, inside: Iterable[str], outside: Iterable[str] = (),
    program: str = "coffee",
) -> None:  # fmt: skip
    """Members into and out of ``almost-gold``, as its membership code records them."""
    await conn.execute(
        """INSERT INTO segments (program, name, position, definition, condition,
                                 time_dependent, digest)
           VALUES ($1, 'almost-gold', 0, 'test', 'true', false, 'test')
           ON CONFLICT DO NOTHING""",
        program,
    )
    for members, flag in ((inside, True), (outside, False)):
        await conn.execute(
            """INSERT INTO segment_members (program, segment, member_id, in_segment, entries,
                                            changed_at)
               SELECT $1, 'almost-gold', m, $3::boolean, $3::boolean::int, now()
               FROM unnest($2::text[]) AS m
               ON CONFLICT (program, segment, member_id) DO UPDATE
               SET in_segment = $3::boolean, changed_at = now(),
                   entries = segment_members.entries
                             + (NOT segment_members.in_segment AND $3::boolean)::int""",
            program, list(members), flag,
        )  # fmt: skip


async def move(conn: asyncpg.Connection, events: list[AnyEvent]) -> None:
    """Apply events as the router does: one batch, one transaction."""
    await insert_events(conn, events)
    while (
        await process_batch(
            conn, EventProcessor(app), program="coffee", partitions=1, partition=0,
            batch_size=500, max_attempts=3, task_queue="recurring-tests",
        )
    ).events:  # fmt: skip
        pass


async def run_once(
    client: Client, task_queue: str, at: datetime, program: str = "coffee"
) -> RecurringProgress:
    """A run of ``weekly-nudge`` started by hand for the scheduled time ``at``."""
    result: RecurringProgress = await client.execute_workflow(
        RecurringFlow.run,
        RecurringRunInput(program=program, flow="weekly-nudge", scheduled_at=at),
        id=f"{recurring_id(task_queue, program, 'weekly-nudge')}-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
    )
    return result


def nudge_id(member: str, at: datetime, task_queue: str) -> str:
    spec = flow_spec(WeeklyNudge)
    assert spec is not None
    return journey_id(spec, member, "", at, program="coffee", task_queue=task_queue)


async def journeys(client: Client, task_queue: str, expected: int) -> set[str]:
    """The ids of the nudge journeys on the task queue, once visibility lists ``expected``."""
    query = f'WorkflowType = "WeeklyNudge" AND TaskQueue = "{task_queue}"'
    async with asyncio.timeout(30):
        while True:
            found = {w.id async for w in client.list_workflows(query)}
            if len(found) >= expected:
                return found
            await asyncio.sleep(0.1)


# -- start-up checks and ids -------------------------------------------------------------


def test_a_recurring_flow_must_name_a_segment_of_each_of_its_programs() -> None:
    @flow(trigger=Recurring(schedule=WEEKLY, segment="almost-platinum"), name="lost")
    class Lost:
        pass

    @flow(trigger=Custom("recurring", lambda e: True), name="sneaky")
    class Sneaky:
        pass

    with pytest.raises(InvalidFlows) as refused:
        check_app(make_app(Lost, Sneaky))
    problems = [p for p in refused.value.problems if "Temporal workflow" not in p]
    assert problems == [
        "flow 'lost': trigger Recurring(cron '0 9 * * MON' (Europe/Copenhagen), "
        "segment='almost-platinum'): program 'coffee' defines no segment 'almost-platinum'; "
        "segments: almost-gold, almost-silver",
        "flow 'lost': trigger Recurring(cron '0 9 * * MON' (Europe/Copenhagen), "
        "segment='almost-platinum'): program 'tea' defines no segment 'almost-platinum'; "
        "segments: almost-gold",
        "flow 'sneaky': trigger Custom(recurring, <lambda>): only a Recurring(schedule=..., "
        "segment=...) trigger starts journeys on recurring events",
    ]
    assert check_app(app)[0].name == "weekly-nudge"


def test_the_journey_id_of_a_recurring_flow_carries_the_scheduled_time() -> None:
    assert (
        nudge_id("m/1", T, "q") == "journey/coffee/weekly-nudge/m%2F1/scheduled/20260302T080000Z@q"
    )
    # The same instant in another zone is the same id; a microsecond later is another.
    copenhagen = T.astimezone(WEEKLY_ZONE)
    assert nudge_id("m1", copenhagen, "q") == nudge_id("m1", T, "q")
    later = T + timedelta(microseconds=5)
    assert nudge_id("m1", later, "q").endswith("/scheduled/20260302T080000.000005Z@q")
    spec = flow_spec(WeeklyNudge)
    assert spec is not None
    once = type(spec)(spec.name, spec.trigger, Entry.ONCE_PER_MEMBER, spec.programs, spec.cls)
    assert journey_id(once, "m1", "", T, program="coffee", task_queue="q") == (
        "journey/coffee/weekly-nudge/m1@q"
    )


# -- runs on the dev server ---------------------------------------------------------------


async def test_a_run_starts_one_journey_per_member_of_its_snapshot_once_per_time(
    start_worker: StartWorker, conn: asyncpg.Connection, dev_env: WorkflowEnvironment
) -> None:
    settings = await start_worker(app=app)
    queue, client = settings.task_queue, dev_env.client
    await place(conn, ["m1", "m2", "m3"], ["m4"])
    await place(conn, ["t1"], program="tea")  # another program's segment
    first = await run_once(client, queue, T)
    assert (first.segment, first.members, first.started, first.finished) == (
        "almost-gold", 3, 3, True,
    )  # fmt: skip
    ids = {nudge_id(m, T, queue) for m in ("m1", "m2", "m3")}
    assert await journeys(client, queue, 3) == ids
    results = [await client.get_workflow_handle(i).result() for i in sorted(ids)]
    assert results == [f"nudged m{n} at 2026-03-02 08:00" for n in (1, 2, 3)]
    trigger = await client.get_workflow_handle(nudge_id("m1", T, queue)).describe()
    assert trigger.typed_search_attributes.get(FLOW) == "weekly-nudge"

    # The same scheduled time again (a backfill, a second run): the snapshot taken first
    # stands, m4 who joined since gets nothing, and nobody gets a second journey.
    await place(conn, ["m4"], ["m1"])
    again = await run_once(client, queue, T)
    assert (again.members, again.started, again.finished) == (3, 3, True)
    # The next week's time snapshots the segment as it is now.
    week = T + timedelta(days=7)
    second = await run_once(client, queue, week)
    assert (second.members, second.started) == (3, 3)
    expected = ids | {nudge_id(m, week, queue) for m in ("m2", "m3", "m4")}
    await asyncio.sleep(0.5)  # let visibility catch up with anything extra
    assert await journeys(client, queue, 6) == expected
    rows = await conn.fetch(
        """SELECT scheduled_at, members, started, finished_at IS NOT NULL AS finished
           FROM recurring_runs ORDER BY scheduled_at"""
    )
    assert [tuple(r) for r in rows] == [(T, 3, 3, True), (week, 3, 3, True)]


async def test_a_run_whose_worker_stops_mid_run_finishes_on_restart_skipping_and_doubling_none(
    settings: Settings, dev_env: WorkflowEnvironment, conn: asyncpg.Connection
) -> None:
    from worker import run_worker

    members = [f"m{n:02d}" for n in range(1, 13)]
    slow = settings.model_copy(update={"recurring_starts_per_second": 6.0})
    dsn = slow.database_url.get_secret_value()  # type: ignore[union-attr]
    client = dev_env.client

    async def worker() -> tuple[asyncio.Event, asyncio.Task[None]]:
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_worker(slow, app, client, dsn, stop, ready))
        await asyncio.wait({task, asyncio.ensure_future(ready.wait())},
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        assert not task.done(), task.exception()
        return stop, task

    stop, task = await worker()
    await place(conn, members)  # after the worker installed the app's segments
    handle = await client.start_workflow(
        RecurringFlow.run,
        RecurringRunInput(program="coffee", flow="weekly-nudge", scheduled_at=T),
        id=f"{recurring_id(slow.task_queue, 'coffee', 'weekly-nudge')}-crash",
        task_queue=slow.task_queue,
    )
    try:
        async with asyncio.timeout(30):
            while len(await journeys(client, slow.task_queue, 0)) < 3:
                await asyncio.sleep(0.05)
        stop.set()
        await task
        cut = await conn.fetchrow("SELECT members, started FROM recurring_runs")
        assert cut is not None
        assert (cut["members"], cut["started"] < 12) == (12, True)
        stop, task = await worker()
        async with asyncio.timeout(60):
            done: RecurringProgress = await handle.result()
        assert (done.members, done.started, done.finished) == (12, 12, True)
        expected = {nudge_id(m, T, slow.task_queue) for m in members}
        await asyncio.sleep(0.5)
        assert await journeys(client, slow.task_queue, 12) == expected
        shown = await current_details(client, handle.id)
        assert "**Finished**: segment almost-gold, started 12 of 12 journeys." in shown
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await task
        with contextlib.suppress(Exception):
            await handle.terminate("test finished")
        for workflow_id in _loops(slow):
            with contextlib.suppress(Exception):
                await client.get_workflow_handle(workflow_id).terminate("test finished")


def _loops(settings: Settings) -> list[str]:
    from workflows.housekeeping import housekeeping_workflow_id
    from workflows.router import router_workflow_id

    return [
        *(router_workflow_id(settings.task_queue, p, 0, 1) for p in app.programs),
        *(housekeeping_workflow_id(settings.task_queue, p) for p in app.programs),
    ]


# -- weeks on the time-skipping server ----------------------------------------------------


class _WithoutSearchAttributes(Interceptor):
    """Drops the search attributes of workflow starts: the time-skipping test server has
    no custom ones (they are tested on the dev server above)."""

    def intercept_client(self, next: OutboundInterceptor) -> OutboundInterceptor:
        class Outbound(OutboundInterceptor):
            async def start_workflow(self, input: StartWorkflowInput) -> Any:
                input.search_attributes = None
                return await super().start_workflow(input)

        return Outbound(next)


async def test_the_weekly_nudge_over_five_weeks_follows_the_segment_as_members_come_and_go(
    time_env: WorkflowEnvironment, database_url: str, conn: asyncpg.Connection
) -> None:
    """m1 is almost gold in weeks 1-2, leaves in week 3 (spent points), re-enters in weeks
    4-5; m2 stays; m3 enters in week 3. Each Monday's run nudges exactly those then in."""
    await prepare_database(database_url, app)
    await install(conn, app)
    queue = f"test-{uuid.uuid4().hex}"
    settings = Settings(LOYALTY_TASK_QUEUE=queue)  # type: ignore[call-arg]
    pool = await create_pool(database_url, size=4)
    balances = {"m1": 0, "m2": 0, "m3": 0}
    plan = {
        1: (["m1", "m2"], []),
        2: ([], []),
        3: (["m3"], ["m1"]),
        4: (["m1"], []),
        5: ([], []),
    }
    nudged: dict[str, list[int]] = {}
    try:
        config = time_env.client.config()
        config["interceptors"] = [_WithoutSearchAttributes()]
        starter = Client(**config)
        activities = RecurringActivities(pool, app, settings, starter)
        async with Worker(
            time_env.client, task_queue=queue, workflows=[RecurringFlow, WeeklyNudge],
            activities=activities.all(),  # type: ignore[arg-type]
        ):  # fmt: skip
            at = WEEKLY.next_after(await time_env.get_current_time())
            times = []
            for week, (joining, leaving) in plan.items():
                await time_env.sleep(at - await time_env.get_current_time())
                moves: list[AnyEvent] = []
                for member in joining:  # up to 950 points: more than 900, less than 1000
                    moves.append(PointsDeposit(
                        event_id=f"in-{week}-{member}", member_id=member, program="coffee",
                        points=950 - balances[member], kind="available", reason="gift",
                    ))  # fmt: skip
                    balances[member] = 950
                for member in leaving:  # spends 100: 850, out
                    moves.append(PointsWithdrawal(
                        event_id=f"out-{week}-{member}", member_id=member, program="coffee",
                        points=100, kind="available", reason="drinks",
                    ))  # fmt: skip
                    balances[member] -= 100
                await move(conn, moves)
                run = await run_once(time_env.client, queue, at)
                assert (run.finished, run.started) == (True, run.members)
                for member in ("m1", "m2", "m3"):
                    handle = time_env.client.get_workflow_handle(nudge_id(member, at, queue))
                    try:
                        said = await handle.result()
                    except RPCError:
                        continue  # no journey of the member for this time
                    assert said == f"nudged {member} at {at:%Y-%m-%d %H:%M}"
                    nudged.setdefault(member, []).append(week)
                times.append(at)
                at = WEEKLY.next_after(at)
    finally:
        await pool.close()
    assert nudged == {"m1": [1, 2, 4, 5], "m2": [1, 2, 3, 4, 5], "m3": [3, 4, 5]}
    entries = await conn.fetch(
        """SELECT entered, entry FROM segment_changes
           WHERE member_id = 'm1' AND segment = 'almost-gold' ORDER BY at"""
    )
    assert [tuple(r) for r in entries] == [(True, 1), (False, 1), (True, 2)]
    local = [t.astimezone(WEEKLY_ZONE) for t in times]
    assert {(t.weekday(), t.hour, t.minute) for t in local} == {(0, 9, 0)}
    assert [b - a >= timedelta(days=6) for a, b in itertools.pairwise(times)] == [True] * 4
