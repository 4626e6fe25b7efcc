"""The `loyalty` command line."""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from loyalty.app import load_app
from loyalty.cli import (
    adjust,
    api,
    audit,
    flows,
    ledger,
    maintenance,
    members,
    messages,
    schedules,
    schema,
    segments,
    status,
    streams,
)
from loyalty.cli.kit import UNAVAILABLE, app_or_exit, console, problem, run, settings_of
from loyalty.errors import InvalidEvent
from loyalty.events import IncomingEvent, parse_event, parse_lines
from loyalty.settings import Settings

DEMO_APP = "examples.demo:app"
# Seconds the demo story may take, from the worker's start to its last outcome.
DEMO_TIMEOUT = 120.0
# Events per INSERT statement; every line (and its program) is checked before the first.
EMIT_CHUNK = 5_000

cli = typer.Typer(
    name="loyalty",
    help="loyalty-flows: exactly-once points, tiers and journeys on Temporal and PostgreSQL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@cli.callback()
def main_options(
    ctx: typer.Context,
    home: Annotated[
        Path | None, typer.Option(help="Data folder of the embedded servers (LOYALTY_HOME).")
    ] = None,
) -> None:
    """Load the settings once; every command receives them."""
    try:
        settings = Settings()
    except Exception as exc:
        problem(f"invalid settings: {exc}")
        raise typer.Exit(2) from None
    if home is not None:
        settings = settings.model_copy(update={"home": home})
    ctx.obj = settings


@cli.command()
def dev(
    ctx: typer.Context,
    app: Annotated[str | None, typer.Option(help="The LoyaltyApp as module:attr.")] = None,
    demo: Annotated[bool, typer.Option(help="Load the demo program from examples/.")] = False,
) -> None:
    """Start everything locally: PostgreSQL, Temporal dev server with Web UI, worker."""
    from loyalty.cli.dev import run_dev

    settings = settings_of(ctx)
    if not demo or app:
        raise typer.Exit(run(run_dev(settings, app_or_exit(settings, app), console)))
    raise typer.Exit(_play_demo(settings, timeout=DEMO_TIMEOUT, exit_when_done=False))


def _play_demo(settings: Settings, *, timeout: float, exit_when_done: bool) -> int:
    """Run everything locally with the demo app and play its story; the exit code."""
    from loyalty.cli.demo import prepare_demo, story_hook
    from loyalty.cli.dev import run_dev

    prepare_demo()
    story = story_hook(settings, console, timeout=timeout, exit_when_done=exit_when_done)
    return run(run_dev(settings, app_or_exit(settings, DEMO_APP), console, story))


@cli.command()
def demo(
    ctx: typer.Context,
    exit_: Annotated[
        bool,
        typer.Option(
            "--exit",
            help="Exit once the story is played: 0 when every expected outcome happened, "
            "1 listing the missing ones.",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds the story may take to reach its outcomes.")
    ] = DEMO_TIMEOUT,
) -> None:
    """Play the demo story (examples/) on local servers, like `loyalty dev --demo`."""
    raise typer.Exit(_play_demo(settings_of(ctx), timeout=timeout, exit_when_done=exit_))


@cli.command()
def worker(
    ctx: typer.Context,
    app: Annotated[str | None, typer.Option(help="The LoyaltyApp as module:attr.")] = None,
) -> None:
    """Run only the worker, against the configured PostgreSQL and Temporal."""
    from loyalty.cli.dev import run_worker_only

    settings = settings_of(ctx)
    raise typer.Exit(run(run_worker_only(settings, app_or_exit(settings, app), console)))


@cli.command()
def migrate(
    ctx: typer.Context,
    app_spec: Annotated[
        str | None,
        typer.Option("--app", help="Also record this app's programs and their policies."),
    ] = None,
) -> None:
    """Apply pending database migrations (safe to run twice, or from two processes)."""
    from loyalty.store.db import Database, connect, prepare_database
    from loyalty.store.migrate import migrate as apply

    settings = settings_of(ctx)
    spec = app_spec or settings.app
    app = app_or_exit(settings, spec) if spec else None

    async def go() -> None:
        async with Database(settings) as database:
            conn = await connect(database.dsn)
            try:
                done = await apply(conn)
            finally:
                await conn.close()
            if app is not None:
                await prepare_database(database.dsn, app)
                console.print(f"programs recorded: {', '.join(app.programs)}")
        if done:
            for m in done:
                console.print(f"applied {m.version:04d}_{m.name}")
        else:
            console.print("database is up to date")

    run(go())


def _read_events(event: str | None, settings: Settings) -> list[IncomingEvent]:
    skew = settings.max_clock_skew
    if event is not None:
        return [parse_event(event.strip(), max_clock_skew=skew)]
    # Bytes, decoded line by line: a line that is not UTF-8 is named, not escaped.
    return parse_lines(sys.stdin.buffer, max_clock_skew=skew)


@cli.command()
def emit(
    ctx: typer.Context,
    event: Annotated[
        str | None, typer.Argument(help="One JSON event; without it, JSON lines on stdin.")
    ] = None,
    wait: Annotated[bool, typer.Option(help="Return once the events were processed.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait with --wait.")] = 120.0,
) -> None:
    """Send events to the inbox; prints each event id with accepted or duplicate.

    With --wait, prints each outcome (applied, no_effect, duplicate, rejected: …) and
    exits 1 if any event was rejected or failed, 3 if some are still pending at the end
    of the timeout. Invalid input exits 2, writing nothing; a database that cannot be
    reached exits 3.
    """
    from starter.client import LoyaltyClient

    settings = settings_of(ctx)
    try:
        events = _read_events(event, settings)
    except InvalidEvent as exc:
        for line in exc.problems:
            problem(line)
        raise typer.Exit(2) from None

    async def go() -> int:
        app = load_app(settings.app) if settings.app else None
        async with await LoyaltyClient.connect(settings, app) as client:
            results = await client.emit_many(events, chunk_size=EMIT_CHUNK)
            if not wait:
                for r in results:
                    print(f"{r.event_id} {'accepted' if r.accepted else 'duplicate'}")
                return 0
            try:
                outcomes = await client.wait(results, timeout)
            except TimeoutError:
                # Accepted but not processed: nothing decided yet, so "try again" (3).
                problem(
                    f"events still pending after {timeout:g} s: no worker processed them in "
                    "time (is loyalty dev or loyalty worker running?); they stay accepted, "
                    "and emitting them again waits again"
                )
                return UNAVAILABLE
            bad = False
            for outcome in outcomes:
                print(f"{outcome.event_id} {outcome.describe()}")
                bad = bad or outcome.status in ("rejected", "dead")
            return 1 if bad else 0

    try:
        code = run(go())
    except InvalidEvent as exc:
        for line in exc.problems:
            problem(line)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


@cli.command()
def events(
    ctx: typer.Context,
    failed: Annotated[bool, typer.Option(help="List dead-lettered events.")] = False,
    pending: Annotated[
        bool, typer.Option(help="List the backlog: events not processed yet, oldest first.")
    ] = False,
    program: Annotated[str | None, typer.Option(help="Only this program.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many events.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
) -> None:
    """Inspect the inbox: `--failed` lists events that failed every attempt, `--pending`
    the backlog (oldest first, with its age, attempts and last error)."""
    from loyalty.cli.inbox import print_failed, print_pending

    settings = settings_of(ctx)
    if failed == pending:
        problem("say which events to list: --failed or --pending")
        raise typer.Exit(2)
    printer = print_failed if failed else print_pending
    raise typer.Exit(run(printer(settings, program, limit, as_json)))


for commands in (
    members, ledger, audit, adjust, flows, maintenance, messages, schema, api, segments,
    schedules, streams, status,
):  # fmt: skip
    commands.register(cli)


def main() -> None:
    """Entry point of the `loyalty` console script.

    Once the command is done, the process runs its exit handlers, flushes its output and
    ends without the interpreter's finalization: the Temporal client's native threads may
    still be releasing Python objects at that moment, which aborts or hangs a finalizing
    interpreter (temporalio/sdk-python#300), so a command that succeeded would exit -6
    or never, most often when it prints fast (``loyalty flows --json``).
    """
    try:
        cli()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
