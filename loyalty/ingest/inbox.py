"""The events inbox: idempotent insert, batch claims for the router, outcomes.

Events are unique on (program, origin, event_id): client events and the events the
engine derives (`loyalty.events.origin_of`) have separate id spaces, so neither can
suppress the other. An INSERT trigger NOTIFYs ``loyalty_inbox`` with the program name,
and the router NOTIFYs ``loyalty_processed`` after each batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from loyalty.errors import InvalidEvent
from loyalty.events import AnyEvent, Origin, origin_of
from loyalty.models import EmitResult, EventOutcome, FailedEvent
from loyalty.store.db import Conn

INBOX_CHANNEL = "loyalty_inbox"
PROCESSED_CHANNEL = "loyalty_processed"

_INSERT = """
INSERT INTO events (program, origin, event_id, type, member_id, payload, occurred_at,
                    caused_by)
SELECT *, $8::bigint FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                                 $6::jsonb[], $7::timestamptz[])
ON CONFLICT (program, origin, event_id) DO NOTHING
RETURNING program, origin, event_id
"""

_CLAIM = """
SELECT id, event_id, type, member_id, payload, attempts
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
    The statement is atomic: an unknown program rejects the whole call. ``caused_by`` is
    the row id of the event that derived these (see `loyalty.ingest.derived`); None for emits.

    Raises:
        InvalidEvent: an event names a program the database does not know.
    """
    origins = [origin_of(e) for e in events]
    try:
        rows = await conn.fetch(
            _INSERT,
            [e.program for e in events],
            origins,
            [e.event_id for e in events],
            [e.type for e in events],
            [e.member_id for e in events],
            [e.model_dump(mode="json") for e in events],
            [e.occurred_at for e in events],
            caused_by,
        )
    except asyncpg.ForeignKeyViolationError:
        await check_programs(conn, {e.program for e in events})
        raise
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


async def check_programs(conn: Conn, programs: set[str]) -> None:
    """Refuse events for programs the database does not know, before writing any.

    Raises:
        InvalidEvent: one line per unknown program.
    """
    known = {r["name"] for r in await conn.fetch("SELECT name FROM programs")}
    unknown = sorted(programs - known)
    if unknown:
        raise InvalidEvent(
            [
                f"program: unknown program {name!r}; known: {', '.join(sorted(known))}"
                for name in unknown
            ]
        )


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
