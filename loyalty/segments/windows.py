"""Rolling windows' tier measures kept per member for the segments' full recomputes.

A full recompute of a segment on ``qualifying_points()`` or ``points_to_next_tier()``
over a rolling window reads each member's sum from ``qualifying_window_totals``
(migration 0025, which states the invariant) instead of summing the program's
qualifying points: the sum is kept by a trigger as rows are added, with the span of time
over which it is the member's measure. Time alone ends that span (the member's earliest
row leaves the window, or a row dated ahead enters it); where it has ended the
recompute sums that member's rows itself (``qualifying_window_sum``), and `refresh`,
which housekeeping runs after its recompute of timed segments, writes the measure again
for those members, so that few are summed at the next recompute.

`keep` (part of `loyalty.segments.membership.install`) keeps the windows the installed
segments read: a new one is filled from ``qualifying_points``, one no segment reads any
more is dropped with its sums. Fill and refresh hold the program's ledger lock
exclusively, as every writer of ``qualifying_points`` holds it shared.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

from loyalty.app import LoyaltyApp
from loyalty.ledger.postings import LEDGER_LOCK
from loyalty.segments.spec import Segment
from loyalty.store.db import Conn

# A window: (currency, span).
Window = tuple[str, timedelta]


def windows_read(app: LoyaltyApp, program: str, segments: Iterable[Segment]) -> set[Window]:
    """The rolling windows the full recomputes of ``segments`` read."""
    shape = app.programs[program]
    return {w for segment in segments for w in segment.compile(shape).windows}


async def lock_program(conn: Conn, program: str) -> None:
    """The program's ledger lock, exclusively, until the transaction ends (again: no-op)."""
    await conn.execute(f"SELECT pg_advisory_xact_lock({LEDGER_LOCK.format(program='$1')})", program)


async def keep(conn: Conn, app: LoyaltyApp) -> list[tuple[str, str, timedelta]]:
    """Keep exactly the windows the app's segments read, in its programs: fill the new
    ones, drop the others. Returns the windows filled. Runs in the caller's transaction;
    takes the ledger lock of each program whose windows change."""
    wanted = {
        (program, currency, span)
        for program, segments in app.segments.items()
        if program in app.programs
        for currency, span in windows_read(app, program, segments.values())
    }
    rows = await conn.fetch(
        "SELECT program, currency, span FROM qualifying_windows WHERE program = ANY($1::text[])",
        list(app.programs),
    )
    have = {(r["program"], r["currency"], r["span"]) for r in rows}
    new = sorted(wanted - have)
    gone = sorted(have - wanted)
    for program in sorted({p for p, _, _ in new + gone}):
        await lock_program(conn, program)
    for program, currency, span in gone:
        await conn.execute(
            "DELETE FROM qualifying_windows WHERE program = $1 AND currency = $2 AND span = $3",
            program,
            currency,
            span,
        )
    for program, currency, span in new:
        await conn.execute(
            "INSERT INTO qualifying_windows (program, currency, span) VALUES ($1, $2, $3)",
            program,
            currency,
            span,
        )
        await _fill(conn, program, currency, span)
    if new:
        # Statistics of the filled sums for the recompute that reads them next (they
        # were those of an empty table).
        await conn.execute("ANALYZE qualifying_window_totals")
    return new


async def _fill(conn: Conn, program: str, currency: str, span: timedelta) -> None:
    """Every member's measure at now(), for those with a row earned after now() - span."""
    await conn.execute(
        f"""INSERT INTO qualifying_window_totals (program, currency, span, member_id, points,
                                                 valid_from, valid_until)
            SELECT $1, $2, $3, q.member_id, {_MEASURED}
            FROM qualifying_points AS q
            WHERE q.program = $1 AND q.currency = $2 AND q.earned_at > now() - $3::interval
            GROUP BY q.member_id""",
        program,
        currency,
        span,
    )


# A member's measure at now() over the rows q of the window (those earned after now() -
# span): points, valid from now until the earliest leaves the window or one dated ahead
# enters it.
_MEASURED = """coalesce(sum(q.points) FILTER (WHERE q.earned_at <= now()), 0)::bigint, now(),
       coalesce(least(min(q.earned_at) FILTER (WHERE q.earned_at <= now()) + $3,
                      min(q.earned_at) FILTER (WHERE q.earned_at > now())), 'infinity')"""


async def refill_later(conn: Conn, program: str, windows: Iterable[Window]) -> None:
    """Fill again, as of now(), the windows of ``program`` filled after now() (by a
    transaction that committed while this one waited for the ledger lock): a member
    without a kept sum had no row in the window at the fill, which says nothing of an
    earlier now(). Takes the program's ledger lock when there is one."""
    for currency, span in sorted(windows):
        later = await conn.fetchval(
            """SELECT filled_at > now() FROM qualifying_windows
               WHERE program = $1 AND currency = $2 AND span = $3""",
            program,
            currency,
            span,
        )
        if not later:
            continue
        await lock_program(conn, program)
        await conn.execute(
            "DELETE FROM qualifying_window_totals WHERE program = $1 AND currency = $2 "
            "AND span = $3",
            program,
            currency,
            span,
        )
        await conn.execute(
            "UPDATE qualifying_windows SET filled_at = now() WHERE program = $1 "
            "AND currency = $2 AND span = $3",
            program,
            currency,
            span,
        )
        await _fill(conn, program, currency, span)


async def refresh(conn: Conn, program: str, windows: Iterable[Window]) -> int:
    """Write the measure at now() for every member of ``program`` whose kept sum's span
    has ended (in the windows given); returns how many. Takes the program's ledger lock.

    (A sum valid only from after now(), written by a transaction that began after this
    one, holds once its span begins; a recompute sums that member's rows until then.)
    """
    refreshed = 0
    for currency, span in sorted(windows):
        await lock_program(conn, program)
        # The members first, found by their index (migration 0025), each summed by its
        # own index lookups; then their rows updated by key.
        status = await conn.execute(
            f"""WITH s AS MATERIALIZED (
                    SELECT w.member_id, x.points, x.valid_from, x.valid_until
                    FROM qualifying_window_totals AS w
                    CROSS JOIN LATERAL (
                        SELECT {_MEASURED}
                        FROM qualifying_points AS q
                        WHERE q.program = w.program AND q.member_id = w.member_id
                          AND q.currency = w.currency AND q.earned_at > now() - $3::interval
                    ) AS x (points, valid_from, valid_until)
                    WHERE w.program = $1 AND w.currency = $2 AND w.span = $3
                      AND w.valid_until <= now()
                )
                UPDATE qualifying_window_totals AS t
                SET points = s.points, valid_from = s.valid_from, valid_until = s.valid_until
                FROM s
                WHERE t.program = $1 AND t.currency = $2 AND t.span = $3
                  AND t.member_id = s.member_id""",
            program,
            currency,
            span,
        )
        refreshed += int(status.split()[-1])
    await refill_later(conn, program, windows)
    return refreshed
