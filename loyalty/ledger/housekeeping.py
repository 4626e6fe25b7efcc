"""Housekeeping runs: the loop's steps, each done once per run.

The housekeeping loop (`workflows.housekeeping`) runs a program's housekeeping at one
instant, ``as_of``, as ``start_run``, ``mature_step``, ``expire_step``, ``remind_step``
(``bonus_expiring``, see `loyalty.ledger.reminders`), ``segments_step`` (the segments time
alone can change, `loyalty.segments.membership.refresh`), ``snapshot_step`` (the day's
liability, `loyalty.ledger.history`) and ``prune_step``, recorded in
``housekeeping_runs``. Each step's transaction moves the run's ``step`` on with its own
work, so a step is done once and a stopped run resumes where it was.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg

from loyalty.app import LoyaltyApp, Program
from loyalty.flows.retention import prune
from loyalty.ingest import derived
from loyalty.ledger.history import take_snapshot
from loyalty.ledger.maturing import expire_due, mature_due
from loyalty.ledger.reminders import REMINDER_CHUNK, remind_chunk, reminder_days
from loyalty.models import HousekeepingProgress
from loyalty.segments import membership as segments
from loyalty.store.db import Conn

# The columns of a housekeeping run, as `HousekeepingProgress`.
_RUN = """id, program, as_of, started_at, finished_at,
    extract(epoch FROM duration)::float8 AS duration_seconds, step, matured_lots,
    matured_points, expired_lots, expired_points, cursor_member, cursor_currency, chunks,
    reminders, segments_entered, segments_left, snapshots, pruned_starts, pruned_signals"""


def _progress(row: asyncpg.Record | None) -> HousekeepingProgress:
    assert row is not None
    return HousekeepingProgress(**dict(row))


async def start_run(conn: Conn, program: str, as_of: datetime) -> HousekeepingProgress:
    """The program's run at ``as_of``, created unless it exists (a retried activity)."""
    await conn.execute(
        """INSERT INTO housekeeping_runs (program, as_of) VALUES ($1, $2)
           ON CONFLICT (program, as_of) DO NOTHING""",
        program, as_of,
    )  # fmt: skip
    row = await conn.fetchrow(
        f"SELECT {_RUN} FROM housekeeping_runs WHERE program = $1 AND as_of = $2",
        program, as_of,
    )  # fmt: skip
    return _progress(row)


async def latest_runs(conn: Conn) -> list[HousekeepingProgress]:
    """The latest run of every program (`loyalty status`)."""
    rows = await conn.fetch(
        f"""SELECT DISTINCT ON (program) {_RUN} FROM housekeeping_runs
            ORDER BY program, started_at DESC, id DESC"""
    )
    return [_progress(r) for r in rows]


async def _locked(conn: Conn, run: HousekeepingProgress) -> HousekeepingProgress:
    """The run, read again and locked until the end of the transaction."""
    row = await conn.fetchrow(
        f"SELECT {_RUN} FROM housekeeping_runs WHERE id = $1 FOR UPDATE", run.id
    )
    return _progress(row)


async def _advance(
    conn: Conn, run: HousekeepingProgress, to: str, **counts: object
) -> HousekeepingProgress:
    """Move the run on to step ``to`` with new ``counts`` (column values)."""
    sets = "".join(f", {name} = ${n}" for n, name in enumerate(counts, start=3))
    done = ", finished_at = clock_timestamp()" if to == "done" else ""
    row = await conn.fetchrow(
        f"UPDATE housekeeping_runs SET step = $2{sets}{done} WHERE id = $1 RETURNING {_RUN}",
        run.id, to, *counts.values(),
    )  # fmt: skip
    return _progress(row)


