"""Benchmark: tier maintenance over 1,000,000 members, on a fresh embedded PostgreSQL.

1. Data, built set-based (not timed as a subject): program ``bench`` with one scheme,
   bronze 0 / silver 1,000 (retain 800) / gold 5,000 (retain 4,000) over a rolling
   365 days, grace 0. N members (``members``), 3–5 ``qualifying_points`` rows each over
   the last two years (one of them always older than the window), inserted in date order
   as they would arrive, and ``member_tiers`` / ``members.tier`` as the measure gave them
   30 days before the run's ``as_of`` (the previous monthly run). By construction 4% of
   members went quiet (their big earnings, 366–394 days old, leave the window: gold or
   silver to silver or bronze) and 1% earned a higher tier in the last 30 days without
   being promoted (catch-up promotion); the other 95% keep their tier. Maintenance reads
   ``members``, ``member_tiers`` and ``qualifying_points`` only: no lots or ledger rows.
2. Subject: ``loyalty.tiers.maintenance.run_maintenance`` over all members, once per chunk size
   (``--chunk``), the data reset between runs. Seconds, members/s, changes, and the peak
   memory of this process (the "worker": psutil RSS sampled every 20 ms, and
   ``ru_maxrss``) and of its PostgreSQL backend. Goals: under 60 s and 300 MB per 1M.
   Every run is checked: each member's tier must be what the rule gives.
3. Baseline, same run: program ``base``, a disjoint copy of the data for ``--sample``
   members, evaluated one by one from Python: per member one query (measure and tier),
   and when the tier changes one statement (tier, ``members.tier``, the ``new_stage``
   event), 1,000 members per transaction. Its rate is extrapolated to N. Goal: the
   subject at 20x the baseline's members/s or more.
4. ``--explain``: EXPLAIN (ANALYZE, BUFFERS) of one chunk statement in the middle of the
   members (rolled back). ``--lots N``: also run bench/ledger.py's housekeeping step
   (``mature_due`` / ``expire_due`` over N lots) on the same server.

Run: ``python bench/maintenance.py [--members N] [--chunk N ...] [--sample N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import resource
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from loyalty import ledger
from loyalty.app import LoyaltyApp, Program
from loyalty.events import NewStage
from loyalty.ingest.derived import derived_id
from loyalty.store.db import Conn, connect, prepare_database
from loyalty.store.embedded import EmbeddedPostgres
from loyalty.tiers import Tier, TierScheme, maintenance
from loyalty.tiers.promotion import measure_sql

SCHEME = TierScheme(
    tiers=(
        Tier(name="bronze", threshold=0),
        Tier(name="silver", threshold=1_000, retain=800),
        Tier(name="gold", threshold=5_000, retain=4_000),
    ),
    window=timedelta(days=365),
)
SUBJECT, BASE = (
    Program(name="bench", tier_schemes=(SCHEME,)),
    Program(name="base", tier_schemes=(SCHEME,)),
)
QUIET, CATCH_UP = 40, 10  # per mille of members
PREVIOUS = timedelta(days=30)  # member_tiers as the measure gave them this long before as_of
BASE_TRANSACTION = 1_000  # members per baseline transaction
console = Console()

# Rows of member i (0-based): j = 0 is older than any window; the others depend on the
# member's kind (hash per mille c): quiet (c < QUIET) earned a recent small amount (j = 1)
# and a tier's worth 366–394 days ago (j ≥ 2); catch-up earned it all in the last 30 days;
# steady members earned 31–363 days ago, so their measure is the same at as_of - 30 days
# and at as_of. $1 program, $2 member prefix, $3 as_of, $4 members, $5 currency, $6 QUIET,
# $7 CATCH_UP.
_BUILD_POINTS = """
INSERT INTO qualifying_points (program, member_id, currency, earned_at, points, source)
SELECT $1, $2::text || lpad(i::text, 7, '0'), $5,
       $3::timestamptz - make_interval(days => days::int, secs => (r / 1000) % 86400), points,
       'bench:' || i || ':' || j
