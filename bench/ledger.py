"""Benchmark: the ledger's writes, on a fresh embedded PostgreSQL, in one run.

1. Awards: N `ledger.award` calls (kind available, with an expiry), one transaction
   each, over 2,000 members whose accounts exist (an untimed warm-up award per member,
   then ANALYZE), from one connection, then from 4 concurrent connections that split
   the members.
   Baseline: a bare one-row INSERT per transaction into a plain table, same shapes.
   Goal: awards at no less than 50% of the baseline's transactions/s.
2. Bulk: L earned lots (5 per member), created set-based, then `maturing.mature_due`
   and `maturing.expire_due` over all of them. Goal: each under 10 s per 1,000,000
   lots. Baseline: maturing one member per transaction (account lookup, one statement
   marking the member's due lots usable and writing two legs) over 2,000 other members,
   extrapolated to L.
Balances are checked after every step. Run: `make bench`, or `python bench/ledger.py`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from loyalty import ledger
from loyalty.app import Program
from loyalty.ledger import maturing
from loyalty.store.db import Conn, create_pool, prepare_database
from loyalty.store.embedded import EmbeddedPostgres

MEMBERS = 2_000  # of the awards, and of the maturing baseline's sample
WORKERS = 4
LOTS_PER_MEMBER = 5
MEMBERS_PER_TRANSACTION = 2_000  # 10,000 lots per setup ledger transaction
COLUMNS = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
console = Console()

Call = Callable[[Conn, int], Awaitable[None]]

_BASELINE_TABLE = """CREATE TABLE bench_baseline (id bigserial PRIMARY KEY, member_id text,
    points bigint, key text UNIQUE, at timestamptz)"""
_BASELINE_INSERT = "INSERT INTO bench_baseline (member_id, points, key, at) VALUES ($1, $2, $3, $4)"

_SETUP_ACCOUNTS = """
INSERT INTO accounts (program, member_id, currency, kind)
SELECT 'default', $1::text || m, 'points', kind
FROM generate_series(0, $2::int - 1) AS m, unnest(ARRAY['earned', 'available']) AS kind
UNION ALL SELECT 'default', NULL, 'points', 'issued'
ON CONFLICT DO NOTHING
"""

# One ledger transaction per 2,000 members; its legs (each member's earned account, and
# `issued` for the total) balance within the one INSERT, as the statement trigger wants.
_SETUP_LOTS = """
WITH chunk AS (
    INSERT INTO ledger_transactions (program, idempotency_key, kind, reason, source, occurred_at)
    SELECT 'default', 'setup:' || $1::text || ':' || c, 'award_earned', 'bench', 'bench', $3
    FROM generate_series(0, ($2::int - 1) / $6::int) AS c
    RETURNING id, idempotency_key
),
planned AS (
    SELECT a.id AS account_id, p.id AS pocket, chunk.id AS transaction_id,
           1 + (m + k) % 10 AS points
    FROM generate_series(0, $2::int - 1) AS m
    JOIN accounts AS a ON a.program = 'default' AND a.member_id = $1::text || m
                      AND a.currency = 'points' AND a.kind = 'earned'
    JOIN accounts AS p ON p.program = 'default' AND p.member_id = a.member_id
                      AND p.currency = 'points' AND p.kind = 'available'
    JOIN chunk ON chunk.idempotency_key = 'setup:' || $1::text || ':' || (m / $6::int)
    CROSS JOIN generate_series(1, $7::int) AS k
),
legs AS (
    INSERT INTO ledger_legs (transaction_id, account_id, amount)
    SELECT transaction_id, account_id, sum(points) FROM planned GROUP BY 1, 2
    UNION ALL
    SELECT transaction_id, (SELECT id FROM accounts WHERE program = 'default'
                            AND member_id IS NULL AND currency = 'points' AND kind = 'issued'),
           -sum(points)
    FROM planned GROUP BY 1
    RETURNING 1
),
new_lots AS (
    INSERT INTO lots (account_id, transaction_id, amount, remaining, available_at, expires_at)
    SELECT pocket, transaction_id, points, points, $4, $5
    FROM planned
    RETURNING amount
)
SELECT count(*) AS lots, coalesce(sum(amount), 0)::bigint AS points FROM new_lots
"""

# The baseline: what a per-member maturing job writes for one member: each due lot marked
# usable (available_at NULL: available whatever the cut-off), and two legs.
_MATURE_ONE = """
WITH moved AS (
    UPDATE lots SET available_at = NULL
    WHERE account_id = $2 AND available_at IS NOT NULL AND remaining > 0 AND available_at <= $3
    RETURNING remaining
),
tx AS (
    INSERT INTO ledger_transactions (program, idempotency_key, member_id, kind, reason, source,
                                     occurred_at)
    SELECT 'default', $4, $5, 'mature', 'earned points matured', 'bench', $3
    WHERE EXISTS (SELECT 1 FROM moved)
    RETURNING id
),
legs AS (
    INSERT INTO ledger_legs (transaction_id, account_id, amount)
    SELECT tx.id, leg.account_id, leg.sign * s.points
    FROM tx, (SELECT sum(remaining) AS points FROM moved) AS s,
         (VALUES ($1::bigint, -1), ($2::bigint, 1)) AS leg(account_id, sign)
    RETURNING 1
)
SELECT count(*) FROM moved
"""

# Member accounts matched by the pattern: balance against lots, totals; the whole ledger.
_CHECK = """
SELECT count(*) FILTER (WHERE a.balance <> coalesce(l.held, 0)) AS wrong,
       coalesce(sum(a.balance) FILTER (WHERE a.kind = 'earned'), 0)::bigint AS earned,
       coalesce(sum(a.balance) FILTER (WHERE a.kind = 'available'), 0)::bigint AS available,
       (SELECT coalesce(sum(amount), 0) FROM ledger_legs)::bigint AS all_legs,
       (SELECT coalesce(sum(g.amount), 0) FROM ledger_legs AS g JOIN accounts AS e
        ON e.id = g.account_id AND e.kind = 'expired')::bigint AS expired
