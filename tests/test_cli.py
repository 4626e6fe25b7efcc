"""The `loyalty` command line as a real subprocess, against the test's database and queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psutil
import pytest

from tests.conftest import StartWorker

LOYALTY = str(Path(sys.executable).parent / "loyalty")


@dataclass(frozen=True)
class Run:
    """What a finished `loyalty` process left: exit code and its output."""

    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()

    @property
    def problems(self) -> list[str]:
        return [line.removeprefix("error: ") for line in self.err.splitlines()]


def cli_env(settings_env: dict[str, object]) -> dict[str, str]:
    """The process environment of one test; COLUMNS unset so output does not depend on it."""
    env = {**os.environ, **{k: str(v) for k, v in settings_env.items()}}
    env.pop("COLUMNS", None)
    return env


async def loyalty(env: dict[str, str], *args: str, stdin: str | bytes | None = None) -> Run:
    """Run `loyalty ARGS` without blocking the event loop (the worker may run in it)."""
    proc = await asyncio.create_subprocess_exec(
        LOYALTY,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):  # a hang guard only
            given = stdin.encode() if isinstance(stdin, str) else stdin
            out, err = await proc.communicate(given)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


def deposit(event_id: str, points: int = 120, **extra: Any) -> dict[str, Any]:
    event = {
        "type": "points_deposit",
        "event_id": event_id,
        "member_id": "m1",
        "points": points,
        "kind": "available",
        "reason": "welcome",
    }
    return {**event, **extra}


def withdrawal(event_id: str, points: int) -> dict[str, Any]:
    return {**deposit(event_id, points), "type": "points_withdrawal", "reason": "gift"}


async def available(env: dict[str, str], member: str = "m1") -> int:
    run = await loyalty(env, "member", member, "--json")
    assert run.code == 0, run.err
    points: int = json.loads(run.out)["balances"]["points"]["available"]
    return points


async def test_emit_accepts_and_member_json_shows_the_entry(
    settings_env: dict[str, object], start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    """`emit` prints `accepted`; once processed, `member --json` has the documented shape."""
    env = cli_env(settings_env)
    await start_worker()
    run = await loyalty(env, "emit", json.dumps(deposit("e1")))
    assert (run.code, run.lines) == (0, ["e1 accepted"]), run.err
    async with asyncio.timeout(30):
        while True:
            status = await conn.fetchval("SELECT status FROM events WHERE event_id = 'e1'")
            if status != "pending":
                break
            await asyncio.sleep(0.1)
    assert status == "processed"
    run = await loyalty(env, "member", "m1", "--json")
    assert run.code == 0, run.err
    view = json.loads(run.out)
    # The contract's fields, and the operator's: enrolment, erasure, profile, paging.
    assert set(view) == {
        "member_id",
        "program",
        "tier",
        "tiers",
        "balances",
        "upcoming_expiries",
        "entries",
        "profile",
        "enrolled_at",
        "erased_at",
        "more_entries",
    }
    assert (view["member_id"], view["program"]) == ("m1", "default")
    assert view["balances"]["points"]["available"] == 120
    assert [(e["points"], e["reason"], e["source"]) for e in view["entries"]] == [
        (120, "welcome", "event:e1")
    ]


async def test_emit_wait_applies_once_and_repeats_are_duplicates(
    settings_env: dict[str, object], start_worker: StartWorker, conn: asyncpg.Connection
) -> None:
    """`--wait` prints `applied`; an event id sent again is `duplicate` and changes nothing."""
    env = cli_env(settings_env)
    await start_worker()
    assert (await loyalty(env, "emit", "--wait", json.dumps(deposit("e1")))).lines == ["e1 applied"]
    run = await loyalty(env, "emit", "--wait", json.dumps(deposit("e2", 30)))
    assert (run.code, run.lines) == (0, ["e2 applied"]), run.err
    assert await available(env) == 150
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 2
    for args in (["emit"], ["emit", "--wait"]):
        run = await loyalty(env, *args, json.dumps(deposit("e1")))
        assert (run.code, run.lines) == (0, ["e1 duplicate"]), run.err
    assert await available(env) == 150
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 2


async def test_emit_wait_reports_a_refused_withdrawal_and_exits_1(
    settings_env: dict[str, object], start_worker: StartWorker
) -> None:
    """A withdrawal above the balance is `rejected: insufficient_points: …`, exit code 1."""
    env = cli_env(settings_env)
    await start_worker()
    assert (await loyalty(env, "emit", "--wait", json.dumps(deposit("e1", 50)))).code == 0
    run = await loyalty(env, "emit", "--wait", json.dumps(withdrawal("e3", 80)))
    assert run.code == 1, run.err
    assert len(run.lines) == 1
    assert run.lines[0].startswith("e3 rejected: insufficient_points: ")
    assert await available(env) == 50


async def test_emit_of_a_reused_id_with_other_content_exits_2_naming_the_fields(
    settings_env: dict[str, object], conn: asyncpg.Connection
) -> None:
    """`<event_id> conflict: <fields>` and exit 2, writing nothing; the same content again
    (without occurred_at, filled in anew) is still `duplicate`."""
    env = cli_env(settings_env)
    assert (await loyalty(env, "emit", json.dumps(deposit("e1")))).lines == ["e1 accepted"]
    run = await loyalty(env, "emit", json.dumps(deposit("e1", 500, member_id="m2")))
    assert (run.code, run.out, run.problems) == (2, "", ["e1 conflict: member_id, points"])
    stdin = json.dumps(deposit("e2")) + "\n" + json.dumps(deposit("e1", 7)) + "\n"
    run = await loyalty(env, "emit", stdin=stdin)
    assert (run.code, run.out, run.problems) == (2, "", ["e1 conflict: points"])
    assert await conn.fetchval("SELECT count(*) FROM events") == 1
    run = await loyalty(env, "emit", json.dumps(deposit("e1")))
    assert (run.code, run.lines) == (0, ["e1 duplicate"]), run.err


BAD_EVENTS: dict[str, tuple[str, list[str]]] = {
    "unknown type": (json.dumps({"type": "bonus", "event_id": "x", "member_id": "m1"}), ["type"]),
    "missing member_id": (
        json.dumps({k: v for k, v in deposit("x").items() if k != "member_id"}),
        ["member_id"],
    ),
    "negative points": (json.dumps(deposit("x", -5)), ["points"]),
    "unknown field": (json.dumps(deposit("x", colour="red")), ["colour"]),
    "malformed JSON": ('{"type": "points_deposit", "event_id": ', ["invalid JSON"]),
    "oversized attributes": (
        json.dumps(deposit("x", attributes={"note": "a" * (16 * 1024 + 1)})),
        ["attributes"],
    ),
    "derived type": (
        json.dumps(
            {
                "type": "new_stage",
                "event_id": "x",
                "member_id": "m1",
                "to_tier": "gold",
                "direction": "up",
                "cause": "earn",
            }
        ),
        ["type"],
    ),
    "unknown program": (json.dumps(deposit("x", program="nope")), ["program"]),
    "occurred_at in year 9999": (
        json.dumps(deposit("x", occurred_at="9999-12-30T00:00:00Z")),
        ["occurred_at"],
    ),
    "occurred_at in year 0 UTC": (
        json.dumps(deposit("x", occurred_at="0001-01-01T00:00:00+14:00")),
        ["occurred_at"],
    ),
    "NUL in event_id": (json.dumps(deposit("x\u0000")), ["event_id"]),
    "NUL in attributes": (json.dumps(deposit("x", attributes={"a": "\u0000"})), ["attributes"]),
    "deeply nested attributes": (
        json.dumps(deposit("x"))[:-1] + ', "attributes": {"a": ' + "[" * 3000 + "]" * 3000 + "}}",
        ["attributes"],
    ),
    "5,000-digit integer": (
        json.dumps(deposit("x"))[:-1] + ', "attributes": {"n": ' + "9" * 5000 + "}}",
        ["attributes"],
    ),
    "money with 17 decimal places as a JSON number": (
        '{"type": "purchase", "event_id": "x", "member_id": "m1", "order_id": "o1",'
        ' "amount": 169.99999999999999999, "currency": "EUR"}',
        ["amount"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_EVENTS))
async def test_invalid_event_exits_2_with_one_line_per_problem_and_writes_nothing(
    case: str, settings_env: dict[str, object], conn: asyncpg.Connection
) -> None:
    """Invalid input: exit 2, one stderr line per problem naming the field, no row written."""
    text, fields = BAD_EVENTS[case]
    run = await loyalty(cli_env(settings_env), "emit", text)
    assert run.code == 2, (run.out, run.err)
    assert run.out == ""
    assert len(run.problems) == len(fields), run.err
    for problem, field in zip(run.problems, fields, strict=True):
        assert problem.startswith(f"{field}:"), run.err
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_emit_refuses_occurred_at_beyond_the_configured_clock_skew(
    settings_env: dict[str, object], conn: asyncpg.Connection
) -> None:
    """`LOYALTY_MAX_CLOCK_SKEW` (default 1 day) bounds how far in the future an event may be."""
    env = cli_env(settings_env)
    ahead = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    run = await loyalty(
        {**env, "LOYALTY_MAX_CLOCK_SKEW": "PT1H"},
        "emit",
        json.dumps(deposit("x", occurred_at=ahead)),
    )
    assert (run.code, run.out) == (2, ""), run.err
    assert run.problems == ["occurred_at: must not be more than 1 hour in the future"]
    assert await conn.fetchval("SELECT count(*) FROM events") == 0
    run = await loyalty(env, "emit", json.dumps(deposit("x", occurred_at=ahead)))
    assert (run.code, run.lines) == (0, ["x accepted"]), run.err


async def test_json_lines_with_one_bad_line_write_none(
    settings_env: dict[str, object], conn: asyncpg.Connection
) -> None:
    """On stdin, line 2 of 3 invalid: exit 2, problems prefixed `line 2:`, nothing written."""
    lines = [deposit("e1"), deposit("e2", 0), deposit("e3")]
    stdin = "".join(json.dumps(e) + "\n" for e in lines)
    run = await loyalty(cli_env(settings_env), "emit", stdin=stdin)
    assert run.code == 2, (run.out, run.err)
    assert run.problems, run.err
    assert all(p.startswith("line 2: points:") for p in run.problems), run.err
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_json_lines_that_are_not_utf8_are_named_by_line(
    settings_env: dict[str, object], conn: asyncpg.Connection
) -> None:
    stdin = json.dumps(deposit("e1")).encode() + b"\n" + b'{"event_id": "\xff"}\n'
    run = await loyalty(cli_env(settings_env), "emit", stdin=stdin)
    assert run.code == 2, (run.out, run.err)
    assert [p[:27] for p in run.problems] == ["line 2: invalid JSON: 'utf-"], run.err
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_json_lines_with_wait_print_one_outcome_per_event(
    settings_env: dict[str, object], start_worker: StartWorker
) -> None:
    """50 JSON lines on stdin with --wait: one `applied` line per event, in input order."""
    env = cli_env(settings_env)
    await start_worker()
    events = [deposit(f"e{i}", 1 + i % 5, member_id=f"m{i % 7}") for i in range(50)]
    run = await loyalty(env, "emit", "--wait", stdin="\n".join(map(json.dumps, events)) + "\n")
    assert run.code == 0, run.err
    assert run.lines == [f"e{i} applied" for i in range(50)]
    assert await available(env, "m0") == sum(1 + i % 5 for i in range(0, 50, 7))


async def test_inspection_commands_on_a_clean_database(settings_env: dict[str, object]) -> None:
    """`events --failed`, `flows` and `migrate` on a fresh, migrated database."""
    env = cli_env(settings_env)
    run = await loyalty(env, "events", "--failed")
    assert (run.code, "no failed events" in run.out) == (0, True), run.out + run.err
    run = await loyalty(env, "flows")
    assert (run.code, "no flows defined" in run.out) == (0, True), run.out + run.err
    run = await loyalty(env, "migrate")
    assert (run.code, run.out.strip()) == (0, "database is up to date"), run.err


def processes_mentioning(folder: Path) -> list[psutil.Process]:
    """Running processes whose command line names the folder."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(str(folder) in part for part in cmdline):
            found.append(proc)
    return found


@pytest.fixture
def short_home() -> Iterator[Path]:
    """A short data folder (Unix socket paths are limited to ~100 characters)."""
    home = Path(tempfile.mkdtemp(prefix="lf", dir="/tmp"))
    yield home
    for proc in processes_mentioning(home):  # left behind only if the test failed
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    shutil.rmtree(home, ignore_errors=True)


async def test_emit_without_database_url_runs_embedded_postgres_and_stops_it(
    short_home: Path,
) -> None:
    """No LOYALTY_DATABASE_URL: `emit` starts PostgreSQL under LOYALTY_HOME and stops it."""
    env = {k: v for k, v in os.environ.items() if k != "LOYALTY_DATABASE_URL"}
    env["LOYALTY_HOME"] = str(short_home)
    run = await loyalty(env, "emit", json.dumps(deposit("e1")))
    assert (run.code, run.lines) == (0, ["e1 accepted"]), run.err
    assert processes_mentioning(short_home) == []
    # The event was stored: a second run finds it in the same data folder.
    run = await loyalty(env, "emit", json.dumps(deposit("e1")))
    assert (run.code, run.lines) == (0, ["e1 duplicate"]), run.err
    assert processes_mentioning(short_home) == []
