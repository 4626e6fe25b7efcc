"""Housekeeping: a long-lived loop per program that matures, expires and reminds.

Each execution waits for the next run time (the program's ``housekeeping`` `Schedule`,
computed by an activity from the worker's app, so a changed schedule applies from the
next run), then runs the steps of a run at that instant (``as_of``), one activity each:
maturing earned lots that are due, expiring lots by the expiry policies, writing
``bonus_expiring`` reminders (in slices of chunks, one activity per slice; see
`loyalty.ledger.reminders`), refreshing segments, recording the day's liability
(`loyalty.ledger.history`), and pruning the journey outboxes. The run is recorded in
``housekeeping_runs``; then the loop continues-as-new, so its history stays small
whatever the number of runs.

Operators can run it now (the ``run_now`` update waits for the run and returns its
counts; it runs even while the loop is paused), ``pause`` and ``resume`` it (signals; a
scheduled run in progress stops between steps), and read ``status`` (a query). The
workflow's current details in the Web UI show the progress of the run or the next run
time.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.loop import ScheduledLoop

with workflow.unsafe.imports_passed_through():
    from activities.housekeeping import HousekeepingActivities
    from loyalty.models import (
        HousekeepingLoopInput,
        HousekeepingProgress,
        HousekeepingStatus,
        HousekeepingWork,
        NextHousekeepingInput,
    )

STEP_HEARTBEAT_TIMEOUT = timedelta(seconds=60)
STEP_TIMEOUT = timedelta(minutes=30)
REMIND_SLICE_TIMEOUT = timedelta(minutes=10)
# Housekeeping must finish: retry for ever, backing off to 5 minutes.
HOUSEKEEPING_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=["UnknownProgram"],
)

# The activity doing each step, by the run's next step. The order of the steps is the
# database's (each step's result names the next one), not this code's: a history replays
# with the results it recorded, so adding a step needs no `workflow.patched`, only the
# step kept here while a run may still reach it (tests/test_history.py replays a run
# recorded before the snapshot step).
_STEPS = {
    "mature": (HousekeepingActivities.mature, STEP_TIMEOUT),
    "expire": (HousekeepingActivities.expire, STEP_TIMEOUT),
    "remind": (HousekeepingActivities.remind, REMIND_SLICE_TIMEOUT),
    "segments": (HousekeepingActivities.segments, STEP_TIMEOUT),
    "snapshot": (HousekeepingActivities.snapshot, STEP_TIMEOUT),
    "prune": (HousekeepingActivities.prune, STEP_TIMEOUT),
}


def housekeeping_workflow_id(task_queue: str, program: str) -> str:
    """The singleton id of a program's housekeeping loop (task queue: the deployment)."""
    return f"housekeeping/{program}@{task_queue}"


def housekeeping_summary(program: str) -> str:
    """The loop's one-line summary in the Web UI."""
    return f"Housekeeping of program {program}"


def describe(run: HousekeepingProgress) -> str:
    """One line of counts, for the Web UI and the CLI."""
    return (
        f"{run.matured_points:,} points matured ({run.matured_lots:,} lots), "
        f"{run.expired_points:,} expired ({run.expired_lots:,} lots), "
        f"{run.reminders:,} bonus_expiring reminders in {run.chunks} "
        f"chunk{'' if run.chunks == 1 else 's'}, "
        f"segments: {run.segments_entered:,} entered, {run.segments_left:,} left, "
        f"{run.snapshots:,} liability snapshot{'' if run.snapshots == 1 else 's'}, "
        f"{run.pruned_starts + run.pruned_signals:,} outbox rows pruned"
        + (f"; step {run.step}" if run.finished_at is None else "")
    )


@workflow.defn(name="Housekeeping")
class Housekeeping(ScheduledLoop[HousekeepingProgress]):
    """Keeps a program's ledger on its schedule, for ever."""

    @workflow.init
    def __init__(self, input: HousekeepingLoopInput) -> None:
        super().__init__(
            summary=housekeeping_summary(input.program), paused=input.paused, last=input.last,
            runs=input.runs, next_run_at=input.next_run_at,
        )  # fmt: skip
        self._input = input

    @workflow.run
    async def run(self, input: HousekeepingLoopInput) -> None:
        await self._loop()
        self._continue_as_new(input)

    async def _next_after(self, at: datetime) -> datetime:
        return await workflow.execute_activity_method(
            HousekeepingActivities.next_run_at,
            NextHousekeepingInput(program=self._input.program, after=at),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=HOUSEKEEPING_RETRY_POLICY,
        )

    async def _work(self, as_of: datetime, forced: bool) -> HousekeepingProgress:
        """The run's steps, one activity each (reminders: a slice per activity)."""
        work = HousekeepingWork(program=self._input.program, as_of=as_of)
        step = "mature"
        while step != "done":
            await self._between(forced)
            method, timeout = _STEPS[step]
            run: HousekeepingProgress = await workflow.execute_activity_method(
                method,
                work,
                start_to_close_timeout=timeout,
                heartbeat_timeout=STEP_HEARTBEAT_TIMEOUT,
                retry_policy=HOUSEKEEPING_RETRY_POLICY,
            )
            step = run.step
            self._running = run
            self._show()
        return run

    def _describe(self, run: HousekeepingProgress) -> str:
        return describe(run)

    @workflow.update
    async def run_now(self) -> HousekeepingProgress:
        """Run housekeeping now (or let the run in progress finish); returns its counts."""
        return await self._run_now()

    @workflow.query
    def status(self) -> HousekeepingStatus:
        """Paused or not, the next run time, the run in progress and the last run."""
        return HousekeepingStatus(
            program=self._input.program, paused=self._paused, next_run_at=self._next,
            running=self._running, last=self._last, runs=self._runs,
        )  # fmt: skip
