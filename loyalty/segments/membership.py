"""Segment membership in PostgreSQL: installed by the worker, kept by the database.

`install` (the worker calls it at start-up, after migrating) compiles the app's segments
(`loyalty.segments.spec`) into one statement each, stores them in ``segments`` and
regenerates ``segments_evaluate(program, ids)`` from every stored segment. From then on
the database keeps membership current by itself: migration 0022's statement triggers
mark the members a transaction touches, and at commit its deferred trigger calls
``segments_evaluate`` for them, which updates ``segment_members`` and derives the
``segment_entered`` / ``segment_left`` events in that same transaction. So every writer
(the router's batches, journey steps, maturing, expiry, maintenance, adjustments,
profile updates, erasure) is covered without knowing of segments.

A segment that is new or whose definition changed is recomputed over the whole program
at install without deriving events: a deploy is not a member's change, and a flow on
``EnteredSegment`` would otherwise start a journey for every member at once. Conditions
that read the clock (``older_than``, a rolling or calendar-year tier window) are
recomputed, with events, by `refresh` in the program's housekeeping loop, together with
the segments that name them.

Event ids: ``segment_entered:<segment>:<n>:<member_id>`` for a member's nth entry and
``segment_left:<segment>:<n>:<member_id>`` for the departure that ends it (an id over
128 characters keeps its prefix and the SHA-256 of the rest, as `derived_id` does).

Rows are written in member id order, as every writer locks members, so that two
transactions that share members never wait for each other in a circle. A full recompute
holds the program's ledger lock exclusively (`loyalty.ledger.LEDGER_LOCK`):
every writer holds it shared, so no change commits while the recompute reads.

The marking triggers are off while no segment is installed in the database (install turns
them on with the first segment and off with the last): without segments, writers pay
nothing for them.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from loyalty.app import LoyaltyApp, Program
from loyalty.flows.spec import flows_by_type
from loyalty.ingest.derived import MAX_EVENT_ID
from loyalty.segments.spec import (
    MemberRange,
    Segment,
    compile_all,
    evaluation_order,
    in_range,
    literal,
)
from loyalty.segments.windows import keep as keep_windows
from loyalty.segments.windows import lock_program, windows_read
from loyalty.segments.windows import refill_later as refill_windows
from loyalty.segments.windows import refresh as refresh_windows
from loyalty.store.db import Conn
from loyalty.triggers import EnteredSegment, LeftSegment

# Serialises installs of concurrent workers (any constant; "loyalty-segments").
_INSTALL_LOCK = "hashtextextended('loyalty-segments-install', 0)"

_ISO = """(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN extract(microseconds FROM now())::bigint % 1000000 <> 0
                THEN to_char(now() AT TIME ZONE 'UTC', '.US') ELSE '' END || '+00:00')"""


# Who listens: (segment, entered) pairs whose derived event a flow of the program takes.
Listened = frozenset[tuple[str, bool]]


def listened(app: LoyaltyApp, program: str) -> Listened:
    """The segments and directions (True: entered) whose events the program's flows take
    (`EnteredSegment`, `LeftSegment`; a `Custom` trigger on the type takes every segment).

    Only those are derived into the inbox: the others are in ``segment_changes`` alone,
    as `points_matured` is derived only when a flow listens.
    """
    names = list(app.segments.get(program, {}))
    found: set[tuple[str, bool]] = set()
    for event_type, entered in (("segment_entered", True), ("segment_left", False)):
        for spec in flows_by_type(app).get(event_type, ()):
            if not spec.applies_to(program):
                continue
            trigger = spec.trigger
            if isinstance(trigger, EnteredSegment | LeftSegment):
                found.add((trigger.name, entered))
            else:
                found.update((name, entered) for name in names)
    return frozenset(found)


def _written(p: str, source: str) -> str:
    """The CTE that writes the changes of ``changed`` (member_id, segment, inside,
    entries) to ``segment_members``, in member id order, returning them."""
    return f"""written AS (
    INSERT INTO segment_members AS s (program, segment, member_id, in_segment, entries,
                                      changed_at)
    SELECT {p}, c.segment, c.member_id, c.inside, c.entries, now() FROM {source} AS c
    ORDER BY c.member_id, c.segment
    ON CONFLICT (program, segment, member_id) DO UPDATE
    SET in_segment = EXCLUDED.in_segment, entries = EXCLUDED.entries,
        changed_at = EXCLUDED.changed_at
    RETURNING s.segment, s.member_id, s.in_segment, s.entries
)"""


def _logged(p: str) -> str:
    return f"""INSERT INTO segment_changes (program, segment, member_id, entered, entry)
