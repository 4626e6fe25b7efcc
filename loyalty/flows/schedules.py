"""Temporal Schedules of recurring flows: one per flow and program, kept in line with the app.

Each flow with a `loyalty.triggers.Recurring` trigger gets, in each program it applies to,
a Schedule ``recurring/<program>/<flow>@<task_queue>`` (`workflows.recurring.recurring_id`)
whose action starts `workflows.recurring.RecurringFlow` on the worker's task queue. Its
spec is the trigger's `Schedule` (cron in its time zone, or an interval); overlap policy
SKIP (a run still starting journeys when the next time comes makes that time skipped);
catch-up window ``LOYALTY_SCHEDULE_CATCHUP_SECONDS``. The Schedule's memo names the flow,
the program and the segment, and its ``LoyaltyFlow`` and ``LoyaltyProgram`` search
attributes (set on its runs too) find it in the Web UI.

`sync_schedules` runs at every worker start: it creates the missing Schedules, updates
those whose definition differs (the spec, the catch-up window, the segment, compared
through `definition`, which the action's memo carries, since Temporal gives back a cron
spec rewritten as calendars), keeping a pause and its note, and deletes the Schedules of
this task queue whose flow the app no longer has. Temporal cannot change a Schedule's own
memo, so a flow that names another segment gets its Schedule re-created (paused state and
note kept, its list of recent runs starts over).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.client import Schedule as TemporalSchedule
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from loyalty.app import LoyaltyApp
from loyalty.flows.recurring import RecurringRunInput
from loyalty.flows.spec import FlowSpec, check_app
from loyalty.settings import Settings
from loyalty.temporal import FLOW, PROGRAM, TRIGGER
from loyalty.tiers.schemes import Schedule
from loyalty.triggers import Recurring
from workflows.recurring import RecurringFlow, recurring_id, recurring_summary

log = logging.getLogger("loyalty.schedules")
PREFIX = "recurring/"
# The action's memo key holding `definition`.
DEFINITION = "loyalty_schedule"


@dataclass(frozen=True)
class Wanted:
    """A Schedule the app asks for: a recurring flow in one program."""

    id: str
    program: str
    spec: FlowSpec
    trigger: Recurring

    def memo(self) -> dict[str, str]:
        """The Schedule's memo: what it is for, in the Web UI."""
        return {"flow": self.spec.name, "program": self.program, "segment": self.trigger.segment}

    def definition(self, settings: Settings) -> dict[str, Any]:
        """Everything the Schedule is made of, to compare with what Temporal has."""
        return {
            **self.memo(),
            "schedule": str(self.trigger.schedule),
            "catchup_seconds": settings.schedule_catchup_seconds,
            "task_queue": settings.task_queue,
        }


@dataclass
class SyncReport:
    """The Schedule ids `sync_schedules` created, updated, deleted or left as they were."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


def wanted_schedules(app: LoyaltyApp, task_queue: str) -> list[Wanted]:
    """One per recurring flow of the app and program it applies to, in the app's order."""
    return [
        Wanted(recurring_id(task_queue, program, spec.name), program, spec, spec.trigger)
        for spec in check_app(app)
        if isinstance(spec.trigger, Recurring)
        for program in app.programs
        if spec.applies_to(program)
    ]


def of_task_queue(schedule_id: str, task_queue: str) -> bool:
    """Whether the id is that of a recurring flow's Schedule on this task queue.

    Program and flow are percent-encoded in the id, so the first ``@`` ends them.
    """
    rest = schedule_id.removeprefix(PREFIX)
    return rest != schedule_id and rest.partition("@")[2] == task_queue


def schedule_spec(schedule: Schedule) -> ScheduleSpec:
    """Temporal's spec for a `Schedule`: a cron in its time zone, or an interval."""
    if schedule.cron is not None:
        return ScheduleSpec(cron_expressions=[schedule.cron], time_zone_name=schedule.timezone)
    return ScheduleSpec(intervals=[ScheduleIntervalSpec(every=schedule.every or timedelta(days=1))])


