"""The ASGI application of `loyalty api`: FastAPI, served by uvicorn (`loyalty.api.serve`).

FastAPI publishes OpenAPI 3.1 built from the same pydantic models that validate events
(`loyalty.events`), so `/openapi.json` and `loyalty schema events` cannot drift apart.
Event bodies are read with `loyalty.inputs.load_json`, not FastAPI's own body parsing, so
that amounts keep their exact digits and every problem names its field as the CLI does.

One asyncpg pool per process, one LISTEN connection for `?wait=`, and a Temporal client
made on first need (`/readyz`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.client import Client

from loyalty.api.codec import CodecCors, codec_routes
from loyalty.api.keys import ApiKey, check_key
from loyalty.api.limits import RateLimiter
from loyalty.api.problems import (
    MEDIA_TYPE,
    FieldProblem,
    Problem,
    ProblemError,
    field_problems,
    problem_response,
)
from loyalty.api.streams import stream_routes
from loyalty.app import LoyaltyApp
from loyalty.codec import EncryptionCodec
from loyalty.errors import (
    EventConflict,
    InvalidEvent,
    ServiceUnavailable,
    UnknownMember,
    UnknownProgram,
)
from loyalty.events import IncomingEvent, events_json_schema, parse_event
from loyalty.flows import check_app
from loyalty.ingest import inbox
from loyalty.ingest.batch import conflict_problems, parse_batch
from loyalty.inputs import load_json
from loyalty.ledger.members import member_view
from loyalty.metrics.counters import count_accepted
from loyalty.models import EmitEventsResult, EmitResult, EventOutcome, MemberView
from loyalty.segments import membership as segments
from loyalty.settings import Settings
from loyalty.store.db import UNREACHABLE, connect, create_pool, reachable
from loyalty.temporal import connect_temporal, keyring

log = logging.getLogger("loyalty.api")

MAX_BODY = 1024 * 1024
MAX_EVENTS = 1_000
MAX_WAIT = 60.0
# A `?wait=` re-reads the outcome at least this often, in case a notification is lost.
WAIT_RECHECK_SECONDS = 1.0
# How long /readyz waits for each service.
READY_TIMEOUT = 2.0
_PG_DOWN: tuple[type[BaseException], ...] = (TimeoutError, ServiceUnavailable, *UNREACHABLE)
NO_ANSWER = f"no answer within {READY_TIMEOUT:g} s"
WAIT_HELP = "Seconds to wait for an outcome other than pending (at most 60)."
BEFORE_HELP = "Only entries older than this entry id (the previous page's next_before)."
# Seconds a client is told to wait when PostgreSQL is unavailable.
RETRY_AFTER_UNAVAILABLE = "5"


class Outcome(BaseModel):
    """An event's outcome: ``pending``, ``applied``, ``no_effect``, ``rejected`` (with
    ``reason`` and ``detail``) or ``failed`` (with ``detail``)."""

    program: str
    event_id: str
    status: Literal["pending", "applied", "no_effect", "rejected", "failed"]
    reason: str | None = None
    detail: str | None = None

    @classmethod
    def of(cls, outcome: EventOutcome) -> Outcome:
        status: Any
        reason = detail = None
        if outcome.status == "processed":
            status = outcome.outcome or "applied"
        elif outcome.status == "rejected":
            status, reason, detail = "rejected", outcome.outcome, outcome.detail
        elif outcome.status == "dead":
            status, detail = "failed", outcome.detail
        else:
            status = "pending"
        return cls(
            program=outcome.program,
            event_id=outcome.event_id,
            status=status,
            reason=reason,
            detail=detail,
        )


class EntriesPage(BaseModel):
    """A page of a member's ledger entries, newest first; ``next_before`` pages back."""

    member_id: str
    program: str
    entries: list[dict[str, Any]]
    more: bool
    next_before: int | None


class ProgramInfo(BaseModel):
    """A program a key can use."""

    name: str
    created_at: datetime


