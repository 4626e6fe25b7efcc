"""`loyalty housekeeping run`: mature and expire points now, write the ``bonus_expiring``
reminders that are due, then prune the journey outboxes."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from loyalty.cli.apps import app_for
from loyalty.cli.kit import console, problem, run, settings_of


def register(cli: typer.Typer) -> None:
    """Add the ledger commands to the command line."""
    housekeeping = typer.Typer(
        help="Mature earned points, expire points, prune the journey outboxes."
    )
    cli.add_typer(housekeeping, name="housekeeping")

    @housekeeping.command("run")
    def housekeeping_run(
        ctx: typer.Context,
        program: Annotated[
            str | None, typer.Option(help="Only this program (default: every program).")
        ] = None,
        at: Annotated[
            datetime | None,
            typer.Option(
                help="Cut-off time, ISO 8601 in UTC (default: now).",
                formats=[
                    "%Y-%m-%dT%H:%M:%S%z",
                    "%Y-%m-%dT%H:%M:%S",
                    "%Y-%m-%d",
                ],
            ),
        ] = None,
        app_spec: Annotated[
            str | None,
            typer.Option(
                "--app", help="The LoyaltyApp as module:attr (default: the worker's app)."
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Mature every earned lot that is due, then expire what is due, in bulk; write
        the bonus_expiring reminders of the BonusExpiring flows; recompute the segments
        that read the clock; then delete the journey starts and signals done more than
        LOYALTY_JOURNEY_RETENTION days ago."""
        from loyalty.flows.retention import prune
        from loyalty.ingest.derived import listens, watch
        from loyalty.ledger.maturing import run_housekeeping
        from loyalty.ledger.reminders import derive_reminders, reminder_days
        from loyalty.segments.membership import refresh, timed_segments
        from loyalty.store.db import Database, connect, prepare_database

        settings = settings_of(ctx)
        app = app_for(settings, app_spec)
        if program is not None and program not in app.programs:
            problem(f"program: unknown program {program!r}; known: {', '.join(app.programs)}")
            raise typer.Exit(2)
        cutoff = (at or datetime.now(UTC)).replace(tzinfo=(at.tzinfo if at else UTC) or UTC)
        programs = [app.programs[program]] if program else list(app.programs.values())

        # With --json, stdout carries only the JSON; the spinners go to stderr.
        out = Console(stderr=True) if as_json else console

        async def go() -> None:
            async with Database(settings) as database:
                await prepare_database(database.dsn, app)
                conn = await connect(database.dsn)
                try:
                    steps = []
                    for p in programs:
                        with out.status(f"housekeeping of program {p.name}"):
                            results = await run_housekeeping(
                                conn, p, cutoff,
                                derive_events=listens(app, "points_matured", p.name),
                                watch=watch(app, p.name),
                            )  # fmt: skip
                        steps += [(p.name, r) for r in results]
                    reminded: dict[str, int] = {}
                    for p in programs:
                        if reminder_days(app, p.name):
                            with out.status(f"bonus_expiring reminders of program {p.name}"):
                                reminded[p.name] = await derive_reminders(conn, app, p, cutoff)
                    refreshed: dict[str, dict[str, dict[str, int]]] = {}
                    for p in programs:
                        if timed_segments(app, p.name):
                            with out.status(f"segments of program {p.name} that read the clock"):
                                done = await refresh(conn, app, p.name)
                            refreshed[p.name] = {
                                r.segment: {"entered": r.entered, "left": r.left} for r in done
                            }
                    # Every program's rows: the outboxes are the deployment's, not a
                    # program's, and they are not ledger data.
                    with out.status("pruning the journey outboxes"):
                        pruned = await prune(conn, older_than=settings.journey_retention)
                finally:
                    await conn.close()
            if as_json:
                print(json.dumps({
                    "at": cutoff.isoformat(),
                    "steps": [{"program": name, "step": r.step, "currency": r.currency,
                               "lots": r.lots, "points": r.points} for name, r in steps],
                    "reminders": reminded,
                    "segments": refreshed,
                    "pruned": {"cutoff": pruned.cutoff.isoformat(), "starts": pruned.starts,
                               "signals": pruned.signals,
                               "recurring_runs": pruned.recurring_runs,
                               "segment_changes": pruned.segment_changes},
                }, indent=2))  # fmt: skip
                return
            table = Table("program", "step", "currency", "lots", "points",
                          title=f"Housekeeping at {cutoff.isoformat()}")  # fmt: skip
            for name, r in steps:
                table.add_row(name, r.step, r.currency, f"{r.lots:,}", f"{r.points:,}")
            console.print(table)
            if reminded:
                written = ", ".join(f"{n:,} in program {p}" for p, n in reminded.items())
                console.print(f"bonus_expiring reminders written: {written}")
            for name, found in refreshed.items():
                said = ", ".join(
                    f"{seg} +{n['entered']:,} -{n['left']:,}" for seg, n in found.items()
                )
                console.print(f"segments of program {name} recomputed: {said}")
            console.print(
                f"Pruned journey outboxes (done before {pruned.cutoff.isoformat()}, "
                f"{settings.journey_retention_days} days ago): "
                f"{pruned.starts:,} journey starts, {pruned.signals:,} signals, "
                f"{pruned.recurring_runs:,} recurring runs' snapshots, "
                f"{pruned.segment_changes:,} segment changes",
                soft_wrap=True,
            )

        run(go())
