"""`loyalty messages`: a member's messages from the message log, with their attempts."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from loyalty.cli.kit import console, run, settings_of
from loyalty.models import MessageRecord
from loyalty.settings import Settings


async def list_messages(
    settings: Settings, member_id: str, program: str | None, limit: int
) -> list[MessageRecord]:
    """The member's latest messages, newest first."""
    from loyalty.messages.history import member_messages
    from loyalty.store.db import Database, connect

    async with Database(settings) as database:
        conn = await connect(database.dsn)
        try:
            return await member_messages(conn, member_id, program, limit)
        finally:
            await conn.close()


def _attempts(record: MessageRecord) -> str:
    lines = []
    for a in record.attempts:
        outcome = str(a.http_status) if a.http_status is not None else ""
        if a.error:
            outcome = f"{outcome} {a.error}".strip()
        lines.append(f"#{a.attempt} {a.at.isoformat(timespec='seconds')} {outcome or 'ok'}")
    return "\n".join(lines) or "-"


def register(cli: typer.Typer) -> None:
    """Add `loyalty messages` to the command line."""

    @cli.command()
    def messages(
        ctx: typer.Context,
        member: Annotated[str, typer.Option("--member", help="The member id.")],
        program: Annotated[
            str | None, typer.Option(help="Only this program; default: every program.")
        ] = None,
        limit: Annotated[int, typer.Option(min=1, help="How many, newest first.")] = 50,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    ) -> None:
        """List a member's messages: template, channel, provider, status and attempts."""
        records = run(list_messages(settings_of(ctx), member, program, limit))
        if as_json:
            for record in records:
                print(record.model_dump_json())
            return
        table = Table("id", "at", "program", "template", "channel", "provider", "status",
                      "attempts", title=f"Messages of {member}")  # fmt: skip
        for r in records:
            status = r.status if not r.detail or r.status == "sent" else f"{r.status}: {r.detail}"
            if r.erased_at is not None:
                status += f" (erased {r.erased_at.date().isoformat()})"
            table.add_row(
                str(r.id), r.created_at.isoformat(timespec="seconds"), r.program, r.template,
                r.channel, r.provider, status, _attempts(r),
            )  # fmt: skip
        console.print(table)
        if not records:
            console.print("no messages")
