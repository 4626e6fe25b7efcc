"""Benchmark: events into the inbox, and into the ledger end to end, on fresh `loyalty dev`s.

1. Ingestion, on dev A: N JSON lines piped to one `loyalty emit` (no --wait), against N
   other events sent one per call with `LoyaltyClient.emit()` (one statement and commit
   each). The router's work is waited for after each side, outside the timing.
2. End to end, on dev A then on dev B: N fresh JSON lines to `loyalty emit --wait` with
   the router's default batch (dev A), against the same on dev B started with
   LOYALTY_ROUTER_BATCH_SIZE=1. Dev A is stopped before dev B starts. Run: `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from loyalty.events import PointsDeposit
from loyalty.models import EmitResult
from loyalty.settings import Settings
from loyalty.store.db import Database, connect
from loyalty.store.embedded import free_port
from starter import LoyaltyClient

BIN = Path(sys.executable).parent
COLUMNS = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
console = Console()


def deposits(prefix: str, n: int, members: int) -> list[PointsDeposit]:
    """Event i of a phase: member i mod members gets 1 to 7 points."""
    return [
        PointsDeposit(
            event_id=f"{prefix}-{i}",
            member_id=f"m{i % members}",
            points=1 + i % 7,
            kind="available",
            reason="bench",
        )
        for i in range(n)
    ]


class DevServer:
    """`loyalty dev` on a fresh temporary LOYALTY_HOME and free ports; output drained."""

    def __init__(self, name: str, batch_size: int | None) -> None:
        self.name = name
        self.home = tempfile.mkdtemp(prefix="lfb", dir="/tmp")  # short: PostgreSQL's socket
        for var in ("LOYALTY_DATABASE_URL", "TEMPORAL_ADDRESS", "LOYALTY_ROUTER_BATCH_SIZE"):
            os.environ.pop(var, None)
        os.environ.update(
            LOYALTY_HOME=self.home,
            LOYALTY_DEV_TEMPORAL_PORT=str(free_port()),
            LOYALTY_DEV_UI_PORT=str(free_port()),
            LOYALTY_API_PORT=str(free_port()),  # `loyalty dev` serves the HTTP API there
            COLUMNS="200",  # keeps the Ready line of `loyalty dev` on one line
        )
        if batch_size is not None:
            os.environ["LOYALTY_ROUTER_BATCH_SIZE"] = str(batch_size)
        self.env = dict(os.environ)
        self.settings = Settings()
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.ready_seconds = 0.0
        self.reported = ""
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [str(BIN / "loyalty"), "dev"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a Ctrl-C on the benchmark reaches it only through stop()
        )
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            found = re.search(r"Ready in ([\d.]+)s", line)
            if found and not self.ready.is_set():
                self.ready_seconds = time.monotonic() - self.started
                self.reported = found[1]
                self.ready.set()

    def wait_ready(self, timeout: float = 120.0) -> None:
        with console.status(f"starting {self.name}"):
            deadline = time.monotonic() + timeout
            while not self.ready.wait(0.2):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{self.name} did not become ready:\n" + "\n".join(self.lines))
        console.print(
            f"{self.name} ready in {self.ready_seconds:.1f}s (it reports {self.reported}s)"
        )

    def halt(self) -> None:
        """SIGINT, as Ctrl-C; the data folder stays."""
        with console.status(f"stopping {self.name}"):
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGINT)
                try:
                    self.process.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGKILL)
                    self.process.wait()

    def stop(self) -> None:
        """Halt, then delete the data folder."""
        self.halt()
        shutil.rmtree(self.home, ignore_errors=True)


async def run_cli(dev: DevServer, events: list[PointsDeposit], wait: bool, limit: float) -> float:
    """Pipe the events to one `loyalty emit [--wait]`; returns its wall time."""
    text = "".join(e.model_dump_json(exclude={"occurred_at"}) + "\n" for e in events)
    args = ["emit", "--wait", "--timeout", str(limit)] if wait else ["emit"]
    label = f"loyalty {' '.join(args[:2])} with {len(events):,} JSON lines"
    done_sql = "SELECT count(*) FROM events WHERE event_id LIKE $1 AND status <> 'pending'"
    prefix = events[0].event_id.rsplit("-", 1)[0] + "-%"
    async with Database(dev.settings) as database:
        conn = await connect(database.dsn)  # for the progress bar: processed events, 1/s
        try:
            with Progress(*COLUMNS, TimeElapsedColumn(), console=console) as progress:
                task = progress.add_task(label, total=len(events))
                started = time.monotonic()
                process = await asyncio.create_subprocess_exec(
                    str(BIN / "loyalty"), *args, env=dev.env, stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                )  # fmt: skip
                running = asyncio.ensure_future(process.communicate(text.encode()))
                while wait and not running.done():
                    progress.update(task, completed=await conn.fetchval(done_sql, prefix))
                    await asyncio.wait([running], timeout=1.0)
                out, err = await running
                elapsed = time.monotonic() - started
                if process.returncode == 0:
                    progress.update(task, completed=len(events))
        finally:
            await conn.close()
    outcomes = [line.split(" ", 1)[1] for line in out.decode().splitlines()]
    if process.returncode != 0 or outcomes != ["applied" if wait else "accepted"] * len(events):
        raise SystemExit(f"{label} failed ({process.returncode}): {err.decode()[-2000:]}")
    return elapsed


async def run_api(settings: Settings, events: list[PointsDeposit]) -> float:
    """Emit one event per call; returns the time from the first call to the last answer."""
    async with await LoyaltyClient.connect(settings) as client:
        with Progress(*COLUMNS, TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("LoyaltyClient.emit(), one per call", total=len(events))
            started = time.monotonic()
            for event in events:
                if not (await client.emit(event)).accepted:
                    raise SystemExit(f"LoyaltyClient.emit(): {event.event_id} not accepted")
                progress.advance(task)
            return time.monotonic() - started


async def wait_applied(settings: Settings, events: list[PointsDeposit], limit: float) -> None:
    """Wait (untimed) until the router applied every event, so phases do not overlap."""
    results = [EmitResult(program=e.program, event_id=e.event_id, accepted=True) for e in events]
    async with await LoyaltyClient.connect(settings) as client:
        with console.status(f"router applying {len(events):,} events (not timed)"):
            outcomes = await client.wait(results, timeout=limit)
    if {o.describe() for o in outcomes} != {"applied"}:
        raise SystemExit("some events were not applied")


async def verify(dev: DevServer, events: list[PointsDeposit]) -> None:
    """Every event applied once: inbox, ledger and each member's balance agree."""
    expected: dict[str, int] = {}
    for e in events:
        expected[e.member_id] = expected.get(e.member_id, 0) + e.points
    async with Database(dev.settings) as database:
        conn = await connect(database.dsn)
        try:
            processed = await conn.fetchval("SELECT count(*) FROM events WHERE status='processed'")
            ledger = await conn.fetchval("SELECT count(*) FROM ledger_transactions")
        finally:
            await conn.close()
    async with await LoyaltyClient.connect(dev.settings) as client:
        balances = {m: (await client.member(m)).balances["points"].available for m in expected}
    if processed != len(events) or ledger != len(events) or balances != expected:
        wrong = sum(balances[m] != expected[m] for m in expected)
        raise SystemExit(
            f"{dev.name}: LOST OR DOUBLED EVENTS: {processed} processed, {ledger} ledger "
            f"transactions for {len(events)} events; {wrong} members with a wrong balance"
        )
    console.print(
        f"{dev.name} verified: {len(events):,} events applied once, {len(expected):,} balances"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="events per side")
    parser.add_argument("--members", type=int, default=1_000, help="distinct members")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per wait")
    args = parser.parse_args()
    n, limit = args.events, args.timeout
    ingest_cli = deposits("cli", n, args.members)
    ingest_api = deposits("api", n, args.members)
    end_to_end = deposits("e2e", n, args.members)  # the same events on both devs

    dev = DevServer("dev A (router batch 500)", batch_size=None)
    try:
        dev.wait_ready()
        cli_seconds = asyncio.run(run_cli(dev, ingest_cli, wait=False, limit=limit))
        asyncio.run(wait_applied(dev.settings, ingest_cli, limit))
        api_seconds = asyncio.run(run_api(dev.settings, ingest_api))
        asyncio.run(wait_applied(dev.settings, ingest_api, limit))
        batch_seconds = asyncio.run(run_cli(dev, end_to_end, wait=True, limit=limit))
        asyncio.run(verify(dev, ingest_cli + ingest_api + end_to_end))
    finally:
        dev.stop()
    dev = DevServer("dev B (router batch 1)", batch_size=1)
    try:
        dev.wait_ready()
        single_seconds = asyncio.run(run_cli(dev, end_to_end, wait=True, limit=limit))
        asyncio.run(verify(dev, end_to_end))
    finally:
        dev.stop()

    table = Table(title=f"{n:,} events per side, {args.members:,} members")
    for name in ("comparison", "subject", "baseline"):
        table.add_column(name)
    table.add_column("ratio", justify="right")
    rows = [
        ("ingestion: emit (one process) / emit() per call", cli_seconds, api_seconds),
        ("end to end: emit --wait, batch 500 / batch 1", batch_seconds, single_seconds),
    ]
    for name, subject, baseline in rows:
        table.add_row(
            name,
            f"{subject:.2f} s, {n / subject:,.0f} events/s",
            f"{baseline:.2f} s, {n / baseline:,.0f} events/s",
            f"{baseline / subject:.1f}x",
        )
    console.print(table)


