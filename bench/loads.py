"""The loads of a real loyalty program, on the router's batch alone: where the time goes.

Builds a fresh embedded PostgreSQL, the app `bench.ingest_app.LOADS_APP` (programs with
and without tiers, several earn rules, a ``PointsAbove`` flow) and, per load of
`bench.workloads`, --events events over --members members. Then applies them as the
router does (`loyalty.router.processing.process_batch`, batches of --batch), until the
inbox of the program is empty, derived events included. No Temporal: this is the
database work of the router, the part that events/s depends on. bench/ingest.py
measures the same loads end to end.

Loads (each its own program, so each starts from an empty ledger; see `bench.workloads`):

* ``purchases, no tiers``: the baseline of the ratios;
* ``purchases, tiers``: one tier scheme (bronze 0, silver 50, gold 150, lifetime);
* ``deposits, no tiers``: ``points_deposit`` (available and earned);
* ``mixed, tiers``: deposits, withdrawals (some larger than the balance), purchases with
  and without points, logins;
* ``purchases, tiers and PointsAbove``: the tier scheme and a flow on ``PointsAbove(100)``.

For each load it prints events/s (client events over the time to apply them and what
they derive), the ratio to the first load, and the time spent per part of the batch
(measured by wrapping the router's functions in this process), with the batches redone
carefully after a refusal and the members the fast path handed back. Run:
``.venv/bin/python bench/loads.py`` (about two minutes); ``--check`` compares each
load's ledger with the same events applied one at a time and verifies it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.ingest_app

from bench.ingest_app import LOADS_APP
from bench.workloads import LOADS, Load
from loyalty.ingest import derived
from loyalty.ingest.inbox import insert_events
from loyalty.ledger import audit
from loyalty.router import bulk, processing
from loyalty.store.db import Conn, connect, prepare_database
from loyalty.store.embedded import EmbeddedPostgres
from loyalty.tiers import promotion

console = Console()


@dataclass
class Timings:
    """Seconds per wrapped function, and counts, for one load."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    counts: Counter[str] = field(default_factory=Counter)


