"""`verify` and `report` on a worked story, then on a database corrupted on purpose."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import pytest

from loyalty import ledger
from loyalty.app import Program
from loyalty.ledger import audit
from loyalty.ledger.maturing import run_housekeeping
from loyalty.ledger.returns import Clawback, claw_back, record_order
from loyalty.store.db import Conn
from tests.test_cli import cli_env, loyalty

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DEFAULT = Program(name="default", currencies=("points", "tier_points"))
COFFEE = Program(name="coffee", return_policy="forgive")
CHECKS = [check.name for check in audit.CHECKS]


async def give(
    conn: Conn, member: str, points: int, key: str, *, day: int = 0, kind: str = "available",
    currency: str = "points", order: str | None = None, expires_day: int | None = None,
    program: str = "default",
) -> None:  # fmt: skip
    at = T0 + timedelta(days=day)
    await ledger.award(
        conn, program=program, member_id=member, points=points, kind=kind, currency=currency,
        reason=key, source="test", key=key, occurred_at=at,
        available_at=at + timedelta(days=14) if kind == "earned" else at,
        expires_at=T0 + timedelta(days=expires_day) if expires_day is not None else None,
        order_id=order,
    )  # fmt: skip


async def take(
    conn: Conn, member: str, points: int, key: str, *, day: int = 0, program: str = "default"
) -> None:
    await ledger.spend(
        conn, program=program, member_id=member, points=points, kind="available",
        currency="points", reason=key, source="test", key=key,
        occurred_at=T0 + timedelta(days=day),
    )  # fmt: skip


async def give_back(
    conn: Conn, program: Program, member: str, order: str, amount: int, key: str, day: int
) -> list[Clawback]:
    return await claw_back(
        conn, program, member_id=member, order_id=order, amount=Decimal(amount), key=key,
        source="test", occurred_at=T0 + timedelta(days=day),
    )  # fmt: skip


async def story(conn: Conn) -> None:
    """m1 buys order A (100 EUR, 120 earned points), gets a 50 welcome bonus expiring on
    day 30 and 5 tier points, spends 40 and returns half of A on day 1 (60 leave the
    earned lot). m2 gets 200, spends 150, buys order B (50 EUR, 60 earned). On day 15
    both earned lots mature. m2 spends 100 (50 from the 200, 50 from B), returns all of B
    on day 17: 10 from available, 50 become debt; an award of 30 pays off 30 of it. On
    day 31 the 10 left of m1's bonus expire. In program coffee (returns forgiven) m3
    earns 20 on order C, spends them and returns C: 20 forgiven.
    """
    await record_order(conn, "default", "A", "m1", Decimal(100), "EUR")
    await give(conn, "m1", 120, "a1", kind="earned", order="A")
    await give(conn, "m1", 50, "welcome1", expires_day=30)
    await give(conn, "m1", 5, "tier1", currency="tier_points")
    await give(conn, "m2", 200, "welcome2")
    await take(conn, "m1", 40, "s1")
    await take(conn, "m2", 150, "s2")
    await record_order(conn, "default", "B", "m2", Decimal(50), "EUR")
    await give(conn, "m2", 60, "b1", kind="earned", order="B")
    assert await give_back(conn, DEFAULT, "m1", "A", 50, "r1", 1) == [
        Clawback("points", 60, 60, 0, 0, 0)
    ]
    await run_housekeeping(conn, DEFAULT, T0 + timedelta(days=15))
    await take(conn, "m2", 100, "s3", day=16)
    assert await give_back(conn, DEFAULT, "m2", "B", 50, "r2", 17) == [
        Clawback("points", 60, 0, 10, 50, 0)
    ]
    await give(conn, "m2", 30, "late", day=18)
    expired = await run_housekeeping(conn, DEFAULT, T0 + timedelta(days=31))
    assert [(r.step, r.currency, r.lots, r.points) for r in expired] == [
        ("mature", "*", 0, 0), ("expire", "points", 1, 10), ("expire", "tier_points", 0, 0)
    ]  # fmt: skip
    await conn.execute("INSERT INTO programs (name) VALUES ('coffee')")
    await record_order(conn, "coffee", "C", "m3", Decimal(10), "EUR")
    await give(conn, "m3", 20, "c1", order="C", program="coffee")
    await take(conn, "m3", 20, "c2", program="coffee")
    assert await give_back(conn, COFFEE, "m3", "C", 10, "r3", 2) == [
        Clawback("points", 20, 0, 0, 0, 20)
    ]


# Per program and currency: issued, redeemed, expired, clawed back, forgiven, available,
# earned, debt, outstanding, members with points, members in debt.
FIGURES = {
    ("coffee", "points"): (20, 20, 0, 0, 20, 0, 0, 0, 0, 0, 0),
    # 460 = 120 + 50 + 200 + 60 + 30; 290 = 40 + 150 + 100; 120 = 60 (A) + 60 (B).
    ("default", "points"): (460, 290, 10, 120, 0, 60, 0, 20, 40, 1, 1),
    ("default", "tier_points"): (5, 0, 0, 0, 0, 5, 0, 0, 5, 1, 0),
}
FIELDS = ("issued", "redeemed", "expired", "clawed_back", "forgiven", "available", "earned",
          "debt", "outstanding", "members_with_points", "members_in_debt")  # fmt: skip


def figures(rows: list[dict[str, object]]) -> dict[tuple[object, object], tuple[object, ...]]:
    return {(r["program"], r["currency"]): tuple(r[f] for f in FIELDS) for r in rows}


async def test_a_clean_story_verifies_and_reports_exact_figures(conn: asyncpg.Connection) -> None:
    await story(conn)
    report = await audit.verify(conn)
    assert report.ok, report
    assert [(c.name, c.count) for c in report.checks] == [(name, 0) for name in CHECKS]
    async with conn.transaction():  # inside a caller's transaction, too
        assert (await audit.verify(conn)).ok
    reports = await audit.report(conn)
    assert figures([r.model_dump() for r in reports]) == FIGURES
    for r in reports:
        assert r.issued - r.redeemed - r.expired - r.clawed_back == r.outstanding
    only = await audit.report(conn, "coffee")
    assert [(r.program, r.currency) for r in only] == [("coffee", "points")]
    lifetime = await conn.fetch(
        "SELECT member_id, currency, lifetime_earned FROM member_currencies ORDER BY 1, 2"
    )
    assert [tuple(r) for r in lifetime] == [
        ("m1", "points", 170), ("m1", "tier_points", 5), ("m2", "points", 290),
        ("m3", "points", 20),
    ]  # fmt: skip


async def account(conn: Conn, member: str | None, kind: str, currency: str = "points") -> int:
    account_id: int = await conn.fetchval(
        """SELECT id FROM accounts WHERE program = 'default' AND member_id IS NOT DISTINCT
           FROM $1 AND kind = $2 AND currency = $3""",
        member, kind, currency,
    )  # fmt: skip
    return account_id


async def post_legs(conn: Conn, program: str, legs: list[tuple[int, int]]) -> int:
    """A transaction of kind `corrupt` with these (account, amount) legs, in one statement."""
    async with conn.transaction():
        tx: int = await conn.fetchval(
            """INSERT INTO ledger_transactions (program, idempotency_key, kind, reason, source,
                   occurred_at)
               VALUES ($1, gen_random_uuid()::text, 'corrupt', 'x', 'x', now()) RETURNING id""",
            program,
        )
        await conn.execute(
            """INSERT INTO ledger_legs (transaction_id, account_id, amount)
               SELECT $1, * FROM unnest($2::bigint[], $3::bigint[])""",
            tx, [a for a, _ in legs], [p for _, p in legs],
        )  # fmt: skip
    return tx


async def wrong_balance(conn: Conn) -> None:
    await conn.execute(
        "UPDATE accounts SET balance = balance + 7 WHERE id = $1",
        await account(conn, "m1", "available"),
    )


async def wrong_remaining(conn: Conn) -> None:
    await conn.execute("UPDATE lots SET remaining = remaining - 5 WHERE order_id = 'A'")


async def unbalanced_per_currency(conn: Conn) -> None:
    # +5 points and -5 tier points: the sum is zero, so the database accepts it.
    redeemed = await account(conn, None, "redeemed", "points")
    issued = await account(conn, None, "issued", "tier_points")
    await post_legs(conn, "default", [(redeemed, 5), (issued, -5)])


async def without_legs(conn: Conn) -> None:
    await conn.execute(
        "ALTER TABLE ledger_transactions DISABLE TRIGGER ledger_transaction_has_legs"
    )
    await conn.execute(
        """INSERT INTO ledger_transactions (program, idempotency_key, kind, reason, source,
               occurred_at) VALUES ('default', 'empty', 'corrupt', 'x', 'x', now())"""
    )


async def leg_in_another_program(conn: Conn) -> None:
    legs = [(await account(conn, None, "redeemed"), 5), (await account(conn, None, "issued"), -5)]
    await post_legs(conn, "coffee", legs)


async def lots_out_of_bounds(conn: Conn) -> None:
    # The database refuses such lots: drop its CHECK, to see that verify would notice.
    for name in await conn.fetch(
        """SELECT conname FROM pg_constraint WHERE conrelid = 'lots'::regclass
           AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%remaining%'"""
    ):
        await conn.execute(f'ALTER TABLE lots DROP CONSTRAINT "{name[0]}"')
    await conn.execute("UPDATE lots SET remaining = amount + 1 WHERE order_id = 'A'")
    await conn.execute("UPDATE lots SET remaining = -1 WHERE order_id = 'B'")