SELECT {p}, w.segment, w.member_id, w.in_segment, w.entries FROM written AS w"""


def _derived(p: str, pairs: Listened) -> str:
    """Insert the events of the listened changes of ``written``."""
    wanted = ", ".join(f"({literal(name)}, {str(entered).lower()})" for name, entered in
                       sorted(pairs))  # fmt: skip
    return f"""INSERT INTO events (program, origin, event_id, type, member_id, payload,
                    occurred_at)
SELECT {p}, 'engine', e.event_id, t.type, t.member_id,
       jsonb_build_object('event_id', e.event_id, 'member_id', t.member_id,
                          'program', {p}::text, 'occurred_at', {_ISO},
                          'attributes', '{{}}'::jsonb, 'type', t.type, 'segment', t.segment),
       now()
FROM (SELECT w.member_id, w.segment,
             CASE WHEN w.in_segment THEN 'segment_entered' ELSE 'segment_left' END AS type,
             w.segment || ':' || w.entries || ':' || w.member_id AS rest
      FROM written AS w WHERE (w.segment, w.in_segment) IN ({wanted})) AS t,
     LATERAL (SELECT CASE WHEN length(t.type || ':' || t.rest) <= {MAX_EVENT_ID}
                          THEN t.type || ':' || t.rest
                          ELSE t.type || ':' || encode(sha256(convert_to(t.rest, 'UTF8')), 'hex')
                     END AS event_id) AS e
ORDER BY t.member_id, t.segment
ON CONFLICT (program, origin, event_id) DO NOTHING"""


def evaluate_statement(program: Program, segments: Sequence[Segment], pairs: Listened) -> str:
    """The statement of ``segments_evaluate`` for ``program``: every segment evaluated
    for the members ``ids`` at once (their lookups shared, ``in_segment`` inlined, one
    plan), what changed written to ``segment_members`` and ``segment_changes``, and the
    listened changes derived into the inbox. Returns no rows."""
    source, conditions = compile_all(program, evaluation_order(segments), "ids")
    ordered = evaluation_order(segments)
    p = literal(program.name)
    columns = ",\n           ".join(f"{c} AS i{n}" for n, c in enumerate(conditions))
    values = ", ".join(f"({literal(s.name)}, n.i{n})" for n, s in enumerate(ordered))
    head = f"""WITH now_in AS (
    SELECT m.member_id,
           {columns}
    FROM {source}
    WHERE m.program = {p} AND m.member_id = ANY(ids)
),
changed AS (
    SELECT n.member_id, v.segment, v.inside,
           coalesce(s.entries, 0) + v.inside::integer AS entries
    FROM now_in AS n
    CROSS JOIN LATERAL (VALUES {values}) AS v(segment, inside)
    LEFT JOIN LATERAL (
        SELECT * FROM segment_members AS s
        WHERE s.program = {p} AND s.segment = v.segment AND s.member_id = n.member_id LIMIT 1
    ) AS s ON true
    WHERE v.inside <> coalesce(s.in_segment, false)
),
{_written(p, "changed")}"""
    if not pairs:
        return f"{head}\n{_logged(p)}"
    return f"{head},\nlogged AS (\n{_logged(p)}\n)\n{_derived(p, pairs)}"


def _changed(program: Program, segment: Segment, within: MemberRange) -> str:
    """The members (of the range ``within``) whose membership of ``segment`` changes:
    member_id, segment, inside, entries."""
    compiled = segment.compile(program, within)
    p, name = literal(program.name), literal(segment.name)
    return f"""SELECT n.member_id, {name}::text AS segment, n.inside,
       coalesce(s.entries, 0) + n.inside::integer AS entries
FROM (
    SELECT m.member_id, {compiled.condition} AS inside
    FROM {compiled.source}
    WHERE m.program = {p}{in_range("m.member_id", within)}
) AS n
LEFT JOIN segment_members AS s
  ON s.program = {p} AND s.segment = {name} AND s.member_id = n.member_id{in_range(
    "s.member_id", within)}
