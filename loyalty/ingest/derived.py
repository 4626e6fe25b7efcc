"""Derived events: what the engine writes to the inbox itself, in the causing transaction.

A derived event is inserted into ``events`` by the very transaction that caused it (the
router's batch, or a housekeeping step), with ``caused_by`` naming the causing event's
row, so it is never lost (it commits or rolls back with its cause) and never doubled (its
``event_id`` is derived deterministically from its cause, and (program, origin, event_id)
is unique). Derived events have ``origin`` ``engine``: their ids live apart from client
event ids, so a client event can never take the id of a derived event, nor the other way
round. The router then claims it like any event, and flows react to it.

* ``points_above``: the member's available balance in the program's first currency (the
  currency points are redeemed in; `loyalty.triggers.PointsAbove` names no currency; see
  `Watch`) crossed a threshold ``x`` upwards, from ≤ x before a change to > x after it,
  for each ``x`` of a ``PointsAbove`` trigger of the app's flows for that program. Every
  writer that can raise that balance derives it, the same way, in its own transaction:
  the router for each event (`derives_events`: earn rules, deposits, debt paid off), a
  journey's ``award_points`` and an adjustment line (`loyalty.ledger.watching`), and
  maturing, set-based in its statement (`points_above_sql`). Whatever lowers the balance
  (spending, withdrawals, journey removals, returns, expiry) re-arms it: the derivation
  keeps no state, it compares the balance before and after each change, so a later
  crossing has another cause, hence another id. The balance before is read with the
  member's rows locked (`balance_before`), so concurrent writers of one member each see
  the balance the other left: one crossing, one event. Ids, by cause:
  ``points_above:<x>:<causing event_id>`` for an event,
  ``points_above:<ledger key>:<x>`` for a journey step or an adjustment line (their
  idempotency key), ``points_above:mature:<currency>:<cut-off ISO 8601>:<member_id>:<x>``
  for maturing. Ledger keys start with their writer's name, never with a digit, so the
  event form and the others never meet.
* ``new_stage`` (cause ``earn``): a promotion, derived by `loyalty.tiers.promotion.promote` in
  the transaction that awarded the qualifying points,
  ``new_stage:<scheme>:<to tier>:<causing event_id>``.
* ``referral_friend_approved``: every applied ``referral_approved`` event derives one for
  the referrer (``member_id`` = ``referrer_id``, ``friend_id`` = the approving member),
  ``referral_friend_approved:<causing event_id>``.
* ``points_matured``: one per member and currency when `housekeeping.mature_due` matures
  points with ``derive_events=True`` (off by default: a run can mature millions of
  members), ``points_matured:<currency>:<cut-off ISO 8601>:<member_id>``; see
  `matured_events_sql`.

An id longer than the inbox's 128 characters keeps its prefix and replaces the rest by
its SHA-256 (hex), so that it stays deterministic.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from loyalty.app import LoyaltyApp
from loyalty.events import (
    DERIVED_TYPES,
    AnyEvent,
    MemberDeleted,
    MemberUpdated,
    Origin,
    PointsAbove,
    ReferralApproved,
    ReferralFriendApproved,
    origin_of,
)
from loyalty.flows.spec import flows_by_type
from loyalty.ingest.inbox import insert_events
from loyalty.store.db import Conn
from loyalty.triggers import PointsAbove as PointsAboveTrigger

MAX_EVENT_ID = 128

_BALANCE = """
SELECT balance FROM accounts
WHERE program = $1 AND member_id = $2 AND currency = $3 AND kind = 'available'
"""

# The member's activity row, then the account, as `ledger.spend` and an award lock them,
# so that a watched change never deadlocks with another writer of the member.
_LOCKED_BALANCE = """
WITH activity AS (
    SELECT 1 FROM member_currencies
    WHERE program = $1 AND member_id = $2 AND currency = $3 FOR UPDATE)
SELECT balance FROM accounts
WHERE program = $1 AND member_id = $2 AND currency = $3 AND kind = 'available'
  AND (SELECT count(*) FROM activity) >= 0
FOR UPDATE
"""


def derived_id(prefix: str, *parts: object) -> str:
    """``prefix:part:part…``, or ``prefix:<sha256 of the parts>`` when that is too long."""
    rest = ":".join(str(p) for p in parts)
    text = f"{prefix}:{rest}"
    if len(text) <= MAX_EVENT_ID:
        return text
    return f"{prefix}:{hashlib.sha256(rest.encode()).hexdigest()}"


def listens(app: LoyaltyApp, event_type: str, program: str) -> bool:
    """Whether a flow of the app is triggered by events of this type in this program."""
    return any(spec.applies_to(program) for spec in flows_by_type(app).get(event_type, ()))


def thresholds(app: LoyaltyApp, program: str) -> tuple[int, ...]:
    """The thresholds of the ``PointsAbove`` triggers of the program's flows, ascending."""
    return tuple(sorted({
        spec.trigger.threshold
        for spec in flows_by_type(app).get("points_above", ())
        if spec.applies_to(program) and isinstance(spec.trigger, PointsAboveTrigger)
    }))  # fmt: skip


