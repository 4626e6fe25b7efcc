"""What the fast path reads before it replays a batch: the members' state, locked.

`load` reads, in about a dozen statements for the whole batch, everything the replay
(`loyalty.router.replay`) needs of the members whose events it applies: their accounts
and, for those who spend or return, their lots; the cut-offs; the ledger keys already
used; the orders their purchases and returns name, with what those orders earned and
gave back; their ``members`` rows and tiers; the qualifying points that measure them
(`qualifying_totals` and the few rows dated after their events: no scan of a member's
history); and the caps of the rules they may be awarded.

Locks, in the order every single-member writer takes them, so that no writer waits for
the batch in a cycle: the members' ``member_currencies`` rows, then their accounts
(`loyalty.ledger.postings.spend` and `loyalty.ledger.watching` lock one member's the same
way), then orders by id, tiers, and the caps' usage rows (`loyalty.router.caps`). The
router's batch holds the program's shared ledger lock already, so the cut-offs stay put.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from loyalty.app import Program
from loyalty.events import (
    AnyEvent,
    PointsDeposit,
    PointsWithdrawal,
    Purchase,
    Return,
)
from loyalty.router.caps import CapCheck, Caps, load_caps
from loyalty.router.memory import Account, Cutoffs, Ledger, Lot
from loyalty.rules import EarnRule
from loyalty.store.db import Conn
from loyalty.tiers import TierScheme
from loyalty.tiers.promotion import measured_currencies


@dataclass(frozen=True)
class Planned:
    """One earn rule's award for an event, before caps (`loyalty.router.earn`)."""

    rule: EarnRule
    currency: str
    points: int
    available_at: datetime | None
    expires_at: datetime | None


_EARNING = frozenset({"purchase", "activity", "referral", "referral_approved"})


def plan(program: Program, event: AnyEvent) -> list[Planned]:
    """The awards the program's earn rules give the event, in rule order."""
    if event.type not in _EARNING:
        return []
    at = event.occurred_at
    planned = []
    for rule in program.earn_rules:
        if not rule.in_window(at):
            continue
        points = rule.points_for(event)
        if points <= 0:
            continue
        currency = rule.currency or program.currencies[0]
        available_at = None
        if rule.kind == "earned":
            available_at = at + (rule.waiting_period or program.earned_waiting_period)
        planned.append(
            Planned(rule=rule, currency=currency, points=points, available_at=available_at,
                    expires_at=program.lot_expiry(currency, at))
        )  # fmt: skip
    return planned


def window_start(scheme: TierScheme, at: datetime) -> datetime | None:
    """The start (exclusive) of the scheme's window ending at ``at``; None: lifetime."""
    kind, length = scheme.window_sql_args()
    if kind == "rolling":
        return at - length
    if kind == "calendar_year":
        return datetime(at.astimezone(UTC).year, 1, 1, tzinfo=UTC) - timedelta(microseconds=1)
    return None


@dataclass
class Measure:
    """A member's qualifying points in one currency, as far as the batch needs them.

    ``years``: totals per calendar year (UTC) of every row in the database; ``tail``:
    the database's rows dated after ``after``; ``added``: the batch's rows.
    """

    after: datetime
    years: dict[int, int] = field(default_factory=dict)
    tail: list[tuple[datetime, int]] = field(default_factory=list)
    added: list[tuple[datetime, int]] = field(default_factory=list)

    def latest(self) -> datetime | None:
        """When the member's latest qualifying points (of the database or the batch so
        far) were earned; every row later than the batch's events is in ``tail``."""
        return max((t for t, _ in self.tail + self.added), default=None)

    def at(self, scheme: TierScheme, at: datetime) -> int:
        """The scheme's measure at ``at``: `loyalty.tiers.promotion.MEASURE`."""
        start = window_start(scheme, at)
        kind, _ = scheme.window_sql_args()
        if kind == "lifetime":
            stored = sum(self.years.values()) - sum(p for t, p in self.tail if t > at)
        elif kind == "calendar_year":
            year = at.astimezone(UTC).year
            stored = self.years.get(year, 0) - sum(
                p for t, p in self.tail if t > at and t.astimezone(UTC).year == year
            )
        else:
            assert start is not None
            stored = sum(p for t, p in self.tail if start < t <= at)
        fresh = sum(p for t, p in self.added if (start is None or t > start) and t <= at)
        return stored + fresh