FROM (
    SELECT i, j, r,
           CASE WHEN j = 0 THEN 400 + r % 330
                WHEN kind = 'quiet' AND j >= 2 THEN 366 + r % 29
                WHEN kind = 'catch-up' THEN r % 30
                ELSE 31 + r % 333 END AS days,
           CASE WHEN j = 0 THEN 50 + r % 2000
                WHEN kind = 'quiet' AND j = 1
                     THEN CASE WHEN c2 % 6 = 1 THEN 800 + r % 2200 ELSE 100 + r % 600 END
                WHEN kind = 'quiet' THEN (CASE WHEN c2 % 3 = 0 THEN 1500 ELSE 6000 END) / (k - 2)
                                         + r % 200
                WHEN kind = 'catch-up' THEN 600 + r % 1500
                WHEN c2 < 60 THEN 20 + r % 280
                WHEN c2 < 92 THEN 400 + r % 1200
                ELSE 1500 + r % 3000 END AS points
    FROM (
        SELECT i, CASE WHEN c < $6 THEN 'quiet' WHEN c < $6 + $7 THEN 'catch-up'
                       ELSE 'steady' END AS kind,
               abs(hashint8extended(i, 2)) % 100 AS c2, 3 + abs(hashint8extended(i, 4)) % 3 AS k
        FROM (SELECT i, abs(hashint8extended(i, 1)) % 1000 AS c
              FROM generate_series(0, $4::int - 1) AS i) AS s
    ) AS m
    CROSS JOIN LATERAL (SELECT j, abs(hashint8extended(i * 8 + j, 3)) AS r
                        FROM generate_series(0, m.k - 1) AS j) AS x
) AS g
ORDER BY days DESC, r
"""

# Members and member_tiers (rows above the lowest tier only, as promotion writes them) as
# the measure gave them at $2 = as_of - PREVIOUS. $3 window, $4 thresholds, $5 names.
_BUILD_TIERS = """
WITH measured AS (
    SELECT member_id, coalesce(sum(points) FILTER (WHERE earned_at <= $2
                                                   AND earned_at > $2 - $3::interval), 0) AS m
    FROM qualifying_points WHERE program = $1 GROUP BY member_id
),
ranked AS (
    SELECT member_id, (SELECT max(x.r) - 1 FROM unnest($4::bigint[]) WITH ORDINALITY AS x(v, r)
                       WHERE x.v <= m)::integer AS rank
    FROM measured
),
shown AS (
    INSERT INTO members (program, member_id, tier, created_at)
    SELECT $1, member_id, ($5::text[])[rank + 1], $2 - interval '800 days' FROM ranked
    ORDER BY member_id
    RETURNING 1
),
tiers AS (
    INSERT INTO member_tiers (program, scheme, member_id, tier, rank, since)
    SELECT $1, $6, member_id, ($5::text[])[rank + 1], rank, $2 FROM ranked WHERE rank > 0
    ORDER BY member_id
    RETURNING 1
)
SELECT (SELECT count(*) FROM shown) AS members, (SELECT count(*) FROM tiers) AS tiered
"""

_SAVE = """
CREATE TABLE bench_saved AS
SELECT m.program, m.member_id, m.tier AS shown, t.tier, t.rank, t.since
FROM members AS m LEFT JOIN member_tiers AS t
     ON t.program = m.program AND t.scheme = 'main' AND t.member_id = m.member_id;
CREATE UNIQUE INDEX ON bench_saved (program, member_id)
"""

# Back to the saved state: what maintenance (or the baseline) changed.
_RESET = """
DELETE FROM events WHERE program = $1 AND type = 'new_stage';
DELETE FROM maintenance_runs WHERE program = $1;
DELETE FROM member_tiers AS t USING bench_saved AS s
WHERE t.program = $1 AND s.program = $1 AND s.member_id = t.member_id AND s.rank IS NULL;
UPDATE member_tiers AS t SET tier = s.tier, rank = s.rank, since = s.since, below_since = NULL
FROM bench_saved AS s
WHERE t.program = $1 AND s.program = $1 AND s.member_id = t.member_id
  AND (t.rank <> s.rank OR t.below_since IS NOT NULL);
