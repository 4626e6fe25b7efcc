"""The journey outbox: record journeys in the batch transaction, start them after commit.

`record_journeys` runs inside `process_batch`: for every event the batch processed it
matches the app's flows and inserts one ``journey_starts`` row per match, keyed by the
deterministic journey id (`loyalty.flows.journey_id`), so a trigger delivered twice and a
once-per-member flow triggered twice record one row. `start_journeys` runs after commit,
in the router partition that processed the trigger: it starts every row of the partition
whose ``started_at`` is still NULL (new ones, and leftovers of a crash between commit and
start) and marks them started. Starting twice is harmless: journeys are started with
`JOURNEY_ID_REUSE_POLICY`, and "already started" counts as started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError

from loyalty.app import LoyaltyApp
from loyalty.events import BaseEvent, origin_of, stored_event
from loyalty.flows.spec import (
    JOURNEY_ID_REUSE_POLICY,
    FlowSpec,
    flows_by_type,
    journey_id,
    workflow_name,
)
from loyalty.store.db import Conn
from loyalty.temporal import FLOW, MEMBER_ID, PROGRAM, TRIGGER

log = logging.getLogger("loyalty.flows.outbox")

# Starts in flight at once per router session, and rows taken per round.
START_CONCURRENCY = 32
START_LIMIT = 500
# A journey start that waits longer than this is given up for this round.
START_TIMEOUT = timedelta(seconds=5)


async def record_attempts(
    conn: Conn,
    table: str,
    key: str,
    key_type: str,
    done_column: str,
    done: Sequence[Any],
    failed: Sequence[tuple[Any, str]],
) -> None:
    """Mark an outbox's rows done (``done_column`` = now), or count a failed attempt.

    ``table``, ``key``, ``key_type`` and ``done_column`` are names from this package,
    never input.
    """
    if done:
        await conn.execute(
            f"""UPDATE {table} SET {done_column} = now(), attempts = attempts + 1
                WHERE {key} = ANY($1::{key_type}[])""",
            list(done),
        )
    if failed:
        await conn.execute(
            f"""UPDATE {table} AS o SET attempts = o.attempts + 1, last_error = f.error
                FROM unnest($1::{key_type}[], $2::text[]) AS f(key, error)
                WHERE o.{key} = f.key""",
            [k for k, _ in failed],
            [e for _, e in failed],
        )


def spec_named(app: LoyaltyApp, name: str) -> FlowSpec | None:
    """The app's flow of that name, if any."""
    for specs in flows_by_type(app).values():
        for spec in specs:
            if spec.name == name:
                return spec
    return None


async def record_journeys(
    conn: Conn,
    app: LoyaltyApp,
    processed: Sequence[tuple[int, BaseEvent]],
    *,
    task_queue: str,
) -> int:
    """Insert the journeys the processed events trigger; returns the rows new here.

    ``processed`` holds (inbox row id, event) of every event the batch processed, in
    order. Runs in the batch transaction, so the journeys commit with their triggers.
    """
    index = flows_by_type(app)
    if not index:
        return 0
    rows: list[tuple[str, str, str, str, int, str, str, dict[str, Any]]] = []
    for row_id, event in processed:
        event_type = str(getattr(event, "type", ""))
        for spec in index.get(event_type, ()):
            if not spec.applies_to(event.program) or not spec.trigger.matches(event):
                continue
            workflow_id = journey_id(
                spec, event.member_id, event.event_id, event.occurred_at,
                program=event.program, task_queue=task_queue, origin=origin_of(event),
            )  # fmt: skip
            rows.append((
                workflow_id, event.program, spec.name, event.member_id, row_id,
                event.event_id, event_type, event.model_dump(mode="json"),
            ))  # fmt: skip
    if not rows:
        return 0
    inserted = await conn.fetch(
        """INSERT INTO journey_starts
               (workflow_id, program, flow, member_id, event_row_id, event_id, event_type,
                payload)
           SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[],
                                $6::text[], $7::text[], $8::jsonb[])
           ON CONFLICT (workflow_id) DO NOTHING
           RETURNING workflow_id""",
        *[list(column) for column in zip(*rows, strict=True)],
    )  # fmt: skip
    return len(inserted)


def summary(spec: FlowSpec, event: BaseEvent) -> str:
    """The journey's one-line summary in the Temporal Web UI (no personal data)."""
    return (
        f"Journey {spec.name} of member {event.member_id} in program {event.program}, "
        f"triggered by {getattr(event, 'type', '?')} {event.event_id}"
    )


async def _start(
    client: Client, spec: FlowSpec, workflow_id: str, event: BaseEvent, task_queue: str
) -> None:
    name = workflow_name(spec.cls)
    assert name is not None
    # Already started: by this very journey (a retried start) or by the earlier journey
    # of a once-per-member flow; either way it is started.
    with contextlib.suppress(WorkflowAlreadyStartedError):
        await client.start_workflow(
            name,
            event,
            id=workflow_id,
            task_queue=task_queue,
            id_reuse_policy=JOURNEY_ID_REUSE_POLICY,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(MEMBER_ID, event.member_id),
                    SearchAttributePair(FLOW, spec.name),
                    SearchAttributePair(PROGRAM, event.program),
                    SearchAttributePair(TRIGGER, str(getattr(event, "type", ""))),
                ]
            ),
            static_summary=summary(spec, event),
            static_details=(
                f"Flow **{spec.name}**: trigger `{spec.trigger}`, entry {spec.entry}, "
                f"programs {spec.describe_programs()}.\n\nWorkflow id `{workflow_id}`."
            ),
        )


async def start_journeys(
    conn: Conn,
    client: Client,
    app: LoyaltyApp,
    *,
    program: str,
    partitions: int,
    partition: int,
    task_queue: str,
    on_progress: Callable[[], None] | None = None,
) -> int:
    """Start the partition's recorded journeys not yet started; returns how many started.

    Failed starts keep ``started_at`` NULL, count an attempt and keep the error; the next
    call tries them again. ``on_progress`` is called after each start attempt (the router
    heartbeats there).
    """
    rows = await conn.fetch(
        """SELECT workflow_id, flow, payload FROM journey_starts
           WHERE program = $1 AND started_at IS NULL AND mod(member_hash, $2) = $3
           ORDER BY created_at, workflow_id
           LIMIT $4""",
        program, partitions, partition, START_LIMIT,
    )  # fmt: skip
    if not rows:
        return 0
    gate = asyncio.Semaphore(START_CONCURRENCY)

    async def start_one(row: Any) -> str | None:
        spec = spec_named(app, row["flow"])
        if spec is None:
            return f"flow {row['flow']!r} is not defined by the app"
        event = stored_event(row["payload"])
        async with gate:
            try:
                async with asyncio.timeout(START_TIMEOUT.total_seconds()):
                    await _start(client, spec, row["workflow_id"], event, task_queue)
            except Exception as exc:
                return "".join(traceback.format_exception_only(exc)).strip()[:2000]
            finally:
                if on_progress is not None:
                    on_progress()
        return None

    errors = await asyncio.gather(*(start_one(row) for row in rows))
    started = [r["workflow_id"] for r, e in zip(rows, errors, strict=True) if e is None]
    failed = [(r["workflow_id"], e) for r, e in zip(rows, errors, strict=True) if e is not None]
    for workflow_id, error in failed:
        log.warning("journey %s not started yet: %s", workflow_id, error)
    await record_attempts(
        conn, "journey_starts", "workflow_id", "text", "started_at", started, failed
    )
    return len(started)
