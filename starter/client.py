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
from loyalty.events import IncomingEvent, Origin, parse_event
from loyalty.ingest import inbox
from loyalty.ledger.members import ENTRY_LIMIT, member_programs, member_view
from loyalty.metrics.counters import count_accepted
from loyalty.models import EmitResult, EventOutcome, FailedEvent, MemberView
from loyalty.settings import Settings
from loyalty.store.db import (
    UNREACHABLE,
    Database,
    connect,
    create_pool,
    prepare_database,
    program_config,
    reachable,
)

# Wait in slices, re-reading the outcomes, in case a notification is lost.
WAIT_RECHECK_SECONDS = 1.0


class LoyaltyClient:
    """A connection to the engine's database, for services and the CLI.

    Use ``async with await LoyaltyClient.connect() as loyalty: ...``. Every method raises
    `loyalty.errors.ServiceUnavailable` when PostgreSQL cannot be reached: nothing was
    decided, and the same call can be made again (emitting is idempotent).
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

        Raises:
            ServiceUnavailable: PostgreSQL cannot be reached; try again.
            ConfigurationError: the settings cannot work (a refused database URL, no
                embedded server installed).
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
        """Accept one event into the inbox; an ``event_id`` already there with the same
        content is a duplicate (``accepted=False``).

        Raises:
            EventConflict: the ``event_id`` is taken by an event with other content.
            InvalidEvent: the event is invalid (nothing is written).
            ServiceUnavailable: PostgreSQL cannot be reached; try again.
        """
        return (await self.emit_many([event]))[0]

    async def emit_many(
        self,
        events: Iterable[IncomingEvent | dict[str, Any]],
        chunk_size: int | None = None,
    ) -> list[EmitResult]:
        """Validate all events, then insert them: one statement per chunk.

        Every event is checked before the first is written, including that its program
        exists, so invalid input writes nothing. The call is all or nothing: without
        ``chunk_size`` it is one statement; with it, one transaction of a statement per
        chunk. An ``event_id`` already in the inbox (or earlier in the call) with the
        same content is a duplicate (``accepted=False``); with other content it is a
        conflict, and nothing of the call is written.

        Raises:
            EventConflict: events reuse an event_id with other content; each
                conflicting id is named with the fields that differ.
            InvalidEvent: any event is invalid; the problems of all are listed.
            ServiceUnavailable: PostgreSQL cannot be reached; try again.
        """
        validated: list[IncomingEvent] = []
        problems: list[str] = []
        for index, event in enumerate(events):
            try:
                validated.append(
                    parse_event(
                        event,
                        prefix=f"event {index}: ",
                        max_clock_skew=self._database.settings.max_clock_skew,
                    )
                )
            except InvalidEvent as invalid:
                problems.extend(invalid.problems)
        if problems:
            raise InvalidEvent(problems)
        if not validated:
            return []
        size = chunk_size or len(validated)
        results: list[EmitResult] = []
        with reachable(self._database.dsn):
            async with self._pool.acquire() as conn:
                if size >= len(validated):
                    results = await inbox.insert_events(conn, validated)
                    count_accepted(validated, results)
                    return results
                # Several statements: an unknown program must refuse all of them, not only
                # its own, and a conflict found in a late chunk undoes the earlier ones.
                await inbox.check_programs(conn, {e.program for e in validated})
                async with conn.transaction():
                    for start in range(0, len(validated), size):
                        results += await inbox.insert_events(conn, validated[start : start + size])
        count_accepted(validated, results)
        return results

    async def outcomes(
        self, keys: Sequence[tuple[str, str]], origin: Origin = "client"
    ) -> dict[tuple[str, str], EventOutcome]:
        """The current outcome of events by (program, event_id); client events unless
        ``origin`` is ``engine`` (derived events have an id space of their own)."""
        with reachable(self._database.dsn):
            async with self._pool.acquire() as conn:
                return await inbox.fetch_outcomes(conn, keys, origin)

    async def wait(
        self, results: Sequence[EmitResult], timeout: float = 60.0
    ) -> list[EventOutcome]:
        """Wait until every accepted event is processed; duplicates answer at once.

        Raises:
            TimeoutError: some events are still pending after ``timeout`` seconds.
            ServiceUnavailable: PostgreSQL cannot be reached; try again.
        """
        pending = {(r.origin, r.program, r.event_id) for r in results if r.accepted}
        done: dict[tuple[Origin, str, str], EventOutcome] = {}
        woken = asyncio.Event()
        listener = await connect(self._database.dsn)

        def notified(*_: object) -> None:
            woken.set()

        try:
            with reachable(self._database.dsn):
                await listener.add_listener(inbox.PROCESSED_CHANNEL, notified)
            async with asyncio.timeout(timeout):
                while pending:
                    woken.clear()
                    for origin in sorted({key[0] for key in pending}):
                        keys = sorted((p, e) for o, p, e in pending if o == origin)
                        for (program, event_id), outcome in (
                            await self.outcomes(keys, origin)
                        ).items():
                            if outcome.status != "pending":
                                done[(origin, program, event_id)] = outcome
                                pending.discard((origin, program, event_id))
                    if pending:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(woken.wait(), WAIT_RECHECK_SECONDS)
        finally:
            with contextlib.suppress(*UNREACHABLE):
                await listener.close()
        return [
            done[(r.origin, r.program, r.event_id)]
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
            ServiceUnavailable: PostgreSQL cannot be reached; try again.
        """
        with reachable(self._database.dsn):
            async with self._pool.acquire() as conn:
                return await member_view(conn, program, member_id, limit=limit, before=before)

    async def member_programs(self, member_id: str) -> list[str]:
        """The programs that know the member, by name; empty for a member none knows.

        Raises:
            ServiceUnavailable: PostgreSQL cannot be reached; try again.
        """
        with reachable(self._database.dsn):
            async with self._pool.acquire() as conn:
                return await member_programs(conn, member_id)

    async def failed_events(
        self, program: str | None = None, limit: int = 100
    ) -> list[FailedEvent]:
        """Events moved to the dead-letter state, newest first.

        Raises:
            UnknownProgram: ``program`` is given and the database knows no such program.
            ServiceUnavailable: PostgreSQL cannot be reached; try again.
        """
        with reachable(self._database.dsn):
            async with self._pool.acquire() as conn:
                if program is not None:
                    await program_config(conn, program)
                return await inbox.failed_events(conn, program, limit)
