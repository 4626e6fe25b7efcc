"""What every `loyalty` command shares: consoles, settings, running a coroutine.

`run` is where an expected failure becomes one line and an exit code: 2 for invalid
configuration, 3 for a service that cannot be reached (`ServiceUnavailable`, or a
connection lost in the middle of a command). It also makes SIGTERM stop a command the
way Ctrl-C does, with every clean-up run (an embedded PostgreSQL it started is stopped).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import typer
from rich.console import Console

from loyalty.app import LoyaltyApp, load_app
from loyalty.errors import ConfigurationError, ServiceUnavailable
from loyalty.flows import check_app
from loyalty.settings import Settings

if TYPE_CHECKING:
    import asyncpg

console = Console()
# Problems are one line each, whatever the width: scripts count and parse them.
errors = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


def problem(message: str) -> None:
    """Print one problem line on stderr, as ``error: <message>``."""
    errors.print(f"error: {message}", markup=False, highlight=False)


def report(exc: ConfigurationError) -> None:
    """Print a configuration error, one line per problem when it lists several."""
    for line in getattr(exc, "problems", None) or [str(exc)]:
        problem(line)


def settings_of(ctx: typer.Context) -> Settings:
    """The settings loaded once by the command line's callback."""
    settings: Settings = ctx.obj
    return settings


# Exit codes of every command (README, "Command line"); a command stopped by a signal
# exits as shells expect, 128 + the signal's number.
INVALID = 2
UNAVAILABLE = 3
INTERRUPTED = 128 + signal.SIGINT
TERMINATED = 128 + signal.SIGTERM
_terminated: list[asyncio.Task[Any]] = []


def _terminate(task: asyncio.Task[Any]) -> None:
    _terminated.append(task)
    task.cancel()


def stop_on_sigterm() -> None:
    """From now on, SIGTERM cancels the current task, as Ctrl-C cancels `asyncio.run`'s.

    Python's default for SIGTERM ends the process at once, skipping every ``finally``:
    a PostgreSQL the command started would keep running.
    """
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, _terminate, task)


async def _main(coro: Coroutine[Any, Any, T]) -> T:
    stop_on_sigterm()
    return await coro


def run(coro: Coroutine[Any, Any, T], *, on_stop: Callable[[str], None] | None = None) -> T:
    """Run a command's coroutine; its expected failures exit with one line.

    A configuration problem exits with code 2; a service that cannot be reached, before
    or during the command, exits with code 3 (nothing decided: try again). Ctrl-C and
    SIGTERM stop the command after its clean-up, with codes 130 and 143; ``on_stop``,
    given ``"interrupted"`` or ``"stopped by SIGTERM"``, then says what the command did
    so far instead of that one line.
    """
    try:
        return asyncio.run(_main(coro))
    except KeyboardInterrupt:
        _stopped("interrupted", on_stop)
        raise typer.Exit(INTERRUPTED) from None
    except asyncio.CancelledError:
        if not _terminated:
            raise
        _stopped("stopped by SIGTERM", on_stop)
        raise typer.Exit(TERMINATED) from None
    except ConfigurationError as exc:
        report(exc)
        raise typer.Exit(INVALID) from None
    except ServiceUnavailable as exc:
        problem(str(exc))
        raise typer.Exit(UNAVAILABLE) from None
    except Exception as exc:
        lost = _lost_connection(exc)
        if lost is None:
            raise
        problem(lost)
        raise typer.Exit(UNAVAILABLE) from None


def _stopped(how: str, on_stop: Callable[[str], None] | None) -> None:
    if on_stop is None:
        problem(how)
    else:
        on_stop(how)


def _lost_connection(exc: Exception) -> str | None:
    """The line for a connection lost in the middle of a command, past the helpers that
    turn an unreachable server into `ServiceUnavailable`; None for any other error."""
    # Imported here: `loyalty --help` does not load the drivers.
    import asyncpg
    from temporalio.service import RPCError

    from loyalty.store.db import UNREACHABLE
    from loyalty.temporal import UNAVAILABLE_STATUSES

    # Not OSError: a command's own I/O (a closed stdout) is no database failure.
    postgres = tuple(e for e in UNREACHABLE if not issubclass(e, OSError))
    closed = isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc)
    if isinstance(exc, postgres) or closed:
        return f"PostgreSQL: the connection was lost ({exc}); try again"
    if isinstance(exc, RPCError) and exc.status in UNAVAILABLE_STATUSES:
        return f"Temporal is unavailable: {exc.message}; try again"
    return None


def app_or_exit(settings: Settings, spec: str | None) -> LoyaltyApp:
    """The app named by ``--app`` or ``LOYALTY_APP``; a bad one exits with code 2.

    Its flows are checked here, before any server starts (`loyalty.flows.check_app`).
    """
    try:
        app = load_app(spec or settings.app)
        check_app(app)
        return app
    except ConfigurationError as exc:
        report(exc)
        raise typer.Exit(2) from None


async def on_database(
    settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[int]]
) -> int:
    """Run ``work`` on a connection to the (migrated) database; its exit code."""
    from loyalty.store.db import Database, connect, prepare_database

    async with Database(settings) as database:
        await prepare_database(database.dsn, None)
        conn = await connect(database.dsn)
        try:
            return await work(conn)
        finally:
            await conn.close()
