"""Earn-rule caps for the fast path (`loyalty.router.bulk`): a batch's capped awards at once.

The per-event path (`loyalty.router.earn`) checks a capped award in three steps: it locks the
member's ``earn_rule_usage`` row of the rule (and, with ``max_total``, the rule's
``earn_rule_totals`` row), then counts the member's awards of the rule around the event
(the sliding window of ``limit``), then awards if no cap is reached. `load_caps` does
the first two for every capped award a batch may make in two statements: one locks every
usage row (sorted) and totals row (in the program's rule order, as the per-event path
does), the next reads, after the locks, the awards that the windows and the "already
awarded" checks need. The batch's replay then decides award after award in event order
(`Caps.decide`), counting the batch's own awards as it goes (`Caps.record`), exactly as
the per-event path would see them in the database.

Worked example: ``OnActivity("web_login", points=10, limit=Limit(1, per=timedelta(days=1)))``
and three logins of one member on one day in a batch: the first awards, the other two
are capped; with a login of yesterday 10:00 already awarded, a login today at 09:00 is
capped too (within 24 hours), one at 11:00 awards.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
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
    RETURNING rule, member_id, awards, xmax = 0 AS created
),
totals AS (
    INSERT INTO earn_rule_totals (program, rule)
    SELECT $1, t.rule FROM unnest($4::text[]) WITH ORDINALITY AS t(rule, n) ORDER BY t.n
    ON CONFLICT (program, rule) DO UPDATE SET awards = earn_rule_totals.awards
    RETURNING rule, NULL::text AS member_id, awards, false AS created
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


@dataclass
class Caps:
    """The caps of a batch's capped awards, loaded once and decided award after award.

    Attributes:
        usage: awards of each (rule, member) so far, as the usage row counts them.
        totals: awards of each rule with a ``max_total`` so far.
        times: when the member's awards of the rule happened, around the batch's events.
        done: (rule, event_id) awarded already.
        created: usage rows the lock inserted (absent before the batch).
        touched: usage rows that an applied event's rule checked: those the per-event
            path would have created. The others are deleted after the batch.
    """

    usage: dict[tuple[str, str], int] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    times: dict[tuple[str, str], list[datetime]] = field(default_factory=lambda: defaultdict(list))
    done: set[tuple[str, str]] = field(default_factory=set)
    created: set[tuple[str, str]] = field(default_factory=set)
    touched: set[tuple[str, str]] = field(default_factory=set)

    def decide(self, c: CapCheck) -> bool | None:
        """True: award; False: a cap is reached; None: awarded before (counts, writes
        nothing). The check counts as made (its usage row is the per-event path's)."""
        rule, key = c.rule, (c.rule.name, c.member_id)
        self.touched.add(key)
        if (rule.name, c.event_id) in self.done:
            return None
        capped = (
            (
                rule.limit is not None
                and busiest_window(self.times[key], c.occurred_at, rule.limit.per) >= rule.limit.n
            )
            or (rule.max_per_member is not None and self.usage[key] >= rule.max_per_member)
            or (rule.max_total is not None and self.totals[rule.name] >= rule.max_total)
        )
        return not capped

    def record(self, c: CapCheck) -> None:
        """Count an award written: what the per-event path's next count would find."""
        key = (c.rule.name, c.member_id)
        self.times[key].append(c.occurred_at)
        self.done.add((c.rule.name, c.event_id))
        self.usage[key] += 1
        if c.rule.max_total is not None:
            self.totals[c.rule.name] += 1

    def untouched(self) -> list[tuple[str, str]]:
        """Usage rows the lock created that no applied event checked, sorted."""
        return sorted(self.created - self.touched)


async def load_caps(conn: Conn, program: Program, checks: Sequence[CapCheck]) -> Caps:
    """Lock and read what every capped award the batch may make needs, in two statements.

    ``checks`` are all the capped awards the batch's events could make (an event refused
    later makes none): their usage rows are locked (and created), and the rules' totals.
    """
    caps = Caps()
    if not checks:
        return caps
    pairs = sorted({(c.rule.name, c.member_id) for c in checks})
    # The per-event path locks the totals rows in the program's rule order: so do we, so
    # that a batch of each kind, in two partitions, never wait for each other in a cycle.
    wanted = {c.rule.name for c in checks if c.rule.max_total is not None}
    totals_rules = [rule.name for rule in program.earn_rules if rule.name in wanted]
    locked = await conn.fetch(
        _LOCK, program.name, [r for r, _ in pairs], [m for _, m in pairs], totals_rules
    )
    for r in locked:
        if r["member_id"] is None:
            caps.totals[r["rule"]] = r["awards"]
        else:
            caps.usage[(r["rule"], r["member_id"])] = r["awards"]
            if r["created"]:
                caps.created.add((r["rule"], r["member_id"]))
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
    for r in seen:
        caps.times[(r["rule"], r["member_id"])].append(r["occurred_at"])
        caps.done.add((r["rule"], r["event_id"]))
    return caps


async def drop_untouched(conn: Conn, program: str, caps: Caps) -> None:
    """Delete the usage rows the lock created for checks no applied event made."""
    gone = caps.untouched()
    if gone:
        await conn.execute(
            """DELETE FROM earn_rule_usage AS u
               USING unnest($2::text[], $3::text[]) AS g(rule, member_id)
               WHERE u.program = $1 AND u.rule = g.rule AND u.member_id = g.member_id
                 AND u.awards = 0""",
            program, [r for r, _ in gone], [m for _, m in gone],
        )  # fmt: skip
