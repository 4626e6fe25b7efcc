"""The router's bulk path (`loyalty.router.bulk`): the same ledger as one event at a time.

Batches are claimed and applied with `process_batch` on a fresh database, as the router
does, without Temporal. Programs ``a`` and ``b`` have the same rules; the same events go
to ``a`` with the bulk path and to ``b`` one by one, and every ledger row is compared
once normalised (ids replaced by what they point to).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from temporalio import workflow

from loyalty.app import LoyaltyApp, Program
from loyalty.events import (
    Activity,
    AnyEvent,
    MemberDeleted,
    MemberUpdated,
    PointsDeposit,
    PointsMatured,
    PointsWithdrawal,
    Purchase,
    Referral,
    ReferralApproved,
    Return,
)
from loyalty.events import PointsAbove as PointsAboveEvent
from loyalty.flows import flow
from loyalty.ingest.inbox import insert_events
from loyalty.ledger import audit
from loyalty.policies import Rolling
from loyalty.router import bulk, caps
from loyalty.router.processing import EventProcessor, process_batch
from loyalty.rules import Limit, OnActivity, OnReferral, OnReferralApproved, PerAmount
from loyalty.store.db import prepare_database
from loyalty.tiers import Tier, TierScheme
from loyalty.triggers import PointsAbove as PointsAboveTrigger

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)

RULES = (
    PerAmount(kind="earned"),
    PerAmount(name="march", points_per_unit=2, valid_from=T0 - 20 * DAY, valid_until=T0),
    OnActivity("web_login", points=10),
    OnActivity(
        "bonus",
        points=5,
        kind="earned",
        waiting_period=3 * DAY,
        currency="tier_points",
        qualifying=False,
    ),
    OnActivity("daily", points=3, limit=Limit(1, per=DAY)),
    OnActivity("vip", points=7, max_total=15, limit=Limit(2, per=3 * DAY)),
    OnReferral(points=50, max_per_member=3),
    OnReferralApproved(points=20),
)


# Promotions happen in both paths: the points of most purchases qualify.
TIERS = TierScheme(
    tiers=(Tier(name="bronze", threshold=0), Tier(name="silver", threshold=60),
           Tier(name="gold", threshold=250)),
    window=timedelta(days=30),
)  # fmt: skip


def program(name: str) -> Program:
    return Program(
        name=name, earn_rules=RULES, currencies=("points", "tier_points"),
        expiry={"points": Rolling(days=30)}, tier_schemes=(TIERS,),
    )  # fmt: skip


APP = LoyaltyApp(programs=[program("a"), program("b")])


@pytest.fixture
async def db(database_url: str, conn: asyncpg.Connection) -> asyncpg.Connection:
    """The test's connection, with programs ``a`` and ``b`` and cut-offs 10 and 20 days ago.

    The cut-offs make awards of older events clamp their lot dates.
    """
    await prepare_database(database_url, APP)
    await conn.execute(
        """INSERT INTO ledger_cutoffs (program, currency, matured_through, expired_through)
           SELECT p, c, $1, $2 FROM unnest(ARRAY['a', 'b']) AS p,
                                    unnest(ARRAY['points', 'tier_points']) AS c""",
        T0 - 10 * DAY, T0 - 20 * DAY,
    )  # fmt: skip
    return conn


class Spy:
    """Wraps `bulk.apply_bulk`: which events it applied and which members it handed back."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.applied: list[str] = []
        self.fallback: set[str] = set()
        self.awards: list[bulk.Award] = []
        real = bulk.apply_bulk

        async def spy(*args: Any) -> bulk.BulkResult:
            result = await real(*args)
            self.applied += [event_id for _, event_id in result.outcomes]
            # The derived events, applied in the batch that derives them.
            self.applied += [event.event_id for _, event, _ in result.derived]
            self.fallback |= result.fallback
            self.awards += result.awards
            return result

        monkeypatch.setattr(bulk, "apply_bulk", spy)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Spy:
    return Spy(monkeypatch)


