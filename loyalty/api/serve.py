"""Serving the API with uvicorn, inside the caller's event loop.

`loyalty api` serves it alone; `loyalty dev` serves it beside the worker. The caller
owns the signals (`loyalty dev` already stops everything on Ctrl-C), so uvicorn's own
signal handling is switched off and a ``stop`` event ends the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator

import uvicorn

from loyalty.api.app import create_api
from loyalty.app import LoyaltyApp
from loyalty.errors import ConfigurationError
from loyalty.settings import Settings


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def api_url(settings: Settings, port: int | None = None) -> str:
    """The address the API answers on, as a client would write it."""
    host = settings.api_host
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port if port is not None else settings.api_port}"


async def serve_api(
    settings: Settings,
    dsn: str,
    app: LoyaltyApp | None,
    stop: asyncio.Event,
    started: asyncio.Future[str] | None = None,
) -> None:
    """Serve until ``stop`` is set; ``started`` gets the API's URL once it listens (with
    the port the system chose when ``LOYALTY_API_PORT`` is 0).

    Raises:
        ConfigurationError: the address is taken or cannot be bound.
        ServiceUnavailable: PostgreSQL cannot be reached at start.
    """
    config = uvicorn.Config(
        create_api(settings, dsn, app),
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        access_log=False,
        lifespan="on",
        # A JSON body is read by the API itself (exact decimals, 1 MiB at most).
        h11_max_incomplete_event_size=64 * 1024,
    )
    server = _Server(config)

    async def stopper() -> None:
        await stop.wait()
        server.should_exit = True

    async def watch_start() -> None:
        # uvicorn offers no event for "listening"; its flag is polled.
        while not server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        port = settings.api_port
        for listening in server.servers:
            for sock in listening.sockets:
                port = sock.getsockname()[1]
        if started is not None and not started.done():
            started.set_result(api_url(settings, port))

    tasks = [asyncio.create_task(stopper()), asyncio.create_task(watch_start())]
    try:
        await server.serve()
    finally:
        for task in tasks:
            task.cancel()
    if not server.started and not stop.is_set():
        raise ConfigurationError(
            f"the API could not listen on {settings.api_host}:{settings.api_port} "
            "(LOYALTY_API_HOST, LOYALTY_API_PORT): the address is taken or not this host's"
        )
