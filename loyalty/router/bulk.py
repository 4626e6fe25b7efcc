"""Set-based application of a batch's simple events: a few statements for the whole batch.

The router (`loyalty.router.processing`) applies most events one at a time, several statements
each. The common events only record an order and award earn rules: this module applies
all of them at once, and writes exactly the rows the per-event path would (same keys,
reasons, sources, lots, dates, ``earn_rule_awards``, cap counters), so that the two
paths cannot be told apart afterwards.

Simple events (`bulk_members`): ``activity``, ``referral``, ``purchase`` without
points redeemed, and derived events (``no_effect``), of a program that watches no
``points_above`` threshold (those need the balance before and after each event). A
member takes the bulk path only if all of their events in the batch are simple;
otherwise all of them go through the per-event path, in order. `apply_bulk` may also
hand members back (``BulkResult.fallback``) before writing their awards:

* a purchase whose order id belongs to another member (in the database or earlier in
  the batch): the per-event path refuses it with ``order_of_another_member``;
* a member who owes points (a ``debt`` account below 0): awards pay the debt off first.

Orders of a member handed back may already be recorded: they are the rows the
per-event path writes for them too (same owner and amount; the first event of an order
id wins), so recording them twice changes nothing.

Statements: orders (one); capped rules (`loyalty.router.caps`: two, only if a capped rule
matches); accounts (one, a second only if a concurrent writer created one meanwhile);
then every award in one statement: transactions (a key already used is a duplicate and
writes nothing more), legs, lots (clamped behind the cut-offs as `ledger.award` does),
``member_currencies`` summed per member and currency first (an upsert cannot touch one
row twice), ``earn_rule_awards`` and the caps' counters. Then qualifying points and
promotions (`loyalty.tiers`), in rounds that reproduce the per-event order (`_qualify`).
The caller holds the program's shared ledger lock (the router's batch takes it first);
the statement takes it again through ``ledger_cutoffs_held``, which is free.

Worked example: a purchase of 42.50 EUR with ``PerAmount()`` and a ``web_login`` with
``OnActivity("web_login", points=10)``, for two members: one orders statement, one
accounts statement, one award statement; 42 and 10 points, ``applied`` twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from loyalty import ledger
from loyalty.app import LoyaltyApp, Program
from loyalty.events import (
    DERIVED_TYPES,
    Activity,
    AnyEvent,
    Origin,
    Purchase,
    Referral,
    origin_of,
)
from loyalty.ingest import derived
from loyalty.router.caps import CapCheck, within_caps
from loyalty.rules import EarnRule
from loyalty.store.db import Conn
from loyalty.tiers import promotion

# The first event of an order id in the batch records it, as the per-event path's first
# `record_order` would; sorted by order id so that concurrent batches lock in one order.
_ORDERS = """
WITH o AS (
    SELECT DISTINCT ON (order_id) order_id, member_id, amount, money
    FROM unnest($2::text[], $3::text[], $4::numeric[], $5::text[])
         WITH ORDINALITY AS o(order_id, member_id, amount, money, n)
    ORDER BY order_id, n
)
INSERT INTO orders (program, order_id, member_id, amount, money_currency)
SELECT $1, order_id, member_id, amount, money FROM o ORDER BY order_id
ON CONFLICT (program, order_id) DO UPDATE SET order_id = EXCLUDED.order_id
RETURNING order_id, member_id
"""

# Finds the wanted accounts (and the members' debt accounts, never created here) and
# creates the missing ones. An account that a concurrent transaction creates meanwhile
# is neither found nor returned: the caller runs the statement again.
_ACCOUNTS = """
WITH w AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::boolean[])
                  AS w(member_id, currency, kind, create_it)
),
found AS (
    SELECT w.member_id, w.currency, w.kind, a.id, a.balance
    FROM w JOIN accounts AS a
      ON a.program = $1 AND a.member_id = w.member_id AND a.currency = w.currency
     AND a.kind = w.kind
    UNION ALL
    SELECT w.member_id, w.currency, w.kind, a.id, a.balance
    FROM w JOIN accounts AS a
      ON a.program = $1 AND a.member_id IS NULL AND a.currency = w.currency
     AND a.kind = w.kind
    WHERE w.member_id IS NULL
),
created AS (
    INSERT INTO accounts (program, member_id, currency, kind)
    SELECT $1, w.member_id, w.currency, w.kind FROM w
    WHERE w.create_it AND NOT EXISTS (
        SELECT 1 FROM found AS f
        WHERE f.member_id IS NOT DISTINCT FROM w.member_id AND f.currency = w.currency
          AND f.kind = w.kind)
    ORDER BY w.member_id NULLS FIRST, w.currency, w.kind
    ON CONFLICT DO NOTHING
    RETURNING member_id, currency, kind, id, balance
)
SELECT * FROM found UNION ALL SELECT * FROM created
"""

# Every award of the batch: `ledger.award`'s fast path over arrays, plus the rules'
# `earn_rule_awards` rows (uncapped rules have no usage or totals rows to count).
_AWARDS = f"""
WITH a AS (
    SELECT * FROM unnest(
        $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::timestamptz[],
        $8::text[], $9::bigint[], $10::text[], $11::bigint[], $12::bigint[], $13::bigint[],
        $14::timestamptz[], $15::timestamptz[], $16::text[], $17::boolean[], $18::text[]
    ) WITH ORDINALITY AS a(key, member_id, tx_kind, reason, source, occurred_at, order_id,
                           points, currency, member_account, pocket, issued_account,
                           available_at, expires_at, rule, qualifying, event_id, n)
),
cut AS (
    SELECT c.currency, h.matured_through, h.expired_through
    FROM (SELECT DISTINCT currency FROM a) AS c,
         LATERAL ledger_cutoffs_held($1, c.currency) AS h
),
tx AS (
    INSERT INTO ledger_transactions (program, idempotency_key, member_id, kind, reason,
                                     source, occurred_at, order_id)
    SELECT $1, key, member_id, tx_kind, reason, source, occurred_at, order_id
    FROM a ORDER BY n
    ON CONFLICT (program, idempotency_key) DO NOTHING
    RETURNING id, idempotency_key
),
done AS (
    SELECT a.*, tx.id AS transaction_id FROM a JOIN tx ON tx.idempotency_key = a.key
),
legs AS (
    INSERT INTO ledger_legs (transaction_id, account_id, amount)
    SELECT d.transaction_id, leg.account_id, leg.amount
    FROM done AS d,
         LATERAL (VALUES (1, d.member_account, d.points),
                         (2, d.issued_account, -d.points)) AS leg(i, account_id, amount)
    ORDER BY d.n, leg.i
    RETURNING 1
),
lot AS (
    INSERT INTO lots (account_id, transaction_id, amount, remaining, available_at,
                      expires_at, order_id)
    SELECT d.pocket, d.transaction_id, d.points, d.points,
           {ledger.lot_dates("d.available_at", "d.expires_at")}, d.order_id
    FROM done AS d JOIN cut ON cut.currency = d.currency
    ORDER BY d.n
    RETURNING 1
),
activity AS (
    INSERT INTO member_currencies (program, member_id, currency, lifetime_earned,
                                   last_activity_at)
    SELECT $1, member_id, currency, sum(points), max(occurred_at)
    FROM done GROUP BY member_id, currency ORDER BY member_id, currency
    ON CONFLICT (program, member_id, currency) DO UPDATE
    SET lifetime_earned = member_currencies.lifetime_earned + EXCLUDED.lifetime_earned,
        last_activity_at = greatest(member_currencies.last_activity_at,
                                    EXCLUDED.last_activity_at)
    RETURNING 1
),
recorded AS (
    INSERT INTO earn_rule_awards (program, rule, member_id, event_id, occurred_at, currency,
                                  points, qualifying, transaction_id)
    SELECT $1, rule, member_id, event_id, occurred_at, currency, points, qualifying,
           transaction_id
    FROM done ORDER BY n
    ON CONFLICT (program, rule, event_id) DO NOTHING
    RETURNING rule, member_id
),
-- As `rules._RECORD`: every recorded award counts in the member's usage row if there is
-- one (capped rules lock it first), and in the rule's totals if it has a max_total.
usage AS (
    UPDATE earn_rule_usage AS u SET awards = u.awards + c.n
    FROM (SELECT rule, member_id, count(*) AS n FROM recorded GROUP BY rule, member_id) AS c
    WHERE u.program = $1 AND u.rule = c.rule AND u.member_id = c.member_id
    RETURNING 1
),
totals AS (
    UPDATE earn_rule_totals AS t SET awards = t.awards + c.n
    FROM (SELECT rule, count(*) AS n FROM recorded WHERE rule = ANY($19::text[])
          GROUP BY rule) AS c
    WHERE t.program = $1 AND t.rule = c.rule
    RETURNING 1
)
SELECT n, transaction_id FROM done ORDER BY n
"""


@dataclass(frozen=True)
class Award:
    """One award the bulk path wrote: a ledger transaction and its ``earn_rule_awards`` row.

    Attributes:
        qualifying: whether the points count towards tiers (the rule's ``qualifying``).
        order_id: the purchase's order, None for activities and referrals.
        transaction_id: the ledger transaction of the award.
    """

    program: str
    member_id: str
    currency: str
    points: int
    occurred_at: datetime
    event_id: str
    rule: str
    qualifying: bool
    order_id: str | None
    transaction_id: int


@dataclass
class BulkResult:
    """What `apply_bulk` did.

    Attributes:
        outcomes: per (origin, event id) applied here, ``applied`` or ``no_effect``
            (as `EventProcessor.apply` would return); a client event and a derived one
            may share an id.
        awards: the awards written, in event and rule order; awards whose ledger key
            was already used (events applied before) are not listed.
        fallback: members handed back, none of whose awards were written: the caller
            applies all of their events one by one.
    """

    outcomes: dict[tuple[Origin, str], str] = field(default_factory=dict)
    awards: list[Award] = field(default_factory=list)
    fallback: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Planned:
    """One award to write: a rule's points for an event."""

    event: AnyEvent
    rule: EarnRule
    rule_name: str
    kind: str
    currency: str
    points: int
    qualifying: bool
    available_at: datetime | None
    expires_at: datetime | None
    order_id: str | None


def _plan(program: Program, event: AnyEvent) -> list[_Planned] | None:
    """The awards of a simple event, in rule order; None if the event is not simple.

    A derived event is simple, with no awards: applying it changes nothing (`no_effect`),
    so it can be anywhere in its member's order.
    """
    if event.type in DERIVED_TYPES:
        return []
    if not isinstance(event, Activity | Purchase | Referral):
        return None
    if isinstance(event, Purchase) and event.points_redeemed:
        return None
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
            _Planned(
                event=event, rule=rule, rule_name=rule.name, kind=rule.kind, currency=currency,
                points=points, qualifying=rule.qualifying, available_at=available_at,
                expires_at=program.lot_expiry(currency, at),
                order_id=event.order_id if isinstance(event, Purchase) else None,
            )
        )  # fmt: skip
    return planned


