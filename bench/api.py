"""Benchmark: the HTTP API (issue 14), against `LoyaltyClient.emit_many`, on one `loyalty dev`.

One fresh `loyalty dev` (app `bench.ingest_app:app`) and, beside it, a separate
`loyalty api` process on the same LOYALTY_HOME (so the same embedded PostgreSQL), on its
own free port, with LOYALTY_API_RATE_LIMIT high enough never to refuse the benchmark.
Every event goes to program ``mixed`` (tiers bronze 0, silver 50, gold 150; 1 point per
EUR, 10 per ``web_login`` once a day; `bench.workloads.mixed`: deposits, withdrawals, one
in eight too large, purchases paid partly with points and not, logins).

0. Warm-up, not timed: --warmup events through the API and as many through emit_many.
1. Throughput, four runs in the order API, emit_many, emit_many, API (so neither side
   always runs first on a cold stack), --events events over --members members each, new
   members and event ids every run. API: the events are split by member over
   --clients httpx clients, each with its own key, each POSTing its share in batches of
   --batch (``{"events": [...]}``, bodies encoded before the clock starts) one after the
   other. emit_many: one `LoyaltyClient.emit_many` call (chunks of 5,000). Both are
   timed from the first request until nothing of the program is pending (the events
   the load derives, ``new_stage``, included), polled every 0.05 s.
2. Latency: single-event POSTs offered open loop at --rate requests/s for --seconds
   (each request its own task, started on a fixed schedule whatever the answers), over
   one key, one event per member (members of the earlier phases, so that the order of
   one member's events cannot depend on the server's speed). Response time from the
   moment the request was due (what a client on that schedule waits) and from the
   moment it was sent; requests answered other than 202 are counted, then sent again
   (not timed) so that the checks below see every event.
3. Memory of the API process (psutil): RSS once it answers, after the throughput and
   after the latency phase; peak from /proc/PID/status (VmHWM).

For each phase, the CPU time each part of the stack used (psutil, processes alive at
both ends of the phase): PostgreSQL, the Temporal dev server, `loyalty dev` (worker and
router), `loyalty api`, this benchmark (the clients) and every other process of the
machine, which shares its cores with them.

After each phase, checks (a failure exits with an error): every event was answered
``accepted`` exactly once, the inbox holds each exactly once and none pending or dead,
and outcomes, balances, tiers and ledger transactions are those of `bench.workloads.expect`
replaying the events in the inbox's order; `loyalty verify` (`loyalty.ledger.audit`) is
clean. Run: `.venv/bin/python bench/api.py` (also in `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import httpx
import psutil
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.ingest_app

from bench.emit import BIN, DevServer, console, cpu_by_role, cpu_text, machine
from bench.ingest_app import LOADS_APP
from bench.ingest_loads import check
from bench.workloads import expect, mixed
from loyalty.api.keys import create_key
from loyalty.events import AnyEvent
from loyalty.store.db import Conn, Database, connect
from loyalty.store.embedded import free_port
from starter import LoyaltyClient

APP = "bench.ingest_app:app"
PROGRAM = "mixed"
GOAL_RATIO = 0.7
GOAL_P99_MS = 50.0
EMIT_CHUNK = 5_000
# Requests/s per key: far above what the benchmark sends, so nothing is throttled.
RATE_LIMIT = 1_000_000
ORDER = ("api", "emit_many", "emit_many", "api")
POLL_SECONDS = 0.05
# Between the occurred_at of two events of the latency phase.
TICK = timedelta(milliseconds=1)


def met(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]not met[/]"


class ApiProcess:
    """`loyalty api` on the dev's LOYALTY_HOME and a free port; output drained."""

    def __init__(self, dev: DevServer) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **dev.env,
            "LOYALTY_API_PORT": str(self.port),
            "LOYALTY_API_RATE_LIMIT": str(RATE_LIMIT),
        }
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [str(BIN / "loyalty"), "api"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.ps = psutil.Process(self.process.pid)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())

    async def wait_ready(self, timeout: float = 60.0) -> None:
        with console.status("starting loyalty api"):
            async with httpx.AsyncClient() as http, asyncio.timeout(timeout):
                while True:
                    if self.process.poll() is not None:
                        raise SystemExit("loyalty api exited:\n" + "\n".join(self.lines))
                    try:
                        if (await http.get(f"{self.url}/healthz")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
        console.print(f"loyalty api (pid {self.process.pid}) answers on {self.url}")

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def peak_rss(self) -> int:
        """VmHWM: the most resident memory the process ever had."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def stop(self) -> str:
        """SIGINT, as Ctrl-C; how it ended (a clean stop is exit 0 without a traceback)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
                return "did not stop within 30 s of SIGINT (killed)"
        tail = "\n".join(self.lines[-20:])
        if self.process.returncode != 0 or "Traceback" in tail:
            return f"exit {self.process.returncode}:\n{tail}"
        return "stopped cleanly (exit 0)"


def roles(dev: DevServer, api: ApiProcess) -> dict[int, str]:
    """The benchmark's own processes by pid, with their part of the stack."""
    return {
        os.getpid(): "benchmark (clients)",
        dev.process.pid: "loyalty dev (worker, router)",
        api.process.pid: "loyalty api",
    }


@dataclass
class Run:
    side: str
    events: int
    seconds: float
    api_cpu: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


@dataclass
class Latency:
    offered: float = 0.0
    sent: int = 0
    due_ms: list[float] = field(default_factory=list)
    call_ms: list[float] = field(default_factory=list)
    refused: dict[str, int] = field(default_factory=dict)
    stale: int = 0
    resent: int = 0
    connections: int = 0


@dataclass
class Figures:
    runs: list[Run] = field(default_factory=list)
    latency: Latency = field(default_factory=Latency)
    memory: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, str] = field(default_factory=dict)
    api_stop: str = ""
    events: dict[str, AnyEvent] = field(default_factory=dict)


