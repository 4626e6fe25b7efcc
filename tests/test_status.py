"""`loyalty status` and `loyalty events --pending` as subprocesses, against the test stack.

With a worker running, status exits 0 and shows every service up, the routers and loops
running. With a service stopped (PostgreSQL or Temporal at a closed port, no worker on the
task queue, a configured API that does not answer), it still shows what it can read and
exits 3 with one line naming each stopped service. Events accepted while no router runs
are the backlog: listed oldest first, counted per partition with their lag.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from loyalty.events import PointsDeposit
from loyalty.ingest.inbox import insert_events
from loyalty.store.db import prepare_database
from loyalty.store.embedded import free_port
from tests.conftest import TEST_APP, StartWorker
from tests.test_cli import Run, cli_env, loyalty

# How long the worker may take to be seen polling its task queue.
POLLING = 30.0


def deposit(event_id: str, member: str, program: str, **extra: Any) -> PointsDeposit:
    return PointsDeposit(
        event_id=event_id, member_id=member, program=program, points=10, kind="available",
        reason="welcome", **extra,
    )  # fmt: skip


async def status_when_up(env: dict[str, str]) -> Run:
    """`loyalty status --json` once the worker's pollers are seen (they start polling just
    after the worker is ready)."""
    async with asyncio.timeout(POLLING):
        while True:
            done = await loyalty(env, "status", "--json")
            if done.code != 3 or "worker" not in done.err:
                return done
            await asyncio.sleep(0.5)


async def test_status_of_a_running_stack_exits_0(
    start_worker: StartWorker, settings_env: dict[str, object]
) -> None:
    settings = await start_worker(LOYALTY_ROUTER_PARTITIONS=2)
    env = cli_env({**settings_env, "LOYALTY_ROUTER_PARTITIONS": 2})
    done = await status_when_up(env)
    assert done.code == 0, done.err
    shown = json.loads(done.out)
    assert shown["stopped"] == []
    assert shown["task_queue"] == settings.task_queue
    assert {s["name"]: s["up"] for s in shown["services"]} | {"API": None} == {
        "PostgreSQL": True, "Temporal": True, "worker": True, "API": None,
    }  # fmt: skip
    routers = [(r["program"], r["partition"], r["running"], r["pending"]) for r in shown["routers"]]
    assert routers == [
        ("coffee", 0, True, 0), ("coffee", 1, True, 0),
        ("default", 0, True, 0), ("default", 1, True, 0),
    ]  # fmt: skip
    assert [(h["program"], h["running"]) for h in shown["housekeeping"]] == [
        ("coffee", True), ("default", True),
    ]  # fmt: skip
    assert shown["routers"][0]["processed"]["events"] == 0
    assert shown["maintenance"] == []  # the test app has no tier scheme
    assert (shown["dead_letters"], shown["streams"], shown["schedules"]) == ([], [], [])
    screen = await loyalty(env, "status")
    assert screen.code == 0, screen.err
    for part in ("PostgreSQL", "Temporal", "worker", "Routers and backlog", "dead letters: none"):
        assert part in screen.out, screen.out


async def test_status_names_each_stopped_service_and_exits_3(
    settings_env: dict[str, object], database_url: str
) -> None:
    await prepare_database(database_url, TEST_APP)
    env = cli_env(settings_env)
    # Temporal at a closed port: what PostgreSQL holds is still shown.
    temporal_port = free_port()
    done = await loyalty(
        {**env, "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}"}, "status", "--json"
    )
    assert done.code == 3, done.err
    assert len(done.problems) == 1, done.err
    assert done.problems[0].startswith(f"Temporal at 127.0.0.1:{temporal_port} is unavailable")
    assert "Traceback" not in done.err
    shown = json.loads(done.out)
    assert [(r["program"], r["running"]) for r in shown["routers"]] == [
        ("coffee", None), ("default", None),
    ]  # fmt: skip
    assert "schedules" not in shown
    # PostgreSQL too, and a configured API that does not answer.
    db_port, api_port = free_port(), free_port()
    stopped = {
        **env,
        "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
        "LOYALTY_DATABASE_URL": f"postgresql://loyalty:secret@127.0.0.1:{db_port}/loyalty",
        "LOYALTY_API_PORT": str(api_port),
    }
    done = await loyalty(stopped, "status")
    assert done.code == 3, done.err
    assert [p.split(" is unavailable")[0].split(":")[0] for p in done.problems] == [
        "PostgreSQL at 127.0.0.1", "Temporal at 127.0.0.1", "API",
    ]  # fmt: skip
    assert f"127.0.0.1:{db_port}/loyalty" in done.problems[0]
    assert f"127.0.0.1:{api_port}" in done.problems[2]
    assert "secret" not in done.out + done.err
    assert "unknown (PostgreSQL down)" in done.out
    # Both servers up, no worker: the worker is the stopped service.
    done = await loyalty(env, "status", "--json")
    assert done.code == 3, done.err
    assert len(done.problems) == 1
    assert done.problems[0].startswith("worker: no worker polls task queue")
    assert [r["running"] for r in json.loads(done.out)["routers"]] == [False, False]


async def test_the_backlog_is_listed_oldest_first_and_counted_with_its_lag(
    settings_env: dict[str, object], database_url: str, conn: asyncpg.Connection
) -> None:
    await prepare_database(database_url, TEST_APP)
    env = cli_env(settings_env)
    at = datetime.now(UTC) - timedelta(hours=1)
    for event in (
        deposit("e1", "ann", "default", occurred_at=at),
        deposit("e2", "bob", "coffee"),
        deposit("e3", "cid", "default"),
    ):
        await insert_events(conn, [event])  # one statement each: ids in this order
    await conn.execute(
        """UPDATE events SET attempts = 2, last_error = 'boom', not_before = now() + interval '1 h'
           WHERE event_id = 'e3'"""
    )
    done = await loyalty(env, "events", "--pending", "--json")
    assert done.code == 0, done.err
    rows = [json.loads(line) for line in done.lines]
    assert [(r["program"], r["event_id"], r["type"], r["member_id"]) for r in rows] == [
        ("default", "e1", "points_deposit", "ann"),
        ("coffee", "e2", "points_deposit", "bob"),
        ("default", "e3", "points_deposit", "cid"),
    ]
    assert datetime.fromisoformat(rows[0]["occurred_at"]) == at
    assert all(r["age_seconds"] >= 0 for r in rows)
    assert (rows[2]["attempts"], rows[2]["error"]) == (2, "boom")
    assert rows[2]["not_before"] is not None
    done = await loyalty(
        env, "events", "--pending", "--program", "default", "--limit", "1", "--json"
    )
    assert [json.loads(line)["event_id"] for line in done.lines] == ["e1"]
    table = await loyalty(env, "events", "--pending", "--limit", "2")
    assert table.code == 0, table.err
    assert "Pending events" in table.out
    assert "… and 1 more pending" in table.out
    for args in (("events",), ("events", "--pending", "--failed")):
        refused = await loyalty(env, *args)
        assert (refused.code, refused.problems) == (
            2,
            ["say which events to list: --failed or --pending"],
        )
    unknown = await loyalty(env, "events", "--pending", "--program", "nope")
    assert unknown.code == 2
    assert unknown.problems[0].startswith("program: unknown program 'nope'")

    # The status shows the same backlog per partition, with the age of its oldest event.
    done = await loyalty(env, "status", "--json")
    assert done.code == 3  # no worker
    backlog = {r["program"]: r for r in json.loads(done.out)["routers"]}
    assert (backlog["default"]["pending"], backlog["default"]["retrying"]) == (2, 1)
    assert (backlog["coffee"]["pending"], backlog["coffee"]["retrying"]) == (1, 0)
    assert backlog["default"]["lag_seconds"] >= backlog["coffee"]["lag_seconds"] >= 0

    # A dead-lettered event leaves the backlog for the dead letters.
    await conn.execute(
        """UPDATE events SET status = 'dead', processed_at = now(), attempts = 5,
                             last_error = 'gone' WHERE event_id = 'e2'"""
    )
    done = await loyalty(env, "events", "--failed", "--json")
    assert [(r["event_id"], r["error"]) for r in map(json.loads, done.lines)] == [("e2", "gone")]
    done = await loyalty(env, "events", "--pending", "--json")
    assert [json.loads(line)["event_id"] for line in done.lines] == ["e1", "e3"]
    shown = json.loads((await loyalty(env, "status", "--json")).out)
    assert [(d["program"], d["dead"]) for d in shown["dead_letters"]] == [("coffee", 1)]
    screen = await loyalty(env, "status")
    assert "dead letters: coffee 1 (loyalty events --failed)" in screen.out