async def run(
    conn: asyncpg.Connection, program: str, *, use_bulk: bool = True, batch_size: int = 500
) -> None:
    """Apply every pending event of the program, batch after batch."""
    processor = EventProcessor(APP)
    while True:
        progress = await process_batch(
            conn, processor, program=program, partitions=1, partition=0,
            batch_size=batch_size, max_attempts=3, task_queue="q", use_bulk=use_bulk,
        )  # fmt: skip
        if not progress.events:
            return


async def emit(conn: asyncpg.Connection, events: list[AnyEvent], *programs: str) -> None:
    for name in programs or ("a",):
        await insert_events(conn, [e.model_copy(update={"program": name}) for e in events])


async def outcomes(conn: asyncpg.Connection, program: str = "a") -> dict[str, tuple[Any, ...]]:
    rows = await conn.fetch(
        "SELECT event_id, status, outcome, detail FROM events WHERE program = $1 ORDER BY id",
        program,
    )
    return {r["event_id"]: (r["status"], r["outcome"], r["detail"]) for r in rows}


async def balances(conn: asyncpg.Connection, member: str, program: str = "a") -> dict[str, int]:
    rows = await conn.fetch(
        "SELECT kind, balance FROM accounts WHERE program = $1 AND member_id = $2"
        " AND currency = 'points'",
        program, member,
    )  # fmt: skip
    return {r["kind"]: r["balance"] for r in rows if r["balance"]}


# Every ledger row of a program, ids replaced by the key of their transaction and the
# (member, currency, kind) of their account.
SNAPSHOT = {
    "transactions": """
        SELECT idempotency_key, member_id, kind, reason, source, occurred_at, order_id
        FROM ledger_transactions WHERE program = $1""",
    "legs": """
        SELECT t.idempotency_key, a.member_id, a.currency, a.kind, g.amount
        FROM ledger_legs AS g JOIN ledger_transactions AS t ON t.id = g.transaction_id
        JOIN accounts AS a ON a.id = g.account_id WHERE t.program = $1""",
    "lots": """
        SELECT t.idempotency_key, a.member_id, a.currency, a.kind, l.amount, l.remaining,
               l.available_at, l.expires_at, l.order_id
        FROM lots AS l JOIN ledger_transactions AS t ON t.id = l.transaction_id
        JOIN accounts AS a ON a.id = l.account_id WHERE t.program = $1""",
    "accounts": "SELECT member_id, currency, kind, balance FROM accounts WHERE program = $1",
    "member_currencies": """
        SELECT member_id, currency, lifetime_earned, last_activity_at
        FROM member_currencies WHERE program = $1""",
    "earn_rule_awards": """
        SELECT w.rule, w.member_id, w.event_id, w.occurred_at, w.currency, w.points,
               w.qualifying, t.idempotency_key
        FROM earn_rule_awards AS w JOIN ledger_transactions AS t ON t.id = w.transaction_id
        WHERE w.program = $1""",
    "earn_rule_usage": "SELECT rule, member_id, awards FROM earn_rule_usage WHERE program = $1",
    "orders": """
        SELECT order_id, member_id, amount, money_currency, returned_amount
        FROM orders WHERE program = $1""",
    "earn_rule_totals": "SELECT rule, awards FROM earn_rule_totals WHERE program = $1",
    "members": "SELECT member_id, tier FROM members WHERE program = $1",
    "member_tiers": """
        SELECT scheme, member_id, tier, rank, since FROM member_tiers WHERE program = $1""",
    "qualifying_points": """
        SELECT member_id, currency, earned_at, points, order_id, source
        FROM qualifying_points WHERE program = $1""",
    "events": """
        SELECT event_id, type, member_id, status, outcome, detail, caused_by IS NOT NULL
        FROM events WHERE program = $1""",
}