@dataclass
class Order:
    """An order as the batch sees it: ``orders`` and what it earned and gave back."""

    member_id: str
    amount: Decimal
    returned: Decimal
    money: str
    new: bool = False


@dataclass
class MemberRow:
    """A ``members`` row, loaded or created by the batch."""

    exists: bool
    profile: dict[str, Any] = field(default_factory=dict)
    tier: str | None = None
    erased: str = "keep"  # keep the stored erased_at, set it now, or clear it
    changed: bool = False
    tier_changed: bool = False


@dataclass
class State:
    """Everything `load` read: the replay changes it as it applies the batch's events."""

    program: Program
    ledger: Ledger
    caps: Caps
    members: dict[str, MemberRow]
    orders: dict[str, Order]
    returned_keys: set[str]
    # (order, currency): points the order's awards issued, and (points, from_expired) its
    # clawbacks took so far.
    order_earned: dict[tuple[str, str], int]
    order_taken: dict[tuple[str, str], tuple[int, int]]
    # (order, currency): the order's qualifying points (member, earned_at, points).
    order_qualifying: dict[tuple[str, str], list[tuple[str, datetime, int]]]
    # (scheme, member): (tier, rank) of members with a row.
    tiers: dict[tuple[str, str], tuple[str, int]]
    measures: dict[tuple[str, str], Measure]
    # The earn rules' awards of each event before caps, by inbox row.
    plans: dict[int, list[Planned]]


def _keys(program: Program, event: AnyEvent, planned: list[Planned]) -> list[str]:
    """The ledger keys the event may use."""
    key = f"event:{event.event_id}"
    keys = [f"{key}:rule:{p.rule.name}" for p in planned]
    if isinstance(event, PointsDeposit | PointsWithdrawal) or (
        isinstance(event, Purchase) and event.points_redeemed
    ):
        keys.append(key)
    if isinstance(event, Return):
        keys += [f"{key}:{currency}" for currency in program.currencies]
    return keys


async def load(conn: Conn, program: Program, rows: Sequence[tuple[int, AnyEvent]]) -> State:
    """Lock and read the state of the members of the events (inbox row id, event) (see
    the module docstring)."""
    name = program.name
    plans = {row_id: plan(program, event) for row_id, event in rows}
    events = [event for _, event in rows]
    members = sorted({e.member_id for e in events})
    spenders = sorted({
        e.member_id for e in events
        if isinstance(e, PointsWithdrawal | Return)
        or (isinstance(e, Purchase) and e.points_redeemed)
    })  # fmt: skip
    await conn.execute(
        """SELECT 1 FROM member_currencies
           WHERE program = $1 AND member_id = ANY($2::text[])
           ORDER BY member_id, currency FOR UPDATE""",
        name, members,
    )  # fmt: skip
    accounts = await conn.fetch(
        """SELECT id, member_id, currency, kind, balance FROM accounts
           WHERE program = $1 AND member_id = ANY($2::text[])
           ORDER BY id FOR UPDATE""",
        name, members,
    )  # fmt: skip
    accounts += await conn.fetch(
        "SELECT id, member_id, currency, kind, balance FROM accounts"
        " WHERE program = $1 AND member_id IS NULL",
        name,
    )
    cut_rows = await conn.fetch(
        """SELECT c.currency,
                  CASE WHEN isfinite(h.matured_through) THEN h.matured_through END AS matured,
                  CASE WHEN isfinite(h.expired_through) THEN h.expired_through END AS expired
           FROM unnest($2::text[]) AS c(currency),
                LATERAL ledger_cutoffs_held($1, c.currency) AS h""",
        name, list(program.currencies),
    )  # fmt: skip
    ledger = Ledger(
        program=name,
        cutoffs={r["currency"]: Cutoffs(r["matured"], r["expired"]) for r in cut_rows},
    )
    for r in accounts:
        key = (r["member_id"], r["currency"], r["kind"])
        ledger.accounts[key] = Account(key=key, id=r["id"], balance=r["balance"])
    orders = sorted({e.order_id for e in events if isinstance(e, Purchase | Return)})
    returns = [e for e in events if isinstance(e, Return)]
    await _lots(conn, ledger, spenders, sorted({e.order_id for e in returns}))
    keys = sorted({k for row_id, e in rows for k in _keys(program, e, plans[row_id])})
    if keys:
        used = await conn.fetch(
            """SELECT idempotency_key FROM ledger_transactions
               WHERE program = $1 AND idempotency_key = ANY($2::text[])""",
            name, keys,
        )  # fmt: skip
        ledger.used = {r["idempotency_key"] for r in used}
    state = State(
        program=program, ledger=ledger, caps=Caps(), members={}, orders={},
        returned_keys=set(), order_earned={}, order_taken={}, order_qualifying={},
        tiers={}, measures={}, plans=plans,
    )  # fmt: skip
    await _members(conn, state, members)
    await _orders(conn, state, orders, returns)
    await _tiers(conn, state, rows)
    checks = [
        CapCheck(p.rule, e.member_id, e.event_id, e.occurred_at)
        for row_id, e in rows
        for p in plans[row_id]
        if p.rule.capped
    ]
    state.caps = await load_caps(conn, program, checks)
    return state


