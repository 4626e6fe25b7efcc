"""Builds and runs the Temporal worker with every workflow and activity of the engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import asyncpg
import httpx
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
)
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.emit import EmitActivities
from activities.housekeeping import HousekeepingActivities
from activities.journeys import JourneyActivities
from activities.maintenance import MaintenanceActivities
from activities.recurring import RecurringActivities
from activities.router import InboxListener, RouterActivities
from activities.streams import StreamActivities
from loyalty.app import LoyaltyApp
from loyalty.flows import check_app, workflow_name
from loyalty.flows.schedules import sync_schedules
from loyalty.messages import load_secrets
from loyalty.metrics.journeys import JourneyMetrics
from loyalty.models import (
    HousekeepingLoopInput,
    MaintenanceLoopInput,
    RouterInput,
    StreamLoopInput,
)
from loyalty.router.processing import EventProcessor
from loyalty.segments.membership import install as install_segments
from loyalty.settings import Settings
from loyalty.store.apps import record_app
from loyalty.store.db import create_pool, prepare_database
from loyalty.streams.capture import install as install_streams
from loyalty.streams.delivery import stream_secrets
from loyalty.temporal import FLOW, PROGRAM, SEARCH_ATTRIBUTES
from workflows.emit import EmitEvents
from workflows.housekeeping import Housekeeping, housekeeping_summary, housekeeping_workflow_id
from workflows.maintenance import TierMaintenance, maintenance_summary, maintenance_workflow_id
from workflows.recurring import RecurringFlow
from workflows.router import EventRouter, router_summary, router_workflow_id
from workflows.streams import ProfileStreamWorkflow, stream_summary, stream_workflow_id

log = logging.getLogger("loyalty.worker")
# Webhook providers set their own per-request timeout; this bounds everything else.
HTTP_TIMEOUT = httpx.Timeout(10.0)
HTTP_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)


async def ensure_search_attributes(client: Client) -> None:
    """Register the loyalty search attributes on the namespace if they are missing.

    The dev server registers them at start; a self-hosted cluster gets them here; on
    Temporal Cloud they are added with its own tools, so a refusal is only logged.
    """
    namespace = client.namespace
    try:
        listed = await client.operator_service.list_search_attributes(
            ListSearchAttributesRequest(namespace=namespace)
        )
        missing = {
            key.name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
            for key in SEARCH_ATTRIBUTES
            if key.name not in listed.custom_attributes
        }
        if missing:
            await client.operator_service.add_search_attributes(
                AddSearchAttributesRequest(namespace=namespace, search_attributes=missing)
            )
    except Exception as exc:
        log.warning(
            "could not register search attributes %s: %s",
            ", ".join(k.name for k in SEARCH_ATTRIBUTES),
            exc,
        )


async def _start_singleton(
    client: Client,
    settings: Settings,
    run: Any,
    arg: Any,
    *,
    workflow_id: str,
    program: str,
    flow: str,
    summary: str,
) -> str:
    """Start a long-lived workflow of the task queue unless it already runs."""
    await client.start_workflow(
        run,
        arg,
        id=workflow_id,
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        search_attributes=TypedSearchAttributes(
            [SearchAttributePair(PROGRAM, program), SearchAttributePair(FLOW, flow)]
        ),
        static_summary=summary,
    )
    return workflow_id


async def start_routers(client: Client, settings: Settings, app: LoyaltyApp) -> list[str]:
    """Start one EventRouter per program and partition unless it already runs."""
    partitions = settings.router_partitions
    return [
        await _start_singleton(
            client,
            settings,
            EventRouter.run,
            RouterInput(program=program, partition=partition, partitions=partitions),
            workflow_id=router_workflow_id(settings.task_queue, program, partition, partitions),
            program=program,
            flow="event-router",
            summary=router_summary(program, partition, partitions),
        )
        for program in app.programs
        for partition in range(partitions)
    ]


async def start_loops(client: Client, settings: Settings, app: LoyaltyApp) -> list[str]:
    """Start one TierMaintenance loop per program and tier scheme unless it already runs."""
    return [
        await _start_singleton(
            client,
            settings,
            TierMaintenance.run,
            MaintenanceLoopInput(program=program.name, scheme=scheme.name),
            workflow_id=maintenance_workflow_id(settings.task_queue, program.name, scheme.name),
            program=program.name,
            flow="tier-maintenance",
            summary=maintenance_summary(program.name, scheme.name),
        )
        for program in app.programs.values()
        for scheme in program.tier_schemes
    ]


async def start_housekeeping(client: Client, settings: Settings, app: LoyaltyApp) -> list[str]:
    """Start one Housekeeping loop per program unless it already runs."""
    return [
        await _start_singleton(
            client,
            settings,
            Housekeeping.run,
            HousekeepingLoopInput(program=program.name),
            workflow_id=housekeeping_workflow_id(settings.task_queue, program.name),
            program=program.name,
            flow="housekeeping",
            summary=housekeeping_summary(program.name),
        )
        for program in app.programs.values()
    ]


async def start_streams(client: Client, settings: Settings, app: LoyaltyApp) -> list[str]:
    """Start one ProfileStream workflow per stream of the app unless it already runs."""
    return [
        await _start_singleton(
            client,
            settings,
            ProfileStreamWorkflow.run,
            StreamLoopInput(stream=stream.name),
            workflow_id=stream_workflow_id(settings.task_queue, stream.name),
            program=stream.programs[0],
            flow="profile-stream",
            summary=stream_summary(stream.name),
        )
        for stream in app.streams.values()
    ]


def build_worker(
    client: Client,
    settings: Settings,
    activities: Sequence[object],
    workflows: Sequence[type],
    **options: Any,
) -> Worker:
    """A worker on the configured task queue.

    The `loyalty` package passes through the workflow sandbox: its models are the same
    classes inside journeys as in the data converter (so `isinstance(event, Purchase)`
    holds for an event a journey receives), and it is imported once, not per run.
    Workflow code still must not call its I/O functions. ``options`` go to the Worker
    (tests use ``max_cached_workflows=0``).
    """
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=list(workflows),
        activities=list(activities),  # type: ignore[arg-type]
        max_concurrent_activities=200,
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules("loyalty")
        ),
        **options,
    )


async def run_worker(
    settings: Settings,
    app: LoyaltyApp,
    client: Client,
    dsn: str,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the worker until ``stop`` is set; one pool and one LISTEN connection in all.

    Refuses an app with wrong flow definitions or templates (`InvalidFlows`) or a webhook
    provider or profile stream whose secret variable is not set (`ConfigurationError`)
    before anything else,
    then migrates the database, registers programs and search attributes, installs the
    app's segments (`loyalty.segments.membership.install`) and profile streams
    (`loyalty.streams.capture.install`), records the app it was loaded from
    (`loyalty.store.apps`), starts the routers, loops and stream workflows, and
    creates, updates or deletes the Temporal Schedules of recurring flows
    (`loyalty.flows.schedules`).
    The worker runs the routers, the tier maintenance and housekeeping loops, `EmitEvents`
    (the inbox for other services' Temporal clients), every flow's journey workflow and
    the journey toolkit's activities; the routers start journeys with
    ``client``. One httpx client serves every webhook message and is closed at the end.
    """
    specs = check_app(app)
    secrets = load_secrets(app.programs)
    stream_keys = stream_secrets(list(app.streams.values()))
    await prepare_database(dsn, app)
    await ensure_search_attributes(client)
    pool: asyncpg.Pool = await create_pool(dsn, settings.database_pool_size)
    async with pool.acquire() as conn:
        installed = await install_segments(conn, app)
    for program, name in installed.changed:
        log.info("segment %s of program %s installed and recomputed", name, program)
    for program, name in installed.removed:
        log.info("segment %s of program %s removed", name, program)
    async with pool.acquire() as conn:
        streams = await install_streams(conn, list(app.streams.values()))
    for name in streams.changed:
        log.info("profile stream %s installed; every member of its programs marked", name)
    for name in streams.removed:
        log.info("profile stream %s removed", name)
    listener = InboxListener(dsn)
    http = httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=HTTP_LIMITS, follow_redirects=False)
    try:
        if app.source is not None:
            # Other commands of this deployment load the same app (`loyalty.store.apps`).
            async with pool.acquire() as conn:
                await record_app(conn, settings.task_queue, app.source)
        await listener.start()
        router = RouterActivities(pool, listener, EventProcessor(app), settings, client)
        journeys = JourneyActivities(pool, app, http, secrets)
        maintenance = MaintenanceActivities(pool, app, settings)
        housekeeping = HousekeepingActivities(pool, app, settings)
        emit = EmitActivities(pool, settings)
        recurring = RecurringActivities(pool, app, settings, client)
        streaming = StreamActivities(pool, app, http, stream_keys)
        worker = build_worker(
            client,
            settings,
            [
                router.route_events,
                *journeys.all(),
                *maintenance.all(),
                *housekeeping.all(),
                *emit.all(),
                *recurring.all(),
                *streaming.all(),
            ],
            [
                EventRouter,
                TierMaintenance,
                Housekeeping,
                EmitEvents,
                RecurringFlow,
                ProfileStreamWorkflow,
                *(spec.cls for spec in specs),
            ],
            interceptors=[
                JourneyMetrics({workflow_name(spec.cls) or spec.cls.__name__: spec.name
                                for spec in specs})
            ],
        )  # fmt: skip
        async with worker:
            await start_routers(client, settings, app)
            await start_loops(client, settings, app)
            await start_housekeeping(client, settings, app)
            await sync_schedules(client, settings, app)  # recurring flows (issue 15)
            await start_streams(client, settings, app)
            if ready is not None:
                ready.set()
            await stop.wait()
    finally:
        await listener.close()
        await pool.close()
        await http.aclose()
