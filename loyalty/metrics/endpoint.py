"""The Prometheus endpoint of a process: `loyalty worker` and `loyalty dev` on
``LOYALTY_METRICS_PORT`` (the worker's metrics, the database gauges, the Temporal SDK's,
and in `loyalty dev` the API's), `loyalty api` on ``LOYALTY_API_METRICS_PORT``.

prometheus_client serves it from a thread of its own; what needs the event loop (reading
the database gauges, draining the Temporal SDK's buffer) runs here, as tasks, on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from prometheus_client import REGISTRY, start_http_server
from prometheus_client.registry import Collector

from loyalty.errors import ConfigurationError
from loyalty.metrics import database
from loyalty.metrics.temporal import TemporalMetrics
from loyalty.settings import Settings
from loyalty.store.db import connect

log = logging.getLogger("loyalty.metrics")
# How often the Temporal SDK's buffered updates are drained (besides each scrape).
DRAIN_SECONDS = 1.0


@contextlib.asynccontextmanager
async def serving_metrics(
    settings: Settings,
    *,
    port: int,
    variable: str,
    dsn: str | None = None,
    programs: Sequence[str] = (),
    temporal: TemporalMetrics | None = None,
) -> AsyncIterator[str | None]:
    """Serve ``/metrics`` on ``LOYALTY_METRICS_HOST``:``port`` while the block runs; yields
    its URL, or None when ``LOYALTY_METRICS`` is off.

    With ``dsn``, the database gauges are read every ``LOYALTY_METRICS_REFRESH_SECONDS``
    (``programs`` get a backlog of 0 on every partition when they have none); with
    ``temporal``, the SDK's metrics are served too.

    Raises:
        ConfigurationError: the address is taken or not this host's (``variable`` is the
            port's setting, named in the message).
    """
    if not settings.metrics:
        yield None
        return
    host = settings.metrics_host
    try:
        server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as exc:
        raise ConfigurationError(
            f"the metrics endpoint could not listen on {host}:{port} "
            f"(LOYALTY_METRICS_HOST, {variable}): {exc}"
        ) from None
    collectors: list[Collector] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        if dsn is not None:
            gauges = database.DatabaseGauges()
            REGISTRY.register(gauges)
            collectors.append(gauges)
            tasks.append(asyncio.create_task(_refresh(settings, dsn, list(programs), gauges)))
        if temporal is not None:
            REGISTRY.register(temporal)
            collectors.append(temporal)
            tasks.append(asyncio.create_task(_drain(temporal)))
        shown = f"[{host}]" if ":" in host else host
        yield f"http://{shown}:{server.server_port}/metrics"
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for collector in collectors:
            REGISTRY.unregister(collector)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


async def _refresh(
    settings: Settings, dsn: str, programs: list[str], gauges: database.DatabaseGauges
) -> None:
    """Read the database gauges on a timer, on one connection of their own (made again
    after a failure); a failure keeps the last values, with ``loyalty_database_up`` 0,
    and is logged once per outage."""
    conn = None
    said = False  # one line per outage, not one per reading
    try:
        while True:
            try:
                if conn is None or conn.is_closed():
                    conn = await connect(dsn)
                gauges.update(await database.read(conn, settings.router_partitions, programs))
                said = False
            except Exception as exc:
                # Before a first reading the process is starting: a database that cannot
                # be reached is its own error to report, in one line.
                if not said and gauges.reading is not None:
                    log.warning("metrics: could not read the database gauges: %s", exc)
                    said = True
                gauges.failed()
                if conn is not None:
                    conn.terminate()
                    conn = None
            await asyncio.sleep(settings.metrics_refresh_seconds)
    finally:
        if conn is not None:
            conn.terminate()


async def _drain(temporal: TemporalMetrics) -> None:
    """Drain the SDK's buffer often enough that it never fills between scrapes."""
    while True:
        await asyncio.sleep(DRAIN_SECONDS)
        temporal.drain()
