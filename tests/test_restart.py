"""A worker killed in the middle of a batch: nothing lost, nothing applied twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncpg
import pytest

from loyalty.events import PointsDeposit
from starter.client import LoyaltyClient
from tests.conftest import StartWorker


@pytest.mark.timeout(180)
async def test_worker_killed_mid_batch_loses_nothing_and_applies_once(
    settings_env: dict[str, object],
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
) -> None:
    # Each ledger write takes a few milliseconds, so a batch is still open when the
    # worker is killed.
    await conn.execute(
        """CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN PERFORM pg_sleep(0.004); RETURN NEW; END $$;
           CREATE TRIGGER slow_write BEFORE INSERT ON ledger_transactions
               FOR EACH ROW EXECUTE FUNCTION slow_write();"""
    )
    events = [
        PointsDeposit(
            event_id=f"e{i}",
            member_id=f"m{i % 30}",
            points=1 + i % 5,
            kind="available",
            reason="restart test",
        )
        for i in range(1500)
    ]
    results = await client.emit_many(events)

    env = {
        **os.environ,
        **{k: str(v) for k, v in settings_env.items()},
        "LOYALTY_ROUTER_BATCH_SIZE": "200",
    }
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "loyalty"),
        "worker",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(90):
            while not await conn.fetchval("SELECT count(*) FROM events WHERE status <> 'pending'"):
                await asyncio.sleep(0.05)
        # A batch of 200 takes about a second: wait a moment into the next one.
        await asyncio.sleep(0.3)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    done_when_killed = await conn.fetchval("SELECT count(*) FROM events WHERE status <> 'pending'")
    assert 0 < done_when_killed < len(events)

    # A new worker on the same task queue takes over once the dead session's heartbeat
    # times out; the batch that was open when the worker died was rolled back.
    await start_worker()
    outcomes = await client.wait(results, timeout=120)
    assert {o.describe() for o in outcomes} == {"applied"}
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == len(events)
    assert await conn.fetchval(
        "SELECT count(DISTINCT idempotency_key) FROM ledger_transactions"
    ) == len(events)
    expected: dict[str, int] = {}
    for e in events:
        expected[e.member_id] = expected.get(e.member_id, 0) + e.points
    rows = await conn.fetch("SELECT member_id, balance FROM accounts WHERE member_id IS NOT NULL")
    assert {r["member_id"]: r["balance"] for r in rows} == expected