def bulk_members(
    app: LoyaltyApp, program: str, events: Iterable[tuple[str, AnyEvent | None]]
) -> set[str]:
    """The members whose events of the batch are all simple (see the module docstring).

    Args:
        app: the app, for the program's rules and flows.
        program: the batch's program.
        events: (member id, event) of every claimed row, None for a row that does not
            parse (its member is not bulk: the per-event path reports the error).
    """
    found = app.program(program)
    if found is None or derived.thresholds(app, program):
        return set()
    members: set[str] = set()
    excluded: set[str] = set()
    for member_id, event in events:
        simple = (
            event is not None
            and event.program == program
            and event.member_id == member_id
            and _plan(found, event) is not None
        )
        (members if simple else excluded).add(member_id)
    return members - excluded


async def _record_orders(conn: Conn, program: str, purchases: list[Purchase]) -> set[str]:
    """Record the purchases' orders; returns the members with another member's order id."""
    if not purchases:
        return set()
    rows = await conn.fetch(
        _ORDERS, program, [p.order_id for p in purchases], [p.member_id for p in purchases],
        [p.amount for p in purchases], [p.currency for p in purchases],
    )  # fmt: skip
    owners = {r["order_id"]: r["member_id"] for r in rows}
    return {p.member_id for p in purchases if owners[p.order_id] != p.member_id}


