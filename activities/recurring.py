"""Activities of a recurring run: snapshot the segment, start its journeys in slices.

`snapshot` takes the segment's members once per (program, flow, scheduled time)
(`loyalty.flows.recurring.take_snapshot`). `start_slice` starts their journeys for a few
seconds, in batches of at most `BATCH`, at most ``LOYALTY_RECURRING_STARTS_PER_SECOND``,
marks each batch started in one transaction and heartbeats its progress. Journey ids are
deterministic (`loyalty.flows.journey_id`, with the scheduled time) and started with
`JOURNEY_ID_REUSE_POLICY`, where "already started" counts as started: an attempt cut
short after a start and before its mark (a worker that stopped or crashed) starts that
member again on retry, and Temporal refuses the second journey. So a member is neither
skipped (not marked until started) nor doubled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import traceback
from datetime import UTC

import asyncpg
from temporalio import activity
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError

from activities.outage import DATABASE_DOWN, database_unavailable
from loyalty.app import LoyaltyApp
from loyalty.events import RecurringRun
from loyalty.flows.outbox import spec_named, summary
from loyalty.flows.recurring import (
    RecurringProgress,
    RecurringWork,
    finish,
    mark_started,
    pending,
    take_snapshot,
)
from loyalty.flows.spec import (
    JOURNEY_ID_REUSE_POLICY,
    FlowSpec,
    journey_id,
    scheduled_part,
    workflow_name,
)
from loyalty.ingest.derived import derived_id
from loyalty.settings import Settings
from loyalty.store.db import Conn
from loyalty.temporal import FLOW, MEMBER_ID, PROGRAM, TRIGGER
from loyalty.triggers import Recurring

log = logging.getLogger("loyalty.recurring")
# Members per batch: read, started and marked together.
BATCH = 500
# Journey starts in flight at once.
START_CONCURRENCY = 32


def trigger_event(
    spec: FlowSpec, work: RecurringWork, segment: str, member_id: str
) -> RecurringRun:
    """The journey's trigger: a `RecurringRun` that occurred at the scheduled time.

    Its id, ``recurring:<flow>:<scheduled time>:<member>`` (hashed beyond 128
    characters, as derived events are), is the same on every attempt.
    """
    at = scheduled_part(work.scheduled_at)
    return RecurringRun(
        event_id=derived_id("recurring", spec.name, at, member_id),
        member_id=member_id,
        program=work.program,
        occurred_at=work.scheduled_at,
        flow=spec.name,
        segment=segment,
        scheduled_at=work.scheduled_at,
    )


class _Pace:
    """At most ``per_second`` starts a second: each start waits for its slot."""

    def __init__(self, per_second: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._interval = 1.0 / per_second
        self._next = self._loop.time()

    async def wait(self) -> None:
        now = self._loop.time()
        slot = max(self._next, now)
        self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


class RecurringActivities:
    """Activities of `workflows.recurring.RecurringFlow`; dependencies in the constructor."""

    def __init__(
        self, pool: asyncpg.Pool, app: LoyaltyApp, settings: Settings, client: Client
    ) -> None:
        self.pool = pool
        self.app = app
        self.settings = settings
        self.client = client

    def all(self) -> list[object]:
        """The bound activity methods, for the worker."""
        return [self.snapshot, self.start_slice]

    def _flow(self, program: str, flow: str) -> tuple[FlowSpec, Recurring]:
        spec = spec_named(self.app, flow)
        if spec is None or not isinstance(spec.trigger, Recurring):
            raise ApplicationError(
                f"the app has no recurring flow {flow!r}", type="UnknownFlow", non_retryable=True
            )
        if self.app.program(program) is None or not spec.applies_to(program):
            raise ApplicationError(
                f"flow {flow!r} does not apply to program {program!r}",
                type="UnknownFlow",
                non_retryable=True,
            )
        return spec, spec.trigger

    @activity.defn(name="recurring_snapshot")
    async def snapshot(self, work: RecurringWork) -> RecurringProgress:
        """Snapshot the flow's segment for the scheduled time (once); returns the run.

        Raises:
            ApplicationError: ``UnknownFlow`` (non-retryable); ``DatabaseUnavailable``.
        """
        _, trigger = self._flow(work.program, work.flow)
        try:
            async with self.pool.acquire() as conn:
                return await take_snapshot(
                    conn, work.program, work.flow, trigger.segment, work.scheduled_at
                )
        except DATABASE_DOWN as exc:
            raise database_unavailable(exc) from None

    @activity.defn(name="recurring_start_slice")
    async def start_slice(self, work: RecurringWork) -> RecurringProgress:
        """Start the snapshot's journeys after ``work.after`` for about ``work.seconds``.

        Returns the run's progress; ``finished`` once every member's journey is started.

        Raises:
            ApplicationError: ``UnknownFlow`` (non-retryable); ``DatabaseUnavailable``;
                ``JourneysNotStarted`` (retried: the failed members are tried again).
        """
        spec, _ = self._flow(work.program, work.flow)
        try:
            async with self.pool.acquire() as conn:
                return await self._slice(conn, spec, work)
        except DATABASE_DOWN as exc:
            raise database_unavailable(exc) from None

    async def _slice(self, conn: Conn, spec: FlowSpec, work: RecurringWork) -> RecurringProgress:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + work.seconds
        rate = self.settings.recurring_starts_per_second
        pace = _Pace(rate)
        gate = asyncio.Semaphore(START_CONCURRENCY)
        run = await mark_started(conn, work, [], work.after)
        segment = run.segment

        async def start_one(member_id: str) -> str | None:
            await pace.wait()
            async with gate:
                try:
                    await self._start(spec, work, segment, member_id)
                except Exception as exc:
                    return "".join(traceback.format_exception_only(exc)).strip()[:500]
                finally:
                    activity.heartbeat()
            return None

        after, first = work.after, True
        while first or loop.time() < deadline:
            first = False
            # A batch fits in what is left of the slice at the configured pace.
            left = max(deadline - loop.time(), 1.0)
            limit = max(1, min(BATCH, math.ceil(rate * left)))
            members = await pending(conn, work, after, limit)
            if not members:
                if run.started < run.members and after is not None:
                    after = None  # a member before the cursor is left: go round again
                    continue
                return await finish(conn, work)

            errors = await asyncio.gather(*(start_one(m) for m in members))
            started = [m for m, e in zip(members, errors, strict=True) if e is None]
            after = members[-1]
            run = await mark_started(conn, work, started, after)
            activity.heartbeat(run.model_dump(mode="json"))
            failed = [(m, e) for m, e in zip(members, errors, strict=True) if e is not None]
            for member, error in failed:
                log.warning(
                    "journey of %s for member %s not started yet: %s", spec.name, member, error
                )
            if failed:
                member, error = failed[0]
                raise ApplicationError(
                    f"{len(failed)} journeys of {spec.name} not started yet, e.g. member "
                    f"{member}: {error}",
                    type="JourneysNotStarted",
                )
        return run

    async def _start(
        self, spec: FlowSpec, work: RecurringWork, segment: str, member_id: str
    ) -> None:
        event = trigger_event(spec, work, segment, member_id)
        workflow_id = journey_id(
            spec, member_id, event.event_id, work.scheduled_at,
            program=work.program, task_queue=self.settings.task_queue, origin="engine",
        )  # fmt: skip
        name = workflow_name(spec.cls)
        assert name is not None
        # Already started: by an earlier attempt of this run, or, for a once-per-member
        # flow, by an earlier scheduled time; either way it is started.
        with contextlib.suppress(WorkflowAlreadyStartedError):
            await self.client.start_workflow(
                name,
                event,
                id=workflow_id,
                task_queue=self.settings.task_queue,
                id_reuse_policy=JOURNEY_ID_REUSE_POLICY,
                search_attributes=TypedSearchAttributes(
                    [
                        SearchAttributePair(MEMBER_ID, member_id),
                        SearchAttributePair(FLOW, spec.name),
                        SearchAttributePair(PROGRAM, work.program),
                        SearchAttributePair(TRIGGER, Recurring.EVENT_TYPE),
                    ]
                ),
                static_summary=summary(spec, event),
                static_details=(
                    f"Flow **{spec.name}**: trigger `{spec.trigger}`, entry {spec.entry}, "
                    f"segment {segment} at "
                    f"{work.scheduled_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC.\n\n"
                    f"Workflow id `{workflow_id}`."
                ),
            )
