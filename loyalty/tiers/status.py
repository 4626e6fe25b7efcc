"""A member's tier status in each scheme, for the member view.

The status is read, not stored: the tier from ``member_tiers`` (the lowest tier without
a row), the measure now, the next tier and the points it still needs, when maintenance
reviews the member next, and the end of a grace period in progress.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from loyalty.models import TierStatus
from loyalty.store.db import Conn
from loyalty.tiers.promotion import measure_sql
from loyalty.tiers.schemes import TierScheme


async def statuses(
    conn: Conn, program: str, config: dict[str, Any], member_id: str
) -> list[TierStatus]:
    """The member's status in each scheme of a program's stored ``config``, measured now.

    ``reviewed_at`` is when maintenance next reviews the member: the schedule's next
    time after the scheme's last finished run (or after now), or, for a schedule
    anchored on join dates, the member's next join-date anniversary.
    """
    currencies = config.get("currencies") or ["points"]
    result = []
    for raw in config.get("tier_schemes") or []:
        scheme = TierScheme.model_validate(raw)
        currency = scheme.currency or currencies[0]
        kind, length = scheme.window_sql_args()
        measure = measure_sql(
            program="$1", member="$2", currency="$3", at="now()", kind="$4", length="$5"
        )
        row = await conn.fetchrow(
            f"""SELECT {measure} AS measure, t.rank, t.since, t.below_since, now() AS now,
                       (SELECT created_at FROM members
                        WHERE program = $1 AND member_id = $2) AS joined,
                       (SELECT max(as_of) FROM maintenance_runs
                        WHERE program = $1 AND scheme = $6 AND finished_at IS NOT NULL)
                           AS last_run
                FROM (SELECT 1) AS one
                LEFT JOIN member_tiers AS t
                  ON t.program = $1 AND t.scheme = $6 AND t.member_id = $2""",
            program, member_id, currency, kind, length, scheme.name,
        )  # fmt: skip
        assert row is not None
        rank = min(row["rank"] or 0, len(scheme.tiers) - 1)
        upper = scheme.tiers[rank + 1] if rank + 1 < len(scheme.tiers) else None
        if scheme.schedule.anchor == "join_date" and row["joined"] is not None:
            reviewed_at = next_anniversary(row["joined"], row["now"])
        else:
            reviewed_at = scheme.schedule.next_after(row["last_run"] or row["now"])
        below = row["below_since"]
        result.append(
            TierStatus(
                scheme=scheme.name, tier=scheme.tiers[rank].name, since=row["since"],
                qualifying=row["measure"], currency=currency,
                next_tier=upper.name if upper else None,
                points_to_next=max(0, upper.threshold - row["measure"]) if upper else None,
                reviewed_at=reviewed_at,
                grace_until=below + scheme.grace_period if below is not None else None,
            )
        )  # fmt: skip
    return result


def next_anniversary(joined: datetime, now: datetime) -> datetime:
    """The first anniversary of ``joined`` after ``now`` (29 February: 28 February)."""
    for year in (now.year, now.year + 1):
        try:
            day = joined.replace(year=year)
        except ValueError:
            day = joined.replace(year=year, day=28)
        if day > now:
            return day
    raise AssertionError("unreachable: an anniversary falls within two years")
