"""Everyday use from a second shell: commands find the app the worker runs, print JSON,
exit with the documented codes, and their help shows flags as flags.

A real `loyalty worker --app tests.e2e_app:app` runs on the test's database and task
queue; the other commands run as processes from another folder, without ``--app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.test_cli import LOYALTY, Run, cli_env

APP = "tests.e2e_app:app"
ROOT = Path(__file__).resolve().parent.parent


async def loyalty_in(folder: Path, env: dict[str, str], *args: str) -> Run:
    """Run `loyalty ARGS` in ``folder``."""
    proc = await asyncio.create_subprocess_exec(
        LOYALTY, *args, env=env, cwd=folder, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        async with asyncio.timeout(90):  # a hang guard only
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


@contextlib.asynccontextmanager
async def worker_process(env: dict[str, str], *args: str) -> AsyncIterator[None]:
    """`loyalty worker ARGS` from the repository's folder, until it printed Ready."""
    proc = await asyncio.create_subprocess_exec(
        LOYALTY, "worker", *args, env={**env, "COLUMNS": "200"}, cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    output: list[str] = []
    try:
        async with asyncio.timeout(90):  # a hang guard, not a speed assertion
            while "Ready" not in "".join(output):
                line = (await proc.stdout.readline()).decode()
                assert line, "the worker exited:\n" + "".join(output)
                output.append(line)
        drain = asyncio.create_task(proc.stdout.read())
        yield
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            await proc.wait()
            await drain
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.timeout(240)
async def test_commands_find_the_app_of_the_running_worker_and_print_json(
    settings_env: dict[str, object], conn: asyncpg.Connection, tmp_path: Path
) -> None:
    env = cli_env(settings_env)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    async with worker_process(env, "--app", APP):
        flows = await loyalty_in(elsewhere, env, "flows", "--json")
        assert flows.code == 0, flows.err
        listed = json.loads(flows.out)
        by_name = {f["name"]: f for f in listed}
        assert {"BigPurchase", "TierUp", "SilverToGold"} <= set(by_name)
        assert by_name["TierUp"]["programs"] == ["coffee"]
        assert by_name["TierUp"]["journeys"] == {"running": 0, "completed": 0, "failed": 0}

        status = await loyalty_in(
            elsewhere, env, "maintenance", "status", "--program", "coffee", "--json"
        )
        assert status.code == 0, status.err
        shown = json.loads(status.out)
        assert (shown["program"], shown["scheme"], shown["paused"]) == ("coffee", "main", False)
        assert shown["tiers"] == [
            {"tier": "bronze", "members": 0}, {"tier": "silver", "members": 0},
            {"tier": "gold", "members": 0},
        ]  # fmt: skip

        ran = await loyalty_in(elsewhere, env, "maintenance", "run", "--program", "coffee")
        assert ran.code == 0, ran.err
        history = await loyalty_in(
            elsewhere, env, "maintenance", "history", "--program", "coffee", "--json"
        )
        assert history.code == 0, history.err
        [run] = json.loads(history.out)
        assert (run["program"], run["scheme"], run["scanned"]) == ("coffee", "main", 0)
        assert run["finished_at"] is not None

        housekeeping = await loyalty_in(
            elsewhere, env, "housekeeping", "run", "--program", "coffee", "--json"
        )
        assert housekeeping.code == 0, housekeeping.err
        done = json.loads(housekeeping.out)
        assert {s["step"] for s in done["steps"]} == {"mature", "expire"}
        assert {s["program"] for s in done["steps"]} == {"coffee"}
        assert done["reminders"] == {"coffee": 0}
        assert set(done["pruned"]) == {
            "cutoff",
            "starts",
            "signals",
            "recurring_runs",
            "segment_changes",
        }
        assert done["segments"] == {}

        unknown = await loyalty_in(elsewhere, env, "maintenance", "status", "--program", "tea")
        assert (unknown.code, unknown.problems) == (
            2, ["program: unknown program 'tea'; known: default, coffee"]
        )  # fmt: skip

        adjustments = elsewhere / "adjust.csv"
        adjustments.write_text("member_id,points,kind,reason,program\nm1,5,available,hi,coffee\n")
        adjusted = await loyalty_in(
            elsewhere, env, "adjust", "--file", str(adjustments), "--create-members"
        )
        assert adjusted.code == 0, adjusted.err
    assert (
        await conn.fetchval(
            "SELECT balance FROM accounts WHERE program = 'coffee' AND member_id = 'm1'"
        )
        == 5
    )


async def test_an_app_that_cannot_be_loaded_here_is_named(
    settings_env: dict[str, object], conn: asyncpg.Connection, tmp_path: Path
) -> None:
    """A recorded app whose module is gone: exit 2, naming it and what to do."""
    env = cli_env(settings_env)
    await conn.execute(
        "INSERT INTO worker_apps (task_queue, app, folder) VALUES ($1, 'gone_app:app', $2)",
        env["LOYALTY_TASK_QUEUE"], str(tmp_path),
    )  # fmt: skip
    run = await loyalty_in(tmp_path, env, "flows")
    assert run.code == 2
    [line] = run.problems
    assert line.startswith(
        f"app: the worker on task queue {env['LOYALTY_TASK_QUEUE']!r} runs 'gone_app:app', "
        "which cannot be loaded here"
    ), line
    assert line.endswith("give --app or LOYALTY_APP"), line
    # --app wins over the recorded app.
    explicit = await loyalty_in(ROOT, env, "flows", "--app", APP, "--json")
    assert explicit.code == 0, explicit.err


@pytest.mark.parametrize(
    "command",
    [
        ["member", "--help"],
        ["flows", "--help"],
        ["maintenance", "status", "--help"],
        ["maintenance", "history", "--help"],
        ["housekeeping", "run", "--help"],
        ["adjust", "--help"],
    ],
)
async def test_help_shows_flags_without_a_value(
    settings_env: dict[str, object], command: list[str]
) -> None:
    run = await loyalty_in(ROOT, {**cli_env(settings_env), "COLUMNS": "120"}, *command)
    assert run.code == 0, run.err
    assert "--json" in run.out
    assert "<bool>" not in run.out


@pytest.mark.parametrize(
    "command",
    [
        ["member", "m1"],
        ["messages", "--member", "m1"],
        ["events", "--failed"],
        ["report"],
    ],
)
async def test_an_unknown_program_exits_2(
    settings_env: dict[str, object], command: list[str]
) -> None:
    run = await loyalty_in(ROOT, cli_env(settings_env), *command, "--program", "nope")
    assert (run.code, run.out) == (2, ""), run
    assert run.problems[0].startswith("program: unknown program 'nope'"), run.problems


async def test_a_command_that_talked_to_temporal_exits_with_its_own_code(
    settings_env: dict[str, object],
) -> None:
    """The Temporal client's native threads must not abort the process after the command
    (temporalio/sdk-python#300): fast output made about half of these runs exit -6."""
    env = cli_env(settings_env)
    codes = []
    for _ in range(10):
        run = await loyalty_in(ROOT, env, "flows", "--app", APP, "--json")
        codes.append(run.code)
        assert json.loads(run.out), run.err
    assert codes == [0] * 10