WHERE n.inside <> coalesce(s.in_segment, false)"""  # fmt: skip


# The changes a parallel read found (`changes_statement`), in the session's temporary
# schema until `recompute` has written them.
FOUND = "pg_temp.segment_recompute"


def changes_statement(program: Program, segment: Segment, parts: Sequence[MemberRange]) -> str:
    """Find the changes of ``segment`` into the temporary table `FOUND`, one part per
    member id range of ``parts`` (``UNION ALL``).

    A statement that writes never runs in parallel in PostgreSQL; this one only reads
    (``CREATE TABLE AS`` may run in parallel), and each part is a plan of its own that a
    parallel worker can take whole (a Parallel Append), its joins kept to its range.
    """
    union = "\nUNION ALL\n".join(_changed(program, segment, part) for part in parts)
    return f"CREATE TEMPORARY TABLE {FOUND.removeprefix('pg_temp.')} ON COMMIT DROP AS\n{union}"


def statement(
    program: Program,
    segment: Segment,
    *,
    pairs: Listened | None = None,
    found: str | None = None,
) -> str:
    """The SQL that re-evaluates ``segment`` over every member of the program, writes
    what changed (with the derived events ``pairs`` names; None: none) and returns the
    counts of members that ``entered`` and ``left``. With ``found`` (a table of
    `changes_statement`) it writes the changes read there instead of finding them."""
    p = literal(program.name)
    changed = (
        _changed(program, segment, (None, None))
        if found is None
        else f"SELECT member_id, segment, inside, entries FROM {found}"
    )
    head = f"""WITH changed AS (
{changed}
),
{_written(p, "changed")},
logged AS (
{_logged(p)}
)"""
    counts = (
        "SELECT count(*) FILTER (WHERE in_segment) AS entered,"
        " count(*) FILTER (WHERE NOT in_segment) AS left FROM written"
    )
    mine = frozenset(pair for pair in pairs or () if pair[0] == segment.name)
    if not mine:
        return f"{head}\n{counts}"
    return f"{head},\nderived AS (\n{_derived(p, mine)}\n)\n{counts}"


# Planner settings for the parallel read (`changes_statement`) alone. Every source of a
# part is joined on an index in member id order, so merge joins of index scans read each
# part once, in order; left to its estimates the planner mixes in hash joins, bitmap
# scans and sorts that spill under a small work_mem (a third more CPU in all, measured
# in bench/RESULTS.md) or gives up the parallel plan. The changes it gathers are a small
# share of the rows it reads, hence the low cost per gathered row.
PARALLEL_READ = {
    "enable_hashjoin": "off",
    "enable_bitmapscan": "off",
    "enable_sort": "off",
    "parallel_tuple_cost": "0.001",
}


async def _find_changes(conn: Conn, sql: str) -> None:
    """Run ``sql`` (`changes_statement`) under `PARALLEL_READ`, then put the settings
    back as they were (they are local to the transaction either way)."""
    names = list(PARALLEL_READ)
    before = await conn.fetchrow(
        "SELECT " + ", ".join(f"current_setting({literal(n)}) AS {n}" for n in names)
    )
    assert before is not None
    await _settings(conn, PARALLEL_READ)
    await conn.execute(sql)
    await _settings(conn, {n: before[n] for n in names})


async def _settings(conn: Conn, values: dict[str, str]) -> None:
    await conn.execute(
        "SELECT "
        + ", ".join(f"set_config({literal(n)}, {literal(v)}, true)" for n, v in values.items())
    )


# A full recompute reads in parallel parts when the program has about this many members
# or more (fewer: one statement, whose parallel setup would cost more than it saves).
PARALLEL_MEMBERS = 100_000
# Parts per process (parallel workers and the leader): a worker that finishes early
# takes another part.
PARTS_PER_PROCESS = 4
# Pages of the members table sampled for the parts' bounds (all of a smaller table).
SAMPLE_PAGES = 500


async def member_ranges(conn: Conn, program: str) -> list[MemberRange]:
    """Member id ranges that split ``program``'s members into parts of about the same
    size for a parallel read: `PARTS_PER_PROCESS` per process PostgreSQL may use
    (``max_parallel_workers_per_gather`` and the leader), or one whole range for a
    program of fewer than about `PARALLEL_MEMBERS` members or without parallel workers.

    The bounds are quantiles of a sample of about `SAMPLE_PAGES` pages of ``members``
    (``TABLESAMPLE SYSTEM``: a few milliseconds); whatever the sample, the ranges cover
    every member id exactly once, so it changes the parts' sizes, never the result.
    """
    row = await conn.fetchrow(
        """SELECT current_setting('max_parallel_workers_per_gather')::integer AS workers,
                  greatest(relpages, 1) AS pages
           FROM pg_class WHERE oid = 'members'::regclass"""
    )
    assert row is not None
    if row["workers"] < 1:
        return [(None, None)]
    count = PARTS_PER_PROCESS * (row["workers"] + 1)
    percent = min(100.0, 100.0 * SAMPLE_PAGES / row["pages"])
    row = await conn.fetchrow(
        f"""SELECT count(*) AS sampled,
                  percentile_disc($2::float8[]) WITHIN GROUP (ORDER BY member_id) AS bounds
           FROM members TABLESAMPLE SYSTEM ({percent:.6f}) REPEATABLE (0)
           WHERE program = $1""",
        program,
        [n / count for n in range(1, count)],
    )
    assert row is not None
    if row["sampled"] * 100.0 / percent < PARALLEL_MEMBERS:
        return [(None, None)]
    bounds: list[str] = sorted(set(row["bounds"]))
    return list(zip([None, *bounds], [*bounds, None], strict=True))


@dataclass(frozen=True)
class Stored:
    """A segment as installed: its row in ``segments``."""

    program: str
    name: str
    position: int
    definition: str
    condition: str
    time_dependent: bool
    digest: str


def _stored(program: Program, position: int, segment: Segment) -> Stored:
    recompute = statement(program, segment)
    digest = hashlib.sha256(f"{position}\n{recompute}".encode()).hexdigest()
    return Stored(
        program.name,
        segment.name,
        position,
        segment.definition(),
        recompute,
        segment.compile(program).timed,
        digest,
    )


def _function(evaluate: dict[str, str]) -> str:
    """``segments_evaluate`` over every program's statement."""
    body = "\n".join(
        f"    IF p = {literal(program)} THEN\n        {sql};\n    END IF;"
        for program, sql in sorted(evaluate.items())
    )
    text = "\n".join(evaluate.values())
    tag = "$segments$"
    while tag in text:
        tag = f"$segments_{secrets.token_hex(4)}$"
    return f"""CREATE OR REPLACE FUNCTION segments_evaluate(p text, ids text[]) RETURNS void
LANGUAGE plpgsql AS {tag}
BEGIN
{body}
END
{tag}"""