async def _lots(conn: Conn, ledger: Ledger, spenders: list[str], orders: list[str]) -> None:
    """The live lots of the members who spend or return; every lot of a returned order."""
    spending = set(spenders)
    pockets = [
        account.id for key, account in ledger.accounts.items()
        if key[0] in spending and key[2] == "available" and account.id is not None
    ]  # fmt: skip
    if not pockets:
        return
    rows = await conn.fetch(
        """SELECT l.id, l.account_id, l.amount, l.remaining, l.available_at, l.expires_at,
                  l.order_id, l.expired
           FROM lots AS l
           WHERE l.account_id = ANY($1::bigint[])
             AND (l.remaining > 0 OR l.order_id = ANY($2::text[]))""",
        pockets, orders,
    )  # fmt: skip
    by_id = {a.id: key for key, a in ledger.accounts.items()}
    for r in rows:
        pocket = by_id[r["account_id"]]
        ledger.lots.setdefault(pocket, []).append(
            Lot(rank=(0, r["id"]), pocket=pocket, amount=r["amount"], remaining=r["remaining"],
                available_at=r["available_at"], expires_at=r["expires_at"],
                order_id=r["order_id"], expired=r["expired"], id=r["id"],
                loaded=r["remaining"])
        )  # fmt: skip


async def _members(conn: Conn, state: State, members: list[str]) -> None:
    rows = await conn.fetch(
        """SELECT member_id, profile, tier FROM members
           WHERE program = $1 AND member_id = ANY($2::text[])""",
        state.program.name, members,
    )  # fmt: skip
    for r in rows:
        state.members[r["member_id"]] = MemberRow(exists=True, profile=r["profile"], tier=r["tier"])


async def _orders(conn: Conn, state: State, orders: list[str], returns: list[Return]) -> None:
    name = state.program.name
    if not orders:
        return
    # A join over the keys, not ``order_id = ANY($2)``: after five executions asyncpg's
    # prepared statement runs on a generic plan, which for ANY over a batch of new orders
    # scanned the table and compared each row with every key (1 ms a batch at first,
    # 30 ms at 5,000 orders, before autovacuum's statistics caught up).
    rows = await conn.fetch(
        """SELECT o.order_id, o.member_id, o.amount, o.returned_amount, o.money_currency
           FROM unnest($2::text[]) AS k(order_id)
           JOIN orders AS o ON o.program = $1 AND o.order_id = k.order_id
           ORDER BY o.order_id FOR UPDATE OF o""",
        name, orders,
    )  # fmt: skip
    for r in rows:
        state.orders[r["order_id"]] = Order(
            member_id=r["member_id"], amount=r["amount"], returned=r["returned_amount"],
            money=r["money_currency"],
        )  # fmt: skip
    if not returns:
        return
    returned = sorted({r.order_id for r in returns})
    done = await conn.fetch(
        """SELECT idempotency_key FROM order_returns
           WHERE program = $1 AND idempotency_key = ANY($2::text[])""",
        name, sorted({f"event:{r.event_id}" for r in returns}),
    )  # fmt: skip
    state.returned_keys = {r["idempotency_key"] for r in done}
    owners = [state.orders[o].member_id if o in state.orders else "" for o in returned]
    for r in await conn.fetch(
        """SELECT t.order_id, a.currency, -sum(g.amount)::bigint AS earned
           FROM unnest($2::text[], $3::text[]) AS o(order_id, member_id)
           JOIN ledger_transactions AS t
             ON t.program = $1 AND t.order_id = o.order_id AND t.member_id = o.member_id
           JOIN ledger_legs AS g ON g.transaction_id = t.id
           JOIN accounts AS a ON a.id = g.account_id AND a.kind = 'issued'
           GROUP BY t.order_id, a.currency""",
        name, returned, owners,
    ):  # fmt: skip
        state.order_earned[(r["order_id"], r["currency"])] = r["earned"]
    for r in await conn.fetch(
        """SELECT order_id, currency, sum(points)::bigint AS points,
                  sum(from_expired)::bigint AS from_expired
           FROM order_clawbacks WHERE program = $1 AND order_id = ANY($2::text[])
           GROUP BY order_id, currency""",
        name, returned,
    ):  # fmt: skip
        state.order_taken[(r["order_id"], r["currency"])] = (r["points"], r["from_expired"])
    if state.program.tier_schemes:
        for r in await conn.fetch(
            """SELECT order_id, currency, member_id, earned_at, points FROM qualifying_points
               WHERE program = $1 AND order_id = ANY($2::text[])
               ORDER BY id""",
            name, returned,
        ):  # fmt: skip
            state.order_qualifying.setdefault((r["order_id"], r["currency"]), []).append(
                (r["member_id"], r["earned_at"], r["points"])
            )


