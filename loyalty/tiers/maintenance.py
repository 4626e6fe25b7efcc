"""Tier maintenance: review every member of a scheme, set-based, one chunk at a time.

A run measures every member of the program at one instant, ``as_of`` (fixed when the
run starts), in chunks of members in member-id order (keyset pagination), one chunk per
transaction. For each member:

* the measure reaches a higher tier than theirs (points earned before the scheme
  existed, or a promotion missed): promoted, to the highest tier reached;
* the measure meets their tier's retain threshold: they stay, and any grace ends;
* otherwise they are below it: the grace period starts at this run (``below_since``),
  and a run at or after ``below_since + grace_period`` demotes them, to the highest tier
  whose retain threshold is still met (``highest_met``) or one tier down (``one_down``).
  With no grace period, the first run below demotes.

Every change derives a ``new_stage`` event (cause ``maintenance``) into the inbox in the
chunk's transaction, id ``new_stage:<scheme>:<to tier>:maintenance:<as_of>:<member>``,
so journeys start for it and a chunk done twice derives nothing twice.

Safe against concurrent earning: a chunk's transaction takes the program's ledger lock
exclusively (`loyalty.ledger.hold` is the shared side every writer holds), so it
measures committed, quiescent data: no award is half-way. The measure is the window
ending at ``as_of`` plus every qualifying point earned after ``as_of`` that has committed
by the chunk's time. A member promoted while the run goes on (an award measured later
than ``as_of``) therefore keeps the tier: the points that promoted them are counted, and
a window that starts earlier holds at least what the promotion measured. An award that
commits after the chunk promotes as usual (`loyalty.tiers.promotion.promote`) from the
tier the chunk left. Either way a member ends the run in the tier their points support,
with one ``new_stage`` per real change.

A schedule anchored on join dates (`loyalty.tiers.Schedule`) reviews, in each run, only
the members whose join-date anniversary (``members.created_at``) fell after the previous
finished run and up to ``as_of``; the first run reviews everyone.

The run's row in ``maintenance_runs`` carries the cursor and the counts; each chunk
moves them in its own transaction, so a run that stopped (a worker killed, an activity
retried) resumes after the last committed chunk and counts every change once.

Worked example: gold (retain 50) over 365 days, grace 30 days. A gold member earned
nothing for a year: the run of 1 March finds 0 < 50 and starts the grace; the run of
31 March demotes them to the highest tier whose retain 0 is met, bronze, and derives
``new_stage`` gold → bronze with cause ``maintenance``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime

from loyalty import ledger
from loyalty.app import Program
from loyalty.ingest.derived import MAX_EVENT_ID
from loyalty.models import MaintenanceProgress
from loyalty.store.db import Conn
from loyalty.tiers.promotion import WINDOW_START
from loyalty.tiers.schemes import TierScheme

DEFAULT_CHUNK = 10_000

# One chunk. Parameters: $1 program, $2 scheme, $3 cursor, $4 chunk size, $5 currency,
# $6 window kind, $7 window length, $8 as_of, $9 entry thresholds, $10 retain
# thresholds, $11 tier names (lowest first), $12 grace period, $13 demotion policy,
# $14 whether this is the program's first scheme (members.tier), $15 as_of as text,
# $16 whether the schedule is anchored on join dates, $17 the previous run's as_of.
_CHUNK = f"""
WITH chunk AS (
    SELECT mb.member_id FROM members AS mb
    WHERE mb.program = $1 AND mb.member_id > $3
      AND (NOT $16::boolean OR $17::timestamptz IS NULL OR EXISTS (
          SELECT 1 FROM (VALUES (0), (1)) AS k(back),
               LATERAL (SELECT mb.created_at + make_interval(years =>
                   extract(year FROM $8::timestamptz AT TIME ZONE 'UTC')::integer - k.back
                   - extract(year FROM mb.created_at AT TIME ZONE 'UTC')::integer) AS day) AS a
          WHERE a.day > $17::timestamptz AND a.day <= $8::timestamptz))
    ORDER BY mb.member_id
    LIMIT $4
),
bounds AS (SELECT max(member_id) AS last FROM chunk),
-- The window ending at as_of, and every point earned since: a member promoted while the
-- run goes on (measured later than as_of) keeps what that promotion gave.
measured AS (
    SELECT q.member_id, sum(q.points)::bigint AS measure
    FROM qualifying_points AS q, bounds
    WHERE q.program = $1 AND q.member_id > $3 AND q.member_id <= bounds.last
      AND q.currency = $5
      AND q.earned_at > {WINDOW_START.format(at="$8::timestamptz", kind="$6", length="$7")}
    GROUP BY q.member_id
),
state AS (
    SELECT c.member_id, greatest(coalesce(m.measure, 0), 0) AS measure, coalesce(t.rank, 0) AS rank,
           t.below_since
    FROM chunk AS c
    LEFT JOIN measured AS m USING (member_id)
    -- The chunk's key range as well: the planner cannot know that the chunk holds few
    -- members, and would otherwise hash the whole table at every chunk.
    LEFT JOIN member_tiers AS t
           ON t.program = $1 AND t.scheme = $2 AND t.member_id = c.member_id
          AND t.member_id > $3 AND t.member_id <= (SELECT last FROM bounds)
),
-- Materialized: the ranks are read several times below, and an inlined subquery would be
-- evaluated at each reading. Entry thresholds ascend strictly, from 0, so width_bucket
-- counts those met; retain thresholds need not ascend.
met AS MATERIALIZED (
    SELECT s.*, width_bucket(s.measure, $9::bigint[]) - 1 AS entry_rank,
           (SELECT max(x.r) - 1 FROM unnest($10::bigint[]) WITH ORDINALITY AS x(v, r)
            WHERE x.v <= s.measure AND x.r <= s.rank + 1)::integer AS retain_rank
    FROM state AS s
),
decided AS (
    SELECT m.*,
           CASE WHEN m.entry_rank > m.rank THEN m.entry_rank
                WHEN m.retain_rank >= m.rank THEN m.rank
                WHEN coalesce(m.below_since, $8) + $12::interval <= $8
                     THEN CASE WHEN $13::text = 'one_down' THEN m.rank - 1
                               ELSE m.retain_rank END
                ELSE m.rank END AS new_rank
    FROM met AS m
),
next AS (
    SELECT d.*,
           CASE WHEN d.new_rank <> d.rank OR d.retain_rank >= d.rank THEN NULL
                ELSE coalesce(d.below_since, $8) END AS new_below
    FROM decided AS d
),
written AS (
    INSERT INTO member_tiers (program, scheme, member_id, tier, rank, since, below_since)
    SELECT $1, $2, n.member_id, ($11::text[])[n.new_rank + 1], n.new_rank, $8, n.new_below
    FROM next AS n
    WHERE n.new_rank <> n.rank OR n.new_below IS DISTINCT FROM n.below_since
    ON CONFLICT (program, scheme, member_id) DO UPDATE
    SET tier = EXCLUDED.tier, rank = EXCLUDED.rank, below_since = EXCLUDED.below_since,
        since = CASE WHEN member_tiers.rank <> EXCLUDED.rank THEN EXCLUDED.since
                     ELSE member_tiers.since END
    RETURNING member_id
),
moves AS (
    SELECT n.member_id, ($11::text[])[n.rank + 1] AS from_tier,
           ($11::text[])[n.new_rank + 1] AS to_tier,
           CASE WHEN n.new_rank > n.rank THEN 'up' ELSE 'down' END AS direction,
           $2::text || ':' || ($11::text[])[n.new_rank + 1] || ':maintenance:' || $15::text
               || ':' || n.member_id AS rest
    FROM next AS n
    WHERE n.new_rank <> n.rank
),
shown AS (
    UPDATE members AS mb SET tier = mv.to_tier, updated_at = now()
    FROM moves AS mv
    WHERE $14::boolean AND mb.program = $1 AND mb.member_id = mv.member_id
      AND mb.member_id > $3 AND mb.member_id <= (SELECT last FROM bounds)
    RETURNING 1
),
derived AS (
    INSERT INTO events (program, origin, event_id, type, member_id, payload, occurred_at)
    SELECT $1, 'engine', e.event_id, 'new_stage', e.member_id,
           jsonb_build_object('event_id', e.event_id, 'member_id', e.member_id,
                              'program', $1::text, 'occurred_at', $15::text,
                              'attributes', '{{}}'::jsonb, 'type', 'new_stage',
                              'from_tier', e.from_tier, 'to_tier', e.to_tier,
                              'direction', e.direction, 'cause', 'maintenance',
                              'scheme', $2::text),
           $8
    FROM (SELECT mv.*,
                 CASE WHEN length('new_stage:' || mv.rest) <= {MAX_EVENT_ID}
                      THEN 'new_stage:' || mv.rest
                      ELSE 'new_stage:' || encode(sha256(convert_to(mv.rest, 'UTF8')), 'hex')
                 END AS event_id
          FROM moves AS mv) AS e
    ON CONFLICT (program, origin, event_id) DO NOTHING
    RETURNING 1
)
SELECT (SELECT count(*) FROM chunk) AS scanned,
       (SELECT last FROM bounds) AS last,
       (SELECT count(*) FROM moves WHERE direction = 'up') AS promoted,
       (SELECT count(*) FROM moves WHERE direction = 'down') AS demoted,
       (SELECT count(*) FROM next WHERE new_below IS NOT NULL AND below_since IS NULL)
           AS in_grace,
       (SELECT count(*) FROM written) + (SELECT count(*) FROM shown)
           + (SELECT count(*) FROM derived) AS writes
