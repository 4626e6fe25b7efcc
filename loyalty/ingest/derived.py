"""Derived events: what the engine writes to the inbox itself, in the causing transaction.

A derived event is inserted into ``events`` by the very transaction that caused it (the
router's batch, or a housekeeping step), with ``caused_by`` naming the causing event's
row, so it is never lost (it commits or rolls back with its cause) and never doubled (its
``event_id`` is derived deterministically from its cause, and (program, origin, event_id)
is unique). Derived events have ``origin`` ``engine``: their ids live apart from client
event ids, so a client event can never take the id of a derived event, nor the other way
round. The router then claims it like any event, and flows react to it.

* ``points_above``: the member's available balance in the program's first currency (the
  currency points are redeemed in; `loyalty.triggers.PointsAbove` names no currency)
  crossed a threshold ``x`` upwards, from ≤ x before the event to > x after it, for each
  ``x`` of a ``PointsAbove`` trigger of the app's flows for that program. Falling back to
  ≤ x re-arms it: a later crossing has another cause, hence another id,
  ``points_above:<x>:<causing event_id>``. The balance is read before and after the
  event (one indexed read each), only when the program has such thresholds. Balance
  changes made by housekeeping (maturing, expiry) are not watched.
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
from typing import Protocol, TypeVar

from loyalty.app import LoyaltyApp, Program
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


async def available_balance(conn: Conn, program: str, member_id: str, currency: str) -> int:
    """The member's available balance (0 without an account): one indexed read."""
    value: int | None = await conn.fetchval(_BALANCE, program, member_id, currency)
    return value or 0


def _may_change_balance(event: AnyEvent) -> bool:
    return event.type not in DERIVED_TYPES and not isinstance(event, MemberUpdated | MemberDeleted)


def derive(event: AnyEvent, *, before: int, after: int, watched: tuple[int, ...]) -> list[AnyEvent]:
    """The events that applying ``event`` derives, given the balance around it."""
    derived: list[AnyEvent] = [
        PointsAbove(
            event_id=derived_id("points_above", x, event.event_id),
            member_id=event.member_id,
            program=event.program,
            occurred_at=event.occurred_at,
            threshold=x,
            balance=after,
        )
        for x in watched
        if before <= x < after
    ]
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
        program: Program | None = self.app.program(event.program)
        watched: tuple[int, ...] = ()
        if program is not None and _may_change_balance(event):
            watched = thresholds(self.app, event.program)
        # Thresholds apply to the first currency, the one points are redeemed in.
        currency = program.currencies[0] if program else ""
        before = after = 0
        if watched:
            before = await available_balance(conn, event.program, event.member_id, currency)
        result = await apply(self, conn, event)
        if watched:
            after = await available_balance(conn, event.program, event.member_id, currency)
        await record(conn, event, derive(event, before=before, after=after, watched=watched))
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
