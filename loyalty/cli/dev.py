"""`loyalty dev` and `loyalty worker`: the processes, their start and their clean stop.

`loyalty dev` watches the servers it runs: if its Temporal dev server or its PostgreSQL
dies, it says so in one line, stops everything else and exits 1, instead of a worker
retrying a dead server for ever. Servers that a killed `loyalty dev` left behind are
stopped or taken over at the next start (`loyalty.store.embedded`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.panel import Panel
from temporalio.client import Client

from loyalty.app import LoyaltyApp
from loyalty.cli.kit import problem, stop_on_sigterm
from loyalty.codec import HOME_KEYRING, write_keyring
from loyalty.metrics.endpoint import serving_metrics
from loyalty.metrics.temporal import TemporalMetrics, runtime_with_metrics
from loyalty.settings import Settings
from loyalty.store.db import Database
from loyalty.store.embedded import EmbeddedPostgres, TemporalDevServer
from loyalty.temporal import connect_temporal, keyring

if TYPE_CHECKING:
    from temporalio.runtime import LoggingConfig

StoryHook = Callable[[Client, str, str | None], Awaitable[int]]
"""Played once the worker is ready, with the Temporal client, the database DSN and the
Web UI's URL (`loyalty.cli.demo.play`): its result, when it returns, is the exit code."""

# How often `loyalty dev` checks that the servers it runs are alive.
WATCH_SECONDS = 1.0
# How long the worker may take to stop once a server it needs has died.
STOP_TIMEOUT = 15.0

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
        loop.remove_signal_handler(signal.SIGINT)
        # A SIGTERM while the servers stop still lets their clean-up run.
        stop_on_sigterm()


Servers = tuple[TemporalDevServer | None, EmbeddedPostgres | None]
# The Temporal core's log lines, forwarded to Python logging (see `_forward_core_logs`).
CORE_LOG = logging.getLogger("loyalty.dev.temporal")


def _forward_core_logs(settings: Settings) -> TemporalMetrics | None:
    """Send the Temporal core's log lines through Python logging, to stderr as before;
    with metrics on, buffer the SDK's metrics too, for the metrics endpoint (returned).

    Once its Temporal dev server has died, `loyalty dev` silences them: the stopping
    worker would otherwise print a warning for each of the retries it makes, for
    seconds, to report its cancelled activities to the dead server. Must run before any
    Temporal client exists (it sets the default runtime).
    """
    from temporalio.runtime import (
        LogForwardingConfig,
        LoggingConfig,
        Runtime,
        TelemetryConfig,
        TelemetryFilter,
    )

    logging_config = LoggingConfig(
        filter=TelemetryFilter(core_level="WARN", other_level="ERROR"),
        forwarding=LogForwardingConfig(logger=CORE_LOG),
    )
    if settings.metrics:
        return _metered_runtime(logging_config)
    runtime = Runtime(telemetry=TelemetryConfig(logging=logging_config))
    Runtime.set_default(runtime, error_if_already_set=False)
    return None


def _metered_runtime(logging_config: LoggingConfig | None = None) -> TemporalMetrics:
    """Make the default Temporal runtime one whose metrics the endpoint serves; must run
    before any Temporal client exists."""
    from temporalio.runtime import Runtime

    runtime, buffer = runtime_with_metrics(logging_config)
    Runtime.set_default(runtime, error_if_already_set=False)
    return TemporalMetrics(buffer)


async def _watch(servers: Servers, stop: asyncio.Event) -> None:
    """Return once a server that `loyalty dev` runs has died, having said so and set stop."""
    temporal, postgres = servers
    while True:
        await asyncio.sleep(WATCH_SECONDS)
        if temporal is not None and (code := temporal.exit_code()) is not None:
            died = f"the Temporal dev server (pid {temporal.pid}) exited with code {code}"
            CORE_LOG.setLevel(logging.CRITICAL)
        elif postgres is not None and not postgres.is_running():
            died = f"PostgreSQL ({postgres.data_dir}) is no longer running"
        else:
            continue
        problem(f"{died}; stopping everything")
        stop.set()
        return


