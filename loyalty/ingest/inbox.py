"""The events inbox: idempotent insert, batch claims for the router, outcomes.

Events are unique on (program, origin, event_id): client events and the events the
engine derives (`loyalty.events.origin_of`) have separate id spaces, so neither can
suppress the other. An INSERT trigger NOTIFYs ``loyalty_inbox`` with the program name,
and the router NOTIFYs ``loyalty_processed`` after each batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from loyalty.errors import Conflict, EventConflict, InvalidEvent
from loyalty.events import (
    AnyEvent,
    IncomingEvent,
    Origin,
    differing_fields,
    occurred_at_sent,
    origin_of,
)
from loyalty.models import EmitResult, EventOutcome, FailedEvent, PendingEvent
from loyalty.store.db import Conn

INBOX_CHANNEL = "loyalty_inbox"
PROCESSED_CHANNEL = "loyalty_processed"

_INSERT = """
INSERT INTO events (program, origin, event_id, type, member_id, payload, occurred_at,
                    occurred_at_sent, caused_by)
SELECT *, $9::bigint FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::jsonb[], $7::timestamptz[], $8::boolean[])
ON CONFLICT (program, origin, event_id) DO NOTHING
RETURNING program, origin, event_id
"""

# The first version of client events, to compare a repeat with.
_STORED = """
SELECT e.program, e.event_id, e.payload, e.occurred_at_sent
FROM events AS e
JOIN unnest($1::text[], $2::text[]) AS k(program, event_id)
  ON e.program = k.program AND e.origin = 'client' AND e.event_id = k.event_id
"""

# The payload as JSON text: `loyalty.events.stored_event` parses it in one step, a third
# faster than decoding it to Python objects first and validating those.
_CLAIM = """
SELECT id, event_id, type, member_id, payload::text AS payload, attempts
FROM events
WHERE program = $1 AND status = 'pending' AND mod(member_hash, $2) = $3
  AND (not_before IS NULL OR not_before <= now())
  -- A member's events wait behind that member's event that is waiting for a retry.
  AND NOT EXISTS (
      SELECT 1 FROM events AS earlier
      WHERE earlier.program = events.program AND earlier.member_id = events.member_id
        AND earlier.id < events.id AND earlier.status = 'pending'
        AND earlier.not_before > now())
ORDER BY id
LIMIT $4
FOR UPDATE SKIP LOCKED
"""

_RECORD = """
UPDATE events AS e
SET status = o.status,
    outcome = o.outcome,
    detail = o.detail,
    attempts = o.attempts,
    last_error = coalesce(o.last_error, e.last_error),
    not_before = CASE WHEN o.status = 'pending' THEN now() + o.retry_after ELSE NULL END,
    processed_at = CASE WHEN o.status = 'pending' THEN NULL ELSE now() END
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
            $7::interval[]) AS o(id, status, outcome, detail, attempts, last_error, retry_after)