FROM accounts AS a
LEFT JOIN (SELECT member_id, state, sum(held) AS held FROM lot_states
           WHERE program = 'default' AND currency = 'points' AND member_id LIKE $1
           GROUP BY 1, 2) AS l
       ON l.member_id = a.member_id AND l.state = a.kind
WHERE a.program = 'default' AND a.member_id LIKE $1
"""


def points(i: int) -> int:
    return 1 + i % 7  # of award i


def award_call(prefix: str, now: datetime) -> Call:
    async def call(conn: Conn, i: int) -> None:
        async with conn.transaction():
            await ledger.award(
                conn, program="default", member_id=f"a{i % MEMBERS}", points=points(i),
                kind="available", currency="points", reason="bench", source="bench",
                key=f"{prefix}-{i}", occurred_at=now, available_at=now,
                expires_at=now + timedelta(days=365),
            )  # fmt: skip

    return call


def insert_call(prefix: str, now: datetime) -> Call:
    async def call(conn: Conn, i: int) -> None:
        async with conn.transaction():
            await conn.execute(_BASELINE_INSERT, f"a{i % MEMBERS}", points(i), f"{prefix}-{i}", now)

    return call


async def run(label: str, pool: asyncpg.Pool, call: Call, n: int, workers: int) -> float:
    """Calls 0..n-1, split by member over `workers` connections; returns calls/s."""
    shares = [[i for i in range(n) if i % MEMBERS % workers == w] for w in range(workers)]
    with Progress(*COLUMNS, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(label, total=n)

        async def work(share: list[int]) -> None:
            async with pool.acquire() as conn:
                for i in share:
                    await call(conn, i)
                    progress.advance(task)

        started, cpu = time.perf_counter(), time.process_time()
        await asyncio.gather(*(work(share) for share in shares))
        rate = n / (time.perf_counter() - started)
    # The benchmark's own process shares the two cores with PostgreSQL: say how much.
    client = (time.process_time() - cpu) * 1000 / n
    console.print(f"{label}: {rate:,.0f}/s, client CPU {client:.3f} ms per call")
    return rate


async def bench_awards(pool: asyncpg.Pool, n: int, now: datetime) -> list[tuple[str, float, float]]:
    """Awards against bare INSERTs, one then four connections; returns (shape, a/s, b/s)."""
    async with pool.acquire() as conn:
        await conn.execute(_BASELINE_TABLE)
    await run(
        "warm-up: one award per member (not timed)", pool, award_call("w", now), MEMBERS, WORKERS
    )
    await run("warm-up: bare INSERTs (not timed)", pool, insert_call("w", now), MEMBERS, WORKERS)
    async with pool.acquire() as conn:
        # Statistics as autovacuum keeps them: the ledger trigger's cached plan for
        # accounts, made while it was empty, would otherwise scan the table at every award.
        await conn.execute("ANALYZE")
    results = []
    for workers in (1, WORKERS):
        shape = f"{workers} conn"
        award = await run(f"award(), {shape}", pool, award_call(f"c{workers}", now), n, workers)
        bare = await run(f"bare INSERT, {shape}", pool, insert_call(f"c{workers}", now), n, workers)
        results.append((shape, award, bare))
    expected = {f"a{m}": 0 for m in range(MEMBERS)}
    for count in (MEMBERS, n, n):
        for i in range(count):
            expected[f"a{i % MEMBERS}"] += points(i)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT member_id, balance FROM accounts"
            " WHERE kind = 'available' AND member_id LIKE 'a%'"
        )
        inserted = await conn.fetchval("SELECT count(*) FROM bench_baseline")
    if {r["member_id"]: r["balance"] for r in rows} != expected or inserted != MEMBERS + 2 * n:
        raise SystemExit("AWARDS: member balances or baseline rows are not what was written")
    console.print(f"awards verified: {len(expected):,} balances, {MEMBERS + 2 * n:,} rows")
    return results


async def check(conn: Conn, like: str, step: str, earned: int, avail: int, expired: int) -> None:
    """Fail loudly unless every matched account equals its lots and the totals are these."""
    row = await conn.fetchrow(_CHECK, like)
    assert row is not None
    got, want = tuple(row.values()), (0, earned, avail, 0, expired)
    if got != want:
        raise SystemExit(
            f"{step}: WRONG BALANCES for {like}: (accounts unlike their lots, earned, available, "
            f"sum of all legs, expired account) = {got}, expected {want}"
        )
    console.print(f"{step}: verified, earned {earned:,}, available {avail:,}, expired {expired:,}")


async def create_lots(conn: Conn, prefix: str, members: int, now: datetime, ends: datetime) -> int:
    """Earned lots, due since 30 days, 5 per member; returns their points."""
    async with conn.transaction():
        await conn.execute(_SETUP_ACCOUNTS, prefix, members)
        row = await conn.fetchrow(
            _SETUP_LOTS, prefix, members, now, now - timedelta(days=30), ends,
            MEMBERS_PER_TRANSACTION, LOTS_PER_MEMBER,
        )  # fmt: skip
    assert row is not None
    total: int = row["points"]
    return total


async def timed(label: str, step: Awaitable[maturing.BulkResult], lots: int, pts: int) -> float:
    """Time one bulk step; fail loudly unless it took exactly these lots and points."""
    with console.status(label):
        started = time.perf_counter()
        result = await step
        seconds = time.perf_counter() - started
    console.print(f"{label}: {seconds:.2f} s, {result.lots:,} lots, {result.points:,} points")
    if (result.lots, result.points) != (lots, pts):
        raise SystemExit(f"{label}: took {result.lots} lots, {result.points} points")
    return seconds


async def expire_one(conn: Conn, at: datetime) -> maturing.BulkResult:
    (result,) = await maturing.expire_due(conn, Program(name="default"), at)
    return result


async def bench_bulk(conn: Conn, lots: int, now: datetime) -> tuple[float, float, float]:
    """Returns (mature_due s, expire_due s, per-member baseline s extrapolated to `lots`)."""
    members = lots // LOTS_PER_MEMBER
    with console.status(f"creating {(members + MEMBERS) * LOTS_PER_MEMBER:,} lots"):
        started = time.perf_counter()
        total = await create_lots(conn, "b", members, now, now + timedelta(days=1))
        sample = await create_lots(conn, "s", MEMBERS, now, now + timedelta(days=30))
        await conn.execute("VACUUM ANALYZE")
    console.print(f"setup (not a subject): {time.perf_counter() - started:.1f} s")
    await check(conn, "b%", "setup", total, 0, 0)

    with Progress(*COLUMNS, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("baseline: maturing one member per transaction", total=MEMBERS)
        started = time.perf_counter()
        for m in range(MEMBERS):
            async with conn.transaction():
                found = await ledger.find_accounts(
                    conn, "default", "points", f"s{m}", ["earned", "available"], []
                )
                earned, available = found[(f"s{m}", "earned")][0], found[(f"s{m}", "available")][0]
                await conn.fetchval(_MATURE_ONE, earned, available, now, f"mature-s{m}", f"s{m}")
            progress.advance(task)
        baseline = (time.perf_counter() - started) * members / MEMBERS
    await check(conn, "s%", "baseline maturing", 0, sample, 0)

    n = members * LOTS_PER_MEMBER
    mature = await timed("mature_due", maturing.mature_due(conn, "default", now), n, total)
    await check(conn, "b%", "after mature_due", 0, total, 0)
    expire = await timed("expire_due", expire_one(conn, now + timedelta(days=2)), n, total)
    await check(conn, "b%", "after expire_due", 0, 0, total)
    await check(conn, "s%", "sample after expire_due", 0, sample, total)
    return mature, expire, baseline


async def bench(pg: EmbeddedPostgres, awards: int, lots: int) -> Table:
    dsn = await pg.ensure_database("bench")
    await prepare_database(dsn)
    now = datetime.now(UTC)
    pool = await create_pool(dsn, size=WORKERS)
    try:
        award_rows = await bench_awards(pool, awards, now)
        async with pool.acquire() as conn:
            mature, expire, baseline = await bench_bulk(conn, lots, now)
            settings = await conn.fetch(
                """SELECT name, current_setting(name) AS value FROM pg_settings WHERE name IN
                   ('server_version', 'shared_buffers', 'work_mem', 'max_wal_size')"""
            )
    finally:
        await pool.close()
    per_million = 1_000_000 / (lots // LOTS_PER_MEMBER * LOTS_PER_MEMBER)
    rows = [
        (f"award, {shape}", f"{award:,.0f} tx/s", f"{bare:,.0f} tx/s", f"{award / bare:.0%}",
         award / bare >= 0.5, "≥ 50%")
        for shape, award, bare in award_rows
    ] + [
        (name, f"{sec:.2f} s ({sec * per_million:.1f} s/1M)",
         f"{baseline:.1f} s", f"{baseline / sec:.0f}x", sec * per_million < 10, "< 10 s/1M")
        for name, sec in (("mature_due", mature), ("expire_due", expire))
    ]  # fmt: skip
    table = Table(title=f"ledger: {awards:,} awards per shape; {lots:,} lots")
    for name in ("measure", "subject", "baseline", "ratio", "goal met"):
        table.add_column(name, justify="right" if name == "ratio" else "left")
    for measure, subject, base, ratio, met, goal in rows:
        table.add_row(measure, subject, base, ratio, f"{'yes' if met else 'no'} ({goal})")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    table.caption = (
        "baselines: awards, a bare one-row INSERT per transaction; bulk, maturing one member "
        "per transaction, extrapolated.\n"
        f"nproc {os.cpu_count()}, memory {memory:.1f} GiB; PostgreSQL "
        + ", ".join(f"{r['name']} {r['value']}" for r in settings)
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--awards", type=int, default=20_000, help="awards per shape")
    parser.add_argument("--lots", type=int, default=1_000_000, help="lots to mature and expire")
    args = parser.parse_args()
    if args.awards < 1 or args.lots < LOTS_PER_MEMBER:
        parser.error(f"--awards must be at least 1 and --lots at least {LOTS_PER_MEMBER}")
    folder = Path(tempfile.mkdtemp(prefix="lfl", dir="/tmp"))  # short: the socket's path
    pg = EmbeddedPostgres(folder / "pg")
    try:
        with console.status("starting embedded PostgreSQL"):
            pg.start()
        console.print(asyncio.run(bench(pg, args.awards, args.lots)))
    finally:
        with console.status("stopping embedded PostgreSQL"):
            pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