async def snapshot(conn: asyncpg.Connection, program: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: sorted(
            (tuple(r.values()) for r in await conn.fetch(sql, program)),
            key=lambda row: tuple(str(v) for v in row),
        )
        for name, sql in SNAPSHOT.items()
    }


def random_events(seed: int, n: int, members: int, prefix: str = "e") -> Iterator[AnyEvent]:
    """Purchases, activities (some of capped rules), referrals and, for every fifth member,
    deposits, withdrawals and returns that never fail."""
    rnd = random.Random(seed)
    orders: dict[str, list[tuple[str, Decimal]]] = {}
    for i in range(n):
        member = f"m{rnd.randrange(members)}"
        at = T0 - timedelta(minutes=rnd.randrange(60 * 24 * 60))
        common: dict[str, Any] = {"event_id": f"{prefix}{i}", "member_id": member,
                                  "occurred_at": at}  # fmt: skip
        roll = rnd.random()
        mixed = int(member[1:]) % 5 == 0
        if mixed and roll < 0.15:
            yield PointsDeposit(**common, points=100, kind="available", reason="gift")
            yield PointsWithdrawal(
                **{**common, "event_id": f"{prefix}{i}w"}, points=rnd.randint(1, 100),
                kind="available", reason="spend",
            )  # fmt: skip
        elif mixed and roll < 0.25 and orders.get(member):
            order_id, amount = orders[member].pop()
            yield Return(**common, order_id=order_id, amount=amount)
        elif roll < 0.55:
            order_id = f"o-{prefix}{i}"
            amount = Decimal(rnd.randint(0, 9000)) / 100
            orders.setdefault(member, []).append((order_id, amount))
            yield Purchase(**common, order_id=order_id, amount=amount, currency="EUR",
                           discount=Decimal(rnd.choice([0, 0, 1])))  # fmt: skip
        elif roll < 0.85:
            names = ["web_login", "bonus", "unknown", "daily", "vip"]
            yield Activity(**common, name=rnd.choice(names))
        elif roll < 0.95 or not mixed:
            yield Referral(**common, friend_id=f"f{i}")
        else:
            yield ReferralApproved(**common, referrer_id=f"m{rnd.randrange(members)}")


async def test_bulk_and_one_by_one_write_the_same_ledger(db: asyncpg.Connection, spy: Spy) -> None:
    events = list(random_events(seed=7, n=600, members=40))
    await emit(db, events, "a", "b")
    await run(db, "a", batch_size=250)
    await run(db, "b", use_bulk=False, batch_size=250)
    assert len(spy.applied) > len(events) // 2  # most went through the bulk path
    assert {e.member_id for e in events if isinstance(e, PointsWithdrawal)} & set(
        spy.fallback
    ) == set()
    a, b = await snapshot(db, "a"), await snapshot(db, "b")
    # The caps were reached in bulk too: the sample exercises them.
    assert a["earn_rule_totals"] == [("activity:vip", 15)]
    assert len([e for e in events if getattr(e, "name", "") == "daily"]) > len(
        [w for w in a["earn_rule_awards"] if w[0] == "activity:daily"]
    )
    for table in SNAPSHOT:
        assert a[table] == b[table], table
    # Members were promoted, some of them by events applied in bulk.
    promoted = {row[1] for row in a["member_tiers"]}
    assert len(promoted) > 5
    assert promoted & {award.member_id for award in spy.awards}
    assert {status for status, _, _ in (await outcomes(db)).values()} == {"processed"}
    assert (await audit.verify(db)).ok


