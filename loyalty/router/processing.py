"""Applying inbox events, one batch per transaction.

`process_batch` is what the router's activity runs: it takes the partition's advisory
lock (so that a retried attempt waits for a stale one instead of overtaking it, which
keeps each member's events in order), claims the oldest pending events, applies each in
a savepoint and records every outcome in one statement, all in one transaction.

Outcomes: ``processed`` (``applied`` or ``no_effect``), ``rejected`` (a business
refusal such as ``insufficient_points``: final, never retried), ``pending`` again with a
back-off after an unexpected error, ``dead`` after the last allowed attempt.
"""

from __future__ import annotations

import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg

from loyalty import ledger
from loyalty.app import LoyaltyApp
from loyalty.errors import LedgerRefusal
from loyalty.events import (
    Activity,
    AnyEvent,
    BaseEvent,
    MemberDeleted,
    MemberUpdated,
    PointsDeposit,
    PointsWithdrawal,
    Purchase,
    Referral,
    ReferralApproved,
    Return,
    origin_of,
    stored_event,
)
from loyalty.flows.outbox import record_journeys
from loyalty.flows.signals import record_signals
from loyalty.ingest import derived
from loyalty.ingest.inbox import PROCESSED_CHANNEL, claim_batch, record_outcomes
from loyalty.ledger.returns import claw_back, record_order
from loyalty.models import RouterProgress
from loyalty.router import bulk, earn, totals
from loyalty.router.erasure import erase_copies
from loyalty.router.replay import Outcome, check_account
from loyalty.store.db import Conn

# Errors that say "try the whole batch again", not "this event is bad".
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.InterfaceError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError,
    asyncpg.CannotConnectNowError,
    OSError,
)


def retry_delay(attempt: int) -> timedelta:
    """Back-off before the next attempt of a failing event: 1 s, 2 s, 4 s … at most 5 min."""
    return timedelta(seconds=min(300, 2 ** max(0, attempt - 1)))


class EventProcessor:
    """Applies one event inside the caller's transaction."""

    def __init__(self, app: LoyaltyApp) -> None:
        self.app = app

    @derived.derives_events
    async def apply(self, conn: Conn, event: AnyEvent) -> str:
        """Apply the event; returns ``applied`` or ``no_effect``.

        In the same transaction, writes the events it derives to the inbox
        (`loyalty.ingest.derived`).

        Raises:
            LedgerRefusal: the event is refused for a business reason.
        """
        program = self.app.program(event.program)
        if program is None:
            raise LedgerRefusal(
                "unknown_program", f"program {event.program!r} is not defined by the app"
            )
        check_account(program, event)
        key = f"event:{event.event_id}"
        if isinstance(event, PointsDeposit):
            available_at = event.occurred_at
            if event.kind == "earned":
                available_at = event.occurred_at + program.earned_waiting_period
            await ledger.award(
                conn, program=event.program, member_id=event.member_id, points=event.points,
                kind=event.kind, currency=event.account, reason=event.reason, source=key,
                key=key, occurred_at=event.occurred_at, available_at=available_at,
                expires_at=program.lot_expiry(event.account, event.occurred_at),
            )  # fmt: skip
            return "applied"
        if isinstance(event, PointsWithdrawal):
            await ledger.spend(
                conn, program=event.program, member_id=event.member_id, points=event.points,
                kind=event.kind, currency=event.account, reason=event.reason, source=key,
                key=key, occurred_at=event.occurred_at,
            )  # fmt: skip
            return "applied"
        if isinstance(event, Purchase):
            await record_order(
                conn, event.program, event.order_id, event.member_id, event.amount,
                event.currency,
            )  # fmt: skip
            if event.points_redeemed:
                # Points pay in the program's first currency, the redeemable one.
                await ledger.spend(
                    conn, program=event.program, member_id=event.member_id,
                    points=event.points_redeemed, kind="available",
                    currency=program.currencies[0], reason=f"paid on order {event.order_id}",
                    source=key, key=key, occurred_at=event.occurred_at,
                )  # fmt: skip
            await earn.apply_rules(conn, program, event)
            return "applied"
        if isinstance(event, Activity | Referral | ReferralApproved):
            awarded = await earn.apply_rules(conn, program, event)
            return "applied" if awarded else "no_effect"
        if isinstance(event, Return):
            await claw_back(
                conn, program, member_id=event.member_id, order_id=event.order_id,
                amount=event.amount, key=key, source=key, occurred_at=event.occurred_at,
            )  # fmt: skip
            return "applied"
        if isinstance(event, MemberUpdated):
            await conn.execute(
                """INSERT INTO members (program, member_id, profile) VALUES ($1, $2, $3)
                   ON CONFLICT (program, member_id) DO UPDATE
                   SET profile = members.profile || EXCLUDED.profile, erased_at = NULL,
                       updated_at = now()""",
                event.program, event.member_id, event.profile,
            )  # fmt: skip
            return "applied"
        if isinstance(event, MemberDeleted):
            await conn.execute(
                """UPDATE members SET profile = '{}'::jsonb, erased_at = now(), updated_at = now()
                   WHERE program = $1 AND member_id = $2""",
                event.program, event.member_id,
            )  # fmt: skip
            return "applied"
        return "no_effect"


