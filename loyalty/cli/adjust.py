"""`loyalty adjust`: apply a CSV file of point adjustments (see `loyalty.ledger.adjust`)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loyalty.cli.apps import app_for
from loyalty.cli.kit import console, errors, problem, run, settings_of

_HELP = """Apply a CSV file of point adjustments, each line at most once.

The header row names the columns: member_id, points, kind, reason (required) and
currency, program, id (optional). Positive points give points of that kind (available
or earned), negative points take them away.

Every line is checked first. Invalid lines are rejected lines: they are reported with
their line number and the column at fault, and the valid lines are still applied, each
in its own transaction; a line the ledger refuses (insufficient_points, unknown_member)
is rejected too. Points for a member the program has never seen are refused
(unknown_member), so that a typo does not create a member with points; --create-members
enrols them. Running the same file again applies nothing twice: its lines are
reported as already applied. Without an id column, a line's key comes from the hash of
the whole file, so an edited file is new: give files that are edited and run again an
id column.

Ctrl-C stops after the line in flight and says how many lines were applied; running
the same file again applies the rest.

Exit codes: 0 every line applied (or already applied); 1 some lines rejected, the others
applied (also when a database error stops the run: running the file again applies the
rest); 2 nothing applied: the file cannot be read or has no valid header, --program or
--app is unknown; 3 the database cannot be reached; 130 interrupted by Ctrl-C, 143 by
SIGTERM.
"""
# Paragraphs on one line each: the help is wrapped to the terminal's width.
HELP = "\n\n".join(" ".join(paragraph.split()) for paragraph in _HELP.split("\n\n"))


def register(cli: typer.Typer) -> None:
    """Add the `adjust` command to the command line."""

    @cli.command(help=HELP)
    def adjust(
        ctx: typer.Context,
        file: Annotated[Path, typer.Option("--file", help="The CSV file of adjustments.")],
        program: Annotated[
            str | None,
            typer.Option(help="Program of lines without a program value (default: default)."),
        ] = None,
        app_spec: Annotated[
            str | None,
            typer.Option(
                "--app", help="The LoyaltyApp as module:attr (default: the worker's app)."
            ),
        ] = None,
        create_members: Annotated[
            bool,
            typer.Option(
                "--create-members",
                help="Enrol members the program has never seen (by default their lines "
                "are rejected as unknown_member).",
            ),
        ] = False,
        as_json: Annotated[
            bool,
            typer.Option(
                "--json", help="Print rejected lines as JSON lines; the summary goes to stderr."
            ),
        ] = False,
    ) -> None:
        import asyncpg

        from loyalty.errors import AdjustmentFileError
        from loyalty.ledger.adjust import LineResult, apply_one, parse, read_file, summarize
        from loyalty.store.db import Database, connect, prepare_database

        settings = settings_of(ctx)
        app = app_for(settings, app_spec)
        if program is not None and program not in app.programs:
            problem(f"program: unknown program {program!r}; known: {', '.join(app.programs)}")
            raise typer.Exit(2)
        try:
            parsed = parse(read_file(file), app, program=program or "default", name=file.name)
        except AdjustmentFileError as exc:
            for line in exc.problems:
                problem(line)
            raise typer.Exit(2) from None
        # With --json, stdout carries only the JSON lines; the rest goes to stderr.
        out = Console(stderr=True) if as_json else console
        results: list[LineResult] = list(parsed.invalid)
        columns = (TextColumn("applying"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())

        async def go() -> tuple[str, int] | None:
            """Apply the valid lines; returns what stopped the run and its exit code."""
            attempted, connected = 0, False
            try:
                async with Database(settings) as database:
                    await prepare_database(database.dsn, app)
                    conn = await connect(database.dsn)
                    connected = True
                    try:
                        with Progress(
                            *columns, console=out, transient=True, disable=not out.is_terminal
                        ) as progress:
                            bar = progress.add_task("applying", total=len(parsed.adjustments))
                            now = datetime.now(UTC)
                            for adjustment in parsed.adjustments:
                                line = asyncio.ensure_future(
                                    apply_one(conn, app, adjustment, now,
                                              create_members=create_members)
                                )  # fmt: skip
                                try:
                                    result = await asyncio.shield(line)
                                except asyncio.CancelledError:
                                    # Ctrl-C: the line in flight completes (or rolls
                                    # back) whole, so the count said afterwards is exact.
                                    errors.print(
                                        f"interrupted: finishing line {adjustment.line}, "
                                        "then stopping",
                                        markup=False, highlight=False,
                                    )  # fmt: skip
                                    results.append(await line)
                                    attempted += 1
                                    raise
                                results.append(result)
                                attempted += 1
                                progress.advance(bar)
                    finally:
                        await conn.close()
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                if not connected:
                    return f"database error, nothing applied: {type(exc).__name__}: {exc}", 2
                where = (
                    f"at line {parsed.adjustments[attempted].line}"
                    if attempted < len(parsed.adjustments)
                    else "after the last line"
                )
                return (
                    f"database error {where}: {type(exc).__name__}: {exc}; lines applied "
                    "before it stay applied, and running the same file again applies the rest",
                    1,
                )
            return None

        def said_so_far(how: str) -> None:
            """Ctrl-C or SIGTERM: what was applied, and how to finish."""
            summary = summarize(results)
            out.print(
                f"{file.name}: applied {summary.applied}, already applied "
                f"{summary.already_applied}, rejected {len(summary.rejected)}",
                highlight=False,
            )
            done = len(results) - len(parsed.invalid)
            where = f"after line {parsed.adjustments[done - 1].line}" if done else "at the start"
            problem(
                f"{how} {where}: applied {summary.applied} of "
                f"{len(parsed.adjustments) + len(parsed.invalid)} lines; the lines applied "
                "stay applied, and running the same file again applies the rest"
            )

        stopped = run(go(), on_stop=said_so_far)
        if stopped is not None and stopped[1] == 2:
            problem(stopped[0])
            raise typer.Exit(2)
        summary = summarize(results)
        out.print(
            f"{file.name}: applied {summary.applied}, already applied "
            f"{summary.already_applied}, rejected {len(summary.rejected)}",
            highlight=False,
        )
        if as_json:
            for rejected in summary.rejected:
                print(rejected.model_dump_json())
        elif summary.rejected:
            table = Table("line", "member", "program", "code", "problem", title="Rejected lines")
            for r in summary.rejected:
                table.add_row(str(r.line), r.member_id, r.program, r.code or "", r.detail or "")
            console.print(table)
        if stopped is not None:
            problem(stopped[0])
            raise typer.Exit(1)
        raise typer.Exit(1 if summary.rejected else 0)