async def test_caps_count_the_same_in_bulk(db: asyncpg.Connection, spy: Spy) -> None:
    # Dense capped events, out of time order, over batches: windows span batches.
    rnd = random.Random(5)
    events: list[AnyEvent] = []
    for i in range(300):
        common: dict[str, Any] = {
            "event_id": f"c{i}", "member_id": f"m{rnd.randrange(6)}",
            "occurred_at": T0 + timedelta(hours=rnd.randrange(-120, 120)),
        }  # fmt: skip
        if rnd.random() < 0.2:
            events.append(Referral(**common, friend_id=f"f{i}"))
        else:
            events.append(Activity(**common, name=rnd.choice(["daily", "vip"])))
    await emit(db, events, "a", "b")
    await run(db, "a", batch_size=13)
    await run(db, "b", use_bulk=False, batch_size=13)
    # Every event in bulk (with the new_stage events their promotions derived).
    assert {e.event_id for e in events} <= set(spy.applied)
    a, b = await snapshot(db, "a"), await snapshot(db, "b")
    for table in SNAPSHOT:
        assert a[table] == b[table], table
    assert {o for _, o, _ in (await outcomes(db)).values()} == {"applied", "no_effect"}


def test_the_busiest_window_counts_as_the_per_event_path() -> None:
    # Awards already made (the event's own is not among them) in a window of one day.
    assert caps.busiest_window([T0 - DAY], T0, DAY) == 0
    assert caps.busiest_window([T0 - DAY + timedelta(seconds=1)], T0, DAY) == 1
    # A window ending at a later award holds the event too: (T0 - 18 h, T0 + 6 h].
    later = [T0 + timedelta(hours=5), T0 + timedelta(hours=6), T0 + timedelta(hours=25)]
    assert caps.busiest_window(later, T0, DAY) == 2
    assert caps.busiest_window([T0 + DAY], T0, DAY) == 0
    # No window of one day holds both awards 24 hours apart, whichever holds the event.
    twelve = timedelta(hours=12)
    assert caps.busiest_window([T0 - twelve, T0 + twelve], T0, DAY) == 1


async def test_a_members_mixed_batch_stays_in_order_on_the_fast_path(
    db: asyncpg.Connection, spy: Spy
) -> None:
    await emit(db, [
        Activity(event_id="l1", member_id="m1", name="web_login", occurred_at=T0),
        PointsWithdrawal(event_id="w1", member_id="m1", points=10, kind="available",
                         reason="gift", occurred_at=T0),
        Activity(event_id="l2", member_id="m1", name="web_login", occurred_at=T0),
        Activity(event_id="l3", member_id="m2", name="web_login", occurred_at=T0),
    ])  # fmt: skip
    await run(db, "a")
    assert spy.applied == ["l1", "w1", "l2", "l3"]
    assert [o[:2] for o in (await outcomes(db)).values()] == [("processed", "applied")] * 4
    keys = await db.fetch(
        "SELECT idempotency_key FROM ledger_transactions WHERE member_id = 'm1' ORDER BY id"
    )
    assert [k[0] for k in keys] == [
        "event:l1:rule:activity:web_login", "event:w1", "event:l2:rule:activity:web_login"
    ]  # fmt: skip
    assert await balances(db, "m1") == {"available": 10}


async def test_a_client_event_and_an_engine_event_with_one_id_in_one_batch(
    db: asyncpg.Connection, spy: Spy
) -> None:
    """Separate id spaces: both are stored, applied in bulk, each with its own outcome."""
    await emit(db, [
        Activity(event_id="x1", member_id="m1", name="web_login", occurred_at=T0),
        PointsMatured(event_id="x1", member_id="m1", points=1, occurred_at=T0),
    ])  # fmt: skip
    await run(db, "a")
    assert spy.applied == ["x1", "x1"]
    rows = await db.fetch("SELECT type, status, outcome FROM events ORDER BY id")
    assert [tuple(r) for r in rows] == [
        ("activity", "processed", "applied"),
        ("points_matured", "processed", "no_effect"),
    ]
    assert await balances(db, "m1") == {"available": 10}