# The marking triggers of migration 0022, by table.
MARKING_TRIGGERS = {
    "accounts": ("accounts_segments_insert", "accounts_segments_update"),
    "member_tiers": ("member_tiers_segments_insert", "member_tiers_segments_update"),
    "members": ("members_segments_insert", "members_segments_update"),
    "member_currencies": (
        "member_currencies_segments_insert",
        "member_currencies_segments_update",
    ),
    "qualifying_points": ("qualifying_points_segments_insert",),
}


async def _marking(conn: Conn, *, on: bool) -> None:
    """Turn the marking triggers on (some segment is installed) or off (none is): without
    segments, writers pay nothing for them. Altered only when their state changes."""
    names = [name for names in MARKING_TRIGGERS.values() for name in names]
    off = await conn.fetchval(
        "SELECT count(*) FROM pg_trigger WHERE tgname = ANY($1) AND tgenabled = 'D'", names
    )
    if (off == 0) == on:
        return
    for table, triggers in MARKING_TRIGGERS.items():
        for trigger in triggers:
            await conn.execute(
                f"ALTER TABLE {table} {'ENABLE' if on else 'DISABLE'} TRIGGER {trigger}"
            )


@dataclass(frozen=True)
class Installed:
    """What `install` did: segments added or changed (recomputed), and removed."""

    changed: list[tuple[str, str]]
    removed: list[tuple[str, str]]


