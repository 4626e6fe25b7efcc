"""Benchmark: segments (issue 15): full recomputes, ingest with segments, recurring runs.

1. Recompute (own embedded PostgreSQL; app `bench.segments_app.ZETA_APP`): program
   ``zeta`` (points and miles; bronze / silver 1,000 / gold 5,000 over a rolling 365
   days) with --members members built set-based (not timed): profiles (city, email
   consent), available and earned points, miles, ``member_currencies``, 1-3 qualifying
   points rows in the window (and for half the members one older), tiers as the measure
   gives them. Segments ``almost-gold`` (``balance().between(901, 999)``) and
   ``nudge-silver`` (``tier_in("silver") & points_to_next_tier().at_most(100) &
   consent("email")``) are installed, their members deleted, and the rolling window's
   kept sums (`loyalty.segments.windows`) set back to what a refresh a day ago left
   (rows 365 to 366 days old have left the window since: about 0.5% of the members).
   Then each is recomputed over every member (`loyalty.segments.membership.recompute`,
   ``emit=False`` as at install: everyone new; it sums the aged members' rows itself),
   timed, with the CPU seconds of its backend and of the parallel workers of its read
   (`server_cpu`). Then 1% of the members change (balance +60, 150 more qualifying
   points; written with the segments' marking triggers off, as time changes a rolling
   window unseen, and the window's own trigger on, as for every writer) and each
   segment is recomputed again with events, as housekeeping's refresh does. Then the
   window's refresh that housekeeping runs after it (the aged members' sums written
   again), timed alone.
   Baseline, same run: --sample members spread over the program, their memberships
   deleted, evaluated one by one, one transaction each
   (`loyalty.segments.membership.evaluate(conn, "zeta", [member])`: both segments, as the
   commit of a transaction that touched the member runs them), twice: as shipped, and
   with ``plan_cache_mode = force_generic_plan`` (other members); compared by rate
   (members/s). Goals: a recompute under 2 s; the recompute of both at least 20x the
   baseline's rate. Checks: after each recompute and after the baselines, each segment's
   members are exactly those plain SQL finds. ``--explain``: EXPLAIN (ANALYZE, BUFFERS)
   of each recompute's statements as it runs them (the parallel read, the write),
   rolled back.
2. Ingest (one `loyalty dev` home, restarted with each app; `bench.segments_app`): the
   mixed load of `bench.workloads` (deposits, withdrawals, purchases with and without
   points, logins; tiers bronze / silver 50 / gold 150 over 365 days), --events events
   over --ingest-members new members per run, each run in its own program, from
   `emit_many` until nothing of the program is pending (the derived ``new_stage`` events
   included; no flow listens to the segments, so their changes are logged in
   ``segment_changes`` and derive no event), in the order none, five, five,
   none: app ``plain`` (no segment) and app ``segmented`` (five segments per program:
   balance range, tier, points to the next tier, consent with a balance, one naming
   another). After each (re)start, --warmup events in program ``warm``, not timed. Goal:
   five segments at most 10% slower (rates over the two runs of each side). Per run: CPU
   seconds per process (psutil) and the time PostgreSQL spent in the segments' functions
   (``pg_stat_user_functions``, ``track_functions = pl``). Checks after each run: the
   ledger as `bench.workloads.expect` gives it and `loyalty verify` clean
   (`bench.ingest_loads.check`); with segments, a full recompute changes nothing and no
   mark is left; without, no segment is installed.
3. Recurring (the same home, app ``recurring``): --journeys members put into segment
   ``almost-gold`` of program ``recur`` (a deposit of 950 points each), then its weekly
   flow's Temporal Schedule triggered; journeys started/s from the first journey's start
   time to the last's, in Temporal's visibility (``LOYALTY_RECURRING_STARTS_PER_SECOND``
   at its maximum, 10,000, so that the throttle does not set the figure). Baseline, same
   server: as many `Client.start_workflow` calls of the same journey workflow (same task
   queue and search attributes) from this process, at most ``START_CONCURRENCY`` (32, as
   the run) at once. Goal: at least 0.8 times the baseline's rate. Checks: the run
   snapshotted and started every member; Temporal lists every journey of both sides.

Run: ``.venv/bin/python bench/segments.py`` (also in `make bench`); ``--phases 1`` (or
``2 3``) runs some of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from rich.table import Table
from temporalio.client import Client
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.segments_app

from activities.recurring import START_CONCURRENCY, trigger_event
from bench.emit import BIN, DevServer, console, cpu_by_role, cpu_text, machine
from bench.ingest_loads import EMIT_CHUNK, STATS_DELAY_SECONDS, check, wait_settled
from bench.segments_app import (
    ALMOST_GOLD,
    NUDGE_SILVER,
    PHASES,
    WARM,
    ZETA,
    ZETA_APP,
    five,
    segmented,
)
from bench.segments_flows import NUDGE_SEGMENT, RECUR, WeeklyNudge
from bench.workloads import expect, mixed
from loyalty.events import AnyEvent, PointsDeposit
from loyalty.flows.recurring import RecurringWork
from loyalty.flows.spec import JOURNEY_ID_REUSE_POLICY, flow_spec, workflow_name
from loyalty.segments import membership, windows
from loyalty.store.db import Conn, Database, connect, prepare_database
from loyalty.store.embedded import EmbeddedPostgres
from loyalty.temporal import FLOW, MEMBER_ID, PROGRAM, TRIGGER, connect_temporal
from loyalty.triggers import Recurring
from starter import LoyaltyClient
from workflows.recurring import recurring_id

GOAL_SECONDS = 2.0
GOAL_RATIO = 20.0
GOAL_INGEST = 0.9  # with five segments, at most 10% slower
GOAL_STARTS = 0.8  # a recurring run against a bare loop of start_workflow
CHANGED_PER_MILLE = 10  # members changed before the second recompute
APPS = {"none": "bench.segments_app:plain", "five": "bench.segments_app:segmented",
        "recurring": "bench.segments_app:recurring"}  # fmt: skip
ORDER = ("none", "five", "five", "none")  # phase 2's runs, one program of PHASES each
# The segments' functions, timed by PostgreSQL (pg_stat_user_functions) in phase 2.
FUNCTIONS = ("segments_mark", "segments_settle", "segments_evaluate", "qualifying_windows_add")

# Member i of n: 'z' and seven digits; h(k) is a hash of i per purpose k. Member i's
# qualifying points within the window add up to its measure, 3 + h(11) % 7997, so its
# tier (entry thresholds 0, 1,000, 5,000) is known without summing them.
_RANK = "(width_bucket(3 + abs(hashint8extended(i, 11)) % 7997, ARRAY[0, 1000, 5000]) - 1)"

# Profiles: a city, email consent refused by 10%, given by 60%, not said by 30%
# (consent by default).
_MEMBERS = f"""
INSERT INTO members (program, member_id, profile, tier, created_at, updated_at)
SELECT $1, 'z' || lpad(i::text, 7, '0'),
       jsonb_build_object('city', (ARRAY['Aarhus', 'Odense', 'Aalborg', 'Esbjerg', 'Vejle',
                                         'Copenhagen'])[1 + abs(hashint8extended(i, 1)) % 6])
       || CASE WHEN abs(hashint8extended(i, 2)) % 10 = 0
               THEN '{{"consent": {{"email": false}}}}'::jsonb
               WHEN abs(hashint8extended(i, 2)) % 10 < 7
               THEN '{{"consent": {{"email": true, "sms": false}}}}'::jsonb
               ELSE '{{}}'::jsonb END,
       (ARRAY['bronze', 'silver', 'gold'])[{_RANK} + 1],
       $2::timestamptz - make_interval(days => (abs(hashint8extended(i, 3)) % 1500)::int),
       $2::timestamptz