def batch_body(events: Sequence[AnyEvent]) -> bytes:
    return ('{"events":[' + ",".join(e.model_dump_json() for e in events) + "]}").encode()


def accepted_ids(response: httpx.Response, what: str) -> list[str]:
    """The event ids a 202 answer accepted; anything else is a failure of the benchmark."""
    if response.status_code != 202:
        raise SystemExit(f"{what}: HTTP {response.status_code}: {response.text[:2000]}")
    results = response.json()["results"]
    if any(r["status"] != "accepted" for r in results):
        raise SystemExit(f"{what}: not every event accepted: {response.text[:2000]}")
    return [r["event_id"] for r in results]


async def wait_settled(conn: Conn, limit: float) -> None:
    """Until nothing of the program is pending, the events it derives included."""
    deadline = time.monotonic() + limit
    sql = "SELECT count(*) FROM events WHERE program = $1 AND status = 'pending'"
    while await conn.fetchval(sql, PROGRAM):
        if time.monotonic() > deadline:
            raise SystemExit(f"events of {PROGRAM} still pending after {limit:.0f} s")
        await asyncio.sleep(POLL_SECONDS)


async def post_all(
    url: str, keys: list[str], events: list[AnyEvent], members: int, batch: int
) -> list[str]:
    """Each client POSTs the events of its members (member i mod clients) in batches of
    ``batch``, one request after the other; the ids the answers accepted."""
    shares: list[list[AnyEvent]] = [[] for _ in keys]
    for i, event in enumerate(events):
        shares[(i % members) % len(keys)].append(event)
    bodies = [
        [batch_body(share[s : s + batch]) for s in range(0, len(share), batch)] for share in shares
    ]

    async def client(key: str, mine: list[bytes]) -> list[str]:
        ids: list[str] = []
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as http:
            for n, body in enumerate(mine):
                response = await http.post("/v1/events", content=body)
                ids += accepted_ids(response, f"POST /v1/events, batch {n}")
        return ids

    answers = await asyncio.gather(*(client(k, b) for k, b in zip(keys, bodies, strict=True)))
    return [i for ids in answers for i in ids]


async def one_run(
    side: str,
    prefix: str,
    n: int,
    api: ApiProcess,
    keys: list[str],
    client: LoyaltyClient,
    conn: Conn,
    args: argparse.Namespace,
    fig: Figures,
) -> Run:
    """One side of the throughput phase, until applied; its events join ``fig.events``."""
    events = list(mixed(prefix, n, args.members, PROGRAM))
    cpu = api.cpu_seconds()
    with console.status(f"{side}: {len(events):,} events, until applied"):
        started = time.monotonic()
        if side == "api":
            ids = await post_all(api.url, keys, events, args.members, args.batch)
        else:
            results = await client.emit_many(events, chunk_size=EMIT_CHUNK)
            ids = [r.event_id for r in results if r.accepted]
        await wait_settled(conn, args.timeout)
        elapsed = time.monotonic() - started
    if sorted(ids) != sorted(e.event_id for e in events):
        raise SystemExit(f"{side} {prefix}: {len(ids):,} accepted for {len(events):,} events")
    fig.events.update((e.event_id, e) for e in events)
    run = Run(side, len(events), elapsed, api.cpu_seconds() - cpu)
    console.print(
        f"{side} ({prefix}): {run.events:,} events in {elapsed:.2f} s, {run.rate:,.0f} events/s"
        f" (API process CPU {run.api_cpu:.1f} s)"
    )
    return run


