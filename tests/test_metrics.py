"""Metrics: `loyalty dev` (worker and API in one process) scraped over HTTP after a load,
its counters equal to the database's counts; the Grafana dashboard queries only metrics
the engine exports; a taken port is one line and exit 2."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from loyalty.metrics.tracing import tracing_enabled
from loyalty.settings import Settings
from loyalty.store.embedded import free_port
from loyalty.temporal import data_converter
from tests.test_api import make_key
from tests.test_cli import LOYALTY, cli_env, loyalty
from workflows.emit import EMIT_EVENTS

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "dashboards" / "loyalty.json"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@contextlib.asynccontextmanager
async def running_dev(env: dict[str, str]) -> AsyncIterator[list[str]]:
    """`loyalty dev` on the test's database and Temporal until Ready; Ctrl-C at the end."""
    proc = await asyncio.create_subprocess_exec(
        LOYALTY, "dev", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    output: list[str] = []

    async def read(until: str | None) -> None:
        assert proc.stdout is not None
        while line := (await proc.stdout.readline()).decode():
            output.append(line)
            if until is not None and until in line:
                return
        assert until is None, f"loyalty dev exited before {until!r}:\n{''.join(output)}"

    drain = None
    try:
        async with asyncio.timeout(90):  # a hang guard
            await read("Stop with Ctrl-C")
        drain = asyncio.create_task(read(None))
        yield output
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            assert await proc.wait() == 0, "".join(output)
            await drain
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        if drain is not None:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain


def dev_settings(settings_env: dict[str, object], **overrides: object) -> dict[str, str]:
    return cli_env({
        **settings_env,
        "LOYALTY_APP": "tests.e2e_app:app",
        "LOYALTY_API_PORT": free_port(),
        "LOYALTY_METRICS_PORT": free_port(),
        "LOYALTY_METRICS_REFRESH_SECONDS": 0.2,
        **overrides,
    })  # fmt: skip


async def scrape(url: str) -> tuple[Samples, set[str]]:
    """Every sample by (name, labels), and every metric name the endpoint exports (a
    family without samples yet included, under the names its samples will have)."""
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    samples: Samples = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(response.text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        for sample in family.samples:
            names.add(sample.name)
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples, names


def by(samples: Samples, name: str, *labels: str) -> dict[tuple[str, ...], float]:
    """The samples of one metric, summed by the given labels, zeros left out."""
    found: dict[tuple[str, ...], float] = {}
    for (sample, pairs), value in samples.items():
        if sample == name and value:
            key = tuple(dict(pairs)[label] for label in labels)
            found[key] = found.get(key, 0) + value
    return found


def load() -> list[dict[str, Any]]:
    """Applied, rejected, no-effect and journey-starting events, in two programs."""
    events: list[dict[str, Any]] = []
    for i in range(20):
        events.append(
            {
                "type": "points_deposit",
                "event_id": f"d{i}",
                "member_id": f"m{i}",
                "points": 100 + i,
                "kind": "available",
                "reason": "welcome",
            }
        )
        # Larger than the balance: rejected (insufficient points).
        events.append(
            {
                "type": "points_withdrawal",
                "event_id": f"w{i}",
                "member_id": f"m{i}",
                "points": 1000,
                "kind": "available",
                "reason": "too much",
            }
        )
        events.append(
            {"type": "activity", "event_id": f"a{i}", "member_id": f"m{i}", "name": "nothing_earns"}
        )
    for i in range(3):  # BigPurchase starts a journey that sends a message
        events.append(
            {
                "type": "purchase",
                "event_id": f"p{i}",
                "member_id": f"m{i}",
                "order_id": f"o{i}",
                "amount": "120.00",
                "currency": "EUR",
            }
        )
    return events  # fmt: skip


async def database_counts(conn: asyncpg.Connection) -> dict[str, dict[tuple[str, ...], float]]:
    rows = {
        "accepted": await conn.fetch(
            "SELECT program, type, count(*) FROM events WHERE origin = 'client' GROUP BY 1, 2"
        ),
        "outcomes": await conn.fetch(
            """SELECT program, type, CASE status WHEN 'processed' THEN outcome ELSE status END,
                      count(*) FROM events WHERE status <> 'pending' GROUP BY 1, 2, 3"""
        ),
        "liability": await conn.fetch(
            """SELECT program, currency, sum(balance) FROM accounts
               WHERE kind IN ('available', 'earned') GROUP BY 1, 2 HAVING sum(balance) <> 0"""
        ),
        "tiers": await conn.fetch(
            "SELECT program, scheme, tier, count(*) FROM member_tiers GROUP BY 1, 2, 3"
        ),
        "journeys": await conn.fetch(
            "SELECT flow, count(*) FROM journey_starts WHERE started_at IS NOT NULL GROUP BY 1"
        ),
        "messages": await conn.fetch("SELECT program, count(*) FROM message_log GROUP BY 1"),
    }
    return {k: {tuple(r[:-1]): float(r[-1]) for r in v} for k, v in rows.items()}


def exported_counts(samples: Samples) -> dict[str, dict[tuple[str, ...], float]]:
    return {
        "accepted": by(samples, "loyalty_events_accepted_total", "program", "type"),
        "outcomes": by(samples, "loyalty_events_outcomes_total", "program", "type", "outcome"),
        "liability": by(samples, "loyalty_liability_points", "program", "currency"),
        "tiers": by(samples, "loyalty_members_by_tier", "program", "scheme", "tier"),
        "journeys": by(samples, "loyalty_journeys_started_total", "flow"),
        "messages": by(samples, "loyalty_messages_total", "program"),
    }


@pytest.mark.timeout(240)
async def test_the_endpoint_is_scraped_after_a_load_and_equals_the_database(
    settings_env: dict[str, object], conn: asyncpg.Connection, dev_env: WorkflowEnvironment
) -> None:
    temporal = dev_env
    env = dev_settings(settings_env)
    url = f"http://127.0.0.1:{env['LOYALTY_METRICS_PORT']}/metrics"
    async with running_dev(env) as output:
        assert f"Metrics: {url}" in "".join(output), "".join(output)
        default = await make_key(conn, "events:write", program="default")
        coffee = await make_key(conn, "events:write", program="coffee")
        api = f"http://127.0.0.1:{env['LOYALTY_API_PORT']}"
        batch = load()
        async with httpx.AsyncClient(base_url=api) as http:
            for key, program in ((default, "default"), (coffee, "coffee")):
                headers = {"Authorization": f"Bearer {key}"}
                events = [{**e, "program": program} for e in batch]
                for _ in range(2):  # the second time every event is a duplicate
                    posted = await http.post("/v1/events", json={"events": events}, headers=headers)
                    assert posted.status_code == 202, posted.text
                single = await http.post("/v1/events", json=events[0], headers=headers)
                assert single.status_code == 202, single.text
        # Through the worker's EmitEvents too, as a service on another Temporal SDK would
        # (its result is encrypted with the key `loyalty dev` wrote under its home).
        home = Settings.model_validate({"LOYALTY_HOME": env["LOYALTY_HOME"]})
        client = Client(temporal.client.service_client, data_converter=data_converter(home))
        emitted = await client.execute_workflow(
            EMIT_EVENTS,
            {"events": [{"type": "points_deposit", "event_id": "wf", "member_id": "m99",
                         "points": 5, "kind": "earned", "reason": "from a workflow"}]},
            id=f"emit-{uuid.uuid4().hex}", task_queue=env["LOYALTY_TASK_QUEUE"],
            execution_timeout=timedelta(seconds=60),
        )  # fmt: skip
        assert emitted["results"][0]["status"] == "accepted"

        async with asyncio.timeout(90):
            while True:
                database = await database_counts(conn)
                samples, names = await scrape(url)
                exported = exported_counts(samples)
                backlog = by(samples, "loyalty_router_backlog", "program")
                pending = await conn.fetchval("SELECT count(*) FROM events WHERE status='pending'")
                if exported == database and not pending and not backlog:
                    break
                await asyncio.sleep(0.2)

    assert database["outcomes"]["default", "points_withdrawal", "rejected"] == 20
    assert database["outcomes"]["coffee", "points_deposit", "applied"] == 20
    assert database["outcomes"]["default", "activity", "no_effect"] == 20
    assert database["accepted"]["default", "points_deposit"] == 21  # EmitEvents' included
    assert database["journeys"].get(("BigPurchase",)) == 6, database["journeys"]
    assert database["messages"]
    assert database["tiers"] == {("coffee", "main", "gold"): 3}  # the three purchases
    assert set(by(samples, "loyalty_router_oldest_pending_seconds", "program")) == set()
    assert samples["loyalty_database_up", frozenset()] == 1
    assert by(samples, "loyalty_router_batch_events_count", "program")
    assert by(samples, "loyalty_router_batch_duration_seconds_count", "program")
    # The Temporal SDK's own metrics, on the same endpoint.
    assert {n for n in names if n.startswith("temporal_")} >= {
        "temporal_workflow_completed_total",
        "temporal_activity_execution_latency_bucket",
    }


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are no function,
    keyword, label name (matchers, by/without lists), duration or Grafana variable."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)
    expr = re.sub(r"\boffset\s+-?\w+", "", expr)
    keywords = {"and", "or", "unless", "bool", "inf", "nan", "group_left", "group_right"}
    found = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        rest = expr[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in keywords:
            continue
        found.add(match.group())
    return found


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            exprs += [t["expr"] for t in inner.get("targets", []) if "expr" in t]
    return exprs


def test_promql_names_are_read_from_expressions() -> None:
    expr = (
        "histogram_quantile(0.95, sum by (le, program) (rate("
        'loyalty_router_batch_duration_seconds_bucket{program=~"$program"}[$__rate_interval])))'
        " / on (program) group_left time() - loyalty_x offset 5m"
    )
    assert promql_metrics(expr) == {"loyalty_router_batch_duration_seconds_bucket", "loyalty_x"}


@pytest.mark.timeout(180)
async def test_every_metric_the_dashboard_queries_is_exported(
    settings_env: dict[str, object], conn: asyncpg.Connection
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 12
    wanted = set().union(*(promql_metrics(q) for q in queries))
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("throughput", "backlog", "lag", "fail", "liability", "tier"):
        assert topic in titles, topic
    env = dev_settings(settings_env)
    url = f"http://127.0.0.1:{env['LOYALTY_METRICS_PORT']}/metrics"
    async with running_dev(env):
        emitted = await loyalty(env, "emit", "--wait", json.dumps(
            {"type": "purchase", "event_id": "p1", "member_id": "m1", "order_id": "o1",
             "amount": "150", "currency": "EUR"}
        ))  # fmt: skip
        assert emitted.code == 0, emitted.err
        async with asyncio.timeout(60):
            while True:
                _, names = await scrape(url)
                if not wanted - names:
                    break
                await asyncio.sleep(0.5)
    assert wanted - names == set()


async def test_a_taken_metrics_port_is_one_line_and_exit_2(
    settings_env: dict[str, object],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = await loyalty(dev_settings(settings_env, LOYALTY_METRICS_PORT=port), "worker")
    assert run.code == 2, run.err
    assert "Traceback" not in run.err
    assert f"127.0.0.1:{port} (LOYALTY_METRICS_HOST, LOYALTY_METRICS_PORT)" in run.err


async def test_metrics_can_be_turned_off(settings_env: dict[str, object]) -> None:
    env = dev_settings(settings_env, LOYALTY_METRICS="false")
    async with running_dev(env) as output:
        assert "Metrics:" not in "".join(output)
        with pytest.raises(httpx.ConnectError):
            await scrape(f"http://127.0.0.1:{env['LOYALTY_METRICS_PORT']}/metrics")


def test_tracing_is_off_by_default_and_on_with_the_otel_variables() -> None:
    assert not tracing_enabled(Settings())
    assert tracing_enabled(Settings(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318"))
    assert tracing_enabled(Settings(OTEL_TRACES_EXPORTER="console"))
    assert not tracing_enabled(Settings(OTEL_TRACES_EXPORTER="none"))
    assert not tracing_enabled(
        Settings(OTEL_SDK_DISABLED=True, OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318")
    )


@pytest.mark.timeout(120)
async def test_a_worker_traces_with_the_otel_variables(
    settings_env: dict[str, object], dev_env: WorkflowEnvironment
) -> None:
    env = dev_settings(settings_env, OTEL_TRACES_EXPORTER="console")
    proc = await asyncio.create_subprocess_exec(
        LOYALTY, "worker", env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        emitted = await dev_env.client.execute_workflow(
            EMIT_EVENTS,
            {"events": [{"type": "activity", "event_id": "t1", "member_id": "m1",
                         "name": "web_login"}]},
            id=f"emit-{uuid.uuid4().hex}", task_queue=env["LOYALTY_TASK_QUEUE"],
            execution_timeout=timedelta(seconds=60),
        )  # fmt: skip
        assert emitted["results"][0]["status"] == "accepted"
    finally:
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    # The console exporter prints each span as JSON, at the latest when the worker stops.
    spans = set(re.findall(r'"name": "([^"]+)"', out.decode()))
    # The worker's own client starts the routers, traced from start to run; a workflow
    # started by an untraced client still has its activities traced.
    assert spans >= {
        "StartWorkflow:EventRouter",
        "RunWorkflow:EventRouter",
        "RunActivity:route_events",
        "RunActivity:emit_events",
    }, err.decode()
