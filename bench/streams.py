"""Benchmark: profile streams (issue 16): convergence, requests, lag.

One `loyalty dev` with `bench.streams_app` (program ``crm``: tiers over a rolling 365
days, three earn rules, the ``almost-gold`` segment; stream ``list`` of seven fields,
batches of 1,000) and the marketing list of `examples.marketing_list` in this process on
127.0.0.1 (it checks every signature, deduplicates keys, merges fields).

0. Seed (not timed against a goal): --members members join with an alt id and an e-mail
   consent (``member_updated``), through the router; the stream's initial load of every
   record is timed and shown (records/s).
1. Convergence: --changes events over those members, each meant to change a mapped
   value (purchases, deposits of available and earned points, small withdrawals, e-mail
   consent switched), emitted at once, twice; the changes counted are the events that
   changed the member (not refused, not without effect):
   a. live: the stream enabled while the router applies them; from the first emit to
      the list converged (nothing marked, nothing in flight), and the router's own time;
   b. catch-up: the stream disabled while the router applies another --changes events,
      then enabled; from enabling to the list converged. This is the stream's own rate:
      the changes it absorbs per second when the writers are not what it waits for.
   Baseline, same run: one signed request per change to the same list (a record of one
   member each, sequentially over one connection), --sample of them, timed; its rate
   stands for sending --changes changes that way. Goals: at least 10,000 changes/s
   absorbed (b), and at least 20 times fewer requests than changes. Check: every contact
   of the list equals the member's state (tier, balances, segment and consent read in
   bulk; points to the next tier through the member view for a sample).
2. Lag: --lag-members new members (seeded first), then deposits offered at --rate per
   second for --lag-seconds, each by its own ``emit`` at its due time. A change's lag is
   from its batch's commit (``events.processed_at``) to the list applying the first
   record that holds its value. Goal: p99 under 2 s.

Run: ``.venv/bin/python bench/streams.py`` (also in `make bench`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.streams_app

from bench.emit import DevServer, console, machine
from bench.ingest_loads import EMIT_CHUNK, wait_settled
from bench.streams_app import FIELDS
from examples.marketing_list import MarketingList
from loyalty.events import AnyEvent, MemberUpdated, PointsDeposit, PointsWithdrawal, Purchase
from loyalty.ledger.members import member_view
from loyalty.messages.providers import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, sign
from loyalty.store.db import Conn, Database, connect
from loyalty.streams import capture
from starter.client import LoyaltyClient

PROGRAM = "crm"
STREAM = "list"
CHECK_SAMPLE = 300


def met(ok: bool) -> str:
    return "[green]met[/]" if ok else "[red]not met[/]"


async def drained(conn: Conn, limit: float) -> None:
    """Wait until nothing is marked and no batch is in flight."""
    deadline = time.monotonic() + limit
    sql = """SELECT (SELECT count(*) FROM stream_marks WHERE stream = $1)
                    + (SELECT count(*) FROM stream_batches WHERE stream = $1)"""
    while await conn.fetchval(sql, STREAM):
        if time.monotonic() > deadline:
            raise SystemExit(f"the stream did not drain in {limit:.0f} s")
        await asyncio.sleep(0.02)


async def counts(conn: Conn) -> tuple[int, int]:
    """The stream's requests and records delivered so far."""
    row = await conn.fetchrow("SELECT requests, upserts + deletes AS records FROM streams")
    assert row is not None
    return int(row["requests"]), int(row["records"])


def joins(prefix: str, n: int) -> list[AnyEvent]:
    return [
        MemberUpdated(
            event_id=f"join-{prefix}{i}", member_id=f"{prefix}m{i}", program=PROGRAM,
            profile={"alt_id": f"ALT-{prefix}{i}", "consent": {"email": i % 3 != 0}},
        )
        for i in range(n)
    ]  # fmt: skip


