"""Earn-rule caps for the bulk path (`loyalty.router.bulk`): a batch's capped awards at once.

The per-event path (`loyalty.router.earn`) checks a capped award in three steps: it locks the
member's ``earn_rule_usage`` row of the rule (and, with ``max_total``, the rule's
``earn_rule_totals`` row), then counts the member's awards of the rule around the event
(the sliding window of ``limit``), then awards if no cap is reached. `within_caps` does
the same for every capped award of a batch in two statements: one locks every usage row
(sorted) and totals row (in the program's rule order, as the per-event path does), the
next reads, after the locks, the awards that the windows and the "already awarded"
checks need. Then it decides award after award in event order, counting the batch's own
awards as it goes, exactly as the per-event path would see them in the database.

Worked example: ``OnActivity("web_login", points=10, limit=Limit(1, per=timedelta(days=1)))``
and three logins of one member on one day in a batch: the first awards, the other two
are capped; with a login of yesterday 10:00 already awarded, a login today at 09:00 is
capped too (within 24 hours), one at 11:00 awards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from loyalty.app import Program
from loyalty.rules import EarnRule
from loyalty.store.db import Conn

# The per-event path's `_LOCK_USAGE` and `_LOCK_TOTAL`, for all rows at once.
_LOCK = """
WITH usage AS (
    INSERT INTO earn_rule_usage (program, rule, member_id)
    SELECT $1, u.rule, u.member_id FROM unnest($2::text[], $3::text[]) AS u(rule, member_id)
    ORDER BY u.rule, u.member_id
    ON CONFLICT (program, rule, member_id) DO UPDATE SET awards = earn_rule_usage.awards
    RETURNING rule, member_id, awards
),
totals AS (
    INSERT INTO earn_rule_totals (program, rule)
    SELECT $1, t.rule FROM unnest($4::text[]) WITH ORDINALITY AS t(rule, n) ORDER BY t.n
    ON CONFLICT (program, rule) DO UPDATE SET awards = earn_rule_totals.awards
    RETURNING rule, NULL::text AS member_id, awards
)
SELECT * FROM usage UNION ALL SELECT * FROM totals
"""

# Run after the locks, so that it sees what the transactions it waited for committed:
# the awards in each (rule, member)'s span of windows, and those of the batch's events.
_SEEN = """
SELECT w.rule, w.member_id, w.event_id, w.occurred_at
FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[])
     AS q(rule, member_id, after, before)
JOIN earn_rule_awards AS w
  ON w.program = $1 AND w.rule = q.rule AND w.member_id = q.member_id
 AND w.occurred_at > q.after AND w.occurred_at < q.before
UNION
SELECT w.rule, w.member_id, w.event_id, w.occurred_at
FROM unnest($6::text[], $7::text[]) AS d(rule, event_id)
JOIN earn_rule_awards AS w ON w.program = $1 AND w.rule = d.rule AND w.event_id = d.event_id
"""


@dataclass(frozen=True)
class CapCheck:
    """One capped rule's award for one event."""

    rule: EarnRule
    member_id: str
    event_id: str
    occurred_at: datetime


def busiest_window(times: list[datetime], at: datetime, per: timedelta) -> int:
    """The most awards at ``times`` in one window (end - per, end] that would hold ``at``.

    The windows that end at ``at`` or at a later award count too (events may arrive out
    of time order): the same count as the per-event path's ``_COUNT``.
    """
    mine = [t for t in times if at - per < t < at + per]
    ends = {at} | {t for t in mine if t >= at}
    return max(sum(1 for t in mine if end - per < t <= end) for end in ends)


async def within_caps(
    conn: Conn, program: Program, checks: Sequence[CapCheck]
) -> list[bool | None]:
    """Lock, count and decide every capped award of a batch, in the order given.

    Returns per check: True (award it), False (a cap is reached: nothing), None (the
    event was awarded by the rule before: write nothing, but it counts as awarded).
    """
    if not checks:
        return []
    pairs = sorted({(c.rule.name, c.member_id) for c in checks})
    # The per-event path locks the totals rows in the program's rule order: so do we, so
    # that a batch of each kind, in two partitions, never wait for each other in a cycle.
    wanted = {c.rule.name for c in checks if c.rule.max_total is not None}
    totals_rules = [rule.name for rule in program.earn_rules if rule.name in wanted]
    locked = await conn.fetch(
        _LOCK, program.name, [r for r, _ in pairs], [m for _, m in pairs], totals_rules
    )
    usage = {(r["rule"], r["member_id"]): r["awards"] for r in locked if r["member_id"]}
    totals = {r["rule"]: r["awards"] for r in locked if r["member_id"] is None}
    spans: dict[tuple[str, str], tuple[datetime, datetime]] = {}
    for c in checks:
        if c.rule.limit is None:
            continue
        key, per = (c.rule.name, c.member_id), c.rule.limit.per
        low, high = spans.get(key, (c.occurred_at - per, c.occurred_at + per))
        spans[key] = (min(low, c.occurred_at - per), max(high, c.occurred_at + per))
    keys = sorted(spans)
    seen = await conn.fetch(
        _SEEN, program.name, [k[0] for k in keys], [k[1] for k in keys],
        [spans[k][0] for k in keys], [spans[k][1] for k in keys],
        [c.rule.name for c in checks], [c.event_id for c in checks],
    )  # fmt: skip
    times: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    done: set[tuple[str, str]] = set()
    for r in seen:
        times[(r["rule"], r["member_id"])].append(r["occurred_at"])
        done.add((r["rule"], r["event_id"]))
    decisions: list[bool | None] = []
    for c in checks:
        rule, key = c.rule, (c.rule.name, c.member_id)
        if (rule.name, c.event_id) in done:
            decisions.append(None)
            continue
        capped = (
            (
                rule.limit is not None
                and busiest_window(times[key], c.occurred_at, rule.limit.per) >= rule.limit.n
            )
            or (rule.max_per_member is not None and usage[key] >= rule.max_per_member)
            or (rule.max_total is not None and totals[rule.name] >= rule.max_total)
        )
        decisions.append(not capped)
        if not capped:
            # What the per-event path's next count would find in the database.
            times[key].append(c.occurred_at)
            done.add((rule.name, c.event_id))
            usage[key] += 1
            if rule.max_total is not None:
                totals[rule.name] += 1
    return decisions
