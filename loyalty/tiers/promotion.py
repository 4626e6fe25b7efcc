"""Tiers: schemes of ordered tiers, the qualifying measure, and promotion on earning.

A program may have several tier schemes (say ``main`` and a ``test`` scheme). A scheme
orders its tiers by entry threshold on a qualifying measure: the qualifying points a
member earned in the scheme's currency within its window (the last N days, the calendar
year, or lifetime). Points qualify when the earn rule that awarded them says so
(``qualifying=True``, the default); a return takes back its share of the order's
qualifying points, so the measure goes down with it.

Promotion is immediate: the transaction that awards qualifying points (the router's
batch) measures the member and moves them up, several tiers at once if the points
reach that far, and derives one ``new_stage`` event (cause ``earn``) in the same
transaction. Demotion happens only in maintenance (the retain threshold and the grace
period are its settings). New members start in the lowest tier, whose threshold is 0.

Worked example: tiers bronze (0), silver (100), gold (500) over 365 days. A member earns
90 qualifying points: bronze. A login awards 10 more: the measure is 100, the member is
silver at once and ``new_stage`` bronze → silver is in the inbox. A purchase awards 450:
gold, one ``new_stage`` silver → gold. Half of that purchase comes back: 225 points of
the measure go with it (425 now); the member stays gold until maintenance reviews them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from loyalty.app import Program
from loyalty.events import NewStage
from loyalty.ingest import derived
from loyalty.policies import clawback_target
from loyalty.store.db import Conn


def measured_currencies(program: Program) -> frozenset[str]:
    """The currencies some scheme of the program measures."""
    return frozenset(s.currency_in(program) for s in program.tier_schemes)


# The start (exclusive) of a window ending at {at}: {kind} is lifetime, calendar_year
# or rolling, {length} the rolling window's length.
WINDOW_START = """CASE {kind}::text
    WHEN 'rolling' THEN {at} - {length}::interval
    WHEN 'calendar_year' THEN date_trunc('year', {at}, 'UTC') - interval '1 microsecond'
    ELSE '-infinity'::timestamptz END"""

# A member's measure at {at}: qualifying points in {currency} since {start}.
MEASURE = """coalesce((
    SELECT sum(q.points) FROM qualifying_points AS q
    WHERE q.program = {program} AND q.member_id = {member} AND q.currency = {currency}
      AND q.earned_at <= {at} AND q.earned_at > {start}), 0)::bigint"""


def measure_sql(
    *, program: str, member: str, currency: str, at: str, kind: str, length: str
) -> str:
    """`MEASURE` with its window, over the given SQL expressions."""
    start = WINDOW_START.format(at=at, kind=kind, length=length)
    return MEASURE.format(program=program, member=member, currency=currency, at=at, start=start)


# Promote members ($2 ids, $3 times, $4 causes) whose measure in the scheme ($8 name,
# $9 tier names, $10 thresholds, lowest first) reached a higher tier than theirs; keep
# members.tier in step for the first scheme ($11). Returns one row per promotion.
_PROMOTE = f"""
WITH m AS (
    SELECT * FROM unnest($2::text[], $3::timestamptz[], $4::text[]) AS m(member_id, at, cause)
),
later AS (
    SELECT m.*, greatest(m.at, (
        SELECT max(q.earned_at) FROM qualifying_points AS q
        WHERE q.program = $1 AND q.member_id = m.member_id AND q.currency = $5)) AS latest
    FROM m
),
measured AS (
    SELECT l.*, {
    measure_sql(
        program="$1", member="l.member_id", currency="$5", at="l.at", kind="$6", length="$7"
    )
} AS measure_then, {
    measure_sql(
        program="$1", member="l.member_id", currency="$5", at="l.latest", kind="$6", length="$7"
    )
} AS measure_latest
    FROM later AS l
),
ranked AS (
    SELECT d.*,
           (SELECT max(t.rank) - 1 FROM unnest($10::bigint[]) WITH ORDINALITY AS t(threshold, rank)
            WHERE t.threshold <= d.measure_then)::integer AS rank_then,
           (SELECT max(t.rank) - 1 FROM unnest($10::bigint[]) WITH ORDINALITY AS t(threshold, rank)
            WHERE t.threshold <= d.measure_latest)::integer AS rank_latest
    FROM measured AS d
),
-- The tier the event's own time supports, or a higher one that the member's latest
-- qualifying points support (events applied out of their time order), then from then.
target AS (
    SELECT r.member_id, r.cause,
           CASE WHEN r.rank_then >= r.rank_latest THEN r.at ELSE r.latest END AS at,
           CASE WHEN r.rank_then >= r.rank_latest THEN r.measure_then
                ELSE r.measure_latest END AS measure,
           greatest(r.rank_then, r.rank_latest) AS rank
    FROM ranked AS r
),
cur AS (
    SELECT mt.member_id, mt.tier, mt.rank FROM member_tiers AS mt
    WHERE mt.program = $1 AND mt.scheme = $8 AND mt.member_id = ANY($2::text[])
    FOR UPDATE
),
up AS (
    INSERT INTO member_tiers (program, scheme, member_id, tier, rank, since)
    SELECT $1, $8, t.member_id, ($9::text[])[t.rank + 1], t.rank, t.at
    FROM target AS t LEFT JOIN cur AS c USING (member_id)
    WHERE t.rank > coalesce(c.rank, 0)
    ON CONFLICT (program, scheme, member_id) DO UPDATE
    SET tier = EXCLUDED.tier, rank = EXCLUDED.rank, since = EXCLUDED.since, below_since = NULL
    WHERE member_tiers.rank < EXCLUDED.rank
    RETURNING member_id, tier
),
shown AS (
    INSERT INTO members (program, member_id, tier)
    SELECT $1, up.member_id, up.tier FROM up WHERE $11::boolean
    ON CONFLICT (program, member_id) DO UPDATE SET tier = EXCLUDED.tier, updated_at = now()
    RETURNING 1
)
SELECT up.member_id, coalesce(c.tier, ($9::text[])[1]) AS from_tier, up.tier AS to_tier,
       t.cause, t.at, t.measure
