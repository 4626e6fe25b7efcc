"""Migrations: recorded, idempotent, safe from two processes at once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from loyalty.errors import ConfigurationError
from loyalty.store.db import connect
from loyalty.store.migrate import available_migrations, migrate
from tests.conftest import with_database


async def test_migrating_twice_and_concurrently_applies_each_once(pg_admin_dsn: str) -> None:
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute('DROP DATABASE IF EXISTS "loyalty_migrate_test" WITH (FORCE)')
    await admin.execute('CREATE DATABASE "loyalty_migrate_test"')
    dsn = with_database(pg_admin_dsn, "loyalty_migrate_test")
    try:
        first, second = await connect(dsn), await connect(dsn)
        try:
            applied = await asyncio.gather(migrate(first), migrate(second))
            # One connection applied everything; the other waited on the lock, then found
            # nothing left to do.
            assert sorted(len(a) for a in applied) == [0, len(available_migrations())]
            assert await migrate(first) == []
            rows = await first.fetch("SELECT version, checksum FROM loyalty_migrations")
            assert {r["version"]: r["checksum"] for r in rows} == {
                m.version: m.checksum for m in available_migrations()
            }
        finally:
            await first.close()
            await second.close()
    finally:
        await admin.execute('DROP DATABASE IF EXISTS "loyalty_migrate_test" WITH (FORCE)')
        await admin.close()


async def test_edited_migration_is_refused(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE loyalty_migrations SET checksum = 'edited' WHERE version = 1")
    with pytest.raises(ConfigurationError, match="was changed after it was applied"):
        await migrate(conn)