async def lot_in_an_earned_account(conn: Conn) -> None:
    earned = await account(conn, "m1", "earned")
    await conn.execute("UPDATE lots SET account_id = $1 WHERE order_id = 'A'", earned)


async def lot_in_a_debt_account(conn: Conn) -> None:
    debt = await account(conn, "m2", "debt")
    await conn.execute("UPDATE lots SET account_id = $1 WHERE order_id = 'B'", debt)


async def positive_debt(conn: Conn) -> None:
    # A balanced transaction that pays off 25 of a debt of 20: the debt account holds 5.
    legs = [(await account(conn, "m2", "debt"), 25), (await account(conn, None, "issued"), -25)]
    await post_legs(conn, "default", legs)


async def wrong_lifetime(conn: Conn) -> None:
    await conn.execute("UPDATE member_currencies SET lifetime_earned = 291 WHERE member_id = 'm2'")
    await conn.execute("DELETE FROM member_currencies WHERE member_id = 'm3'")


Found = tuple[str, str | None, str | None, str | None, int | None, int | None, str]


async def wrong_qualifying_total(conn: Conn) -> None:
    await conn.execute("INSERT INTO qualifying_totals VALUES ('default', 'm1', 'points', 2026, 7)")


async def wrong_window_total(conn: Conn) -> None:
    # A kept rolling window whose sums were never filled, and a sum nobody earned.
    await conn.execute(
        "INSERT INTO qualifying_windows VALUES ('default', 'points', interval '30 days', now())"
    )
    await conn.execute(
        """INSERT INTO qualifying_window_totals
           VALUES ('default', 'points', interval '30 days', 'm9', 7, now(), 'infinity')"""
    )


