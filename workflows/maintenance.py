"""TierMaintenance: a long-lived loop per program and tier scheme.

Each execution waits for the next run time (the scheme's `Schedule`, computed by an
activity from the worker's app, so a changed schedule applies from the next run),
runs maintenance at that instant (``as_of``) in slices of chunks, one activity per
slice, then continues-as-new, so its history stays small whatever the number of runs.

Operators can run it now (the ``run_now`` update waits for the run and returns its
counts; it runs even while the loop is paused), ``pause`` and ``resume`` it (signals; a
scheduled run in progress stops between slices),
and read ``status`` (a query). The workflow's current details in the Web UI show the
progress of the run (members reviewed, promotions, demotions) or the next run time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.loop import ScheduledLoop

with workflow.unsafe.imports_passed_through():
    from activities.maintenance import MaintenanceActivities
    from loyalty.models import (
        MaintenanceLoopInput,
        MaintenanceProgress,
        MaintenanceSlice,
        MaintenanceStatus,
        NextRunInput,
    )

SLICE_HEARTBEAT_TIMEOUT = timedelta(seconds=60)
SLICE_TIMEOUT = timedelta(minutes=10)
# Maintenance must finish: retry for ever, backing off to 5 minutes.
MAINTENANCE_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=["UnknownScheme"],
)


def maintenance_workflow_id(task_queue: str, program: str, scheme: str) -> str:
    """The singleton id of the loop of a program's scheme (task queue: the deployment)."""
    return f"maintenance/{program}/{scheme}@{task_queue}"


def maintenance_summary(program: str, scheme: str) -> str:
    """The loop's one-line summary in the Web UI."""
    return f"Tier maintenance of program {program}, scheme {scheme}"


def describe(run: MaintenanceProgress) -> str:
    """One line of counts, for the Web UI and the CLI."""
    return (
        f"{run.scanned:,} members reviewed in {run.chunks} chunk{'' if run.chunks == 1 else 's'}: "
        f"{run.promoted:,} promoted, "
        f"{run.demoted:,} demoted, {run.in_grace:,} entered their grace period"
    )


@workflow.defn(name="TierMaintenance")
class TierMaintenance(ScheduledLoop[MaintenanceProgress]):
    """Reviews a scheme's members on its schedule, for ever."""

    RESUME_HINT = "resume with `loyalty maintenance resume`"

    @workflow.init
    def __init__(self, input: MaintenanceLoopInput) -> None:
        super().__init__(
            summary=maintenance_summary(input.program, input.scheme), paused=input.paused,
            last=input.last, runs=input.runs, next_run_at=input.next_run_at,
        )  # fmt: skip
        self._input = input

    @workflow.run
    async def run(self, input: MaintenanceLoopInput) -> None:
        await self._loop()
        self._continue_as_new(input)

    async def _next_after(self, at: datetime) -> datetime:
        return await workflow.execute_activity_method(
            MaintenanceActivities.next_run_at,
            NextRunInput(program=self._input.program, scheme=self._input.scheme, after=at),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=MAINTENANCE_RETRY_POLICY,
        )

    async def _work(self, as_of: datetime, forced: bool) -> MaintenanceProgress:
        """Slices of chunks until every member was reviewed."""
        work = MaintenanceSlice(program=self._input.program, scheme=self._input.scheme, as_of=as_of)
        run: MaintenanceProgress | None = None
        while run is None or run.finished_at is None:
            await self._between(forced)
            run = await workflow.execute_activity_method(
                MaintenanceActivities.run_slice,
                work,
                start_to_close_timeout=SLICE_TIMEOUT,
                heartbeat_timeout=SLICE_HEARTBEAT_TIMEOUT,
                retry_policy=MAINTENANCE_RETRY_POLICY,
            )
            self._running = run
            self._show()
        return run

    def _describe(self, run: MaintenanceProgress) -> str:
        return describe(run)

    @workflow.update
    async def run_now(self) -> MaintenanceProgress:
        """Run maintenance now (or let the run in progress finish); returns its counts."""
        return await self._run_now()

    @workflow.query
    def status(self) -> MaintenanceStatus:
        """Paused or not, the next run time, the run in progress and the last run."""
        return MaintenanceStatus(
            program=self._input.program, scheme=self._input.scheme, paused=self._paused,
            next_run_at=self._next, running=self._running, last=self._last, runs=self._runs,
        )  # fmt: skip