@dataclass(frozen=True)
class Watch:
    """What ``points_above`` watches in a program: the available balance of its first
    currency, against the thresholds of its ``PointsAbove`` flows (ascending)."""

    program: str
    currency: str
    thresholds: tuple[int, ...]


def watch(app: LoyaltyApp, program: str) -> Watch | None:
    """The program's watched balance, or None when no flow watches a threshold."""
    found = app.program(program)
    watched = thresholds(app, program) if found is not None else ()
    if found is None or not watched:
        return None
    return Watch(program=program, currency=found.currencies[0], thresholds=watched)


async def available_balance(conn: Conn, program: str, member_id: str, currency: str) -> int:
    """The member's available balance (0 without an account): one indexed read."""
    value: int | None = await conn.fetchval(_BALANCE, program, member_id, currency)
    return value or 0


async def balance_before(conn: Conn, watched: Watch, member_id: str) -> int:
    """The watched balance before a change, with the member's rows locked until the
    transaction ends: no other writer changes it between this read and the change.

    Call it while holding the program's ledger lock (``loyalty.ledger.hold``), which
    every ledger writer takes before the member's rows.
    """
    value: int | None = await conn.fetchval(
        _LOCKED_BALANCE, watched.program, member_id, watched.currency
    )
    return value or 0


def points_above_id(threshold: int, cause: str, *, ledger_key: bool = False) -> str:
    """The id of a crossing of ``threshold`` caused by an event (its event_id) or by a
    ledger key (a journey step's or an adjustment line's idempotency key)."""
    if ledger_key:
        if cause[:1].isdigit():
            raise ValueError(f"a ledger key starts with its writer's name: {cause!r}")
        return derived_id("points_above", cause, threshold)
    return derived_id("points_above", threshold, cause)


def points_above(
    watched: Watch,
    member_id: str,
    *,
    before: int,
    after: int,
    occurred_at: datetime,
    event_id: Callable[[int], str],
) -> list[PointsAbove]:
    """One ``points_above`` per threshold ``x`` with ``before <= x < after``.

    Args:
        watched: the program's watched balance (`watch`).
        member_id: whose balance changed.
        before: the balance before the change (`balance_before`).
        after: the balance after it.
        occurred_at: when the change happened (the event's, the step's time).
        event_id: the id of the crossing of a threshold (`points_above_id`).
    """
    crossed = [x for x in watched.thresholds if before <= x < after]
    return [
        PointsAbove(
            event_id=event_id(x),
            member_id=member_id,
            program=watched.program,
            occurred_at=occurred_at,
            threshold=x,
            balance=after,
        )
        for x in crossed
    ]


def _may_change_balance(event: AnyEvent) -> bool:
    return event.type not in DERIVED_TYPES and not isinstance(event, MemberUpdated | MemberDeleted)


def derive(event: AnyEvent, *, before: int, after: int, watched: tuple[int, ...]) -> list[AnyEvent]:
    """The events that applying ``event`` derives, given the balance around it."""
    crossed = points_above(
        Watch(program=event.program, currency="", thresholds=watched), event.member_id,
        before=before, after=after, occurred_at=event.occurred_at,
        event_id=lambda x: points_above_id(x, event.event_id),
    )  # fmt: skip
    derived: list[AnyEvent] = list(crossed)
    if isinstance(event, ReferralApproved):
        derived.append(
            ReferralFriendApproved(
                event_id=derived_id("referral_friend_approved", event.event_id),
                member_id=event.referrer_id,
                program=event.program,
                occurred_at=event.occurred_at,
                friend_id=event.member_id,
            )
        )
    return derived


async def record(conn: Conn, cause: AnyEvent, derived: list[AnyEvent]) -> None:
    """Insert derived events, ``caused_by`` the cause's row (None if not in the inbox)."""
    if derived:
        await record_caused_by(
            conn, derived, cause_event_id=cause.event_id, cause_origin=origin_of(cause)
        )


async def record_caused_by(
    conn: Conn, derived: list[AnyEvent], *, cause_event_id: str, cause_origin: Origin = "client"
) -> None:
    """Insert derived events of one program whose cause is known by its event id.

    The cause is looked up in the id space of ``cause_origin``: a client event unless
    the cause is itself a derived event.
    """
    caused_by: int | None = await conn.fetchval(
        "SELECT id FROM events WHERE program = $1 AND origin = $2 AND event_id = $3",
        derived[0].program, cause_origin, cause_event_id,
    )  # fmt: skip
    await insert_events(conn, derived, caused_by=caused_by)


class _Processor(Protocol):
    app: LoyaltyApp


P = TypeVar("P", bound=_Processor)
Apply = Callable[[P, Conn, AnyEvent], Awaitable[str]]


