"""The loads of issue 13, shared by bench/loads.py (the router's batch alone) and
bench/ingest.py (end to end): generators, and what the ledger must hold afterwards.

Each load goes to its own program of `bench.ingest_app.LOADS_APP`, so each starts from
an empty ledger:

1. ``purchases, no tiers`` (program ``plain``): the baseline of the ratios;
2. ``purchases, tiers`` (``tiered``): one tier scheme, bronze 0, silver 50, gold 150,
   lifetime;
3. ``deposits, no tiers`` (``deposits``): ``points_deposit``, one in five ``earned``;
4. ``mixed, tiers`` (``mixed``): deposits, withdrawals (some larger than the balance),
   purchases paid partly with points and not, logins: a SessionM-style program;
5. ``purchases, tiers and PointsAbove`` (``threshold``): the tier scheme and the flow
   ``AlmostThere`` on ``PointsAbove(100)``.

Purchases come with logins (one after every other purchase), as on a real shop. Event
``i`` of a load belongs to member ``i mod members`` and happens ``0.86 * i`` seconds
after a day ago: in order, and within one day for up to 100,000 events, so a member's
second login that day earns nothing.

`expect` replays a load as the ledger must apply it (per member, in event order) and
gives each event's outcome, every balance, the tiers, the promotions and the
``points_above`` crossings, which the benchmarks compare with the database.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bench.ingest_app import LOGIN_POINTS
from loyalty.app import Program
from loyalty.events import Activity, AnyEvent, PointsDeposit, PointsWithdrawal, Purchase
from loyalty.rules import PerAmount

NOW = datetime.now(UTC).replace(microsecond=0)


def _base(i: int, prefix: str, members: int, program: str) -> dict[str, Any]:
    return {
        "event_id": f"{prefix}-{i}",
        "member_id": f"{prefix}m{i % members}",
        "program": program,
        # Spread over the last day, in order: later events happen later.
        "occurred_at": NOW - timedelta(days=1) + timedelta(seconds=i * 86_000 / 100_000),
    }


def purchases(prefix: str, n: int, members: int, program: str) -> Iterator[AnyEvent]:
    """Purchases of 5.50 to 54.50 EUR (5 to 54 points), a login after every other one."""
    for i in range(n):
        common = _base(i, prefix, members, program)
        if i % 2:
            yield Activity(**common, name="web_login")
        else:
            amount = Decimal(5 + i % 50) + Decimal("0.50")
            yield Purchase(**common, order_id=f"o-{prefix}-{i}", amount=amount, currency="EUR")


def deposits(prefix: str, n: int, members: int, program: str) -> Iterator[AnyEvent]:
    """Points given through the API, one in five ``earned``."""
    for i in range(n):
        kind = "earned" if i % 5 == 4 else "available"
        yield PointsDeposit(
            **_base(i, prefix, members, program), points=10 + i % 90, kind=kind, reason="api"
        )


def mixed(prefix: str, n: int, members: int, program: str) -> Iterator[AnyEvent]:
    """Deposits, withdrawals (one in eight too large), purchases paid partly with points
    and not, logins: a SessionM-style program."""
    for i in range(n):
        common = _base(i, prefix, members, program)
        roll = i % 8
        if roll in (0, 1):
            yield PointsDeposit(**common, points=50 + i % 50, kind="available", reason="api")
        elif roll == 2:
            points = 400 if i % 3 == 0 else 20
            yield PointsWithdrawal(**common, points=points, kind="available", reason="reward")
        elif roll in (3, 4):
            amount = Decimal(10 + i % 40)
            yield Purchase(**common, order_id=f"o-{prefix}-{i}", amount=amount, currency="EUR")
        elif roll == 5:
            amount = Decimal(30 + i % 20)
            yield Purchase(
                **common, order_id=f"o-{prefix}-{i}", amount=amount, currency="EUR",
                points_redeemed=500 if i % 3 else 100,
            )  # fmt: skip
        else:
            yield Activity(**common, name="web_login")


@dataclass(frozen=True)
class Load:
    name: str
    program: str
    make: Callable[[str, int, int, str], Iterator[AnyEvent]]


LOADS = (
    Load("purchases, no tiers", "plain", purchases),
    Load("purchases, tiers", "tiered", purchases),
    Load("deposits, no tiers", "deposits", deposits),
    Load("mixed, tiers", "mixed", mixed),
    Load("purchases, tiers and PointsAbove", "threshold", purchases),
)


@dataclass
class Expected:
    """What a load must leave in its program's ledger and inbox."""

    # Client events by event_id: (status, outcome), e.g. ("processed", "applied").
    outcomes: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Member balances of the program's first currency, by account kind.
    available: Counter[str] = field(default_factory=Counter)
    earned: Counter[str] = field(default_factory=Counter)
    transactions: int = 0
    # The tier of the program's first scheme, by member (empty without tiers).
    tiers: dict[str, str] = field(default_factory=dict)
    new_stages: int = 0
    crossings: int = 0


def expect(program: Program, thresholds: Iterable[int], events: Iterable[AnyEvent]) -> Expected:
    """Replay the events as the ledger applies them: refusals, balances, tiers.

    Covers what the loads send: available deposits and withdrawals, earned deposits,
    purchases with and without points (a refused payment refuses the purchase), and
    logins (the first of a member's day earns ``LOGIN_POINTS``). Qualifying points are
    the earn rules' awards; a crossing is a balance going from at most ``x`` to above it.
    """
    per_amount = next(r for r in program.earn_rules if isinstance(r, PerAmount))
    scheme = program.tier_schemes[0].tiers if program.tier_schemes else ()
    watched = tuple(thresholds)
    out = Expected()
    qualifying: Counter[str] = Counter()
    logged_in: set[str] = set()
    # Members with a processed event: the program knows them. Taking points from any
    # other member is refused as unknown_member, not as insufficient_points.
    known: set[str] = set()

    def refused(member: str) -> tuple[str, str]:
        return ("rejected", "insufficient_points" if member in known else "unknown_member")

    for e in events:
        member, before = e.member_id, out.available[e.member_id]
        result = ("processed", "applied")
        if isinstance(e, PointsDeposit):
            (out.available if e.kind == "available" else out.earned)[member] += e.points
            out.transactions += 1
        elif isinstance(e, PointsWithdrawal):
            if out.available[member] < e.points:
                result = refused(member)
            else:
                out.available[member] -= e.points
                out.transactions += 1
        elif isinstance(e, Purchase):
            if e.points_redeemed and out.available[member] < e.points_redeemed:
                result = refused(member)
            else:
                out.available[member] -= e.points_redeemed
                out.transactions += bool(e.points_redeemed)
                points = per_amount.points_for(e)
                out.available[member] += points
                qualifying[member] += points
                out.transactions += bool(points)
        elif isinstance(e, Activity) and e.name == "web_login" and member not in logged_in:
            logged_in.add(member)
            out.available[member] += LOGIN_POINTS
            qualifying[member] += LOGIN_POINTS
            out.transactions += 1
        else:
            result = ("processed", "no_effect")
        out.outcomes[e.event_id] = result
        if result[0] == "processed":
            known.add(member)
        if scheme and result[0] == "processed":
            tier = [t.name for t in scheme if t.threshold <= qualifying[member]][-1]
            out.new_stages += out.tiers.get(member, scheme[0].name) != tier
            out.tiers[member] = tier
        out.crossings += sum(before <= x < out.available[member] for x in watched)
    return out