async def test_a_member_in_debt_pays_it_off_on_the_fast_path(
    db: asyncpg.Connection, spy: Spy
) -> None:
    # 100 EUR earn 100 earned points, all spent; half the order comes back: 50 owed.
    first = [
        Purchase(event_id="p1", member_id="m1", order_id="o1", amount=Decimal(100),
                 currency="EUR", occurred_at=T0),
        PointsWithdrawal(event_id="w1", member_id="m1", points=100, kind="earned",
                         reason="spend", occurred_at=T0),
        Return(event_id="r1", member_id="m1", order_id="o1", amount=Decimal(50), occurred_at=T0),
    ]  # fmt: skip
    await emit(db, first, "a", "b")
    await run(db, "a")
    await run(db, "b", use_bulk=False)
    assert await balances(db, "m1") == {"debt": -50}
    # And the promotion that p1's points made, a derived event.
    assert spy.applied == ["p1", "w1", "r1", "new_stage:main:silver:p1"]
    then = [
        Activity(event_id="l1", member_id="m1", name="web_login", occurred_at=T0),
        Purchase(event_id="p2", member_id="m1", order_id="o2", amount=Decimal(30),
                 currency="EUR", occurred_at=T0),
        Activity(event_id="l2", member_id="m2", name="web_login", occurred_at=T0),
    ]  # fmt: skip
    await emit(db, then, "a", "b")
    await run(db, "a")
    await run(db, "b", use_bulk=False)
    assert spy.fallback == set()
    assert spy.applied[4:] == ["l1", "p2", "l2"]
    # 10 + 30 points pay 40 of the 50 owed.
    assert await balances(db, "m1") == {"debt": -10}
    assert await balances(db, "m2") == {"available": 10}
    assert await snapshot(db, "a") == await snapshot(db, "b")


async def test_an_event_applied_again_writes_nothing_twice(
    db: asyncpg.Connection, spy: Spy
) -> None:
    await emit(db, list(random_events(seed=3, n=200, members=20)))
    await run(db, "a")
    first = await snapshot(db, "a")
    # Derived events (promotions, referral_friend_approved) are not pending again.
    derived = [e for e in spy.applied if ":" in e]
    written, applied = len(spy.awards), len(spy.applied) - len(derived)
    assert written > 0
    # As after a crash before the outcomes counted: the same inbox rows once more.
    await db.execute(
        "UPDATE events SET status = 'pending', processed_at = NULL WHERE caused_by IS NULL"
    )
    await run(db, "a")
    # Applied in bulk again (not redone one by one after an error), writing nothing.
    again = [e for e in spy.applied[applied + len(derived) :] if ":" not in e]
    assert sorted(again) == sorted(e for e in spy.applied[: applied + len(derived)] if ":" not in e)
    assert len(spy.awards) == written
    # The ledger is unchanged. Tiers may not be: measured again at an early event's time,
    # the member's later points with earlier dates now count (a real retry never sees
    # them: the failed batch rolled back with its points).
    tiers = ("members", "member_tiers", "events")
    again_snapshot = await snapshot(db, "a")
    assert {t: v for t, v in again_snapshot.items() if t not in tiers} == {
        t: v for t, v in first.items() if t not in tiers
    }


async def test_large_random_batch_verifies(db: asyncpg.Connection, spy: Spy) -> None:
    await emit(db, list(random_events(seed=11, n=3000, members=300)))
    await run(db, "a", batch_size=1000)
    assert len(spy.applied) > 1500
    report = await audit.verify(db)
    assert report.ok, [c for c in report.checks if not c.ok]
    lifetime = await db.fetchval("SELECT sum(lifetime_earned) FROM member_currencies")
    assert lifetime == await db.fetchval("SELECT sum(points) FROM earn_rule_awards") + 100 * (
        await db.fetchval("SELECT count(*) FROM events WHERE type = 'points_deposit'")
    )


