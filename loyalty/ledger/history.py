"""Liability over time: daily snapshots of `loyalty report`'s figures, and their money value.

The housekeeping loop's ``snapshot`` step (`loyalty.ledger.housekeeping.snapshot_step`)
calls `take_snapshot` once per run: one row of ``liability_snapshots`` per program, point
currency and UTC day of the run's ``as_of``, upserted, so a retried or repeated run of
the same day rewrites that day's rows with the figures of its time. `history` reads them
back for ``loyalty report --history``. Snapshots hold points only; `point_values` reads
each program's `loyalty.app.PointValue` from its stored config, and `value_of` turns
points into money with it (the current value, for every day shown).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from loyalty.app import PointValue
from loyalty.ledger.audit import report
from loyalty.store.db import Conn

# The figures a snapshot keeps, as columns of ``liability_snapshots``.
FIGURES = ("outstanding", "issued", "redeemed", "expired", "clawed_back")


class Money(BaseModel):
    """An amount of money with its currency (never a float)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: Decimal
    currency: str


class Valuation(BaseModel):
    """A program's point value and the point currency it applies to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    value: PointValue
    points: str

    def of(self, currency: str, points: int) -> Money | None:
        """``points`` of ``currency`` in money; None for another point currency."""
        if currency != self.points:
            return None
        return Money(amount=self.value.amount * points, currency=self.value.currency)


class LiabilitySnapshot(BaseModel):
    """One program, point currency and UTC day: the liability and its parts, in points;
    ``outstanding_value`` is ``outstanding`` in money when the program has a point value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    program: str
    currency: str
    day: date
    outstanding: int
    issued: int
    redeemed: int
    expired: int
    clawed_back: int
    taken_at: datetime
    outstanding_value: Money | None = None


def snapshot_day(as_of: datetime) -> date:
    """The UTC day a run at ``as_of`` records."""
    return as_of.astimezone(UTC).date()


async def take_snapshot(conn: Conn, program: str, as_of: datetime) -> int:
    """Upsert the program's liability per point currency for the UTC day of ``as_of``.

    Returns the rows written (one per currency the ledger knows for the program).
    """
    rows = await report(conn, program)
    if not rows:
        return 0
    columns = ", ".join(FIGURES)
    await conn.executemany(
        f"""INSERT INTO liability_snapshots (program, currency, day, {columns})
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (program, day, currency) DO UPDATE SET
                {", ".join(f"{f} = EXCLUDED.{f}" for f in FIGURES)},
                taken_at = clock_timestamp()""",
        [
            (r.program, r.currency, snapshot_day(as_of), *(getattr(r, f) for f in FIGURES))
            for r in rows
        ],
    )
    return len(rows)


async def point_values(conn: Conn, program: str | None = None) -> dict[str, Valuation]:
    """The programs with a point value (of ``program`` only, if named), from their config."""
    rows = await conn.fetch(
        """SELECT name, config->'point_value' AS value, config->'currencies' AS currencies
           FROM programs
           WHERE jsonb_typeof(config->'point_value') = 'object'
             AND ($1::text IS NULL OR name = $1)""",
        program,
    )
    found = {}
    for r in rows:
        value = PointValue.model_validate(r["value"])
        currencies = r["currencies"] or ["points"]
        found[r["name"]] = Valuation(value=value, points=value.points or currencies[0])
    return found


async def history(conn: Conn, days: int, program: str | None = None) -> list[LiabilitySnapshot]:
    """The snapshots of the last ``days`` UTC days (today included), by program, currency
    and day, with the outstanding points in money where the program has a point value."""
    values = await point_values(conn, program)
    rows = await conn.fetch(
        f"""SELECT program, currency, day, {", ".join(FIGURES)}, taken_at
            FROM liability_snapshots
            WHERE day > (now() AT TIME ZONE 'UTC')::date - $1::int
              AND ($2::text IS NULL OR program = $2)
            ORDER BY program, currency, day""",
        days,
        program,
    )
    snapshots = []
    for r in rows:
        valuation = values.get(r["program"])
        money = valuation.of(r["currency"], r["outstanding"]) if valuation else None
        snapshots.append(LiabilitySnapshot(**dict(r), outstanding_value=money))
    return snapshots