def instrument(timings: list[Timings]) -> None:
    """Wrap the router's parts so each load's time is split between them."""

    def wrap(owner: Any, name: str, label: str, by_type: bool = False) -> None:
        real = getattr(owner, name)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            key = label
            if by_type:
                event = next(a for a in args if hasattr(a, "type"))
                key = f"{label} {event.type}"
            start = time.perf_counter()
            try:
                return await real(*args, **kwargs)
            finally:
                timings[-1].seconds[key] += time.perf_counter() - start
                timings[-1].counts[key] += 1

        setattr(owner, name, timed)

    wrap(processing, "claim_batch", "claim")
    wrap(bulk, "apply_bulk", "fast path")
    wrap(processing.EventProcessor, "apply", "one by one", by_type=True)
    wrap(promotion, "promote", "  of which promote")
    wrap(promotion, "record_qualifying", "  of which qualifying points")
    wrap(derived, "record_caused_by", "  of which derived events")
    wrap(processing, "record_outcomes", "outcomes")
    wrap(processing, "record_journeys", "journey outbox")
    wrap(processing, "record_signals", "signals outbox")
    redo = processing._RedoCarefully

    original = processing.process_batch

    async def batch(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("careful"):
            timings[-1].counts["batches redone carefully"] += 1
        return await original(*args, **kwargs)

    processing.process_batch = batch
    assert redo is processing._RedoCarefully
    real_bulk = bulk.apply_bulk

    async def counted(*args: Any, **kwargs: Any) -> bulk.BulkResult:
        result = await real_bulk(*args, **kwargs)
        timings[-1].counts["events on the fast path"] += len(result.outcomes) + len(result.derived)
        timings[-1].counts["members handed back"] += len(result.fallback)
        return result

    bulk.apply_bulk = counted


async def apply_all(conn: Conn, program: str, batch: int, use_bulk: bool = True) -> int:
    """Apply every pending event of the program; returns the number of batches."""
    processor = processing.EventProcessor(LOADS_APP)
    batches = 0
    while True:
        progress = await processing.process_batch(
            conn, processor, program=program, partitions=1, partition=0, batch_size=batch,
            max_attempts=3, task_queue="bench", use_bulk=use_bulk,
        )  # fmt: skip
        if not progress.events:
            return batches
        batches += 1


@dataclass
class Result:
    load: Load
    events: int
    seconds: float
    batches: int
    timings: Timings


async def run_load(
    conn: Conn, load: Load, prefix: str, args: argparse.Namespace, timings: Timings
) -> Result:
    events = list(load.make(prefix, args.events, args.members, load.program))
    for start in range(0, len(events), 5_000):
        await insert_events(conn, events[start : start + 5_000])
    await conn.execute("ANALYZE")
    started = time.perf_counter()
    batches = await apply_all(conn, load.program, args.batch)
    return Result(load, len(events), time.perf_counter() - started, batches, timings)


async def check(conn: Conn, load: Load, prefix: str, args: argparse.Namespace) -> None:
    """Apply the load's events one at a time in the program's twin and compare."""
    twin = f"{load.program}_ref"
    events = list(load.make(prefix, args.events, args.members, twin))
    await insert_events(conn, events)
    await apply_all(conn, twin, args.batch, use_bulk=False)
    for table, sql in {
        "legs": """SELECT t.idempotency_key, a.member_id, a.kind, g.amount
                   FROM ledger_legs AS g JOIN ledger_transactions AS t ON t.id = g.transaction_id
                   JOIN accounts AS a ON a.id = g.account_id WHERE t.program = $1""",
        "outcomes": "SELECT event_id, status, outcome, detail FROM events WHERE program = $1",
    }.items():
        ours, theirs = [await _rows(conn, sql, program) for program in (load.program, twin)]
        if ours != theirs:
            only_ours = [r for r in ours if r not in set(theirs)][:5]
            only_theirs = [r for r in theirs if r not in set(ours)][:5]
            raise SystemExit(
                f"{load.name}: {table} differ from one by one: fast path only {only_ours}; "
                f"one by one only {only_theirs}"
            )


async def _rows(conn: Conn, sql: str, program: str) -> list[tuple[Any, ...]]:
    """The rows, sorted, with the program's name taken out of texts (a refusal's detail
    names it). Sorted by repr: program accounts have no member_id, and None does not sort."""
    return sorted(
        (
            tuple(v.replace(f"program {program}", "program P") if isinstance(v, str) else v
                  for v in r.values())
            for r in await conn.fetch(sql, program)
        ),
        key=repr,
    )  # fmt: skip


def report(results: list[Result]) -> None:
    base = results[0].events / results[0].seconds
    table = Table(title="Router batches by load (events/s from inbox to applied)")
    for column in ("load", "events", "events/s", "vs first", "batches", "redone", "fast path",
                   "handed back"):  # fmt: skip
        table.add_column(column, justify="left" if column == "load" else "right")
    for r in results:
        rate = r.events / r.seconds
        table.add_row(
            r.load.name, f"{r.events:,}", f"{rate:,.0f}", f"{rate / base:.2f}", str(r.batches),
            str(r.timings.counts["batches redone carefully"]),
            f"{r.timings.counts['events on the fast path']:,}",
            f"{r.timings.counts['members handed back']:,}",
        )  # fmt: skip
    console.print(table)
    split = Table(title="Where the time goes (seconds, calls)")
    split.add_column("part")
    for r in results:
        split.add_column(r.load.name, justify="right")
    parts = sorted({p for r in results for p in r.timings.seconds})
    for part in parts:
        split.add_row(
            part,
            *(
                f"{r.timings.seconds[part]:.2f} ({r.timings.counts[part]:,})"
                if part in r.timings.seconds else "-"
                for r in results
            ),
        )  # fmt: skip
    split.add_row("total", *(f"{r.seconds:.2f}" for r in results))
    console.print(split)


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="loyalty-loads-") as home:
        server = EmbeddedPostgres(Path(home) / "postgres")
        server.start()
        try:
            dsn = await server.ensure_database()
            await prepare_database(dsn, LOADS_APP)
            conn = await connect(dsn)
            timings: list[Timings] = []
            instrument(timings)
            results = []
            try:
                for n, load in enumerate(LOADS):
                    if args.only and args.only not in load.name:
                        continue
                    timings.append(Timings())
                    console.print(f"[bold]{load.name}[/]: {args.events:,} events …")
                    result = await run_load(conn, load, f"l{n}", args, timings[-1])
                    results.append(result)
                    if args.check:
                        await check(conn, load, f"l{n}", args)
                report(results)
                verified = await audit.verify(conn)
                console.print("loyalty verify: " + ("clean" if verified.ok else "DIFFERENCES"))
                if not verified.ok:
                    raise SystemExit(1)
            finally:
                await conn.close()
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--only", default="", help="Only the loads whose name contains this.")
    parser.add_argument("--check", action="store_true", help="Compare with one by one.")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