def search_attributes(wanted: Wanted) -> TypedSearchAttributes:
    """``LoyaltyFlow`` and ``LoyaltyProgram`` of the Schedule, and of its runs."""
    return TypedSearchAttributes(
        [SearchAttributePair(FLOW, wanted.spec.name), SearchAttributePair(PROGRAM, wanted.program)]
    )


def temporal_schedule(
    wanted: Wanted, settings: Settings, state: ScheduleState | None = None
) -> TemporalSchedule:
    """The Temporal Schedule of a recurring flow in a program (``state``: kept on update)."""
    return TemporalSchedule(
        action=ScheduleActionStartWorkflow(
            RecurringFlow.run,
            RecurringRunInput(program=wanted.program, flow=wanted.spec.name),
            id=wanted.id,
            task_queue=settings.task_queue,
            memo={DEFINITION: wanted.definition(settings)},
            typed_search_attributes=TypedSearchAttributes(
                [*search_attributes(wanted), SearchAttributePair(TRIGGER, Recurring.EVENT_TYPE)]
            ),
            static_summary=recurring_summary(
                wanted.program, wanted.spec.name, wanted.trigger.segment
            ),
        ),
        spec=schedule_spec(wanted.trigger.schedule),
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP,
            catchup_window=timedelta(seconds=settings.schedule_catchup_seconds),
        ),
        state=state or ScheduleState(),
    )


async def decode_memo(client: Client, memo: Mapping[str, Any] | None) -> dict[str, Any]:
    """A memo as Temporal gives it back (payloads) decoded into plain values."""
    decoded: dict[str, Any] = {}
    for key, value in (memo or {}).items():
        if isinstance(value, Payload):
            [value] = await client.data_converter.decode([value])
        decoded[key] = value
    return decoded


async def _create(client: Client, wanted: Wanted, settings: Settings,
                  state: ScheduleState | None = None) -> None:  # fmt: skip
    await client.create_schedule(
        wanted.id,
        temporal_schedule(wanted, settings, state),
        memo=wanted.memo(),
        search_attributes=search_attributes(wanted),
    )


async def _sync_one(client: Client, wanted: Wanted, settings: Settings) -> str:
    """``created``, ``updated`` or ``unchanged``."""
    handle = client.get_schedule_handle(wanted.id)
    try:
        described = await handle.describe()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        await _create(client, wanted, settings)
        return "created"
    action = described.schedule.action
    definition = (
        (await decode_memo(client, action.memo)).get(DEFINITION)
        if isinstance(action, ScheduleActionStartWorkflow)
        else None
    )
    if dict(await described.memo()) != wanted.memo():
        # Temporal cannot change a Schedule's memo: a new segment takes a new Schedule.
        await handle.delete()
        await _create(client, wanted, settings, described.schedule.state)
        return "updated"
    if definition == wanted.definition(settings):
        return "unchanged"

    def update(current: ScheduleUpdateInput) -> ScheduleUpdate:
        state = current.description.schedule.state
        return ScheduleUpdate(
            schedule=temporal_schedule(wanted, settings, state),
            search_attributes=search_attributes(wanted),
        )

    await handle.update(update)
    return "updated"


async def sync_schedules(client: Client, settings: Settings, app: LoyaltyApp) -> SyncReport:
    """Create, update and delete this task queue's Schedules to match the app's flows."""
    report = SyncReport()
    wanted = wanted_schedules(app, settings.task_queue)
    for item in wanted:
        outcome = await _sync_one(client, item, settings)
        getattr(report, outcome).append(item.id)
    ids = {item.id for item in wanted}
    async for listed in await client.list_schedules():
        if of_task_queue(listed.id, settings.task_queue) and listed.id not in ids:
            # Deleted meanwhile by another worker of the task queue: gone all the same.
            with contextlib.suppress(RPCError):
                await client.get_schedule_handle(listed.id).delete()
            report.deleted.append(listed.id)
    for outcome in ("created", "updated", "deleted"):
        for schedule_id in getattr(report, outcome):
            log.info("schedule %s %s", schedule_id, outcome)
    return report
