"""The signal outbox: events for waiting journeys, recorded in the batch, sent after commit.

A journey waits with `loyalty.journeys.wait_for_event`, which registers a row in
``journey_waits`` (program, member, event type, workflow id, wait key). `record_signals`
runs inside `process_batch`: for every event the batch processed it finds the waits of
the event's program, member and type registered before the event reached the inbox, and
inserts one ``journey_signals`` row per (wait, event); the unique key (workflow id, wait
key, inbox row id) makes a batch processed again record nothing new. `send_signals` runs
after commit, in the router partition of the member: it sends every row of the partition
whose ``sent_at`` is still NULL (new ones, and leftovers of a crash between commit and
signal) as the ``loyalty_event`` signal, in inbox order per workflow, and marks them sent.
A workflow that no longer runs (not found, completed, cancelled) counts as signalled, and
its wait rows are deleted.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from loyalty.events import BaseEvent, stored_event
from loyalty.flows.outbox import record_attempts
from loyalty.models import LoyaltyEventSignal
from loyalty.store.db import Conn

log = logging.getLogger("loyalty.flows.signals")

# The signal's name; `loyalty.journeys.wait_for_event` handles it.
SIGNAL_NAME = "loyalty_event"
# Workflows signalled at once per router session, and rows taken per round.
SIGNAL_CONCURRENCY = 32
SIGNAL_LIMIT = 500
# A signal that waits longer than this is given up for this round.
SIGNAL_TIMEOUT = timedelta(seconds=5)


async def record_signals(conn: Conn, processed: Sequence[tuple[int, BaseEvent]]) -> int:
    """Insert the signals the processed events owe to waiting journeys; returns new rows.

    ``processed`` holds (inbox row id, event) of every event the batch processed. Runs in
    the batch transaction, so the signals commit with their events.
    """
    if not processed:
        return 0
    # Journeys rarely wait, and then for a few members: find which (member, type) any
    # wait is for before serializing a single payload.
    waiting = {
        (r["member_id"], r["event_type"])
        for r in await conn.fetch(
            """SELECT DISTINCT member_id, event_type FROM journey_waits
               WHERE program = ANY($1::text[]) AND member_id = ANY($2::text[])""",
            sorted({e.program for _, e in processed}),
            sorted({e.member_id for _, e in processed}),
        )
    }
    processed = [
        (row_id, event) for row_id, event in processed
        if (event.member_id, str(getattr(event, "type", ""))) in waiting
    ]  # fmt: skip
    if not processed:
        return 0
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
    for row_id, event in processed:
        values = (
            row_id, event.program, event.member_id, str(getattr(event, "type", "")),
            event.event_id, event.model_dump(mode="json"),
        )  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    inserted = await conn.fetch(
        """INSERT INTO journey_signals
               (workflow_id, wait_key, program, member_id, event_row_id, event_id, payload)
           SELECT w.workflow_id, w.wait_key, w.program, w.member_id, p.row_id, p.event_id,
                  p.payload
           FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                       $6::jsonb[]) AS p(row_id, program, member_id, event_type, event_id,
                                         payload)
           JOIN events AS e ON e.id = p.row_id
           JOIN journey_waits AS w
             ON w.program = p.program AND w.member_id = p.member_id
            AND w.event_type = p.event_type AND w.registered_at <= e.received_at
           ORDER BY p.row_id, w.workflow_id, w.wait_key
           ON CONFLICT (workflow_id, wait_key, event_row_id) DO NOTHING
           RETURNING id""",
        *columns,
    )  # fmt: skip
    return len(inserted)


def _gone(exc: BaseException) -> bool:
    """The workflow does not run any more (never existed, completed, was cancelled)."""
    return isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND


async def send_signals(
    conn: Conn,
    client: Client,
    *,
    program: str,
    partitions: int,
    partition: int,
    on_progress: Callable[[], None] | None = None,
) -> int:
    """Send the partition's recorded signals not yet sent; returns how many were sent.

    Failed sends keep ``sent_at`` NULL, count an attempt and keep the error; the next
    call tries them again. ``on_progress`` is called after each signal (the router
    heartbeats there).
    """
    rows = await conn.fetch(
        """SELECT id, workflow_id, wait_key, payload FROM journey_signals
           WHERE program = $1 AND sent_at IS NULL AND mod(member_hash, $2) = $3
           ORDER BY id
           LIMIT $4""",
        program, partitions, partition, SIGNAL_LIMIT,
    )  # fmt: skip
    if not rows:
        return 0
    by_workflow: dict[str, list[Any]] = {}
    for row in rows:
        by_workflow.setdefault(row["workflow_id"], []).append(row)
    gate = asyncio.Semaphore(SIGNAL_CONCURRENCY)
    sent: list[int] = []
    gone: list[str] = []
    failed: list[tuple[int, str]] = []

    async def signal_workflow(workflow_id: str, pending: list[Any]) -> None:
        handle = client.get_workflow_handle(workflow_id)
        async with gate:
            # In inbox order: a journey's wait gets the first matching event.
            for index, row in enumerate(pending):
                event = stored_event(row["payload"])
                signal = LoyaltyEventSignal(wait_key=row["wait_key"], event=event)
                try:
                    async with asyncio.timeout(SIGNAL_TIMEOUT.total_seconds()):
                        await handle.signal(SIGNAL_NAME, signal)
                except Exception as exc:
                    if _gone(exc):
                        sent.extend(r["id"] for r in pending[index:])
                        gone.append(workflow_id)
                        return
                    error = "".join(traceback.format_exception_only(exc)).strip()[:2000]
                    # Later signals of this workflow wait, to keep them in order.
                    failed.extend((r["id"], error) for r in pending[index:])
                    return
                finally:
                    if on_progress is not None:
                        on_progress()
                sent.append(row["id"])

    await asyncio.gather(*(signal_workflow(w, p) for w, p in by_workflow.items()))
    if gone:
        await conn.execute("DELETE FROM journey_waits WHERE workflow_id = ANY($1::text[])", gone)
    for row_id, error in failed:
        log.warning("journey signal %s not sent yet: %s", row_id, error)
    await record_attempts(conn, "journey_signals", "id", "bigint", "sent_at", sent, failed)
    return len(sent)
