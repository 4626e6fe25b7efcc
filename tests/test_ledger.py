"""The ledger as worked examples, and its invariants enforced by the database."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from loyalty import ledger
from loyalty.errors import InsufficientPoints
from loyalty.models import LedgerReceipt
from loyalty.store.db import Conn

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


async def give(
    conn: Conn, key: str, points: int, expires_in_days: int | None = None, member: str = "m1"
) -> LedgerReceipt:
    expires = NOW + timedelta(days=expires_in_days) if expires_in_days is not None else None
    return await ledger.award(
        conn,
        program="default",
        member_id=member,
        points=points,
        kind="available",
        currency="points",
        reason=f"give {key}",
        source=key,
        key=key,
        occurred_at=NOW,
        available_at=NOW,
        expires_at=expires,
    )


async def take(conn: Conn, key: str, points: int, member: str = "m1") -> LedgerReceipt:
    return await ledger.spend(
        conn,
        program="default",
        member_id=member,
        points=points,
        kind="available",
        currency="points",
        reason=f"take {key}",
        source=key,
        key=key,
        occurred_at=NOW,
    )


async def balance(conn: Conn, member: str = "m1") -> int:
    value = await conn.fetchval(
        "SELECT balance FROM accounts WHERE member_id = $1 AND kind = 'available'", member
    )
    return int(value or 0)


async def program_total(conn: Conn, kind: str) -> int:
    return int(
        await conn.fetchval(
            """SELECT coalesce(sum(g.amount), 0) FROM ledger_legs g
           JOIN accounts a ON a.id = g.account_id WHERE a.kind = $1""",
            kind,
        )
    )


async def test_give_120_spend_50_across_lots_soonest_expiring_first(
    conn: asyncpg.Connection,
) -> None:
    # Member gets 40 expiring in 90 days, 50 never expiring, 30 expiring in 10 days,
    # then spends 50: the 30 expiring soonest go first, then 20 of the 40.
    await give(conn, "a", 40, expires_in_days=90)
    await give(conn, "b", 50)
    await give(conn, "c", 30, expires_in_days=10)
    await take(conn, "s", 50)
    assert await balance(conn) == 70
    lots = await conn.fetch(
        "SELECT t.source, l.remaining FROM lots l JOIN ledger_transactions t "
        "ON t.id = l.transaction_id ORDER BY l.id"
    )
    assert [(r["source"], r["remaining"]) for r in lots] == [("a", 20), ("b", 50), ("c", 0)]
    assert await program_total(conn, "issued") == -120
    assert await program_total(conn, "redeemed") == 50
    # Balance equals the sum of open lots.
    assert await conn.fetchval("SELECT sum(remaining) FROM lots") == 70


async def test_spending_more_than_the_balance_is_refused_and_writes_nothing(
    conn: asyncpg.Connection,
) -> None:
    await give(conn, "a", 30)
    async with conn.transaction():
        with pytest.raises(InsufficientPoints, match="has 30 available points, cannot remove 31"):
            await take(conn, "s", 31)
    assert await balance(conn) == 30
    assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 1


async def test_repeated_keys_return_the_first_result(conn: asyncpg.Connection) -> None:
    first = await give(conn, "a", 30)
    again = await give(conn, "a", 30)
    assert (again.transaction_id, again.duplicate) == (first.transaction_id, True)
    spent = await take(conn, "s", 30)
    # The balance is now 0, but a retried spend returns its first result, not a refusal.
    retried = await take(conn, "s", 30)
    assert (retried.transaction_id, retried.duplicate) == (spent.transaction_id, True)
    assert await balance(conn) == 0


async def test_concurrent_operations_on_one_member_are_exact(pool: asyncpg.Pool) -> None:
    # 200 operations from several connections: 100 awards of 3 (each key sent twice),
    # and 50 spends of 2 (each key sent twice).
    async def one(kind: str, key: str, points: int) -> None:
        async with pool.acquire() as c, c.transaction():
            if kind == "give":
                await give(c, key, points)
            else:
                await take(c, key, points)

    async with pool.acquire() as c:
        await give(c, "seed", 100)
    jobs = [one("give", f"g{i % 50}", 3) for i in range(100)]
    jobs += [one("take", f"t{i % 25}", 2) for i in range(50)]
    jobs += [one("give", f"g{i}", 3) for i in range(50)]
    await asyncio.gather(*jobs)
    async with pool.acquire() as c:
        assert await balance(c) == 100 + 50 * 3 - 25 * 2
        assert await c.fetchval("SELECT count(*) FROM ledger_transactions") == 1 + 50 + 25
        assert await c.fetchval("SELECT sum(remaining) FROM lots") == await balance(c)


async def test_unbalanced_legs_are_refused(conn: asyncpg.Connection) -> None:
    await give(conn, "a", 10)
    account = await conn.fetchval("SELECT id FROM accounts WHERE kind = 'available'")
    tx_sql = (
        "INSERT INTO ledger_transactions (program, idempotency_key, kind, reason, source,"
        " occurred_at) VALUES ('default', 'bad', 'x', 'x', 'x', now()) RETURNING id"
    )
    leg_sql = "INSERT INTO ledger_legs (transaction_id, account_id, amount) VALUES ($1, $2, 5)"
    with pytest.raises(asyncpg.CheckViolationError, match="does not balance"):
        async with conn.transaction():
            tx = await conn.fetchval(tx_sql)
            await conn.execute(leg_sql, tx, account)


async def test_transaction_without_legs_is_refused_at_commit(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError, match="has no legs"):
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO ledger_transactions (program, idempotency_key, kind, reason, source,"
                " occurred_at) VALUES ('default', 'empty', 'x', 'x', 'x', now())"
            )


async def test_legs_are_immutable(conn: asyncpg.Connection) -> None:
    await give(conn, "a", 10)
    with pytest.raises(asyncpg.RestrictViolationError, match="immutable"):
        await conn.execute("UPDATE ledger_legs SET amount = amount * 2")
    with pytest.raises(asyncpg.RestrictViolationError, match="immutable"):
        await conn.execute("DELETE FROM ledger_legs")


async def test_member_available_balance_cannot_go_negative(conn: asyncpg.Connection) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute(
            "INSERT INTO accounts (program, member_id, currency, kind, balance)"
            " VALUES ('default', 'm9', 'points', 'available', -1)"
        )