AccountKey = tuple[str | None, str, str]


async def _accounts(
    conn: Conn, program: str, wanted: set[AccountKey], debts: set[AccountKey]
) -> dict[AccountKey, tuple[int, int]]:
    """Get or create the ``wanted`` accounts; find the ``debts``. {key: (id, balance)}."""
    keys = sorted(wanted | debts, key=lambda k: (k[0] or "", k[1], k[2]))
    columns = [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys],
               [k in wanted for k in keys]]  # fmt: skip
    found: dict[AccountKey, tuple[int, int]] = {}
    for _ in range(2):
        rows = await conn.fetch(_ACCOUNTS, program, *columns)
        found = {(r["member_id"], r["currency"], r["kind"]): (r["id"], r["balance"]) for r in rows}
        if wanted <= found.keys():
            return found
    missing = sorted(wanted - found.keys(), key=str)
    raise RuntimeError(f"accounts not found after creating them: {missing[:5]}")


async def apply_bulk(
    conn: Conn, app: LoyaltyApp, program: str, events: Sequence[AnyEvent]
) -> BulkResult:
    """Apply the simple events of the members `bulk_members` chose, in a few statements.

    Runs in the caller's batch transaction, which holds the program's shared ledger
    lock. Every event must be simple (see `bulk_members`); the events of one member keep
    their order. Members handed back in ``fallback`` have no award written.

    Raises:
        ValueError: an event is not simple.
    """
    result = BulkResult()
    found = app.program(program)
    if found is None or not events:
        return result
    plans: list[tuple[AnyEvent, list[_Planned]]] = []
    for event in events:
        plan = _plan(found, event)
        if plan is None or event.program != program:
            raise ValueError(f"event {event.event_id} cannot be applied in bulk")
        plans.append((event, plan))
    purchases = [e for e in events if isinstance(e, Purchase)]
    result.fallback |= await _record_orders(conn, program, purchases)
    awards = [a for _, plan in plans for a in plan if a.event.member_id not in result.fallback]
    awards, awarded = await _within_caps(conn, found, awards)
    if awards:
        wanted: set[AccountKey] = {(None, a.currency, "issued") for a in awards}
        wanted |= {(a.event.member_id, a.currency, a.kind) for a in awards}
        wanted |= {(a.event.member_id, a.currency, "available") for a in awards}
        debts: set[AccountKey] = {(a.event.member_id, a.currency, "debt") for a in awards}
        accounts = await _accounts(conn, program, wanted, debts)
        # They pay their debt off first, which `ledger.award` does.
        result.fallback |= {
            a.event.member_id for a in awards
            if accounts.get((a.event.member_id, a.currency, "debt"), (0, 0))[1] < 0
        }  # fmt: skip
        awards = [a for a in awards if a.event.member_id not in result.fallback]
        result.awards = await _write_awards(conn, program, awards, accounts)
        await _qualify(conn, found, result.awards)
    for event in events:
        if event.member_id not in result.fallback:
            origin = origin_of(event)
            # Only client events earn: a derived event named like an awarded one did not.
            applied = isinstance(event, Purchase) or (
                origin == "client" and event.event_id in awarded
            )
            result.outcomes[(origin, event.event_id)] = "applied" if applied else "no_effect"
    return result


