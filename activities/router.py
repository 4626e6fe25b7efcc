"""The event router's activity: claim and apply inbox batches, woken by LISTEN/NOTIFY.

Beside the batches, on a connection of its own, the session starts the journeys recorded
for its partition (`loyalty.flows.outbox.start_journeys`) and sends the signals recorded
for waiting journeys (`loyalty.flows.signals.send_signals`), leftovers of an earlier crash
included: a batch's journeys start while the next batch is applied, so a program whose
flows start many journeys is not applied at the pace of Temporal's workflow starts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError, ApplicationErrorCategory
from temporalio.service import RPCError

from activities.outage import DATABASE_DOWN, database_unavailable
from loyalty.errors import ServiceUnavailable
from loyalty.flows.outbox import START_LIMIT, start_journeys
from loyalty.flows.signals import send_signals
from loyalty.ingest.inbox import INBOX_CHANNEL, next_retry_at
from loyalty.metrics import counters
from loyalty.models import RouterProgress, RouteSession
from loyalty.router import totals
from loyalty.router.processing import BatchDetail, EventProcessor, process_batch
from loyalty.settings import Settings
from loyalty.store.db import connect

# Events are flowing while the last batch is this recent: only then does the router
# linger before it claims (`LOYALTY_ROUTER_LINGER_SECONDS`).
FLOWING_SECONDS = 1.0
# Heartbeats while idle keep the activity alive under its heartbeat timeout.
IDLE_HEARTBEAT_SECONDS = 2.0


def linger_seconds(setting: float, gather: bool, since_last_batch: float) -> float:
    """How long to let events arrive before the next claim: the setting after a wake-up
    or a part batch (``gather``) while events are flowing, since a batch costs its dozen
    statements however few events it holds; nothing after a quiet spell, so that a lone
    event is applied at once, and nothing after a full batch."""
    return setting if gather and since_last_batch < FLOWING_SECONDS else 0.0


class InboxListener:
    """One LISTEN connection per worker process, shared by all router sessions.

    Every notification bumps a per-program generation counter; a session remembers the
    generation before it claims, so a notification that arrives between an empty claim
    and the wait is never lost.
    """

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._generation: dict[str, int] = {}
        # One event per program, set and replaced at each notification.
        self._arrived: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Open the connection and LISTEN (again, after a lost connection)."""
        async with self._lock:
            if self._conn is not None and not self._conn.is_closed():
                return
            self._conn = await connect(self._dsn)
            await self._conn.add_listener(INBOX_CHANNEL, self._notified)

    def _notified(self, conn: object, pid: int, channel: str, program: object) -> None:
        assert isinstance(program, str)
        self._generation[program] = self._generation.get(program, 0) + 1
        arrived = self._arrived.pop(program, None)
        if arrived is not None:
            arrived.set()

    def generation(self, program: str) -> int:
        """The number of notifications seen for the program so far."""
        return self._generation.get(program, 0)

    async def wait(self, program: str, seen: int, timeout: float) -> bool:
        """Wait until a notification newer than ``seen`` arrives; False on timeout."""
        if self._conn is None or self._conn.is_closed():
            await self.start()
        if self.generation(program) > seen:
            return True
        arrived = self._arrived.setdefault(program, asyncio.Event())
        try:
            await asyncio.wait_for(arrived.wait(), timeout)
        except TimeoutError:
            return self.generation(program) > seen
        return True

    async def close(self) -> None:
        """Close the LISTEN connection."""
        if self._conn is not None:
            await self._conn.close()
            self._conn = None


