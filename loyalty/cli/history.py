"""`loyalty report --history`: liability over time from the daily snapshots, as a chart.

One chart per program and point currency: a bar per UTC day of the outstanding points
(with their money value when the program has a ``point_value``), beside the day's parts:
issued, redeemed, expired, clawed back. Drawn with rich's own `Bar`: no plotting library.
"""

from __future__ import annotations

from itertools import groupby

from rich.bar import Bar
from rich.table import Table

from loyalty.ledger.history import LiabilitySnapshot, Money

BAR_WIDTH = 40


def money(value: Money | None) -> str:
    """``EUR 1,234.50``, or empty without a value."""
    return "" if value is None else f"{value.currency} {value.amount:,.2f}"


def charts(snapshots: list[LiabilitySnapshot]) -> list[Table]:
    """One table per program and currency: day, bar, outstanding, value, the parts."""
    tables = []
    for (program, currency), group in groupby(snapshots, key=lambda s: (s.program, s.currency)):
        days = list(group)
        top = max(max(s.outstanding for s in days), 1)
        valued = any(s.outstanding_value is not None for s in days)
        table = Table("day (UTC)", "outstanding", "", title=f"{program} · {currency}",
                      title_justify="left")  # fmt: skip
        table.columns[2].justify = "right"
        if valued:
            table.add_column("value", justify="right")
        for name in ("issued", "redeemed", "expired", "clawed back"):
            table.add_column(name, justify="right")
        for s in days:
            bar = Bar(top, 0, max(s.outstanding, 0), width=BAR_WIDTH, color="cyan")
            parts = [f"{v:,}" for v in (s.issued, s.redeemed, s.expired, s.clawed_back)]
            value = [money(s.outstanding_value)] if valued else []
            table.add_row(s.day.isoformat(), bar, f"{s.outstanding:,}", *value, *parts)
        tables.append(table)
    return tables