UPDATE members AS m SET tier = s.shown FROM bench_saved AS s
WHERE m.program = $1 AND s.program = $1 AND s.member_id = m.member_id AND m.tier <> s.shown
"""

# Members whose tier now differs from the rule with grace 0 and highest_met: the highest
# tier entered, or the highest kept (retain met, no higher than before). $1 program,
# $2 as_of, $3 window, $4 thresholds, $5 retains, $6 scheme.
_CHECK = """
WITH measured AS (
    SELECT member_id, coalesce(sum(points) FILTER (WHERE earned_at <= $2
                                                   AND earned_at > $2 - $3::interval), 0) AS m
    FROM qualifying_points WHERE program = $1 GROUP BY member_id
),
expected AS (
    SELECT d.member_id, greatest(
        (SELECT max(x.r) - 1 FROM unnest($4::bigint[]) WITH ORDINALITY AS x(v, r)
         WHERE x.v <= d.m),
        least(coalesce(s.rank, 0),
              (SELECT max(x.r) - 1 FROM unnest($5::bigint[]) WITH ORDINALITY AS x(v, r)
               WHERE x.v <= d.m)))::integer AS rank, coalesce(s.rank, 0) AS before
    FROM measured AS d JOIN bench_saved AS s ON s.program = $1 AND s.member_id = d.member_id
)
SELECT count(*) FILTER (WHERE coalesce(t.rank, 0) <> e.rank) AS wrong,
       count(*) FILTER (WHERE e.rank > e.before) AS up,
       count(*) FILTER (WHERE e.rank < e.before) AS down,
       (SELECT count(*) FROM events WHERE program = $1 AND type = 'new_stage') AS events
FROM expected AS e
LEFT JOIN member_tiers AS t ON t.program = $1 AND t.scheme = $6 AND t.member_id = e.member_id
"""

_BASE_IDS = """SELECT member_id FROM members WHERE program = $1 AND member_id > $2
               ORDER BY member_id LIMIT $3"""
_BASE_READ = f"""
SELECT {
    measure_sql(
        program="$1", member="$2", currency="$3", at="$4::timestamptz", kind="$5", length="$6"
    )
} AS measure, t.rank
FROM (SELECT 1) AS one
LEFT JOIN member_tiers AS t ON t.program = $1 AND t.scheme = $7 AND t.member_id = $2
"""
_BASE_WRITE = """
WITH tier AS (
    INSERT INTO member_tiers (program, scheme, member_id, tier, rank, since)
    VALUES ($1, $2, $3, $4, $5, $6)
    ON CONFLICT (program, scheme, member_id) DO UPDATE
    SET tier = EXCLUDED.tier, rank = EXCLUDED.rank, since = EXCLUDED.since, below_since = NULL
    RETURNING 1
),
shown AS (
    UPDATE members SET tier = $4, updated_at = now() WHERE program = $1 AND member_id = $3
    RETURNING 1
)
INSERT INTO events (program, origin, event_id, type, member_id, payload, occurred_at)
VALUES ($1, 'engine', $7, 'new_stage', $3, $8, $6)
ON CONFLICT (program, origin, event_id) DO NOTHING
"""


class PeakMemory:
    """Peak RSS of this process and of one PostgreSQL backend, sampled on a thread."""

    def __init__(self, backend: int, every: float = 0.02) -> None:
        self.me, self.backend, self.every = psutil.Process(), psutil.Process(backend), every
        self.rss = self.backend_rss = self.backend_private = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.rss = max(self.rss, self.me.memory_info().rss)
            info = self.backend.memory_info()
            self.backend_rss = max(self.backend_rss, info.rss)
            self.backend_private = max(self.backend_private, info.rss - info.shared)
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


async def build(conn: Conn, program: Program, prefix: str, members: int, as_of: datetime) -> int:
    """The data set of one program; returns its qualifying_points rows."""
    scheme = program.tier_schemes[0]
    async with conn.transaction():
        status = await conn.execute(
            _BUILD_POINTS, program.name, prefix, as_of, members, scheme.currency_in(program),
            QUIET, CATCH_UP,
        )  # fmt: skip
        await conn.fetchrow(
            _BUILD_TIERS, program.name, as_of - PREVIOUS, SCHEME.window,
            [t.threshold for t in scheme.tiers], scheme.tier_names(), scheme.name,
        )  # fmt: skip
    return int(status.split()[-1])


async def check(conn: Conn, program: Program, as_of: datetime, label: str) -> tuple[int, int]:
    """Fail loudly unless every member's tier is the rule's; returns (promoted, demoted)."""
    scheme = program.tier_schemes[0]
    row = await conn.fetchrow(
        _CHECK, program.name, as_of, scheme.window, [t.threshold for t in scheme.tiers],
        [t.retain_threshold for t in scheme.tiers], scheme.name,
    )  # fmt: skip
    assert row is not None
    if row["wrong"] or row["events"] != row["up"] + row["down"]:
        raise SystemExit(f"{label}: WRONG TIERS: {dict(row.items())}")
    return row["up"], row["down"]


async def reset(conn: Conn, program: str) -> None:
    async with conn.transaction():
        # Without the foreign-key triggers: events.caused_by has no index, so checking that
        # no event was caused by each deleted one would scan the table once per row.
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(_RESET.replace("$1", f"'{program}'"))
    await conn.execute("VACUUM ANALYZE members, member_tiers, events, maintenance_runs")


def decide(scheme: TierScheme, measure: int, rank: int) -> int:
    """The baseline's rule in Python (grace 0): the tier entered, or the highest kept."""
    entry = max(r for r, t in enumerate(scheme.tiers) if t.threshold <= measure)
    if entry > rank:
        return entry
    kept = [r for r, t in enumerate(scheme.tiers[: rank + 1]) if t.retain_threshold <= measure]
    return rank if kept[-1] >= rank else (rank - 1 if scheme.demotion == "one_down" else kept[-1])


