"""Earn rules as a program declares them: points for purchases, activities and referrals.

Plain frozen models with no SQL. A program's ``earn_rules`` are evaluated for every
``purchase``, ``activity``, ``referral`` and ``referral_approved`` event, in the router's
batch transaction (`loyalty.router.earn`, and set-based in `loyalty.router.bulk`).

Worked example: ``PerAmount(points_per_unit=1)`` on a purchase of 42.50 EUR with a
discount of 2.50 and 500 points redeemed (worth 5.00 at ``point_value`` 0.01): 35 points.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from loyalty.events import (
    MAX_POINTS,
    Activity,
    AnyEvent,
    CurrencyCode,
    CurrencyName,
    PointKind,
    Points,
    Purchase,
)

RuleName = Annotated[str, Field(min_length=1, max_length=100)]
Count = Annotated[int, Field(gt=0, le=MAX_POINTS)]
_ROUNDING = {"floor": ROUND_FLOOR, "half_up": ROUND_HALF_UP, "ceil": ROUND_CEILING}


class Limit(BaseModel):
    """At most ``n`` awards of a rule per member in any window of length ``per``.

    A sliding window by the events' ``occurred_at``: ``Limit(1, per=timedelta(days=1))``
    awards a login, then nothing for logins less than 24 hours later (or earlier, for an
    event that arrives late).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n: Count
    per: timedelta

    def __init__(self, n: int | None = None, /, **data: Any) -> None:
        if n is not None:
            data["n"] = n
        super().__init__(**data)

    @model_validator(mode="after")
    def _positive(self) -> Limit:
        if self.per <= timedelta(0):
            raise ValueError("per: must be a positive duration")
        return self


class _Rule(BaseModel):
    """Options every rule has.

    Attributes:
        name: unique in the program; the ledger key and the caps use it. Default: derived
            from the rule (``per_amount``, ``activity:web_login``, ``referral``,
            ``referral_approved``).
        kind: ``available`` (usable at once) or ``earned`` (usable after ``waiting_period``,
            by default the program's ``earned_waiting_period``).
        currency: the point currency awarded; default: the program's first currency.
        qualifying: whether the points count towards tiers (stored with each award in
            ``earn_rule_awards.qualifying``).
        limit: per-member frequency cap, a sliding window (`Limit`).
        max_per_member: at most this many awards of the rule per member, ever.
        max_total: at most this many awards of the rule in the program, all members.
        valid_from, valid_until: the rule applies to events with
            ``valid_from <= occurred_at < valid_until`` (limited-time promotions).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: RuleName
    kind: PointKind = "available"
    waiting_period: timedelta | None = None
    currency: CurrencyName | None = None
    qualifying: bool = True
    limit: Limit | None = None
    max_per_member: Count | None = None
    max_total: Count | None = None
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("name") is None:
            data = {**data, "name": cls._derived_name(data)}
        return data

    @classmethod
    def _derived_name(cls, data: dict[str, Any]) -> str:
        raise NotImplementedError

    @model_validator(mode="after")
    def _consistent(self) -> _Rule:
        if self.waiting_period is not None:
            if self.kind != "earned":
                raise ValueError("waiting_period: only earned points wait; kind is available")
            if self.waiting_period <= timedelta(0):
                raise ValueError("waiting_period: must be a positive duration")
        if self.valid_from and self.valid_until and self.valid_from >= self.valid_until:
            raise ValueError("valid_until: must be after valid_from")
        return self

    @property
    def capped(self) -> bool:
        """Whether awards need the usage rows locked and counted."""
        return bool(self.limit or self.max_per_member or self.max_total)

    def in_window(self, at: datetime) -> bool:
        """Whether an event at ``at`` falls within the rule's validity dates."""
        return (self.valid_from is None or self.valid_from <= at) and (
            self.valid_until is None or at < self.valid_until
        )

    def points_for(self, event: AnyEvent) -> int:
        """Points the rule gives for the event, before caps (0: does not apply)."""
        raise NotImplementedError