async def _worker(work: Awaitable[None], died: asyncio.Task[None]) -> None:
    """Run the worker; once a server died, give it `STOP_TIMEOUT` to stop, quietly.

    Its errors then are the dead server's, already said in one line; a worker whose
    server is gone may also never finish stopping.
    """
    worker = asyncio.ensure_future(work)
    await asyncio.wait({worker, died}, return_when=asyncio.FIRST_COMPLETED)
    if not died.done():
        await worker
        return
    done, _ = await asyncio.wait({worker}, timeout=STOP_TIMEOUT)
    if not done:
        worker.cancel()
    with contextlib.suppress(Exception, asyncio.CancelledError):
        await worker


async def _serve(
    settings: Settings,
    app: LoyaltyApp,
    dsn: str,
    address: str,
    console: Console,
    started: float,
    ui_url: str | None,
    story: StoryHook | None = None,
    servers: Servers = (None, None),
    *,
    with_api: bool = True,
    temporal_metrics: TemporalMetrics | None = None,
) -> int:
    from worker import run_worker

    async with serving_metrics(
        settings, port=settings.metrics_port, variable="LOYALTY_METRICS_PORT", dsn=dsn,
        programs=list(app.programs), temporal=temporal_metrics,
    ) as metrics_url:  # fmt: skip
        client = await connect_temporal(settings, address)
        stop = asyncio.Event()
        ready = asyncio.Event()
        died = asyncio.create_task(_watch(servers, stop))
        tasks: list[asyncio.Task[None]] = []
        try:
            with _stop_on_signals(stop):
                work = run_worker(settings, app, client, dsn, stop, ready)
                task = asyncio.create_task(_worker(work, died))
                waiter = asyncio.create_task(ready.wait())
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if task.done():
                    task.result()
                    return 1
                api_url = await _start_api(settings, app, dsn, stop, tasks) if with_api else None
                _print_ready(settings, app, console, started, address, ui_url, api_url, metrics_url)
                code = 0
                if story is not None:
                    code = await _play(story(client, dsn, ui_url), task, stop, console)
                await task
        finally:
            stop.set()
            died.cancel()
            for api in tasks:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await api
        if died.done() and not died.cancelled():
            return 1
        console.print("stopped the worker")
        return code


async def _start_api(
    settings: Settings,
    app: LoyaltyApp,
    dsn: str,
    stop: asyncio.Event,
    tasks: list[asyncio.Task[None]],
) -> str | None:
    """Serve the HTTP API beside the worker; its URL, or None (said in one line) when it
    cannot listen: the worker runs on without it."""
    from loyalty.api.serve import serve_api

    started: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    serving = asyncio.create_task(serve_api(settings, dsn, app, stop, started))
    tasks.append(serving)
    waiting: set[asyncio.Future[Any]] = {serving, started}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    if started.done():
        return started.result()
    try:
        serving.result()
    except Exception as exc:
        problem(f"{exc}; running without it")
    return None


def _print_ready(
    settings: Settings,
    app: LoyaltyApp,
    console: Console,
    started: float,
    address: str,
    ui_url: str | None,
    api_url: str | None = None,
    metrics_url: str | None = None,
) -> None:
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
    if api_url:
        lines.append(f"HTTP API: [link={api_url}]{api_url}[/link]   docs: {api_url}/docs")
    lines.extend(_codec_lines(settings, ui_url, api_url))
    if metrics_url:
        lines.append(f"Metrics: [link={metrics_url}]{metrics_url}[/link]")
    lines.append(f"Temporal: {address}   data: {settings.home.resolve()}")
    lines.append("Stop with Ctrl-C.")
    console.print(Panel("\n".join(lines), title="loyalty dev", expand=False))
    # Printed raw, outside the panel, so that it can be copied whole.
    console.print("Try, in another shell:", soft_wrap=True)
    console.print(TRY_COMMAND, soft_wrap=True, markup=False, highlight=False)


