"""PostgreSQL connections: the DSN from settings or the embedded server, and the pool.

A server that cannot be reached raises `ServiceUnavailable` (the CLI's exit code 3), one
that refuses the configuration (credentials, an unknown database, a malformed URL)
raises `ConfigurationError` (exit code 2); both name the server, never the password.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from types import TracebackType
from typing import TypeAlias
from urllib.parse import parse_qs, urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from loyalty.app import LoyaltyApp
from loyalty.errors import ConfigurationError, ServiceUnavailable, UnknownProgram
from loyalty.settings import Settings
from loyalty.store.embedded import EmbeddedPostgres
from loyalty.store.migrate import migrate

# A connection, or one borrowed from a pool.
Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy

# Seconds to open a connection before the server counts as unavailable (asyncpg's own
# default is a minute, far too long for a command that should say "try again").
CONNECT_TIMEOUT = 10.0
# Errors that mean the server cannot be reached or went away: nothing was decided.
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
# Errors that mean the server refuses what LOYALTY_DATABASE_URL says: a retry cannot help.
REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
)


def server_of(dsn: str) -> str:
    """Where the DSN points, for messages: host, port and database, never credentials."""
    try:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
    except ValueError:
        return "PostgreSQL"
    location = parts.netloc.rpartition("@")[2]
    database = parts.path.lstrip("/")
    socket = query.get("host", [""])[0]
    if socket.startswith("/"):
        # The embedded server listens on a Unix socket in its data folder.
        return f"PostgreSQL at {socket} ({database or 'postgres'})"
    return f"PostgreSQL at {location or socket or 'localhost'}/{database}".rstrip("/")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return f"no answer within {CONNECT_TIMEOUT:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[:1].lower() + exc.strerror[1:]
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@contextlib.contextmanager
def reachable(dsn: str) -> Iterator[None]:
    """Turn "the server cannot be reached" into `ServiceUnavailable` naming the server.

    A timeout of the caller's own (``asyncio.timeout``) passes through unchanged.

    Raises:
        ServiceUnavailable: the server is down, unreachable or went away.
        ConfigurationError: the server refuses the credentials or the database name.
    """
    try:
        yield
    except REFUSED as exc:
        raise ConfigurationError(
            f"LOYALTY_DATABASE_URL: {server_of(dsn)} refuses it: {_reason(exc)}"
        ) from None
    except TimeoutError:
        raise
    except UNREACHABLE as exc:
        raise ServiceUnavailable(
            "PostgreSQL", f"{server_of(dsn)} is unavailable: {_reason(exc)}; try again"
        ) from None


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


@contextlib.contextmanager
def _connecting(dsn: str) -> Iterator[None]:
    with reachable(dsn):
        try:
            yield
        except (asyncpg.exceptions.ClientConfigurationError, ValueError) as exc:
            raise ConfigurationError(f"LOYALTY_DATABASE_URL: invalid: {_reason(exc)}") from None
        except TimeoutError as exc:
            # While connecting, a timeout is the connect timeout: the server did not answer.
            raise ServiceUnavailable(
                "PostgreSQL", f"{server_of(dsn)} is unavailable: {_reason(exc)}; try again"
            ) from None


async def connect(dsn: str) -> asyncpg.Connection:
    """One connection with the project's codecs (JSON as Python objects).

    Raises:
        ServiceUnavailable: the server cannot be reached.
        ConfigurationError: the server refuses the DSN's credentials or database.
    """
    with _connecting(dsn):
        conn = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT)
        await _init_connection(conn)
    return conn


class _OneLineWhenUnreachable(logging.Filter):
    """asyncpg's pool logs a traceback each time it fails to reconnect (every few
    seconds while the server is down): one line with the reason says the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, UNREACHABLE):
            record.msg = f"{record.getMessage()}: PostgreSQL is unavailable: {_reason(exc)}"
            record.args, record.exc_info, record.exc_text = None, None, None
        return True


_POOL_LOG_FILTER = _OneLineWhenUnreachable()


async def _end_transaction(conn: asyncpg.Connection) -> None:
    """The reset of a pool whose users take no session state (no advisory locks, LISTEN,
    SET, cursors): only a transaction left open by a cancelled request is rolled back."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(dsn: str, size: int = 10, *, stateless: bool = False) -> asyncpg.Pool:
    """The pool a process uses for all its queries; create once, close at shutdown.

    A connection back in the pool is reset (asyncpg unlocks advisory locks, closes
    cursors, unlistens and resets settings: one more round trip each time). A
    ``stateless`` pool, whose users take none of that state (the HTTP API's), only rolls
    back a transaction left open.

    Raises:
        ServiceUnavailable: the server cannot be reached.
        ConfigurationError: the server refuses the DSN's credentials or database.
    """
    logging.getLogger("asyncpg.pool").addFilter(_POOL_LOG_FILTER)
    with _connecting(dsn):
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=size, init=_init_connection, timeout=CONNECT_TIMEOUT,
            reset=_end_transaction if stateless else None,
        )  # fmt: skip
    assert pool is not None
    return pool


class Database:
    """Resolves where the database is: ``LOYALTY_DATABASE_URL``, or the embedded server.

    Used as an async context manager; the embedded server is stopped on exit only if this
    object owns it (a server started by `loyalty dev` keeps running). ``take_over`` makes
    it the owner of an embedded server that already runs (`loyalty dev`).
    """

    def __init__(self, settings: Settings, *, take_over: bool = False) -> None:
        self.settings = settings
        self.take_over = take_over
        self.embedded: EmbeddedPostgres | None = None
        self.dsn = ""

    async def __aenter__(self) -> Database:
        if self.settings.database_url is not None:
            self.dsn = self.settings.database_url.get_secret_value()
            return self
        self.embedded = EmbeddedPostgres(self.settings.home / "postgres")
        try:
            self.embedded.start(take_over=self.take_over)
            self.dsn = await self.embedded.ensure_database()
        except BaseException:
            # Interrupted (Ctrl-C, SIGTERM) or failed after the start: no server left behind.
            self.embedded.stop()
            raise
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