async def _qualify(conn: Conn, program: Program, awards: list[Award]) -> None:
    """Record the awards' qualifying points and promote their members, exactly as
    `rules.apply_rules` does event by event.

    In rounds: round r records the qualifying points of each member's r-th event that
    has some, then promotes those members as of that event. A member's measure in round
    r therefore counts their events up to the r-th, as on the per-event path; other
    members' points never count in it. Usually one round, two statements per currency.
    """
    measured = promotion.measured_currencies(program)
    by_member: dict[str, dict[str, list[Award]]] = {}
    for a in awards:
        if a.qualifying and a.currency in measured:
            by_member.setdefault(a.member_id, {}).setdefault(a.event_id, []).append(a)
    rounds: list[list[list[Award]]] = []
    for events in by_member.values():
        for r, event_awards in enumerate(events.values()):
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(event_awards)
    for round_events in rounds:
        counted = [a for event_awards in round_events for a in event_awards]
        await promotion.record_qualifying(conn, program.name, [
            promotion.Qualifying(a.member_id, a.currency, a.occurred_at, a.points,
                             f"event:{a.event_id}:rule:{a.rule}", a.order_id)
            for a in counted
        ])  # fmt: skip
        for currency in sorted({a.currency for a in counted}):
            earners = {
                a.member_id: promotion.Earner(a.member_id, a.occurred_at, a.event_id)
                for a in counted
                if a.currency == currency
            }
            await promotion.promote(conn, program, list(earners.values()), frozenset({currency}))


