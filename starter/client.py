"""LoyaltyClient: emit events, wait for their outcome, read members.

Emitting writes to the PostgreSQL inbox only (one round trip per call), so a service
can emit while Temporal is down; the routers pick the events up when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import asyncpg

from loyalty.app import LoyaltyApp
from loyalty.errors import InvalidEvent
from loyalty.events import IncomingEvent, parse_event
from loyalty.ingest import inbox
from loyalty.ledger.members import ENTRY_LIMIT, member_programs, member_view
from loyalty.models import EmitResult, EventOutcome, FailedEvent, MemberView
from loyalty.settings import Settings
from loyalty.store.db import Database, connect, create_pool, prepare_database, program_config

# Wait in slices, re-reading the outcomes, in case a notification is lost.
WAIT_RECHECK_SECONDS = 1.0


class LoyaltyClient:
    """A connection to the engine's database, for services and the CLI.

    Use ``async with await LoyaltyClient.connect() as loyalty: ...``.
    """

    def __init__(self, database: Database, pool: asyncpg.Pool) -> None:
        self._database = database
        self._pool = pool

    @classmethod
    async def connect(
        cls, settings: Settings | None = None, app: LoyaltyApp | None = None
    ) -> LoyaltyClient:
        """Connect with the given settings, or settings read from the environment.

        Applies pending migrations (idempotent, under an advisory lock) and, given an app,
        records its programs so that events can name them before a worker has started.
        """
        database = Database(settings or Settings())
        await database.__aenter__()
        try:
            await prepare_database(database.dsn, app)
            pool = await create_pool(database.dsn, size=4)
        except BaseException:
            await database.__aexit__(None, None, None)
            raise
        return cls(database, pool)

    async def close(self) -> None:
        """Close the pool (and stop an embedded server this client started)."""
        await self._pool.close()
        await self._database.__aexit__(None, None, None)

    async def __aenter__(self) -> LoyaltyClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def emit(self, event: IncomingEvent | dict[str, Any]) -> EmitResult:
        """Accept one event into the inbox; an ``event_id`` already there is a duplicate.

        Raises:
            InvalidEvent: the event is invalid (nothing is written).
        """
        return (await self.emit_many([event]))[0]

    async def emit_many(
        self,
        events: Iterable[IncomingEvent | dict[str, Any]],
        chunk_size: int | None = None,
    ) -> list[EmitResult]:
        """Validate all events, then insert them: one statement per chunk.

        Every event is checked before the first is written, including that its program
        exists, so invalid input writes nothing. Without ``chunk_size`` the whole call is
        one statement (all or nothing); with it, each chunk is.

        Raises:
            InvalidEvent: any event is invalid; the problems of all are listed.
        """
        validated: list[IncomingEvent] = []
        problems: list[str] = []
        for index, event in enumerate(events):
            try:
                validated.append(parse_event(event, prefix=f"event {index}: "))
            except InvalidEvent as invalid:
                problems.extend(invalid.problems)
        if problems:
            raise InvalidEvent(problems)
        if not validated:
            return []
        size = chunk_size or len(validated)
        results: list[EmitResult] = []
        async with self._pool.acquire() as conn:
            if size < len(validated):
                # Several statements: an unknown program must refuse all of them, not
                # only its own; one statement refuses everything by itself.
                await inbox.check_programs(conn, {e.program for e in validated})
            for start in range(0, len(validated), size):
                results += await inbox.insert_events(conn, validated[start : start + size])
        return results

    async def outcomes(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], EventOutcome]:
        """The current outcome of events by (program, event_id)."""
        async with self._pool.acquire() as conn:
            return await inbox.fetch_outcomes(conn, keys)

    async def wait(
        self, results: Sequence[EmitResult], timeout: float = 60.0
    ) -> list[EventOutcome]:
        """Wait until every accepted event is processed; duplicates answer at once.

        Raises:
            TimeoutError: some events are still pending after ``timeout`` seconds.
        """
        pending = {(r.program, r.event_id) for r in results if r.accepted}
        done: dict[tuple[str, str], EventOutcome] = {}
        woken = asyncio.Event()
        listener = await connect(self._database.dsn)

        def notified(*_: object) -> None:
            woken.set()

        try:
            await listener.add_listener(inbox.PROCESSED_CHANNEL, notified)
            async with asyncio.timeout(timeout):
                while pending:
                    woken.clear()
                    current = await self.outcomes(sorted(pending))
                    for key, outcome in current.items():
                        if outcome.status != "pending":
                            done[key] = outcome
                            pending.discard(key)
                    if pending:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(woken.wait(), WAIT_RECHECK_SECONDS)
        finally:
            await listener.close()
        return [
            done[(r.program, r.event_id)]
            if r.accepted
            else EventOutcome(program=r.program, event_id=r.event_id, status="duplicate")
            for r in results
        ]

    async def member(
        self,
        member_id: str,
        program: str = "default",
        *,
        limit: int = ENTRY_LIMIT,
        before: int | None = None,
    ) -> MemberView:
        """Tier, balances, upcoming expiries and latest entries of a member.

        ``limit`` entries, newest first; ``before`` pages back: only entries older than
        the entry of that id (the view's ``more_entries`` says whether there are more).

        Raises:
            UnknownProgram: the database knows no such program.
            UnknownMember: the program has never seen this member.
        """
        async with self._pool.acquire() as conn:
            return await member_view(conn, program, member_id, limit=limit, before=before)

    async def member_programs(self, member_id: str) -> list[str]:
        """The programs that know the member, by name; empty for a member none knows."""
        async with self._pool.acquire() as conn:
            return await member_programs(conn, member_id)

    async def failed_events(
        self, program: str | None = None, limit: int = 100
    ) -> list[FailedEvent]:
        """Events moved to the dead-letter state, newest first.

        Raises:
            UnknownProgram: ``program`` is given and the database knows no such program.
        """
        async with self._pool.acquire() as conn:
            if program is not None:
                await program_config(conn, program)
            return await inbox.failed_events(conn, program, limit)