# Corruption -> {check: [(program, member, currency, kind, expected, found, detail)]}.


CORRUPTIONS: dict[str, tuple[Callable[[Conn], Awaitable[None]], dict[str, list[Found]]]] = {
    "balance": (wrong_balance, {"balances": [
        ("default", "m1", "points", "available", 60, 67,
         "balance differs from the sum of its legs")]}),
    "remaining": (wrong_remaining, {"lots": [
        ("default", "m1", "points", "available", 60, 55,
         "lots hold another amount than the legs give the account")]}),
    "per currency": (unbalanced_per_currency, {"transactions": [
        ("default", None, "points", "corrupt", 0, 5, "legs in this currency do not sum to zero"),
        ("default", None, "tier_points", "corrupt", 0, -5,
         "legs in this currency do not sum to zero")]}),
    "no legs": (without_legs, {"legless": [
        ("default", None, None, "corrupt", None, None, "transaction has no legs")]}),
    "program": (leg_in_another_program, {"leg_programs": [
        ("default", None, "points", "redeemed", None, 5,
         "leg of a transaction of program coffee"),
        ("default", None, "points", "issued", None, -5,
         "leg of a transaction of program coffee")]}),
    "bounds": (lots_out_of_bounds, {
        "lots": [("default", "m1", "points", "available", 60, 121,
                  "lots hold another amount than the legs give the account"),
                 ("default", "m2", "points", "available", 0, -1,
                  "lots hold another amount than the legs give the account")],
        "lot_states": [("default", "m1", "points", "available", 120, 121,
                        "remaining above the lot amount"),
                       ("default", "m2", "points", "available", 0, -1, "remaining below 0")]}),
    "earned lot": (lot_in_an_earned_account, {"lot_states": [
        ("default", "m1", "points", "earned", None, 60,
         "lot in the member's earned account, not in the available one")]}),
    "debt lot": (lot_in_a_debt_account, {"lot_states": [
        ("default", "m2", "points", "debt", None, 0,
         "lot in the member's debt account, not in the available one")]}),
    "debt": (positive_debt, {"debts": [
        ("default", "m2", "points", "debt", 0, 5, "debt account above 0")]}),
    "qualifying": (wrong_qualifying_total, {"qualifying_totals": [
        ("default", "m1", "points", None, 0, 7, "qualifying points of 2026")]}),
    "window": (wrong_window_total, {"qualifying_windows": [
        ("default", "m9", "points", None, 0, 7, "kept sum of the rolling window of 30 days")]}),
    "lifetime": (wrong_lifetime, {"lifetime_earned": [
        ("coffee", "m3", "points", None, 20, None, "awards without a member_currencies row"),
        ("default", "m2", "points", None, 290, 291,
         "lifetime_earned differs from the points awarded")]}),
}  # fmt: skip