FROM up JOIN target AS t USING (member_id) LEFT JOIN cur AS c USING (member_id)
ORDER BY up.member_id
"""

_RECORD = """
INSERT INTO qualifying_points (program, member_id, currency, earned_at, points, order_id,
                               source)
SELECT $1, q.member_id, q.currency, q.earned_at, q.points, q.order_id, q.source
FROM unnest($2::text[], $3::text[], $4::timestamptz[], $5::bigint[], $6::text[], $7::text[])
     AS q(member_id, currency, earned_at, points, order_id, source)
ON CONFLICT (program, source, currency) DO NOTHING
"""


@dataclass(frozen=True)
class Qualifying:
    """Qualifying points earned by one award (``source``: its ledger key)."""

    member_id: str
    currency: str
    earned_at: datetime
    points: int
    source: str
    order_id: str | None = None


@dataclass(frozen=True)
class Earner:
    """A member who just earned qualifying points: measured at ``at``, and ``cause`` is
    the event that earned them (the cause of any ``new_stage``)."""

    member_id: str
    at: datetime
    cause: str


@dataclass(frozen=True)
class Promotion:
    """A member moved up in a scheme."""

    scheme: str
    member_id: str
    from_tier: str
    to_tier: str
    cause: str
    at: datetime
    measure: int


async def record_qualifying(conn: Conn, program: str, rows: Sequence[Qualifying]) -> None:
    """Add qualifying points, once per (source, currency): in one statement."""
    if not rows:
        return
    await conn.execute(
        _RECORD, program, [r.member_id for r in rows], [r.currency for r in rows],
        [r.earned_at for r in rows], [r.points for r in rows], [r.order_id for r in rows],
        [r.source for r in rows],
    )  # fmt: skip


async def promote(
    conn: Conn, program: Program, earners: Sequence[Earner], currencies: frozenset[str]
) -> list[Promotion]:
    """Move members up in every scheme measuring one of ``currencies``; derive events.

    One statement per scheme for all the earners (one row each: pass a member once).
    Each promotion derives a ``new_stage`` event (cause ``earn``) into the inbox, in the
    caller's transaction, with id ``new_stage:<scheme>:<to tier>:<cause event id>``.
    """
    promotions: list[Promotion] = []
    if not earners:
        return promotions
    for index, scheme in enumerate(program.tier_schemes):
        currency = scheme.currency_in(program)
        if currency not in currencies:
            continue
        kind, length = scheme.window_sql_args()
        rows = await conn.fetch(
            _PROMOTE, program.name, [e.member_id for e in earners], [e.at for e in earners],
            [e.cause for e in earners], currency, kind, length, scheme.name,
            scheme.tier_names(), [t.threshold for t in scheme.tiers], index == 0,
        )  # fmt: skip
        promotions += [Promotion(scheme=scheme.name, **dict(row.items())) for row in rows]
    for p in promotions:
        event = NewStage(
            event_id=derived.derived_id("new_stage", p.scheme, p.to_tier, p.cause),
            member_id=p.member_id, program=program.name, occurred_at=p.at,
            from_tier=p.from_tier, to_tier=p.to_tier, direction="up", cause="earn",
            scheme=p.scheme,
        )  # fmt: skip
        await derived.record_caused_by(conn, [event], cause_event_id=p.cause)
    return promotions


async def take_back_for_return(
    conn: Conn,
    program: Program,
    *,
    order_id: str,
    currency: str,
    returned: Decimal,
    amount: Decimal,
    key: str,
) -> int:
    """Reduce the measure by the returned share of the order's qualifying points.

    Like the points themselves: ``floor(qualifying × returned so far / order amount)``
    minus what earlier returns took, so a full return in any number of parts takes
    exactly what the order qualified for. The negative row is dated like the order's
    qualifying points. Returns the points taken from the measure.
    """
    if currency not in measured_currencies(program):
        return 0
    row = await conn.fetchrow(
        """SELECT min(member_id) AS member_id, min(earned_at) AS earned_at,
                  coalesce(sum(points) FILTER (WHERE points > 0), 0)::bigint AS earned,
                  coalesce(-sum(points) FILTER (WHERE points < 0), 0)::bigint AS taken
           FROM qualifying_points
           WHERE program = $1 AND order_id = $2 AND currency = $3""",
        program.name, order_id, currency,
    )  # fmt: skip
    if row is None or not row["earned"]:
        return 0
    points: int = clawback_target(row["earned"], returned, amount) - row["taken"]
    if points <= 0:
        return 0
    await record_qualifying(
        conn, program.name,
        [Qualifying(row["member_id"], currency, row["earned_at"], -points, key, order_id)],
    )  # fmt: skip
    return points