async def _tiers(conn: Conn, state: State, rows: Sequence[tuple[int, AnyEvent]]) -> None:
    """Tier rows and measures of the members a qualifying award may promote."""
    program = state.program
    measured = measured_currencies(program)
    if not measured:
        return
    earliest: dict[tuple[str, str], datetime] = {}
    for row_id, e in rows:
        for p in state.plans[row_id]:
            if p.rule.qualifying and p.currency in measured:
                key = (e.member_id, p.currency)
                earliest[key] = min(earliest.get(key, e.occurred_at), e.occurred_at)
    if not earliest:
        return
    members = sorted({m for m, _ in earliest})
    # A join over the keys, as in _orders: ANY on a generic plan grew with the table.
    for r in await conn.fetch(
        """SELECT t.scheme, t.member_id, t.tier, t.rank
           FROM unnest($2::text[]) AS k(member_id)
           JOIN member_tiers AS t ON t.program = $1 AND t.member_id = k.member_id
           ORDER BY t.scheme, t.member_id FOR UPDATE OF t""",
        program.name, members,
    ):  # fmt: skip
        state.tiers[(r["scheme"], r["member_id"])] = (r["tier"], r["rank"])
    for (member, currency), first in earliest.items():
        after = first
        for scheme in program.tier_schemes:
            start = window_start(scheme, first)
            if scheme.currency_in(program) == currency and start is not None:
                kind, _ = scheme.window_sql_args()
                after = min(after, start if kind == "rolling" else first)
        state.measures[(member, currency)] = Measure(after=after)
    keys = sorted(state.measures)
    args: list[Any] = [program.name, [k[0] for k in keys], [k[1] for k in keys]]
    for r in await conn.fetch(
        """SELECT t.member_id, t.currency, t.year, t.points
           FROM unnest($2::text[], $3::text[]) AS w(member_id, currency)
           JOIN qualifying_totals AS t
             ON t.program = $1 AND t.member_id = w.member_id AND t.currency = w.currency""",
        *args,
    ):
        state.measures[(r["member_id"], r["currency"])].years[r["year"]] = r["points"]
    tails: dict[tuple[str, str], list[tuple[datetime, int]]] = defaultdict(list)
    for r in await conn.fetch(
        """SELECT q.member_id, q.currency, q.earned_at, q.points
           FROM unnest($2::text[], $3::text[], $4::timestamptz[]) AS w(member_id, currency, after)
           JOIN qualifying_points AS q
             ON q.program = $1 AND q.member_id = w.member_id AND q.currency = w.currency
            AND q.earned_at > w.after""",
        *args, [state.measures[k].after for k in keys],
    ):  # fmt: skip
        tails[(r["member_id"], r["currency"])].append((r["earned_at"], r["points"]))
    for key, tail in tails.items():
        state.measures[key].tail = tail
