"""Streams in PostgreSQL: installed by the worker, controlled at run time, listed.

`install` (the worker calls it at start-up, after the segments) stores the app's streams
in ``streams`` and ``stream_programs`` and turns on the marking triggers of migration
0024 for the tables their fields read. From then on every transaction that changes a
mapped source marks the member for each stream of its program, in that transaction.

A stream whose definition changed (its digest: a new field, another source, another key)
marks every member of its programs: the stream then sends only what differs from what the
destination holds, so a new field is sent to everyone and an unchanged one to no one. A
stream the app no longer defines is removed with its marks and records.

`enable`, `disable` and `resync` are run-time controls (the CLI and the HTTP API): a
disabled stream keeps marking and catches up, coalesced, when enabled; `resync` marks
every member for a full record (the initial load of a new list).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from loyalty.errors import UnknownStream
from loyalty.store.db import Conn
from loyalty.streams.spec import ProfileStream

# Every marking trigger of migration 0024, by the table it is on.
MARKING_TRIGGERS = {
    "accounts": ("accounts_streams_insert", "accounts_streams_update"),
    "member_currencies": (
        "member_currencies_streams_insert",
        "member_currencies_streams_update",
    ),
    "member_tiers": (
        "member_tiers_streams_insert",
        "member_tiers_streams_update",
        "member_tiers_streams_delete",
    ),
    "members": ("members_streams_insert", "members_streams_update"),
    "qualifying_points": ("qualifying_points_streams_insert",),
    "segment_members": ("segment_members_streams_insert", "segment_members_streams_update"),
}
_INSTALL_LOCK = 0x5354524D  # "STRM"


@dataclass(frozen=True)
class Installed:
    """What `install` did: streams added or changed (every member marked), and removed."""

    changed: list[str]
    removed: list[str]


async def install(conn: Conn, streams: Sequence[ProfileStream]) -> Installed:
    """Store the app's streams and set the marking triggers; see the module."""
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({_INSTALL_LOCK})")
        have = {
            r["name"]: r["digest"] for r in await conn.fetch("SELECT name, digest FROM streams")
        }
        wanted = {s.name: s for s in streams}
        removed = sorted(set(have) - set(wanted))
        changed = sorted(n for n, s in wanted.items() if have.get(n) != s.digest())
        if removed:
            await conn.execute("DELETE FROM streams WHERE name = ANY($1::text[])", removed)
        for name in changed:
            stream = wanted[name]
            await conn.execute(
                """INSERT INTO streams (name, definition, digest, sources)
                   VALUES ($1, $2, $3, $4)
                   ON CONFLICT (name) DO UPDATE
                   SET definition = EXCLUDED.definition, digest = EXCLUDED.digest,
                       sources = EXCLUDED.sources, changed_at = now()""",
                name, stream.definition(), stream.digest(), stream.tables(),
            )  # fmt: skip
            await conn.execute("DELETE FROM stream_programs WHERE stream = $1", name)
            await conn.executemany(
                "INSERT INTO stream_programs (stream, program) VALUES ($1, $2)",
                [(name, p) for p in stream.programs],
            )
            # Marks and records of programs the stream no longer covers.
            for table in ("stream_marks", "stream_records", "stream_rejections"):
                await conn.execute(
                    f"DELETE FROM {table} WHERE stream = $1 AND NOT program = ANY($2::text[])",
                    name, list(stream.programs),
                )  # fmt: skip
            await mark_all(conn, name, full=False)
        needed = {t for r in await conn.fetch("SELECT sources FROM streams") for t in r["sources"]}
        await _marking(conn, needed)
    return Installed(changed, removed)


async def _marking(conn: Conn, needed: set[str]) -> None:
    """Each table's triggers on exactly when some stream reads the table."""
    rows = await conn.fetch(
        "SELECT tgname, tgenabled <> 'D' AS enabled FROM pg_trigger WHERE tgname = ANY($1)",
        [t for names in MARKING_TRIGGERS.values() for t in names],
    )
    enabled = {r["tgname"]: r["enabled"] for r in rows}
    for table, triggers in MARKING_TRIGGERS.items():
        on = table in needed
        for trigger in triggers:
            if enabled.get(trigger) != on:
                await conn.execute(
                    f"ALTER TABLE {table} {'ENABLE' if on else 'DISABLE'} TRIGGER {trigger}"
                )


async def mark_all(conn: Conn, stream: str, *, full: bool) -> int:
    """Mark every member of the stream's programs (``full``: send every field); returns
    how many members are marked."""
    result = await conn.execute(
        """INSERT INTO stream_marks AS k (stream, program, member_id, full_record)
           SELECT $1, m.program, m.member_id, $2
           FROM (SELECT program, member_id FROM members
                 UNION SELECT program, member_id FROM accounts WHERE member_id IS NOT NULL) AS m
           JOIN stream_programs AS s ON s.program = m.program AND s.stream = $1
           ORDER BY m.program, m.member_id
           ON CONFLICT (stream, program, member_id) DO UPDATE
           SET version = k.version + 1, full_record = k.full_record OR EXCLUDED.full_record""",
        stream, full,
    )  # fmt: skip
    return int(result.split()[-1])


