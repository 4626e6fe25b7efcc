"""`loyalty housekeeping run`: mature and expire points now, write the ``bonus_expiring``
reminders that are due, then prune the journey outboxes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from loyalty.cli.kit import app_or_exit, console, problem, run, settings_of


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
            str | None, typer.Option("--app", help="The LoyaltyApp as module:attr.")
        ] = None,
    ) -> None:
        """Mature every earned lot that is due, then expire what is due, in bulk; write
        the bonus_expiring reminders of the BonusExpiring flows; then delete the journey
        starts and signals done more than LOYALTY_JOURNEY_RETENTION days ago."""
        from loyalty.flows.retention import prune
        from loyalty.ingest.derived import listens, watch
        from loyalty.ledger.maturing import run_housekeeping
        from loyalty.ledger.reminders import derive_reminders, reminder_days
        from loyalty.store.db import Database, connect, prepare_database

        settings = settings_of(ctx)
        app = app_or_exit(settings, app_spec)
        if program is not None and program not in app.programs:
            problem(f"program: unknown program {program!r}; known: {', '.join(app.programs)}")
            raise typer.Exit(2)
        cutoff = (at or datetime.now(UTC)).replace(tzinfo=(at.tzinfo if at else UTC) or UTC)
        programs = [app.programs[program]] if program else list(app.programs.values())

        async def go() -> None:
            async with Database(settings) as database:
                await prepare_database(database.dsn, app)
                conn = await connect(database.dsn)
                try:
                    table = Table("program", "step", "currency", "lots", "points",
                                  title=f"Housekeeping at {cutoff.isoformat()}")  # fmt: skip
                    for p in programs:
                        with console.status(f"housekeeping of program {p.name}"):
                            results = await run_housekeeping(
                                conn, p, cutoff,
                                derive_events=listens(app, "points_matured", p.name),
                                watch=watch(app, p.name),
                            )  # fmt: skip
                        for r in results:
                            table.add_row(p.name, r.step, r.currency, f"{r.lots:,}",
                                          f"{r.points:,}")  # fmt: skip
                    reminded: list[str] = []
                    for p in programs:
                        if reminder_days(app, p.name):
                            with console.status(f"bonus_expiring reminders of program {p.name}"):
                                written = await derive_reminders(conn, app, p, cutoff)
                            reminded.append(f"{written:,} in program {p.name}")
                    console.print(table)
                    if reminded:
                        console.print(f"bonus_expiring reminders written: {', '.join(reminded)}")
                    # Every program's rows: the outboxes are the deployment's, not a
                    # program's, and they are not ledger data.
                    with console.status("pruning the journey outboxes"):
                        pruned = await prune(conn, older_than=settings.journey_retention)
                    console.print(
                        f"Pruned journey outboxes (done before {pruned.cutoff.isoformat()}, "
                        f"{settings.journey_retention_days} days ago): "
                        f"{pruned.starts:,} journey starts, {pruned.signals:,} signals",
                        soft_wrap=True,
                    )
                finally:
                    await conn.close()

        run(go())