async def mature_step(
    conn: Conn, app: LoyaltyApp, program: Program, run: HousekeepingProgress
) -> HousekeepingProgress:
    """Mature what is due at the run's ``as_of`` (`mature_due`), once per run.

    Writes ``points_matured`` events when a flow of the app listens to them, and the
    ``points_above`` crossings maturing causes when a flow watches a threshold."""
    async with conn.transaction():
        run = await _locked(conn, run)
        if run.step != "mature":
            return run
        result = await mature_due(
            conn, program.name, run.as_of,
            derive_events=derived.listens(app, "points_matured", program.name),
            watch=derived.watch(app, program.name),
        )  # fmt: skip
        return await _advance(
            conn, run, "expire", matured_lots=result.lots, matured_points=result.points
        )


async def expire_step(
    conn: Conn, program: Program, run: HousekeepingProgress
) -> HousekeepingProgress:
    """Expire what is due at the run's ``as_of`` (`expire_due`), once per run."""
    async with conn.transaction():
        run = await _locked(conn, run)
        if run.step != "expire":
            return run
        results = await expire_due(conn, program, run.as_of)
        return await _advance(
            conn, run, "remind", expired_lots=sum(r.lots for r in results),
            expired_points=sum(r.points for r in results),
        )  # fmt: skip


async def remind_step(
    conn: Conn,
    app: LoyaltyApp,
    program: Program,
    run: HousekeepingProgress,
    *,
    chunk: int = REMINDER_CHUNK,
) -> HousekeepingProgress:
    """One chunk of ``bonus_expiring`` reminders after the run's cursor
    (`loyalty.ledger.reminders`), in one transaction with the cursor; the step ends with the
    first chunk that finds fewer accounts than ``chunk``."""
    days = reminder_days(app, program.name)
    async with conn.transaction():
        run = await _locked(conn, run)
        if run.step != "remind":
            return run
        done = await remind_chunk(
            conn, program, run.as_of, days,
            after=(run.cursor_member, run.cursor_currency), chunk=chunk,
        )  # fmt: skip
        last = done.last or (run.cursor_member, run.cursor_currency)
        return await _advance(
            conn, run, "segments" if done.accounts < chunk else "remind",
            cursor_member=last[0], cursor_currency=last[1],
            chunks=run.chunks + (1 if done.accounts else 0),
            reminders=run.reminders + done.reminders,
        )  # fmt: skip


async def segments_step(
    conn: Conn, app: LoyaltyApp, program: Program, run: HousekeepingProgress
) -> HousekeepingProgress:
    """Recompute the segments that read the clock (and those naming them), deriving
    ``segment_entered``/``segment_left`` for each change, once per run."""
    async with conn.transaction():
        run = await _locked(conn, run)
        if run.step != "segments":
            return run
        done = await segments.refresh(conn, app, program.name)
        return await _advance(
            conn, run, "snapshot", segments_entered=sum(r.entered for r in done),
            segments_left=sum(r.left for r in done),
        )  # fmt: skip


async def snapshot_step(
    conn: Conn, program: Program, run: HousekeepingProgress
) -> HousekeepingProgress:
    """Record the program's liability on the UTC day of the run's ``as_of``
    (`loyalty.ledger.history.take_snapshot`: an upsert, so a repeated run of the same day
    rewrites that day's rows), once per run."""
    async with conn.transaction():
        run = await _locked(conn, run)
        if run.step != "snapshot":
            return run
        written = await take_snapshot(conn, program.name, run.as_of)
        return await _advance(conn, run, "prune", snapshots=written)


async def prune_step(
    conn: Conn, run: HousekeepingProgress, *, older_than: timedelta
) -> HousekeepingProgress:
    """Prune the journey outboxes (`loyalty.flows.retention.prune`; every program's rows, in
    chunks that commit on their own), then finish the run."""
    run = await start_run(conn, run.program, run.as_of)
    if run.step != "prune":
        return run
    pruned = await prune(conn, older_than=older_than)
    async with conn.transaction():
        run = await _locked(conn, run)
        if run.step != "prune":
            return run
        return await _advance(
            conn, run, "done", pruned_starts=pruned.starts, pruned_signals=pruned.signals
        )
