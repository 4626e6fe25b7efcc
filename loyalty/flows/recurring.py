"""Recurring runs in SQL: the segment's snapshot for a scheduled time, and its progress.

A run of a recurring flow (`workflows.recurring.RecurringFlow`) takes `take_snapshot`
once per (program, flow, scheduled time): the ``recurring_runs`` row and the members then
in the segment (``segment_members``, ``in_segment``) into ``recurring_snapshots``, in one
transaction. A second call for the same key, from a retried activity, a worker that
crashed or a second run for the same time, finds the row and takes nothing, so every
attempt starts the same members, and a member who joins the segment afterwards waits for
the next scheduled time. `pending` pages through the members not yet started, in
``member_id`` order; `mark_started` records those whose journeys Temporal accepted.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import asyncpg
from pydantic import AwareDatetime, BaseModel, ConfigDict

from loyalty.store.db import Conn


class RecurringRunInput(BaseModel):
    """What a Temporal Schedule passes to a run of a recurring flow.

    ``scheduled_at`` is for runs started by hand: without it, the run takes the
    schedule's ``TemporalScheduledStartTime``, or its own start time.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str
    flow: str
    scheduled_at: AwareDatetime | None = None


class RecurringWork(BaseModel):
    """One activity's share of a run: the run's key and where to go on from."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str
    flow: str
    scheduled_at: AwareDatetime
    # The last member id handed out by the previous slice; None: from the start.
    after: str | None = None
    # How long a slice starts journeys before it returns to its workflow.
    seconds: float = 10.0


class RecurringProgress(BaseModel):
    """A run's snapshot and how far its journeys are started."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str
    flow: str
    segment: str
    scheduled_at: AwareDatetime
    members: int
    started: int
    after: str | None = None
    finished: bool = False


_RUN = """SELECT program, flow, segment, scheduled_at, members, started,
                 finished_at IS NOT NULL AS finished
          FROM recurring_runs WHERE program = $1 AND flow = $2 AND scheduled_at = $3"""


def _progress(row: asyncpg.Record | None, after: str | None = None) -> RecurringProgress:
    assert row is not None
    return RecurringProgress(**{**dict(row), "after": after})


async def take_snapshot(
    conn: Conn, program: str, flow: str, segment: str, scheduled_at: datetime
) -> RecurringProgress:
    """Snapshot the segment's members for this scheduled time, unless already taken.

    Returns the run's progress; ``segment`` is the one snapshotted, which stays the run's
    even if the flow names another segment by the time of a retry.
    """
    async with conn.transaction():
        taken = await conn.fetchval(
            """INSERT INTO recurring_runs (program, flow, scheduled_at, segment, members)
               VALUES ($1, $2, $3, $4, 0)
               ON CONFLICT DO NOTHING
               RETURNING true""",
            program, flow, scheduled_at, segment,
        )  # fmt: skip
        if taken:
            await conn.execute(
                """WITH snap AS (
                       INSERT INTO recurring_snapshots (program, flow, scheduled_at, member_id)
                       SELECT $1, $2, $3, s.member_id FROM segment_members AS s
                       WHERE s.program = $1 AND s.segment = $4 AND s.in_segment
                       RETURNING 1
                   )
                   UPDATE recurring_runs SET members = (SELECT count(*) FROM snap)
                   WHERE program = $1 AND flow = $2 AND scheduled_at = $3""",
                program, flow, scheduled_at, segment,
            )  # fmt: skip
        return _progress(await conn.fetchrow(_RUN, program, flow, scheduled_at))


async def pending(conn: Conn, work: RecurringWork, after: str | None, limit: int) -> list[str]:
    """Up to ``limit`` members of the snapshot not yet started, after ``after``, in order."""
    rows = await conn.fetch(
        """SELECT member_id FROM recurring_snapshots
           WHERE program = $1 AND flow = $2 AND scheduled_at = $3 AND NOT started
             AND ($4::text IS NULL OR member_id > $4)
           ORDER BY member_id
           LIMIT $5""",
        work.program, work.flow, work.scheduled_at, after, limit,
    )  # fmt: skip
    return [r["member_id"] for r in rows]


async def mark_started(
    conn: Conn, work: RecurringWork, member_ids: list[str], after: str | None
) -> RecurringProgress:
    """Record these members' journeys as started; returns the run's progress."""
    async with conn.transaction():
        await conn.execute(
            """WITH marked AS (
                   UPDATE recurring_snapshots SET started = true
                   WHERE program = $1 AND flow = $2 AND scheduled_at = $3
                     AND member_id = ANY($4::text[]) AND NOT started
                   RETURNING 1
               )
               UPDATE recurring_runs SET started = started + (SELECT count(*) FROM marked)
               WHERE program = $1 AND flow = $2 AND scheduled_at = $3""",
            work.program, work.flow, work.scheduled_at, member_ids,
        )  # fmt: skip
        row = await conn.fetchrow(_RUN, work.program, work.flow, work.scheduled_at)
    return _progress(row, after)


async def finish(conn: Conn, work: RecurringWork) -> RecurringProgress:
    """Mark the run finished (every member started); returns its progress."""
    await conn.execute(
        """UPDATE recurring_runs SET finished_at = coalesce(finished_at, now())
           WHERE program = $1 AND flow = $2 AND scheduled_at = $3 AND started = members""",
        work.program, work.flow, work.scheduled_at,
    )  # fmt: skip
    return _progress(await conn.fetchrow(_RUN, work.program, work.flow, work.scheduled_at))


async def prune(conn: Conn, older_than: timedelta) -> int:
    """Delete the snapshots of runs finished more than ``older_than`` ago; returns the runs.

    The run's key stays taken for Temporal's retention anyway (the journey ids carry the
    scheduled time), so a snapshot is only needed until its run has finished.
    """
    deleted: int = await conn.fetchval(
        """WITH gone AS (
               DELETE FROM recurring_runs WHERE finished_at < now() - $1::interval RETURNING 1
           )
           SELECT count(*) FROM gone""",
        older_than,
    )
    return deleted