@dataclass
class BatchDetail:
    """What committed batches did, for the metrics (`loyalty.metrics.counters`): filled
    only once a batch committed, so a batch rolled back or redone counts once.

    Attributes:
        outcomes: finished events by (type, outcome): applied, no_effect, rejected, dead.
        careful: batches redone one event at a time after their first pass failed.
    """

    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    careful: int = 0


class _RedoCarefully(Exception):
    """An event failed in a batch applied without savepoints: redo it with them."""


async def process_batch(
    conn: Conn,
    processor: EventProcessor,
    *,
    program: str,
    partitions: int,
    partition: int,
    batch_size: int,
    max_attempts: int,
    task_queue: str,
    careful: bool = False,
    use_bulk: bool = True,
    detail: BatchDetail | None = None,
) -> RouterProgress:
    """Claim and apply one batch in one transaction; returns what happened.

    Every processed event (any outcome) is matched against the app's flows, and the
    journeys it triggers are recorded in ``journey_starts`` in the same transaction
    (`loyalty.flows.outbox`); ``task_queue`` goes into their ids. The signals it owes to
    journeys waiting for it are recorded in ``journey_signals`` (`loyalty.flows.signals`). The
    caller starts the journeys and sends the signals after commit.

    The batch is first applied without a savepoint per event (two round trips fewer per
    event). If any event raises, that transaction is rolled back and the batch is claimed
    again and applied carefully, each event in its own savepoint, so that the failure is
    isolated and recorded.

    In the first pass, the members whose events are all simple (`loyalty.router.bulk`) have
    them applied set-based, in a few statements for the whole batch, before the others'
    events are applied one by one; ``use_bulk=False`` applies every event one by one (to
    compare the two). The careful pass is always one by one. ``detail``, when given, gets
    the committed batch's outcomes by event type.
    """
    try:
        async with conn.transaction():
            # The partition's own lock, then the program's shared ledger lock (see
            # ledger.hold), in one round trip and before any other statement.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0)),"
                f" pg_advisory_xact_lock_shared({ledger.LEDGER_LOCK.format(program='$2')})",
                f"loyalty-router:{program}:{partition}/{partitions}", program,
            )  # fmt: skip
            rows = await claim_batch(conn, program, partitions, partition, batch_size)
            if not rows:
                return RouterProgress()
            outcomes: list[dict[str, Any]] = []
            counts = {"applied": 0, "no_effect": 0, "rejected": 0, "failed_attempts": 0, "dead": 0}
            # Finished events by (type, outcome), for the metrics.
            kinds: Counter[tuple[str, str]] = Counter()
            # Members whose event failed in this batch: their later events wait, unattempted,
            # so that a member's events are never applied out of order.
            held: set[str] = set()
            # (inbox row id, event) of every processed event: the journeys' triggers.
            processed: list[tuple[int, BaseEvent]] = []
            # Outcomes of the events applied on the fast path, by inbox row id.
            in_bulk: dict[int, tuple[AnyEvent, Outcome]] = {}
            # Derived events the fast path inserted already applied: (row id, event, outcome).
            derived_done: list[tuple[int, AnyEvent, Outcome]] = []
            if not careful and use_bulk:
                in_bulk, derived_done = await _apply_bulk(conn, processor.app, program, rows)
            counts["fast_path"] = len(in_bulk) + len(derived_done)
            counts["one_by_one"] = len(rows) - len(in_bulk)
            for row in rows:
                outcome: dict[str, Any] = {"id": row["id"], "attempts": row["attempts"] + 1}
                if row["member_id"] in held:
                    outcome.update(status="pending", attempts=row["attempts"])
                elif row["id"] in in_bulk:
                    event, fast = in_bulk[row["id"]]
                    outcome.update(status=fast.status, outcome=fast.outcome, detail=fast.detail)
                elif not careful:
                    try:
                        event = stored_event(row["payload"])
                        result = await processor.apply(conn, event)
                    except TRANSIENT_ERRORS:
                        raise
                    except Exception as exc:
                        raise _RedoCarefully from exc
                    outcome.update(status="processed", outcome=result)
                else:
                    try:
                        async with conn.transaction():
                            event = stored_event(row["payload"])
                            result = await processor.apply(conn, event)
                    except LedgerRefusal as refusal:
                        outcome.update(status="rejected", outcome=refusal.code, detail=str(refusal))
                    except TRANSIENT_ERRORS:
                        raise
                    except Exception as exc:
                        error = "".join(traceback.format_exception_only(exc)).strip()[:2000]
                        outcome.update(last_error=error)
                        if outcome["attempts"] >= max_attempts:
                            outcome.update(status="dead", outcome="failed")
                        else:
                            outcome.update(
                                status="pending", retry_after=retry_delay(outcome["attempts"])
                            )
                            held.add(row["member_id"])
                    else:
                        outcome.update(status="processed", outcome=result)
                outcomes.append(outcome)
                if outcome["status"] == "processed":
                    processed.append((row["id"], event))
                    counts[outcome["outcome"]] += 1
                    kinds[row["type"], outcome["outcome"]] += 1
                elif outcome["status"] == "rejected":
                    counts["rejected"] += 1
                    kinds[row["type"], "rejected"] += 1
                elif outcome["status"] == "dead":
                    counts["dead"] += 1
                    kinds[row["type"], "dead"] += 1
                elif "last_error" in outcome:
                    counts["failed_attempts"] += 1
            for row_id, event, fast in derived_done:
                processed.append((row_id, event))
                counts[fast.outcome] += 1
                kinds[event.type, fast.outcome] += 1
            # A member is enrolled by the first event the engine processes for them; a refused
            # one (a withdrawal for an unknown member) enrols nobody. The fast path enrolled
            # its own members (`loyalty.router.writes`).
            members = {row["member_id"] for row, o in zip(rows, outcomes, strict=True)
                       if o["status"] == "processed" and row["id"] not in in_bulk}  # fmt: skip
            if members:
                await conn.execute(
                    """INSERT INTO members (program, member_id)
                       SELECT $1, m FROM unnest($2::text[]) AS m
                       ON CONFLICT DO NOTHING""",
                    program, sorted(members),
                )  # fmt: skip
            await record_outcomes(conn, outcomes)
            await record_journeys(conn, processor.app, processed, task_queue=task_queue)
            await record_signals(conn, processed)
            # After the outboxes: they hold copies of the batch's own profile updates.
            await erase_copies(conn, program, [
                (event.member_id, row_id) for row_id, event in processed
                if isinstance(event, MemberDeleted)
            ])  # fmt: skip
            done = RouterProgress(batches=1, events=len(rows) + len(derived_done), **counts)
            await totals.add(conn, program, partitions, partition, done)
            await conn.execute("SELECT pg_notify($1, $2)", PROCESSED_CHANNEL, program)
    except _RedoCarefully:
        return await process_batch(
            conn, processor, program=program, partitions=partitions, partition=partition,
            batch_size=batch_size, max_attempts=max_attempts, task_queue=task_queue,
            careful=True, detail=detail,
        )  # fmt: skip
    if detail is not None:  # committed
        detail.outcomes.update(kinds)
        detail.careful += careful
    return done


