"""Triggers: which events start a flow's journey.

A trigger is a frozen dataclass (hashable, and serialisable by pydantic, except `Custom`
whose predicate is a callable) naming the event type it listens to and matching events
of that type with ``matches(event)``. The router indexes flows by ``event_types`` and
asks ``matches`` only of the flows listening to an event's type.

Bad parameters (``PointsAbove(-1)``, ``NewStage(direction="sideways")``) raise
`ConfigurationError` when the trigger is created, that is when the app module is imported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

from loyalty import events as ev
from loyalty.errors import ConfigurationError
from loyalty.tiers.schemes import Schedule


def _require(ok: bool, trigger: str, message: str) -> None:
    if not ok:
        raise ConfigurationError(f"{trigger}: {message}")


def _optional_bool(value: object, trigger: str, name: str) -> None:
    _require(
        value is None or isinstance(value, bool), trigger, f"{name} must be True, False or None"
    )


def _count(value: object, trigger: str, name: str) -> None:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        trigger,
        f"{name} must be an integer ≥ 0, got {value!r}",
    )


def _text(value: object, trigger: str, name: str, optional: bool = False) -> None:
    if optional and value is None:
        return
    _require(isinstance(value, str) and value != "", trigger, f"{name} must be a non-empty string")


class Trigger:
    """Base class of triggers: the event types listened to and a predicate on their events."""

    EVENT_TYPE: ClassVar[str] = ""

    @property
    def event_types(self) -> tuple[str, ...]:
        """The ``type`` values of the events this trigger listens to."""
        return (self.EVENT_TYPE,)

    def matches(self, event: ev.BaseEvent) -> bool:
        """Whether this event starts a journey of the flow."""
        raise NotImplementedError

    def _params(self) -> list[str]:
        return []

    def __str__(self) -> str:
        return f"{type(self).__name__}({', '.join(self._params())})"


@dataclass(frozen=True)
class Purchase(Trigger):
    """A new purchase, optionally filtered.

    Attributes:
        min_amount: only purchases of at least this amount (in the purchase's currency).
        paid_with_points: True: only purchases that redeemed points; False: only those
            that did not.
        with_discount: True: only discounted purchases; False: only undiscounted ones.
    """

    EVENT_TYPE: ClassVar[str] = "purchase"
    min_amount: Decimal | int | None = None
    paid_with_points: bool | None = None
    with_discount: bool | None = None

    def __post_init__(self) -> None:
        amount = self.min_amount
        _require(
            amount is None or (isinstance(amount, int | Decimal) and not isinstance(amount, bool)),
            "Purchase",
            f"min_amount must be a Decimal or an integer (never a float), got {amount!r}",
        )
        if amount is not None:
            _require(amount >= 0, "Purchase", f"min_amount must be ≥ 0, got {amount}")
            object.__setattr__(self, "min_amount", Decimal(amount))
        _optional_bool(self.paid_with_points, "Purchase", "paid_with_points")
        _optional_bool(self.with_discount, "Purchase", "with_discount")

    def matches(self, event: ev.BaseEvent) -> bool:
        """A purchase meeting every filter that is set."""
        if not isinstance(event, ev.Purchase):
            return False
        if self.min_amount is not None and event.amount < self.min_amount:
            return False
        if self.paid_with_points is not None and self.paid_with_points != (
            event.points_redeemed > 0
        ):
            return False
        return self.with_discount is None or self.with_discount == (event.discount > 0)

    def _params(self) -> list[str]:
        return [
            f"{name}={value}"
            for name, value in (
                ("min_amount", self.min_amount),
                ("paid_with_points", self.paid_with_points),
                ("with_discount", self.with_discount),
            )
            if value is not None
        ]


@dataclass(frozen=True)
class NewStage(Trigger):
    """The member moved between tiers (derived ``new_stage`` event).

    Attributes:
        to: only moves into this tier.
        from_: only moves out of this tier.
        direction: only ``up`` (promotions) or ``down`` (demotions).
        scheme: only moves in this tier scheme (default: any scheme).
    """

    EVENT_TYPE: ClassVar[str] = "new_stage"
    to: str | None = None
    from_: str | None = None
    direction: str | None = None
    scheme: str | None = None

    def __post_init__(self) -> None:
        _text(self.to, "NewStage", "to", optional=True)
        _text(self.from_, "NewStage", "from_", optional=True)
        _text(self.scheme, "NewStage", "scheme", optional=True)
        _require(
            self.direction in (None, "up", "down"),
            "NewStage",
            f"direction must be 'up', 'down' or None, got {self.direction!r}",
        )

    def matches(self, event: ev.BaseEvent) -> bool:
        """A tier change meeting every filter that is set."""
        return (
            isinstance(event, ev.NewStage)
            and self.to in (None, event.to_tier)
            and (self.from_ is None or self.from_ == event.from_tier)
            and self.direction in (None, event.direction)
            and self.scheme in (None, event.scheme)
        )

    def _params(self) -> list[str]:
        return [
            f"{name}={value}"
            for name, value in (
                ("to", self.to),
                ("from_", self.from_),
                ("direction", self.direction),
                ("scheme", self.scheme),
            )
            if value is not None
        ]


@dataclass(frozen=True)
class PointsAbove(Trigger):
    """The available balance crossed ``threshold`` upwards (derived ``points_above`` event)."""

    EVENT_TYPE: ClassVar[str] = "points_above"
    threshold: int

    def __post_init__(self) -> None:
        _count(self.threshold, "PointsAbove", "threshold")

    def matches(self, event: ev.BaseEvent) -> bool:
        """A crossing of exactly this threshold."""
        return isinstance(event, ev.PointsAbove) and event.threshold == self.threshold

    def _params(self) -> list[str]:
        return [str(self.threshold)]


@dataclass(frozen=True)
class Referral(Trigger):
    """The member referred a friend."""

    EVENT_TYPE: ClassVar[str] = "referral"

    def matches(self, event: ev.BaseEvent) -> bool:
        """Any referral."""
        return isinstance(event, ev.Referral)


@dataclass(frozen=True)
class ReferralApproved(Trigger):
    """The member (the friend) accepted a referral."""

    EVENT_TYPE: ClassVar[str] = "referral_approved"

    def matches(self, event: ev.BaseEvent) -> bool:
        """Any accepted referral, seen from the friend."""
        return isinstance(event, ev.ReferralApproved)


@dataclass(frozen=True)
class ReferralFriendApproved(Trigger):
    """A friend the member referred accepted (derived ``referral_friend_approved`` event)."""

    EVENT_TYPE: ClassVar[str] = "referral_friend_approved"

    def matches(self, event: ev.BaseEvent) -> bool:
        """Any accepted referral, seen from the referrer."""
        return isinstance(event, ev.ReferralFriendApproved)


@dataclass(frozen=True)
class BonusExpiring(Trigger):
    """Points expire in ``days_before`` days (derived ``bonus_expiring`` event)."""

    EVENT_TYPE: ClassVar[str] = "bonus_expiring"
    days_before: int

    def __post_init__(self) -> None:
        _count(self.days_before, "BonusExpiring", "days_before")

    def matches(self, event: ev.BaseEvent) -> bool:
        """A warning sent exactly ``days_before`` days ahead."""
        return isinstance(event, ev.BonusExpiring) and event.days_left == self.days_before

    def _params(self) -> list[str]:
        return [f"days_before={self.days_before}"]


@dataclass(frozen=True)
class EnteredSegment(Trigger):
    """The member entered the segment ``name`` (derived ``segment_entered`` event)."""

    EVENT_TYPE: ClassVar[str] = "segment_entered"
    name: str

    def __post_init__(self) -> None:
        _text(self.name, "EnteredSegment", "name")

    def matches(self, event: ev.BaseEvent) -> bool:
        """An entry into exactly this segment."""
        return isinstance(event, ev.SegmentEntered) and event.segment == self.name

    def _params(self) -> list[str]:
        return [repr(self.name)]


@dataclass(frozen=True)
class LeftSegment(Trigger):
    """The member left the segment ``name`` (derived ``segment_left`` event)."""

    EVENT_TYPE: ClassVar[str] = "segment_left"
    name: str

    def __post_init__(self) -> None:
        _text(self.name, "LeftSegment", "name")

    def matches(self, event: ev.BaseEvent) -> bool:
        """A departure from exactly this segment."""
        return isinstance(event, ev.SegmentLeft) and event.segment == self.name

    def _params(self) -> list[str]:
        return [repr(self.name)]


@dataclass(frozen=True)
class Recurring(Trigger):
    """Every ``schedule`` time, one journey for each member in ``segment`` then.

    A Temporal Schedule per flow and program starts the run (`workflows.recurring`); the
    journey's trigger event is a `loyalty.events.RecurringRun` naming the segment and
    the scheduled time. With ``Entry.EVERY_TIME`` (the default) a member enters once per
    scheduled time.

    Attributes:
        schedule: ``Schedule(cron="0 9 * * MON", timezone="Europe/Copenhagen")`` or
            ``Schedule(every=timedelta(days=7))``.
        segment: the name of a segment of the flow's programs.
    """

    EVENT_TYPE: ClassVar[str] = "recurring"
    schedule: Schedule
    segment: str

    def __post_init__(self) -> None:
        _require(
            isinstance(self.schedule, Schedule),
            "Recurring",
            "schedule must be a Schedule(cron=..., timezone=...) or Schedule(every=...)",
        )
        _require(
            self.schedule.anchor == "program",
            "Recurring",
            "a schedule's anchor applies to tier maintenance only",
        )
        _text(self.segment, "Recurring", "segment")

    def matches(self, event: ev.BaseEvent) -> bool:
        """A run of this flow's schedule over this segment."""
        return isinstance(event, ev.RecurringRun) and event.segment == self.segment

    def _params(self) -> list[str]:
        return [str(self.schedule), f"segment={self.segment!r}"]


@dataclass(frozen=True)
class PointsDeposit(Trigger):
    """Points given through the API, optionally only of one kind or account."""

    EVENT_TYPE: ClassVar[str] = "points_deposit"
    kind: str | None = None
    account: str | None = None

    def __post_init__(self) -> None:
        _require(
            self.kind in (None, "available", "earned"),
            "PointsDeposit",
            f"kind must be 'available', 'earned' or None, got {self.kind!r}",
        )
        _text(self.account, "PointsDeposit", "account", optional=True)

    def matches(self, event: ev.BaseEvent) -> bool:
        """A deposit of the kind and account, when set."""
        return (
            isinstance(event, ev.PointsDeposit)
            and self.kind in (None, event.kind)
            and self.account in (None, event.account)
        )

    def _params(self) -> list[str]:
        return [
            f"{name}={value}"
            for name, value in (("kind", self.kind), ("account", self.account))
            if value is not None
        ]


@dataclass(frozen=True)
class Activity(Trigger):
    """A named member activity, e.g. ``Activity("web_login")``."""

    EVENT_TYPE: ClassVar[str] = "activity"
    name: str

    def __post_init__(self) -> None:
        _text(self.name, "Activity", "name")

    def matches(self, event: ev.BaseEvent) -> bool:
        """An activity of this name."""
        return isinstance(event, ev.Activity) and event.name == self.name

    def _params(self) -> list[str]:
        return [self.name]


@dataclass(frozen=True)
class Custom(Trigger):
    """Any event type with a predicate written in Python.

    The predicate is a callable, so a `Custom` trigger is not serialisable and compares
    equal to another only with the same function. It runs in the router's batch: it must
    be fast and do no I/O. An unknown ``event_type`` is refused by `check_app`.

    Attributes:
        event_type: the event ``type`` listened to, e.g. ``"purchase"``.
        predicate: called with the event; the journey starts when it returns True.
    """

    event_type: str
    predicate: Callable[[Any], bool]

    def __post_init__(self) -> None:
        _text(self.event_type, "Custom", "event_type")
        _require(callable(self.predicate), "Custom", "predicate must be callable")

    @property
    def event_types(self) -> tuple[str, ...]:
        """The one event type given."""
        return (self.event_type,)

    def matches(self, event: ev.BaseEvent) -> bool:
        """An event of the type for which the predicate holds."""
        return getattr(event, "type", None) == self.event_type and bool(self.predicate(event))

    def _params(self) -> list[str]:
        return [self.event_type, getattr(self.predicate, "__name__", repr(self.predicate))]