async def _within_caps(
    conn: Conn, program: Program, awards: list[_Planned]
) -> tuple[list[_Planned], set[str]]:
    """The awards no cap refuses, and the events that a rule awards (now or before)."""
    capped = [i for i, a in enumerate(awards) if a.rule.capped]
    checks = [
        CapCheck(awards[i].rule, awards[i].event.member_id, awards[i].event.event_id,
                 awards[i].event.occurred_at)
        for i in capped
    ]  # fmt: skip
    decisions = dict(zip(capped, await within_caps(conn, program, checks), strict=True))
    kept, awarded = [], set()
    for i, a in enumerate(awards):
        decision = decisions.get(i, True)
        if decision is not False:
            awarded.add(a.event.event_id)
        if decision:
            kept.append(a)
    return kept, awarded


async def _write_awards(
    conn: Conn,
    program: str,
    awards: list[_Planned],
    accounts: dict[AccountKey, tuple[int, int]],
) -> list[Award]:
    """Write every award in one statement; returns those whose key was new."""
    if not awards:
        return []
    columns: tuple[list[Any], ...] = tuple([] for _ in range(17))
    for a in awards:
        e, member = a.event, a.event.member_id
        values = (
            f"event:{e.event_id}:rule:{a.rule_name}", member, f"award_{a.kind}",
            f"earn rule {a.rule_name}", f"event:{e.event_id}", e.occurred_at, a.order_id,
            a.points, a.currency, accounts[(member, a.currency, a.kind)][0],
            accounts[(member, a.currency, "available")][0],
            accounts[(None, a.currency, "issued")][0], a.available_at, a.expires_at,
            a.rule_name, a.qualifying, e.event_id,
        )  # fmt: skip
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    with_total = sorted({a.rule_name for a in awards if a.rule.max_total is not None})
    rows = await conn.fetch(_AWARDS, program, *columns, with_total)
    written = []
    for r in rows:
        a = awards[r["n"] - 1]
        award = Award(
            program=program, member_id=a.event.member_id, currency=a.currency,
            points=a.points, occurred_at=a.event.occurred_at, event_id=a.event.event_id,
            rule=a.rule_name, qualifying=a.qualifying, order_id=a.order_id,
            transaction_id=r["transaction_id"],
        )  # fmt: skip
        written.append(award)
    return written
