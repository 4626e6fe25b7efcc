"""The housekeeping loop's activities: one per step of a run, heartbeating.

The run's progress lives in ``housekeeping_runs`` (`loyalty.ledger.maturing`), moved on by
each step's transaction; the heartbeat carries the same counts for the Web UI and the
heartbeat timeout. A retried activity finds its step done, or resumes the reminders
after the last committed chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import heartbeating
from loyalty.app import LoyaltyApp, Program
from loyalty.ledger.housekeeping import (
    expire_step,
    mature_step,
    prune_step,
    remind_step,
    segments_step,
    snapshot_step,
    start_run,
)
from loyalty.ledger.reminders import REMINDER_CHUNK
from loyalty.models import HousekeepingProgress, HousekeepingWork, NextHousekeepingInput
from loyalty.settings import Settings
from loyalty.store.db import Conn

# How often a step that is one long statement (maturing, expiry) heartbeats meanwhile.
HEARTBEAT_EVERY = 10.0


class HousekeepingActivities:
    """Activities of the housekeeping loop; dependencies come in the constructor.

    ``chunk``: member accounts per chunk of ``bonus_expiring`` reminders.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        app: LoyaltyApp,
        settings: Settings,
        *,
        chunk: int = REMINDER_CHUNK,
    ) -> None:
        self.pool = pool
        self.app = app
        self.settings = settings
        self.chunk = chunk

    def all(self) -> list[object]:
        """The bound activity methods, for the worker."""
        return [
            self.next_run_at,
            self.mature,
            self.expire,
            self.remind,
            self.segments,
            self.snapshot,
            self.prune,
        ]

    def _program(self, name: str) -> Program:
        program = self.app.program(name)
        if program is None:
            raise ApplicationError(
                f"the app has no program {name!r}", type="UnknownProgram", non_retryable=True
            )
        return program

    async def _step(
        self,
        work: HousekeepingWork,
        step: Callable[[Conn, Program, HousekeepingProgress], Awaitable[HousekeepingProgress]],
    ) -> HousekeepingProgress:
        """Run a step that is one statement on the run of ``work``, heartbeating meanwhile."""
        program = self._program(work.program)
        async with self.pool.acquire() as conn:
            run = await start_run(conn, program.name, work.as_of)
            async with heartbeating(lambda: run.model_dump(mode="json"), HEARTBEAT_EVERY):
                return await step(conn, program, run)

    @activity.defn(name="next_housekeeping_at")
    async def next_run_at(self, ask: NextHousekeepingInput) -> datetime:
        """The program's next run time after ``ask.after``, by the app's current schedule.

        Raises:
            ApplicationError: ``UnknownProgram`` (non-retryable).
        """
        return self._program(ask.program).housekeeping.next_after(ask.after)

    @activity.defn(name="housekeeping_mature")
    async def mature(self, work: HousekeepingWork) -> HousekeepingProgress:
        """Mature the earned lots due at ``work.as_of``; returns the run's progress.

        Raises:
            ApplicationError: ``UnknownProgram`` (non-retryable).
        """
        return await self._step(
            work, lambda conn, program, run: mature_step(conn, self.app, program, run)
        )

    @activity.defn(name="housekeeping_expire")
    async def expire(self, work: HousekeepingWork) -> HousekeepingProgress:
        """Expire what is due at ``work.as_of`` by the program's expiry policies.

        Raises:
            ApplicationError: ``UnknownProgram`` (non-retryable).
        """
        return await self._step(work, expire_step)

    @activity.defn(name="housekeeping_remind")
    async def remind(self, work: HousekeepingWork) -> HousekeepingProgress:
        """Write chunks of ``bonus_expiring`` reminders for about ``work.seconds``.

        Returns the run's progress: ``step`` is still ``remind`` while members are left.

        Raises:
            ApplicationError: ``UnknownProgram`` (non-retryable).
        """
        program = self._program(work.program)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + work.seconds
        async with self.pool.acquire() as conn:
            run = await start_run(conn, program.name, work.as_of)
            while run.step == "remind" and loop.time() < deadline:
                run = await remind_step(conn, self.app, program, run, chunk=self.chunk)
                activity.heartbeat(run.model_dump(mode="json"))
        return run

    @activity.defn(name="housekeeping_segments")
    async def segments(self, work: HousekeepingWork) -> HousekeepingProgress:
        """Refresh the segments time alone can change (`segments_step`)."""
        return await self._step(
            work, lambda conn, program, run: segments_step(conn, self.app, program, run)
        )

    @activity.defn(name="housekeeping_snapshot")
    async def snapshot(self, work: HousekeepingWork) -> HousekeepingProgress:
        """Record the day's liability per point currency (`snapshot_step`).

        Raises:
            ApplicationError: ``UnknownProgram`` (non-retryable).
        """
        return await self._step(work, snapshot_step)

    @activity.defn(name="housekeeping_prune")
    async def prune(self, work: HousekeepingWork) -> HousekeepingProgress:
        """Prune the journey outboxes (``LOYALTY_JOURNEY_RETENTION_DAYS``), finish the run.

        Raises:
            ApplicationError: ``UnknownProgram`` (non-retryable).
        """
        return await self._step(
            work,
            lambda conn, _, run: prune_step(conn, run, older_than=self.settings.journey_retention),
        )