FROM generate_series(0, $3::int - 1) AS i
"""

# Available points for everyone (0-2,999), earned points for 20%, miles for 40%.
_ACCOUNTS = """
INSERT INTO accounts (program, member_id, currency, kind, balance)
SELECT $1, 'z' || lpad(i::text, 7, '0'), c.currency, c.kind, c.balance
FROM generate_series(0, $2::int - 1) AS i
CROSS JOIN LATERAL (
    VALUES ('points', 'available', abs(hashint8extended(i, 4)) % 3000, true),
           ('points', 'earned', abs(hashint8extended(i, 5)) % 500,
            abs(hashint8extended(i, 6)) % 5 = 0),
           ('miles', 'available', abs(hashint8extended(i, 7)) % 20000,
            abs(hashint8extended(i, 8)) % 5 < 2)
) AS c(currency, kind, balance, present)
WHERE c.present
"""

_CURRENCIES = """
INSERT INTO member_currencies (program, member_id, currency, lifetime_earned, last_activity_at)
SELECT a.program, a.member_id, a.currency, a.balance + abs(hashint8extended(a.id, 9)) % 5000,
       $2::timestamptz - make_interval(days => (abs(hashint8extended(a.id, 10)) % 400)::int)
FROM accounts AS a
WHERE a.program = $1 AND a.kind = 'available'
"""

# The measure m of member i is 3 to 7,999 qualifying points, in 1-3 rows within the last
# 366 days (rows 365 to 366 days old left the window during the last day: about 0.3% of
# the rows); half the members also have a row older than any window.
_QUALIFYING = """
INSERT INTO qualifying_points (program, member_id, currency, earned_at, points, source)
SELECT $1, 'z' || lpad(i::text, 7, '0'), 'points',
       $2::timestamptz - make_interval(days => (CASE WHEN j = 0 THEN 400 + r % 300
                                                     ELSE 1 + r % 365 END)::int,
                                       secs => (r % 86400)::double precision),
       CASE WHEN j = 0 THEN 100 + r % 900
            WHEN j < k THEN m / k ELSE m - (k - 1) * (m / k) END,
       'bench:' || i || ':' || j
FROM (SELECT i, 3 + abs(hashint8extended(i, 11)) % 7997 AS m,
             1 + abs(hashint8extended(i, 12)) % 3 AS k,
             abs(hashint8extended(i, 13)) % 2 = 0 AS old
      FROM generate_series(0, $3::int - 1) AS i) AS g
CROSS JOIN LATERAL (SELECT j, abs(hashint8extended(i * 4 + j, 14)) AS r
                    FROM generate_series(CASE WHEN g.old THEN 0 ELSE 1 END, g.k) AS j) AS x
"""

# Tiers as the measure gives them now: member_tiers rows for silver and gold.
_TIERS = f"""
INSERT INTO member_tiers (program, scheme, member_id, tier, rank, since)
SELECT $1, 'main', 'z' || lpad(i::text, 7, '0'), (ARRAY['bronze', 'silver', 'gold'])[r + 1], r,
       $2::timestamptz - interval '30 days'
