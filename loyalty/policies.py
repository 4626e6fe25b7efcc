"""Expiry and return policies of a program, per point currency.

Expiry (`Program.expiry`, per currency; a currency without one never expires):

* ``Rolling(days=365)``: each lot expires N days after it was earned;
  ``Rolling(period=timedelta(minutes=10))`` takes any duration (an accelerated demo).
* ``FixedDate(month=12, day=31, years_after=1)``: lots expire at the end of that
  calendar day (in the program's time zone, `Program.timezone`), in the first such date
  on or after the day they were earned, plus ``years_after`` years: points of 2026
  expire at the end of 2027.
* ``Inactivity(days=540)``: all of a member's points in the currency expire N days after
  the member last earned or spent any; ``Inactivity(period=timedelta(hours=2))`` takes
  any duration.

Returns (`Program.return_policy`): points of a returned order that were already spent
become ``debt`` (paid off first by later earnings) or are ``forgive``-n (recorded only).
What a return takes back, of the order's points and of its qualifying points alike, is
`clawback_target`: the returned share, rounded down.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import ROUND_FLOOR, Decimal
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, model_validator

# A hundred years: longer periods are a typo, not a policy.
MAX_PERIOD = timedelta(days=36_500)


class _Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Period(_Policy):
    """A policy measured by a length of time: whole ``days``, or any ``period``."""

    days: int | None = Field(None, gt=0, le=MAX_PERIOD.days)
    period: timedelta | None = None

    @model_validator(mode="after")
    def _one_length(self) -> Self:
        if self.days is None and self.period is None:
            raise ValueError("give days or period (a timedelta)")
        if self.days is not None and self.period is not None:
            raise ValueError("give days or period, not both")
        if self.period is not None and not timedelta(0) < self.period <= MAX_PERIOD:
            raise ValueError("period: must be a positive duration of at most 36,500 days")
        return self

    @property
    def duration(self) -> timedelta:
        """The policy's length of time, whichever way it was given."""
        return self.period if self.period is not None else timedelta(days=self.days or 0)


class NoExpiry(_Policy):
    """Points never expire."""

    kind: Literal["none"] = "none"


class Rolling(_Period):
    """Each lot expires ``days`` (or ``period``) after it was earned."""

    kind: Literal["rolling"] = "rolling"


class FixedDate(_Policy):
    """Lots expire at the end of a calendar day (in the program's time zone), e.g. the end
    of the year."""

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


class Inactivity(_Period):
    """All points expire ``days`` (or ``period``) after the member last earned or spent."""

    kind: Literal["inactivity"] = "inactivity"


ExpiryPolicy = Annotated[NoExpiry | Rolling | FixedDate | Inactivity, Field(discriminator="kind")]
ReturnPolicy = Literal["debt", "forgive"]


def time_zone(name: str) -> tzinfo:
    """The IANA time zone of that name (UTC needs no time zone database).

    Raises:
        ValueError: no such time zone.
    """
    if name == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}; give an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None


def zone_name(name: str, field: str) -> str:
    """``name`` if it is an IANA time zone, for a validator of the setting ``field``.

    Raises:
        ValueError: ``<field>: unknown time zone …``.
    """
    try:
        time_zone(name)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None
    return name


def lot_expiry(policy: ExpiryPolicy, earned_at: datetime, timezone: str = "UTC") -> datetime | None:
    """When a lot earned at ``earned_at`` expires under the policy (None: not by date).

    ``timezone``: the program's (`Program.timezone`), where a `FixedDate` day ends.
    """
    if isinstance(policy, Rolling):
        return earned_at + policy.duration
    if isinstance(policy, FixedDate):
        zone = time_zone(timezone)
        earned_day = earned_at.astimezone(zone).date()
        year = earned_day.year
        if date(year, policy.month, policy.day) < earned_day:
            year += 1
        last_day = date(year + policy.years_after, policy.month, policy.day)
        return datetime.combine(last_day + timedelta(days=1), time(0), tzinfo=zone)
    return None


def clawback_target(earned: int, returned: Decimal, amount: Decimal) -> int:
    """Points to have taken back once ``returned`` of ``amount`` came back (rounded down)."""
    if amount <= 0:
        return 0
    share = (Decimal(earned) * returned / amount).to_integral_value(rounding=ROUND_FLOOR)
    return min(earned, int(share))