@pytest.mark.corrupts_ledger
@pytest.mark.parametrize("case", list(CORRUPTIONS))
async def test_verify_finds_each_kind_of_corruption_and_only_it(
    case: str, conn: asyncpg.Connection
) -> None:
    corrupt, expected = CORRUPTIONS[case]
    await story(conn)
    await corrupt(conn)
    report = await audit.verify(conn)
    assert not report.ok
    found = {
        c.name: [(d.program, d.member_id, d.currency, d.kind, d.expected, d.found, d.detail)
                 for d in c.differences]
        for c in report.checks if not c.ok
    }  # fmt: skip
    assert found == expected
    for check in report.checks:
        assert check.count == len(check.differences)
        for d in check.differences:
            assert d.account_id is not None or d.transaction_id is not None or d.member_id


@pytest.mark.corrupts_ledger
async def test_every_difference_is_counted_but_only_the_first_are_listed(
    conn: asyncpg.Connection,
) -> None:
    await story(conn)
    await conn.execute(
        "UPDATE accounts SET balance = balance + 1 WHERE member_id IS NOT NULL AND kind <> 'debt'"
    )
    balances = (await audit.verify(conn, listed=2)).checks[CHECKS.index("balances")]
    # m1: available and earned points, available tier points; m2: available and earned;
    # m3: available, and earned (created by the return of C).
    assert (balances.count, len(balances.differences)) == (7, 2)


@pytest.mark.corrupts_ledger
async def test_cli_verify_and_report(
    conn: asyncpg.Connection, settings_env: dict[str, object]
) -> None:
    env = cli_env(settings_env)
    await story(conn)
    run = await loyalty(env, "verify")
    assert run.code == 0, run.out + run.err
    assert [line.split(":")[0] for line in run.lines[:-1]] == [f"✓ {n}" for n in CHECKS]
    assert run.lines[-1] == "the ledger verifies"

    run = await loyalty(env, "report", "--json")
    assert run.code == 0, run.err
    assert figures(json.loads(run.out)) == FIGURES
    run = await loyalty(env, "report", "--json", "--program", "coffee")
    assert figures(json.loads(run.out)) == {("coffee", "points"): FIGURES[("coffee", "points")]}
    run = await loyalty(env, "report")
    assert run.code == 0, run.err
    for title in ("coffee · points", "default · points", "default · tier_points"):
        assert title in run.out
    assert "█" in run.out  # the chart
    assert "members with points: 1, in debt: 1" in run.out
    run = await loyalty(env, "report", "--program", "nope")
    assert (run.code, run.problems) == (2, ["program: unknown program 'nope'"])

    await wrong_balance(conn)
    run = await loyalty(env, "verify")
    assert run.code == 1, run.out + run.err
    assert (
        "✗ balances: member account balances equal the sum of their legs — 1 difference" in run.out
    )
    assert "67" in run.out
    assert run.lines[-1] == f"1 of {len(CHECKS)} checks found differences"
    run = await loyalty(env, "verify", "--json")
    assert run.code == 1, run.err
    result = json.loads(run.out)
    assert result["ok"] is False
    failed = [c for c in result["checks"] if c["count"]]
    assert [(c["name"], c["differences"][0]["found"]) for c in failed] == [("balances", 67)]
