"""`loyalty events --failed` and `--pending`: the dead letters and the backlog of the inbox."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from loyalty.cli.kit import console, on_database
from loyalty.settings import Settings

if TYPE_CHECKING:
    from loyalty.store.db import Conn


def _age(seconds: float) -> str:
    """``42 s``, ``3 min``, ``5 h``, ``2 d``: how long an event has waited."""
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


async def print_failed(settings: Settings, program: str | None, limit: int, as_json: bool) -> int:
    """List dead-lettered events, newest first; the exit code."""
    from starter.client import LoyaltyClient

    async with await LoyaltyClient.connect(settings) as client:
        rows = await client.failed_events(program, limit)
    if as_json:
        for row in rows:
            print(row.model_dump_json())
        return 0
    table = Table("program", "event_id", "type", "member", "attempts", "failed at", "error",
                  title="Dead-lettered events")  # fmt: skip
    for r in rows:
        table.add_row(
            r.program, r.event_id, r.type, r.member_id, str(r.attempts),
            r.failed_at.isoformat(timespec="seconds"), r.error,
        )  # fmt: skip
    console.print(table)
    if not rows:
        console.print("no failed events")
    return 0


async def print_pending(settings: Settings, program: str | None, limit: int, as_json: bool) -> int:
    """List the backlog, oldest first; the exit code."""
    return await on_database(settings, lambda conn: _pending(conn, program, limit, as_json))


async def _pending(conn: Conn, program: str | None, limit: int, as_json: bool) -> int:
    from loyalty.ingest.inbox import pending_events
    from loyalty.store.db import program_config

    if program is not None:
        await program_config(conn, program)  # an unknown program exits 2
    rows = await pending_events(conn, program, limit)
    total = await conn.fetchval(
        """SELECT count(*) FROM events
           WHERE status = 'pending' AND ($1::text IS NULL OR program = $1)""",
        program,
    )
    if as_json:
        for row in rows:
            print(row.model_dump_json())
        return 0
    table = Table("program", "event_id", "type", "member", "occurred at", "accepted at", "age",
                  "attempts", "last error", title="Pending events (oldest first)")  # fmt: skip
    for r in rows:
        error = r.error or ""
        if r.not_before is not None:
            error = f"{error} (retry at {r.not_before.isoformat(timespec='seconds')})".strip()
        table.add_row(
            r.program, r.event_id, r.type, r.member_id,
            r.occurred_at.isoformat(timespec="seconds"),
            r.received_at.isoformat(timespec="seconds"), _age(r.age_seconds),
            str(r.attempts), error,
        )  # fmt: skip
    console.print(table)
    if not rows:
        console.print("no pending events")
    elif total > len(rows):
        console.print(f"… and {total - len(rows):,} more pending (--limit)")
    return 0
