"""`loyalty streams`: the profile streams, their backlog and delivery, and run-time control.

The streams are defined in the app and installed by the worker; these commands read and
change their state in the database, so they work whether or not a worker runs (a
disabled stream keeps its marks; a resync is sent when a worker delivers).
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import asyncpg
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loyalty.cli.kit import console, on_database, run, settings_of
from loyalty.streams.capture import StreamStatus

streams_cli = typer.Typer(
    name="streams",
    help="Profile streams (defined in the app, installed by the worker): status and control.",
    invoke_without_command=True,
)
BAR_WIDTH = 12
# How often `resync` reads the backlog while it waits.
RESYNC_POLL_SECONDS = 0.5

Name = Annotated[str, typer.Argument(help="The stream's name (see loyalty streams).")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _bar(value: int, largest: int) -> str:
    if largest <= 0 or value <= 0:
        return ""
    return "█" * max(1, round(value / largest * BAR_WIDTH))


def _json(status: StreamStatus) -> dict[str, object]:
    return status.model_dump(mode="json")


def _print_status(s: StreamStatus) -> None:
    table = Table(show_header=False, title=f"Stream {s.name}", title_justify="left")
    table.add_row("programs", ", ".join(s.programs))
    table.add_row("destination", s.url)
    table.add_row("key", s.key)
    table.add_row("fields", ", ".join(f"{k} ← {v}" for k, v in s.fields.items()))
    table.add_row("state", "enabled" if s.enabled else "[bold]disabled[/bold] (still marking)")
    table.add_row("pending", f"{s.pending:,} members, oldest change {s.lag_seconds:,.1f} s ago")
    if s.in_flight:
        table.add_row(
            "in flight", f"{s.in_flight:,} records, {s.in_flight_attempts} failed attempts"
        )
    table.add_row(
        "delivered",
        f"{s.upserts:,} upserts, {s.deletes:,} deletes in {s.batches:,} batches "
        f"({s.requests:,} requests); {s.records:,} records held by the list",
    )
    table.add_row("rejected", f"{s.rejected:,} in all, {s.rejected_now:,} waiting for a change")
    if s.last_delivered_at:
        table.add_row("last delivery", s.last_delivered_at.isoformat(timespec="seconds"))
    if s.last_error:
        at = s.last_error_at.isoformat(timespec="seconds") if s.last_error_at else ""
        table.add_row("last failure", f"{s.last_error} ({at}; {s.failures:,} failures in all)")
    console.print(table)


def register(cli: typer.Typer) -> None:
    """Add `loyalty streams` to the command line."""

    @streams_cli.callback()
    def streams(
        ctx: typer.Context,
        program: Annotated[str | None, typer.Option(help="Only this program's streams.")] = None,
        as_json: AsJson = False,
    ) -> None:
        """List the streams: state, backlog (with a bar), lag, what was delivered."""
        if ctx.invoked_subcommand is not None:
            return
        from loyalty.streams.capture import list_streams

        async def go(conn: asyncpg.Connection) -> int:
            found = await list_streams(conn, program)
            if as_json:
                print(json.dumps([_json(s) for s in found], indent=2))
                return 0
            largest = max((s.pending for s in found), default=0)
            table = Table("stream", "state", "pending", "", "lag", "upserts", "deletes",
                          "rejected", "failures", title="Profile streams")  # fmt: skip
            for s in found:
                table.add_row(
                    s.name, "enabled" if s.enabled else "disabled",
                    f"{s.pending:,}", _bar(s.pending, largest), f"{s.lag_seconds:,.1f} s",
                    f"{s.upserts:,}", f"{s.deletes:,}", f"{s.rejected:,}", f"{s.failures:,}",
                )  # fmt: skip
            console.print(table)
            if not found:
                console.print(
                    "no streams installed: define ProfileStream(...) in the app and start "
                    "the worker"
                )
            return 0

        raise typer.Exit(run(on_database(settings_of(ctx), go)))

    @streams_cli.command("status")
    def status_(ctx: typer.Context, name: Name, as_json: AsJson = False) -> None:
        """One stream: mapping, state, backlog, in-flight batch, counts, last failure."""
        from loyalty.streams.capture import status

        async def go(conn: asyncpg.Connection) -> int:
            found = await status(conn, name)
            if as_json:
                print(json.dumps(_json(found), indent=2))
            else:
                _print_status(found)
            return 0

        raise typer.Exit(run(on_database(settings_of(ctx), go)))

    def _switch(ctx: typer.Context, name: str, enabled: bool, as_json: bool) -> None:
        from loyalty.streams.capture import set_enabled, status

        async def go(conn: asyncpg.Connection) -> int:
            changed = await set_enabled(conn, name, enabled)
            found = await status(conn, name)
            if as_json:
                print(json.dumps({**_json(found), "changed": changed}, indent=2))
                return 0
            state = "enabled" if enabled else "disabled"
            if not changed:
                console.print(f"stream {name} was already {state}")
            elif enabled:
                console.print(f"stream {name} enabled: {found.pending:,} members pending")
            else:
                console.print(
                    f"stream {name} disabled: changes are still marked and are sent, "
                    "coalesced, when it is enabled again"
                )
            return 0

        raise typer.Exit(run(on_database(settings_of(ctx), go)))

    @streams_cli.command("enable")
    def enable(ctx: typer.Context, name: Name, as_json: AsJson = False) -> None:
        """Send the stream's changes again (those marked meanwhile, coalesced)."""
        _switch(ctx, name, True, as_json)

    @streams_cli.command("disable")
    def disable(ctx: typer.Context, name: Name, as_json: AsJson = False) -> None:
        """Stop sending; changes are still marked."""
        _switch(ctx, name, False, as_json)

    @streams_cli.command("resync")
    def resync_(
        ctx: typer.Context,
        name: Name,
        wait: Annotated[
            bool, typer.Option(help="Follow the delivery with a progress bar until it is done.")
        ] = True,
        as_json: AsJson = False,
    ) -> None:
        """Send every member's full current record (the initial load of a new list)."""
        from loyalty.streams.capture import pending_count, resync, status

        async def go(conn: asyncpg.Connection) -> int:
            marked = await resync(conn, name)
            if not wait or as_json:
                if as_json:
                    print(json.dumps({"stream": name, "marked": marked}, indent=2))
                else:
                    console.print(f"stream {name}: {marked:,} members marked for a full record")
                return 0
            found = await status(conn, name)
            if not found.enabled:
                console.print(
                    f"stream {name}: {marked:,} members marked; the stream is disabled, so "
                    f"they are sent when it is enabled (loyalty streams enable {name})"
                )
                return 0
            total = max(marked, await pending_count(conn, name))
            console.print(
                f"stream {name}: {marked:,} members marked (Ctrl-C stops watching; "
                "the resync goes on)"
            )
            with Progress(
                TextColumn("resync"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                console=console,
            ) as progress:  # fmt: skip
                bar = progress.add_task("resync", total=total)
                while True:
                    left = await pending_count(conn, name)
                    progress.update(bar, completed=max(0, total - left))
                    if left == 0:
                        break
                    await asyncio.sleep(RESYNC_POLL_SECONDS)
            console.print(f"stream {name}: {marked:,} members sent")
            return 0

        raise typer.Exit(run(on_database(settings_of(ctx), go)))

    cli.add_typer(streams_cli)
