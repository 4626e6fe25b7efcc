"""The cut-off model of maturing and expiry (``migrations/0003_cutoffs.sql``).

A lot's state (earned, available, expired) follows from its dates and the program's
per-currency cut-offs in ``ledger_cutoffs``, which ``mature_due`` and ``expire_due`` move
forward. These tests check, with explicit times (no wall clock) and exact balances:

* awards behind a cut-off: their dates are clamped to just after it, so the lot matures
  or expires at the next run, never silently in the past;
* the program's advisory ledger lock: a writer that holds it (``ledger.hold``) keeps a
  bulk step out until it commits, and a bulk step keeps writers out;
* housekeeping running over and over while other connections award and spend: the
  ledger still verifies and every point is accounted for;
* migration 0003 on a ledger written in the old format (earned lots in ``earned``
  accounts, a ``maturing`` flag): every lot keeps its state and later matures normally.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from loyalty import ledger
from loyalty.app import Program
from loyalty.errors import InsufficientPoints
from loyalty.ledger import audit
from loyalty.ledger.maturing import BulkResult, expire_due, mature_due, run_housekeeping
from loyalty.models import LedgerReceipt
from loyalty.policies import Rolling, lot_expiry
from loyalty.store.db import Conn, connect
from loyalty.store.migrate import available_migrations, migrate
from tests.conftest import with_database
from tests.test_ledger_stories import enrol

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MICROSECOND = timedelta(microseconds=1)
WAITING = timedelta(days=14)
# Completions are awaited this long at most; nothing is asserted to be fast.
PATIENCE = 30.0
# The exclusive ledger lock of program `default`, as the bulk steps take it.
EXCLUSIVE_DEFAULT = "SELECT pg_advisory_xact_lock(hashtextextended('loyalty-ledger:default', 0))"


async def give(
    conn: Conn,
    key: str,
    points: int,
    *,
    at: datetime,
    kind: str = "available",
    member: str = "alice",
    available_at: datetime | None = None,
    expires_at: datetime | None = None,
) -> LedgerReceipt:
    """Award points in program ``default``, currency ``points``, with the dates given."""
    return await ledger.award(
        conn,
        program="default",
        member_id=member,
        points=points,
        kind=kind,
        currency="points",
        reason=f"award {key}",
        source=key,
        key=key,
        occurred_at=at,
        available_at=available_at,
        expires_at=expires_at,
    )


async def take(
    conn: Conn, key: str, points: int, *, at: datetime, member: str = "alice"
) -> LedgerReceipt:
    """Spend available points of a member of ``default``."""
    return await ledger.spend(
        conn,
        program="default",
        member_id=member,
        points=points,
        kind="available",
        currency="points",
        reason=f"spend {key}",
        source=key,
        key=key,
        occurred_at=at,
    )


async def held(conn: Conn, kind: str, member: str = "alice") -> int:
    """The cached balance of a member account (0 when the account does not exist)."""
    value = await conn.fetchval(
        """SELECT balance FROM accounts
           WHERE program = 'default' AND member_id = $1 AND currency = 'points'
             AND kind = $2""",
        member,
        kind,
    )
    return int(value or 0)


async def pocket(conn: Conn, member: str = "alice") -> tuple[int, int]:
    """A member's (available, earned) balances."""
    return await held(conn, "available", member), await held(conn, "earned", member)


async def program_total(conn: Conn, kind: str) -> int:
    """A program account's total: the sum of its legs (no cached balance)."""
    return int(
        await conn.fetchval(
            """SELECT coalesce(sum(g.amount), 0) FROM ledger_legs AS g
               JOIN accounts AS a ON a.id = g.account_id
               WHERE a.member_id IS NULL AND a.kind = $1""",
            kind,
        )
    )


async def cutoffs(conn: Conn) -> tuple[datetime, datetime]:
    """The (matured_through, expired_through) cut-offs of ``default`` in ``points``."""
    row = await conn.fetchrow(
        """SELECT matured_through, expired_through FROM ledger_cutoffs
           WHERE program = 'default' AND currency = 'points'"""
    )
    assert row is not None
    return row["matured_through"], row["expired_through"]