class RouterActivities:
    """Activities of the event router; dependencies come in through the constructor."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        listener: InboxListener,
        processor: EventProcessor,
        settings: Settings,
        client: Client,
    ) -> None:
        self.pool = pool
        self.listener = listener
        self.processor = processor
        self.settings = settings
        # Starts the journeys that batches record.
        self.client = client

    @activity.defn(name="route_events")
    async def route_events(self, session: RouteSession) -> RouterProgress:
        """Apply batches of one partition until the session's time is up.

        Heartbeats after every batch and every idle wait, so a retry after a crash starts
        quickly; the claims themselves are in the database, so a retry loses nothing.
        Returns the partition's totals: everything its batches committed so far
        (`loyalty.router.totals`), whichever attempt or session committed them.
        """
        try:
            await self._session(session)
        except DATABASE_DOWN as exc:
            # The database is down: Temporal retries the session with back-off; one line
            # each time instead of a traceback.
            activity.logger.warning(
                "router session of program %s, partition %d of %d: PostgreSQL is "
                "unavailable (%s); retrying", session.program, session.partition + 1,
                session.partitions, exc,
            )  # fmt: skip
            raise database_unavailable(exc) from None
        except asyncio.CancelledError:
            details = activity.cancellation_details()
            if details is None or details.cancel_requested or details.worker_shutdown:
                raise
            # Temporal gave up on this attempt (its result would be dropped) and a retry
            # takes over: one line saying so, instead of the cancellation's traceback.
            closed = details.not_found and await _run_closed(self.client)
            reason = _why_stopped(details, closed)
            activity.logger.warning(
                "router session of program %s, partition %d of %d (attempt %d) stopped: %s",
                session.program, session.partition + 1, session.partitions,
                activity.info().attempt, reason,
            )  # fmt: skip
            raise ApplicationError(
                f"session stopped: {reason}",
                type="SessionStopped",
                category=ApplicationErrorCategory.BENIGN,
            ) from None
        async with self.pool.acquire() as conn:
            return await totals.read(conn, session.program, session.partitions, session.partition)

    async def _session(self, session: RouteSession) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.router_session_seconds
        progress = RouterProgress()
        await self.listener.start()
        outbox = _Outbox(self, session, lambda: activity.heartbeat(progress.model_dump()))
        gather, last_batch = False, float("-inf")
        try:
            while loop.time() < deadline:
                linger = linger_seconds(
                    settings.router_linger_seconds, gather, loop.time() - last_batch
                )
                if linger:
                    await asyncio.sleep(linger)
                outbox.check()
                seen = self.listener.generation(session.program)
                detail = BatchDetail()
                async with self.pool.acquire() as conn:
                    began = loop.time()
                    try:
                        batch = await process_batch(
                            conn,
                            self.processor,
                            program=session.program,
                            partitions=session.partitions,
                            partition=session.partition,
                            batch_size=settings.router_batch_size,
                            max_attempts=settings.event_max_attempts,
                            task_queue=settings.task_queue,
                            detail=detail,
                        )
                    except (asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
                        # The server went away in the middle of the batch: asyncpg then
                        # reports the connection's state, not a connection error.
                        if not conn.is_closed():
                            raise
                        raise ServiceUnavailable(
                            "PostgreSQL", f"the connection closed during a batch: {exc}"
                        ) from None
                    _count(session.program, batch, detail, loop.time() - began)
                    retry_at = (
                        None
                        if batch.events
                        else await next_retry_at(
                            conn, session.program, session.partitions, session.partition
                        )
                    )
                # After commit; also picks up journeys a crashed session left unstarted.
                outbox.kick()
                progress = progress + batch
                activity.heartbeat(progress.model_dump())
                if batch.events:
                    gather, last_batch = batch.events < settings.router_batch_size, loop.time()
                    continue
                gather = True
                idle = min(settings.router_idle_poll_seconds, deadline - loop.time())
                if retry_at is not None:
                    idle = min(idle, max(0.0, (retry_at - datetime.now(UTC)).total_seconds()))
                await self._idle(session.program, seen, idle, progress)
        except BaseException:
            outbox.cancel()
            raise
        await outbox.close()

    async def _idle(
        self, program: str, seen: int, seconds: float, progress: RouterProgress
    ) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + max(0.0, seconds)
        while True:
            left = until - loop.time()
            if left <= 0:
                return
            if await self.listener.wait(program, seen, min(left, IDLE_HEARTBEAT_SECONDS)):
                return
            # The same details as after a batch: the Web UI shows the last heartbeat's.
            activity.heartbeat(progress.model_dump())


class _Outbox:
    """Starts a session's recorded journeys and sends its signals, beside its batches.

    One task per session, on its own connection: after each kick (a batch committed, or
    an idle wait ended) it makes one round of `start_journeys` and `send_signals`, and
    another at once while a round found a full page to start. Nothing is lost when the
    session ends between rounds: the rows wait in the outboxes for the next session. A
    database error in a round ends the session with it, so Temporal retries the session.
    """

    def __init__(
        self, routing: RouterActivities, session: RouteSession, heartbeat: Callable[[], None]
    ) -> None:
        self._routing, self._session, self._heartbeat = routing, session, heartbeat
        self._kicked = asyncio.Event()
        self._closing = False
        self._idle = False
        self._task = asyncio.create_task(self._run(), name=f"outbox {session.program}")
        # Retrieved here, so a failure the session already raised is not logged again.
        self._task.add_done_callback(lambda task: task.cancelled() or task.exception())

    def kick(self) -> None:
        self._kicked.set()

    def check(self) -> None:
        """Raise what ended the task early (a database error), in the session."""
        if self._task.done():
            self._task.result()

    async def close(self) -> None:
        """Finish the round under way, or make one more if a kick is waiting; then stop."""
        self._closing = True
        if self._idle and not self._kicked.is_set():
            self._task.cancel()  # waiting for a kick that will not come: nothing is due
            return
        if not self._task.done():
            await self._task
        self._task.result()

    def cancel(self) -> None:
        """Stop at once (the session failed or was cancelled); the rows stay recorded."""
        self._task.cancel()

    async def _run(self) -> None:
        while True:
            if not self._kicked.is_set():
                if self._closing:
                    return
                self._idle = True
                await self._kicked.wait()
                self._idle = False
            self._kicked.clear()
            full = await self._round() >= START_LIMIT
            if self._closing:
                return
            if full:
                self._kicked.set()

    async def _round(self) -> int:
        routing, session = self._routing, self._session
        async with routing.pool.acquire() as conn:
            started = await start_journeys(
                conn,
                routing.client,
                routing.processor.app,
                program=session.program,
                partitions=session.partitions,
                partition=session.partition,
                task_queue=routing.settings.task_queue,
                on_progress=self._heartbeat,
            )
            await send_signals(
                conn,
                routing.client,
                program=session.program,
                partitions=session.partitions,
                partition=session.partition,
                on_progress=self._heartbeat,
            )
        return started


def _count(program: str, batch: RouterProgress, detail: BatchDetail, seconds: float) -> None:
    """Add a committed batch to the metrics, in a few calls whatever its size."""
    if not batch.batches:
        return
    counters.count_outcomes(program, detail.outcomes.items())
    counters.BATCH_EVENTS.labels(program).observe(batch.events)
    counters.BATCH_SECONDS.labels(program).observe(seconds)
    if batch.fast_path:
        counters.FAST_PATH_EVENTS.labels(program).inc(batch.fast_path)
    if batch.failed_attempts:
        counters.EVENT_FAILED_ATTEMPTS.labels(program).inc(batch.failed_attempts)
    if detail.careful:
        counters.FALLBACKS.labels(program).inc(detail.careful)


async def _run_closed(client: Client) -> bool:
    """Whether the workflow run of the current activity has closed (terminated, reset…)."""
    info = activity.info()
    if info.workflow_id is None:
        return False
    try:
        handle = client.get_workflow_handle(info.workflow_id, run_id=info.workflow_run_id)
        description = await handle.describe()
    except RPCError:
        return False
    return description.status != WorkflowExecutionStatus.RUNNING


def _why_stopped(details: activity.ActivityCancellationDetails, run_closed: bool) -> str:
    """Why Temporal cancelled a router attempt, in words an operator can act on."""
    if details.not_found and run_closed:
        return (
            "its workflow run was closed (terminated, reset or timed out); what this attempt "
            "committed still counts"
        )
    if details.timed_out or details.not_found:
        timeout = activity.info().heartbeat_timeout
        limit = f"the {timeout.total_seconds():g} s heartbeat timeout" if timeout else "its timeout"
        return (
            f"its heartbeat timed out (a batch, or the wait for the partition's lock, outlasted "
            f"{limit}); a retry took over, and what this attempt committed still counts"
        )
    if details.paused:
        return "an operator paused the activity"
    if details.reset:
        return "an operator reset the activity"
    return "Temporal cancelled it"
