"""ScheduledLoop: what the long-lived loops (tier maintenance, housekeeping) share.

A loop waits for its next run time (durable timer), runs, then the workflow continues as
new. Operators can ask for a run now (an update, answered when that run ends; it runs even
while paused), pause and resume the loop (signals), and read its state (a query, defined
by each loop with its own model). The run in progress, the next run time and the last run
are the workflow's current details in the Web UI.

A subclass's `__init__` is a `workflow.init` that passes the carried state (paused, last
run, run count, next run time) from its input, and the loop's one-line summary, so signals
and updates that arrive with the start see it. It gives the next run time (`_next_after`,
an activity), the run itself (`_work`, activities that call `_between` at their
boundaries), a one-line `_describe` of a run, and its `run_now` update, `status` query and
`@workflow.run` method, which calls `_loop` and then `_continue_as_new`.

Temporal keeps the static summary given at the start on the first run only (a
continue-as-new command carries no user metadata), so the summary also heads the current
details of every run.
"""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta
from typing import ClassVar, Generic, NoReturn, Protocol, TypeVar

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from pydantic import BaseModel


class _Run(Protocol):
    @property
    def as_of(self) -> datetime: ...


P = TypeVar("P", bound=_Run)


class ScheduledLoop(Generic[P]):
    """The schedule, run-now, pause and resume of a long-lived loop (see the module)."""

    # What the Web UI tells an operator who finds the loop paused.
    RESUME_HINT: ClassVar[str] = "resume with the `resume` signal"

    def __init__(
        self,
        *,
        summary: str,
        paused: bool,
        last: P | None,
        runs: int,
        next_run_at: datetime | None,
    ) -> None:
        self._summary = summary
        # Set from the input before any handler runs (subclasses' `__init__` is a
        # `workflow.init`), so a pause or run-now delivered with the start is not undone.
        self._paused = paused
        self._next = next_run_at
        self._running: P | None = None
        self._last = last
        self._runs = runs
        # Run-now requests received, and those a run has answered.
        self._requested = 0
        self._served = 0
        # Bumped by every signal and update: wakes the wait for the next run.
        self._wake = 0

    async def _next_after(self, at: datetime) -> datetime:
        raise NotImplementedError

    async def _work(self, as_of: datetime, forced: bool) -> P:
        """Run at ``as_of``; set ``_running`` and call `_between` as it goes."""
        raise NotImplementedError

    def _describe(self, run: P) -> str:
        raise NotImplementedError

    async def _loop(self) -> None:
        """Wait for the next run and run, again while run-now requests are pending."""
        if self._next is None:
            self._show()
            self._next = await self._next_after(workflow.now())
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
                return

    def _continue_as_new(self, input: BaseModel) -> NoReturn:
        """Continue as new with the carried state; this run's details say it has ended."""
        self._show(closed=True)
        carried = {"next_run_at": self._next, "paused": self._paused, "runs": self._runs,
                   "last": self._last}  # fmt: skip
        workflow.continue_as_new(input.model_copy(update=carried))

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
        # A run asked for with run_now runs even while the loop is paused.
        forced = self._requested > self._served
        self._served = self._requested
        run = await self._work(as_of, forced)
        self._running, self._last = None, run
        self._runs += 1
        self._served = self._requested

    async def _between(self, forced: bool) -> None:
        """At a boundary of a run: wait while a scheduled run is paused."""
        if self._paused and not forced:
            self._show()
            await workflow.wait_condition(lambda: not self._paused)

    def _show(self, *, closed: bool = False) -> None:
        """The current details in the Web UI: the run in progress, or the next one.

        A run that continues as new keeps its last details for ever (the Web UI replays
        it to read them), so its details then say where the loop went on.
        """
        lines = [f"**{self._summary}**"]
        if closed:
            lines.append(
                f"Continued as new after run {self._runs}: the latest run of this workflow "
                "id carries on."
            )
        elif self._running is not None:
            lines.append(f"**Running** (as of {self._running.as_of:%Y-%m-%d %H:%M} UTC): "
                         + self._describe(self._running))  # fmt: skip
        if self._paused and not closed:
            lines.append(f"**Paused**: {self.RESUME_HINT}.")
        elif self._running is None and self._next is not None:
            lines.append(f"Next run at {self._next:%Y-%m-%d %H:%M} UTC.")
        if self._last is not None:
            lines.append(f"Last run (as of {self._last.as_of:%Y-%m-%d %H:%M} UTC): "
                         + self._describe(self._last))  # fmt: skip
        workflow.set_current_details("\n\n".join(lines))

    async def _run_now(self) -> P:
        """The body of the loops' ``run_now`` updates: ask for a run, wait for it."""
        target = self._runs + 1
        self._requested += 1
        self._wake += 1
        await workflow.wait_condition(lambda: self._runs >= target)
        assert self._last is not None
        return self._last

    @workflow.signal
    def pause(self) -> None:
        """Stop a scheduled run at its next boundary and skip runs until resumed."""
        self._paused = True
        self._wake += 1

    @workflow.signal
    def resume(self) -> None:
        """Undo `pause`; a run that fell due meanwhile starts at once."""
        self._paused = False
        self._wake += 1