class FlowInfo(BaseModel):
    """A flow of the app, for a program."""

    name: str
    workflow: str
    trigger: str
    entry: str
    programs: list[str]


class SegmentInfo(BaseModel):
    """A segment of the key's program, as installed by the worker."""

    name: str
    program: str
    definition: str
    size: int
    entered_last_day: int
    left_last_day: int
    time_dependent: bool
    refreshed_at: datetime | None


class SegmentMember(BaseModel):
    """A member of a segment, and when they entered it (this time)."""

    member_id: str
    entered_at: datetime


class SegmentMembersPage(BaseModel):
    """A page of a segment's members in member id order; ``next_after`` pages on."""

    program: str
    segment: str
    members: list[SegmentMember]
    next_after: str | None


class Health(BaseModel):
    """``ok``, or what is down."""

    status: Literal["ok"]
    checks: dict[str, str] = {}


class _Processed:
    """One LISTEN connection per process: wakes every `?wait=` when a batch commits."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: asyncpg.Connection | None = None
        self._event = asyncio.Event()

    async def start(self) -> None:
        with contextlib.suppress(ServiceUnavailable, *UNREACHABLE):
            if self._conn is None or self._conn.is_closed():
                self._conn = await connect(self._dsn)
                await self._conn.add_listener(inbox.PROCESSED_CHANNEL, self._notified)

    def _notified(self, *_: object) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, seconds: float) -> None:
        """Until the next notification, at most ``seconds``."""
        await self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), seconds)

    async def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(*UNREACHABLE):
                await self._conn.close()


class _Singles:
    """Single-event POSTs of concurrent callers, inserted together (group commit).

    One statement at a time takes every event waiting when the previous one is done, so
    under load PostgreSQL parses, writes and commits once per group instead of once per
    request, and with no load an event waits for nothing. Each event is still answered
    alone: accepted, duplicate, or its own conflict (`loyalty.ingest.inbox.insert_each`).
    """

    # Events per statement at most.
    GROUP = 500

    def __init__(self, state: ApiState) -> None:
        self._state = state
        self._waiting: list[tuple[IncomingEvent, asyncio.Future[EmitResult]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def insert(self, event: IncomingEvent) -> EmitResult:
        """The event's result once its group committed.

        Raises:
            EventConflict: the event_id was used with other content.
            ServiceUnavailable: PostgreSQL cannot be reached.
        """
        answer: asyncio.Future[EmitResult] = asyncio.get_running_loop().create_future()
        self._waiting.append((event, answer))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await answer

    async def _write(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting[: self.GROUP], self._waiting[self.GROUP :]
            try:
                answers = await self._insert([event for event, _ in group])
            except BaseException as exc:
                for _, answer in group:
                    if not answer.done():
                        answer.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, answer), found in zip(group, answers, strict=True):
                if answer.done():  # its caller went away
                    continue
                if isinstance(found, EventConflict):
                    answer.set_exception(found)
                else:
                    answer.set_result(found)

    async def _insert(self, events: list[IncomingEvent]) -> list[EmitResult | EventConflict]:
        with reachable(self._state.dsn):
            async with self._state.db().acquire() as conn:
                return await inbox.insert_each(conn, events)


class ApiState:
    """What the handlers share: settings, pool, keys cache, limiter, Temporal client."""

    def __init__(self, settings: Settings, dsn: str, app: LoyaltyApp | None) -> None:
        self.settings, self.dsn, self.app = settings, dsn, app
        self.pool: asyncpg.Pool | None = None
        self.limiter = RateLimiter(settings.api_rate_limit)
        self.processed = _Processed(dsn)
        self.singles = _Singles(self)
        self._keys: dict[bytes, tuple[ApiKey, float]] = {}
        self._temporal: Client | None = None
        self._temporal_lock = asyncio.Lock()

    def db(self) -> asyncpg.Pool:
        assert self.pool is not None, "the API's lifespan has not started"
        return self.pool

    async def key(self, text: str) -> ApiKey | None:
        """The live key ``text`` is, trusted for ``api_key_cache_seconds`` once checked."""
        digest = hashlib.sha256(text.encode()).digest()
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        with reachable(self.dsn):
            async with self.db().acquire() as conn:
                key = await check_key(conn, text)
        if key is None:
            self._keys.pop(digest, None)
        elif self.settings.api_key_cache_seconds > 0:
            self._keys[digest] = (key, now + self.settings.api_key_cache_seconds)
        return key

    async def temporal(self) -> Client:
        async with self._temporal_lock:
            if self._temporal is None:
                self._temporal = await connect_temporal(self.settings)
            return self._temporal


_bearer = HTTPBearer(auto_error=False, description="An API key: `loyalty api-keys create`")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


async def authorize(
    state: ApiState, token: str | None, scope: str | None, method: str, path: str, client: str
) -> ApiKey:
    """The live key ``token`` is, allowed ``scope`` (None: any) and within its rate.

    Raises:
        ProblemError: 401 (no key; unknown, wrong or revoked), 429, 403.
        ServiceUnavailable: PostgreSQL cannot be reached to check a key.
    """
    if token is None:
        log.warning("API request refused: no API key (%s %s from %s)", method, path, client)
        raise ProblemError(
            401,
            "give an API key: Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    key = await state.key(token)
    if key is None:
        shown = token[:16] if token.startswith("lfk_") else "a malformed key"
        # The key's id (its first 16 characters) only: never its secret.
        log.warning(
            "API request refused: unknown, wrong or revoked key %s (%s %s from %s)",
            shown,
            method,
            path,
            client,
        )
        raise ProblemError(
            401,
            "the API key is unknown, wrong or revoked",
            headers={"WWW-Authenticate": "Bearer"},
        )
    wait = state.limiter.take(key.id)
    if wait is not None:
        raise ProblemError(
            429,
            f"key {key.id} is limited to {state.settings.api_rate_limit:g} requests/s",
            headers={"Retry-After": str(wait)},
        )
    if scope is not None and not key.allows(scope):
        raise ProblemError(403, f"key {key.id} lacks the scope {scope}")
    return key


def _authorizer(scope: str | None) -> Callable[[Request, Credentials], Awaitable[ApiKey]]:
    """A dependency: the request's key, refused without ``scope`` (None: any scope)."""

    async def dependency(request: Request, credentials: Credentials) -> ApiKey:
        return await authorize(
            _state(request),
            credentials.credentials if credentials is not None else None,
            scope,
            request.method,
            request.url.path,
            request.client.host if request.client else "-",
        )

    return dependency