FROM generate_series(0, $3::int - 1) AS i, LATERAL (SELECT {_RANK} AS r) AS x
WHERE r > 0
"""

# 1% of the members change: 60 more available points, 150 more qualifying points.
_CHANGE = """
WITH picked AS (
    SELECT member_id FROM members
    WHERE program = $1 AND abs(hashtextextended(member_id, 15)) % 1000 < $3
),
balances AS (
    UPDATE accounts AS a SET balance = a.balance + 60 FROM picked AS p
    WHERE a.program = $1 AND a.member_id = p.member_id AND a.currency = 'points'
      AND a.kind = 'available'
    RETURNING 1
),
earned AS (
    INSERT INTO qualifying_points (program, member_id, currency, earned_at, points, source)
    SELECT $1, member_id, 'points', $2::timestamptz - interval '1 hour', 150,
           'bench:change:' || member_id
    FROM picked
    RETURNING 1
)
SELECT (SELECT count(*) FROM picked) AS members, (SELECT count(*) FROM balances) AS balances,
       (SELECT count(*) FROM earned) AS earned
"""

# The kept sums of the rolling window (loyalty.segments.windows) as a refresh a day ago
# left them: every row earned in the 365 days before then, so the members whose earliest
# row has left the window since are the ones the next recompute refreshes. $1 program.
_A_DAY_AGO = """
INSERT INTO qualifying_window_totals (program, currency, span, member_id, points, valid_from,
                                      valid_until)
SELECT $1, 'points', interval '365 days', member_id, sum(points)::bigint,
       greatest(max(earned_at), now() - interval '1 day'), min(earned_at) + interval '365 days'
FROM qualifying_points
WHERE program = $1 AND currency = 'points'
  AND earned_at > now() - interval '1 day' - interval '365 days'
GROUP BY member_id
"""
_STALE = """
SELECT count(*) FROM qualifying_window_totals WHERE program = $1 AND valid_until <= now()
"""

# Members of each segment by plain SQL, beside those segment_members holds; the rows are
# the differences. $1 program, $2 member ids to compare (NULL: everyone).
_EXPECTED = {
    ALMOST_GOLD.name: """
        SELECT a.member_id FROM accounts AS a
        WHERE a.program = $1 AND a.currency = 'points' AND a.kind = 'available'
          AND a.balance BETWEEN 901 AND 999""",
    NUDGE_SILVER.name: """
        SELECT t.member_id FROM member_tiers AS t
        JOIN members AS m ON m.program = t.program AND m.member_id = t.member_id
        WHERE t.program = $1 AND t.scheme = 'main' AND t.tier = 'silver'
          AND m.erased_at IS NULL
          AND (m.profile -> 'consent' ->> 'email') IS DISTINCT FROM 'false'
          AND 5000 - (SELECT coalesce(sum(q.points), 0) FROM qualifying_points AS q
                      WHERE q.program = $1 AND q.member_id = t.member_id
                        AND q.currency = 'points' AND q.earned_at > now() - interval '365 days'
                        AND q.earned_at <= now()) <= 100""",
}
_COMPARE = """
WITH expected AS ({expected}),
actual AS (SELECT member_id FROM segment_members
           WHERE program = $1 AND segment = $3 AND in_segment),
diff AS ((SELECT * FROM expected EXCEPT SELECT * FROM actual)
         UNION ALL (SELECT * FROM actual EXCEPT SELECT * FROM expected))
SELECT (SELECT count(*) FROM expected) AS expected, (SELECT count(*) FROM actual) AS actual,
       (SELECT count(*) FROM diff WHERE $2::text[] IS NULL OR member_id = ANY($2)) AS wrong
"""


def met(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]NOT met[/]"


@dataclass
class Recompute:
    """Phase 1's figures."""

    members: int = 0
    build_s: float = 0.0
    # Seconds, CPU seconds (backend and parallel workers, `server_cpu`), members in.
    first: dict[str, tuple[float, float, int]] = field(default_factory=dict)
    second: dict[str, tuple[float, float, int, int]] = field(default_factory=dict)
    changed: int = 0
    # Kept window sums a row has left since their refresh (a day ago), and the refresh.
    stale: int = 0
    refresh_s: float = 0.0
    refreshed: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    # "as shipped" and "generic plans": members, seconds, backend CPU seconds.
    baselines: dict[str, tuple[int, float, float]] = field(default_factory=dict)
    settings: str = ""


async def check_members(conn: Conn, segment: str, label: str, only: list[str] | None) -> int:
    """Fail unless the segment's members are exactly those plain SQL finds; their number."""
    row = await conn.fetchrow(
        _COMPARE.format(expected=_EXPECTED[segment]), ZETA.name, only, segment
    )
    assert row is not None
    if row["wrong"] or (only is None and row["expected"] != row["actual"]):
        raise SystemExit(
            f"{label}: WRONG MEMBERS of {segment}: plain SQL {row['expected']:,}, "
            f"segment_members {row['actual']:,}, {row['wrong']:,} differ"
        )
    return int(row["expected"])


async def build(conn: Conn, members: int, as_of: datetime) -> dict[str, int]:
    """The program's members and their state, set-based, without triggers; rows per table."""
    rows = {}
    async with conn.transaction():
        # Bulk load: no foreign-key or marking triggers (no segment is installed yet
        # anyway); the rows are consistent by construction.
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("SET LOCAL work_mem = '256MB'")
        for table, sql, args in (
            ("members", _MEMBERS, (ZETA.name, as_of, members)),
            ("accounts", _ACCOUNTS, (ZETA.name, members)),
            ("member_currencies", _CURRENCIES, (ZETA.name, as_of)),
            ("qualifying_points", _QUALIFYING, (ZETA.name, as_of, members)),
            ("member_tiers", _TIERS, (ZETA.name, as_of, members)),
        ):
            started = time.perf_counter()
            with console.status(f"building {table}"):
                status = await conn.execute(sql, *args)
            rows[table] = int(status.split()[-1])
            console.print(
                f"  {table}: {rows[table]:,} rows in {time.perf_counter() - started:.1f} s"
            )
    started = time.perf_counter()
    with console.status("VACUUM ANALYZE"):
        await conn.execute("VACUUM ANALYZE")
    console.print(f"  VACUUM ANALYZE: {time.perf_counter() - started:.1f} s")
    return rows


