"""Migrations: recorded, idempotent, safe from two processes at once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from loyalty.errors import ConfigurationError
from loyalty.events import Activity
from loyalty.ingest.inbox import insert_events
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


async def test_migrations_0014_and_0015_give_existing_events_their_origin(
    pg_admin_dsn: str,
) -> None:
    """Existing rows: derived types are the engine's, the others the clients'; whether
    the sender gave occurred_at is not known (so never a conflict on it)."""
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute('DROP DATABASE IF EXISTS "loyalty_migrate_0014" WITH (FORCE)')
    await admin.execute('CREATE DATABASE "loyalty_migrate_0014"')
    try:
        conn = await connect(with_database(pg_admin_dsn, "loyalty_migrate_0014"))
        try:
            before = [m.version for m in available_migrations() if m.version < 14]
            await migrate(conn, up_to=max(before))
            await conn.execute(
                """INSERT INTO events (program, event_id, type, member_id, payload, occurred_at)
                   VALUES ('default', 'a1', 'activity', 'm1', '{}', now()),
                          ('default', 'new_stage:main:gold:a1', 'new_stage', 'm1', '{}', now())"""
            )
            assert [m.version for m in await migrate(conn)][:2] == [14, 15]
            rows = await conn.fetch(
                "SELECT event_id, origin, occurred_at_sent FROM events ORDER BY id"
            )
            assert [tuple(r) for r in rows] == [
                ("a1", "client", False),
                ("new_stage:main:gold:a1", "engine", False),
            ]
            squatter = Activity(event_id="new_stage:main:gold:a1", member_id="m2", name="noop")
            assert [r.accepted for r in await insert_events(conn, [squatter])] == [True]
        finally:
            await conn.close()
    finally:
        await admin.execute('DROP DATABASE IF EXISTS "loyalty_migrate_0014" WITH (FORCE)')
        await admin.close()