Writer = Annotated[ApiKey, Depends(_authorizer("events:write"))]
Reader = Annotated[ApiKey, Depends(_authorizer("members:read"))]
AnyKey = Annotated[ApiKey, Depends(_authorizer(None))]
# Stream control (`loyalty.api.streams`) and the codec server (`loyalty.api.codec`).
ADMIN = Depends(_authorizer("admin"))


async def _anyone() -> None:
    """The codec server's guard with ``LOYALTY_CODEC_AUTH=none``: no key asked."""


OPEN = Depends(_anyone)


def _own_program(key: ApiKey, program: str) -> None:
    if program != key.program:
        raise ProblemError(403, f"key {key.id} belongs to program {key.program!r}, not {program!r}")


async def _read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    """The body, refused with 413 past ``limit`` (before reading it when declared)."""
    return await _limited_body(request.headers.get("content-length"), request.stream(), limit)


async def _limited_body(
    declared: str | None, chunks: AsyncIterator[bytes], limit: int = MAX_BODY
) -> bytes:
    """The chunks of a body joined, refused with 413 past ``limit``: before reading when
    the declared ``Content-Length`` says so, else as soon as they grow past it."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ProblemError(413, f"the body is {int(declared):,} bytes; at most {limit:,}")
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > limit:
            raise ProblemError(413, f"the body is over {limit:,} bytes")
    return bytes(body)


def _invalid(lines: list[str], detail: str | None = None) -> ProblemError:
    return ProblemError(422, detail or "; ".join(lines), errors=field_problems(lines))


def _events_of(data: Any, key: ApiKey, max_clock_skew: timedelta) -> tuple[list[Any], bool]:
    """The validated events of a body, one event or ``{"events": [...]}``, and whether it
    was a batch; an event that names no program is in the key's.

    Raises:
        InvalidEvent: one line per problem, naming its place (``events[3].points``).
    """

    def in_program(item: Any) -> Any:
        return {**item, "program": key.program} if isinstance(item, dict) and (
            "program" not in item) else item  # fmt: skip

    if isinstance(data, dict) and "events" in data and "type" not in data:
        events = data["events"]
        if isinstance(events, list):
            data = {**data, "events": [in_program(e) for e in events]}
        return parse_batch(data, max_clock_skew=max_clock_skew, limit=MAX_EVENTS), True
    if not isinstance(data, dict):
        raise InvalidEvent(['body: must be an event object or {"events": [...]}'])
    return [parse_event(in_program(data), max_clock_skew=max_clock_skew)], False


async def accept_events(state: ApiState, key: ApiKey, body: bytes) -> bytes:
    """The JSON answer to ``POST /v1/events`` with ``body``: the events validated all or
    nothing and inserted (a single event with the concurrent callers' others, by
    `_Singles`).

    Raises:
        ProblemError: 422 (invalid, or an event_id reused with other content), 403
            (an event of another program).
        ServiceUnavailable: PostgreSQL cannot be reached.
    """
    try:
        data = load_json(body)
    except (ValueError, RecursionError) as exc:
        raise _invalid([f"body: invalid JSON: {exc}"]) from None
    try:
        events, batch = _events_of(data, key, state.settings.max_clock_skew)
    except InvalidEvent as invalid:
        raise _invalid(invalid.problems) from None
    others = [
        f"{f'events[{i}]' if batch else 'event'} ({e.event_id}) is in program {e.program!r}"
        for i, e in enumerate(events)
        if e.program != key.program
    ]
    if others:
        raise ProblemError(
            403, f"key {key.id} belongs to program {key.program!r}: " + "; ".join(others)
        )
    try:
        if batch:
            with reachable(state.dsn):
                async with state.db().acquire() as conn:
                    results = await inbox.insert_events(conn, events)
        else:
            results = [await state.singles.insert(events[0])]
    except EventConflict as conflict:
        lines = conflict_problems(events, conflict)
        if not batch:
            lines = [line.removeprefix("events[0].") for line in lines]
        reused = ", ".join(c.event_id for c in conflict.conflicts)
        raise _invalid(lines, f"event ids reused with other content: {reused}") from None
    except InvalidEvent as invalid:
        raise _invalid(invalid.problems) from None
    count_accepted(events, results)
    # Serialized once, here: returning the model would have FastAPI validate it again.
    return EmitEventsResult.of(results).model_dump_json().encode()


class EventsRoute:
    """``POST /v1/events`` answered in front of FastAPI: a plain ASGI route.

    The busiest endpoint skips FastAPI's and Starlette's request handling (the request
    object, dependency resolution, the exception middleware), about a third of the API's
    CPU per single-event request; it checks the key, reads the body and answers exactly
    as the FastAPI route does (`authorize`, `accept_events`, `problem_response`), which
    stays for the OpenAPI document. Every other request goes on to FastAPI.
    """

    def __init__(self, app: ASGIApp, state: ApiState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/events" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        answer: Response
        try:
            answer = Response(
                await self._accept(scope, receive),
                status_code=202,
                media_type="application/json",
            )
        except ProblemError as problem:
            answer = problem_response(problem)
        except ServiceUnavailable as exc:
            log.warning("API request POST /v1/events: %s", exc)
            answer = problem_response(
                ProblemError(503, str(exc), headers={"Retry-After": RETRY_AFTER_UNAVAILABLE})
            )
        await answer(scope, receive, send)

    async def _accept(self, scope: Scope, receive: Receive) -> bytes:
        token: str | None = None
        declared: str | None = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                # As HTTPBearer reads it: "Bearer <credentials>", the scheme in any case.
                kind, _, credentials = value.decode("latin-1").partition(" ")
                if kind.lower() == "bearer" and credentials.strip():
                    token = credentials.strip()
            elif name == b"content-length":
                declared = value.decode("latin-1")
        client = scope.get("client")
        key = await authorize(
            self.state, token, "events:write", "POST", "/v1/events",
            client[0] if client else "-",
        )  # fmt: skip
        return await accept_events(self.state, key, await _limited_body(declared, _chunks(receive)))


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The body of an ASGI request, chunk by chunk."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ProblemError(400, "the client closed the connection before the body ended")
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


def create_api(
    settings: Settings, dsn: str, app: LoyaltyApp | None = None, pool: asyncpg.Pool | None = None
) -> FastAPI:
    """The ASGI application; ``app`` (the LoyaltyApp) gives `/v1/flows` its flows. Its
    lifespan makes the database pool unless given one, and closes it.

    Raises:
        ConfigurationError: the codec keys are unusable.
    """
    state = ApiState(settings, dsn, app)
    state.pool = pool
    keys = keyring(settings)
    codec = EncryptionCodec(keys) if keys is not None else None

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        if state.pool is None:
            state.pool = await create_pool(dsn, size=settings.database_pool_size, stateless=True)
        await state.processed.start()
        try:
            yield
        finally:
            await state.processed.close()
            with contextlib.suppress(*UNREACHABLE):
                await state.pool.close()

    api = FastAPI(
        title="loyalty-flows",
        summary="Events in; outcomes, members, programs and flows out.",
        version="1",
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        responses={
            401: {"model": Problem, "description": "No key, or an unknown, wrong or revoked key"},
            403: {"model": Problem, "description": "The key lacks the scope or the program"},
            429: {"model": Problem, "description": "Over the key's rate limit (Retry-After)"},
            503: {"model": Problem, "description": "PostgreSQL is unavailable; try again"},
        },
    )
    api.state.api = state
    api.add_middleware(EventsRoute, state=state)
    # Outermost: it answers the Web UI's preflights before anything asks for a key.
    api.add_middleware(CodecCors, origins=settings.codec_origins)

    @api.exception_handler(ProblemError)
    async def on_problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc)

    @api.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        lines = [
            f"{'.'.join(str(p) for p in error['loc'][1:]) or error['loc'][0]}: {error['msg']}"
            for error in exc.errors()
        ]
        return problem_response(_invalid(lines))

    @api.exception_handler(ServiceUnavailable)
    async def on_down(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        log.warning("API request %s %s: %s", request.method, request.url.path, exc)
        return problem_response(
            ProblemError(503, str(exc), headers={"Retry-After": RETRY_AFTER_UNAVAILABLE})
        )

    @api.post(
        "/v1/events",
        status_code=202,
        response_model=EmitEventsResult,
        tags=["events"],
        responses={
            413: {"model": Problem, "description": "Body over 1 MiB"},
            422: {"model": Problem, "description": "Invalid events, or a reused event_id"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                {"$ref": "#/components/schemas/Event"},
                                {"$ref": "#/components/schemas/EventBatch"},
                            ]
                        }
                    }
                },
            }
        },
    )
    async def post_events(request: Request, key: Writer) -> Response:
        """Accept one event, or up to 1,000 as ``{"events": [...]}``, all or nothing.

        An event without ``program`` is in the key's program. The same ``event_id`` with
        the same content is a ``duplicate``; with other content, a 422 naming it.
        """
        # Served by `EventsRoute` in front of FastAPI; this route is what an app without
        # it (an ASGI test transport) takes, and what the OpenAPI document describes.
        body = await _read_body(request)
        return Response(
            await accept_events(state, key, body), status_code=202, media_type="application/json"
        )

    @api.get(
        "/v1/events/{program}/{event_id}",
        response_model=Outcome,
        tags=["events"],
        responses={404: {"model": Problem, "description": "No such event"}},
    )
    async def get_event(
        key: Writer,
        program: Annotated[str, Path(min_length=1, max_length=64)],
        event_id: Annotated[str, Path(min_length=1, max_length=128)],
        wait: Annotated[float, Query(ge=0, le=MAX_WAIT, description=WAIT_HELP)] = 0,
    ) -> Outcome:
        """The outcome of an event; with ``?wait=``, answers as soon as it is decided."""
        _own_program(key, program)
        loop = asyncio.get_running_loop()
        until = loop.time() + wait
        while True:
            with reachable(dsn):
                async with state.db().acquire() as conn:
                    found = await inbox.fetch_outcomes(conn, [(program, event_id)])
            outcome = found.get((program, event_id))
            if outcome is None:
                raise ProblemError(404, f"no event {event_id!r} in program {program!r}")
            left = until - loop.time()
            if outcome.status != "pending" or left <= 0:
                return Outcome.of(outcome)
            await state.processed.wait(min(left, WAIT_RECHECK_SECONDS))

    @api.get(
        "/v1/members/{member_id}",
        response_model=MemberView,
        tags=["members"],
        responses={404: {"model": Problem, "description": "Unknown member"}},
    )
    async def get_member(
        key: Reader,
        member_id: Annotated[str, Path(min_length=1, max_length=128)],
        program: Annotated[str | None, Query(description="Default: the key's")] = None,
        limit: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> MemberView:
        """Tier status per scheme, balances, upcoming expiries and latest entries: the
        JSON of `loyalty member ID --json`."""
        return await _member(key, member_id, program or key.program, limit, None)

    @api.get(
        "/v1/members/{member_id}/entries",
        response_model=EntriesPage,
        tags=["members"],
        responses={404: {"model": Problem, "description": "Unknown member"}},
    )
    async def get_entries(
        key: Reader,
        member_id: Annotated[str, Path(min_length=1, max_length=128)],
        program: Annotated[str | None, Query(description="Default: the key's")] = None,
        before: Annotated[int | None, Query(ge=1, description=BEFORE_HELP)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> EntriesPage:
        """A member's ledger entries, newest first, a page at a time."""
        view = await _member(key, member_id, program or key.program, limit, before)
        entries = [e.model_dump(mode="json") for e in view.entries]
        return EntriesPage(
            member_id=member_id,
            program=view.program,
            entries=entries,
            more=view.more_entries,
            next_before=view.entries[-1].id if view.more_entries and view.entries else None,
        )

    async def _member(
        key: ApiKey, member_id: str, program: str, limit: int, before: int | None
    ) -> MemberView:
        _own_program(key, program)
        try:
            with reachable(dsn):
                async with state.db().acquire() as conn:
                    return await member_view(conn, program, member_id, limit=limit, before=before)
        except (UnknownMember, UnknownProgram) as exc:
            raise ProblemError(404, str(exc)) from None

    @api.get("/v1/programs", response_model=list[ProgramInfo], tags=["programs"])
    async def get_programs(key: AnyKey) -> list[ProgramInfo]:
        """The programs the key can use (its own)."""
        with reachable(dsn):
            async with state.db().acquire() as conn:
                rows = await conn.fetch(
                    "SELECT name, created_at FROM programs WHERE name = $1", key.program
                )
        return [ProgramInfo(name=r["name"], created_at=r["created_at"]) for r in rows]

    @api.get("/v1/flows", response_model=list[FlowInfo], tags=["programs"])
    async def get_flows(key: AnyKey) -> list[FlowInfo]:
        """The app's flows that events of the key's program trigger."""
        if state.app is None:
            return []
        listed = []
        for spec in check_app(state.app):
            programs = (
                list(spec.programs) if spec.programs is not None else list(state.app.programs)
            )
            if key.program in programs:
                listed.append(
                    FlowInfo(
                        name=spec.name,
                        workflow=spec.cls.__name__,
                        trigger=str(spec.trigger),
                        entry=str(spec.entry),
                        programs=programs,
                    )
                )
        return listed

    @api.get("/v1/segments", response_model=list[SegmentInfo], tags=["segments"])
    async def get_segments(key: Reader) -> list[SegmentInfo]:
        """The segments of the key's program: definition, size, entries and departures of
        the last 24 hours."""
        with reachable(dsn):
            async with state.db().acquire() as conn:
                found = await segments.list_segments(conn, key.program)
        return [
            SegmentInfo(
                name=s.name, program=s.program, definition=s.definition, size=s.size,
                entered_last_day=s.entered_last_day, left_last_day=s.left_last_day,
                time_dependent=s.time_dependent, refreshed_at=s.refreshed_at or s.installed_at,
            )
            for s in found
        ]  # fmt: skip

    @api.get(
        "/v1/segments/{name}/members",
        response_model=SegmentMembersPage,
        tags=["segments"],
        responses={404: {"model": Problem, "description": "Unknown segment"}},
    )
    async def get_segment_members(
        key: Reader,
        name: Annotated[str, Path(min_length=1, max_length=64)],
        after: Annotated[
            str | None, Query(max_length=128, description="The last member id of a page")
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> SegmentMembersPage:
        """The segment's members in member id order, a page at a time."""
        with reachable(dsn):
            async with state.db().acquire() as conn:
                if not await segments.segment_exists(conn, key.program, name):
                    raise ProblemError(404, f"no segment {name!r} in program {key.program!r}")
                found = await segments.members(conn, key.program, name, after=after, limit=limit)
        return SegmentMembersPage(
            program=key.program,
            segment=name,
            members=[SegmentMember(member_id=m, entered_at=at) for m, at in found],
            next_after=found[-1][0] if len(found) == limit else None,
        )

    api.include_router(stream_routes(state.db, dsn, ADMIN))
    guard = ADMIN if settings.codec_auth == "admin" else OPEN
    api.include_router(codec_routes(codec, settings.temporal_namespace, guard, _read_body))

    @api.get("/healthz", response_model=Health, tags=["operations"])
    async def healthz() -> Health:
        """The process answers."""
        return Health(status="ok")

    @api.get(
        "/readyz",
        response_model=Health,
        tags=["operations"],
        responses={503: {"model": Problem, "description": "What is down"}},
    )
    async def readyz() -> Health:
        """PostgreSQL and Temporal are reachable; 503 naming what is down."""
        down: list[str] = []
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                with reachable(dsn):
                    async with state.db().acquire() as conn:
                        await conn.fetchval("SELECT 1")
        except _PG_DOWN as exc:
            down.append(f"PostgreSQL: {exc or NO_ANSWER}")
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                client = await state.temporal()
                await client.service_client.check_health(timeout=timedelta(seconds=READY_TIMEOUT))
        except Exception as exc:  # any failure to answer is "down" here
            where = settings.effective_temporal_address
            down.append(f"Temporal ({where}): {exc or NO_ANSWER}")
        if down:
            checks = [FieldProblem(field=d.split(" ", 1)[0].rstrip(":"), message=d) for d in down]
            raise ProblemError(503, "; ".join(down), errors=checks)
        return Health(status="ok", checks={"postgresql": "ok", "temporal": "ok"})

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = get_openapi(
                title=api.title, version=api.version, summary=api.summary, routes=api.routes
            )
            # The schema of `loyalty schema events`, its definitions moved to the
            # components where OpenAPI looks them up.
            event = json.loads(
                json.dumps(events_json_schema()).replace('"#/$defs/', '"#/components/schemas/')
            )
            event.pop("$schema", None)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(event.pop("$defs", {}))
            components["Event"] = event
            components["EventBatch"] = {
                "type": "object",
                "title": "EventBatch",
                "additionalProperties": False,
                "required": ["events"],
                "properties": {
                    "events": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": MAX_EVENTS,
                        "items": {"$ref": "#/components/schemas/Event"},
                    }
                },
            }
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    return api


__all__ = ["MEDIA_TYPE", "create_api"]