async def install(conn: Conn, app: LoyaltyApp) -> Installed:
    """Store the app's segments and regenerate ``segments_evaluate``; recompute (without
    events) every segment of a program where a segment was added, changed or removed.

    A change of which events flows listen to regenerates the function only. Segments of
    programs the app does not define are left as they are (another app may own them).
    Concurrent installs queue on a lock; an install with nothing new writes nothing.
    """
    ordered = {
        program.name: evaluation_order(list(app.segments.get(program.name, {}).values()))
        for program in app.programs.values()
    }
    wanted = {
        (name, segment.name): _stored(app.programs[name], position, segment)
        for name, segments in ordered.items()
        for position, segment in enumerate(segments)
    }
    evaluate = {
        name: evaluate_statement(app.programs[name], segments, listened(app, name))
        for name, segments in ordered.items()
        if segments
    }
    async with conn.transaction():
        await conn.execute(f"SELECT pg_advisory_xact_lock({_INSTALL_LOCK})")
        rows = await conn.fetch(
            "SELECT program, name, digest FROM segments WHERE program = ANY($1::text[])",
            list(app.programs),
        )
        have = {(r["program"], r["name"]): r["digest"] for r in rows}
        stored = {
            r["program"]: r["evaluate"]
            for r in await conn.fetch(
                "SELECT program, evaluate FROM segment_programs WHERE program = ANY($1::text[])",
                list(app.programs),
            )
        }
        changed = [key for key, row in wanted.items() if have.get(key) != row.digest]
        removed = [key for key in have if key not in wanted]
        if not changed and not removed and stored == evaluate:
            return Installed([], [])
        # The programs recomputed below, locked before the triggers are altered (writers
        # hold their program's lock, then the tables'): no writer commits a change the
        # recompute does not see, with the segments as they were.
        for program_name in sorted({p for p, _ in changed + removed}):
            await lock_program(conn, program_name)
        for program, name in removed:
            await conn.execute(
                "DELETE FROM segments WHERE program = $1 AND name = $2", program, name
            )
            await conn.execute(
                "DELETE FROM segment_changes WHERE program = $1 AND segment = $2", program, name
            )
        await conn.executemany(
            """INSERT INTO segments (program, name, position, definition, condition,
                                     time_dependent, digest)
               VALUES ($1, $2, $3, $4, $5, $6, $7)
               ON CONFLICT (program, name) DO UPDATE
               SET position = EXCLUDED.position, definition = EXCLUDED.definition,
                   condition = EXCLUDED.condition, time_dependent = EXCLUDED.time_dependent,
                   digest = EXCLUDED.digest, installed_at = now()""",
            [
                (r.program, r.name, r.position, r.definition, r.condition, r.time_dependent,
                 r.digest)
                for key, r in wanted.items()
                if key in changed
            ],
        )  # fmt: skip
        await conn.execute(
            "DELETE FROM segment_programs WHERE program = ANY($1::text[])", list(app.programs)
        )
        await conn.executemany(
            "INSERT INTO segment_programs (program, evaluate) VALUES ($1, $2)",
            list(evaluate.items()),
        )
        every = {
            r["program"]: r["evaluate"]
            for r in await conn.fetch("SELECT program, evaluate FROM segment_programs")
        }
        await conn.execute(_function(every))
        await _marking(conn, on=bool(every))
        await keep_windows(conn, app)
        for program_name in sorted({p for p, _ in changed + removed}):
            await recompute(conn, app, program_name, emit=False, locked=False)
    return Installed(sorted(changed), sorted(removed))


@dataclass(frozen=True)
class Recomputed:
    """One segment's full recompute: members who entered and who left."""

    segment: str
    entered: int
    left: int


async def recompute(
    conn: Conn,
    app: LoyaltyApp,
    program: str,
    names: Sequence[str] | None = None,
    *,
    emit: bool = True,
    locked: bool = True,
) -> list[Recomputed]:
    """Re-evaluate segments of ``program`` (default: all) over every member, in order.

    Each change is logged in ``segment_changes``; with ``emit`` it also derives its event
    when a flow listens, as an incremental change does. Runs in
    its own transaction (or the caller's), holding the program's ledger lock exclusively
    unless ``locked`` is False (the caller holds what it needs).
    """
    defined = app.segments.get(program, {})
    chosen = [
        s for s in evaluation_order(list(defined.values())) if names is None or s.name in names
    ]
    found = []
    async with conn.transaction():
        if locked:
            await lock_program(conn, program)
        pairs = listened(app, program) if emit else None
        await refill_windows(conn, program, windows_read(app, program, chosen))
        parts = await member_ranges(conn, program) if chosen else []
        for segment in chosen:
            if len(parts) > 1:
                await _find_changes(conn, changes_statement(app.programs[program], segment, parts))
                sql = statement(app.programs[program], segment, pairs=pairs, found=FOUND)
            else:
                sql = statement(app.programs[program], segment, pairs=pairs)
            row = await conn.fetchrow(sql)
            assert row is not None
            if len(parts) > 1:
                await conn.execute(f"DROP TABLE {FOUND}")
            found.append(Recomputed(segment.name, row["entered"], row["left"]))
        await conn.execute(
            "UPDATE segments SET refreshed_at = now() WHERE program = $1 AND name = ANY($2)",
            program,
            [s.name for s in chosen],
        )
    return found