class PerAmount(_Rule):
    """Points per unit of a purchase's amount.

    ``amount`` is the order's total. With ``exclude_points_paid``, the money value of
    ``points_redeemed`` (``point_value`` each, 0.01 by default) is taken off first; with
    ``exclude_discount``, the ``discount``; never below zero. Points are
    ``rounding(base / unit * points_per_unit)``. The award carries the purchase's
    ``order_id``, so a return claws it back.
    """

    type: Literal["per_amount"] = "per_amount"
    on: Literal["purchase"] = "purchase"
    points_per_unit: Points = 1
    unit: Decimal = Field(Decimal(1), gt=0, allow_inf_nan=False)
    rounding: Literal["floor", "half_up", "ceil"] = "floor"
    exclude_points_paid: bool = True
    exclude_discount: bool = True
    point_value: Decimal = Field(Decimal("0.01"), ge=0, allow_inf_nan=False)
    money_currency: CurrencyCode | None = None

    @classmethod
    def _derived_name(cls, data: dict[str, Any]) -> str:
        return "per_amount"

    def points_for(self, event: AnyEvent) -> int:
        """Points for a purchase (see the class)."""
        # The type first: cheaper than isinstance on a model, for every event and rule.
        if event.type != "purchase" or not isinstance(event, Purchase):
            return 0
        if self.money_currency is not None and event.currency != self.money_currency:
            return 0
        base = event.amount
        if self.exclude_points_paid:
            base -= event.points_redeemed * self.point_value
        if self.exclude_discount:
            base -= event.discount
        base = max(base, Decimal(0))
        points = (base / self.unit * self.points_per_unit).to_integral_value(
            rounding=_ROUNDING[self.rounding]
        )
        return min(int(points), MAX_POINTS)


class OnActivity(_Rule):
    """``points`` for each ``activity`` event of that name.

    ``OnActivity("web_login", points=10)``: the activity's name comes first.
    """

    type: Literal["on_activity"] = "on_activity"
    activity: Annotated[str, Field(min_length=1, max_length=64)]
    points: Points

    def __init__(self, activity: str | None = None, /, **data: Any) -> None:
        if activity is not None:
            data["activity"] = activity
        super().__init__(**data)

    @classmethod
    def _derived_name(cls, data: dict[str, Any]) -> str:
        return f"activity:{data.get('activity')}"

    def points_for(self, event: AnyEvent) -> int:
        """``points`` for an activity of the rule's name."""
        if event.type != "activity" or not isinstance(event, Activity):
            return 0
        return self.points if event.name == self.activity else 0


class OnReferral(_Rule):
    """``points`` for the referrer (the event's member) on each ``referral`` event."""

    type: Literal["on_referral"] = "on_referral"
    points: Points

    @classmethod
    def _derived_name(cls, data: dict[str, Any]) -> str:
        return "referral"

    def points_for(self, event: AnyEvent) -> int:
        """``points`` for a referral."""
        return self.points if event.type == "referral" else 0


class OnReferralApproved(_Rule):
    """``points`` for the friend (the event's member) on each ``referral_approved`` event.

    The referrer's reward for an approved referral belongs to the derived
    ``referral_friend_approved`` event, whose member is the referrer.
    """

    type: Literal["on_referral_approved"] = "on_referral_approved"
    points: Points

    @classmethod
    def _derived_name(cls, data: dict[str, Any]) -> str:
        return "referral_approved"

    def points_for(self, event: AnyEvent) -> int:
        """``points`` for an accepted referral."""
        return self.points if event.type == "referral_approved" else 0


EarnRule = Annotated[
    PerAmount | OnActivity | OnReferral | OnReferralApproved, Field(discriminator="type")
]


def check_rules(rules: tuple[_Rule, ...], currencies: tuple[str, ...]) -> list[str]:
    """Problems of a program's rules: duplicate names, unknown currencies (one line each)."""
    problems: list[str] = []
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            problems.append(f"earn_rules.{i}.name: {rule.name!r} is used by another rule")
        seen.add(rule.name)
        if rule.currency is not None and rule.currency not in currencies:
            problems.append(
                f"earn_rules.{i}.currency: {rule.currency!r} is not a currency of the "
                f"program ({', '.join(currencies)})"
            )
    return problems