def changes(tag: str, n: int, members: int, flip: bool) -> list[AnyEvent]:
    """``n`` events over members ``cm0``…, each meant to change what the stream maps:
    purchases (45%), deposits of available and earned points (35%), small withdrawals
    (10%; refused while the member has nothing yet) and e-mail consent switched to
    ``flip`` of what the member joined with (10%). Event and order ids of pass ``tag``."""
    found: list[AnyEvent] = []
    for i in range(n):
        m = i % members
        common: dict[str, Any] = {
            "event_id": f"{tag}-{i}", "member_id": f"cm{m}", "program": PROGRAM
        }  # fmt: skip
        roll = (i * 7 + i // members * 3) % 20
        if roll < 9:
            found.append(Purchase(**common, order_id=f"{tag}o{i}", amount=Decimal(10 + i % 90),
                                  currency="EUR"))  # fmt: skip
        elif roll < 16:
            kind = "earned" if roll >= 14 else "available"
            found.append(PointsDeposit(**common, points=20 + i % 80, kind=kind, reason="bonus"))
        elif roll < 18:
            found.append(PointsWithdrawal(**common, points=1 + i % 5, kind="available",
                                          reason="reward"))  # fmt: skip
        else:
            joined = m % 3 != 0
            found.append(MemberUpdated(**common, profile={"consent": {"email": joined ^ flip}}))
    return found


async def applied(conn: Conn, tag: str) -> int:
    """Events of pass ``tag`` that changed the member (not refused, not without effect)."""
    return int(
        await conn.fetchval(
            """SELECT count(*) FROM events WHERE program = $1 AND event_id LIKE $2
                 AND status = 'processed' AND outcome IS DISTINCT FROM 'no_effect'""",
            PROGRAM,
            f"{tag}-%",
        )
    )


@dataclass
class Pass:
    name: str
    changes: int
    seconds: float
    router_seconds: float
    requests: int
    records: int

    @property
    def rate(self) -> float:
        return self.changes / self.seconds


async def emit_all(client: LoyaltyClient, events: Iterable[AnyEvent]) -> None:
    await client.emit_many(list(events), chunk_size=EMIT_CHUNK)


async def convergence(
    client: LoyaltyClient, conn: Conn, args: argparse.Namespace
) -> tuple[Pass, Pass]:
    live = changes("a", args.changes, args.members, flip=True)
    requests0, records0 = await counts(conn)
    with console.status(f"live: {args.changes:,} changes, the stream enabled"):
        started = time.monotonic()
        await emit_all(client, live)
        await wait_settled(conn, PROGRAM, args.timeout)
        router = time.monotonic() - started
        await drained(conn, args.timeout)
        seconds = time.monotonic() - started
    requests1, records1 = await counts(conn)
    a = Pass("a. live", await applied(conn, "a"), seconds, router, requests1 - requests0,
             records1 - records0)  # fmt: skip

    later = changes("b", args.changes, args.members, flip=False)
    await capture.set_enabled(conn, STREAM, False)
    with console.status(f"catch-up: {args.changes:,} changes, the stream disabled"):
        started = time.monotonic()
        await emit_all(client, later)
        await wait_settled(conn, PROGRAM, args.timeout)
        router = time.monotonic() - started
    with console.status("catch-up: the stream enabled"):
        started = time.monotonic()
        await capture.set_enabled(conn, STREAM, True)
        await drained(conn, args.timeout)
        seconds = time.monotonic() - started
    requests2, records2 = await counts(conn)
    b = Pass("b. catch-up", await applied(conn, "b"), seconds, router, requests2 - requests1,
             records2 - records1)  # fmt: skip
    return a, b


def baseline(url: str, secret: str, n: int) -> float:
    """One signed request per change, sequentially; seconds for ``n`` changes."""
    fields = {"TIER": "silver", "POINTS": 120, "EARNED": 0, "LIFETIME": 120,
              "NEXT_TIER_IN": 30, "EMAIL_OPTIN": True, "ALMOST_GOLD": False}  # fmt: skip
    with httpx.Client() as http:
        started = time.monotonic()
        for i in range(n):
            key = f"single:{i}"
            body = json.dumps({
                "stream": "single", "batch": i, "idempotency_key": key, "sent_at": int(time.time()),
                "upserts": [{"key": f"ALT-base{i}", "program": PROGRAM, "fields": fields}],
                "deletes": [],
            }, separators=(",", ":")).encode()  # fmt: skip
            response = http.post(
                url, content=body,
                headers={"Content-Type": "application/json", IDEMPOTENCY_HEADER: key,
                         SIGNATURE_HEADER: sign(body, secret)},
            )  # fmt: skip
            response.raise_for_status()
        return time.monotonic() - started


async def check(conn: Conn, shop: MarketingList) -> list[str]:
    """Differences between the list and the members' state (empty: none)."""
    rows = await conn.fetch(
        """SELECT m.member_id, m.profile->>'alt_id' AS alt, m.tier,
                  (m.profile->'consent'->>'email')::boolean AS optin,
                  coalesce((SELECT balance FROM accounts a WHERE a.program = m.program
                            AND a.member_id = m.member_id AND a.kind = 'available'), 0) AS points,
                  coalesce((SELECT balance FROM accounts a WHERE a.program = m.program
                            AND a.member_id = m.member_id AND a.kind = 'earned'), 0) AS earned,
                  coalesce((SELECT lifetime_earned FROM member_currencies c
                            WHERE c.program = m.program AND c.member_id = m.member_id), 0) AS life,
                  EXISTS (SELECT FROM segment_members s WHERE s.program = m.program
                          AND s.member_id = m.member_id AND s.in_segment) AS gold
           FROM members AS m WHERE m.program = $1 AND m.profile ? 'alt_id'""",
        PROGRAM,
    )
    contacts = shop.snapshot()
    problems = []
    if len(contacts) != len(rows):
        problems.append(f"{len(contacts):,} contacts in the list, {len(rows):,} members")
    for r in rows:
        got = contacts.get(r["alt"], {})
        want = {
            "TIER": r["tier"], "POINTS": r["points"], "EARNED": r["earned"],
            "LIFETIME": r["life"], "EMAIL_OPTIN": r["optin"], "ALMOST_GOLD": r["gold"],
        }  # fmt: skip
        wrong = {k: (v, got.get(k)) for k, v in want.items() if got.get(k) != v}
        if wrong:
            problems.append(f"{r['alt']}: {wrong}")
    for r in rows[:: max(1, len(rows) // CHECK_SAMPLE)]:
        view = await member_view(conn, PROGRAM, r["member_id"], limit=1)
        if contacts.get(r["alt"], {}).get("NEXT_TIER_IN") != view.tiers[0].points_to_next:
            problems.append(f"{r['alt']}: NEXT_TIER_IN differs from the member view")
    return problems[:10]


@dataclass
class Lag:
    offered: int
    seconds: float
    lags: list[float]

    def q(self, p: float) -> float:
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


async def lag_phase(
    client: LoyaltyClient, conn: Conn, shop: MarketingList, args: argparse.Namespace
) -> Lag:
    await emit_all(client, joins("lag", args.lag_members))
    await wait_settled(conn, PROGRAM, args.timeout)
    await drained(conn, args.timeout)
    n = int(args.rate * args.lag_seconds)
    deposits = [
        PointsDeposit(event_id=f"lagd-{i}", member_id=f"lagm{i % args.lag_members}",
                      program=PROGRAM, points=1 + i % 9, kind="available", reason="lag")
        for i in range(n)
    ]  # fmt: skip
    first_body = len(shop.bodies)
    tasks = []
    with console.status(f"lag: {n:,} deposits at {args.rate:g}/s"):
        started = time.monotonic()
        for i, event in enumerate(deposits):
            due = started + i / args.rate
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            tasks.append(asyncio.create_task(client.emit(event)))
        await asyncio.gather(*tasks)
        offered = time.monotonic() - started
        await wait_settled(conn, PROGRAM, args.timeout)
        await drained(conn, args.timeout)
    rows = await conn.fetch(
        """SELECT member_id, id, (payload->>'points')::int AS points,
                  extract(epoch FROM processed_at)::float8 AS at
           FROM events WHERE program = $1 AND event_id LIKE 'lagd-%' ORDER BY member_id, id""",
        PROGRAM,
    )
    # What the list received, by key: (arrival, POINTS) in arrival order.
    seen: dict[str, list[tuple[float, int]]] = {}
    for body, at in zip(shop.bodies[first_body:], shop.applied_at[first_body:], strict=True):
        for item in body.get("upserts") or []:
            if "POINTS" in item["fields"]:
                seen.setdefault(item["key"], []).append((at, item["fields"]["POINTS"]))
    lags: list[float] = []
    total: dict[str, int] = {}
    for r in rows:
        member = r["member_id"]
        total[member] = total.get(member, 0) + r["points"]
        key = "ALT-lag" + member.removeprefix("lagm")
        arrival = next((at for at, value in seen.get(key, []) if value >= total[member]), None)
        if arrival is None:
            raise SystemExit(f"{key}: the list never held {total[member]} points")
        lags.append(arrival - r["at"])
    return Lag(n, offered, lags)


def report(seed: tuple[int, float], a: Pass, b: Pass, base: float, lag: Lag,
           problems: list[str], args: argparse.Namespace) -> None:  # fmt: skip
    base_rate = args.sample / base
    table = Table("figure", "profile stream", "baseline: a request per change", "ratio", "goal",
                  title="Profile stream (bench/streams.py)")  # fmt: skip
    members, initial = seed
    table.add_row("initial load", f"{members:,} records in {initial:.1f} s "
                  f"({members / initial:,.0f}/s, router included)", "", "", "")  # fmt: skip
    for p in (a, b):
        table.add_row(
            f"{p.name}: {args.changes:,} events, {p.changes:,} changes",
            f"converged in {p.seconds:.1f} s: {p.rate:,.0f} changes/s (router alone "
            f"{p.router_seconds:.1f} s); {p.records:,} records in {p.requests:,} requests",
            f"{p.changes / base_rate:.0f} s projected ({base_rate:,.0f} changes/s over "
            f"{args.sample:,}); {p.changes:,} requests",
            f"{p.rate / base_rate:.1f}x faster, {p.changes / max(1, p.requests):,.0f}x fewer "
            "requests",
            "" if p is a else f"≥ 10,000 changes/s: {met(p.rate >= 10_000)}; ≥ 20x fewer "
            f"requests: {met(p.changes / max(1, p.requests) >= 20)}",
        )  # fmt: skip
    table.add_row(
        f"lag at {lag.offered / lag.seconds:,.0f} changes/s offered ({lag.offered:,})",
        f"p50 {lag.q(0.5):.2f} s, p95 {lag.q(0.95):.2f} s, p99 {lag.q(0.99):.2f} s, "
        f"max {max(lag.lags):.2f} s", "", "", f"p99 < 2 s: {met(lag.q(0.99) < 2)}",
    )  # fmt: skip
    table.add_row("check", "the list equals the members' state" if not problems else
                  "[red]" + "; ".join(problems), "", "", "")  # fmt: skip
    console.print(table)


async def run(args: argparse.Namespace) -> None:
    secret = secrets.token_hex(16)
    shop = MarketingList(secret)
    shop.start()
    os.environ.update(
        STREAMS_BENCH_LIST_URL=shop.url,
        STREAMS_BENCH_SECRET=secret,
        LOYALTY_APP="bench.streams_app:app",
    )
    dev = DevServer("loyalty dev (app bench.streams_app:app)", batch_size=None)
    try:
        dev.wait_ready()
        async with (
            await LoyaltyClient.connect(dev.settings) as client,
            Database(dev.settings) as db,
        ):
            conn = await connect(db.dsn)
            try:
                with console.status(f"seed: {args.members:,} members join, initial load"):
                    started = time.monotonic()
                    await emit_all(client, joins("c", args.members))
                    await wait_settled(conn, PROGRAM, args.timeout)
                    await drained(conn, args.timeout)
                    seed = (args.members, time.monotonic() - started)
                a, b = await convergence(client, conn, args)
                problems = await check(conn, shop)
                with console.status(f"baseline: {args.sample:,} requests, one per change"):
                    base = await asyncio.to_thread(baseline, shop.url, secret, args.sample)
                lag = await lag_phase(client, conn, shop, args)
                if shop.errors:
                    problems.append(f"the list refused: {shop.errors[:3]}")
            finally:
                await conn.close()
        report(seed, a, b, base, lag, problems, args)
        lags = lag.lags
        console.print(f"Lag mean {statistics.fmean(lags):.2f} s over {len(lags):,} changes.")
    finally:
        dev.stop()
        shop.stop()
    console.print(f"Machine: {machine()}. Fields: {', '.join(FIELDS)}.", soft_wrap=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=200_000, help="per convergence pass")
    parser.add_argument("--sample", type=int, default=5_000, help="baseline requests")
    parser.add_argument("--lag-members", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=500.0, help="lag: changes offered per s")
    parser.add_argument("--lag-seconds", type=float, default=20.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per wait")
    args = parser.parse_args()
    if min(args.members, args.changes, args.sample, args.lag_members) < 1 or args.rate <= 0:
        parser.error("--members, --changes, --sample, --lag-members, --rate: positive")
    os.chdir(Path(__file__).resolve().parents[1])  # `loyalty dev` imports the app from here
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
