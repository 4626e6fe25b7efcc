"""`loyalty status`: one screen of operations, from PostgreSQL and Temporal.

It reads, and never changes anything: the services (PostgreSQL, Temporal, the workers
polling the task queue, the HTTP API), the event routers of every program and partition
with their backlog and lag, the dead letters, the Temporal Schedules of recurring flows,
the profile streams and their lag, and the latest tier maintenance and housekeeping runs
with their loops. Each part is read on its own: a service that is down leaves its parts
unknown and the others shown, and the command then exits 3 with one line per stopped
service (nothing decided: try again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.table import Table

from loyalty.cli.kit import UNAVAILABLE, console, problem, run, settings_of
from loyalty.errors import ServiceUnavailable
from loyalty.settings import Settings

if TYPE_CHECKING:
    from temporalio.client import Client

    from loyalty.store.db import Conn

T = TypeVar("T")
# How long a worker, Schedule or loop may take to answer before it counts as not answering.
ANSWER = timedelta(seconds=5)
# A worker long-polls for a minute at a time; Temporal lists a poller for minutes after
# its last poll, so only a poll this recent counts as a worker that runs.
POLLER_FRESH = timedelta(seconds=90)


def _problem_of(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def _database(settings: Settings, stack: contextlib.AsyncExitStack) -> Conn:
    """A connection to the (migrated) database, closed with ``stack``.

    Without ``LOYALTY_DATABASE_URL``, the embedded server must already run (`loyalty
    dev`): status does not start one.
    """
    from loyalty.store.db import Database, connect, prepare_database
    from loyalty.store.embedded import EmbeddedPostgres

    if settings.database_url is None:
        embedded = EmbeddedPostgres(settings.home / "postgres")
        if not embedded.is_running():
            raise ServiceUnavailable(
                "PostgreSQL",
                f"embedded PostgreSQL under {embedded.data_dir} is not running "
                "(loyalty dev starts it; or set LOYALTY_DATABASE_URL)",
            )
    database = await stack.enter_async_context(Database(settings))
    await prepare_database(database.dsn, None)
    conn = await connect(database.dsn)
    stack.push_async_callback(conn.close)
    return conn


async def _workers(settings: Settings, client: Client) -> list[str]:
    """The identities of the workers that polled the task queue lately."""
    from temporalio.api.enums.v1 import TaskQueueType
    from temporalio.api.taskqueue.v1 import TaskQueue
    from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

    seen: set[str] = set()
    now = datetime.now(UTC)
    for kind in (TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW, TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY):
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=settings.temporal_namespace,
                task_queue=TaskQueue(name=settings.task_queue),
                task_queue_type=kind,
            ),
            timeout=ANSWER,
        )
        for poller in described.pollers:
            if now - poller.last_access_time.ToDatetime(UTC) <= POLLER_FRESH:
                seen.add(poller.identity)
    return sorted(seen)


async def _api(settings: Settings) -> dict[str, Any]:
    """The HTTP API at its address: up or not; ``configured`` when the address is set."""
    import httpx

    url = f"http://{settings.api_host}:{settings.api_port}"
    configured = bool({"api_host", "api_port"} & settings.model_fields_set)
    try:
        async with httpx.AsyncClient(timeout=ANSWER.total_seconds()) as http:
            answer = await http.get(f"{url}/healthz")
        up, detail = answer.status_code == 200, f"{url}: /healthz answered {answer.status_code}"
    except httpx.HTTPError as exc:
        up, detail = False, f"{url}: {_problem_of(exc) or 'no answer'}"
    return {"name": "API", "up": up, "configured": configured, "detail": detail}


async def _running(client: Client, workflow_id: str) -> bool:
    """Whether the workflow (a router or loop, by its singleton id) runs now."""
    from temporalio.client import WorkflowExecutionStatus
    from temporalio.service import RPCError, RPCStatusCode

    try:
        described = await client.get_workflow_handle(workflow_id).describe(rpc_timeout=ANSWER)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return described.status == WorkflowExecutionStatus.RUNNING


async def gather(settings: Settings) -> tuple[dict[str, Any], list[str]]:
    """Everything the screen shows, as JSON-ready data, and the lines naming what is down."""
    from loyalty.temporal import connect_temporal

    down: list[str] = []
    services: list[dict[str, Any]] = []
    found: dict[str, Any] = {"task_queue": settings.task_queue, "services": services}
    async with contextlib.AsyncExitStack() as stack:
        conn: Conn | None = None
        try:
            conn = await _database(settings, stack)
            services.append({"name": "PostgreSQL", "up": True, "detail": "reachable"})
        except ServiceUnavailable as exc:
            services.append({"name": "PostgreSQL", "up": False, "detail": str(exc)})
            down.append(str(exc))
        client: Client | None = None
        address = settings.effective_temporal_address
        try:
            client = await connect_temporal(settings)
            services.append({"name": "Temporal", "up": True, "detail": address})
        except ServiceUnavailable as exc:
            services.append({"name": "Temporal", "up": False, "detail": str(exc)})
            down.append(str(exc))
        if client is not None:
            workers = await _answer(down, "Temporal", lambda: _workers(settings, client))
            if workers is not None:
                detail = (
                    f"{len(workers)} polling task queue {settings.task_queue!r}: "
                    + ", ".join(workers)
                    if workers
                    else f"no worker polls task queue {settings.task_queue!r} "
                    "(start loyalty worker or loyalty dev)"
                )
                services.append({"name": "worker", "up": bool(workers), "detail": detail})
                if not workers:
                    down.append(f"worker: {detail}")
        api = await _api(settings)
        services.append(api)
        if api["configured"] and not api["up"]:
            down.append(f"API: {api['detail']}")
        if conn is not None:
            found.update(await _from_database(conn, settings))
        if client is not None:
            await _from_temporal(found, client, settings, conn is not None, down)
    return found, down


async def _answer(down: list[str], service: str, read: Callable[[], Awaitable[T]]) -> T | None:
    """``read()``, or None after adding a line to ``down`` when the service stopped
    answering meanwhile."""
    from temporalio.service import RPCError

    from loyalty.temporal import UNAVAILABLE_STATUSES

    try:
        return await read()
    except RPCError as exc:
        if exc.status not in UNAVAILABLE_STATUSES:
            raise
        down.append(f"{service}: {exc.message}; try again")
        return None


async def _from_database(conn: Conn, settings: Settings) -> dict[str, Any]:
    from loyalty.ingest.inbox import backlog, dead_letters
    from loyalty.ledger.housekeeping import latest_runs as housekeeping_runs
    from loyalty.router import totals
    from loyalty.streams.capture import list_streams
    from loyalty.tiers.maintenance import latest_runs as maintenance_runs

    programs = await conn.fetch(
        """SELECT name, coalesce(array(SELECT s->>'name'
                             FROM jsonb_array_elements(config->'tier_schemes') AS s), '{}')
                        AS schemes
           FROM programs ORDER BY name"""
    )
    pending = {
        (r["program"], r["partition"]): r for r in await backlog(conn, settings.router_partitions)
    }
    idle = {"pending": 0, "retrying": 0, "lag_seconds": 0.0}
    routers = [
        {
            "program": p["name"], "partition": n, "partitions": settings.router_partitions,
            "running": None,
            **{k: pending.get((p["name"], n), idle)[k] for k in idle},
        }
        for p in programs
        for n in range(settings.router_partitions)
    ]  # fmt: skip
    for r in routers:
        done = await totals.read(conn, r["program"], r["partitions"], r["partition"])
        r["processed"] = done.model_dump()
    kept = {r.program: r for r in await housekeeping_runs(conn)}
    maintained = {(r.program, r.scheme): r for r in await maintenance_runs(conn)}
    return {
        "routers": routers,
        "dead_letters": [
            {**d, "last_failed_at": d["last_failed_at"].isoformat()}
            for d in await dead_letters(conn)
        ],
        "streams": [s.model_dump(mode="json") for s in await list_streams(conn)],
        "housekeeping": [
            {
                "program": p["name"],
                "running": None,
                "last_run": kept[p["name"]].model_dump(mode="json") if p["name"] in kept else None,
            }
            for p in programs
        ],
        "maintenance": [
            {
                "program": p["name"],
                "scheme": scheme,
                "running": None,
                "last_run": maintained[key].model_dump(mode="json") if key in maintained else None,
            }
            for p in programs
            for scheme in p["schemes"]
            for key in [(p["name"], scheme)]
        ],
    }


async def _from_temporal(
    found: dict[str, Any], client: Client, settings: Settings, database: bool, down: list[str]
) -> None:
    """Which routers and loops run, and the Schedules; their parts stay None when Temporal
    stops answering meanwhile."""
    from loyalty.cli.schedules import describe_schedules
    from loyalty.flows.schedules import of_task_queue
    from workflows.housekeeping import housekeeping_workflow_id
    from workflows.maintenance import maintenance_workflow_id
    from workflows.router import router_workflow_id

    queue = settings.task_queue
    ids: list[tuple[dict[str, Any], str]] = []
    if database:
        ids += [
            (r, router_workflow_id(queue, r["program"], r["partition"], r["partitions"]))
            for r in found["routers"]
        ]
        ids += [(h, housekeeping_workflow_id(queue, h["program"])) for h in found["housekeeping"]]
        ids += [
            (m, maintenance_workflow_id(queue, m["program"], m["scheme"]))
            for m in found["maintenance"]
        ]

    async def read() -> None:
        states = await asyncio.gather(*(_running(client, wid) for _, wid in ids))
        for (row, _), running in zip(ids, states, strict=True):
            row["running"] = running
        schedule_ids = [
            s.id async for s in await client.list_schedules() if of_task_queue(s.id, queue)
        ]
        found["schedules"] = await describe_schedules(client, schedule_ids)

    await _answer(down, "Temporal", read)


def _yes(value: bool | None, yes: str = "running", no: str = "[red]not running[/]") -> str:
    return "[dim]unknown[/]" if value is None else yes if value else no


def _seconds(value: float) -> str:
    return f"{value:,.1f} s"


def _when(at: str | None) -> str:
    return "-" if at is None else at.replace("T", " ")[:19]


def render(found: dict[str, Any]) -> None:
    """Print the screen: one small table per part; parts that could not be read say so."""
    services = Table("service", "state", "detail", title=f"loyalty · task queue "
                     f"{found['task_queue']}", title_justify="left")  # fmt: skip
    for s in found["services"]:
        optional = s["name"] == "API" and not s.get("configured")
        state = "[green]up[/]" if s["up"] else "[dim]not running[/]" if optional else "[red]down[/]"
        services.add_row(s["name"], state, s["detail"])
    console.print(services)
    if "routers" not in found:
        console.print("routers, backlog, dead letters, streams, runs: unknown (PostgreSQL down)")
    else:
        routers = Table("program", "partition", "router", "pending", "retrying", "lag",
                        "processed", "dead", title="Routers and backlog",
                        title_justify="left")  # fmt: skip
        for r in found["routers"]:
            routers.add_row(
                r["program"], f"{r['partition'] + 1} of {r['partitions']}", _yes(r["running"]),
                f"{r['pending']:,}", f"{r['retrying']:,}", _seconds(r["lag_seconds"]),
                f"{r['processed']['events']:,}", f"{r['processed']['dead']:,}",
            )  # fmt: skip
        console.print(routers)
        dead = found["dead_letters"]
        console.print(
            "dead letters: "
            + (", ".join(f"{d['program']} {d['dead']:,}" for d in dead) if dead else "none")
            + (" (loyalty events --failed)" if dead else ""),
            highlight=False,
        )
        _render_streams(found["streams"])
        _render_runs(found)
    schedules = found.get("schedules")
    if schedules is None:
        console.print("schedules: unknown (Temporal down)")
    elif schedules:
        table = Table("schedule", "program", "state", "next run (UTC)", "runs",
                      title="Recurring flows", title_justify="left")  # fmt: skip
        for s in schedules:
            table.add_row(
                s["flow"] or s["id"], s["program"] or "", "paused" if s["paused"] else "active",
                _when(s["next_runs"][0] if s["next_runs"] else None), f"{s['runs']:,}",
            )  # fmt: skip
        console.print(table)
    else:
        console.print("schedules: none on this task queue")


def _render_streams(streams: list[dict[str, Any]]) -> None:
    if not streams:
        console.print("streams: none installed")
        return
    table = Table("stream", "state", "pending", "lag", "failures", "last delivery",
                  title="Profile streams", title_justify="left")  # fmt: skip
    for s in streams:
        table.add_row(
            s["name"], "enabled" if s["enabled"] else "disabled", f"{s['pending']:,}",
            _seconds(s["lag_seconds"]), f"{s['failures']:,}", _when(s["last_delivered_at"]),
        )  # fmt: skip
    console.print(table)


def _render_runs(found: dict[str, Any]) -> None:
    table = Table("loop", "program", "loop state", "last run (as of)", "state", "took",
                  title="Housekeeping and tier maintenance", title_justify="left")  # fmt: skip
    for h in found["housekeeping"]:
        last = h["last_run"] or {}
        took = last.get("duration_seconds")
        table.add_row(
            "housekeeping", h["program"], _yes(h["running"]), _when(last.get("as_of")),
            last.get("step", "-") if last.get("step") != "done" else "finished",
            "-" if took is None else _seconds(took),
        )  # fmt: skip
    for m in found["maintenance"]:
        last = m["last_run"] or {}
        finished = last.get("finished_at")
        state = "-" if not last else "finished" if finished else "running"
        table.add_row(
            f"maintenance {m['scheme']}", m["program"], _yes(m["running"]),
            _when(last.get("as_of")), state, "",
        )  # fmt: skip
    console.print(table)


def register(cli: typer.Typer) -> None:
    """Add `loyalty status` to the command line."""

    @cli.command()
    def status(
        ctx: typer.Context,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """One screen: services, routers and backlog, dead letters, schedules, streams, the
        latest maintenance and housekeeping runs. Exits 3 naming each stopped service."""
        found, down = run(gather(settings_of(ctx)))
        found["stopped"] = down
        if as_json:
            print(json.dumps(found, indent=2, default=str))
        else:
            render(found)
        for line in down:
            problem(line)
        raise typer.Exit(UNAVAILABLE if down else 0)
