"""Retention of the journey outboxes (`loyalty.flows.retention.prune`), on real PostgreSQL.

Worked example, retention 7 days: journeys started 8 days ago go, unless the member
entered a once-per-member flow (kept for ever) or the journey's period has not ended 7
days ago; journeys started 6 days ago stay; signals sent 8 days ago go, 1 day ago stay;
rows never started or sent stay whatever their age. Ages are set by moving timestamps
back in the database, so nothing depends on the wall clock.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from loyalty.flows import Entry, FlowSpec, journey_id
from loyalty.flows.retention import prune
from loyalty.settings import Settings
from loyalty.store.db import prepare_database
from loyalty.triggers import Activity
from tests.conftest import TEST_APP
from tests.test_cli import cli_env, loyalty

DAY = timedelta(days=1)
WEEK = timedelta(days=7)
QUEUE = "loyalty"
# Long ago: the period of 1 day that held it ended long before any retention.
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


class Journey:
    """Stands for a flow's workflow class."""


def spec(name: str, entry: Entry) -> FlowSpec:
    return FlowSpec(name=name, trigger=Activity("signup"), entry=entry, programs=None, cls=Journey)


EVERY_TIME = spec("welcome", Entry.EVERY_TIME)
ONCE = spec("first-login", Entry.ONCE_PER_MEMBER)
DAILY = spec("daily", Entry.once_per(DAY))
# A period longer than any test run: the current one has not ended.
CENTURY = spec("century", Entry.once_per(timedelta(days=36_500)))


def jid(flow: FlowSpec, member: str, event_id: str, occurred_at: datetime = LONG_AGO) -> str:
    return journey_id(flow, member, event_id, occurred_at, program="default", task_queue=QUEUE)


async def add_start(
    conn: asyncpg.Connection, workflow_id: str, started: timedelta | None, created: timedelta
) -> None:
    """A journey_starts row created ``created`` ago, started ``started`` ago (None: not)."""
    await conn.execute(
        """INSERT INTO journey_starts
               (workflow_id, program, flow, member_id, event_row_id, event_id, event_type,
                payload, created_at, started_at)
           VALUES ($1, 'default', 'f', 'm', 0, 'e', 'activity', '{}', now() - $2::interval,
                   now() - $3::interval)""",
        workflow_id, created, started,
    )  # fmt: skip


async def add_signal(
    conn: asyncpg.Connection, workflow_id: str, sent: timedelta | None, created: timedelta
) -> int:
    """A journey_signals row created ``created`` ago, sent ``sent`` ago (None: not sent)."""
    row_id: int = await conn.fetchval(
        """INSERT INTO journey_signals
               (workflow_id, wait_key, program, member_id, event_row_id, event_id, payload,
                created_at, sent_at)
           VALUES ($1, 'wait-1', 'default', 'm', 0, 'e', '{}',
                   now() - $2::interval, now() - $3::interval)
           RETURNING id""",
        workflow_id, created, sent,
    )  # fmt: skip
    return row_id


