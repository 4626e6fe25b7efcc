"""The router's fast path: a batch's events replayed in memory, then written set-based.

The router (`loyalty.router.processing`) used to apply most events one at a time,
several statements each. The fast path applies a batch's events in three steps, a few
dozen statements for the whole batch whatever its size:

1. `loyalty.router.state.load`: lock and read the members' accounts, lots, orders,
   tiers, qualifying points and caps (about a dozen statements);
2. `loyalty.router.replay.Replay`: apply every event in the batch's order in memory,
   with exactly the effects and refusals of the one-by-one path (a refused event is
   ``rejected`` with its reason, and the batch goes on);
3. `loyalty.router.writes.write`: write what changed (about a dozen statements).

Every event type takes it: purchases (with points paid or not), returns, deposits and
withdrawals, activities, referrals, profile updates and erasure, derived events; in
programs with tiers and with ``PointsAbove`` flows alike. The rows written are those of
the one-by-one path, table for table (`tests/test_bulk.py` applies random events both
ways and compares them).

What still goes one at a time (`bulk_members` leaves the member out), all of the
member's events of the batch, in order:

* an inbox row that does not parse as an event, or that names another program or
  member than its columns (the one-by-one path reports it);
* the whole batch, when the fast path fails for another reason than a refusal (the
  database changed under it: a ledger key or an order id taken meanwhile, lots out of
  step with balances): the batch is rolled back and redone carefully, one event per
  savepoint, as any failing batch is.

The caller holds the program's shared ledger lock (the router's batch takes it first).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from loyalty.app import LoyaltyApp
from loyalty.events import AnyEvent, Origin, origin_of
from loyalty.router import state as state_module
from loyalty.router.replay import Outcome, Replay
from loyalty.router.writes import write
from loyalty.store.db import Conn


@dataclass(frozen=True)
class Award:
    """One earn rule's award the fast path wrote."""

    program: str
    member_id: str
    currency: str
    points: int
    occurred_at: datetime
    event_id: str
    rule: str
    qualifying: bool
    order_id: str | None


@dataclass
class BulkResult:
    """What `apply_bulk` did.

    Attributes:
        outcomes: per (origin, event id): what applying the event came to (a client
            event and a derived one may share an id).
        awards: the earn rules' awards written, in event and rule order.
        fallback: members handed back to the one-by-one path (none today: kept for the
            callers that report it).
        derived: (inbox row id, event, outcome) of the derived events inserted already
            applied, in order (`loyalty.router.writes.write`).
    """

    outcomes: dict[tuple[Origin, str], Outcome] = field(default_factory=dict)
    derived: list[tuple[int, AnyEvent, Outcome]] = field(default_factory=list)
    awards: list[Award] = field(default_factory=list)
    fallback: set[str] = field(default_factory=set)


def bulk_members(
    app: LoyaltyApp, program: str, events: Iterable[tuple[str, AnyEvent | None]]
) -> set[str]:
    """The members whose events of the batch the fast path takes (module docstring).

    Args:
        app: the app, for the program's definition.
        program: the batch's program.
        events: (member id, event) of every claimed row, None for a row that does not
            parse (its member goes one by one: the per-event path reports the error).
    """
    if app.program(program) is None:
        return set()
    members: set[str] = set()
    excluded: set[str] = set()
    for member_id, event in events:
        fits = event is not None and event.program == program and event.member_id == member_id
        (members if fits else excluded).add(member_id)
    return members - excluded


async def apply_bulk(
    conn: Conn, app: LoyaltyApp, program: str, events: Sequence[tuple[int, AnyEvent]]
) -> BulkResult:
    """Apply the events (inbox row id, event) of the members `bulk_members` chose.

    Runs in the caller's batch transaction, which holds the program's shared ledger
    lock; the events keep the batch's order.

    Raises:
        ValueError: an event of another program.
        BatchRaced: another writer changed what the replay counted on; redo the batch.
    """
    result = BulkResult()
    found = app.program(program)
    if found is None or not events:
        return result
    if any(event.program != program for _, event in events):
        raise ValueError(f"events of another program than {program} in its batch")
    state = await state_module.load(conn, found, events)
    replay = Replay(app=app, state=state)
    for row_id, event in events:
        result.outcomes[(origin_of(event), event.event_id)] = replay.apply(row_id, event)
    result.derived = await write(conn, replay)
    result.awards = [
        Award(program=program, member_id=a.member_id, currency=a.currency, points=a.points,
              occurred_at=a.occurred_at, event_id=a.event_id, rule=a.rule,
              qualifying=a.qualifying, order_id=a.order_id)
        for a in replay.awards
    ]  # fmt: skip
    return result