async def test_an_order_of_another_member_is_refused_and_the_others_apply(
    db: asyncpg.Connection, spy: Spy
) -> None:
    def buy(event_id: str, member: str, order: str) -> Purchase:
        return Purchase(event_id=event_id, member_id=member, order_id=order,
                        amount=Decimal(10), currency="EUR", occurred_at=T0)  # fmt: skip

    await emit(db, [buy("p1", "m1", "o1")])
    await run(db, "a")
    await emit(db, [
        buy("p2", "m2", "o1"),  # m1's order
        Activity(event_id="l2", member_id="m2", name="web_login", occurred_at=T0),
        buy("p3", "m3", "o3"),
        buy("p4", "m4", "o4"),
        buy("p5", "m5", "o4"),  # m4's, earlier in the same batch
        Activity(event_id="l5", member_id="m5", name="web_login", occurred_at=T0),
    ])  # fmt: skip
    await run(db, "a")
    assert spy.fallback == set()
    got = {k: v[:2] for k, v in (await outcomes(db)).items()}
    assert got == {
        "p1": ("processed", "applied"),
        "p2": ("rejected", "order_of_another_member"),
        "l2": ("processed", "applied"),
        "p3": ("processed", "applied"),
        "p4": ("processed", "applied"),
        "p5": ("rejected", "order_of_another_member"),
        "l5": ("processed", "applied"),
    }
    owners = await db.fetch("SELECT order_id, member_id FROM orders ORDER BY order_id")
    assert [tuple(r.values()) for r in owners] == [("o1", "m1"), ("o3", "m3"), ("o4", "m4")]
    assert await balances(db, "m2") == {"available": 10}
    assert await balances(db, "m3") == {"earned": 10}


# Every event type, in programs with tiers over each kind of window and with thresholds:
# the fast path against one event at a time, table for table.


@flow(trigger=PointsAboveTrigger(100), program=("t1", "t2"))
@workflow.defn
class Crossed100:
    @workflow.run
    async def run(self, trigger: PointsAboveEvent) -> None:
        workflow.logger.debug("%s", trigger.event_id)


@flow(trigger=PointsAboveTrigger(300), name="crossed-300", program=("t1", "t2"))
@workflow.defn
class Crossed300:
    @workflow.run
    async def run(self, trigger: PointsAboveEvent) -> None:
        workflow.logger.debug("%s", trigger.event_id)


WINDOWS = (
    TierScheme(tiers=TIERS.tiers, window="lifetime"),
    TierScheme(name="year", tiers=TIERS.tiers, window="calendar_year", currency="tier_points"),
)


def every_type_program(name: str, policy: str, schemes: tuple[TierScheme, ...]) -> Program:
    rules = (*RULES, PerAmount(name="tier_points", currency="tier_points", points_per_unit=2))
    return Program(
        name=name, earn_rules=rules, currencies=("points", "tier_points"),
        expiry={"points": Rolling(days=30)}, tier_schemes=schemes,
        return_policy=policy,  # type: ignore[arg-type]
    )  # fmt: skip


EVERY_TYPE_APP = LoyaltyApp(
    programs=[
        every_type_program(name, policy, schemes)
        for base, policy, schemes in (
            ("d", "debt", WINDOWS),
            ("g", "forgive", (TIERS,)),
            ("t", "debt", WINDOWS),
        )
        for name in (f"{base}1", f"{base}2")
    ],
    flows=[Crossed100, Crossed300],
)


