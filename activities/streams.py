"""The profile stream's activity: deliver batches for a while, heartbeating, then report.

One run holds the stream's advisory lock on its connection (so an attempt still running
after its heartbeat timed out cannot send beside its retry), sends the batch in flight
if there is one, else builds the next from the marks (`loyalty.streams.delivery`), and
polls for marks when there are none. While a batch is sent and its answer recorded, a
second connection reads and diffs the next one (other members), which is stored once
the first is answered: still one batch in flight, its reading hidden behind the send.
A failed request is counted in ``streams`` (the reason shown by `loyalty streams
status`) and raised: Temporal retries the run with back-off, and the retry sends the
same batch under the same idempotency key.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import asyncpg
import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.heartbeats import heartbeating
from loyalty.app import LoyaltyApp
from loyalty.messages.providers import Secrets
from loyalty.models import StreamRunInput, StreamRunResult, StreamTotals
from loyalty.store.db import Conn
from loyalty.streams.delivery import (
    Batch,
    acknowledge,
    build,
    pending,
    prepare,
    read_answer,
    record_failure,
    store,
)
from loyalty.streams.spec import ProfileStream

# How long an idle or disabled stream waits before looking for marks again.
POLL_SECONDS = 0.2
HEARTBEAT_EVERY = 2.0
_LOCK_SPACE = 0x53545245  # "STRE": the advisory lock's first key; the second is the name's hash


class StreamActivities:
    """Activities of the profile streams; dependencies come in the constructor.

    ``secrets``: the streams' HMAC secrets (`loyalty.streams.delivery.stream_secrets`).
    """

    def __init__(
        self, pool: asyncpg.Pool, app: LoyaltyApp, http: httpx.AsyncClient, secrets: Secrets
    ) -> None:
        self.pool = pool
        self.app = app
        self.http = http
        self.secrets = secrets

    def all(self) -> list[object]:
        """The bound activity methods, for the worker."""
        return [self.deliver]

    def _stream(self, name: str) -> ProfileStream:
        stream = self.app.streams.get(name)
        if stream is None:
            raise ApplicationError(
                f"the app defines no stream {name!r}", type="UnknownStream", non_retryable=True
            )
        return stream

    @activity.defn(name="stream_deliver")
    async def deliver(self, run: StreamRunInput) -> StreamRunResult:
        """Deliver the stream's changes for ``run.seconds``; returns what it did.

        Raises:
            ApplicationError: ``UnknownStream`` (non-retryable) if the app or the database
                no longer has the stream; ``StreamBusy`` while an earlier attempt holds
                it; ``DeliveryFailed`` for a failed request (both retried).
        """
        stream = self._stream(run.stream)
        schemes = {p: self.app.programs[p].tier_schemes for p in stream.programs}
        totals = {"batches": 0, "upserts": 0, "deletes": 0, "rejected": 0, "unchanged": 0}
        deadline = time.monotonic() + run.seconds
        async with self.pool.acquire() as conn, self.pool.acquire() as reader:
            locked = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, hashtext($2))", _LOCK_SPACE, stream.name
            )
            if not locked:
                raise ApplicationError(
                    f"stream {stream.name}: an earlier attempt still holds it", type="StreamBusy"
                )
            try:
                async with heartbeating(lambda: dict(totals), HEARTBEAT_EVERY):
                    enabled = True
                    size = stream.destination.batch_size
                    batch: Batch | None = None
                    while time.monotonic() < deadline:
                        enabled = await self._enabled(conn, stream.name)
                        if not enabled:
                            batch = None
                            await asyncio.sleep(POLL_SECONDS)
                            continue
                        if batch is None:
                            batch = await pending(conn, stream.name)
                        if batch is None:
                            built = await build(conn, stream, schemes, size)
                            totals["unchanged"] += built.unchanged
                            batch = built.batch
                        if batch is None:
                            await asyncio.sleep(POLL_SECONDS)
                            continue
                        # The next batch is read beside the one in flight (other members);
                        # it is stored once this one is answered.
                        ahead = asyncio.create_task(
                            prepare(reader, stream, schemes, size, batch.items)
                        )
                        try:
                            await self._send(conn, stream, batch, totals)
                        except BaseException:
                            ahead.cancel()
                            with contextlib.suppress(BaseException):
                                await ahead
                            raise
                        built = await store(conn, stream.name, await ahead)
                        totals["unchanged"] += built.unchanged
                        batch = built.batch
                    left, lag = await _backlog(conn, stream.name)
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute(
                        "SELECT pg_advisory_unlock($1, hashtext($2))", _LOCK_SPACE, stream.name
                    )
        return StreamRunResult(
            delivered=StreamTotals(**totals), enabled=enabled, pending=left, lag_seconds=lag
        )

    async def _enabled(self, conn: Conn, name: str) -> bool:
        enabled = await conn.fetchval("SELECT enabled FROM streams WHERE name = $1", name)
        if enabled is None:
            raise ApplicationError(
                f"stream {name!r} is not installed in the database",
                type="UnknownStream",
                non_retryable=True,
            )
        return bool(enabled)

    async def _send(
        self, conn: Conn, stream: ProfileStream, batch: Batch, totals: dict[str, int]
    ) -> None:
        destination = stream.destination
        sent_at = int(time.time())
        body = batch.body(sent_at)
        headers = {
            **destination.headers,
            **batch.headers(body, sent_at, self.secrets.get(destination.secret_env)),
        }
        try:
            response = await self.http.post(
                destination.url,
                content=body,
                headers=headers,
                timeout=httpx.Timeout(destination.timeout_seconds),
            )
        except httpx.HTTPError as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            await self._fail(conn, batch, detail)
            return
        answer = read_answer(response.status_code, response.content)
        if answer.outcome == "failed":
            await self._fail(conn, batch, answer.detail)
        done = await acknowledge(conn, batch, answer)
        totals["batches"] += 1
        totals["upserts"] += done.upserts
        totals["deletes"] += done.deletes
        totals["rejected"] += done.rejected

    async def _fail(self, conn: Conn, batch: Batch, detail: str) -> None:
        await record_failure(conn, batch, detail)
        raise ApplicationError(
            f"stream {batch.stream}: batch {batch.batch} ({len(batch.items)} records) "
            f"not delivered: {detail}",
            type="DeliveryFailed",
        )


async def _backlog(conn: Conn, name: str) -> tuple[int, float]:
    """Members still marked and the age of the oldest mark, in seconds."""
    row = await conn.fetchrow(
        """SELECT count(*) AS pending,
                  coalesce(extract(epoch FROM now() - min(marked_at)), 0)::float8 AS lag
           FROM stream_marks WHERE stream = $1""",
        name,
    )
    assert row is not None
    return int(row["pending"]), round(float(row["lag"]), 3)