async def baseline(conn: Conn, program: Program, as_of: datetime) -> tuple[float, int, int]:
    """Members one by one from Python; returns (seconds, members, changes)."""
    scheme = program.tier_schemes[0]
    assert scheme.grace_period == timedelta(0)
    kind, length = scheme.window_sql_args()
    names, currency = scheme.tier_names(), scheme.currency_in(program)
    cursor, done, changes = "", 0, 0
    started = time.perf_counter()
    while True:
        async with conn.transaction():
            await conn.execute(
                f"SELECT pg_advisory_xact_lock({ledger.LEDGER_LOCK.format(program='$1')})",
                program.name,
            )
            ids = await conn.fetch(_BASE_IDS, program.name, cursor, BASE_TRANSACTION)
            for (member_id,) in ids:
                row = await conn.fetchrow(
                    _BASE_READ, program.name, member_id, currency, as_of, kind, length,
                    scheme.name,
                )  # fmt: skip
                assert row is not None
                rank = row["rank"] or 0
                new = decide(scheme, row["measure"], rank)
                if new != rank:
                    event = NewStage(
                        event_id=derived_id("new_stage", scheme.name, names[new], "maintenance",
                                            as_of.isoformat(), member_id),
                        member_id=member_id, program=program.name, occurred_at=as_of,
                        from_tier=names[rank], to_tier=names[new],
                        direction="up" if new > rank else "down", cause="maintenance",
                        scheme=scheme.name,
                    )  # fmt: skip
                    await conn.execute(
                        _BASE_WRITE, program.name, scheme.name, member_id, names[new], new,
                        as_of, event.event_id, event.model_dump(mode="json"),
                    )  # fmt: skip
                    changes += 1
        if not ids:
            return time.perf_counter() - started, done, changes
        done += len(ids)
        cursor = ids[-1]["member_id"]


