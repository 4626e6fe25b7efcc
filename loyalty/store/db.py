"""PostgreSQL connections: the DSN from settings or the embedded server, and the pool."""

from __future__ import annotations

import json
from types import TracebackType
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from loyalty.app import LoyaltyApp
from loyalty.errors import UnknownProgram
from loyalty.settings import Settings
from loyalty.store.embedded import EmbeddedPostgres
from loyalty.store.migrate import migrate

# A connection, or one borrowed from a pool.
Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection with the project's codecs (JSON as Python objects)."""
    conn = await asyncpg.connect(dsn)
    await _init_connection(conn)
    return conn


async def create_pool(dsn: str, size: int = 10) -> asyncpg.Pool:
    """The pool a process uses for all its queries; create once, close at shutdown."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=size, init=_init_connection)
    assert pool is not None
    return pool


class Database:
    """Resolves where the database is: ``LOYALTY_DATABASE_URL``, or the embedded server.

    Used as an async context manager; the embedded server is stopped on exit only if this
    object started it (a server started by `loyalty dev` keeps running).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded: EmbeddedPostgres | None = None
        self.dsn = ""

    async def __aenter__(self) -> Database:
        if self.settings.database_url is not None:
            self.dsn = self.settings.database_url.get_secret_value()
        else:
            self.embedded = EmbeddedPostgres(self.settings.home / "postgres")
            self.embedded.start()
            self.dsn = await self.embedded.ensure_database()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.embedded is not None:
            self.embedded.stop()


async def prepare_database(dsn: str, app: LoyaltyApp | None = None) -> None:
    """Apply migrations and record the app's programs, so that events can name them."""
    conn = await connect(dsn)
    try:
        await migrate(conn)
        if app is not None:
            await conn.execute(
                """INSERT INTO programs (name, config)
                   SELECT * FROM unnest($1::text[], $2::jsonb[])
                   ON CONFLICT (name) DO UPDATE SET config = EXCLUDED.config""",
                list(app.programs),
                [program.config() for program in app.programs.values()],
            )
    finally:
        await conn.close()


async def program_config(conn: Conn, program: str) -> dict[str, object]:
    """The program's stored config (`Program.config`).

    Raises:
        UnknownProgram: the database knows no such program (exit code 2 in the CLI).
    """
    config: dict[str, object] | None = await conn.fetchval(
        "SELECT config FROM programs WHERE name = $1", program
    )
    if config is None:
        known = await conn.fetchval("SELECT string_agg(name, ', ' ORDER BY name) FROM programs")
        raise UnknownProgram(f"program: unknown program {program!r}; known: {known}")
    return config