async def _apply_bulk(
    conn: Conn, app: LoyaltyApp, program: str, rows: list[asyncpg.Record]
) -> tuple[dict[int, tuple[AnyEvent, Outcome]], list[tuple[int, AnyEvent, Outcome]]]:
    """Apply the events of the batch's fast-path members (`loyalty.router.bulk`) first.

    Returns (event, outcome) by inbox row id for the events applied, refused ones
    included, and the derived events applied with them (`BulkResult.derived`); the other
    members keep all their events for the per-event path. Members
    are disjoint between the two paths, so applying the fast part first keeps every
    member's order.

    Raises:
        _RedoCarefully: the fast part failed for another reason than a transient error.
    """
    parsed: dict[int, AnyEvent | None] = {}
    for row in rows:
        try:
            parsed[row["id"]] = stored_event(row["payload"])
        except ValueError:
            parsed[row["id"]] = None  # the per-event path reports it
    members = bulk.bulk_members(app, program, ((r["member_id"], parsed[r["id"]]) for r in rows))
    chosen = [
        (r["id"], event) for r in rows
        if r["member_id"] in members and (event := parsed[r["id"]]) is not None
    ]  # fmt: skip
    if not chosen:
        return {}, []
    try:
        done = await bulk.apply_bulk(conn, app, program, chosen)
    except TRANSIENT_ERRORS:
        raise
    except Exception as exc:
        raise _RedoCarefully from exc
    applied = {
        row_id: (event, done.outcomes[(origin_of(event), event.event_id)])
        for row_id, event in chosen
        if event.member_id not in done.fallback
    }
    return applied, done.derived
