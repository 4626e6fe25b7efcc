"""Temporal Schedules of recurring flows on the dev server: kept by the worker, driven by
`loyalty schedules` as a user runs it, and seen by Temporal's own `temporal` CLI.

The apps are `tests.recurring_app`'s: ``weekly-nudge`` in program ``coffee`` every Monday
09:00 in Copenhagen (then daily at 07:30 UTC in the changed app), ``hourly-nudge`` in
every program, once per member.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from zoneinfo import ZoneInfo

import asyncpg
import pytest_asyncio
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    ScheduleDescription,
    ScheduleOverlapPolicy,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment

from loyalty.flows.recurring import RecurringProgress
from loyalty.flows.schedules import SyncReport, sync_schedules
from loyalty.settings import Settings
from loyalty.store.embedded import find_binary, free_port
from loyalty.temporal import FLOW, PROGRAM
from tests.conftest import StartWorker, temporal_address
from tests.recurring_app import DailyNudge, HourlyNudge, SilverNudge, WeeklyNudge, make_app
from tests.test_cli import cli_env, loyalty
from tests.test_recurring import journeys, nudge_id, place

APP = "tests.recurring_app:app"


@pytest_asyncio.fixture
async def cleanup(settings: Settings, dev_env: WorkflowEnvironment) -> AsyncIterator[list[str]]:
    """The test's task queue; its Schedules are deleted at the end (the dev server is
    shared by the whole session)."""
    yield [settings.task_queue]
    async for listed in await dev_env.client.list_schedules():
        if listed.id.endswith(f"@{settings.task_queue}"):
            with contextlib.suppress(RPCError):
                await dev_env.client.get_schedule_handle(listed.id).delete()


async def describe(client: Client, schedule_id: str) -> ScheduleDescription | None:
    try:
        return await client.get_schedule_handle(schedule_id).describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        return None


async def temporal_schedule_list(client: Client) -> str:
    """What `temporal schedule list` prints, from the venv's Temporal CLI."""
    proc = await asyncio.create_subprocess_exec(
        find_binary("temporal"), "schedule", "list", "--address", temporal_address(client),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_the_worker_creates_updates_and_deletes_the_schedules_as_the_flows_change(
    start_worker: StartWorker, dev_env: WorkflowEnvironment, cleanup: list[str]
) -> None:
    client = dev_env.client
    settings = await start_worker(app=make_app(WeeklyNudge))
    queue = settings.task_queue
    weekly = f"recurring/coffee/weekly-nudge@{queue}"
    created = await describe(client, weekly)
    assert created is not None
    assert await describe(client, f"recurring/tea/weekly-nudge@{queue}") is None
    assert dict(await created.memo()) == {
        "flow": "weekly-nudge", "program": "coffee", "segment": "almost-gold"
    }  # fmt: skip
    schedule = created.schedule
    assert schedule.spec.time_zone_name == "Europe/Copenhagen"
    assert schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
    assert schedule.policy.catchup_window == timedelta(days=1)
    action = schedule.action
    assert isinstance(action, ScheduleActionStartWorkflow)
    assert (action.workflow, action.task_queue, action.id) == ("RecurringFlow", queue, weekly)
    assert created.typed_search_attributes.get(FLOW) == "weekly-nudge"
    assert created.typed_search_attributes.get(PROGRAM) == "coffee"
    local = [t.astimezone(ZoneInfo("Europe/Copenhagen")) for t in created.info.next_action_times]
    assert {(t.weekday(), t.hour, t.minute) for t in local} == {(0, 9, 0)}
    async with asyncio.timeout(30):
        while weekly not in await temporal_schedule_list(client):
            await asyncio.sleep(0.2)

    # What the next worker starts do (one worker per task queue in this process): the
    # same app again has nothing to change, so nothing is updated.
    report = await sync_schedules(client, settings, make_app(WeeklyNudge))
    assert report == SyncReport(unchanged=[weekly])
    same = await describe(client, weekly)
    assert same is not None
    assert same.info.last_updated_at == created.info.last_updated_at

    # A deployment that runs the flow daily, paused meanwhile by an operator, and adds
    # an hourly flow in every program.
    await client.get_schedule_handle(weekly).pause(note="paused by an operator")
    report = await sync_schedules(client, settings, make_app(DailyNudge, HourlyNudge))
    hourly_ids = [f"recurring/{p}/hourly-nudge@{queue}" for p in ("coffee", "tea")]
    assert report == SyncReport(created=hourly_ids, updated=[weekly])
    daily = await describe(client, weekly)
    assert daily is not None
    assert daily.info.last_updated_at != created.info.last_updated_at
    assert {(t.hour, t.minute) for t in daily.info.next_action_times} == {(7, 30)}
    assert (daily.schedule.state.paused, daily.schedule.state.note) == (
        True, "paused by an operator",
    )  # fmt: skip
    for program in ("coffee", "tea"):
        hourly = await describe(client, f"recurring/{program}/hourly-nudge@{queue}")
        assert hourly is not None
        times = hourly.info.next_action_times
        assert {b - a for a, b in itertools.pairwise(times)} == {timedelta(hours=1)}

    # Another segment: Temporal cannot change a Schedule's memo, so it is made again,
    # still paused.
    report = await sync_schedules(client, settings, make_app(SilverNudge, HourlyNudge))
    assert report == SyncReport(updated=[weekly], unchanged=hourly_ids)
    silver = await describe(client, weekly)
    assert silver is not None
    assert (await silver.memo())["segment"] == "almost-silver"
    assert silver.schedule.state.paused is True

    # The weekly flow goes: its Schedule goes with it, the hourly ones stay.
    report = await sync_schedules(client, settings, make_app(HourlyNudge))
    assert report == SyncReport(deleted=[weekly], unchanged=hourly_ids)
    assert await describe(client, weekly) is None
    assert await describe(client, f"recurring/tea/hourly-nudge@{queue}") is not None


async def test_loyalty_schedules_lists_pauses_resumes_and_triggers_a_run(
    start_worker: StartWorker,
    settings_env: dict[str, object],
    dev_env: WorkflowEnvironment,
    conn: asyncpg.Connection,
    cleanup: list[str],
) -> None:
    client = dev_env.client
    env = {**cli_env(settings_env), "LOYALTY_APP": APP, "COLUMNS": "200"}
    queue = (await start_worker(app=make_app(WeeklyNudge))).task_queue
    schedule_id = f"recurring/coffee/weekly-nudge@{queue}"
    await place(conn, ["m1", "m2"], ["m3"])

    listed = await loyalty(env, "schedules", "list", "--json")
    assert listed.code == 0, listed.err
    [row] = json.loads(listed.out)
    assert {k: row[k] for k in ("id", "flow", "program", "segment", "schedule", "paused")} == {
        "id": schedule_id, "flow": "weekly-nudge", "program": "coffee",
        "segment": "almost-gold", "schedule": "cron '0 9 * * MON' (Europe/Copenhagen)",
        "paused": False,
    }  # fmt: skip
    assert (len(row["next_runs"]), row["last_run"], row["runs"]) == (3, None, 0)
    table = await loyalty(env, "schedules", "list")
    assert table.code == 0, table.err
    assert ("weekly-nudge" in table.out, "active" in table.out) == (True, True)

    paused = await loyalty(env, "schedules", "pause", "weekly-nudge")
    assert (paused.code, paused.lines) == (0, [f"schedule {schedule_id}: paused"])
    [row] = json.loads((await loyalty(env, "schedules", "list", "--json")).out)
    assert row["paused"] is True

    # A trigger runs now, even while paused; the run's scheduled time is the trigger's.
    triggered = await loyalty(env, "schedules", "trigger", "weekly-nudge", "--program", "coffee")
    assert (triggered.code, triggered.lines) == (0, [f"schedule {schedule_id}: triggered"])
    async with asyncio.timeout(30):
        while not (described := await describe(client, schedule_id)) or not (
            described.info.recent_actions
        ):
            await asyncio.sleep(0.1)
    action = described.info.recent_actions[-1]
    run_id = getattr(action.action, "workflow_id", "")
    done = await client.get_workflow_handle(run_id, result_type=RecurringProgress).result()
    assert (done.members, done.started, done.finished) == (2, 2, True)
    # Temporal keeps the run's scheduled time (TemporalScheduledStartTime) in seconds.
    assert done.scheduled_at == action.scheduled_at.replace(microsecond=0)
    assert await journeys(client, queue, 2) == {
        nudge_id(m, done.scheduled_at, queue) for m in ("m1", "m2")
    }

    resumed = await loyalty(env, "schedules", "resume", schedule_id)
    assert (resumed.code, resumed.lines) == (0, [f"schedule {schedule_id}: resumed"])
    [row] = json.loads((await loyalty(env, "schedules", "list", "--json")).out)
    assert (row["paused"], row["runs"], row["last_run"]["workflow_id"]) == (False, 1, run_id)


async def test_unknown_flows_and_schedules_exit_2_and_temporal_down_exits_3(
    settings_env: dict[str, object],
) -> None:
    env = {**cli_env(settings_env), "LOYALTY_APP": APP}
    unknown = await loyalty(env, "schedules", "pause", "nope")
    assert (unknown.code, unknown.err.splitlines()) == (
        2, ["error: flow: no recurring flow 'nope'; recurring flows: weekly-nudge"]
    )  # fmt: skip
    program = await loyalty(env, "schedules", "trigger", "weekly-nudge", "--program", "tea")
    assert program.code == 2
    assert "program 'tea' is not one of coffee" in program.err
    missing = await loyalty(env, "schedules", "resume", "recurring/coffee/nope@nowhere")
    assert (missing.code, missing.err.splitlines()) == (
        2, ["error: schedule: no Schedule 'recurring/coffee/nope@nowhere'"]
    )  # fmt: skip
    no_worker = await loyalty(env, "schedules", "pause", "weekly-nudge")
    assert no_worker.code == 3
    assert "start a worker" in no_worker.err
    down = {**env, "TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}"}
    for args in (("list",), ("pause", "weekly-nudge")):
        result = await loyalty(down, "schedules", *args)
        assert result.code == 3, result.err
        assert len(result.err.splitlines()) == 1
        assert "Traceback" not in result.err
