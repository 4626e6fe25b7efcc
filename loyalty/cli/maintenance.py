"""`loyalty maintenance`: run tier maintenance now, pause or resume its loop, its status
with the tier distribution, and the history of its runs.

`run`, `pause`, `resume` and `status` talk to the scheme's TierMaintenance loop in
Temporal (a worker must be running); `run` follows the run's progress in the database.
`history` reads the database only. Temporal down, no loop, or no worker answering within
`WORKER_ANSWER` is `ServiceUnavailable`: one line, exit code 3.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from temporalio.client import (
    Client,
    WorkflowHandle,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.service import RPCError, RPCStatusCode

from loyalty.app import LoyaltyApp, Program
from loyalty.cli.apps import app_for
from loyalty.cli.kit import console, problem, run, settings_of
from loyalty.errors import ServiceUnavailable
from loyalty.models import MaintenanceProgress, MaintenanceStatus
from loyalty.settings import Settings
from loyalty.store.db import Conn
from loyalty.tiers import TierScheme
from workflows.maintenance import TierMaintenance, describe, maintenance_workflow_id

ProgramOption = Annotated[str, typer.Option(help="The program.")]
SchemeOption = Annotated[
    str | None, typer.Option(help="The tier scheme (default: the program's first).")
]
AppOption = Annotated[
    str | None,
    typer.Option("--app", help="The LoyaltyApp as module:attr (default: the worker's app)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON.")]
# How often `run` reads the run's progress from the database.
POLL_SECONDS = 0.5
# How long `status` and `run` wait for a worker to answer the loop's query or take its
# update; a running worker answers in well under a second, and without one Temporal
# would keep the command waiting (30 s for a query, for ever for an update).
WORKER_ANSWER = timedelta(seconds=5)
BAR_WIDTH = 40


def _scheme_or_exit(
    app: LoyaltyApp, program: str, scheme: str | None
) -> tuple[Program, TierScheme]:
    found = app.program(program)
    if found is None:
        problem(f"program: unknown program {program!r}; known: {', '.join(app.programs)}")
        raise typer.Exit(2)
    if not found.tier_schemes:
        problem(f"program: program {program!r} has no tier scheme")
        raise typer.Exit(2)
    for candidate in found.tier_schemes:
        if scheme in (None, candidate.name):
            return found, candidate
    known = ", ".join(s.name for s in found.tier_schemes)
    problem(f"scheme: program {program!r} has no tier scheme {scheme!r}; schemes: {known}")
    raise typer.Exit(2)


async def _loop(
    settings: Settings, program: str, scheme: str
) -> WorkflowHandle[TierMaintenance, None]:
    from loyalty.temporal import connect_temporal

    client: Client = await connect_temporal(settings)
    return client.get_workflow_handle_for(
        TierMaintenance.run, maintenance_workflow_id(settings.task_queue, program, scheme)
    )


def _unavailable(
    settings: Settings, program: str, scheme: str, exc: Exception
) -> ServiceUnavailable | None:
    """What a failed call to the loop means when it means "try again"; None otherwise."""
    from loyalty.temporal import UNAVAILABLE_STATUSES, unavailable

    loop = f"tier maintenance loop for program {program!r}, scheme {scheme!r}"
    queue = f"task queue {settings.task_queue!r}"
    # The client reports its own rpc_timeout as CANCELLED, the server's as DEADLINE_EXCEEDED.
    no_worker = isinstance(exc, WorkflowUpdateRPCTimeoutOrCancelledError) or (
        isinstance(exc, RPCError)
        and exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED)
    )
    if no_worker:
        return ServiceUnavailable(
            "worker",
            f"no worker answered the {loop} within {WORKER_ANSWER.total_seconds():g} s: "
            f"start a worker on {queue} (loyalty worker, loyalty dev) and try again",
        )
    if isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND:
        return ServiceUnavailable(
            "worker", f"no {loop} on {queue}: start a worker (loyalty worker, loyalty dev)"
        )
    if isinstance(exc, RPCError) and exc.status in UNAVAILABLE_STATUSES:
        return unavailable(settings.effective_temporal_address, exc)
    return None


def _refused(settings: Settings, exc: RPCError) -> int:
    problem(f"Temporal at {settings.effective_temporal_address}: {exc.message}")
    return 1


async def distribution(conn: Conn, program: str, scheme: TierScheme) -> list[tuple[str, int]]:
    """Members per tier of the scheme, lowest first (members without a row: the lowest)."""
    rows = await conn.fetch(
        """SELECT coalesce(t.rank, 0) AS rank, count(*) AS members
           FROM members AS m
           LEFT JOIN member_tiers AS t
                  ON t.program = m.program AND t.scheme = $2 AND t.member_id = m.member_id
           WHERE m.program = $1
           GROUP BY 1""",
        program, scheme.name,
    )  # fmt: skip
    counts = {r["rank"]: r["members"] for r in rows}
    return [(tier.name, counts.get(rank, 0)) for rank, tier in enumerate(scheme.tiers)]


def bar_chart(title: str, values: list[tuple[str, int]]) -> Table:
    """A horizontal bar chart as a table: label, bar, count, share."""
    total = sum(v for _, v in values) or 1
    top = max((v for _, v in values), default=0) or 1
    chart = Table("tier", "", "members", "share", title=title, box=None)
    for label, value in values:
        bar = "█" * round(BAR_WIDTH * value / top)
        chart.add_row(label, f"[cyan]{bar}[/]", f"{value:,}", f"{100 * value / total:.1f}%")
    return chart


def _runs_table(title: str, runs: list[MaintenanceProgress]) -> Table:
    table = Table("scheme", "as of", "duration", "reviewed", "promoted", "demoted", "in grace",
                  "state", title=title)  # fmt: skip
    for r in runs:
        took = (r.finished_at - r.started_at).total_seconds() if r.finished_at else None
        table.add_row(
            r.scheme, f"{r.as_of:%Y-%m-%d %H:%M:%S}", f"{took:.1f} s" if took is not None else "-",
            f"{r.scanned:,}", f"{r.promoted:,}", f"{r.demoted:,}", f"{r.in_grace:,}",
            "finished" if r.finished_at else f"running (after {r.cursor or 'start'})",
        )  # fmt: skip
    return table


async def _follow(
    conn: Conn,
    program: str,
    scheme: str,
    since: datetime,
    update: asyncio.Task[MaintenanceProgress],
) -> None:
    """A progress bar of the run the update started, read from ``maintenance_runs``."""
    total = await conn.fetchval("SELECT count(*) FROM members WHERE program = $1", program)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[changes]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"maintenance of {program}/{scheme}", total=total, changes="")
        while not update.done():
            row = await conn.fetchrow(
                """SELECT scanned, promoted, demoted FROM maintenance_runs
                   WHERE program = $1 AND scheme = $2 AND started_at >= $3
                   ORDER BY started_at DESC LIMIT 1""",
                program, scheme, since,
            )  # fmt: skip
            if row is not None:
                bar.update(
                    task, completed=row["scanned"],
                    changes=f"{row['promoted']:,} up, {row['demoted']:,} down",
                )  # fmt: skip
            await asyncio.wait({update}, timeout=POLL_SECONDS)


def register(cli: typer.Typer) -> None:
    """Add `loyalty maintenance` to the command line."""
    maintenance = typer.Typer(help="Tier maintenance: run now, pause, resume, status, history.")
    cli.add_typer(maintenance, name="maintenance")

    @maintenance.command("run")
    def run_now(
        ctx: typer.Context,
        program: ProgramOption,
        scheme: SchemeOption = None,
        app_spec: AppOption = None,
    ) -> None:
        """Run the scheme's maintenance now and wait for it, with a progress bar."""
        settings = settings_of(ctx)
        found, chosen = _scheme_or_exit(app_for(settings, app_spec), program, scheme)

        async def go() -> int:
            from loyalty.store.db import Database, connect

            async with Database(settings) as database:
                conn = await connect(database.dsn)
                try:
                    since = await conn.fetchval("SELECT now()")
                    handle = await _loop(settings, found.name, chosen.name)
                    try:
                        accepted = await handle.start_update(
                            TierMaintenance.run_now,
                            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                            rpc_timeout=WORKER_ANSWER,
                        )
                    except (RPCError, WorkflowUpdateRPCTimeoutOrCancelledError) as exc:
                        if down := _unavailable(settings, found.name, chosen.name, exc):
                            raise down from None
                        raise
                    update = asyncio.create_task(accepted.result())
                    await _follow(conn, found.name, chosen.name, since, update)
                    try:
                        done = update.result()
                    except RPCError as exc:
                        if down := _unavailable(settings, found.name, chosen.name, exc):
                            raise down from None
                        return _refused(settings, exc)
                    console.print(
                        f"maintenance of {found.name}/{chosen.name}: {describe(done)}",
                        soft_wrap=True,
                    )
                    console.print(bar_chart(
                        f"Tiers of {found.name}/{chosen.name}",
                        await distribution(conn, found.name, chosen),
                    ))  # fmt: skip
                    return 0
                finally:
                    await conn.close()

        raise typer.Exit(run(go()))

    def _signal(ctx: typer.Context, program: str, scheme: str | None, app_spec: str | None,
                name: str) -> None:  # fmt: skip
        settings = settings_of(ctx)
        found, chosen = _scheme_or_exit(app_for(settings, app_spec), program, scheme)

        async def go() -> int:
            handle = await _loop(settings, found.name, chosen.name)
            try:
                await handle.signal(name)
            except RPCError as exc:
                if down := _unavailable(settings, found.name, chosen.name, exc):
                    raise down from None
                return _refused(settings, exc)
            console.print(f"maintenance of {found.name}/{chosen.name}: {name}d")
            return 0

        raise typer.Exit(run(go()))

    @maintenance.command("pause")
    def pause(
        ctx: typer.Context, program: ProgramOption, scheme: SchemeOption = None,
        app_spec: AppOption = None,
    ) -> None:  # fmt: skip
        """Pause the loop: scheduled runs wait (one in progress stops between slices)."""
        _signal(ctx, program, scheme, app_spec, "pause")

    @maintenance.command("resume")
    def resume(
        ctx: typer.Context, program: ProgramOption, scheme: SchemeOption = None,
        app_spec: AppOption = None,
    ) -> None:  # fmt: skip
        """Resume a paused loop; a run that fell due meanwhile starts at once."""
        _signal(ctx, program, scheme, app_spec, "resume")

    @maintenance.command("status")
    def status(
        ctx: typer.Context, program: ProgramOption, scheme: SchemeOption = None,
        app_spec: AppOption = None, as_json: JsonOption = False,
    ) -> None:  # fmt: skip
        """The loop's state (paused, next run, run in progress) and the tier distribution."""
        settings = settings_of(ctx)
        found, chosen = _scheme_or_exit(app_for(settings, app_spec), program, scheme)

        async def go() -> int:
            from loyalty.store.db import Database, connect

            handle = await _loop(settings, found.name, chosen.name)
            try:
                state: MaintenanceStatus = await handle.query(
                    TierMaintenance.status, rpc_timeout=WORKER_ANSWER
                )
            except RPCError as exc:
                if down := _unavailable(settings, found.name, chosen.name, exc):
                    raise down from None
                return _refused(settings, exc)
            async with Database(settings) as database:
                conn = await connect(database.dsn)
                try:
                    shares = await distribution(conn, found.name, chosen)
                finally:
                    await conn.close()
            label = f"{found.name}/{chosen.name}"
            if as_json:
                tiers = [{"tier": tier, "members": members} for tier, members in shares]
                print(json.dumps({**state.model_dump(mode="json"), "tiers": tiers}, indent=2))
                return 0
            console.print(f"maintenance of {label}: {'paused' if state.paused else 'active'}, "
                          f"{state.runs} runs")  # fmt: skip
            if state.running is not None:
                console.print(f"running: {describe(state.running)}", soft_wrap=True)
            if state.next_run_at is not None:
                console.print(f"next run: {state.next_run_at:%Y-%m-%d %H:%M:%S} UTC")
            if state.last is not None:
                console.print(f"last run: {describe(state.last)}", soft_wrap=True)
            console.print(bar_chart(f"Tiers of {label}", shares))
            return 0

        raise typer.Exit(run(go()))

    @maintenance.command("history")
    def history(
        ctx: typer.Context,
        program: ProgramOption,
        limit: Annotated[int, typer.Option(min=1, help="How many runs.")] = 10,
        app_spec: AppOption = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    ) -> None:
        """The program's latest maintenance runs: counts and duration."""
        from loyalty.tiers import maintenance as core

        settings = settings_of(ctx)
        app = app_for(settings, app_spec)
        if app.program(program) is None:
            problem(f"program: unknown program {program!r}; known: {', '.join(app.programs)}")
            raise typer.Exit(2)

        async def go() -> int:
            from loyalty.store.db import Database, connect

            async with Database(settings) as database:
                conn = await connect(database.dsn)
                try:
                    runs = await core.history(conn, program, limit)
                finally:
                    await conn.close()
            if as_json:
                print(json.dumps([r.model_dump(mode="json") for r in runs], indent=2))
                return 0
            if not runs:
                console.print(f"no maintenance runs for program {program!r}")
                return 0
            console.print(_runs_table(f"Maintenance runs of {program}", runs))
            return 0

        raise typer.Exit(run(go()))