class RawPoster:
    """POST /v1/events over keep-alive HTTP/1.1 connections, for the latency phase.

    httpx spends about 2 ms of CPU per request on this machine (measured: 1,000
    sequential single-event POSTs took 2.0-2.3 s of the benchmark's CPU with httpx, 0.2 s
    with this), which at 500 requests/s would take a whole core of the two from the
    server under test. A request takes an idle connection or opens one, so that requests
    never queue on the client's side.
    """

    def __init__(self, port: int, key: str) -> None:
        self.port = port
        self.head = (
            f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        ).encode()
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0
        # Requests sent again because their kept-alive connection had been closed.
        self.stale = 0

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """The answer's status and body.

        A kept-alive connection that the server closed as idle (uvicorn's keep-alive
        timeout, 5 s) just as the request went out answers nothing: the request is sent
        again once on a new connection, as HTTP clients do with pooled connections (safe
        here: the event_id makes the POST idempotent).
        """
        reused = bool(self.idle)
        if reused:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.opened += 1
        try:
            writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            try:
                first = await reader.readuntil(b"\r\n")
            except (asyncio.IncompleteReadError, ConnectionResetError):
                if not reused:
                    raise
                writer.close()
                self.stale += 1
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                self.opened += 1
                writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                first = await reader.readuntil(b"\r\n")
            status = int(first.split()[1])
            headers = (await reader.readuntil(b"\r\n\r\n")).lower()
            length = 0
            for line in headers.split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            answer = await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if b"connection: close" in headers:
            writer.close()
        else:
            self.idle.append((reader, writer))
        return status, answer

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def latency_events(n: int, earlier: dict[str, AnyEvent]) -> list[AnyEvent]:
    """The mixed load for members the earlier phases made, one event each, after theirs.

    Requests sent concurrently can reach the inbox in any order, and a response time of
    seconds (an overloaded server) makes two of one member's requests overlap. One event
    per member keeps each member's order, which the checks replay, whatever the server
    does. The events happen after every earlier one (a tier is measured at the event's
    time, so a late event would not promote) and within a day of them (as the rules of
    `bench.workloads` assume); fresh members once the earlier ones run out.
    """
    members = list(dict.fromkeys(e.member_id for e in earlier.values()))
    members += [f"latm{k}" for k in range(max(0, n - len(members)))]
    after = max(e.occurred_at for e in earlier.values()) + timedelta(seconds=1)
    return [
        e.model_copy(update={"member_id": members[i], "occurred_at": after + i * TICK})
        for i, e in enumerate(mixed("lat", n, n, PROGRAM))
    ]


async def latency(
    api: ApiProcess, key: str, conn: Conn, args: argparse.Namespace, fig: Figures
) -> Latency:
    """Single-event POSTs on a fixed schedule; answers timed, refusals counted and resent."""
    n = int(args.rate * args.seconds)
    events = latency_events(n, fig.events)
    bodies = [e.model_dump_json().encode() for e in events]
    out = Latency(sent=n)
    failed: list[int] = []
    loop = asyncio.get_running_loop()
    poster = RawPoster(api.port, key)

    async def one(k: int, due: float) -> None:
        sent = loop.time()
        try:
            code, answer = await poster.post(bodies[k])
            status = str(code)
            if code == 202 and json.loads(answer)["results"][0]["status"] != "accepted":
                raise SystemExit(f"{events[k].event_id} not accepted: {answer[:2000]!r}")
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            status = type(exc).__name__
        done = loop.time()
        out.due_ms.append((done - due) * 1000)
        out.call_ms.append((done - sent) * 1000)
        if status != "202":
            out.refused[status] = out.refused.get(status, 0) + 1
            failed.append(k)

    with console.status(f"latency: {n:,} single-event POSTs at {args.rate:,.0f}/s offered"):
        tasks: list[asyncio.Task[None]] = []
        start = loop.time() + 0.1
        for k in range(n):
            due = start + k / args.rate
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(one(k, due)))
        out.offered = n / (loop.time() - start)
        await asyncio.gather(*tasks)
        out.connections = poster.opened
        out.stale = poster.stale
        for k in sorted(failed):  # not timed: so that the checks see every event
            code, answer = await poster.post(bodies[k])
            if code != 202:
                raise SystemExit(f"resending {events[k].event_id}: {code} {answer[:2000]!r}")
        out.resent = len(failed)
        await poster.close()
        await wait_settled(conn, args.timeout)
    fig.events.update((e.event_id, e) for e in events)
    return out