def timed_segments(app: LoyaltyApp, program: str) -> list[str]:
    """The segments time alone can change: those reading the clock and those naming them."""
    defined = app.segments.get(program, {})
    timed = {n for n, s in defined.items() if s.compile(app.programs[program]).timed}
    grew = True
    while grew:
        more = {n for n, s in defined.items() if s.where.segments() & timed} - timed
        timed |= more
        grew = bool(more)
    return [s.name for s in evaluation_order(list(defined.values())) if s.name in timed]


async def refresh(conn: Conn, app: LoyaltyApp, program: str) -> list[Recomputed]:
    """Recompute, with events, the segments time alone can change (housekeeping's step),
    then refresh the kept sums of the rolling windows they read whose span has ended
    (`loyalty.segments.windows`), so that the next recompute reads them as they are."""
    names = timed_segments(app, program)
    if not names:
        return []
    async with conn.transaction():
        found = await recompute(conn, app, program, names, emit=True)
        defined = app.segments.get(program, {})
        await refresh_windows(
            conn, program, windows_read(app, program, [defined[n] for n in names])
        )
    return found


async def evaluate(conn: Conn, program: str, member_ids: Sequence[str]) -> None:
    """Re-evaluate every installed segment of ``program`` for these members now, as the
    commit of a transaction that touched them would."""
    await conn.execute("SELECT segments_evaluate($1, $2::text[])", program, list(member_ids))


@dataclass(frozen=True)
class SegmentInfo:
    """A segment as `loyalty segments` lists it."""

    program: str
    name: str
    definition: str
    time_dependent: bool
    size: int
    entered_last_day: int
    left_last_day: int
    installed_at: datetime
    refreshed_at: datetime | None


async def list_segments(conn: Conn, program: str | None = None) -> list[SegmentInfo]:
    """The installed segments (of ``program``, or all) with their sizes and the entries
    and departures of the last 24 hours."""
    rows = await conn.fetch(
        """SELECT s.program, s.name, s.definition, s.time_dependent, s.installed_at,
                  s.refreshed_at,
                  (SELECT count(*) FROM segment_members AS m
                   WHERE m.program = s.program AND m.segment = s.name AND m.in_segment) AS size,
                  (SELECT count(*) FROM segment_changes AS c
                   WHERE c.program = s.program AND c.segment = s.name AND c.entered
                     AND c.at > now() - interval '1 day') AS entered,
                  (SELECT count(*) FROM segment_changes AS c
                   WHERE c.program = s.program AND c.segment = s.name AND NOT c.entered
                     AND c.at > now() - interval '1 day') AS left
           FROM segments AS s
           WHERE $1::text IS NULL OR s.program = $1
           ORDER BY s.program, s.position""",
        program,
    )
    return [
        SegmentInfo(
            program=r["program"],
            name=r["name"],
            definition=r["definition"],
            time_dependent=r["time_dependent"],
            size=r["size"],
            entered_last_day=r["entered"],
            left_last_day=r["left"],
            installed_at=r["installed_at"],
            refreshed_at=r["refreshed_at"],
        )
        for r in rows
    ]


async def segment_exists(conn: Conn, program: str, name: str) -> bool:
    """Whether the segment is installed."""
    found: bool = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM segments WHERE program = $1 AND name = $2)", program, name
    )
    return found


async def members(
    conn: Conn, program: str, segment: str, *, after: str | None = None, limit: int = 100
) -> list[tuple[str, datetime]]:
    """The segment's members in member id order after ``after``: (id, when they entered)."""
    rows = await conn.fetch(
        """SELECT member_id, changed_at FROM segment_members
           WHERE program = $1 AND segment = $2 AND in_segment
             AND ($3::text IS NULL OR member_id > $3)
           ORDER BY member_id LIMIT $4""",
        program,
        segment,
        after,
        limit,
    )
    return [(r["member_id"], r["changed_at"]) for r in rows]