def every_type_events(seed: int, n: int, members: int) -> Iterator[AnyEvent]:
    """Every client event type, with the refusals each can meet: withdrawals and
    purchases paid with points beyond the balance, unknown members, currencies and
    orders, another member's order, returns beyond the order, after spending; profile
    updates and erasure; events out of time order."""
    rnd = random.Random(seed)
    orders: list[tuple[str, str, Decimal]] = []
    for i in range(n):
        member = f"m{rnd.randrange(members)}"
        at = T0 - timedelta(hours=rnd.randrange(24 * 40))
        common: dict[str, Any] = {"event_id": f"e{i}", "member_id": member, "occurred_at": at}
        roll = rnd.random()
        if roll < 0.14:
            yield PointsDeposit(
                **common, points=rnd.randint(1, 250), kind=rnd.choice(["available", "earned"]),
                account=rnd.choice(["points", "points", "tier_points", "stamps"]), reason="api",
            )  # fmt: skip
        elif roll < 0.26:
            yield PointsWithdrawal(
                **{**common, "member_id": member if rnd.random() < 0.9 else f"new{i}"},
                points=rnd.randint(1, 300), kind=rnd.choice(["available", "earned"]),
                reason="reward",
            )  # fmt: skip
        elif roll < 0.48:
            order_id = f"o{i}" if rnd.random() < 0.9 or not orders else rnd.choice(orders)[0]
            amount = Decimal(rnd.randint(0, 15000)) / 100
            paid = rnd.choice([0, 0, 0, rnd.randint(1, 300)])
            yield Purchase(**common, order_id=order_id, amount=amount, currency="EUR",
                           points_redeemed=paid)  # fmt: skip
            orders.append((order_id, member, amount))
        elif roll < 0.64 and orders:
            order_id, owner, amount = rnd.choice(orders)
            who = owner if rnd.random() < 0.85 else member
            part = amount * Decimal(rnd.choice(["0.25", "0.5", "1", "1.5"]))
            yield Return(
                **{**common, "member_id": who},
                order_id=order_id if rnd.random() < 0.95 else f"nowhere{i}",
                amount=max(part.quantize(Decimal("0.01")), Decimal("0.01")),
            )  # fmt: skip
        elif roll < 0.80:
            yield Activity(**common, name=rnd.choice(["web_login", "bonus", "daily", "vip"]))
        elif roll < 0.86:
            yield Referral(**common, friend_id=f"f{i}")
        elif roll < 0.90:
            yield ReferralApproved(**common, referrer_id=f"m{rnd.randrange(members)}")
        elif roll < 0.97:
            yield MemberUpdated(
                **common, profile={"name": f"N{i}", "tier_hint": rnd.random() < 0.5}
            )
        else:
            yield MemberDeleted(**common)


@pytest.mark.parametrize(("seed", "pair"), [(1, ("d1", "d2")), (2, ("g1", "g2")),
                                            (3, ("t1", "t2")), (4, ("t1", "t2"))])  # fmt: skip
async def test_every_event_type_in_bulk_equals_one_by_one(
    database_url: str, conn: asyncpg.Connection, spy: Spy, seed: int, pair: tuple[str, str]
) -> None:
    """The fast path takes every event and writes what one event at a time writes, in
    every table; refusals are the same, with the same details (one property per seed)."""
    await prepare_database(database_url, EVERY_TYPE_APP)
    fast, slow = pair
    events = list(every_type_events(seed, n=900, members=30))
    await emit(conn, events, fast, slow)
    processor = EventProcessor(EVERY_TYPE_APP)
    for program, use_bulk in ((fast, True), (slow, False)):
        done = None
        while done is None or done.events:
            done = await process_batch(
                conn, processor, program=program, partitions=1, partition=0, batch_size=150,
                max_attempts=3, task_queue="q", use_bulk=use_bulk,
            )  # fmt: skip
    a, b = await snapshot(conn, fast), await snapshot(conn, slow)
    for table in SNAPSHOT:
        mine = [tuple(str(v).replace(fast, "P") for v in row) for row in a[table]]
        theirs = [tuple(str(v).replace(slow, "P") for v in row) for row in b[table]]
        assert mine == theirs, table
    rows = await conn.fetch("SELECT status, outcome FROM events WHERE program = $1", fast)
    outcomes = {(r["status"], r["outcome"]) for r in rows}
    # The sample meets refusals and derived events, all on the fast path.
    assert ("rejected", "insufficient_points") in outcomes
    assert ("rejected", "unknown_member") in outcomes
    assert {"new_stage", "referral_friend_approved"} <= {row[1] for row in a["events"]}
    if fast == "t1":
        assert "points_above" in {row[1] for row in a["events"]}
    assert spy.fallback == set()
    assert len(spy.applied) == len(rows)
    assert (await audit.verify(conn)).ok