async def lot_of(conn: Conn, key: str) -> asyncpg.Record:
    """The lot written by the award with that key, with its state and what it holds."""
    row = await conn.fetchrow(
        """SELECT l.state, l.held, l.available_at, l.expires_at, l.account_id
           FROM lot_states AS l JOIN ledger_transactions AS t ON t.id = l.transaction_id
           WHERE t.idempotency_key = $1""",
        key,
    )
    assert row is not None, f"no lot for {key}"
    return row


async def assert_verifies(conn: Conn) -> None:
    report = await audit.verify(conn)
    assert report.ok, [check for check in report.checks if not check.ok]


# --- Awards behind a cut-off ---------------------------------------------------------------


async def test_awards_behind_a_cutoff_mature_or_expire_at_the_next_run(
    conn: asyncpg.Connection,
) -> None:
    program = Program(name="default", expiry={"points": Rolling(days=30)})
    await enrol(conn, "alice")

    # Alice earns 100 on day 0, usable from day 14; maturing runs on day 20.
    await give(conn, "e0", 100, at=T0, kind="earned", available_at=T0 + WAITING)
    done = await mature_due(conn, "default", T0 + 20 * DAY)
    assert (done.lots, done.points) == (1, 100)
    matured_through, _ = await cutoffs(conn)
    assert matured_through == T0 + 20 * DAY
    assert await pocket(conn) == (100, 0)

    # A late award of 40 earned points that were due on day 14, behind the cut-off: the
    # lot would never mature, so its date is moved to just after the cut-off.
    await give(conn, "e1", 40, at=T0 + 20 * DAY, kind="earned", available_at=T0 + WAITING)
    lot = await lot_of(conn, "e1")
    assert lot["available_at"] == matured_through + MICROSECOND
    assert (lot["state"], lot["held"]) == ("earned", 40)
    assert await pocket(conn) == (100, 40)
    # The 40 are not usable yet.
    async with conn.transaction():
        with pytest.raises(InsufficientPoints, match="has 100 available points"):
            await take(conn, "too-much", 101, at=T0 + 20 * DAY)

    # Maturing again at the same cut-off changes nothing; the next, later run matures it.
    again = await mature_due(conn, "default", T0 + 20 * DAY)
    assert (again.lots, again.points) == (0, 0)
    assert await pocket(conn) == (100, 40)
    done = await mature_due(conn, "default", T0 + 21 * DAY)
    assert (done.lots, done.points) == (1, 40)
    assert await pocket(conn) == (140, 0)
    assert (await lot_of(conn, "e1"))["state"] == "available"

    # Expiry: 50 points valid until day 40; expiry runs on day 40.
    await give(conn, "a1", 50, at=T0 + 21 * DAY, expires_at=T0 + 40 * DAY)
    assert await pocket(conn) == (190, 0)
    [expired] = await expire_due(conn, program, T0 + 40 * DAY)
    assert (expired.lots, expired.points) == (1, 50)
    _, expired_through = await cutoffs(conn)
    assert expired_through == T0 + 40 * DAY
    assert await pocket(conn) == (140, 0)
    assert await program_total(conn, "expired") == 50

    # Late awards whose expiry is behind the cut-off: 30 available points that expired on
    # day 35, and 20 earned points (usable from day 50) that expired on day 30. Both keep
    # their points until the next expiry run.
    await give(conn, "a2", 30, at=T0 + 40 * DAY, expires_at=T0 + 35 * DAY)
    await give(
        conn,
        "e2",
        20,
        at=T0 + 40 * DAY,
        kind="earned",
        available_at=T0 + 50 * DAY,
        expires_at=T0 + 30 * DAY,
    )
    a2, e2 = await lot_of(conn, "a2"), await lot_of(conn, "e2")
    assert a2["expires_at"] == expired_through + MICROSECOND
    assert e2["expires_at"] == expired_through + MICROSECOND
    assert e2["available_at"] == T0 + 50 * DAY
    assert (a2["state"], a2["held"]) == ("available", 30)
    assert (e2["state"], e2["held"]) == ("earned", 20)
    assert await pocket(conn) == (170, 20)

    # Expiring again at the same cut-off changes nothing; the next run expires both.
    [again_expired] = await expire_due(conn, program, T0 + 40 * DAY)
    assert (again_expired.lots, again_expired.points) == (0, 0)
    assert await pocket(conn) == (170, 20)
    [expired] = await expire_due(conn, program, T0 + 41 * DAY)
    assert (expired.lots, expired.points) == (2, 50)
    assert await pocket(conn) == (140, 0)
    assert await program_total(conn, "expired") == 100
    a2, e2 = await lot_of(conn, "a2"), await lot_of(conn, "e2")
    assert (a2["state"], a2["held"]) == ("expired", 0)
    assert (e2["state"], e2["held"]) == ("expired", 0)

    # The expired earned lot does not mature on its date.
    done = await mature_due(conn, "default", T0 + 50 * DAY)
    assert (done.lots, done.points) == (0, 0)
    assert await pocket(conn) == (140, 0)
    assert await program_total(conn, "issued") == -240
    await assert_verifies(conn)