async def check_all(conn: Conn, sent: dict[str, AnyEvent], phase: str) -> None:
    """The program's inbox holds each event once; its ledger is what the events imply."""
    with console.status(f"{phase}: checking {len(sent):,} events and the ledger"):
        rows = await conn.fetch(
            "SELECT event_id FROM events WHERE program = $1 AND origin = 'client' ORDER BY id",
            PROGRAM,
        )
        ids = [r["event_id"] for r in rows]
        if len(ids) != len(set(ids)) or set(ids) != set(sent):
            raise SystemExit(
                f"{phase}: LOST OR DOUBLED EVENTS: {len(ids):,} rows, {len(set(ids)):,} ids, "
                f"{len(set(sent) - set(ids)):,} missing, {len(set(ids) - set(sent)):,} unknown"
            )
        # The router applies a member's events in the inbox's order: replay that order.
        want = expect(LOADS_APP.programs[PROGRAM], (), [sent[i] for i in ids])
        await check(conn, PROGRAM, want, 0)
    console.print(
        f"{phase}: {len(sent):,} events accepted and applied once; ledger as expected, "
        "loyalty verify clean"
    )


async def run(dev: DevServer, api: ApiProcess, args: argparse.Namespace) -> Figures:
    fig = Figures()
    fig.memory["at start"] = api.rss()
    async with (
        await LoyaltyClient.connect(dev.settings) as client,
        Database(dev.settings) as database,
    ):
        conn = await connect(database.dsn)
        try:
            keys = [
                (await create_key(conn, PROGRAM, ["events:write"], f"bench {c}"))[1]
                for c in range(args.clients + 1)
            ]
            if args.warmup:
                for side, prefix in (("api", "wa"), ("emit_many", "we")):
                    await one_run(
                        side, prefix, args.warmup, api, keys[:-1], client, conn, args, fig
                    )
                await check_all(conn, fig.events, "warm-up (not timed)")
            counts = {"api": 0, "emit_many": 0}
            cpu = cpu_by_role(dev.home, roles(dev, api))
            for side in ORDER:
                counts[side] += 1
                prefix = f"{'a' if side == 'api' else 'e'}{counts[side]}"
                fig.runs.append(
                    await one_run(
                        side, prefix, args.events, api, keys[:-1], client, conn, args, fig
                    )
                )
            fig.memory["after throughput"] = api.rss()
            fig.cpu["throughput (4 runs)"] = cpu_text(
                cpu, cpu := cpu_by_role(dev.home, roles(dev, api))
            )
            await check_all(conn, fig.events, "throughput")
            cpu = cpu_by_role(dev.home, roles(dev, api))
            fig.latency = lat = await latency(api, keys[-1], conn, args, fig)
            fig.cpu["latency"] = cpu_text(cpu, cpu_by_role(dev.home, roles(dev, api)))
            console.print(
                f"latency: {lat.sent:,} POSTs at {lat.offered:,.0f}/s offered; from due: p50 "
                f"{percentile(lat.due_ms, 0.5):.1f} ms, p99 {percentile(lat.due_ms, 0.99):.1f} "
                f"ms, max {max(lat.due_ms):.1f} ms; {sum(lat.refused.values()):,} not 202"
            )
            fig.memory["after latency"] = api.rss()
            await check_all(conn, fig.events, "latency")
            fig.memory["peak (VmHWM)"] = api.peak_rss()
        finally:
            await conn.close()
    return fig


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def report(fig: Figures, args: argparse.Namespace, loadavg: tuple[float, float]) -> None:
    api = [r for r in fig.runs if r.side == "api"]
    base = [r for r in fig.runs if r.side == "emit_many"]
    api_rate = sum(r.events for r in api) / sum(r.seconds for r in api)
    base_rate = sum(r.events for r in base) / sum(r.seconds for r in base)
    ratio = api_rate / base_rate
    lat = fig.latency
    p50, p99, worst = (percentile(lat.due_ms, q) for q in (0.5, 0.99, 1.0))
    c50, c99, cmax = (percentile(lat.call_ms, q) for q in (0.5, 0.99, 1.0))
    refused = sum(lat.refused.values())
    mib = {k: f"{v / 2**20:,.0f} MiB" for k, v in fig.memory.items()}

    table = Table(title=f"HTTP API (program {PROGRAM}, mixed load with tiers)")
    for name in ("measure", "figures", "goal", ""):
        table.add_column(name)
    for r in fig.runs:
        table.add_row(
            f"throughput, {r.side}",
            f"{r.events:,} events in {r.seconds:.2f} s: {r.rate:,.0f} events/s "
            f"(API CPU {r.api_cpu:.1f} s)",
            "",
            "",
        )
    table.add_row(
        "throughput: POST /v1/events / emit_many",
        f"{api_rate:,.0f} / {base_rate:,.0f} events/s: {ratio:.2f}",
        f"≥ {GOAL_RATIO:.1f}",
        met(ratio >= GOAL_RATIO),
    )
    table.add_row(
        f"latency: {lat.sent:,} single POSTs at {lat.offered:,.0f}/s offered, from due",
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms",
        f"p99 < {GOAL_P99_MS:.0f} ms",
        met(p99 < GOAL_P99_MS),
    )
    table.add_row(
        "latency, from the call (sent → answer)",
        f"p50 {c50:.1f} ms, p99 {c99:.1f} ms, max {cmax:.1f} ms",
        "",
        "",
    )
    shown = ", ".join(f"{k}: {v:,}" for k, v in sorted(lat.refused.items())) or "none"
    table.add_row(
        "latency: answers other than 202",
        f"{refused:,} ({shown}); resent {lat.resent:,}; {lat.connections:,} connections, "
        f"{lat.stale:,} sent again after the server closed an idle one",
        "0",
        met(refused == 0),
    )
    table.add_row(
        "API process RSS",
        ", ".join(f"{k} {v}" for k, v in mib.items()),
        "(reported)",
        "",
    )
    for phase, text in fig.cpu.items():
        table.add_row(f"CPU during {phase}", text, "", "")
    console.print(table)
    console.print(
        f"{args.events:,} events per throughput run over {args.members:,} members; "
        f"{args.clients} clients, batches of {args.batch}; latency: one event per member, "
        f"members of the earlier phases. loyalty api: {fig.api_stop}. "
        f"Load average (1 min) before: {loadavg[0]:.2f}, after: {loadavg[1]:.2f}.",
        soft_wrap=True,
    )
    console.print(f"Machine: {machine()}", soft_wrap=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="events per throughput run")
    parser.add_argument("--members", type=int, default=3_000, help="members per throughput run")
    parser.add_argument("--clients", type=int, default=4, help="concurrent httpx clients")
    parser.add_argument("--batch", type=int, default=500, help="events per POST")
    parser.add_argument("--warmup", type=int, default=1_000, help="untimed events per side")
    parser.add_argument("--rate", type=float, default=500.0, help="latency: POSTs/s offered")
    parser.add_argument("--seconds", type=float, default=10.0, help="latency: duration")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per wait")
    args = parser.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])  # both processes import the app from here
    os.environ["LOYALTY_APP"] = APP
    loadavg = os.getloadavg()[0]
    dev = DevServer("loyalty dev (app bench.ingest_app:app)", batch_size=None)
    api: ApiProcess | None = None
    try:
        dev.wait_ready()
        api = ApiProcess(dev)
        asyncio.run(api.wait_ready())
        fig = asyncio.run(run(dev, api, args))
    except BaseException:
        console.print("\n".join(dev.lines[-40:]), markup=False)
        if api is not None:
            console.print("\n".join(api.lines[-40:]), markup=False)
        raise
    finally:
        stopped = api.stop() if api is not None else ""
        dev.stop()
    fig.api_stop = stopped
    report(fig, args, (loadavg, os.getloadavg()[0]))


if __name__ == "__main__":
    main()
