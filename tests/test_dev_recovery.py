"""`loyalty dev` and client commands when processes die: nothing left behind, no human needed.

A `loyalty dev` killed with SIGKILL leaves its Temporal dev server and PostgreSQL
running; the next `loyalty dev` on the same home finds them by the pids the home
recorded and takes them over. A `loyalty dev` whose own Temporal or PostgreSQL dies
stops everything with one line and exit code 1. A client command stopped with SIGTERM
stops the embedded PostgreSQL it started, as it does on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import psutil
import pytest

from loyalty.errors import ConfigurationError
from loyalty.store.embedded import EmbeddedPostgres
from tests import test_dev
from tests.test_dev import DEPOSIT, LOYALTY, loyalty, processes_mentioning

# The fixtures of `make run`'s environment: a short home, free ports.
home = test_dev.home
make_run_env = test_dev.make_run_env

# A hang guard for each wait, not a speed assertion.
GUARD = 90


@dataclass
class Dev:
    """A running `loyalty dev` and everything it printed so far."""

    proc: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @property
    def text(self) -> str:
        return "".join(self.output)

    async def exit_code(self) -> int:
        async with asyncio.timeout(GUARD):
            code = await self.proc.wait()
            if self.reader is not None:
                await self.reader
        return code


async def start_dev(env: dict[str, str]) -> Dev:
    """`loyalty dev` until its Ready line; its output keeps being read."""
    proc = await asyncio.create_subprocess_exec(
        LOYALTY,
        "dev",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    dev = Dev(proc)
    ready = asyncio.Event()

    async def read() -> None:
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode():
            dev.output.append(line)
            if "Ready" in line:
                ready.set()

    dev.reader = asyncio.create_task(read())
    waiter = asyncio.create_task(ready.wait())
    async with asyncio.timeout(GUARD):
        await asyncio.wait({waiter, dev.reader}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    assert ready.is_set(), f"loyalty dev exited before Ready:\n{dev.text}"
    return dev


@contextlib.asynccontextmanager
async def dev_running(env: dict[str, str]) -> AsyncIterator[Dev]:
    dev = await start_dev(env)
    try:
        yield dev
    finally:
        if dev.proc.returncode is None:
            dev.proc.kill()
            await dev.proc.wait()
        if dev.reader is not None:
            dev.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dev.reader


def alive(proc: psutil.Process) -> bool:
    """Running, not a zombie (a killed process that its parent has not reaped)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def living(home: Path) -> list[psutil.Process]:
    """The processes that name the home and still run."""
    return [proc for proc in processes_mentioning(home) if alive(proc)]


def server_processes(home: Path) -> dict[str, psutil.Process]:
    """The home's Temporal dev server and PostgreSQL postmaster, by name."""
    found = {}
    for proc in processes_mentioning(home):
        cmdline = " ".join(proc.cmdline())
        if "start-dev" in cmdline:
            found["temporal"] = proc
        elif "postgres" in Path(proc.cmdline()[0]).name:
            found["postgres"] = proc
    return found


@pytest.mark.timeout(300)
async def test_dev_killed_then_started_again_takes_over_its_servers(
    make_run_env: dict[str, str], home: Path
) -> None:
    async with dev_running(make_run_env) as first:
        first.proc.send_signal(signal.SIGKILL)
        await first.exit_code()
    left = server_processes(home)
    assert set(left) == {"temporal", "postgres"}, left

    async with dev_running(make_run_env) as second:
        # The Temporal dev server left behind was stopped, not reused by accident.
        assert not alive(left["temporal"]), second.text
        code, out, err = await loyalty(make_run_env, "emit", "--wait", json.dumps(DEPOSIT))
        assert (code, out.splitlines()) == (0, ["e1 applied"]), err
        second.proc.send_signal(signal.SIGINT)
        assert await second.exit_code() == 0, second.text
    assert living(home) == [], second.text
    assert not alive(left["postgres"])


@pytest.mark.timeout(300)
@pytest.mark.parametrize("server", ["temporal", "postgres"])
async def test_dev_whose_server_dies_stops_everything_with_one_line_and_exits_1(
    make_run_env: dict[str, str], home: Path, server: str
) -> None:
    async with dev_running(make_run_env) as dev:
        before = len(dev.output)
        server_processes(home)[server].send_signal(signal.SIGKILL)
        assert await dev.exit_code() == 1, dev.text
    after = dev.output[before:]
    died = [line for line in after if line.startswith("error: ")]
    assert len(died) == 1, dev.text
    name = "the Temporal dev server" if server == "temporal" else "PostgreSQL"
    assert name in died[0], died
    assert "stopping everything" in died[0], died
    assert "Traceback" not in "".join(after), dev.text
    assert living(home) == [], dev.text


async def event_in_inbox(home: Path) -> bool:
    """Whether the home's embedded database holds an event yet (it may not exist yet)."""
    server = EmbeddedPostgres(home / "postgres")
    try:
        conn = await asyncpg.connect(server.admin_dsn("loyalty"))
    except (ConfigurationError, OSError, asyncpg.PostgresError, AssertionError):
        # Not started yet, or postmaster.pid half written (read while PostgreSQL starts).
        return False
    try:
        return bool(await conn.fetchval("SELECT count(*) FROM events"))
    except asyncpg.PostgresError:
        return False
    finally:
        await conn.close()


@pytest.mark.timeout(180)
async def test_sigterm_of_a_client_that_started_postgres_stops_it(
    make_run_env: dict[str, str], home: Path
) -> None:
    """`timeout 5 loyalty emit --wait …` with no worker: SIGTERM, like Ctrl-C, cleans up."""
    proc = await asyncio.create_subprocess_exec(
        LOYALTY,
        "emit",
        "--wait",
        json.dumps(DEPOSIT),
        env=make_run_env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(GUARD):
            # Once the event is in the inbox, the command is waiting for its outcome.
            while not await event_in_inbox(home):
                await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(GUARD):
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.decode().splitlines() == ["error: stopped by SIGTERM"], err
    assert living(home) == []
