"""The loads phase of bench/ingest.py: issue 13's table, end to end on one `loyalty dev`.

After a warm-up that is not timed (--load-warmup purchases and logins in program
``default``, members of their own), for each load of `bench.workloads` in turn (rows 1
to 5, each in its own program of `bench.ingest_app.LOADS_APP`, so each starts from an
empty ledger): --load-events events over --load-members members, emitted by one
`LoyaltyClient.emit_many` call (chunks of 5,000), then `LoyaltyClient.wait` for all of
them, then until the program's inbox holds nothing pending (the ``new_stage`` and
``points_above`` events they derive). The rate is the client events over that time. Not
timed, afterwards: until every journey the load triggered (``AlmostThere``) has started,
then the checks.

Checks after each load (any failure exits with an error): every client event has the
outcome `bench.workloads.expect` gives it (applied, no effect, or refused as
``insufficient_points`` / ``unknown_member``) and nothing of the program is pending or
dead; ``available`` and ``earned`` balances, the number of ledger transactions, the
members' tiers, the ``new_stage`` and ``points_above`` events and the journeys are what
the load implies; `loyalty.ledger.audit.verify` finds no difference.

Beside the rate, from the database: events derived, refused, the router's batches
(``router_totals``), and the transactions PostgreSQL rolled back during the load
(``pg_stat_database.xact_rollback``; nothing else rolls back here, so these are the
router's batches redone one event per savepoint after a refusal, and transient errors).
The events the router applied one at a time or on its fast path are read from
``router_totals.one_by_one`` and ``router_totals.fast_path`` once the router counts them;
until then they print as n/a.

Goals (issue 13): every row at least 0.8 times row 1, and the mixed load at least
5,000 events/s.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

from rich.table import Table

from bench.emit import console
from bench.ingest_app import LOADS_APP, THRESHOLD
from bench.workloads import LOADS, Expected, Load, expect, purchases
from loyalty.events import AnyEvent
from loyalty.ledger import audit
from loyalty.store.db import Conn
from starter import LoyaltyClient

GOAL_RATIO = 0.8
GOAL_MIXED = 5_000.0
MIXED = "mixed, tiers"
EMIT_CHUNK = 5_000
FALLBACK_COLUMNS = ("one_by_one", "fast_path")
# Backends report their counters to pg_stat_database within a second of going idle.
STATS_DELAY_SECONDS = 2.0
LISTED = 5
# The warm-up's program: ``default`` of `bench.ingest_app.app`, with members of its own.
WARM_UP_PROGRAM = "default"


@dataclass
class LoadRun:
    """One row of the table: the load, its timing and what the router did."""

    row: int
    load: Load
    events: int
    members: int
    seconds: float
    emit_seconds: float
    derived: int
    rejected: int
    batches: int
    rolled_back: int
    journeys: int
    one_by_one: int | None
    fast_path: int | None

    @property
    def rate(self) -> float:
        return self.events / self.seconds


async def _rollbacks(conn: Conn) -> int:
    sql = "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    return int(await conn.fetchval(sql))


async def _counts_fallbacks(conn: Conn) -> bool:
    """Whether the router counts the events it applied one at a time and in bulk."""
    found = await conn.fetchval(
        """SELECT count(*) FROM pg_attribute
           WHERE attrelid = to_regclass('router_totals') AND attname = ANY($1::text[])
             AND NOT attisdropped""",
        list(FALLBACK_COLUMNS),
    )
    return found == len(FALLBACK_COLUMNS)


async def wait_settled(conn: Conn, program: str, limit: float) -> None:
    """Poll (every 0.05 s) until nothing of the program is pending, derived events too."""
    deadline = time.monotonic() + limit
    sql = "SELECT count(*) FROM events WHERE program = $1 AND status = 'pending'"
    while await conn.fetchval(sql, program):
        if time.monotonic() > deadline:
            raise SystemExit(f"program {program}: events still pending after {limit:.0f} s")
        await asyncio.sleep(0.05)


async def _wait_journeys(conn: Conn, program: str, limit: float) -> int:
    """Wait until every journey the program's events triggered started; their number."""
    deadline = time.monotonic() + limit
    sql = """SELECT count(*) AS n, count(*) FILTER (WHERE started_at IS NULL) AS waiting
             FROM journey_starts WHERE program = $1"""
    while (row := await conn.fetchrow(sql, program))["waiting"]:
        if time.monotonic() > deadline:
            raise SystemExit(f"program {program}: {row['waiting']} journeys not started")
        await asyncio.sleep(0.2)
    return int(row["n"])


