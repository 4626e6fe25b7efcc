"""Earn rules as worked examples: events applied as the router applies them, exact points.

Every event is applied with `EventProcessor.apply` inside a transaction on a fresh
database, at fixed times (no wall clock). The member is alice, the program ``default``,
the currency ``points``, orders in EUR.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from pydantic import ValidationError

from loyalty.app import LoyaltyApp, Program
from loyalty.events import Activity, AnyEvent, Purchase, Referral, ReferralApproved, Return
from loyalty.policies import Rolling
from loyalty.router.processing import EventProcessor
from loyalty.rules import EarnRule, Limit, OnActivity, OnReferral, OnReferralApproved, PerAmount
from loyalty.store.db import Conn

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)


def processor(*rules: EarnRule, **program: Any) -> EventProcessor:
    return EventProcessor(
        LoyaltyApp(programs=[Program(name="default", earn_rules=rules, **program)])
    )


async def apply(conn: Conn, proc: EventProcessor, event: AnyEvent) -> str:
    async with conn.transaction():
        return await proc.apply(conn, event)


async def balances(conn: Conn, member: str = "alice", currency: str = "points") -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT kind, balance FROM accounts WHERE member_id = $1 AND currency = $2",
        member, currency,
    )  # fmt: skip
    return {r["kind"]: r["balance"] for r in rows if r["balance"]}


def purchase(event_id: str, amount: str, *, at: datetime = T0, **extra: Any) -> Purchase:
    return Purchase(
        event_id=event_id, member_id="alice", order_id=f"o-{event_id}", amount=Decimal(amount),
        currency="EUR", occurred_at=at, **extra,
    )  # fmt: skip


def login(event_id: str, at: datetime, member: str = "alice", name: str = "web_login") -> Activity:
    return Activity(event_id=event_id, member_id=member, name=name, occurred_at=at)


@pytest.mark.parametrize(("rounding", "points"), [("floor", 42), ("half_up", 43), ("ceil", 43)])
async def test_per_amount_rounds_as_configured(
    conn: asyncpg.Connection, rounding: str, points: int
) -> None:
    proc = processor(PerAmount(points_per_unit=2, unit=Decimal(2), rounding=rounding))  # type: ignore[arg-type]
    # 42.50 EUR at 2 points per 2 EUR: 42.5 points.
    assert await apply(conn, proc, purchase("p1", "42.50")) == "applied"
    assert await balances(conn) == {"available": points}


async def test_half_up_rounds_down_below_the_half(conn: asyncpg.Connection) -> None:
    proc = processor(PerAmount(rounding="half_up"))
    await apply(conn, proc, purchase("p1", "10.49"))
    assert await balances(conn) == {"available": 10}


async def test_per_amount_excludes_points_paid_and_discount(conn: asyncpg.Connection) -> None:
    proc = processor(PerAmount())
    await apply(conn, proc, purchase("p0", "1000"))
    assert await balances(conn) == {"available": 1000}
    # 42.50 total, 2.50 discount, 500 points paid (worth 5.00): 35 points.
    await apply(conn, proc, purchase("p1", "42.50", points_redeemed=500, discount=Decimal("2.50")))
    assert await balances(conn) == {"available": 1000 - 500 + 35}


async def test_per_amount_exclusions_can_be_turned_off_and_never_go_negative(
    conn: asyncpg.Connection,
) -> None:
    keep_all = processor(
        PerAmount(exclude_points_paid=False, exclude_discount=False, name="all"),
        PerAmount(point_value=Decimal("0.10"), name="net"),
    )
    await apply(conn, keep_all, purchase("p0", "100"))
    assert await balances(conn) == {"available": 200}
    # 10.00 total, 150 points paid worth 15.00 at 0.10: "net" gives 0, "all" gives 10.
    await apply(conn, keep_all, purchase("p1", "10", points_redeemed=150))
    assert await balances(conn) == {"available": 200 - 150 + 10}
    rules = await conn.fetch("SELECT rule, points FROM earn_rule_awards ORDER BY id")
    assert [tuple(r.values()) for r in rules] == [("all", 100), ("net", 100), ("all", 10)]


async def test_per_amount_money_currency_filter(conn: asyncpg.Connection) -> None:
    proc = processor(PerAmount(money_currency="USD"))
    assert await apply(conn, proc, purchase("p1", "10")) == "applied"
    assert await balances(conn) == {}


async def test_earned_points_wait_the_rules_or_the_programs_period(
    conn: asyncpg.Connection,
) -> None:
    proc = processor(
        PerAmount(kind="earned"),
        OnActivity("web_login", points=10, kind="earned", waiting_period=timedelta(days=3)),
        earned_waiting_period=timedelta(days=14),
        expiry={"points": Rolling(days=365)},
    )
    await apply(conn, proc, purchase("p1", "42"))
    await apply(conn, proc, login("l1", T0))
    assert await balances(conn) == {"earned": 52}
    lots = await conn.fetch(
        "SELECT amount, available_at, expires_at, order_id FROM lots ORDER BY id"
    )
    assert [tuple(r.values()) for r in lots] == [
        (42, T0 + 14 * DAY, T0 + 365 * DAY, "o-p1"),
        (10, T0 + 3 * DAY, T0 + 365 * DAY, None),
    ]


async def test_one_login_a_day(conn: asyncpg.Connection) -> None:
    proc = processor(OnActivity("web_login", points=10, limit=Limit(1, per=DAY)))
    assert await apply(conn, proc, login("l1", T0)) == "applied"
    # The same day: nothing, and the event had no effect.
    assert await apply(conn, proc, login("l2", T0 + 10 * HOUR)) == "no_effect"
    assert await balances(conn) == {"available": 10}
    # 24 hours after the first: the window no longer holds it.
    assert await apply(conn, proc, login("l3", T0 + DAY)) == "applied"
    assert await balances(conn) == {"available": 20}
    # Another activity, and another member, are not limited by alice's logins.
    assert await apply(conn, proc, login("x1", T0 + DAY, name="newsletter")) == "no_effect"
    assert await apply(conn, proc, login("b1", T0 + DAY, member="bob")) == "applied"


async def test_a_late_event_counts_the_windows_after_it(conn: asyncpg.Connection) -> None:
    proc = processor(OnActivity("web_login", points=10, limit=Limit(2, per=DAY)))
    await apply(conn, proc, login("l1", T0 - 20 * HOUR))
    await apply(conn, proc, login("l2", T0 + 20 * HOUR))
    # Arriving last: (T0 - 1 day, T0] and (T0 - 4 h, T0 + 20 h] each hold two with it.
    assert await apply(conn, proc, login("l3", T0)) == "applied"
    # Any window holding T0 + 2 h already holds two of the three.
    assert await apply(conn, proc, login("l4", T0 + 2 * HOUR)) == "no_effect"
    assert await balances(conn) == {"available": 30}


async def test_max_per_member(conn: asyncpg.Connection) -> None:
    proc = processor(OnReferral(points=50, max_per_member=2))
    for i in range(3):
        await apply(conn, proc, Referral(event_id=f"r{i}", member_id="alice",
                                         friend_id=f"f{i}", occurred_at=T0 + i * DAY))  # fmt: skip
    assert await balances(conn) == {"available": 100}


async def test_max_total_over_all_members(conn: asyncpg.Connection) -> None:
    proc = processor(OnActivity("signup", points=100, max_total=2))
    for member in ("alice", "bob", "carol"):
        await apply(conn, proc, login(f"s-{member}", T0, member=member, name="signup"))
    assert [await balances(conn, m) for m in ("alice", "bob", "carol")] == [
        {"available": 100},
        {"available": 100},
        {},
    ]
    assert await conn.fetchval("SELECT awards FROM earn_rule_totals") == 2


async def test_promotion_applies_only_within_its_dates(conn: asyncpg.Connection) -> None:
    proc = processor(
        PerAmount(name="base"),
        PerAmount(name="double", valid_from=T0, valid_until=T0 + 7 * DAY),
    )
    await apply(conn, proc, purchase("before", "10", at=T0 - HOUR))
    await apply(conn, proc, purchase("first-day", "10", at=T0))
    await apply(conn, proc, purchase("last-moment", "10", at=T0 + 7 * DAY - HOUR))
    await apply(conn, proc, purchase("after", "10", at=T0 + 7 * DAY))
    assert await balances(conn) == {"available": 10 + 20 + 20 + 10}


async def test_several_rules_on_one_event_award_separately(conn: asyncpg.Connection) -> None:
    proc = processor(
        OnActivity("web_login", points=10),
        OnActivity("web_login", points=5, currency="tier_points", qualifying=True,
                   name="login_tier"),
        OnActivity("web_login", points=1, kind="earned", qualifying=False, name="login_bonus"),
        currencies=("points", "tier_points"),
    )  # fmt: skip
    assert await apply(conn, proc, login("l1", T0)) == "applied"
    assert await balances(conn) == {"available": 10, "earned": 1}
    assert await balances(conn, currency="tier_points") == {"available": 5}
    keys = await conn.fetch("SELECT idempotency_key FROM ledger_transactions ORDER BY id")
    assert [r["idempotency_key"] for r in keys] == [
        "event:l1:rule:activity:web_login",
        "event:l1:rule:login_tier",
        "event:l1:rule:login_bonus",
    ]
    stored = await conn.fetch("SELECT rule, qualifying FROM earn_rule_awards ORDER BY id")
    assert [tuple(r.values()) for r in stored] == [
        ("activity:web_login", True),
        ("login_tier", True),
        ("login_bonus", False),
    ]


async def test_an_event_applied_twice_awards_once(conn: asyncpg.Connection) -> None:
    proc = processor(
        PerAmount(),
        OnActivity("web_login", points=10, limit=Limit(5, per=DAY), max_total=10),
    )
    for _ in range(2):
        assert await apply(conn, proc, purchase("p1", "30")) == "applied"
        assert await apply(conn, proc, login("l1", T0)) == "applied"
    assert await balances(conn) == {"available": 40}
    assert await conn.fetchval("SELECT count(*) FROM earn_rule_awards") == 2
    assert await conn.fetchval("SELECT awards FROM earn_rule_usage") == 1
    assert await conn.fetchval("SELECT awards FROM earn_rule_totals") == 1


async def test_referral_and_approval(conn: asyncpg.Connection) -> None:
    proc = processor(OnReferral(points=50), OnReferralApproved(points=20))
    referral = Referral(event_id="r1", member_id="alice", friend_id="bob", occurred_at=T0)
    approved = ReferralApproved(
        event_id="a1", member_id="bob", referrer_id="alice", occurred_at=T0 + DAY
    )
    await apply(conn, proc, referral)
    await apply(conn, proc, approved)
    assert await balances(conn, "alice") == {"available": 50}
    assert await balances(conn, "bob") == {"available": 20}


async def test_a_return_claws_back_the_purchase_points(conn: asyncpg.Connection) -> None:
    proc = processor(PerAmount(points_per_unit=2), OnActivity("web_login", points=10))
    await apply(conn, proc, login("l1", T0))
    await apply(conn, proc, purchase("p1", "60"))
    assert await balances(conn) == {"available": 130}
    # Half the order comes back: half of its 120 points; the login's 10 stay.
    back = Return(event_id="r1", member_id="alice", order_id="o-p1", amount=Decimal(30),
                  occurred_at=T0 + DAY)  # fmt: skip
    assert await apply(conn, proc, back) == "applied"
    assert await balances(conn) == {"available": 70}


async def test_activity_without_rules_has_no_effect(conn: asyncpg.Connection) -> None:
    assert await apply(conn, processor(), login("l1", T0)) == "no_effect"


async def test_caps_hold_under_concurrent_events(pool: asyncpg.Pool) -> None:
    proc = processor(OnActivity("web_login", points=10, limit=Limit(3, per=DAY)))

    async def one(i: int) -> str:
        async with pool.acquire() as conn:
            return await apply(conn, proc, login(f"l{i}", T0 + i * timedelta(minutes=1)))

    outcomes = await asyncio.gather(*(one(i) for i in range(24)))
    assert sorted(outcomes).count("applied") == 3
    async with pool.acquire() as conn:
        assert await balances(conn) == {"available": 30}
        assert await conn.fetchval("SELECT count(*) FROM earn_rule_awards") == 3


async def test_max_total_holds_under_concurrent_members(pool: asyncpg.Pool) -> None:
    proc = processor(OnActivity("signup", points=100, max_total=5))

    async def one(i: int) -> str:
        async with pool.acquire() as conn:
            return await apply(conn, proc, login(f"s{i}", T0, member=f"m{i}", name="signup"))

    outcomes = await asyncio.gather(*(one(i) for i in range(20)))
    assert outcomes.count("applied") == 5
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM ledger_transactions") == 5


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Program(name="default", earn_rules=(OnActivity("a", points=1, currency="gems"),)),
         "earn_rules.0.currency: 'gems' is not a currency of the program (points)"),
        (lambda: Program(name="default",
                         earn_rules=(OnActivity("a", points=1), OnActivity("a", points=2))),
         "earn_rules.1.name: 'activity:a' is used by another rule"),
        (lambda: OnActivity("a", points=1, waiting_period=DAY),
         "waiting_period: only earned points wait; kind is available"),
        (lambda: OnActivity("a", points=1, kind="earned", waiting_period=timedelta(0)),
         "waiting_period: must be a positive duration"),
        (lambda: OnActivity("a", points=0), "points\n  Input should be greater than 0"),
        (lambda: PerAmount(unit=Decimal(0)), "unit\n  Input should be greater than 0"),
        (lambda: PerAmount(rounding="up"), "rounding\n  Input should be 'floor', 'half_up'"),
        (lambda: PerAmount(valid_from=T0, valid_until=T0),
         "valid_until: must be after valid_from"),
        (lambda: Limit(0, per=DAY), "n\n  Input should be greater than 0"),
        (lambda: Limit(1, per=-DAY), "per: must be a positive duration"),
        (lambda: OnReferral(points=1, bonus=2), "bonus\n  Extra inputs are not permitted"),
    ],
)  # fmt: skip
def test_invalid_rules_are_refused_naming_the_field(build: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build()
    assert message in str(caught.value)


def test_program_config_keeps_its_rules() -> None:
    program = Program(
        name="default",
        earn_rules=(PerAmount(rounding="ceil"), OnActivity("web_login", points=10,
                                                           limit=Limit(1, per=DAY))),
    )  # fmt: skip
    assert Program(name="default", **program.config()) == program