"""

_ADVANCE = """
UPDATE maintenance_runs
SET cursor = coalesce($2, cursor), chunks = chunks + 1, scanned = scanned + $3,
    promoted = promoted + $4, demoted = demoted + $5, in_grace = in_grace + $6,
    finished_at = CASE WHEN $7::boolean THEN now() END
WHERE id = $1
RETURNING *
"""

Progress = Callable[[MaintenanceProgress], Awaitable[None]]


async def start_run(conn: Conn, program: str, scheme: str, as_of: datetime) -> MaintenanceProgress:
    """The run measuring at ``as_of``: created, or as far as it got (a resumed run)."""
    row = await conn.fetchrow(
        """WITH new AS (
               INSERT INTO maintenance_runs (program, scheme, as_of, previous_as_of)
               SELECT $1, $2, $3, max(as_of) FROM maintenance_runs
               WHERE program = $1 AND scheme = $2 AND as_of < $3 AND finished_at IS NOT NULL
               ON CONFLICT (program, scheme, as_of) DO NOTHING
               RETURNING *
           )
           SELECT * FROM new
           UNION ALL
           SELECT * FROM maintenance_runs WHERE program = $1 AND scheme = $2 AND as_of = $3""",
        program, scheme, as_of,
    )  # fmt: skip
    assert row is not None
    return _progress(row)


def _progress(row: object) -> MaintenanceProgress:
    return MaintenanceProgress.model_validate(dict(row.items()))  # type: ignore[attr-defined]


async def run_chunk(
    conn: Conn, program: Program, scheme: TierScheme, run: MaintenanceProgress, size: int
) -> MaintenanceProgress:
    """Review the next chunk of the run in one transaction; returns the run's progress.

    A finished run is returned unchanged.
    """
    index = [s.name for s in program.tier_schemes].index(scheme.name)
    kind, length = scheme.window_sql_args()
    async with conn.transaction():
        await conn.execute(
            f"SELECT pg_advisory_xact_lock({ledger.LEDGER_LOCK.format(program='$1')})",
            program.name,
        )
        current = await conn.fetchrow(
            "SELECT * FROM maintenance_runs WHERE id = $1 FOR UPDATE", run.id
        )
        assert current is not None
        if current["finished_at"] is not None:
            return _progress(current)
        row = await conn.fetchrow(
            _CHUNK, program.name, scheme.name, current["cursor"], size,
            scheme.currency_in(program), kind, length, current["as_of"],
            [t.threshold for t in scheme.tiers], [t.retain_threshold for t in scheme.tiers],
            scheme.tier_names(), scheme.grace_period, scheme.demotion, index == 0,
            current["as_of"].isoformat(), scheme.schedule.anchor == "join_date",
            current["previous_as_of"],
        )  # fmt: skip
        assert row is not None
        advanced = await conn.fetchrow(
            _ADVANCE, run.id, row["last"], row["scanned"], row["promoted"], row["demoted"],
            row["in_grace"], row["scanned"] < size,
        )  # fmt: skip
        return _progress(advanced)


async def run_maintenance(
    conn: Conn,
    program: Program,
    scheme: TierScheme,
    as_of: datetime,
    *,
    chunk: int = DEFAULT_CHUNK,
    progress: Progress | None = None,
) -> MaintenanceProgress:
    """Run (or resume) the scheme's maintenance at ``as_of`` to the end.

    ``progress`` is awaited after every chunk (the activity heartbeats there).
    """
    run = await start_run(conn, program.name, scheme.name, as_of)
    while run.finished_at is None:
        run = await run_chunk(conn, program, scheme, run, chunk)
        if progress is not None:
            await progress(run)
    return run


async def latest_runs(conn: Conn) -> list[MaintenanceProgress]:
    """The latest run of every program and scheme (`loyalty status`)."""
    rows = await conn.fetch(
        """SELECT DISTINCT ON (program, scheme) * FROM maintenance_runs
           ORDER BY program, scheme, started_at DESC, id DESC"""
    )
    return [_progress(r) for r in rows]


async def history(conn: Conn, program: str, limit: int = 10) -> list[MaintenanceProgress]:
    """The program's latest runs, newest first."""
    rows = await conn.fetch(
        """SELECT * FROM maintenance_runs WHERE program = $1
           ORDER BY started_at DESC, id DESC LIMIT $2""",
        program, limit,
    )  # fmt: skip
    return [_progress(r) for r in rows]