async def starts(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT workflow_id FROM journey_starts ORDER BY workflow_id")
    return [r["workflow_id"] for r in rows]


async def signals(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT workflow_id FROM journey_signals ORDER BY workflow_id")
    return [r["workflow_id"] for r in rows]


@pytest.fixture
async def db(conn: asyncpg.Connection, database_url: str) -> asyncpg.Connection:
    await prepare_database(database_url, TEST_APP)
    return conn


async def test_prune_deletes_what_was_done_before_the_retention_and_nothing_owed(
    db: asyncpg.Connection,
) -> None:
    now = datetime.now(UTC)
    old = [jid(EVERY_TIME, "m1", f"old-{n}") for n in range(5)]
    for workflow_id in old:
        await add_start(db, workflow_id, started=8 * DAY, created=8 * DAY)
    recent = jid(EVERY_TIME, "m1", "recent")
    await add_start(db, recent, started=6 * DAY, created=6 * DAY)
    # Recorded a month ago and never started (say its flow failed to start): owed.
    owed = jid(EVERY_TIME, "m2", "owed")
    await add_start(db, owed, started=None, created=30 * DAY)
    # The record that m1 entered first-login: a later trigger must not start it again.
    entered = jid(ONCE, "m1", "first")
    await add_start(db, entered, started=400 * DAY, created=400 * DAY)
    ended_period = jid(DAILY, "m1", "d1")
    await add_start(db, ended_period, started=8 * DAY, created=8 * DAY)
    current_period = jid(CENTURY, "m1", "c1", occurred_at=now)
    await add_start(db, current_period, started=8 * DAY, created=8 * DAY)

    await add_signal(db, "journey/sent-long-ago", sent=8 * DAY, created=8 * DAY)
    await add_signal(db, "journey/sent-yesterday", sent=DAY, created=8 * DAY)
    await add_signal(db, "journey/unsent", sent=None, created=30 * DAY)

    pruned = await prune(db, older_than=WEEK, chunk=2)

    assert (pruned.starts, pruned.signals) == (6, 1)
    assert await starts(db) == sorted([recent, owed, entered, current_period])
    assert await signals(db) == ["journey/sent-yesterday", "journey/unsent"]
    # Its cut-off is the database's clock less the retention.
    db_now = await db.fetchval("SELECT now()")
    assert db_now - WEEK - timedelta(minutes=1) < pruned.cutoff <= db_now - WEEK
    # Nothing more to take: a second run deletes nothing.
    again = await prune(db, older_than=WEEK, chunk=2)
    assert (again.starts, again.signals) == (0, 0)


async def test_pending_rows_stay_even_with_no_retention(db: asyncpg.Connection) -> None:
    owed = jid(EVERY_TIME, "m1", "owed")
    await add_start(db, owed, started=None, created=365 * DAY)
    await add_signal(db, "journey/unsent", sent=None, created=365 * DAY)
    done = jid(EVERY_TIME, "m1", "done")
    await add_start(db, done, started=timedelta(seconds=1), created=DAY)
    await add_signal(db, "journey/sent", sent=timedelta(seconds=1), created=DAY)

    pruned = await prune(db, older_than=timedelta(0))

    assert (pruned.starts, pruned.signals) == (1, 1)
    assert await starts(db) == [owed]
    assert await signals(db) == ["journey/unsent"]


async def test_a_once_per_member_row_stays_so_the_member_never_enters_twice(
    db: asyncpg.Connection,
) -> None:
    """Ids whose parts hold '/', '@' or the words the pattern looks for are encoded: the
    shape of the id still tells the entry policy."""
    tricky = jid(ONCE, "m/event/x@y", "e1")
    await add_start(db, tricky, started=400 * DAY, created=400 * DAY)
    every = jid(EVERY_TIME, "m/period/1s-1", "e/1@q")
    await add_start(db, every, started=400 * DAY, created=400 * DAY)

    pruned = await prune(db, older_than=WEEK)

    assert pruned.starts == 1
    assert await starts(db) == [tricky]


async def test_rows_locked_by_the_router_are_skipped_without_waiting(
    db: asyncpg.Connection, database_url: str
) -> None:
    locked, free = jid(EVERY_TIME, "m1", "locked"), jid(EVERY_TIME, "m1", "free")
    for workflow_id in (locked, free):
        await add_start(db, workflow_id, started=8 * DAY, created=8 * DAY)
    router = await asyncpg.connect(database_url)
    try:
        transaction = router.transaction()
        await transaction.start()
        await router.execute(
            "UPDATE journey_starts SET attempts = attempts + 1 WHERE workflow_id = $1", locked
        )
        # Waiting for the lock would hang here until the router's transaction ends.
        async with asyncio.timeout(30):
            first = await prune(db, older_than=WEEK)
        await transaction.commit()
    finally:
        await router.close()
    assert first.starts == 1
    assert await starts(db) == [locked]
    assert (await prune(db, older_than=WEEK)).starts == 1
    assert await starts(db) == []


async def test_prune_refuses_a_negative_retention(db: asyncpg.Connection) -> None:
    with pytest.raises(ValueError, match="older_than"):
        await prune(db, older_than=-DAY)


def test_retention_setting_defaults_to_seven_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOYALTY_JOURNEY_RETENTION", raising=False)
    assert Settings().journey_retention == WEEK
    monkeypatch.setenv("LOYALTY_JOURNEY_RETENTION", "30")
    assert Settings().journey_retention == timedelta(days=30)
    monkeypatch.setenv("LOYALTY_JOURNEY_RETENTION", "0")
    with pytest.raises(ValueError, match="LOYALTY_JOURNEY_RETENTION"):
        Settings()


async def test_housekeeping_run_prunes_with_the_configured_retention(
    settings_env: dict[str, Any], database_url: str
) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await prepare_database(database_url, TEST_APP)
        gone, kept = jid(EVERY_TIME, "m1", "gone"), jid(EVERY_TIME, "m1", "kept")
        await add_start(connection, gone, started=4 * DAY, created=4 * DAY)
        await add_start(connection, kept, started=2 * DAY, created=2 * DAY)
        await add_signal(connection, "journey/sent", sent=4 * DAY, created=4 * DAY)
        env = cli_env({**settings_env, "LOYALTY_JOURNEY_RETENTION": 3})
        run = await loyalty(env, "housekeeping", "run")
        assert run.code == 0, run.err
        pruned = [line for line in run.lines if line.startswith("Pruned journey outboxes")]
        assert len(pruned) == 1
        assert pruned[0].endswith(
            "3 days ago): 1 journey starts, 1 signals, 0 recurring runs' snapshots, "
            "0 segment changes"
        )
        assert await starts(connection) == [kept]
        assert await signals(connection) == []
    finally:
        await connection.close()
