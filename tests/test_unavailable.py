"""A service that is down reads as "unavailable, try again": exit code 3, one line.

PostgreSQL down, an address that does not resolve, Temporal down, Temporal up with no
worker: every command answers with one line naming what is down (never a secret) and
exit code 3, which tells a producer that nothing was decided and a retry is safe. The
Python client raises `ServiceUnavailable`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import asyncpg
import pytest
from temporalio.testing import WorkflowEnvironment

from loyalty.errors import ServiceUnavailable
from loyalty.events import PointsDeposit
from loyalty.models import MaintenanceLoopInput
from loyalty.settings import Settings
from loyalty.store.embedded import EmbeddedPostgres, free_port
from starter.client import LoyaltyClient
from tests.conftest import with_database
from tests.test_cli import Run, cli_env, deposit, loyalty
from workflows.maintenance import TierMaintenance, maintenance_workflow_id

SECRET = "s3cret-pw"
APP = "tests.e2e_app:app"

# Every command that reads or writes the database.
DATABASE_COMMANDS = [
    ("emit", json.dumps(deposit("e1"))),
    ("emit", "--wait", json.dumps(deposit("e1"))),
    ("member", "m1"),
    ("verify",),
    ("report",),
    ("migrate",),
    ("events", "--failed"),
    ("messages", "--member", "m1"),
    ("housekeeping", "run"),
    ("maintenance", "history", "--program", "coffee"),
    ("adjust", "--file", "{csv}"),
    ("worker",),
]


def one_line_unavailable(run: Run, what: str) -> str:
    """The single stderr line of a command that found a service unavailable."""
    assert run.code == 3, run
    assert len(run.err.splitlines()) == 1, run.err
    assert "Traceback" not in run.err
    assert SECRET not in run.out + run.err
    line = run.problems[0]
    assert what in line, line
    return line


@pytest.fixture
def csv_file(tmp_path: Path) -> str:
    path = tmp_path / "adjust.csv"
    path.write_text("member_id,points,kind,reason\nm1,5,available,goodwill\n")
    return str(path)


@pytest.mark.parametrize("args", DATABASE_COMMANDS, ids=lambda a: " ".join(a[:2]))
async def test_database_down_exits_3_with_one_line_and_no_secret(
    settings_env: dict[str, object], csv_file: str, args: tuple[str, ...]
) -> None:
    port = free_port()
    env = {
        **cli_env(settings_env),
        "LOYALTY_APP": APP,
        "LOYALTY_DATABASE_URL": f"postgresql://loyalty:{SECRET}@127.0.0.1:{port}/loyalty",
    }
    run = await loyalty(env, *(a.replace("{csv}", csv_file) for a in args))
    line = one_line_unavailable(run, f"PostgreSQL at 127.0.0.1:{port}")
    assert "try again" in line, line


async def test_an_address_that_does_not_resolve_is_unavailable_too(
    settings_env: dict[str, object],
) -> None:
    env = {
        **cli_env(settings_env),
        "LOYALTY_DATABASE_URL": f"postgresql://loyalty:{SECRET}@db.nowhere.invalid:5432/x",
    }
    run = await loyalty(env, "emit", json.dumps(deposit("e1")))
    one_line_unavailable(run, "PostgreSQL at db.nowhere.invalid:5432")


async def test_a_database_that_does_not_exist_is_configuration_exit_2(
    settings_env: dict[str, object], pg_admin_dsn: str
) -> None:
    env = {**cli_env(settings_env), "LOYALTY_DATABASE_URL": with_database(pg_admin_dsn, "nope")}
    run = await loyalty(env, "member", "m1")
    assert run.code == 2, run
    assert len(run.problems) == 1, run.err
    assert "LOYALTY_DATABASE_URL" in run.problems[0], run.err
    assert 'database "nope" does not exist' in run.problems[0], run.err


async def test_the_client_raises_service_unavailable(settings_env: dict[str, object]) -> None:
    port = free_port()
    url = f"postgresql://loyalty:{SECRET}@127.0.0.1:{port}/loyalty"
    settings = Settings(**{**settings_env, "LOYALTY_DATABASE_URL": url})  # type: ignore[arg-type]
    with pytest.raises(ServiceUnavailable) as raised:
        await LoyaltyClient.connect(settings)
    assert f"PostgreSQL at 127.0.0.1:{port}" in str(raised.value)
    assert SECRET not in str(raised.value)
    assert raised.value.service == "PostgreSQL"


async def test_a_client_whose_database_stops_raises_service_unavailable(
    settings_env: dict[str, object],
) -> None:
    """A producer's long-lived client: its PostgreSQL stops."""
    folder = Path(tempfile.mkdtemp(prefix="lf", dir="/tmp"))
    server = EmbeddedPostgres(folder / "pg")
    server.start()
    try:
        url = await server.ensure_database()
        settings = Settings(**{**settings_env, "LOYALTY_DATABASE_URL": url})  # type: ignore[arg-type]
        event = PointsDeposit(event_id="e1", member_id="m1", points=5, kind="available",
                              reason="x")  # fmt: skip
        async with await LoyaltyClient.connect(settings) as client:
            server.stop()
            with pytest.raises(ServiceUnavailable) as raised:
                await client.emit(event)
            assert "PostgreSQL" in str(raised.value)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("action", ["status", "pause", "resume", "run"])
