"""Retention of the journey outboxes: delete what was done long enough ago.

``journey_starts`` keeps a row per journey and ``journey_signals`` a row per signal,
after they were started and sent, so that a batch processed again records nothing twice.
Once that cannot happen any more, the rows are only history (Temporal keeps the
journey's own), and `prune` deletes those done more than the retention ago:

* started journeys triggered by one event (``Entry.EVERY_TIME``): the inbox never takes
  that event again (its ``event_id`` is kept), so no batch can record the journey again;
* started journeys of a period (``Entry.once_per``) once the period ended more than the
  retention ago: another event of the member in the same period would record the row
  again, and start a second journey once Temporal no longer keeps the first;
* sent signals: their event was processed and is never processed again.

Never deleted: rows not started or not sent (their journey or signal is still owed),
and the started journeys of ``Entry.ONCE_PER_MEMBER`` flows, whose row is the record
that the member entered the flow: without it the member's next trigger would start the
journey again once the namespace's retention has dropped the first one. There is one
such row per member and flow, so they do not pile up the way the others do.

``journey_waits`` rows are not pruned: the table does not record a wait's timeout, so a
row registered long ago may belong to a journey still waiting, e.g. for 90 days.
Waits end with their journey (the journey deletes its row on receipt or timeout; the
router deletes the rows of a journey found gone when it signals it); only a journey
terminated or reset while waiting, and never signalled, leaves its row behind.

Each chunk is one short statement of its own (autocommit) that deletes at most ``chunk``
rows by primary key and skips rows another transaction holds (the router marking a
start), so pruning never holds locks for long nor waits for the router. The cut-off is
read once from the database clock, so rows done while it runs are left for next time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from loyalty.flows import recurring
from loyalty.store.db import Conn

# Rows deleted per statement.
PRUNE_CHUNK = 5_000

# The parts of a journey id (`loyalty.flows.journey_id`) before the task queue; its
# parts are percent-encoded, so the first '@' ends them and '/' only separates them.
# Captures the period's length and index of a once-per-period id; an every-time id
# matches without captures; a once-per-member id does not match.
_PRUNABLE_ID = r"^journey/[^/]+/[^/]+/[^/]+/(?:event/[^/]+|period/([0-9]+)s-(-?[0-9]+))$"

_PRUNE_STARTS = """
DELETE FROM journey_starts
WHERE workflow_id IN (
    SELECT s.workflow_id
    FROM journey_starts AS s,
         LATERAL regexp_match(split_part(s.workflow_id, '@', 1), $3) AS id(parts)
    WHERE s.started_at < $1 AND id.parts IS NOT NULL
      AND (id.parts[1] IS NULL
           OR to_timestamp(id.parts[1]::numeric * (id.parts[2]::numeric + 1)) < $1)
    LIMIT $2
    FOR UPDATE OF s SKIP LOCKED
)
AND started_at < $1
"""

_PRUNE_SIGNALS = """
DELETE FROM journey_signals
WHERE id IN (
    SELECT id FROM journey_signals
    WHERE sent_at < $1
    ORDER BY id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
AND sent_at < $1
"""


@dataclass(frozen=True)
class Pruned:
    """How many rows `prune` deleted, per table, and the cut-off it used.

    Attributes:
        cutoff: rows started or sent before this time were eligible.
        starts: ``journey_starts`` rows.
        signals: ``journey_signals`` rows.
        recurring_runs: finished runs of recurring flows, with their snapshots
            (`loyalty.flows.recurring.prune`).
        segment_changes: rows of ``segment_changes`` (kept a day at least: the counts of
            `loyalty segments` cover 24 hours).
    """

    cutoff: datetime
    starts: int
    signals: int
    recurring_runs: int = 0
    segment_changes: int = 0


def _count(status: str) -> int:
    """The row count of a ``DELETE n`` command status."""
    return int(status.rsplit(" ", 1)[-1])


async def prune(conn: Conn, *, older_than: timedelta, chunk: int = PRUNE_CHUNK) -> Pruned:
    """Delete the journey starts and signals done more than ``older_than`` ago, the
    snapshots of recurring runs finished before then, and older segment changes.

    Call it outside a transaction: each chunk commits on its own.

    Args:
        conn: a connection to the engine's database.
        older_than: the retention; rows started or sent within it are kept.
        chunk: rows deleted per statement.

    Returns:
        The counts of deleted rows and the cut-off.
    """
    if older_than < timedelta(0):
        raise ValueError(f"older_than must not be negative, got {older_than}")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got {chunk}")
    cutoff: datetime = await conn.fetchval("SELECT now() - $1::interval", older_than)
    starts = await _delete_in_chunks(conn, _PRUNE_STARTS, cutoff, chunk, _PRUNABLE_ID)
    signals = await _delete_in_chunks(conn, _PRUNE_SIGNALS, cutoff, chunk)
    runs = await recurring.prune(conn, older_than)
    changes = _count(
        await conn.execute(
            "DELETE FROM segment_changes WHERE at < least($1, now() - interval '1 day')", cutoff
        )
    )
    return Pruned(
        cutoff=cutoff, starts=starts, signals=signals, recurring_runs=runs,
        segment_changes=changes,
    )  # fmt: skip


async def _delete_in_chunks(
    conn: Conn, statement: str, cutoff: datetime, chunk: int, *extra: object
) -> int:
    total = 0
    while True:
        deleted = _count(await conn.execute(statement, cutoff, chunk, *extra))
        total += deleted
        # Fewer than a chunk: nothing eligible is left but rows locked right now,
        # which the next run takes.
        if deleted < chunk:
            return total