if __name__ == "__main__":
    main()


# CPU seconds so far of a process, by pid: (its part of the stack, seconds).
CpuReading = dict[int, tuple[str, float]]


def cpu_by_role(home: str, roles: dict[int, str]) -> CpuReading:
    """CPU seconds so far of every process, by pid, with its part of the stack: ``roles``
    names some by pid; the PostgreSQL and Temporal servers of ``home`` (a LOYALTY_HOME)
    and their children are found by command line; the rest are "other processes"."""
    role = dict(roles)
    processes = list(psutil.process_iter(["cmdline"]))
    for p in processes:
        command = " ".join(p.info["cmdline"] or ())
        server = "postgres" if "postgres" in command else "temporal"
        if home in command and server in command:
            with contextlib.suppress(psutil.Error):
                role.update((c.pid, server) for c in [p, *p.children(recursive=True)])
    seconds: CpuReading = {}
    for p in processes:
        with contextlib.suppress(psutil.Error):
            times = p.cpu_times()
            seconds[p.pid] = (role.get(p.pid, "other processes"), times.user + times.system)
    return seconds


def cpu_text(before: CpuReading, after: CpuReading) -> str:
    """CPU seconds used between two readings, by part; processes gone by then not counted."""
    used: Counter[str] = Counter()
    for pid, (name, seconds) in after.items():
        used[name] += seconds - before.get(pid, (name, 0.0))[1]
    return ", ".join(f"{k} {v:.1f} s" for k, v in used.most_common())


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor() or "?",
    )  # fmt: skip
    ram = psutil.virtual_memory().total / 2**30
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"{os.cpu_count()} CPUs ({model}), {ram:.0f} GiB RAM, Python {platform.python_version()}; "
        f"commit {commit}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
