"""`loyalty dev` and `loyalty worker`: the processes, their start and their clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterator

from rich.console import Console
from rich.panel import Panel
from temporalio.client import Client

from loyalty.app import LoyaltyApp
from loyalty.settings import Settings
from loyalty.store.db import Database
from loyalty.store.embedded import TemporalDevServer
from loyalty.temporal import connect_temporal

StoryHook = Callable[[Client, str, str | None], Awaitable[int]]
"""Played once the worker is ready, with the Temporal client, the database DSN and the
Web UI's URL (`loyalty.cli.demo.play`): its result, when it returns, is the exit code."""

TRY_COMMAND = (
    'loyalty emit --wait \'{"type":"points_deposit","event_id":"e1","member_id":"m1",'
    '"points":120,"kind":"available","reason":"welcome"}\' && loyalty member m1'
)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _serve(
    settings: Settings,
    app: LoyaltyApp,
    dsn: str,
    address: str,
    console: Console,
    started: float,
    ui_url: str | None,
    story: StoryHook | None = None,
) -> int:
    from worker import run_worker

    client = await connect_temporal(settings, address)
    stop = asyncio.Event()
    ready = asyncio.Event()
    with _stop_on_signals(stop):
        task = asyncio.create_task(run_worker(settings, app, client, dsn, stop, ready))
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if task.done():
            task.result()
            return 1
        elapsed = time.monotonic() - started
        lines = [
            f"[bold green]Ready[/] in {elapsed:.1f}s: worker on task queue "
            f"[bold]{settings.task_queue}[/], programs: {', '.join(app.programs)}",
        ]
        if ui_url:
            query = "WorkflowType%3D%22EventRouter%22"
            lines.append(f"Temporal Web UI: [link={ui_url}]{ui_url}[/link]")
            namespace = settings.temporal_namespace
            lines.append(f"Routers: {ui_url}/namespaces/{namespace}/workflows?query={query}")
            loops = "WorkflowType%3D%22TierMaintenance%22%20OR%20WorkflowType%3D%22Housekeeping%22"
            lines.append(f"Loops: {ui_url}/namespaces/{namespace}/workflows?query={loops}")
        lines.append(f"Temporal: {address}   data: {settings.home.resolve()}")
        lines.append("Stop with Ctrl-C.")
        console.print(Panel("\n".join(lines), title="loyalty dev", expand=False))
        # Printed raw, outside the panel, so that it can be copied whole.
        console.print("Try, in another shell:", soft_wrap=True)
        console.print(TRY_COMMAND, soft_wrap=True, markup=False, highlight=False)
        code = 0
        if story is not None:
            code = await _play(story(client, dsn, ui_url), task, stop, console)
        await task
    console.print("stopped the worker")
    return code


async def _play(
    story: Awaitable[int], worker: asyncio.Task[None], stop: asyncio.Event, console: Console
) -> int:
    """Run the story beside the worker; its end stops the worker, a stop ends it."""
    playing = asyncio.ensure_future(story)
    await asyncio.wait({worker, playing}, return_when=asyncio.FIRST_COMPLETED)
    if not playing.done():
        playing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await playing
        return 0
    stop.set()
    try:
        return playing.result()
    except Exception as exc:
        console.print(f"[red]the demo story failed: {exc!r}[/]")
        return 1


async def run_dev(
    settings: Settings, app: LoyaltyApp, console: Console, story: StoryHook | None = None
) -> int:
    """Start PostgreSQL and Temporal unless configured, run the worker until a signal.

    With ``story`` (the demo), play it once the worker is ready; the worker stops when
    the story returns, and the story's result is the exit code.
    """
    started = time.monotonic()
    settings.home.mkdir(parents=True, exist_ok=True)
    temporal: TemporalDevServer | None = None
    async with Database(settings) as database:
        try:
            address = settings.effective_temporal_address
            ui_url = None
            if settings.temporal_address is None:
                temporal = TemporalDevServer(
                    settings.home,
                    settings.dev_temporal_port,
                    settings.dev_ui_port,
                    settings.temporal_namespace,
                )
                await temporal.start_and_wait()
                address, ui_url = temporal.address, temporal.ui_url
            return await _serve(
                settings, app, database.dsn, address, console, started, ui_url, story
            )
        finally:
            if temporal is not None:
                temporal.stop()
                console.print("stopped the Temporal dev server")
            if database.embedded is not None and database.embedded.owned:
                console.print("stopping PostgreSQL")


async def run_worker_only(settings: Settings, app: LoyaltyApp, console: Console) -> int:
    """Run the worker against configured services until a signal."""
    async with Database(settings) as database:
        return await _serve(
            settings,
            app,
            database.dsn,
            settings.effective_temporal_address,
            console,
            time.monotonic(),
            None,
        )