# --- The ledger lock -----------------------------------------------------------------------


async def waiting_on_advisory_locks(pool: asyncpg.Pool) -> int:
    """How many backends wait for an advisory lock of this database."""
    return int(
        await pool.fetchval(
            """SELECT count(*) FROM pg_locks
               WHERE locktype = 'advisory' AND NOT granted
                 AND database = (SELECT oid FROM pg_database
                                 WHERE datname = current_database())"""
        )
    )


async def until_waiting_on_lock(pool: asyncpg.Pool) -> None:
    """Return once some backend waits for an advisory lock (the caller bounds the time)."""
    while await waiting_on_advisory_locks(pool) == 0:
        await asyncio.sleep(0.05)


async def test_an_open_writer_keeps_maturing_out_until_it_commits(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as writer, pool.acquire() as bulk, pool.acquire() as other:
        await enrol(writer, "alice")
        # The issued account and the cut-off rows exist before the race.
        await give(writer, "a0", 10, at=T0)
        await mature_due(bulk, "default", T0)

        writing = writer.transaction()
        await writing.start()
        maturing: asyncio.Task[BulkResult] | None = None
        committed = False
        try:
            await ledger.hold(writer, "default")
            await give(writer, "e1", 70, at=T0, kind="earned", available_at=T0 + WAITING)
            # Writers share the lock: another writer can hold it meanwhile.
            async with other.transaction():
                await asyncio.wait_for(ledger.hold(other, "default"), PATIENCE)

            maturing = asyncio.create_task(mature_due(bulk, "default", T0 + WAITING))
            await asyncio.sleep(0.3)
            assert not maturing.done(), "maturing ran while a writer held the ledger lock"
            # It waits for the ledger lock, not for anything else.
            await asyncio.wait_for(until_waiting_on_lock(pool), PATIENCE)
            assert not maturing.done()
            await writing.commit()
            committed = True
        finally:
            if not committed:
                await writing.rollback()
            if maturing is not None and not committed:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(maturing, PATIENCE)

        assert maturing is not None
        done = await asyncio.wait_for(maturing, PATIENCE)
        # Maturing saw the lot the writer committed, and matured it.
        assert (done.lots, done.points) == (1, 70)
        assert await pocket(writer) == (80, 0)
        assert (await lot_of(writer, "e1"))["state"] == "available"
        await assert_verifies(writer)


async def test_a_bulk_step_keeps_writers_out_until_it_ends(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as bulk, pool.acquire() as writer:
        await enrol(writer, "alice")

        async def write() -> LedgerReceipt:
            async with writer.transaction():
                await ledger.hold(writer, "default")
                return await give(writer, "a1", 25, at=T0)

        stepping = bulk.transaction()
        await stepping.start()
        writing: asyncio.Task[LedgerReceipt] | None = None
        released = False
        try:
            await bulk.execute(EXCLUSIVE_DEFAULT)
            # Another program's ledger is not locked.
            async with writer.transaction():
                await asyncio.wait_for(ledger.hold(writer, "coffee"), PATIENCE)

            writing = asyncio.create_task(write())
            await asyncio.sleep(0.3)
            assert not writing.done(), "a writer held the ledger lock during a bulk step"
            await asyncio.wait_for(until_waiting_on_lock(pool), PATIENCE)
            assert not writing.done()
            assert await held(bulk, "available") == 0
            await stepping.rollback()
            released = True
        finally:
            if not released:
                await stepping.rollback()
                if writing is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(writing, PATIENCE)

        assert writing is not None
        receipt = await asyncio.wait_for(writing, PATIENCE)
        assert receipt.points == 25
        assert await pocket(writer) == (25, 0)


# --- Housekeeping among concurrent writers -------------------------------------------------

MEMBERS = [f"m{i:02d}" for i in range(30)]
WRITERS = 3
TRANSACTIONS_PER_WRITER = 100
MIN_STEPS = 20
ROLLING = Rolling(days=3)
# When a writer's events happened, relative to the latest cut-off: some are backdated.
OCCURRED = [-3 * DAY, -DAY, -HOUR, timedelta(0), HOUR, 5 * HOUR]
# When earned points become usable, relative to when they were earned.
WAITS = [-2 * DAY, -HOUR, timedelta(0), HOUR, DAY, 2 * DAY]


async def test_housekeeping_among_concurrent_writers_keeps_the_ledger_whole(
    conn: asyncpg.Connection, pool: asyncpg.Pool
) -> None:
    program = Program(name="default", expiry={"points": ROLLING})
    await enrol(conn, *MEMBERS)
    awarded: dict[str, int] = {}
    spent: dict[str, int] = {}
    refused: list[str] = []
    # Every member starts with accounts and 20 available points.
    for member in MEMBERS:
        key = f"start-{member}"
        await give(conn, key, 20, at=T0, member=member, expires_at=lot_expiry(ROLLING, T0))
        awarded[key] = 20

    clock = [T0]
    writers_done = asyncio.Event()
    steps: list[BulkResult] = []

    async def housekeeping() -> None:
        step = 0
        while step < MIN_STEPS or not writers_done.is_set():
            step += 1
            at = T0 + step * 6 * HOUR
            clock[0] = at
            steps.append(await mature_due(conn, "default", at))
            steps.extend(await expire_due(conn, program, at))
            await asyncio.sleep(0.005)

    async def write(number: int) -> None:
        rng = random.Random(number)
        # Every writer picks among all members, so two writers often work on one member
        # at once (as the router and `loyalty adjust` can): awards and spends lock the
        # member's rows in the same order, so they wait for each other, never deadlock.
        mine = MEMBERS
        async with pool.acquire() as wc:
            for i in range(TRANSACTIONS_PER_WRITER):
                member = rng.choice(mine)
                occurred = clock[0] + rng.choice(OCCURRED)
                kind = rng.choice(["earned", "available"])
                points = rng.randint(1, 40)
                spend = rng.randint(1, 60) if rng.random() < 0.5 else 0
                award_key, spend_key = f"w{number}-{i}", f"w{number}-{i}-spend"
                action = rng.choice(["award", "spend", "both"])
                try:
                    async with wc.transaction():
                        await ledger.hold(wc, "default")
                        if action != "spend":
                            await give(
                                wc,
                                award_key,
                                points,
                                at=occurred,
                                kind=kind,
                                member=member,
                                available_at=occurred + rng.choice(WAITS),
                                expires_at=lot_expiry(ROLLING, occurred),
                            )
                        if action != "award" and spend:
                            await take(wc, spend_key, spend, at=occurred, member=member)
                except InsufficientPoints:
                    # The whole transaction rolled back, award included.
                    refused.append(spend_key)
                    continue
                if action != "spend":
                    awarded[award_key] = points
                if action != "award" and spend:
                    spent[spend_key] = spend

    async def writers() -> None:
        try:
            await asyncio.gather(*(write(n) for n in range(WRITERS)))
        finally:
            writers_done.set()

    await asyncio.wait_for(asyncio.gather(housekeeping(), writers()), 120)

    # Housekeeping really ran among the writers: points matured and expired, and some
    # awards came in behind a cut-off (the writers' dates are whole hours; a clamped date
    # is a cut-off plus one microsecond).
    assert sum(s.points for s in steps if s.step == "mature") > 0
    assert sum(s.points for s in steps if s.step == "expire") > 0
    assert spent
    clamped = await conn.fetchval(
        """SELECT count(*) FROM lots
           WHERE extract(microseconds FROM available_at)::bigint % 1000000 = 1
              OR extract(microseconds FROM expires_at)::bigint % 1000000 = 1"""
    )
    assert clamped > 0
    await assert_verifies(conn)

    # Every committed award and spend is in the ledger once, and nothing else is.
    rows = await conn.fetch(
        """SELECT idempotency_key, kind FROM ledger_transactions
           WHERE kind LIKE 'award_%' OR kind LIKE 'spend_%'"""
    )
    keys = [row["idempotency_key"] for row in rows]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(awarded) | set(spent)
    assert not set(refused) & set(keys)

    # Points are conserved: what members hold is what was issued less what left them.
    issued = -await program_total(conn, "issued")
    redeemed = await program_total(conn, "redeemed")
    expired = await program_total(conn, "expired")
    clawed_back = await program_total(conn, "clawed_back")
    assert issued == sum(awarded.values())
    assert redeemed == sum(spent.values())
    members_hold = await conn.fetchval(
        """SELECT coalesce(sum(balance), 0) FROM accounts
           WHERE member_id IS NOT NULL AND kind IN ('available', 'earned', 'debt')"""
    )
    assert members_hold == issued - redeemed - expired - clawed_back

    # Long after, every lot has expired: members hold nothing, the rest expired.
    await run_housekeeping(conn, program, clock[0] + 30 * DAY)
    assert (
        await conn.fetchval("SELECT count(*) FROM lot_states WHERE state <> 'expired' AND held > 0")
        == 0
    )
    assert (
        await conn.fetchval(
            "SELECT coalesce(sum(balance), 0) FROM accounts WHERE member_id IS NOT NULL"
        )
        == 0
    )
    assert await program_total(conn, "expired") == issued - redeemed
    await assert_verifies(conn)


# --- Migration 0003 --------------------------------------------------------------------------

MIGRATION_DB = "loyalty_cutoffs_migration_test"


async def old_account(conn: Conn, member: str | None, kind: str) -> int:
    account_id: int = await conn.fetchval(
        """INSERT INTO accounts (program, member_id, currency, kind)
           VALUES ('default', $1, 'points', $2) RETURNING id""",
        member,
        kind,
    )
    return account_id


async def old_transaction(
    conn: Conn, key: str, member: str, kind: str, legs: list[tuple[int, int]]
) -> int:
    """A ledger transaction with its legs, as the old ledger wrote them."""
    transaction_id: int = await conn.fetchval(
        """INSERT INTO ledger_transactions (program, idempotency_key, member_id, kind, reason,
                                            source, occurred_at)
           VALUES ('default', $1, $2, $3, $1, $1, $4) RETURNING id""",
        key,
        member,
        kind,
        T0,
    )
    await conn.execute(
        """INSERT INTO ledger_legs (transaction_id, account_id, amount)
           SELECT $1, a, p FROM unnest($2::bigint[], $3::bigint[]) AS leg(a, p)""",
        transaction_id,
        [account for account, _ in legs],
        [amount for _, amount in legs],
    )
    return transaction_id


async def old_lot(
    conn: Conn,
    account: int,
    transaction_id: int,
    amount: int,
    remaining: int,
    available_at: datetime | None,
    maturing: bool,
) -> int:
    lot_id: int = await conn.fetchval(
        """INSERT INTO lots (account_id, transaction_id, amount, remaining, available_at,
                             maturing)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        account,
        transaction_id,
        amount,
        remaining,
        available_at,
        maturing,
    )
    return lot_id


async def test_migration_0003_keeps_every_lot_in_its_state(pg_admin_dsn: str) -> None:
    admin = await asyncpg.connect(pg_admin_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{MIGRATION_DB}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{MIGRATION_DB}"')
    try:
        conn = await connect(with_database(pg_admin_dsn, MIGRATION_DB))
        try:
            await check_migration_0003(conn)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{MIGRATION_DB}" WITH (FORCE)')
        await admin.close()


async def check_migration_0003(conn: asyncpg.Connection) -> None:
    migrations = available_migrations()
    assert [m.version for m in migrations[:3]] == [1, 2, 3]
    assert [m.version for m in await migrate(conn, up_to=2)] == [1, 2]

    # The old format. Alice: 100 earned points maturing on day 14, in her earned account;
    # 50 available points (available_at set, as old awards and maturing left it), 20 of
    # them spent. Bob: 60 earned points already due on day -1 but not matured yet, and
    # no available account.
    async with conn.transaction():
        await conn.execute("INSERT INTO members (program, member_id) VALUES ('default', 'alice')")
        await conn.execute("INSERT INTO members (program, member_id) VALUES ('default', 'bob')")
        issued = await old_account(conn, None, "issued")
        redeemed = await old_account(conn, None, "redeemed")
        alice_earned = await old_account(conn, "alice", "earned")
        alice_available = await old_account(conn, "alice", "available")
        bob_earned = await old_account(conn, "bob", "earned")
        e1 = await old_transaction(
            conn, "e1", "alice", "award_earned", [(alice_earned, 100), (issued, -100)]
        )
        a1 = await old_transaction(
            conn, "a1", "alice", "award_available", [(alice_available, 50), (issued, -50)]
        )
        await old_transaction(
            conn, "r1", "alice", "spend_available", [(alice_available, -20), (redeemed, 20)]
        )
        b1 = await old_transaction(
            conn, "b1", "bob", "award_earned", [(bob_earned, 60), (issued, -60)]
        )
        earned_lot = await old_lot(conn, alice_earned, e1, 100, 100, T0 + WAITING, True)
        available_lot = await old_lot(conn, alice_available, a1, 50, 30, T0, False)
        bob_lot = await old_lot(conn, bob_earned, b1, 60, 60, T0 - DAY, True)
        await conn.execute(
            """INSERT INTO member_currencies (program, member_id, currency, lifetime_earned,
                                              last_activity_at)
               VALUES ('default', 'alice', 'points', 150, $1),
                      ('default', 'bob', 'points', 60, $1)""",
            T0,
        )
    assert await pocket(conn, "alice") == (30, 100)
    assert await pocket(conn, "bob") == (0, 60)

    applied = await migrate(conn)
    assert [m.version for m in applied] == [m.version for m in migrations[2:]]
    recorded = await conn.fetchval("SELECT checksum FROM loyalty_migrations WHERE version = 3")
    assert recorded == migrations[2].checksum

    # Every lot is in its member's available account now (bob got one), in its state.
    bob_available = await conn.fetchval(
        """SELECT id FROM accounts WHERE program = 'default' AND member_id = 'bob'
           AND currency = 'points' AND kind = 'available'"""
    )
    assert bob_available is not None
    rows = await conn.fetch(
        "SELECT id, account_id, state, held, available_at FROM lot_states ORDER BY id"
    )
    assert [tuple(row.values()) for row in rows] == [
        (earned_lot, alice_available, "earned", 100, T0 + WAITING),
        (available_lot, alice_available, "available", 30, None),
        (bob_lot, bob_available, "earned", 60, T0 - DAY),
    ]
    # The cut-offs start at -infinity: nothing is behind them.
    cut = await conn.fetch(
        """SELECT program, currency, matured_through = '-infinity' AS unmatured,
                  expired_through = '-infinity' AS unexpired FROM ledger_cutoffs"""
    )
    assert [tuple(row.values()) for row in cut] == [("default", "points", True, True)]
    # Balances did not move.
    assert await pocket(conn, "alice") == (30, 100)
    assert await pocket(conn, "bob") == (0, 60)
    await assert_verifies(conn)

    # Maturing at day 14 moves both earned lots; the available lot stays as it is.
    done = await mature_due(conn, "default", T0 + WAITING)
    assert (done.lots, done.points) == (2, 160)
    assert await pocket(conn, "alice") == (130, 0)
    assert await pocket(conn, "bob") == (60, 0)
    states = await conn.fetch("SELECT id, state, held FROM lot_states ORDER BY id")
    assert [tuple(row.values()) for row in states] == [
        (earned_lot, "available", 100),
        (available_lot, "available", 30),
        (bob_lot, "available", 60),
    ]
    await assert_verifies(conn)