def _differences(label: str, want: dict[str, object], got: dict[str, object]) -> list[str]:
    wrong = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if not wrong:
        return []
    shown = ", ".join(f"{k}: {got.get(k)} for {want.get(k)}" for k in wrong[:LISTED])
    return [f"{len(wrong)} {label} differ ({shown})"]


async def check(conn: Conn, program: str, want: Expected, journeys: int) -> None:
    """Compare the program's inbox and ledger with what the load implies; verify."""
    outcomes = {
        r["event_id"]: (r["status"], r["outcome"])
        for r in await conn.fetch(
            "SELECT event_id, status, outcome FROM events WHERE program = $1 AND origin = 'client'",
            program,
        )
    }
    problems = _differences("event outcomes", dict(want.outcomes), dict(outcomes))
    row = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE status NOT IN ('processed', 'rejected')) AS open,
                  count(*) FILTER (WHERE type = 'new_stage') AS new_stage,
                  count(*) FILTER (WHERE type = 'points_above') AS points_above
           FROM events WHERE program = $1""",
        program,
    )
    assert row is not None
    if row["open"]:
        problems.append(f"{row['open']} events pending or dead")
    for label, got, wanted in (
        ("new_stage events", row["new_stage"], want.new_stages),
        ("points_above events", row["points_above"], want.crossings),
        ("journeys", journeys, want.crossings),
        (
            "ledger transactions",
            await conn.fetchval(
                "SELECT count(*) FROM ledger_transactions WHERE program = $1", program
            ),
            want.transactions,
        ),
    ):
        if got != wanted:
            problems.append(f"{got} {label}, expected {wanted}")
    accounts = await conn.fetch(
        """SELECT member_id, kind, balance FROM accounts
           WHERE program = $1 AND currency = 'points' AND kind IN ('available', 'earned')""",
        program,
    )
    for kind, wanted_balances in (("available", want.available), ("earned", want.earned)):
        # A member without an account holds 0, as one whose account is at 0.
        got_balances = {r["member_id"]: r["balance"] for r in accounts
                        if r["kind"] == kind and r["balance"]}  # fmt: skip
        problems += _differences(
            f"{kind} balances", {m: b for m, b in wanted_balances.items() if b}, got_balances
        )
    if want.tiers:
        tiers = await conn.fetch("SELECT member_id, tier FROM members WHERE program = $1", program)
        problems += _differences(
            "tiers", dict(want.tiers), {r["member_id"]: r["tier"] for r in tiers}
        )
    verified = await audit.verify(conn)
    if not verified.ok:
        problems += [f"verify: {c.name}: {c.count}" for c in verified.checks if c.count]
    if problems:
        raise SystemExit(f"program {program}: LEDGER NOT AS EXPECTED: " + "; ".join(problems))


async def run_load(
    client: LoyaltyClient, conn: Conn, row: int, load: Load, n: int, members: int, limit: float
) -> LoadRun:
    """Emit the load, wait until it and what it derives are applied, check the ledger."""
    program = load.program
    events: list[AnyEvent] = list(load.make(f"l{row}", n, members, program))
    fallbacks = await _counts_fallbacks(conn)
    rolled_back = await _rollbacks(conn)
    with console.status(f"row {row}, {load.name}: emitting and applying {n:,} events"):
        started = time.monotonic()
        results = await client.emit_many(events, chunk_size=EMIT_CHUNK)
        emitted = time.monotonic() - started
        outcomes = await client.wait(results, timeout=limit)
        await wait_settled(conn, program, limit)
        elapsed = time.monotonic() - started
    if not all(r.accepted for r in results) or len(outcomes) != n:
        raise SystemExit(f"row {row}: some events were not accepted")
    with console.status(f"row {row}: journeys and checks (not timed)"):
        journeys = await _wait_journeys(conn, program, limit)
        definition = LOADS_APP.programs[program]
        watched = (THRESHOLD,) if program == "threshold" else ()
        await check(conn, program, expect(definition, watched, events), journeys)
        await asyncio.sleep(STATS_DELAY_SECONDS)
        rolled_back = await _rollbacks(conn) - rolled_back
    extra = ", sum(one_by_one) AS one_by_one, sum(fast_path) AS fast_path" if fallbacks else ""
    totals = await conn.fetchrow(
        f"""SELECT coalesce(sum(batches), 0) AS batches{extra}
            FROM router_totals WHERE program = $1""",
        program,
    )
    counts = await conn.fetchrow(
        """SELECT count(*) FILTER (WHERE origin = 'engine') AS derived,
                  count(*) FILTER (WHERE status = 'rejected') AS rejected
           FROM events WHERE program = $1""",
        program,
    )
    assert totals is not None
    assert counts is not None
    run = LoadRun(
        row=row, load=load, events=n, members=members, seconds=elapsed, emit_seconds=emitted,
        derived=counts["derived"], rejected=counts["rejected"], batches=totals["batches"],
        rolled_back=rolled_back, journeys=journeys,
        one_by_one=totals["one_by_one"] if fallbacks else None,
        fast_path=totals["fast_path"] if fallbacks else None,
    )  # fmt: skip
    console.print(
        f"row {row}, {load.name}: {n:,} events in {elapsed:.2f} s, {run.rate:,.0f} events/s "
        f"(emit_many {emitted:.2f} s); {run.derived:,} derived, {run.rejected:,} refused, "
        f"{journeys:,} journeys; ledger checked"
    )
    return run


async def warm_up(client: LoyaltyClient, conn: Conn, n: int, limit: float) -> None:
    """Apply ``n`` purchases and logins in program ``default`` first, not timed: the first
    load would otherwise also pay for a cold stack (caches, the worker's first batches),
    which moved every ratio by up to 0.2 between runs."""
    if not n:
        return
    events: list[AnyEvent] = list(purchases("warm", n, max(1, n // 4), WARM_UP_PROGRAM))
    with console.status(f"warming up: {n:,} events in program {WARM_UP_PROGRAM}"):
        results = await client.emit_many(events, chunk_size=EMIT_CHUNK)
        await client.wait(results, timeout=limit)
        await wait_settled(conn, WARM_UP_PROGRAM, limit)
    console.print(f"warm-up: {n:,} events applied in program {WARM_UP_PROGRAM} (not timed)")


async def run_loads(
    client: LoyaltyClient, conn: Conn, n: int, members: int, limit: float, warm: int = 0
) -> tuple[list[LoadRun], tuple[float, float]]:
    """Every load in turn, after the warm-up; returns the runs and the 1-minute load
    average before/after."""
    await warm_up(client, conn, warm, limit)
    before = os.getloadavg()[0]
    runs = [
        await run_load(client, conn, row, load, n, members, limit)
        for row, load in enumerate(LOADS, start=1)
    ]
    return runs, (before, os.getloadavg()[0])


def _met(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]not met[/]"


def _count(value: int | None) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def report_loads(runs: list[LoadRun], loadavg: tuple[float, float]) -> None:
    """The table of issue 13: rates, ratios and goals; then what the router did."""
    base = runs[0].rate
    first = runs[0]
    table = Table(
        title=f"Issue 13 loads end to end: {first.events:,} events each over "
        f"{first.members:,} members, emit_many → applied, one loyalty dev"
    )
    for column in ("row", "load (program)", "events/s", "vs row 1", "goal", ""):
        table.add_column(column, justify="right" if column in ("events/s", "vs row 1") else "left")
    for r in runs:
        ratio = r.rate / base
        if r.row == 1:
            goal, met = "(baseline)", ""
        else:
            goal, met = f"≥ {GOAL_RATIO:.1f} × row 1", _met(ratio >= GOAL_RATIO)
            if r.load.name == MIXED:
                goal += f"; ≥ {GOAL_MIXED:,.0f} events/s"
                met += "; " + _met(r.rate >= GOAL_MIXED)
        table.add_row(
            str(r.row), f"{r.load.name} ({r.load.program})", f"{r.rate:,.0f}", f"{ratio:.2f}",
            goal, met,
        )  # fmt: skip
    console.print(table)
    router = Table(title="What the router did, per load (from the database)")
    columns = ("row", "seconds (emit_many)", "events/s after emit_many", "derived", "refused",
               "batches", "rolled back", "one at a time", "fast path", "journeys")  # fmt: skip
    for column in columns:
        router.add_column(column, justify="right")
    for r in runs:
        router.add_row(
            str(r.row), f"{r.seconds:.2f} ({r.emit_seconds:.2f})",
            f"{r.events / (r.seconds - r.emit_seconds):,.0f}", f"{r.derived:,}",
            f"{r.rejected:,}", f"{r.batches:,}", f"{r.rolled_back:,}", _count(r.one_by_one),
            _count(r.fast_path), f"{r.journeys:,}",
        )  # fmt: skip
    console.print(router)
    console.print(
        "events/s: client events from the start of emit_many until they and every event they "
        "derive are processed; after emit_many: over the time from its return (emit_many "
        "commits once, so the router starts then). derived: new_stage and points_above "
        "events. batches: "
        "router_totals. rolled back: pg_stat_database.xact_rollback during the load (batches "
        "redone one event per savepoint after a refusal, transient errors). one at a time / "
        "fast path: router_totals.one_by_one / fast_path, n/a until the router counts them. "
        f"Load average (1 min) before the loads: {loadavg[0]:.2f}, after: {loadavg[1]:.2f}."
    )