def server_cpu(backend: psutil.Process, server: psutil.Process) -> float:
    """CPU seconds of the benchmark's backend and of the processes PostgreSQL started and
    ended (the postmaster's reaped children: a recompute's parallel workers, and any
    autovacuum worker that ended meanwhile)."""
    times = server.cpu_times()
    return sum(backend.cpu_times()[:2]) + times.children_user + times.children_system


async def timed_recompute(
    conn: Conn, processes: tuple[psutil.Process, psutil.Process], segment: str, emit: bool
) -> tuple[float, float, int, int]:
    """One segment's full recompute: seconds, CPU seconds (`server_cpu`), entered, left."""
    cpu = server_cpu(*processes)
    started = time.perf_counter()
    (found,) = await membership.recompute(conn, ZETA_APP, ZETA.name, [segment], emit=emit)
    seconds = time.perf_counter() - started
    return seconds, server_cpu(*processes) - cpu, found.entered, found.left


async def explain(conn: Conn) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of each recompute's statements as `recompute` runs them
    (the parallel read in member id ranges, then the write), rolled back."""
    parts = await membership.member_ranges(conn, ZETA.name)
    console.print(f"member id ranges of the parallel read: {len(parts)}")
    for segment in (ALMOST_GOLD, NUDGE_SILVER):
        transaction = conn.transaction()
        await transaction.start()
        try:
            if len(parts) > 1:
                for name, value in membership.PARALLEL_READ.items():
                    await conn.execute(f"SET LOCAL {name} = '{value}'")
                read = membership.changes_statement(ZETA, segment, parts)
                rows = [r[0] for r in await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {read}")]
                for name in membership.PARALLEL_READ:
                    await conn.execute(f"RESET {name}")
                write = membership.statement(ZETA, segment, found=membership.FOUND)
            else:
                rows, write = [], membership.statement(ZETA, segment)
            rows += [r[0] for r in await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {write}")]
        finally:
            await transaction.rollback()
        console.print(f"EXPLAIN (ANALYZE, BUFFERS) of the recompute of {segment.name}:")
        console.print("\n".join(rows), markup=False, highlight=False)


async def baseline(conn: Conn, ids: list[str], backend: psutil.Process) -> tuple[float, float]:
    """Each member evaluated in its own transaction; seconds and backend CPU seconds."""
    cpu = sum(backend.cpu_times()[:2])
    started = time.perf_counter()
    for member in ids:
        await membership.evaluate(conn, ZETA.name, [member])
    return time.perf_counter() - started, sum(backend.cpu_times()[:2]) - cpu


async def recompute_phase(pg: EmbeddedPostgres, args: argparse.Namespace) -> Recompute:
    fig = Recompute(members=args.members)
    dsn = await pg.ensure_database("bench")
    await prepare_database(dsn, ZETA_APP)
    as_of = datetime.now(UTC).replace(microsecond=0)
    conn = await connect(dsn)
    names = (ALMOST_GOLD.name, NUDGE_SILVER.name)
    try:
        backend = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()"))
        assert pg.pid is not None
        both = (backend, psutil.Process(pg.pid))
        started = time.perf_counter()
        rows = await build(conn, args.members, as_of)
        fig.build_s = time.perf_counter() - started
        console.print(
            f"setup (not timed as a subject): {fig.build_s:.1f} s; "
            + ", ".join(f"{t} {n:,}" for t, n in rows.items())
        )
        with console.status("installing the segments"):
            await membership.install(conn, ZETA_APP)
            async with conn.transaction():
                await conn.execute(
                    "DELETE FROM qualifying_window_totals WHERE program = $1", ZETA.name
                )
                await conn.execute(_A_DAY_AGO, ZETA.name)
                await conn.execute(
                    "UPDATE qualifying_windows SET filled_at = now() - interval '1 day' "
                    "WHERE program = $1",
                    ZETA.name,
                )
            await conn.execute("VACUUM ANALYZE qualifying_window_totals")
            fig.stale = await conn.fetchval(_STALE, ZETA.name)
            console.print(
                f"kept window sums as refreshed a day ago: {fig.stale:,} members' earliest "
                "row has left the window since"
            )
            # Everyone new: the recompute below writes every member in a segment.
            await conn.execute("DELETE FROM segment_members WHERE program = $1", ZETA.name)
            await conn.execute("VACUUM ANALYZE segment_members")
        for name in names:
            with console.status(f"recompute of {name}, everyone new"):
                seconds, cpu, entered, left = await timed_recompute(conn, both, name, False)
            size = await check_members(conn, name, f"first recompute of {name}", None)
            if (entered, left) != (size, 0):
                raise SystemExit(f"{name}: recompute counted {entered}/{left}, plain SQL {size}")
            fig.first[name] = (seconds, cpu, entered)
            console.print(
                f"recompute of {name} over {args.members:,} members, everyone new: "
                f"{seconds:.2f} s (CPU {cpu:.2f} s), {entered:,} members; checked"
            )
        with console.status("changing 1% of the members"):
            async with conn.transaction():
                # Unseen by the segments' marking triggers (the window's own trigger
                # keeps its sums, as with every writer).
                for table, triggers in membership.MARKING_TRIGGERS.items():
                    for trigger in triggers:
                        await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
                changed = await conn.fetchrow(_CHANGE, ZETA.name, as_of, CHANGED_PER_MILLE)
                for table, triggers in membership.MARKING_TRIGGERS.items():
                    for trigger in triggers:
                        await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")
            assert changed is not None
            fig.changed = int(changed["members"])
            await conn.execute("ANALYZE accounts, qualifying_points")
        for name in names:
            with console.status(f"recompute of {name}, {fig.changed:,} members changed"):
                seconds, cpu, entered, left = await timed_recompute(conn, both, name, True)
            fig.sizes[name] = await check_members(conn, name, f"second recompute of {name}", None)
            fig.second[name] = (seconds, cpu, entered, left)
            console.print(
                f"recompute of {name} with {fig.changed:,} members changed, with events: "
                f"{seconds:.2f} s (CPU {cpu:.2f} s), {entered:,} entered, {left:,} "
                f"left, {fig.sizes[name]:,} members; checked"
            )
        # Housekeeping's refresh of the window's kept sums, after its recompute: the
        # members whose span ended (the day of aging) summed and written again.
        async with conn.transaction():
            started = time.perf_counter()
            fig.refreshed = await windows.refresh(
                conn, ZETA.name, [("points", timedelta(days=365))]
            )
            fig.refresh_s = time.perf_counter() - started
        console.print(
            f"refresh of the window's kept sums: {fig.refreshed:,} members in {fig.refresh_s:.2f} s"
        )
        if args.explain:
            await explain(conn)

        # Statistics as autovacuum would have them by now (they were taken on an empty
        # segment_members before the first recompute).
        await conn.execute("ANALYZE segment_members")
        step = max(2, args.members // args.sample)
        for generic in (False, True):
            ids = [f"z{i:07d}" for i in range(step // 2 * generic, args.members, step)]
            ids = ids[: args.sample]
            await conn.execute(
                "DELETE FROM segment_members WHERE program = $1 AND member_id = ANY($2)",
                ZETA.name,
                ids,
            )
            label = "generic plans" if generic else "as shipped"
            with console.status(f"baseline ({label}): {len(ids):,} members one by one"):
                if generic:
                    await conn.execute("SET plan_cache_mode = force_generic_plan")
                try:
                    seconds, cpu = await baseline(conn, ids, backend)
                finally:
                    await conn.execute("RESET plan_cache_mode")
            for name in names:
                await check_members(conn, name, f"baseline ({label}), {name}", ids)
            fig.baselines[label] = (len(ids), seconds, cpu)
            console.print(
                f"baseline ({label}): {len(ids):,} members evaluated one by one in "
                f"{seconds:.2f} s (backend CPU {cpu:.2f} s), {len(ids) / seconds:,.0f} "
                "members/s; both segments checked for them"
            )
        settings = await conn.fetch(
            """SELECT name, current_setting(name) AS value FROM pg_settings WHERE name IN
               ('server_version', 'shared_buffers', 'work_mem')"""
        )
        fig.settings = ", ".join(f"{r['name']} {r['value']}" for r in settings)
    finally:
        await conn.close()
    return fig


def report_recompute(fig: Recompute) -> None:
    both = sum(s for s, _, _ in fig.first.values())
    table = Table(title=f"segments: full recompute over {fig.members:,} members (program zeta)")
    for name in ("measure", "figures", "goal", ""):
        table.add_column(name)
    for name, (seconds, cpu, size) in fig.first.items():
        table.add_row(
            f"recompute {name}, everyone new",
            f"{seconds:.2f} s (CPU {cpu:.2f} s), {size:,} members",
            f"< {GOAL_SECONDS:.0f} s",
            met(seconds < GOAL_SECONDS),
        )
    for name, (seconds, cpu, entered, left) in fig.second.items():
        table.add_row(
            f"recompute {name}, {fig.changed:,} changed, events",
            f"{seconds:.2f} s (CPU {cpu:.2f} s), {entered:,} entered, {left:,} left",
            f"< {GOAL_SECONDS:.0f} s",
            met(seconds < GOAL_SECONDS),
        )
    rate = fig.members / both
    for label, (n, seconds, cpu) in fig.baselines.items():
        base = n / seconds
        table.add_row(
            f"baseline: members one by one, {label}",
            f"{n:,} in {seconds:.2f} s: {base:,.0f} members/s (backend CPU {cpu:.2f} s)",
            "",
            "",
        )
        table.add_row(
            f"both recomputes (first) / baseline {label}",
            f"{rate:,.0f} / {base:,.0f} members/s: {rate / base:,.1f}x",
            f"≥ {GOAL_RATIO:.0f}x",
            met(rate / base >= GOAL_RATIO),
        )
    console.print(table)
    console.print(
        f"setup {fig.build_s:.0f} s (not timed as a subject); PostgreSQL {fig.settings}",
        soft_wrap=True,
    )


# --- phase 2: ingest with five segments and without -------------------------------------


class Dev(DevServer):
    """`loyalty dev` with one of `APPS`, restarted on the same LOYALTY_HOME and ports."""

    def __init__(self, app: str) -> None:
        os.environ["LOYALTY_APP"] = APPS[app]
        # The highest pace allowed: phase 3 measures the run's own work, not a throttle.
        os.environ["LOYALTY_RECURRING_STARTS_PER_SECOND"] = "10000"
        super().__init__(f"loyalty dev (app {APPS[app]})", batch_size=None)
        self.app = app

    def restart(self, app: str) -> None:
        """Stop it (the data stays) and start it again with another app."""
        self.halt()
        self.app, self.name = app, f"loyalty dev (app {APPS[app]})"
        self.env["LOYALTY_APP"] = APPS[app]
        self.lines.clear()
        self.ready.clear()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [str(BIN / "loyalty"), "dev"], env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )  # fmt: skip
        threading.Thread(target=self._drain, daemon=True).start()
        self.wait_ready()


def roles(dev: Dev) -> dict[int, str]:
    """The benchmark's own processes by pid, with their part of the stack."""
    return {os.getpid(): "benchmark", dev.process.pid: "loyalty dev (worker)"}


