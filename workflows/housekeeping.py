"""Housekeeping: a long-lived loop per program that matures, expires and reminds.

Each execution waits for the next run time (the program's ``housekeeping`` `Schedule`,
computed by an activity from the worker's app, so a changed schedule applies from the
next run), then runs the steps of a run at that instant (``as_of``), one activity each:
maturing earned lots that are due, expiring lots by the expiry policies, writing
``bonus_expiring`` reminders (in slices of chunks, one activity per slice; see
`loyalty.expiring`), and pruning the journey outboxes. The run is recorded in
``housekeeping_runs``; then the loop continues-as-new, so its history stays small
whatever the number of runs.

Operators can run it now (the ``run_now`` update waits for the run and returns its
counts; it runs even while the loop is paused), ``pause`` and ``resume`` it (signals; a
scheduled run in progress stops between steps), and read ``status`` (a query). The
workflow's current details in the Web UI show the progress of the run or the next run
time.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

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

# The activity doing each step, by the run's next step.
_STEPS = {
    "mature": (HousekeepingActivities.mature, STEP_TIMEOUT),
    "expire": (HousekeepingActivities.expire, STEP_TIMEOUT),
    "remind": (HousekeepingActivities.remind, REMIND_SLICE_TIMEOUT),
    "prune": (HousekeepingActivities.prune, STEP_TIMEOUT),
}


def housekeeping_workflow_id(task_queue: str, program: str) -> str:
    """The singleton id of a program's housekeeping loop (task queue: the deployment)."""
    return f"housekeeping/{program}@{task_queue}"


def describe(run: HousekeepingProgress) -> str:
    """One line of counts, for the Web UI and the CLI."""
    return (
        f"{run.matured_points:,} points matured ({run.matured_lots:,} lots), "
        f"{run.expired_points:,} expired ({run.expired_lots:,} lots), "
        f"{run.reminders:,} bonus_expiring reminders in {run.chunks} "
        f"chunk{'' if run.chunks == 1 else 's'}, "
        f"{run.pruned_starts + run.pruned_signals:,} outbox rows pruned"
        + (f"; step {run.step}" if run.finished_at is None else "")
    )


@workflow.defn(name="Housekeeping")
class Housekeeping:
    """Keeps a program's ledger on its schedule, for ever."""

    def __init__(self) -> None:
        self._input: HousekeepingLoopInput | None = None
        self._paused = False
        self._next: datetime | None = None
        self._running: HousekeepingProgress | None = None
        self._last: HousekeepingProgress | None = None
        self._runs = 0
        # Run-now requests received, and those a run has answered.
        self._requested = 0
        self._served = 0
        # Bumped by every signal and update: wakes the wait for the next run.
        self._wake = 0

    @workflow.run
    async def run(self, input: HousekeepingLoopInput) -> None:
        self._input = input
        self._paused, self._last, self._runs = input.paused, input.last, input.runs
        self._next = input.next_run_at or await self._next_after(workflow.now())
        while True:
            self._show()
            await self._wait_until_due()
            as_of = workflow.now()
            await self._run(as_of)
            self._next = await self._next_after(as_of)
            await workflow.wait_condition(
                lambda: workflow.all_handlers_finished() or self._requested > self._served
            )
            if self._requested == self._served:
                break
        workflow.continue_as_new(
            input.model_copy(
                update={"next_run_at": self._next, "paused": self._paused, "runs": self._runs,
                        "last": self._last}
            )
        )  # fmt: skip

    async def _next_after(self, at: datetime) -> datetime:
        assert self._input is not None
        return await workflow.execute_activity_method(
            HousekeepingActivities.next_run_at,
            NextHousekeepingInput(program=self._input.program, after=at),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=HOUSEKEEPING_RETRY_POLICY,
        )

    async def _wait_until_due(self) -> None:
        while True:
            if self._requested > self._served:
                return
            assert self._next is not None
            left = self._next - workflow.now()
            if not self._paused and left <= timedelta(0):
                return
            # A signal or update, or the next run time.
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda wake=self._wake: self._wake != wake,  # type: ignore[misc]
                    timeout=None if self._paused else left,
                )
            self._show()

    async def _run(self, as_of: datetime) -> None:
        assert self._input is not None
        # A run asked for with run_now runs even while the loop is paused.
        forced = self._requested > self._served
        self._served = self._requested
        work = HousekeepingWork(program=self._input.program, as_of=as_of)
        step = "mature"
        while step != "done":
            if self._paused and not forced:
                self._show()
                await workflow.wait_condition(lambda: not self._paused)
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
        self._running, self._last = None, run
        self._runs += 1
        self._served = self._requested

    def _show(self) -> None:
        """The current details in the Web UI: the run in progress, or the next one."""
        lines = []
        if self._running is not None:
            lines.append(f"**Running** (as of {self._running.as_of:%Y-%m-%d %H:%M} UTC): "
                         + describe(self._running))  # fmt: skip
        if self._paused:
            lines.append("**Paused**: resume with the `resume` signal.")
        elif self._running is None and self._next is not None:
            lines.append(f"Next run at {self._next:%Y-%m-%d %H:%M} UTC.")
        if self._last is not None:
            lines.append(f"Last run (as of {self._last.as_of:%Y-%m-%d %H:%M} UTC): "
                         + describe(self._last))  # fmt: skip
        workflow.set_current_details("\n\n".join(lines))

    @workflow.update
    async def run_now(self) -> HousekeepingProgress:
        """Run housekeeping now (or let the run in progress finish); returns its counts."""
        target = self._runs + 1
        self._requested += 1
        self._wake += 1
        await workflow.wait_condition(lambda: self._runs >= target)
        assert self._last is not None
        return self._last

    @workflow.signal
    def pause(self) -> None:
        """Stop at the next step boundary and skip scheduled runs until resumed."""
        self._paused = True
        self._wake += 1

    @workflow.signal
    def resume(self) -> None:
        """Undo `pause`; a run that fell due meanwhile starts at once."""
        self._paused = False
        self._wake += 1

    @workflow.query
    def status(self) -> HousekeepingStatus:
        """Paused or not, the next run time, the run in progress and the last run."""
        assert self._input is not None
        return HousekeepingStatus(
            program=self._input.program, paused=self._paused, next_run_at=self._next,
            running=self._running, last=self._last, runs=self._runs,
        )  # fmt: skip
