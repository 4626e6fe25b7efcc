"""`loyalty verify` and `loyalty report`: check the ledger, and what it adds up to (now, and
day by day with ``--history``: `loyalty.cli.history`)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.bar import Bar
from rich.padding import Padding
from rich.table import Table

from loyalty.cli.history import charts, money
from loyalty.cli.kit import console, problem, run, settings_of
from loyalty.ledger.audit import CheckResult, ProgramReport
from loyalty.ledger.history import Money
from loyalty.settings import Settings
from loyalty.store.db import Conn

T = TypeVar("T")
BAR_WIDTH = 32
# The figures charted, with their colour: where the issued points went.
CHARTED = (
    ("issued", "blue"),
    ("redeemed", "green"),
    ("expired", "yellow"),
    ("clawed_back", "red"),
    ("outstanding", "cyan"),
)
# Columns of a difference, shown when some difference of the table has a value there.
DIFFERENCE_FIELDS = ("program", "member_id", "currency", "kind", "account_id",
                     "transaction_id", "lot_id", "expected", "found")  # fmt: skip
NUMBERS = {"account_id", "transaction_id", "lot_id", "expected", "found"}


async def _with_conn(settings: Settings, work: Callable[[Conn], Awaitable[T]]) -> T:
    """Run ``work`` on one connection; a database without the ledger tables exits 2."""
    import asyncpg

    from loyalty.store.db import Database, connect

    async with Database(settings) as database:
        conn = await connect(database.dsn)
        try:
            return await work(conn)
        except asyncpg.UndefinedTableError as exc:
            problem(f"the database has no ledger ({exc}); run `loyalty migrate` first")
            raise typer.Exit(2) from None
        finally:
            await conn.close()


def _print_check(check: CheckResult) -> None:
    if check.ok:
        console.print(f"[green]✓[/] {check.name}: {check.description}", soft_wrap=True)
        return
    plural = "s" if check.count != 1 else ""
    console.print(
        f"[red]✗[/] {check.name}: {check.description} — {check.count:,} difference{plural}",
        soft_wrap=True,
    )
    rows = [d.model_dump() for d in check.differences]
    # One table per kind of difference, under its description: tables stay narrow.
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["detail"], []).append(row)
    for detail, group in groups.items():
        console.print(f"  {detail}:", markup=False, highlight=False)
        fields = [f for f in DIFFERENCE_FIELDS if any(row[f] is not None for row in group)]
        table = Table(box=None, padding=(0, 1, 0, 0), pad_edge=False, show_edge=False)
        for f in fields:
            table.add_column(f.removesuffix("_id"), no_wrap=True,
                             justify="right" if f in NUMBERS else "left")  # fmt: skip
        for row in group:
            table.add_row(*("" if row[f] is None else str(row[f]) for f in fields))
        console.print(Padding(table, (0, 0, 0, 4), expand=False))
    if check.count > len(rows):
        console.print(f"  … and {check.count - len(rows):,} more")


def _json(value: Money | None) -> dict[str, str] | None:
    return None if value is None else value.model_dump(mode="json")


def _program_table(r: ProgramReport, worth: Money | None) -> Table:
    """One program and currency: its figures, the charted ones with a bar to scale, and
    the outstanding points in money when the program has a point value."""
    scale = max(max(getattr(r, name) for name, _ in CHARTED), 1)
    table = Table("figure", "points", "", title=f"{r.program} · {r.currency}",
                  title_justify="left", caption_justify="left",
                  caption=f"members with points: {r.members_with_points:,}, "
                          f"in debt: {r.members_in_debt:,}")  # fmt: skip
    table.columns[1].justify = "right"
    for name, colour in CHARTED:
        value = getattr(r, name)
        bar = Bar(scale, 0, max(value, 0), width=BAR_WIDTH, color=colour)
        table.add_row(name.replace("_", " "), f"{value:,}", bar)
    if worth is not None:
        table.add_row("outstanding value", money(worth), "")
    table.add_section()
    for name in ("available", "earned", "debt", "forgiven"):
        table.add_row(name, f"{getattr(r, name):,}", "")
    return table


def register(cli: typer.Typer) -> None:
    """Add ``verify`` and ``report`` to the command line."""

    @cli.command()
    def verify(
        ctx: typer.Context,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Check the ledger against its legs; exit 1 if anything differs.

        Checks that transactions balance per currency, balances and lots match the
        legs, lots are within bounds, debts are not positive and lifetime totals match
        the awards. Lists up to 100 differences per check, counting all.
        """
        from loyalty.ledger.audit import verify as run_checks

        settings = settings_of(ctx)

        async def work(conn: Conn) -> int:
            with console.status("verifying the ledger") as status:
                report = await run_checks(
                    conn, progress=lambda what: status.update(f"verifying: {what}")
                )
            if as_json:
                print(json.dumps({"ok": report.ok, **report.model_dump(mode="json")}, indent=2))
            else:
                for check in report.checks:
                    _print_check(check)
                failed = [c for c in report.checks if not c.ok]
                console.print(
                    "the ledger verifies"
                    if not failed
                    else f"{len(failed)} of {len(report.checks)} checks found differences"
                )
            return 0 if report.ok else 1

        raise typer.Exit(run(_with_conn(settings, work)))

    @cli.command()
    def report(
        ctx: typer.Context,
        program: Annotated[str | None, typer.Option(help="Only this program.")] = None,
        history: Annotated[
            bool,
            typer.Option(
                "--history",
                help="Outstanding points over time, from the daily snapshots housekeeping "
                "takes, as a chart.",
            ),
        ] = False,
        days: Annotated[
            int, typer.Option(min=1, help="With --history: the last N UTC days, today included.")
        ] = 30,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Points issued, redeemed, expired, clawed back and outstanding, per program.

        Per program and currency; forgiven points (returns under the forgive policy)
        and what members owe (debt) are shown too. Outstanding is what members hold,
        less what they owe; a program's point_value shows it in money too. With
        --history: outstanding per day from the daily snapshots.
        """
        from loyalty.ledger.audit import report as totals
        from loyalty.ledger.history import history as snapshots
        from loyalty.ledger.history import point_values

        settings = settings_of(ctx)

        async def work(conn: Conn) -> int:
            if program is not None and not await conn.fetchval(
                "SELECT 1 FROM programs WHERE name = $1", program
            ):
                problem(f"program: unknown program {program!r}")
                return 2
            if history:
                return await _history(conn)
            with console.status("adding up the ledger"):
                reports = await totals(conn, program)
                values = await point_values(conn, program)
            worth = {
                (r.program, r.currency): values[r.program].of(r.currency, r.outstanding)
                if r.program in values else None
                for r in reports
            }  # fmt: skip
            if as_json:
                rows = [
                    {**r.model_dump(mode="json"), "outstanding_value": _json(worth[key])}
                    for r in reports
                    for key in [(r.program, r.currency)]
                ]
                print(json.dumps(rows, indent=2))
                return 0
            for r in reports:
                console.print(_program_table(r, worth[(r.program, r.currency)]))
            if not reports:
                console.print("no points in the ledger")
            return 0

        async def _history(conn: Conn) -> int:
            found = await snapshots(conn, days, program)
            if as_json:
                print(json.dumps([s.model_dump(mode="json") for s in found], indent=2))
                return 0
            for chart in charts(found):
                console.print(chart)
            if not found:
                console.print(
                    f"no liability snapshots in the last {days} days: the housekeeping loop "
                    "takes one a day (loyalty dev, loyalty worker)"
                )
            return 0

        raise typer.Exit(run(_with_conn(settings, work)))
