"""Profile streams in a real worker on the dev server, killed mid-batch, and as operators
and services control them: `loyalty streams` as a process, the HTTP API with curl."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from examples.marketing_list import MarketingList
from tests.conftest import StartWorker
from tests.streams_app import build
from tests.test_api import StartApi, make_key, problem_of
from tests.test_api import start_api as start_api  # the fixture
from tests.test_cli import cli_env, loyalty

SECRET = "list-secret"


async def settled(conn: asyncpg.Connection, timeout: float = 60) -> None:
    """Wait until the stream has nothing pending and nothing in flight."""
    async with asyncio.timeout(timeout):
        while await conn.fetchval(
            """SELECT (SELECT count(*) FROM stream_marks) + (SELECT count(*) FROM stream_batches)
                      + (SELECT count(*) FROM events WHERE status = 'pending')"""
        ):
            await asyncio.sleep(0.1)


def members_json(n: int) -> list[dict[str, Any]]:
    return [
        {"type": "member_updated", "event_id": f"u{i}", "member_id": f"m{i}", "program": "shop",
         "profile": {"alt_id": f"ALT-{i}"}}
        for i in range(n)
    ]  # fmt: skip


@pytest.mark.timeout(180)
async def test_a_worker_killed_mid_batch_resends_it_under_the_same_key(
    settings_env: dict[str, object],
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shop = MarketingList(SECRET)
    shop.start()
    shop.gate.clear()  # requests wait: the first batch is in flight when the worker dies
    env = {
        **os.environ,
        **{k: str(v) for k, v in settings_env.items()},
        "LOYALTY_APP": "tests.streams_app:app",
        "STREAMS_TEST_LIST_URL": shop.url,
        "LIST_SECRET": SECRET,
    }
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "loyalty"), "worker", env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        done = await loyalty(cli_env(env), "emit", "--wait", stdin="\n".join(
            json.dumps(e) for e in members_json(30)
        ))  # fmt: skip
        assert done.code == 0, done.err
        async with asyncio.timeout(60):
            while shop.arrived == 0:
                await asyncio.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    # The list applies the request the dead worker sent; its answer is lost.
    shop.gate.set()
    key = await conn.fetchval("SELECT idempotency_key FROM stream_batches")
    assert key == "stream:crm:1"

    monkeypatch.setenv("LIST_SECRET", SECRET)
    await start_worker(app=build(shop.url))
    await settled(conn)
    try:
        assert shop.duplicates == 1  # the same batch, the same key: applied once
        assert shop.errors == []
        assert shop.snapshot() == {f"ALT-{i}": {"TIER": "bronze", "POINTS": 0} for i in range(30)}
        rows = await conn.fetch("SELECT batch, count(*) AS n FROM stream_records GROUP BY batch")
        assert [(r["batch"], r["n"]) for r in rows] == [(1, 30)]
    finally:
        shop.stop()


@pytest.mark.timeout(180)
async def test_streams_on_the_command_line_and_over_http(
    settings_env: dict[str, object],
    start_worker: StartWorker,
    start_api: StartApi,
    conn: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shop = MarketingList(SECRET)
    shop.start()
    monkeypatch.setenv("LIST_SECRET", SECRET)
    await start_worker(app=build(shop.url))
    env = cli_env(settings_env)
    try:
        emitted = await loyalty(env, "emit", "--wait", stdin="\n".join(
            json.dumps(e) for e in members_json(5)
        ))  # fmt: skip
        assert emitted.code == 0, emitted.err
        await settled(conn)
        listed = await loyalty(env, "streams", "--json")
        assert listed.code == 0, listed.err
        (crm,) = json.loads(listed.out)
        assert (crm["name"], crm["enabled"], crm["upserts"], crm["pending"]) == ("crm", True, 5, 0)
        shown = await loyalty(env, "streams")
        assert "crm" in shown.out
        assert "enabled" in shown.out

        # Disabled over HTTP (curl, an admin key of the program); changes wait, marked.
        admin = await make_key(conn, "admin", program="shop")
        reader = await make_key(conn, "members:read", program="shop")
        api = await start_api()
        curl = shutil.which("curl")
        assert curl is not None
        run = await asyncio.create_subprocess_exec(
            curl, "-sS", "-X", "POST", "-H", f"Authorization: Bearer {admin}",
            f"{api.url}/v1/streams/crm/disable", stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await run.communicate()
        assert json.loads(out)["enabled"] is False
        async with api.client(reader) as http:
            assert "admin" in problem_of(await http.get("/v1/streams"), 403)["detail"]
        async with api.client(admin) as http:
            missing = problem_of(await http.get("/v1/streams/nope"), 404)
            assert missing["detail"] == "no stream 'nope' in program 'shop'"
            deposit = {"type": "points_deposit", "event_id": "d1", "member_id": "m1",
                       "points": 40, "kind": "available", "reason": "gift"}  # fmt: skip
            assert (await http.post("/v1/events", json=deposit)).status_code == 202
            await asyncio.sleep(1.0)
            status = (await http.get("/v1/streams/crm")).json()
            assert (status["enabled"], status["pending"]) == (False, 1)
            assert shop.snapshot()["ALT-1"]["POINTS"] == 0

            enabled = await loyalty(env, "streams", "enable", "crm")
            assert enabled.code == 0
            assert "enabled: 1 members pending" in enabled.out
            await settled(conn)
            assert shop.snapshot()["ALT-1"]["POINTS"] == 40
            resync = (await http.post("/v1/streams/crm/resync")).json()
            assert resync == {"stream": "crm", "marked": 5}
        await settled(conn)
        # From the command line it follows the delivery to the end.
        resynced = await loyalty(env, "streams", "resync", "crm")
        assert resynced.code == 0, resynced.err
        assert "stream crm: 5 members sent" in resynced.out
        status_run = await loyalty(env, "streams", "status", "crm", "--json")
        status = json.loads(status_run.out)
        assert (status["upserts"], status["batches"], status["pending"]) == (16, 4, 0)
        unknown = await loyalty(env, "streams", "status", "nope")
        assert unknown.code == 2
        assert unknown.err.strip().endswith("no stream 'nope'; streams: crm")
        assert "Traceback" not in unknown.err
    finally:
        shop.stop()
