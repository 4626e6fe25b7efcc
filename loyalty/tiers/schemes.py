"""Tier schemes as a program declares them: ordered tiers, windows and schedules.

Plain frozen models with no SQL: `loyalty.tiers.promotion` measures and promotes
members by them, `loyalty.tiers.maintenance` reviews them on the scheme's `Schedule`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, Protocol

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loyalty.events import MAX_POINTS, CurrencyName
from loyalty.policies import time_zone, zone_name

TierName = Annotated[str, Field(min_length=1, max_length=64)]
Threshold = Annotated[int, Field(ge=0, le=MAX_POINTS)]
Window = timedelta | Literal["lifetime", "calendar_year"]


class _HasCurrencies(Protocol):
    """What a scheme needs of its program: the currencies, the first one the default."""

    @property
    def currencies(self) -> tuple[str, ...]: ...


class Tier(BaseModel):
    """One tier of a scheme.

    Attributes:
        name: unique in the scheme; what ``NewStage(to=...)`` names.
        threshold: the qualifying measure that enters the tier.
        retain: the measure that keeps a member in the tier at maintenance (default:
            ``threshold``); at most ``threshold``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: TierName
    threshold: Threshold
    retain: Threshold | None = None

    @model_validator(mode="after")
    def _retain_below_entry(self) -> Tier:
        if self.retain is not None and self.retain > self.threshold:
            raise ValueError(
                f"tier {self.name!r}: retain ({self.retain}) must not exceed "
                f"threshold ({self.threshold})"
            )
        return self

    @property
    def retain_threshold(self) -> int:
        """The measure that keeps a member in the tier."""
        return self.threshold if self.retain is None else self.retain


class Schedule(BaseModel):
    """When recurring work runs: ``every`` (a duration) or ``cron``, not both.

    Tier maintenance and housekeeping loops, and recurring flows
    (`loyalty.triggers.Recurring`, run by a Temporal Schedule), take one.

    Attributes:
        every: a run every this long, counted from the previous run (default one day).
        cron: a cron expression read in ``timezone``, e.g. ``"0 3 1 * *"`` (03:00 on
            the 1st) or ``"0 9 * * MON"``.
        timezone: the IANA time zone ``cron`` is read in (default ``UTC``); a daylight
            saving change moves the runs with the wall clock.
        anchor: ``program`` reviews every member at each run; ``join_date`` reviews, at
            each run, only the members whose join-date anniversary passed since the
            previous run, so each member is reviewed once a year on their own date.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    every: timedelta | None = None
    cron: str | None = None
    timezone: str = "UTC"
    anchor: Literal["program", "join_date"] = "program"

    @field_validator("timezone")
    @classmethod
    def _iana_time_zone(cls, name: str) -> str:
        return zone_name(name, "schedule: timezone")

    @model_validator(mode="after")
    def _one_rule(self) -> Schedule:
        if self.every is not None and self.cron is not None:
            raise ValueError("schedule: give every or cron, not both")
        if self.every is not None and self.every <= timedelta(0):
            raise ValueError("schedule: every must be a positive duration")
        if self.cron is not None:
            try:
                CronSim(self.cron, datetime(2000, 1, 1, tzinfo=UTC))
            except CronSimError as exc:
                raise ValueError(f"schedule: cron {self.cron!r}: {exc}") from exc
        return self

    def next_after(self, at: datetime) -> datetime:
        """The first run time strictly after ``at``."""
        if self.cron is not None:
            return next(CronSim(self.cron, at.astimezone(time_zone(self.timezone)))).astimezone(UTC)
        return at + (self.every or timedelta(days=1))

    def __str__(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.timezone})"
        return f"every {self.every or timedelta(days=1)}"


class TierScheme(BaseModel):
    """Ordered tiers on a qualifying measure.

    Attributes:
        name: unique in the program; ``main`` by default. The program's first scheme is
            the one ``members.tier`` and the member view show first.
        tiers: lowest first, thresholds strictly ascending, the first one 0.
        currency: the currency whose qualifying points are measured; default: the
            program's first currency.
        window: ``lifetime``, ``calendar_year`` (UTC), or a duration (a rolling window
            such as ``timedelta(days=365)``).
        grace_period: how long maintenance lets a member stay below the retain
            threshold before demoting them.
        demotion: ``highest_met`` (to the highest tier whose retain threshold is still
            met) or ``one_down``.
        schedule: when maintenance runs (`Schedule`; default: every day).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: TierName = "main"
    tiers: tuple[Tier, ...] = Field(min_length=1)
    currency: CurrencyName | None = None
    window: Window = "lifetime"
    grace_period: timedelta = timedelta(0)
    demotion: Literal["highest_met", "one_down"] = "highest_met"
    schedule: Schedule = Schedule()

    @model_validator(mode="after")
    def _ordered(self) -> TierScheme:
        names = [t.name for t in self.tiers]
        doubled = sorted({n for n in names if names.count(n) > 1})
        if doubled:
            raise ValueError(f"scheme {self.name!r}: tier names used twice: {', '.join(doubled)}")
        if self.tiers[0].threshold != 0:
            raise ValueError(
                f"scheme {self.name!r}: tiers[0] ({self.tiers[0].name!r}) is where members "
                f"start; its threshold must be 0, not {self.tiers[0].threshold}"
            )
        for lower, upper in zip(self.tiers, self.tiers[1:], strict=False):
            if upper.threshold <= lower.threshold:
                raise ValueError(
                    f"scheme {self.name!r}: tiers must be in ascending order of threshold; "
                    f"{upper.name!r} ({upper.threshold}) follows {lower.name!r} "
                    f"({lower.threshold})"
                )
        if isinstance(self.window, timedelta) and self.window <= timedelta(0):
            raise ValueError(f"scheme {self.name!r}: window must be a positive duration")
        if self.grace_period < timedelta(0):
            raise ValueError(f"scheme {self.name!r}: grace_period must not be negative")
        return self

    def currency_in(self, program: _HasCurrencies) -> str:
        """The measured currency: the scheme's own, or the program's first."""
        return self.currency or program.currencies[0]

    def window_sql_args(self) -> tuple[str, timedelta]:
        """The window as the (kind, length) pair the measuring SQL takes."""
        if isinstance(self.window, timedelta):
            return "rolling", self.window
        return self.window, timedelta(0)

    def tier_names(self) -> list[str]:
        """The tiers' names, lowest first."""
        return [t.name for t in self.tiers]


def check_schemes(schemes: tuple[TierScheme, ...], currencies: tuple[str, ...]) -> list[str]:
    """Problems of a program's schemes: names used twice, unknown currencies."""
    problems = []
    names = [s.name for s in schemes]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        problems.append(f"tier scheme names used twice: {', '.join(doubled)}")
    for scheme in schemes:
        if scheme.currency is not None and scheme.currency not in currencies:
            problems.append(
                f"tier scheme {scheme.name!r}: currency {scheme.currency!r} is not one of "
                f"the program's currencies ({', '.join(currencies)})"
            )
    return problems