async def test_temporal_down_exits_3_with_one_line(
    settings_env: dict[str, object], action: str
) -> None:
    port = free_port()
    env = {**cli_env(settings_env), "LOYALTY_APP": APP, "TEMPORAL_ADDRESS": f"127.0.0.1:{port}"}
    run = await loyalty(env, "maintenance", action, "--program", "coffee")
    one_line_unavailable(run, f"Temporal at 127.0.0.1:{port}")


async def test_the_worker_with_temporal_down_exits_3(settings_env: dict[str, object]) -> None:
    port = free_port()
    env = {**cli_env(settings_env), "TEMPORAL_ADDRESS": f"127.0.0.1:{port}"}
    run = await loyalty(env, "worker")
    one_line_unavailable(run, f"Temporal at 127.0.0.1:{port}")


@pytest.mark.parametrize("action", ["status", "run"])
async def test_a_loop_without_a_worker_answers_at_once_with_exit_3(
    settings_env: dict[str, object], dev_env: WorkflowEnvironment, action: str
) -> None:
    """The loop exists in Temporal but no worker polls its task queue (stopped)."""
    env = {**cli_env(settings_env), "LOYALTY_APP": APP}
    task_queue = str(settings_env["LOYALTY_TASK_QUEUE"])
    handle = await dev_env.client.start_workflow(
        TierMaintenance.run,
        MaintenanceLoopInput(program="coffee", scheme="main"),
        id=maintenance_workflow_id(task_queue, "coffee", "main"),
        task_queue=task_queue,
    )
    try:
        run = await loyalty(env, "maintenance", action, "--program", "coffee")
    finally:
        await handle.terminate("test finished")
    line = one_line_unavailable(run, "no worker")
    assert task_queue in line, line


async def test_no_loop_at_all_exits_3_saying_to_start_a_worker(
    settings_env: dict[str, object],
) -> None:
    env = {**cli_env(settings_env), "LOYALTY_APP": APP}
    run = await loyalty(env, "maintenance", "status", "--program", "coffee")
    line = one_line_unavailable(run, "no tier maintenance loop for program 'coffee'")
    assert "start a worker" in line, line


async def test_emit_wait_without_a_worker_exits_3_and_the_event_stays_accepted(
    settings_env: dict[str, object], conn: asyncpg.Connection
) -> None:
    env = cli_env(settings_env)
    run = await loyalty(env, "emit", "--wait", "--timeout", "1", json.dumps(deposit("e1")))
    assert run.code == 3, run
    assert run.out == ""
    assert len(run.problems) == 1, run.err
    assert "no worker" in run.problems[0], run.err
    assert await conn.fetchval("SELECT status FROM events WHERE event_id = 'e1'") == "pending"
