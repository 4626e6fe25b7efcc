"""`loyalty demo --exit` as a real process: the whole story reaches every outcome."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from examples.stories import Outcome, Snapshot, missing_outcomes
from loyalty.store.embedded import free_port
from tests.test_dev import LOYALTY, processes_mentioning

OUTCOMES = (
    "coffee ana: promoted silver → gold by her purchase",
    "coffee ana: exactly one gold_welcome e-mail received by the webhook receiver, signature "
    "verified",
    "coffee ana: the return clawed back 85 points: 0 available, 70 debt",
    "tea: a 7-day expiry reminder for dana, eli and ana",
    "every journey completed, none failed or still running",
)


@pytest.fixture
def demo_home() -> Iterator[Path]:
    """A short LOYALTY_HOME (Unix socket paths are limited to ~100 characters)."""
    folder = Path(tempfile.mkdtemp(prefix="ld", dir="/tmp"))
    yield folder
    for proc in processes_mentioning(folder):  # left behind only if the test failed
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.timeout(240)
async def test_demo_exit_plays_the_story_and_every_outcome_happens(demo_home: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LOYALTY_DATABASE_URL", "TEMPORAL_ADDRESS", "LOYALTY_TASK_QUEUE")
    }
    env.update(
        LOYALTY_HOME=str(demo_home),
        LOYALTY_DEV_TEMPORAL_PORT=str(free_port()),
        LOYALTY_DEV_UI_PORT=str(free_port()),
        LOYALTY_API_PORT=str(free_port()),
        LOYALTY_DEMO_WEBHOOK_PORT=str(free_port()),
        LOYALTY_DEMO_LIST_PORT=str(free_port()),
        COLUMNS="200",
    )
    proc = await asyncio.create_subprocess_exec(
        LOYALTY, "demo", "--exit", "--timeout", "150",
        env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(200):  # a hang guard only; the story has its own timeout
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    lines = [line.strip() for line in text.splitlines()]
    assert proc.returncode == 0, text
    assert "all 17 expected outcomes happened" in lines, text
    for outcome in OUTCOMES:
        assert f"✓ {outcome}" in lines, text
    assert "→ login-2 no_effect" in lines, text
    assert any(
        line.startswith("Journeys in the Temporal Web UI: http://localhost:") for line in lines
    ), text
    assert processes_mentioning(demo_home) == [], text


def test_missing_outcomes_lists_each_outcome_that_did_not_happen() -> None:
    snapshot = Snapshot(outcomes={("coffee", "login-1"): "applied"})
    outcomes = [
        Outcome(
            "the first login applied", lambda s: s.outcomes[("coffee", "login-1")] == "applied"
        ),
        Outcome("ana is gold", lambda s: s.member("coffee", "ana").tier == "gold"),  # raises
        Outcome("a second login", lambda s: ("coffee", "login-2") in s.outcomes),
    ]
    assert missing_outcomes(outcomes, snapshot) == ["ana is gold", "a second login"]


@pytest.mark.parametrize(
    ("environment", "where"),
    [
        ({}, "in this folder"),
        ({"LOYALTY_HOME": "/srv/demo-home"}, "with LOYALTY_HOME=/srv/demo-home"),
        ({"LOYALTY_DATABASE_URL": "postgresql://u@db/x"}, "with the same LOYALTY_DATABASE_URL"),
    ],
)
def test_after_the_demo_the_next_commands_name_the_member_and_the_home(
    environment: dict[str, str], where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from examples.story import story
    from loyalty.cli.demo import next_commands
    from loyalty.settings import Settings

    for name in ("LOYALTY_HOME", "LOYALTY_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    lines = next_commands(story(2), Settings())
    assert lines[0] == (
        f"Next, in another shell {where} (the commands find the demo's app themselves):"
    )
    commands = [line.strip() for line in lines[1:]]
    assert commands == [
        "loyalty member ana-2",
        "loyalty messages --member ana-2 --program coffee",
        "loyalty flows",
        "loyalty maintenance status --program coffee",
        "loyalty report",
    ]
