"""The tier maintenance loop's activity: review chunks of members for a while, heartbeating.

The run's progress lives in ``maintenance_runs`` (`loyalty.tiers.maintenance`), moved by each
chunk's transaction; the heartbeat carries the same counts for the Web UI and the
heartbeat timeout. A retried activity resumes after the last committed chunk.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import asyncpg
from temporalio import activity
from temporalio.exceptions import ApplicationError

from loyalty.app import LoyaltyApp, Program
from loyalty.models import MaintenanceProgress, MaintenanceSlice, NextRunInput
from loyalty.settings import Settings
from loyalty.tiers import TierScheme
from loyalty.tiers.maintenance import run_chunk, start_run


class MaintenanceActivities:
    """Activities of the tier maintenance loop; dependencies come in the constructor."""

    def __init__(self, pool: asyncpg.Pool, app: LoyaltyApp, settings: Settings) -> None:
        self.pool = pool
        self.app = app
        self.settings = settings

    def all(self) -> list[object]:
        """The bound activity methods, for the worker."""
        return [self.next_run_at, self.run_slice]

    def _scheme(self, program_name: str, scheme_name: str) -> tuple[Program, TierScheme]:
        program = self.app.program(program_name)
        for scheme in program.tier_schemes if program else ():
            if scheme.name == scheme_name:
                assert program is not None
                return program, scheme
        raise ApplicationError(
            f"program {program_name!r} has no tier scheme {scheme_name!r}",
            type="UnknownScheme",
            non_retryable=True,
        )

    @activity.defn(name="next_maintenance_at")
    async def next_run_at(self, ask: NextRunInput) -> datetime:
        """The scheme's next run time after ``ask.after``, by the app's current schedule.

        Raises:
            ApplicationError: ``UnknownScheme`` (non-retryable).
        """
        _, scheme = self._scheme(ask.program, ask.scheme)
        return scheme.schedule.next_after(ask.after)

    @activity.defn(name="run_maintenance_slice")
    async def run_slice(self, work: MaintenanceSlice) -> MaintenanceProgress:
        """Review chunks of the run at ``work.as_of`` for about ``work.seconds``.

        Returns the run's progress; ``finished_at`` is set once every member was reviewed.

        Raises:
            ApplicationError: ``UnknownScheme`` (non-retryable) if the app no longer has
                the program or scheme.
        """
        program, scheme = self._scheme(work.program, work.scheme)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + work.seconds
        async with self.pool.acquire() as conn:
            run = await start_run(conn, program.name, scheme.name, work.as_of)
            while run.finished_at is None and loop.time() < deadline:
                run = await run_chunk(conn, program, scheme, run, self.settings.maintenance_chunk)
                activity.heartbeat(run.model_dump(mode="json"))
                pause = self.settings.maintenance_pause_seconds
                if pause and run.finished_at is None:
                    await asyncio.sleep(pause)
        return run