async def explain(conn: Conn, as_of: datetime, chunk: int, after: str) -> None:
    """EXPLAIN (ANALYZE, BUFFERS) of one chunk statement after member ``after``, rolled back.

    Through auto_explain, so that the chunk runs exactly as `maintenance.run_chunk` binds it.
    """
    plans: list[str] = []

    def listen(_: object, message: Any) -> None:
        if "maintenance_runs" not in message.message:
            plans.append(message.message)

    transaction = conn.transaction()
    await transaction.start()
    conn.add_log_listener(listen)
    try:
        run = await maintenance.start_run(conn, SUBJECT.name, SCHEME.name, as_of)
        await conn.execute("UPDATE maintenance_runs SET cursor = $2 WHERE id = $1", run.id, after)
        await conn.execute(
            """LOAD 'auto_explain'; SET LOCAL client_min_messages = log;
               SET LOCAL auto_explain.log_min_duration = 0; SET LOCAL auto_explain.log_analyze = on;
               SET LOCAL auto_explain.log_buffers = on"""
        )
        await maintenance.run_chunk(conn, SUBJECT, SCHEME, run, chunk)
    finally:
        await transaction.rollback()
        conn.remove_log_listener(listen)
    lines = next(p for p in plans if "WITH chunk AS" in p).splitlines()
    start = next(i for i, line in enumerate(lines) if "(cost=" in line and line[0] != " ")
    console.print(f"EXPLAIN (ANALYZE, BUFFERS) of one chunk of {chunk:,} after {after!r}:")
    console.print("\n".join([lines[0], *lines[start:]]), markup=False, highlight=False)


async def subject(conn: Conn, as_of: datetime, chunk: int, members: int) -> dict[str, Any]:
    """One full maintenance run, timed and memory-sampled, then checked and reset."""
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    with console.status(f"run_maintenance, chunk {chunk:,}"), PeakMemory(backend) as peak:
        started = time.perf_counter()
        run = await maintenance.run_maintenance(conn, SUBJECT, SCHEME, as_of, chunk=chunk)
        seconds = time.perf_counter() - started
    if run.scanned != members:
        raise SystemExit(f"chunk {chunk}: scanned {run.scanned:,} of {members:,} members")
    up, down = await check(conn, SUBJECT, as_of, f"chunk {chunk}")
    if (up, down) != (run.promoted, run.demoted):
        raise SystemExit(
            f"chunk {chunk}: run counted {run.promoted}/{run.demoted}, rule {up}/{down}"
        )
    result = {
        "chunk": chunk, "seconds": seconds, "rate": members / seconds, "chunks": run.chunks,
        "promoted": up, "demoted": down, "rss": peak.rss / 2**20,
        "backend_rss": peak.backend_rss / 2**20, "backend_private": peak.backend_private / 2**20,
    }  # fmt: skip
    console.print(
        f"chunk {chunk:,}: {seconds:.2f} s, {result['rate']:,.0f} members/s, {run.chunks} chunks,"
        f" promoted {up:,}, demoted {down:,} ({(up + down) / members:.1%}); peak RSS: worker"
        f" {result['rss']:.0f} MB, its backend {result['backend_rss']:.0f} MB"
        f" ({result['backend_private']:.0f} MB not shared); checked"
    )
    with console.status("resetting the changed rows"):
        await reset(conn, SUBJECT.name)
    return result


