"""`loyalty maintenance` as a user runs it: a real process against a running worker.

The app is `tests.e2e_app:app`, whose ``coffee`` program has tiers bronze (0), silver
(30) and gold (60), lifetime, and pays 1 point per EUR.
"""

from __future__ import annotations

import asyncio

import asyncpg

from tests.conftest import StartWorker
from tests.e2e_app import app
from tests.test_cli import cli_env, loyalty

APP = "tests.e2e_app:app"


async def test_run_now_shows_the_counts_and_the_tier_distribution_and_history_lists_it(
    settings_env: dict[str, object], start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    # Wide enough for the history table's columns.
    env = {**cli_env(settings_env), "LOYALTY_APP": APP, "COLUMNS": "160"}
    await start_worker(app=app)
    # Qualifying points recorded without their promotion, for maintenance to catch up.
    await conn.execute(
        """INSERT INTO members (program, member_id)
           SELECT 'coffee', 'm' || n FROM generate_series(1, 5) AS n"""
    )
    await conn.execute(
        """INSERT INTO qualifying_points (program, member_id, currency, earned_at, points, source)
           VALUES ('coffee', 'm1', 'points', now(), 40, 'import:1'),
                  ('coffee', 'm2', 'points', now(), 75, 'import:2')"""
    )
    run = await loyalty(env, "maintenance", "run", "--program", "coffee")
    assert run.code == 0, run.err
    assert (
        "maintenance of coffee/main: 5 members reviewed in 1 chunk: 2 promoted, 0 demoted, "
        "0 entered their grace period"
    ) in run.out
    chart = [
        line.split() for line in run.lines if line.strip().startswith(("bronze", "silver", "gold"))
    ]
    assert [(row[0], row[-2], row[-1]) for row in chart] == [
        ("bronze", "3", "60.0%"), ("silver", "1", "20.0%"), ("gold", "1", "20.0%")
    ]  # fmt: skip
    # The promotions went through the inbox: the TierUp flow's journeys ran for both.
    async with asyncio.timeout(30):
        while (
            await conn.fetchval("SELECT count(*) FROM message_log WHERE template = 'tier_up'") < 2
        ):
            await asyncio.sleep(0.05)
    sent = await conn.fetch(
        "SELECT member_id, data FROM message_log WHERE template = 'tier_up' ORDER BY member_id"
    )
    assert [(r["member_id"], r["data"]) for r in sent] == [
        ("m1", {"from": "bronze", "to": "silver", "cause": "maintenance"}),
        ("m2", {"from": "bronze", "to": "gold", "cause": "maintenance"}),
    ]
    history = await loyalty(env, "maintenance", "history", "--program", "coffee")
    assert history.code == 0, history.err
    assert "Maintenance runs of coffee" in history.out
    row = next(line for line in history.lines if "finished" in line)
    cells = [cell.strip() for cell in row.split("│") if cell.strip()]
    assert (cells[0], *cells[3:]) == ("main", "5", "2", "0", "0", "finished")
    paused = await loyalty(env, "maintenance", "pause", "--program", "coffee")
    assert (paused.code, paused.lines) == (0, ["maintenance of coffee/main: paused"])
    status = await loyalty(env, "maintenance", "status", "--program", "coffee")
    assert status.code == 0, status.err
    assert status.lines[0] == "maintenance of coffee/main: paused, 1 runs"
    resumed = await loyalty(env, "maintenance", "resume", "--program", "coffee")
    assert (resumed.code, resumed.lines) == (0, ["maintenance of coffee/main: resumed"])


async def test_bad_program_or_scheme_exit_2_and_a_missing_loop_exits_3(
    settings_env: dict[str, object],
) -> None:
    env = {**cli_env(settings_env), "LOYALTY_APP": APP}
    unknown = await loyalty(env, "maintenance", "run", "--program", "tea")
    assert (unknown.code, unknown.problems) == (
        2, ["program: unknown program 'tea'; known: default, coffee"]
    )  # fmt: skip
    untiered = await loyalty(env, "maintenance", "run", "--program", "default")
    assert (untiered.code, untiered.problems) == (
        2,
        ["program: program 'default' has no tier scheme"],
    )
    scheme = await loyalty(env, "maintenance", "pause", "--program", "coffee", "--scheme", "vip")
    assert (scheme.code, scheme.problems) == (
        2, ["scheme: program 'coffee' has no tier scheme 'vip'; schemes: main"]
    )  # fmt: skip
    # No worker: no loop to talk to, "unavailable, try again".
    missing = await loyalty(env, "maintenance", "pause", "--program", "coffee")
    assert missing.code == 3
    assert missing.problems[0].startswith(
        "no tier maintenance loop for program 'coffee', scheme 'main' on task queue"
    )
