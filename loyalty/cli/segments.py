"""`loyalty segments`: the installed segments with their sizes, and a segment's members."""

from __future__ import annotations

import json
from typing import Annotated

import asyncpg
import typer
from rich.table import Table

from loyalty.cli.kit import console, on_database, problem, run, settings_of

segments_cli = typer.Typer(
    name="segments",
    help="Segments (defined in the app, installed by the worker): sizes and members.",
    invoke_without_command=True,
)
BAR_WIDTH = 24


def _bar(size: int, largest: int) -> str:
    """A bar of ``size`` against the largest segment, in eighths of a character."""
    if largest <= 0 or size <= 0:
        return ""
    eighths = max(1, round(size / largest * BAR_WIDTH * 8))
    full, rest = divmod(eighths, 8)
    return "█" * full + (" ▏▎▍▌▋▊▉"[rest] if rest else "")


def register(cli: typer.Typer) -> None:
    """Add `loyalty segments` to the command line."""

    @segments_cli.callback()
    def segments(
        ctx: typer.Context,
        program: Annotated[str | None, typer.Option(help="Only this program's segments.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    ) -> None:
        """List the segments: definition, size (with a bar), entered and left in the last
        24 hours, whether time alone changes it, when it was last recomputed."""
        if ctx.invoked_subcommand is not None:
            return
        from loyalty.segments.membership import list_segments

        async def go(conn: asyncpg.Connection) -> int:
            found = await list_segments(conn, program)
            if as_json:
                print(json.dumps([
                    {"program": s.program, "name": s.name, "definition": s.definition,
                     "size": s.size, "entered_last_day": s.entered_last_day,
                     "left_last_day": s.left_last_day, "time_dependent": s.time_dependent,
                     "installed_at": s.installed_at.isoformat(),
                     "refreshed_at": s.refreshed_at.isoformat() if s.refreshed_at else None}
                    for s in found
                ], indent=2))  # fmt: skip
                return 0
            largest = max((s.size for s in found), default=0)
            table = Table("program", "segment", "definition", "members", "", "entered 24h",
                          "left 24h", "refreshed", title="Segments")  # fmt: skip
            for s in found:
                refreshed = s.refreshed_at or s.installed_at
                table.add_row(
                    s.program, s.name, s.definition, f"{s.size:,}", _bar(s.size, largest),
                    f"{s.entered_last_day:,}", f"{s.left_last_day:,}",
                    refreshed.isoformat(timespec="seconds")
                    + (" (on time)" if s.time_dependent else ""),
                )  # fmt: skip
            console.print(table)
            if not found:
                console.print(
                    "no segments installed"
                    + (f" in program {program}" if program else "")
                    + ": define Segment(...) in the app and start the worker"
                )
            return 0

        raise typer.Exit(run(on_database(settings_of(ctx), go)))

    @segments_cli.command("members")
    def members_(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(help="The segment's name.")],
        program: Annotated[str, typer.Option(help="The segment's program.")] = "default",
        limit: Annotated[int, typer.Option(min=1, max=10_000, help="How many members.")] = 100,
        after: Annotated[
            str | None, typer.Option(help="Only members whose id sorts after this one.")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object.")] = False,
    ) -> None:
        """List a segment's members in member id order, with when each entered; page with
        --after (the last id shown)."""
        from loyalty.segments.membership import members, segment_exists

        async def go(conn: asyncpg.Connection) -> int:
            if not await segment_exists(conn, program, name):
                problem(f"segment: no segment {name!r} in program {program!r}; "
                        "see loyalty segments")  # fmt: skip
                return 2
            found = await members(conn, program, name, after=after, limit=limit)
            following = found[-1][0] if len(found) == limit else None
            if as_json:
                print(json.dumps({
                    "program": program, "segment": name,
                    "members": [{"member_id": m, "entered_at": at.isoformat()} for m, at in found],
                    "next_after": following,
                }, indent=2))  # fmt: skip
                return 0
            table = Table("member", "entered", title=f"Segment {name} ({program})")
            for member_id, at in found:
                table.add_row(member_id, at.isoformat(timespec="seconds"))
            console.print(table)
            if following is not None:
                console.print(
                    f"more: loyalty segments members {name} --program {program} "
                    f"--after {following}",
                    soft_wrap=True, markup=False, highlight=False,
                )  # fmt: skip
            elif not found:
                console.print("no members")
            return 0

        raise typer.Exit(run(on_database(settings_of(ctx), go)))

    cli.add_typer(segments_cli)