WHERE e.id = o.id
"""


async def insert_events(
    conn: Conn, events: Sequence[AnyEvent], caused_by: int | None = None
) -> list[EmitResult]:
    """Insert validated events in one statement; existing (program, event_id) are duplicates.

    Each event goes to the id space of its origin (`loyalty.events.origin_of`): a client
    event is a duplicate only of a client event, a derived one only of a derived one.
    A client event whose (program, event_id) is taken by one with other content (or
    that comes twice in ``events`` with other content) is a conflict: nothing of the call
    is written (in a transaction of its own, or a savepoint of the caller's). Derived
    events are never compared: the first one derived stays. The statement is atomic: an
    unknown program rejects the whole call. ``caused_by`` is the row id of the event that
    derived these (see `loyalty.ingest.derived`); None for emits.

    Raises:
        EventConflict: client events reuse an event_id with other content.
        InvalidEvent: an event names a program the database does not know.
    """
    origins = [origin_of(e) for e in events]
    try:
        if "client" not in origins:
            return await _insert(conn, events, origins, caused_by)
        # One event is all or nothing by itself, and a repeat wrote nothing, so it needs
        # no transaction around its comparison (one round trip for a new event, not three).
        alone = len(events) == 1
        async with contextlib.nullcontext() if alone else conn.transaction():
            results = await _insert(conn, events, origins, caused_by)
            conflicts = await _conflicts(conn, events, results)
            if conflicts:
                raise EventConflict(conflicts)
            return results
    except asyncpg.ForeignKeyViolationError:
        await check_programs(conn, {e.program for e in events})
        raise


async def _insert(
    conn: Conn, events: Sequence[AnyEvent], origins: list[Origin], caused_by: int | None
) -> list[EmitResult]:
    rows = await conn.fetch(
        _INSERT,
        [e.program for e in events],
        origins,
        [e.event_id for e in events],
        [e.type for e in events],
        [e.member_id for e in events],
        [e.model_dump(mode="json") for e in events],
        [e.occurred_at for e in events],
        [occurred_at_sent(e) for e in events],
        caused_by,
    )
    inserted = {(r["program"], r["origin"], r["event_id"]) for r in rows}
    results = []
    seen: set[tuple[str, str, str]] = set()
    for e, origin in zip(events, origins, strict=True):
        key = (e.program, origin, e.event_id)
        accepted = key in inserted and key not in seen
        results.append(
            EmitResult(program=e.program, event_id=e.event_id, accepted=accepted, origin=origin)
        )
        seen.add(key)
    return results


async def _conflicts(
    conn: Conn, events: Sequence[AnyEvent], results: list[EmitResult]
) -> list[Conflict]:
    """The client events not accepted whose content differs from the first version,
    one per event id, with every field that differs."""
    found: dict[tuple[str, str], list[str]] = {}
    for index, fields in (await _differences(conn, events, results)).items():
        known = found.setdefault((events[index].program, events[index].event_id), [])
        known += [f for f in fields if f not in known]
    return [Conflict(program, event_id, fields) for (program, event_id), fields in found.items()]


async def _differences(
    conn: Conn, events: Sequence[AnyEvent], results: list[EmitResult]
) -> dict[int, list[str]]:
    """By position: the client events not accepted whose content differs from the first
    version (the stored one, or the one earlier in ``events``), with the fields that
    differ. ``occurred_at`` is compared only when both versions gave it (compare what
    the senders sent, not the defaults)."""
    first: dict[tuple[str, str], int] = {}
    for index, (e, r) in enumerate(zip(events, results, strict=True)):
        if r.origin == "client":
            first.setdefault((e.program, e.event_id), index)
    unread = [key for key, index in first.items() if not results[index].accepted]
    stored: dict[tuple[str, str], tuple[dict[str, Any], bool]] = {}
    if unread:
        rows = await conn.fetch(_STORED, [k[0] for k in unread], [k[1] for k in unread])
        stored = {
            (r["program"], r["event_id"]): (r["payload"], r["occurred_at_sent"]) for r in rows
        }
    found: dict[int, list[str]] = {}
    for index, (e, r) in enumerate(zip(events, results, strict=True)):
        if r.origin != "client" or r.accepted:
            continue
        key = (e.program, e.event_id)
        earlier = events[first[key]]
        if results[first[key]].accepted:
            fields = differing_fields(
                earlier, e, occurred_at=occurred_at_sent(earlier) and occurred_at_sent(e)
            )
        elif key in stored:
            payload, sent = stored[key]
            fields = differing_fields(payload, e, occurred_at=sent and occurred_at_sent(e))
        else:
            continue
        if fields:
            found[index] = fields
    return found


async def insert_each(
    conn: Conn, events: Sequence[IncomingEvent]
) -> list[EmitResult | EventConflict]:
    """Insert client events that are each a call of their own, in one statement: the
    single events that concurrent callers sent (the HTTP API groups them).

    Each event is all or nothing by itself, so no transaction is needed: the answer for
    each is its result, or the conflict that refuses it alone (its insert wrote
    nothing). An event sent twice in ``events`` is a duplicate of the first, or a
    conflict if its content differs.

    Raises:
        InvalidEvent: an event names a program the database does not know (the
            statement wrote nothing; insert the others on their own).
    """
    origins: list[Origin] = ["client"] * len(events)
    try:
        results = await _insert(conn, events, origins, None)
    except asyncpg.ForeignKeyViolationError:
        await check_programs(conn, {e.program for e in events})
        raise
    differing = await _differences(conn, events, results)
    return [
        EventConflict([Conflict(e.program, e.event_id, differing[i])]) if i in differing else r
        for i, (e, r) in enumerate(zip(events, results, strict=True))
    ]


async def check_programs(conn: Conn, programs: set[str]) -> None:
    """Refuse events for programs the database does not know, before writing any.

    Raises:
        InvalidEvent: one line per unknown program.
    """
    known = await known_programs(conn)
    unknown = sorted(programs - known)
    if unknown:
        raise InvalidEvent(
            [
                f"program: unknown program {name!r}; known: {', '.join(sorted(known))}"
                for name in unknown
            ]
        )


async def known_programs(conn: Conn) -> set[str]:
    """The names of the programs the database knows."""
    return {r["name"] for r in await conn.fetch("SELECT name FROM programs")}


async def claim_batch(
    conn: Conn, program: str, partitions: int, partition: int, limit: int
) -> list[asyncpg.Record]:
    """Lock the oldest pending events of one partition (call inside a transaction)."""
    return await conn.fetch(_CLAIM, program, partitions, partition, limit)


async def next_retry_at(
    conn: Conn, program: str, partitions: int, partition: int
) -> datetime | None:
    """When the earliest event waiting for a retry becomes due, if any."""
    value: datetime | None = await conn.fetchval(
        """SELECT min(not_before) FROM events
           WHERE program = $1 AND status = 'pending' AND mod(member_hash, $2) = $3
             AND not_before > now()""",
        program,
        partitions,
        partition,
    )
    return value


async def record_outcomes(conn: Conn, outcomes: Sequence[dict[str, Any]]) -> None:
    """Write the outcome of every claimed event in one statement."""
    await conn.execute(
        _RECORD,
        [o["id"] for o in outcomes],
        [o["status"] for o in outcomes],
        [o.get("outcome") for o in outcomes],
        [o.get("detail") for o in outcomes],
        [o["attempts"] for o in outcomes],
        [o.get("last_error") for o in outcomes],
        [o.get("retry_after") for o in outcomes],
    )


async def fetch_outcomes(
    conn: Conn, keys: Sequence[tuple[str, str]], origin: Origin = "client"
) -> dict[tuple[str, str], EventOutcome]:
    """The current status of events by (program, event_id), in one origin's id space."""
    rows = await conn.fetch(
        """SELECT e.program, e.event_id, e.status, e.outcome,
                  CASE WHEN e.status = 'dead' THEN e.last_error ELSE e.detail END AS detail
           FROM events AS e
           JOIN unnest($1::text[], $2::text[]) AS k(program, event_id)
             ON e.program = k.program AND e.origin = $3 AND e.event_id = k.event_id""",
        [k[0] for k in keys],
        [k[1] for k in keys],
        origin,
    )
    return {
        (r["program"], r["event_id"]): EventOutcome(
            program=r["program"],
            event_id=r["event_id"],
            status=r["status"],
            outcome=r["outcome"],
            detail=r["detail"],
        )
        for r in rows
    }


async def pending_events(
    conn: Conn, program: str | None = None, limit: int = 100
) -> list[PendingEvent]:
    """The backlog: pending events, oldest first (the order the routers take them)."""
    rows = await conn.fetch(
        """SELECT program, event_id, type, member_id, occurred_at, received_at,
                  extract(epoch FROM clock_timestamp() - received_at)::float8 AS age_seconds,
                  attempts, last_error AS error, not_before
           FROM events
           WHERE status = 'pending' AND ($1::text IS NULL OR program = $1)
           ORDER BY id
           LIMIT $2""",
        program,
        limit,
    )
    return [PendingEvent(**dict(r)) for r in rows]


async def backlog(conn: Conn, partitions: int) -> list[dict[str, Any]]:
    """Pending events per program and router partition (of ``partitions``): how many,
    how many wait for a retry, and the age in seconds of the oldest (the lag)."""
    rows = await conn.fetch(
        """SELECT program, mod(member_hash, $1) AS partition, count(*) AS pending,
                  count(*) FILTER (WHERE not_before IS NOT NULL) AS retrying,
                  extract(epoch FROM clock_timestamp() - min(received_at))::float8
                      AS lag_seconds
           FROM events WHERE status = 'pending'
           GROUP BY 1, 2 ORDER BY 1, 2""",
        partitions,
    )
    return [dict(r) for r in rows]


async def dead_letters(conn: Conn) -> list[dict[str, Any]]:
    """Dead-lettered events per program: how many, and when the latest failed."""
    rows = await conn.fetch(
        """SELECT program, count(*) AS dead, max(processed_at) AS last_failed_at
           FROM events WHERE status = 'dead' GROUP BY program ORDER BY program"""
    )
    return [dict(r) for r in rows]


async def failed_events(
    conn: Conn, program: str | None = None, limit: int = 100
) -> list[FailedEvent]:
    """Dead-lettered events, newest first."""
    rows = await conn.fetch(
        """SELECT program, event_id, type, member_id, attempts, last_error, received_at,
                  processed_at
           FROM events
           WHERE status = 'dead' AND ($1::text IS NULL OR program = $1)
           ORDER BY id DESC
           LIMIT $2""",
        program,
        limit,
    )
    return [
        FailedEvent(
            program=r["program"],
            event_id=r["event_id"],
            type=r["type"],
            member_id=r["member_id"],
            attempts=r["attempts"],
            error=r["last_error"] or "",
            received_at=r["received_at"],
            failed_at=r["processed_at"],
        )
        for r in rows
    ]