@dataclass
class IngestRun:
    side: str
    program: str
    events: int
    seconds: float
    cpu: str
    entered: int = 0
    left: int = 0
    # pg_stat_user_functions during the run: calls and seconds (a function's own and
    # those of the functions it calls), by function.
    functions: dict[str, tuple[int, float]] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds

    def function_text(self) -> str:
        return "Functions: " + (
            ", ".join(f"{n} {c:,} calls {t:.2f} s" for n, (c, t) in self.functions.items() if c)
            or "none called"
        )


async def warm_up(dev: Dev, n: int, limit: float) -> None:
    """``n`` events of the mixed load in program ``warm``, new members, not timed."""
    events: list[AnyEvent] = list(mixed(f"w{time.monotonic_ns()}", n, max(1, n // 4), WARM))
    async with await LoyaltyClient.connect(dev.settings) as client, Database(dev.settings) as db:
        with console.status(f"warming up: {n:,} events"):
            await client.wait(await client.emit_many(events, chunk_size=EMIT_CHUNK), timeout=limit)
            conn = await connect(db.dsn)
            try:
                await wait_settled(conn, WARM, limit)
            finally:
                await conn.close()


async def track_functions(dev: Dev) -> None:
    """Have PostgreSQL time PL/pgSQL functions in the sessions the next start opens."""
    async with Database(dev.settings) as db:
        conn = await connect(db.dsn)
        try:
            database = await conn.fetchval("SELECT current_database()")
            await conn.execute(f'ALTER DATABASE "{database}" SET track_functions = pl')
        finally:
            await conn.close()


async def function_times(conn: Conn) -> dict[str, tuple[int, float]]:
    """Calls and total milliseconds of the segments' functions so far, by name."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch(
        "SELECT funcname, calls, total_time FROM pg_stat_user_functions"
        " WHERE funcname = ANY($1::text[])",
        list(FUNCTIONS),
    )
    return {r["funcname"]: (r["calls"], r["total_time"]) for r in rows}


async def ingest_phase(dev: Dev, program: str, args: argparse.Namespace) -> IngestRun:
    """The mixed load in ``program``, emit_many to applied, timed; then checked."""
    events: list[AnyEvent] = list(mixed(program, args.events, args.ingest_members, program))
    limit = args.timeout
    async with await LoyaltyClient.connect(dev.settings) as client, Database(dev.settings) as db:
        conn = await connect(db.dsn)
        try:
            before, functions = cpu_by_role(dev.home, roles(dev)), await function_times(conn)
            with console.status(f"{program} ({dev.app}): {len(events):,} events"):
                started = time.monotonic()
                results = await client.emit_many(events, chunk_size=EMIT_CHUNK)
                await client.wait(results, timeout=limit)
                await wait_settled(conn, program, limit)
                seconds = time.monotonic() - started
            cpu = cpu_text(before, cpu_by_role(dev.home, roles(dev)))
            if not all(r.accepted for r in results):
                raise SystemExit(f"{program}: some events were not accepted")
            with console.status(f"{program}: checks (not timed)"):
                run = IngestRun(dev.app, program, len(events), seconds, cpu)
                await check(conn, program, expect(segmented.programs[program], (), events), 0)
                await check_segments(conn, dev.app, run)
                # Backends report function times within a second or so of going idle.
                await asyncio.sleep(STATS_DELAY_SECONDS)
                after = await function_times(conn)
            run.functions = {
                name: (calls - functions.get(name, (0, 0.0))[0],
                       (ms - functions.get(name, (0, 0.0))[1]) / 1000)
                for name, (calls, ms) in after.items()
            }  # fmt: skip
        finally:
            await conn.close()
    console.print(
        f"{program}, {run.side} segments: {run.events:,} events in {seconds:.2f} s, "
        f"{run.rate:,.0f} events/s; {run.entered:,} entered, {run.left:,} left; ledger "
        f"and segments checked. CPU: {cpu}. {run.function_text()}"
    )
    return run


async def check_segments(conn: Conn, side: str, run: IngestRun) -> None:
    """Five segments kept current (a full recompute changes nothing), or none at all."""
    installed = await conn.fetchval("SELECT count(*) FROM segments WHERE program = $1", run.program)
    marks = await conn.fetchval("SELECT count(*) FROM segment_marks")
    if side == "none":
        if installed or marks:
            raise SystemExit(f"{run.program}: {installed} segments, {marks} marks left")
        return
    if installed != len(five(run.program)) or marks:
        raise SystemExit(f"{run.program}: {installed} segments installed, {marks} marks left")
    found = await membership.recompute(conn, segmented, run.program, emit=False)
    if any(f.entered or f.left for f in found):
        raise SystemExit(f"{run.program}: MEMBERSHIP NOT CURRENT: a full recompute found {found}")
    counts = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE entered) AS entered,
                  count(*) FILTER (WHERE NOT entered) AS left
           FROM segment_changes WHERE program = $1""",
        run.program,
    )
    assert counts is not None
    run.entered, run.left = counts["entered"], counts["left"]


# --- phase 3: a recurring run over a 10,000-member segment ---------------------------------


@dataclass
class Starts:
    side: str
    journeys: int
    span: float  # from the first journey's start to the last's, in Temporal
    wall: float  # from the trigger (or the loop's first call) to the last start
    cpu: str

    @property
    def rate(self) -> float:
        return self.journeys / self.span


async def start_times(client: Client, query: str, n: int, limit: float) -> list[datetime]:
    """The start times of the ``n`` workflows ``query`` finds, once Temporal lists them all
    (by id: a page may repeat a workflow that closed while the listing went on)."""
    deadline = time.monotonic() + limit
    while True:
        found = {w.id: w.start_time async for w in client.list_workflows(query, page_size=1000)}
        if len(found) >= n or time.monotonic() > deadline:
            if len(found) != n:
                raise SystemExit(f"{query}: {len(found):,} workflows, expected {n:,}")
            return sorted(found.values())
        await asyncio.sleep(0.5)


async def recurring_phase(dev: Dev, args: argparse.Namespace) -> list[Starts]:
    """Fill the segment, trigger the schedule, time the journeys; then the bare loop."""
    n, limit = args.journeys, args.timeout
    spec = flow_spec(WeeklyNudge)
    assert spec is not None
    assert isinstance(spec.trigger, Recurring)
    name = workflow_name(WeeklyNudge)
    assert name is not None
    task_queue = dev.settings.task_queue
    deposits = [
        PointsDeposit(event_id=f"r-{i}", member_id=f"r{i:05d}", program=RECUR, points=950,
                      kind="available", reason="bench")
        for i in range(n)
    ]  # fmt: skip
    runs = []
    async with await LoyaltyClient.connect(dev.settings) as loyalty, Database(dev.settings) as db:
        conn = await connect(db.dsn)
        client = await connect_temporal(dev.settings)
        try:
            with console.status(f"{n:,} members into segment {NUDGE_SEGMENT}"):
                await loyalty.wait(await loyalty.emit_many(deposits), timeout=limit)
                await wait_settled(conn, RECUR, limit)
            size = await conn.fetchval(
                """SELECT count(*) FROM segment_members
                   WHERE program = $1 AND segment = $2 AND in_segment""",
                RECUR,
                NUDGE_SEGMENT,
            )
            if size != n:
                raise SystemExit(f"segment {NUDGE_SEGMENT}: {size} members, expected {n}")

            before = cpu_by_role(dev.home, roles(dev))
            handle = client.get_schedule_handle(recurring_id(task_queue, RECUR, spec.name))
            with console.status(f"recurring run: {n:,} journeys"):
                started = datetime.now(UTC)
                await handle.trigger()
                deadline = time.monotonic() + limit
                sql = """SELECT members, started FROM recurring_runs
                         WHERE program = $1 AND flow = $2 AND finished_at IS NOT NULL"""
                while (row := await conn.fetchrow(sql, RECUR, spec.name)) is None:
                    if time.monotonic() > deadline:
                        raise SystemExit("the recurring run did not finish")
                    await asyncio.sleep(0.1)
            cpu = cpu_text(before, cpu_by_role(dev.home, roles(dev)))
            if (row["members"], row["started"]) != (n, n):
                raise SystemExit(f"recurring run: {dict(row)}, expected {n} members started")
            times = await start_times(
                client, f"WorkflowType = '{name}' AND LoyaltyTrigger = 'recurring'", n, limit
            )
            runs.append(Starts("recurring run", n, (times[-1] - times[0]).total_seconds(),
                               (times[-1] - started).total_seconds(), cpu))  # fmt: skip

            # The bare loop: the same workflow, task queue and search attributes, the
            # same number of calls at most START_CONCURRENCY at once, from this process.
            work = RecurringWork(program=RECUR, flow=spec.name, scheduled_at=started)
            gate = asyncio.Semaphore(START_CONCURRENCY)

            async def one(i: int) -> None:
                event = trigger_event(spec, work, NUDGE_SEGMENT, f"b{i:05d}")
                async with gate:
                    with contextlib.suppress(WorkflowAlreadyStartedError):
                        await client.start_workflow(
                            name, event, id=f"bench-bare-{i}", task_queue=task_queue,
                            id_reuse_policy=JOURNEY_ID_REUSE_POLICY,
                            search_attributes=TypedSearchAttributes([
                                SearchAttributePair(MEMBER_ID, event.member_id),
                                SearchAttributePair(FLOW, spec.name),
                                SearchAttributePair(PROGRAM, RECUR),
                                SearchAttributePair(TRIGGER, "bench-bare"),
                            ]),
                        )  # fmt: skip

            before = cpu_by_role(dev.home, roles(dev))
            with console.status(f"bare loop: {n:,} start_workflow calls"):
                started = datetime.now(UTC)
                await asyncio.gather(*(one(i) for i in range(n)))
            cpu = cpu_text(before, cpu_by_role(dev.home, roles(dev)))
            times = await start_times(
                client, f"WorkflowType = '{name}' AND LoyaltyTrigger = 'bench-bare'", n, limit
            )
            runs.append(Starts("bare start_workflow loop", n,
                               (times[-1] - times[0]).total_seconds(),
                               (times[-1] - started).total_seconds(), cpu))  # fmt: skip
        finally:
            await conn.close()
    for r in runs:
        console.print(
            f"{r.side}: {r.journeys:,} journeys started in {r.span:.2f} s (first to last start), "
            f"{r.rate:,.0f}/s; {r.wall:.2f} s from the trigger or first call. CPU: {r.cpu}"
        )
    return runs


def report_services(ingest: list[IngestRun], starts: list[Starts]) -> None:
    table = Table(title="segments: ingest with five segments and none; a recurring run")
    for name in ("measure", "figures", "goal", ""):
        table.add_column(name)
    for r in ingest:
        table.add_row(
            f"ingest {r.program}, {r.side} segments",
            f"{r.events:,} events in {r.seconds:.2f} s: {r.rate:,.0f} events/s; "
            f"{r.entered:,} entered, {r.left:,} left",
            "",
            "",
        )
    if ingest:

        def rate(runs: list[IngestRun]) -> float:
            return sum(r.events for r in runs) / sum(r.seconds for r in runs)

        main, extra = ingest[:4], ingest[4:]
        none, five = (rate([r for r in main if r.side == side]) for side in ("none", "five"))
        table.add_row(
            "ingest, five segments / none (runs 1-4)",
            f"{five:,.0f} / {none:,.0f} events/s: {five / none:.2f}",
            f"≥ {GOAL_INGEST:.2f} (at most 10% slower)",
            met(five / none >= GOAL_INGEST),
        )
        if len(extra) == 3:
            generic, around = rate(extra[:2]), rate([main[3], extra[2]])
            table.add_row(
                "experiment: five with generic plans / none (runs 4 and 7)",
                f"{generic:,.0f} / {around:,.0f} events/s: {generic / around:.2f}",
                "(the fix proposed)",
                "",
            )
        for r in ingest:
            table.add_row(f"CPU during {r.program} ({r.side})", r.cpu, "", "")
            if r.functions:
                table.add_row(f"PostgreSQL functions, {r.program}", r.function_text(), "", "")
    for s in starts:
        table.add_row(
            f"journeys started: {s.side}",
            f"{s.journeys:,} in {s.span:.2f} s: {s.rate:,.0f}/s ({s.wall:.2f} s from the "
            "trigger or first call)",
            "",
            "",
        )
    if len(starts) == 2:
        ratio = starts[0].rate / starts[1].rate
        table.add_row(
            "recurring run / bare loop, journeys/s",
            f"{starts[0].rate:,.0f} / {starts[1].rate:,.0f}: {ratio:.2f}",
            f"≥ {GOAL_STARTS:.1f}",
            met(ratio >= GOAL_STARTS),
        )
        for s in starts:
            table.add_row(f"CPU during the {s.side}", s.cpu, "", "")
    console.print(table)


def services(args: argparse.Namespace) -> tuple[list[IngestRun], list[Starts]]:
    """Phases 2 and 3 on one `loyalty dev` home, restarted with each app in turn."""
    order = list(zip(ORDER, PHASES, strict=True)) if 2 in args.phases else []
    dev = Dev(order[0][0] if order else "recurring")
    ingest: list[IngestRun] = []
    starts: list[Starts] = []
    try:
        dev.wait_ready()
        asyncio.run(track_functions(dev))
        for i, (side, program) in enumerate(order):
            if i == 0 or side != order[i - 1][0]:
                if i:
                    dev.restart(side)
                asyncio.run(warm_up(dev, args.warmup, args.timeout))
            ingest.append(asyncio.run(ingest_phase(dev, program, args)))
        if 3 in args.phases:
            if dev.app != "recurring":
                dev.restart("recurring")
            starts = asyncio.run(recurring_phase(dev, args))
    except BaseException:
        console.print("\n".join(dev.lines[-40:]), markup=False)
        raise
    finally:
        dev.halt()
        shutil.rmtree(dev.home, ignore_errors=True)
    return ingest, starts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, nargs="+", default=[1, 2, 3], choices=[1, 2, 3])
    parser.add_argument("--members", type=int, default=1_000_000, help="phase 1 members")
    parser.add_argument("--sample", type=int, default=2_000,
                        help="phase 1: baseline members (each of the two)")  # fmt: skip
    parser.add_argument("--explain", action="store_true", help="phase 1: EXPLAIN each recompute")
    parser.add_argument("--events", type=int, default=20_000, help="phase 2: events per run")
    parser.add_argument("--ingest-members", type=int, default=3_000, help="phase 2: per run")
    parser.add_argument("--warmup", type=int, default=2_000, help="phase 2: after each start")
    parser.add_argument("--journeys", type=int, default=10_000, help="phase 3: segment size")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per wait")
    args = parser.parse_args()
    if min(args.members, args.sample, args.events, args.journeys) < 1 or args.members > 9_999_999:
        parser.error("--members (at most 9,999,999), --sample, --events, --journeys: positive")
    os.chdir(Path(__file__).resolve().parents[1])  # `loyalty dev` imports the apps from here
    loadavg = os.getloadavg()[0]
    fig = None
    if 1 in args.phases:
        folder = Path(tempfile.mkdtemp(prefix="lfs", dir="/tmp"))  # short: the socket's path
        pg = EmbeddedPostgres(folder / "pg")
        try:
            with console.status("starting embedded PostgreSQL"):
                pg.start()
            fig = asyncio.run(recompute_phase(pg, args))
        finally:
            with console.status("stopping embedded PostgreSQL"):
                pg.stop()
            shutil.rmtree(folder, ignore_errors=True)
    ingest, starts = services(args) if {2, 3} & set(args.phases) else ([], [])
    if fig is not None:
        report_recompute(fig)
    if ingest or starts:
        report_services(ingest, starts)
    console.print(
        f"Machine: {machine()}. Load average (1 min) before: {loadavg:.2f}, after: "
        f"{os.getloadavg()[0]:.2f}.",
        soft_wrap=True,
    )


if __name__ == "__main__":
    main()