async def bench(pg: EmbeddedPostgres, args: argparse.Namespace) -> Table:
    dsn = await pg.ensure_database("bench")
    await prepare_database(dsn, LoyaltyApp(programs=[SUBJECT, BASE]))
    as_of = datetime.now(UTC).replace(microsecond=0)
    conn = await connect(dsn)
    try:
        with console.status(f"building {args.members:,} + {args.sample:,} members"):
            started = time.perf_counter()
            points = await build(conn, SUBJECT, "m", args.members, as_of)
            await build(conn, BASE, "b", args.sample, as_of)
            await conn.execute(_SAVE)
            await conn.execute("VACUUM ANALYZE")
        console.print(
            f"setup (not a subject): {time.perf_counter() - started:.1f} s; {args.members:,}"
            f" members, {points:,} qualifying_points rows. No lots or ledger rows: maintenance"
            " reads members, member_tiers and qualifying_points only."
        )
        if args.explain:
            await explain(conn, as_of, args.chunk[0], f"m{args.members // 2:07d}")
        runs = [await subject(conn, as_of, chunk, args.members) for chunk in args.chunk]

        with console.status(f"baseline: {args.sample:,} members one by one"):
            seconds, done, changes = await baseline(conn, BASE, as_of)
        up, down = await check(conn, BASE, as_of, "baseline")
        if (done, up + down) != (args.sample, changes):
            raise SystemExit(f"baseline: {done} members, {changes} changes; rule {up}+{down}")
        base_rate = done / seconds
        console.print(
            f"baseline: {seconds:.2f} s for {done:,} members, {base_rate:,.0f} members/s,"
            f" {changes:,} changes ({changes / done:.1%}); checked. EXTRAPOLATED to"
            f" {args.members:,} members: {args.members / base_rate:,.0f} s"
        )
        if args.lots:
            import ledger as ledger_bench  # bench/ledger.py, beside this script

            await ledger_bench.bench_bulk(conn, args.lots, as_of)
        else:
            console.print(
                "housekeeping over 1,000,000 lots (mature_due, expire_due): see bench/ledger.py"
                " (`python bench/ledger.py`) and bench/RESULTS.md, or run this with --lots N"
            )
        settings = await conn.fetch(
            """SELECT name, current_setting(name) AS value FROM pg_settings WHERE name IN
               ('server_version', 'shared_buffers', 'work_mem')"""
        )
    finally:
        await conn.close()

    table = Table(title=f"tier maintenance: {args.members:,} members, as_of {as_of:%Y-%m-%d}")
    for name in ("chunk", "seconds", "members/s", "changes", "worker RSS", "backend RSS",
                 "ratio", "goals: 60 s/1M, 300 MB, 20x"):  # fmt: skip
        table.add_column(name, justify="right")
    per_million = 1_000_000 / args.members
    for r in runs:
        ratio = r["rate"] / base_rate
        met = r["seconds"] * per_million < 60, r["rss"] < 300, ratio >= 20
        table.add_row(
            f"{r['chunk']:,}", f"{r['seconds']:.2f}", f"{r['rate']:,.0f}",
            f"{r['promoted']:,}↑ {r['demoted']:,}↓", f"{r['rss']:.0f} MB",
            f"{r['backend_rss']:.0f} MB", f"{ratio:.0f}x",
            " / ".join("met" if m else "NOT met" for m in met),
        )  # fmt: skip
    memory = psutil.virtual_memory().total / 2**30
    table.caption = (
        f"baseline: members one by one, {base_rate:,.0f} members/s on a {args.sample:,}-member"
        f" sample, extrapolated. Worker ru_maxrss over the whole process:"
        f" {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB.\n"
        f"{platform.processor() or platform.machine()}, nproc {os.cpu_count()}, memory"
        f" {memory:.1f} GiB; PostgreSQL " + ", ".join(f"{r['name']} {r['value']}" for r in settings)
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, nargs="+", default=[10_000, 5_000, 50_000],
                        help="chunk sizes to run, one full run each")  # fmt: skip
    parser.add_argument("--sample", type=int, default=20_000, help="baseline members")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN one chunk first")
    parser.add_argument("--lots", type=int, default=0, help="also bench/ledger.py's bulk step")
    args = parser.parse_args()
    if min(args.members, args.sample, *args.chunk) < 1 or args.members > 9_999_999:
        parser.error("--members (at most 9,999,999), --sample and --chunk must be positive")
    folder = Path(tempfile.mkdtemp(prefix="lfm", dir="/tmp"))  # short: the socket's path
    pg = EmbeddedPostgres(folder / "pg")
    try:
        with console.status("starting embedded PostgreSQL"):
            pg.start()
        console.print(asyncio.run(bench(pg, args)))
    finally:
        with console.status("stopping embedded PostgreSQL"):
            pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
