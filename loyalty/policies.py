"""Expiry and return policies of a program, per point currency.

Expiry (`Program.expiry`, per currency; a currency without one never expires):

* ``Rolling(days=365)``: each lot expires N days after it was earned.
* ``FixedDate(month=12, day=31, years_after=1)``: lots expire at the end of that
  calendar day (UTC), in the first such date on or after the day they were earned,
  plus ``years_after`` years: points of 2026 expire at the end of 2027.
* ``Inactivity(days=540)``: all of a member's points in the currency expire N days after
  the member last earned or spent any.

Returns (`Program.return_policy`): points of a returned order that were already spent
become ``debt`` (paid off first by later earnings) or are ``forgive``-n (recorded only).
What a return takes back, of the order's points and of its qualifying points alike, is
`clawback_target`: the returned share, rounded down.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class NoExpiry(_Policy):
    """Points never expire."""

    kind: Literal["none"] = "none"


class Rolling(_Policy):
    """Each lot expires ``days`` after it was earned."""

    kind: Literal["rolling"] = "rolling"
    days: int = Field(gt=0, le=36_500)


class FixedDate(_Policy):
    """Lots expire at the end of a calendar day (UTC), e.g. the end of the year."""

    kind: Literal["fixed_date"] = "fixed_date"
    month: int = Field(ge=1, le=12)
    day: int = Field(ge=1, le=31)
    years_after: int = Field(0, ge=0, le=100)

    @model_validator(mode="after")
    def _real_day(self) -> FixedDate:
        # 2025 is not a leap year: 29 February would not exist every year.
        try:
            date(2025, self.month, self.day)
        except ValueError:
            raise ValueError(
                f"{self.month:02d}-{self.day:02d} is not a day of every year"
            ) from None
        return self


class Inactivity(_Policy):
    """All points expire ``days`` after the member last earned or spent."""

    kind: Literal["inactivity"] = "inactivity"
    days: int = Field(gt=0, le=36_500)


ExpiryPolicy = Annotated[NoExpiry | Rolling | FixedDate | Inactivity, Field(discriminator="kind")]
ReturnPolicy = Literal["debt", "forgive"]


def lot_expiry(policy: ExpiryPolicy, earned_at: datetime) -> datetime | None:
    """When a lot earned at ``earned_at`` expires under the policy (None: not by date)."""
    if isinstance(policy, Rolling):
        return earned_at + timedelta(days=policy.days)
    if isinstance(policy, FixedDate):
        earned_day = earned_at.astimezone(UTC).date()
        year = earned_day.year
        if date(year, policy.month, policy.day) < earned_day:
            year += 1
        last_day = date(year + policy.years_after, policy.month, policy.day)
        return datetime.combine(last_day + timedelta(days=1), time(0), tzinfo=UTC)
    return None


def clawback_target(earned: int, returned: Decimal, amount: Decimal) -> int:
    """Points to have taken back once ``returned`` of ``amount`` came back (rounded down)."""
    if amount <= 0:
        return 0
    share = (Decimal(earned) * returned / amount).to_integral_value(rounding=ROUND_FLOOR)
    return min(earned, int(share))
