"""Benchmark: events into the ledger, end to end, against a fresh `loyalty dev`.

Subject: N points_deposit events as JSON lines piped to one `loyalty emit --wait`.
Baseline: N more events sent one per call through `LoyaltyClient.emit()` (one statement
and one commit each, as a naive integration would), then `LoyaltyClient.wait()`.
Both figures include the router applying every event to the ledger. Run: `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from loyalty.db import Database, connect
from loyalty.events import PointsDeposit
from loyalty.settings import Settings
from starter import LoyaltyClient

BIN = Path(sys.executable).parent
console = Console()


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def deposit(prefix: str, i: int, members: int) -> PointsDeposit:
    """Event i of a phase: member i mod members gets 1 to 7 points."""
    return PointsDeposit(
        event_id=f"{prefix}-{i}",
        member_id=f"m{i % members}",
        points=1 + i % 7,
        kind="available",
        reason="bench",
    )


class DevServer:
    """`loyalty dev` as a subprocess; its output is drained by a thread."""

    def __init__(self, env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [str(BIN / "loyalty"), "dev"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # a Ctrl-C on the benchmark reaches it only through stop()
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.ready_seconds = 0.0
        self.reported = ""
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
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("loyalty dev did not become ready:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def run_subject(env: dict[str, str], events: list[PointsDeposit]) -> float:
    """Pipe the events to one `loyalty emit --wait`; returns the wall time."""
    text = "".join(e.model_dump_json(exclude={"occurred_at"}) + "\n" for e in events)
    with console.status(f"loyalty emit --wait with {len(events):,} JSON lines"):
        started = time.monotonic()
        done = subprocess.run(
            [str(BIN / "loyalty"), "emit", "--wait", "--timeout", "600"],
            input=text,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        elapsed = time.monotonic() - started
    outcomes = [line.split(" ", 1)[1] for line in done.stdout.splitlines()]
    if done.returncode != 0 or outcomes != ["applied"] * len(events):
        raise SystemExit(f"loyalty emit failed ({done.returncode}): {done.stderr[-2000:]}")
    return elapsed


async def run_baseline(settings: Settings, events: list[PointsDeposit]) -> tuple[float, float]:
    """Emit one event per call, then wait; returns (emit seconds, total seconds)."""
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    async with await LoyaltyClient.connect(settings) as client:
        with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
            task = progress.add_task("LoyaltyClient.emit(), one per call", total=len(events))
            started = time.monotonic()
            results = []
            for event in events:
                results.append(await client.emit(event))
                progress.advance(task)
            emitted = time.monotonic() - started
        with console.status("LoyaltyClient.wait()"):
            outcomes = await client.wait(results, timeout=600)
        total = time.monotonic() - started
    if {o.describe() for o in outcomes} != {"applied"}:
        raise SystemExit("baseline: some events were not applied")
    return emitted, total


async def verify(settings: Settings, events: list[PointsDeposit]) -> None:
    """Every event applied once: inbox, ledger and each member's balance agree."""
    expected: dict[str, int] = {}
    for e in events:
        expected[e.member_id] = expected.get(e.member_id, 0) + e.points
    async with Database(settings) as database:
        conn = await connect(database.dsn)
        try:
            processed = await conn.fetchval("SELECT count(*) FROM events WHERE status='processed'")
            ledger = await conn.fetchval("SELECT count(*) FROM ledger_transactions")
        finally:
            await conn.close()
    async with await LoyaltyClient.connect(settings) as client:
        balances = {m: (await client.member(m)).balances["points"].available for m in expected}
    if processed != len(events) or ledger != len(events) or balances != expected:
        wrong = sum(balances[m] != expected[m] for m in expected)
        raise SystemExit(
            f"LOST OR DOUBLED EVENTS: {processed} processed, {ledger} ledger transactions "
            f"for {len(events)} events; {wrong} members with a wrong balance"
        )
    console.print(f"verified: {len(events):,} events applied once, {len(expected):,} balances")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="events per phase")
    parser.add_argument("--members", type=int, default=1_000, help="distinct members")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="lfb", dir="/tmp")  # short: PostgreSQL's socket lives here
    for name in ("LOYALTY_DATABASE_URL", "TEMPORAL_ADDRESS"):
        os.environ.pop(name, None)
    os.environ.update(
        LOYALTY_HOME=home,
        LOYALTY_DEV_TEMPORAL_PORT=str(free_port()),
        LOYALTY_DEV_UI_PORT=str(free_port()),
        COLUMNS="200",  # keeps the Ready line of `loyalty dev` on one line
    )
    env = dict(os.environ)
    settings = Settings()
    subject = [deposit("cli", i, args.members) for i in range(args.events)]
    baseline = [deposit("api", i, args.members) for i in range(args.events)]
    dev: DevServer | None = None
    try:
        with console.status("starting loyalty dev"):
            dev = DevServer(env)
            dev.wait_ready()
        console.print(f"loyalty dev ready in {dev.ready_seconds:.1f}s (it reports {dev.reported}s)")
        cli_seconds = run_subject(env, subject)
        emit_seconds, api_seconds = asyncio.run(run_baseline(settings, baseline))
        asyncio.run(verify(settings, subject + baseline))
    finally:
        if dev is not None:
            with console.status("stopping loyalty dev"):
                dev.stop()
        shutil.rmtree(home, ignore_errors=True)
    n = args.events
    cli_rate, api_rate = n / cli_seconds, n / api_seconds
    console.print(
        f"subject  loyalty emit --wait      {n:,} events in {cli_seconds:6.2f}s: "
        f"{cli_rate:8,.0f} events/s"
    )
    console.print(
        f"baseline LoyaltyClient.emit() x{n:,} in {api_seconds:6.2f}s: {api_rate:8,.0f} events/s"
        f" (emitting alone took {emit_seconds:.2f}s)"
    )
    console.print(f"ratio subject/baseline: {cli_rate / api_rate:.1f}x")


if __name__ == "__main__":
    main()