def _codec_lines(settings: Settings, ui_url: str | None, api_url: str | None) -> list[str]:
    """Where the payload key is and who decodes with it; never the key."""
    keys = keyring(settings)
    if keys is None:
        return ["Payloads: [bold yellow]not encrypted[/] (no LOYALTY_CODEC_KEYS or _KEYRING)"]
    if settings.codec_keys is not None:
        source = "LOYALTY_CODEC_KEYS"
    else:
        source = str((settings.codec_keyring or settings.home / HOME_KEYRING).resolve())
    lines = [f"Payloads encrypted with key {keys.current}: {source}"]
    if api_url:
        opened = " (no API key asked on loopback)" if settings.codec_auth == "none" else ""
        reader = "the Web UI and " if ui_url else ""
        lines.append(
            f"Codec endpoint for {reader}temporal --codec-endpoint: {api_url}/codec{opened}"
        )
    return lines


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dev_codec(settings: Settings) -> Settings:
    """The settings with `loyalty dev`'s payload key: the configured keys, else the
    keyring under its home, written (mode 0600) on the first start.

    Its Web UI cannot send an API key, so on a loopback API address the codec endpoint
    asks for none, unless ``LOYALTY_CODEC_AUTH`` says otherwise.

    Raises:
        ConfigurationError: the configured or stored keys are unusable.
    """
    path = settings.home / HOME_KEYRING
    if settings.codec_keys is None and settings.codec_keyring is None and not path.exists():
        write_keyring(path)
    keyring(settings)
    if "codec_auth" not in settings.model_fields_set and _is_loopback(settings.api_host):
        settings = settings.model_copy(update={"codec_auth": "none"})
    return settings


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
    from loyalty.api.serve import api_url

    started = time.monotonic()
    temporal_metrics = _forward_core_logs(settings)
    settings.home.mkdir(parents=True, exist_ok=True)
    settings = dev_codec(settings)
    # The port the system picks (0) is known only once the API listens: no codec then.
    codec_endpoint = f"{api_url(settings)}/codec" if settings.api_port else None
    temporal: TemporalDevServer | None = None
    # `loyalty dev` owns the embedded server even if a client command started it.
    async with Database(settings, take_over=True) as database:
        embedded = database.embedded
        if embedded is not None and embedded.adopted is not None:
            console.print(f"took over PostgreSQL (pid {embedded.adopted}), left running by a "
                          "process that did not stop it")  # fmt: skip
        try:
            address = settings.effective_temporal_address
            ui_url = None
            if settings.temporal_address is None:
                temporal = TemporalDevServer(
                    settings.home,
                    settings.dev_temporal_port,
                    settings.dev_ui_port,
                    settings.temporal_namespace,
                    codec_endpoint,
                )
                await temporal.start_and_wait()
                if temporal.stopped_left_behind is not None:
                    console.print(
                        f"stopped the Temporal dev server (pid {temporal.stopped_left_behind}) "
                        "left running by a `loyalty dev` that did not stop it"
                    )
                address, ui_url = temporal.address, temporal.ui_url
            return await _serve(
                settings, app, database.dsn, address, console, started, ui_url, story,
                (temporal, embedded), temporal_metrics=temporal_metrics,
            )  # fmt: skip
        finally:
            if temporal is not None:
                running = temporal.exit_code() is None
                temporal.stop()
                if running:
                    console.print("stopped the Temporal dev server")
            if embedded is not None and embedded.owned and embedded.is_running():
                console.print("stopping PostgreSQL")


async def run_worker_only(settings: Settings, app: LoyaltyApp, console: Console) -> int:
    """Run the worker against configured services until a signal."""
    temporal_metrics = _metered_runtime() if settings.metrics else None
    async with Database(settings) as database:
        return await _serve(
            settings,
            app,
            database.dsn,
            settings.effective_temporal_address,
            console,
            time.monotonic(),
            None,
            with_api=False,
            temporal_metrics=temporal_metrics,
        )
