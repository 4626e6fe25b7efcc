"""The HTTP API's profile stream routes (``admin`` scope): status and run-time control.

The same operations as `loyalty streams`, on the database, for the streams that cover
the key's program: ``GET /v1/streams``, ``GET /v1/streams/{name}``, ``POST
/v1/streams/{name}/enable``, ``…/disable`` and ``…/resync`` (202: every member marked for
a full record; ``GET`` the stream to follow its ``pending`` count).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Path
from pydantic import BaseModel, ConfigDict

from loyalty.api.keys import ApiKey
from loyalty.api.problems import Problem, ProblemError
from loyalty.errors import UnknownStream
from loyalty.store.db import reachable
from loyalty.streams import capture
from loyalty.streams.capture import StreamStatus

StreamName = Annotated[str, Path(min_length=1, max_length=64)]
_UNKNOWN: dict[int | str, dict[str, Any]] = {
    404: {"model": Problem, "description": "No such stream in the key's program"}
}


class Resync(BaseModel):
    """A resync: how many members were marked for a full record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stream: str
    marked: int


def stream_routes(pool: Callable[[], asyncpg.Pool], dsn: str, admin: Any) -> APIRouter:
    """The routes, given the API's pool, its DSN and the ``admin`` key dependency
    (``Depends(...)``)."""
    router = APIRouter(tags=["streams"])

    async def visible(conn: Any, key: ApiKey, name: str) -> StreamStatus:
        """The stream, if it covers the key's program; 404 otherwise."""
        try:
            found = await capture.status(conn, name)
        except UnknownStream:
            found = None
        if found is None or key.program not in found.programs:
            raise ProblemError(404, f"no stream {name!r} in program {key.program!r}")
        return found

    async def with_conn(work: Callable[[Any], Awaitable[Any]]) -> Any:
        with reachable(dsn):
            async with pool().acquire() as conn:
                return await work(conn)

    @router.get("/v1/streams", response_model=list[StreamStatus])
    async def get_streams(key: ApiKey = admin) -> list[StreamStatus]:
        """The streams that cover the key's program: state, backlog, lag, counts."""
        found: list[StreamStatus] = await with_conn(
            lambda conn: capture.list_streams(conn, key.program)
        )
        return found

    @router.get("/v1/streams/{name}", response_model=StreamStatus, responses=_UNKNOWN)
    async def get_stream(name: StreamName, key: ApiKey = admin) -> StreamStatus:
        """One stream's state, backlog, in-flight batch, counts and last failure."""
        found: StreamStatus = await with_conn(lambda conn: visible(conn, key, name))
        return found

    async def switch(key: ApiKey, name: str, enabled: bool) -> StreamStatus:
        async def work(conn: Any) -> StreamStatus:
            await visible(conn, key, name)
            await capture.set_enabled(conn, name, enabled)
            return await capture.status(conn, name)

        found: StreamStatus = await with_conn(work)
        return found

    @router.post("/v1/streams/{name}/enable", response_model=StreamStatus, responses=_UNKNOWN)
    async def enable(name: StreamName, key: ApiKey = admin) -> StreamStatus:
        """Send again, the changes marked meanwhile coalesced."""
        return await switch(key, name, True)

    @router.post("/v1/streams/{name}/disable", response_model=StreamStatus, responses=_UNKNOWN)
    async def disable(name: StreamName, key: ApiKey = admin) -> StreamStatus:
        """Stop sending; changes are still marked."""
        return await switch(key, name, False)

    @router.post(
        "/v1/streams/{name}/resync", status_code=202, response_model=Resync, responses=_UNKNOWN
    )
    async def resync(name: StreamName, key: ApiKey = admin) -> Resync:
        """Mark every member for a full record (the initial load of a new list)."""

        async def work(conn: Any) -> Resync:
            await visible(conn, key, name)
            return Resync(stream=name, marked=await capture.resync(conn, name))

        found: Resync = await with_conn(work)
        return found

    return router
