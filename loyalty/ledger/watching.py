"""``points_above`` for a change of one member's balance made outside the router.

A journey's ``award_points`` and an adjustment line change a member's balance in a
transaction of their own. `watching` wraps that change: it takes the program's ledger
lock (shared, as every writer does), reads the watched balance with the member's rows
locked (`loyalty.ingest.derived.balance_before`), lets the change happen, and writes one
``points_above`` per threshold crossed, in the same transaction, with an id derived from
the change's ledger key (``points_above:<ledger key>:<x>``). A change repeated under the
same key moves nothing, hence crosses nothing: it derives nothing twice. The router
derives its events' crossings the same way (`loyalty.ingest.derived.derives_events`),
maturing set-based (`loyalty.ingest.derived.points_above_sql`).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime

from loyalty.app import LoyaltyApp
from loyalty.ingest import derived
from loyalty.ingest.inbox import insert_events
from loyalty.ledger import postings
from loyalty.store.db import Conn


@contextlib.asynccontextmanager
async def watching(
    conn: Conn, app: LoyaltyApp, program: str, member_id: str, *, key: str, occurred_at: datetime
) -> AsyncIterator[None]:
    """Derive the ``points_above`` crossings of the change the block makes.

    Use it inside the change's transaction, around the ledger call. Nothing is read or
    locked when no flow of the program watches a threshold.

    Args:
        conn: the connection of the change's transaction.
        app: the app, whose ``PointsAbove`` flows give the thresholds.
        program: the member's program.
        member_id: whose balance the block changes.
        key: the change's ledger key (a journey step's, an adjustment line's).
        occurred_at: when the change happens (the derived events' ``occurred_at``).
    """
    watched = derived.watch(app, program)
    if watched is None:
        yield
        return
    await postings.hold(conn, program)
    before = await derived.balance_before(conn, watched, member_id)
    yield
    after = await derived.available_balance(conn, program, member_id, watched.currency)
    crossed = derived.points_above(
        watched, member_id, before=before, after=after, occurred_at=occurred_at,
        event_id=lambda x: derived.points_above_id(x, key, ledger_key=True),
    )  # fmt: skip
    if crossed:
        await insert_events(conn, crossed)
