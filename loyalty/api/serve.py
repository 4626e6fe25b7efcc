"""Serving the API with uvicorn, inside the caller's event loop.

`loyalty api` serves it alone; `loyalty dev` serves it beside the worker. The caller
owns the signals (`loyalty dev` already stops everything on Ctrl-C), so uvicorn's own
signal handling is switched off and a ``stop`` event ends the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
from collections.abc import Generator

import uvicorn

from loyalty.api.app import create_api
from loyalty.app import LoyaltyApp
from loyalty.errors import ConfigurationError
from loyalty.settings import Settings
from loyalty.store.db import create_pool
from loyalty.temporal import keyring


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def api_url(settings: Settings, port: int | None = None) -> str:
    """The address the API answers on, as a client would write it."""
    host = settings.api_host
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port if port is not None else settings.api_port}"


def _listen(settings: Settings) -> socket.socket:
    """The API's listening socket, bound here rather than by uvicorn, which exits the
    whole process (`sys.exit`) when it cannot bind.

    Raises:
        ConfigurationError: the address is taken or not this host's.
    """
    host, port = settings.api_host, settings.api_port
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except BaseException:
            sock.close()
            raise
    except OSError as exc:
        raise ConfigurationError(
            f"the API could not listen on {host}:{port} (LOYALTY_API_HOST, LOYALTY_API_PORT): {exc}"
        ) from None
    return sock


async def serve_api(
    settings: Settings,
    dsn: str,
    app: LoyaltyApp | None,
    stop: asyncio.Event,
    started: asyncio.Future[str] | None = None,
) -> None:
    """Serve until ``stop`` is set; ``started`` gets the API's URL once it listens (with
    the port the system chose when ``LOYALTY_API_PORT`` is 0).

    The socket is bound and the database pool made before uvicorn starts, so that
    neither failure reaches uvicorn, which would end the process.

    Raises:
        ConfigurationError: the address is taken or cannot be bound; the codec keys are
            unusable.
        ServiceUnavailable: PostgreSQL cannot be reached at start.
    """
    # Checked before anything is opened: the application reads them when it is made.
    keyring(settings)
    sock = _listen(settings)
    try:
        pool = await create_pool(dsn, size=settings.database_pool_size, stateless=True)
    except BaseException:
        sock.close()
        raise
    config = uvicorn.Config(
        create_api(settings, dsn, app, pool=pool),
        log_level="warning",
        access_log=False,
        lifespan="on",
        # A JSON body is read by the API itself (exact decimals, 1 MiB at most).
        h11_max_incomplete_event_size=64 * 1024,
    )
    server = _Server(config)
    # What start-up made (FastAPI's routes and models, pydantic's validators, the
    # settings) lives as long as the process: frozen out of the collector's generations,
    # so that its collections go through what requests make only (they took about half
    # the time in the benchmark's phases).
    gc.collect()
    gc.freeze()

    async def stopper() -> None:
        await stop.wait()
        server.should_exit = True

    async def watch_start() -> None:
        # uvicorn offers no event for "listening"; its flag is polled.
        while not server.started:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if started is not None and not started.done():
            started.set_result(api_url(settings, sock.getsockname()[1]))

    tasks = [asyncio.create_task(stopper()), asyncio.create_task(watch_start())]
    try:
        await server.serve(sockets=[sock])
    finally:
        for task in tasks:
            task.cancel()
        sock.close()