def derives_events(apply: Apply[P]) -> Apply[P]:
    """Wrap ``EventProcessor.apply``: derive events from each event applied, in its
    transaction (see the module's docstring). A refused event derives nothing."""

    @functools.wraps(apply)
    async def wrapper(self: P, conn: Conn, event: AnyEvent) -> str:
        # The router's batch holds the program's ledger lock already (`balance_before`).
        watched = watch(self.app, event.program) if _may_change_balance(event) else None
        before = after = 0
        if watched is not None:
            before = await balance_before(conn, watched, event.member_id)
        result = await apply(self, conn, event)
        if watched is not None:
            after = await available_balance(conn, event.program, event.member_id, watched.currency)
        found = watched.thresholds if watched is not None else ()
        await record(conn, event, derive(event, before=before, after=after, watched=found))
        return result

    return wrapper


def matured_events_sql() -> str:
    """A CTE inserting one ``points_matured`` per row of ``moves`` (one per member) for
    `housekeeping.mature_due`: set-based, in the maturing statement.

    Reads ``moves`` (``member_id``, ``points``) and the parameters $1 program, $5
    currency, $7 the cut-off as ISO 8601 text. The payload has the shape of
    ``PointsMatured.model_dump(mode="json")``, as `loyalty.ingest.inbox.insert_events` writes.
    """
    # The id and payload must match derived_id() and the model: tests compare them.
    return f"""
derived_ids AS (
    SELECT m.member_id, m.points,
           CASE WHEN length(t.id) <= {MAX_EVENT_ID} THEN t.id
                ELSE 'points_matured:' || encode(sha256(convert_to(t.rest, 'UTF8')), 'hex')
           END AS event_id
    FROM moves AS m,
         LATERAL (SELECT $5 || ':' || $7 || ':' || m.member_id AS rest) AS r,
         LATERAL (SELECT 'points_matured:' || r.rest AS id, r.rest) AS t
),
derived AS (
    INSERT INTO events (program, origin, event_id, type, member_id, payload, occurred_at)
    SELECT $1, 'engine', d.event_id, 'points_matured', d.member_id,
           jsonb_build_object('event_id', d.event_id, 'member_id', d.member_id,
                              'program', $1::text, 'occurred_at', $7::text,
                              'attributes', '{{}}'::jsonb, 'type', 'points_matured',
                              'points', d.points, 'account', $5::text),
           $7::text::timestamptz
    FROM derived_ids AS d
    ON CONFLICT (program, origin, event_id) DO NOTHING
    RETURNING 1
),"""


def points_above_sql() -> str:
    """A CTE inserting the ``points_above`` that maturing causes, set-based, in the
    maturing statement of the watched currency (`loyalty.ledger.maturing.mature_due`).

    Reads ``moves`` (one row per member: ``member_id``, ``pocket`` the member's
    ``available`` account, ``points`` maturing into it), whose balance the statement has
    not changed yet (its legs are counted at its end), and the parameters $1 program,
    $5 currency, $7 the cut-off as ISO 8601 text, $8 the thresholds. Maturing holds the
    ledger lock exclusively: no other writer is between before and after. The id is
    ``points_above:mature:<currency>:<cut-off>:<member_id>:<x>`` (`points_above_id` of
    that cause), the payload the shape of ``PointsAbove.model_dump(mode="json")``.
    """
    # The id and payload must match points_above_id() and the model: tests compare them.
    return f"""
crossed AS (
    SELECT m.member_id, x.threshold, a.balance + m.points AS after,
           'mature:' || $5 || ':' || $7 || ':' || m.member_id || ':' || x.threshold AS rest
    FROM moves AS m
    JOIN accounts AS a ON a.id = m.pocket
    CROSS JOIN unnest($8::bigint[]) AS x(threshold)
    WHERE a.balance <= x.threshold AND x.threshold < a.balance + m.points
),
above AS (
    INSERT INTO events (program, origin, event_id, type, member_id, payload, occurred_at)
    SELECT $1, 'engine', i.event_id, 'points_above', i.member_id,
           jsonb_build_object('event_id', i.event_id, 'member_id', i.member_id,
                              'program', $1::text, 'occurred_at', $7::text,
                              'attributes', '{{}}'::jsonb, 'type', 'points_above',
                              'threshold', i.threshold, 'balance', i.after),
           $7::text::timestamptz
    FROM (SELECT c.*,
                 CASE WHEN length('points_above:' || c.rest) <= {MAX_EVENT_ID}
                      THEN 'points_above:' || c.rest
                      ELSE 'points_above:' || encode(sha256(convert_to(c.rest, 'UTF8')), 'hex')
                 END AS event_id
          FROM crossed AS c) AS i
    ORDER BY i.member_id, i.threshold
    ON CONFLICT (program, origin, event_id) DO NOTHING
    RETURNING 1
),"""
