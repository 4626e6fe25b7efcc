"""`loyalty dev` as a subprocess, the `make run` path: start, use, Ctrl-C, restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client, WorkflowExecutionStatus

from loyalty.store.embedded import free_port
from workflows.router import router_workflow_id

LOYALTY = str(Path(sys.executable).parent / "loyalty")
SEARCH_ATTRIBUTES = {"LoyaltyMemberId", "LoyaltyFlow", "LoyaltyProgram", "LoyaltyTrigger"}
DEPOSIT = {
    "type": "points_deposit",
    "event_id": "e1",
    "member_id": "m1",
    "points": 120,
    "kind": "available",
    "reason": "welcome",
}


def processes_mentioning(folder: Path) -> list[psutil.Process]:
    """Running processes whose command line names the folder."""
    return [
        proc
        for proc in psutil.process_iter(["cmdline"])
        if any(str(folder) in part for part in proc.info["cmdline"] or [])
    ]


@pytest.fixture
def home() -> Iterator[Path]:
    """A short LOYALTY_HOME (Unix socket paths are limited to ~100 characters)."""
    folder = Path(tempfile.mkdtemp(prefix="lf", dir="/tmp"))
    yield folder
    for proc in processes_mentioning(folder):  # left behind only if the test failed
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def make_run_env(home: Path) -> dict[str, str]:
    """The environment of `make run`: no database URL, no Temporal address, free ports."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LOYALTY_DATABASE_URL", "TEMPORAL_ADDRESS", "LOYALTY_TASK_QUEUE")
    }
    env.update(
        LOYALTY_HOME=str(home),
        LOYALTY_DEV_TEMPORAL_PORT=str(free_port()),
        LOYALTY_DEV_UI_PORT=str(free_port()),
        LOYALTY_API_PORT=str(free_port()),
    )
    return env


async def loyalty(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run a short `loyalty` command; exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        LOYALTY,
        *args,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(90):  # a hang guard only
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def running_dev(env: dict[str, str], home: Path) -> AsyncIterator[list[str]]:
    """`loyalty dev --demo` until Ready; on exit Ctrl-C, exit code 0, no process left."""
    proc = await asyncio.create_subprocess_exec(
        LOYALTY,
        "dev",
        "--demo",
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    output: list[str] = []

    async def read_until(marker: str | None) -> None:
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode():
            output.append(line)
            if marker is not None and marker in line:
                return
        assert marker is None, f"loyalty dev exited before {marker!r}:\n{''.join(output)}"

    drain: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(90):  # a hang guard, not a speed assertion
            await read_until("Ready")
        # Keep reading, so that a full pipe never blocks the server.
        drain = asyncio.create_task(read_until(None))
        yield output
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            code = await proc.wait()
            await drain
        assert code == 0, "".join(output)
        assert processes_mentioning(home) == [], "".join(output)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


async def web_ui_status(port: int) -> int:
    """The status of the Web UI's front page, once it accepts connections."""
    async with httpx.AsyncClient() as http, asyncio.timeout(30):
        while True:
            try:
                return (await http.get(f"http://127.0.0.1:{port}/")).status_code
            except httpx.TransportError:
                await asyncio.sleep(0.2)


@pytest.mark.timeout(240)
async def test_dev_starts_everything_stops_on_ctrl_c_and_keeps_data(
    make_run_env: dict[str, str], home: Path
) -> None:
    """`loyalty dev --demo` serves events, the Web UI and the routers; Ctrl-C stops every
    process it started; a second start on the same home still has the member's points."""
    async with running_dev(make_run_env, home) as output:
        code, out, err = await loyalty(make_run_env, "emit", "--wait", json.dumps(DEPOSIT))
        assert (code, out.splitlines()) == (0, ["e1 applied"]), err

        # The HTTP API runs beside the worker, at the address the Ready panel shows.
        api = f"http://127.0.0.1:{make_run_env['LOYALTY_API_PORT']}"
        assert any(f"HTTP API: {api}" in line and f"{api}/docs" in line for line in output)
        code, out, err = await loyalty(make_run_env, "api-keys", "create", "--program",
                                       "default", "--scope", "members:read")  # fmt: skip
        assert code == 0, err
        async with httpx.AsyncClient(base_url=api) as http:
            assert (await http.get("/readyz")).status_code == 200
            member = await http.get(
                "/v1/members/m1", headers={"Authorization": f"Bearer {out.splitlines()[-1]}"}
            )
            assert member.json()["balances"]["points"]["available"] == 120

        assert await web_ui_status(int(make_run_env["LOYALTY_DEV_UI_PORT"])) < 500
        # Payloads are encrypted with the key `loyalty dev` wrote under its home (owner
        # only); its Web UI decodes them through the API's codec endpoint.
        assert stat.S_IMODE((home / "codec-keyring.json").stat().st_mode) == 0o600
        async with httpx.AsyncClient() as http:
            ui = f"http://127.0.0.1:{make_run_env['LOYALTY_DEV_UI_PORT']}"
            found = (await http.get(f"{ui}/api/v1/settings")).json()
        assert found["Codec"]["Endpoint"] == f"{api}/codec"

        # A second shell on the same home, without --app, sees the demo's app.
        code, out, err = await loyalty(
            make_run_env, "maintenance", "status", "--program", "coffee", "--json"
        )
        assert code == 0, err
        assert (json.loads(out)["program"], json.loads(out)["scheme"]) == ("coffee", "main")
        code, out, err = await loyalty(make_run_env, "flows", "--json")
        assert code == 0, err
        assert {"new-purchase", "points-above-200"} <= {f["name"] for f in json.loads(out)}

        client = await Client.connect(f"localhost:{make_run_env['LOYALTY_DEV_TEMPORAL_PORT']}")
        routers = {
            wf.id: wf.status async for wf in client.list_workflows("WorkflowType = 'EventRouter'")
        }
        router = router_workflow_id("loyalty", "default", 0, 1)
        assert routers.get(router) == WorkflowExecutionStatus.RUNNING, routers
        history = await client.get_workflow_handle(router).fetch_history()
        assert b"binary/encrypted" in b"".join(e.SerializeToString() for e in history.events)
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace="default")
        )
        assert set(listed.custom_attributes) >= SEARCH_ATTRIBUTES

    async with running_dev(make_run_env, home):
        code, out, err = await loyalty(make_run_env, "member", "m1", "--json")
        assert code == 0, err
        view = json.loads(out)
        assert view["balances"]["points"]["available"] == 120
        assert [e["source"] for e in view["entries"]] == ["event:e1"]