class StreamStatus(BaseModel):
    """A stream as `loyalty streams status` and ``GET /v1/streams/{name}`` show it.

    ``pending`` counts the members marked and not yet delivered; ``lag_seconds`` is the
    age of the oldest such change (0 with none); ``in_flight`` the records of the batch
    sent and not yet answered.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    programs: list[str]
    url: str
    key: str
    fields: dict[str, str]
    enabled: bool
    pending: int
    lag_seconds: float
    in_flight: int
    in_flight_attempts: int
    batches: int
    requests: int
    upserts: int
    deletes: int
    rejected: int
    rejected_now: int
    failures: int
    records: int
    last_delivered_at: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    changed_at: datetime


_STATUS = """
SELECT s.*,
       (SELECT count(*) FROM stream_marks AS k WHERE k.stream = s.name) AS pending,
       coalesce(extract(epoch FROM now() - (SELECT min(k.marked_at) FROM stream_marks AS k
                                            WHERE k.stream = s.name)), 0)::float8 AS lag,
       (SELECT jsonb_array_length(b.items) FROM stream_batches AS b
        WHERE b.stream = s.name) AS in_flight,
       (SELECT b.attempts FROM stream_batches AS b WHERE b.stream = s.name) AS attempts,
       (SELECT count(*) FROM stream_rejections AS r WHERE r.stream = s.name) AS rejected_now,
       (SELECT count(*) FROM stream_records AS r WHERE r.stream = s.name) AS records
FROM streams AS s
"""


def _status(row: Any) -> StreamStatus:
    definition = row["definition"]
    if isinstance(definition, str):
        definition = json.loads(definition)
    return StreamStatus(
        name=row["name"], programs=list(definition["programs"]),
        url=definition["destination"]["url"], key=definition["key"],
        fields=definition["fields"], enabled=row["enabled"], pending=row["pending"],
        lag_seconds=round(row["lag"], 3), in_flight=row["in_flight"] or 0,
        in_flight_attempts=row["attempts"] or 0, batches=row["batches"],
        requests=row["requests"], upserts=row["upserts"], deletes=row["deletes"],
        rejected=row["rejected"], rejected_now=row["rejected_now"], failures=row["failures"],
        records=row["records"], last_delivered_at=row["last_delivered_at"],
        last_error=row["last_error"], last_error_at=row["last_error_at"],
        changed_at=row["changed_at"],
    )  # fmt: skip


async def list_streams(conn: Conn, program: str | None = None) -> list[StreamStatus]:
    """Every installed stream (of ``program``, if given), by name."""
    rows = await conn.fetch(
        _STATUS
        + """WHERE $1::text IS NULL OR EXISTS (
                 SELECT 1 FROM stream_programs AS p WHERE p.stream = s.name AND p.program = $1)
             ORDER BY s.name""",
        program,
    )
    return [_status(r) for r in rows]


async def status(conn: Conn, name: str) -> StreamStatus:
    """One stream's status.

    Raises:
        UnknownStream: no stream of that name is installed.
    """
    row = await conn.fetchrow(_STATUS + "WHERE s.name = $1", name)
    if row is None:
        raise UnknownStream(await _unknown(conn, name))
    return _status(row)


async def _unknown(conn: Conn, name: str) -> str:
    names = [r["name"] for r in await conn.fetch("SELECT name FROM streams ORDER BY name")]
    return f"no stream {name!r}; streams: {', '.join(names) or 'none (a worker installs them)'}"


async def set_enabled(conn: Conn, name: str, enabled: bool) -> bool:
    """Enable or disable a stream; returns whether it changed.

    Raises:
        UnknownStream: no stream of that name is installed.
    """
    row = await conn.fetchrow(
        """UPDATE streams AS s SET enabled = $2
           FROM (SELECT name, enabled FROM streams WHERE name = $1 FOR UPDATE) AS before
           WHERE s.name = before.name RETURNING before.enabled""",
        name, enabled,
    )  # fmt: skip
    if row is None:
        raise UnknownStream(await _unknown(conn, name))
    return bool(row["enabled"] != enabled)


async def resync(conn: Conn, name: str) -> int:
    """Mark every member of the stream for a full record; returns how many.

    Raises:
        UnknownStream: no stream of that name is installed.
    """
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM streams WHERE name = $1 FOR UPDATE", name) is None:
            raise UnknownStream(await _unknown(conn, name))
        await conn.execute("DELETE FROM stream_rejections WHERE stream = $1", name)
        return await mark_all(conn, name, full=True)


async def pending_count(conn: Conn, name: str) -> int:
    """Members marked and not yet delivered (the resync's progress)."""
    return int(
        await conn.fetchval("SELECT count(*) FROM stream_marks WHERE stream = $1", name) or 0
    )
