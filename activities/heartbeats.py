"""Heartbeating while a long step runs: one helper for the activities that need it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from temporalio import activity


@contextlib.asynccontextmanager
async def heartbeating(details: Callable[[], object], every: float) -> AsyncIterator[None]:
    """Heartbeat ``details()`` now and every ``every`` seconds until the block ends."""

    async def beat() -> None:
        while True:
            activity.heartbeat(details())
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
