"""Earn rules applied to one event, inside the router's batch (the one-by-one path).

A program's ``earn_rules`` are evaluated for every ``purchase``, ``activity``,
``referral`` and ``referral_approved`` event, in the transaction that applies the event
(no workflow per event). Several rules can match one event; each awards on its own, with
the ledger key ``event:<event_id>:rule:<rule name>``, so an event applied twice awards once.

Caps (``limit``, ``max_per_member``, ``max_total``) hold under concurrent events for one
member: a rule with caps first locks its usage row for the member
(``earn_rule_usage``) and, with ``max_total``, the rule's row (``earn_rule_totals``),
then counts. Every award is recorded in ``earn_rule_awards`` (with ``qualifying``), which
the sliding window of ``limit`` counts.

Worked example: ``PerAmount(points_per_unit=1)`` on a purchase of 42.50 EUR with a
discount of 2.50 and 500 points redeemed (worth 5.00 at ``point_value`` 0.01): 35 points.
"""

from __future__ import annotations

from datetime import timedelta

from loyalty import ledger
from loyalty.app import Program
from loyalty.events import AnyEvent, Purchase
from loyalty.rules import EarnRule
from loyalty.store.db import Conn
from loyalty.tiers import promotion

# Lock the member's usage row of the rule (created on first use) before counting.
_LOCK_USAGE = """
INSERT INTO earn_rule_usage (program, rule, member_id) VALUES ($1, $2, $3)
ON CONFLICT (program, rule, member_id) DO UPDATE SET awards = earn_rule_usage.awards
RETURNING awards
"""
_LOCK_TOTAL = """
INSERT INTO earn_rule_totals (program, rule) VALUES ($1, $2)
ON CONFLICT (program, rule) DO UPDATE SET awards = earn_rule_totals.awards
RETURNING awards
"""
# Run after the locks, so that it sees what the transactions it waited for committed.
# `recent`: the most awards of the rule for the member in one window (end - per, end]
# that would hold the new award. Events may arrive out of time order, so the windows
# ending after the event count too; the busiest ends at the event or at an award.
_COUNT = """
WITH mine AS (
    SELECT occurred_at FROM earn_rule_awards
    WHERE program = $1 AND rule = $2 AND member_id = $3
      AND occurred_at > $5::timestamptz - $6::interval
      AND occurred_at < $5::timestamptz + $6::interval
)
SELECT EXISTS (SELECT 1 FROM earn_rule_awards
               WHERE program = $1 AND rule = $2 AND event_id = $4) AS done,
       (SELECT coalesce(max((SELECT count(*) FROM mine
                             WHERE mine.occurred_at > e.at - $6::interval
                               AND mine.occurred_at <= e.at)), 0)
        FROM (SELECT $5::timestamptz AS at
              UNION SELECT occurred_at FROM mine WHERE occurred_at >= $5) AS e) AS recent
"""
_RECORD = """
WITH award AS (
    INSERT INTO earn_rule_awards (program, rule, member_id, event_id, occurred_at, currency,
                                  points, qualifying, transaction_id)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (program, rule, event_id) DO NOTHING
    RETURNING 1
),
usage AS (
    UPDATE earn_rule_usage SET awards = awards + 1
    WHERE program = $1 AND rule = $2 AND member_id = $3 AND EXISTS (SELECT 1 FROM award)
    RETURNING 1
)
UPDATE earn_rule_totals SET awards = awards + 1
WHERE program = $1 AND rule = $2 AND $10::boolean AND EXISTS (SELECT 1 FROM award)
"""


async def apply_rules(conn: Conn, program: Program, event: AnyEvent) -> int:
    """Award the points of every rule of the program that matches the event.

    Runs in the caller's transaction. Returns how many rules awarded (now or, for an
    event applied before, the first time).
    """
    awarded = 0
    measured = promotion.measured_currencies(program)
    qualifying: set[str] = set()
    for rule in program.earn_rules:
        if not rule.in_window(event.occurred_at):
            continue
        points = rule.points_for(event)
        if points <= 0:
            continue
        if await _award(conn, program, rule, event, points):
            awarded += 1
            currency = rule.currency or program.currencies[0]
            if rule.qualifying and currency in measured:
                await promotion.record_qualifying(conn, program.name, [promotion.Qualifying(
                    event.member_id, currency, event.occurred_at, points,
                    f"event:{event.event_id}:rule:{rule.name}",
                    event.order_id if isinstance(event, Purchase) else None,
                )])  # fmt: skip
                qualifying.add(currency)
    if qualifying:
        earner = promotion.Earner(event.member_id, event.occurred_at, event.event_id)
        await promotion.promote(conn, program, [earner], frozenset(qualifying))
    return awarded


async def _award(
    conn: Conn, program: Program, rule: EarnRule, event: AnyEvent, points: int
) -> bool:
    at = event.occurred_at
    if rule.capped:
        per_member = await conn.fetchval(_LOCK_USAGE, program.name, rule.name, event.member_id)
        total = 0
        if rule.max_total is not None:
            total = await conn.fetchval(_LOCK_TOTAL, program.name, rule.name)
        window = rule.limit.per if rule.limit else timedelta(0)
        seen = await conn.fetchrow(
            _COUNT, program.name, rule.name, event.member_id, event.event_id, at, window
        )
        assert seen is not None
        if seen["done"]:
            return True
        if (
            (rule.limit is not None and seen["recent"] >= rule.limit.n)
            or (rule.max_per_member is not None and per_member >= rule.max_per_member)
            or (rule.max_total is not None and total >= rule.max_total)
        ):
            return False
    currency = rule.currency or program.currencies[0]
    available_at = None
    if rule.kind == "earned":
        available_at = at + (rule.waiting_period or program.earned_waiting_period)
    key = f"event:{event.event_id}:rule:{rule.name}"
    receipt = await ledger.award(
        conn, program=program.name, member_id=event.member_id, points=points, kind=rule.kind,
        currency=currency, reason=f"earn rule {rule.name}", source=f"event:{event.event_id}",
        key=key, occurred_at=at, available_at=available_at,
        expires_at=program.lot_expiry(currency, at),
        order_id=event.order_id if isinstance(event, Purchase) else None,
    )  # fmt: skip
    await conn.execute(
        _RECORD, program.name, rule.name, event.member_id, event.event_id, at, currency,
        points, rule.qualifying, receipt.transaction_id, rule.max_total is not None,
    )  # fmt: skip
    return True
