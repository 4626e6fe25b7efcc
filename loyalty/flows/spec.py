"""Flows: a trigger, an entry policy and a journey (a Temporal workflow class).

A developer writes::

    @flow(trigger=NewStage(to="gold"), entry=Entry.ONCE_PER_MEMBER)
    @workflow.defn
    class GoldWelcome: ...

and lists the class in ``LoyaltyApp(flows=[...])``. `check_app` refuses wrong definitions
at start-up, all problems at once; `journey_id` gives the deterministic workflow id that
makes a trigger delivered twice start one journey.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import ClassVar, Literal, TypeVar
from urllib.parse import quote

from temporalio import workflow
from temporalio.common import WorkflowIDReusePolicy

from loyalty.app import LoyaltyApp
from loyalty.errors import ConfigurationError, InvalidFlows
from loyalty.events import DERIVED_TYPES, INCOMING_TYPES, Origin
from loyalty.messages.templates import check_templates
from loyalty.triggers import NewStage, Recurring, Trigger

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# A journey id once used is never used again while Temporal keeps the closed workflow
# (the namespace's retention period): a trigger delivered twice starts one journey.
JOURNEY_ID_REUSE_POLICY = WorkflowIDReusePolicy.REJECT_DUPLICATE
# The LoyaltyFlow search attribute of the event routers; no flow may take it.
RESERVED_NAMES = frozenset(
    {"event-router", "tier-maintenance", "housekeeping", "EventRouter", "TierMaintenance",
     "Housekeeping"}
)  # fmt: skip
_FLOW_ATTRIBUTE = "__loyalty_flow__"

C = TypeVar("C", bound=type)


def _describe_period(period: timedelta) -> str:
    seconds = int(period.total_seconds())
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


@dataclass(frozen=True)
class Entry:
    """When a member may enter a flow's journey again.

    Use ``Entry.EVERY_TIME`` (one journey per trigger event), ``Entry.ONCE_PER_MEMBER``
    or ``Entry.once_per(timedelta(days=30))`` (one journey per member and period; periods
    are counted in UTC from the Unix epoch, so 30 days is not a calendar month).
    """

    policy: Literal["every_time", "once_per_member", "once_per_period"]
    period: timedelta | None = None

    EVERY_TIME: ClassVar[Entry]
    ONCE_PER_MEMBER: ClassVar[Entry]

    def __post_init__(self) -> None:
        if self.policy not in ("every_time", "once_per_member", "once_per_period"):
            raise ConfigurationError(f"Entry: unknown policy {self.policy!r}")
        if (self.policy == "once_per_period") != (self.period is not None):
            raise ConfigurationError("Entry: a period goes with once_per_period, and only with it")
        if self.period is not None and (
            not isinstance(self.period, timedelta)
            or self.period < timedelta(seconds=1)
            or self.period % timedelta(seconds=1)
        ):
            raise ConfigurationError(
                "Entry.once_per: period must be a whole number of seconds, at least 1, "
                f"got {self.period!r}"
            )

    @classmethod
    def once_per(cls, period: timedelta) -> Entry:
        """One journey per member in each period of this length."""
        return cls("once_per_period", period)

    def period_index(self, occurred_at: datetime) -> int:
        """The number of whole periods between the epoch and ``occurred_at``."""
        assert self.period is not None
        return (occurred_at - EPOCH) // self.period

    def __str__(self) -> str:
        if self.period is not None:
            return f"once per {_describe_period(self.period)}"
        return self.policy.replace("_", " ")


Entry.EVERY_TIME = Entry("every_time")
Entry.ONCE_PER_MEMBER = Entry("once_per_member")


@dataclass(frozen=True)
class FlowSpec:
    """What ``@flow`` records on a workflow class.

    Attributes:
        name: the flow's name: in journey ids and the ``LoyaltyFlow`` search attribute.
        trigger: the events that start a journey.
        entry: how often a member may enter.
        programs: the programs whose events trigger it; None: every program.
        cls: the workflow class.
    """

    name: str
    trigger: Trigger
    entry: Entry
    programs: tuple[str, ...] | None
    cls: type

    def applies_to(self, program: str) -> bool:
        """Whether events of this program can trigger the flow."""
        return self.programs is None or program in self.programs

    def describe_programs(self) -> str:
        """``all`` or the program names, for listings."""
        return "all" if self.programs is None else ", ".join(self.programs)


def workflow_name(cls: type) -> str | None:
    # The SDK keeps the definition on the class; there is no public accessor.
    definition = workflow._Definition.from_class(cls)
    return None if definition is None else (definition.name or cls.__name__)


def flow(
    *,
    trigger: Trigger,
    entry: Entry = Entry.EVERY_TIME,
    name: str | None = None,
    program: str | Sequence[str] | None = None,
) -> Callable[[C], C]:
    """Make a Temporal workflow class a flow; place it above ``@workflow.defn``.

    Args:
        trigger: e.g. ``NewStage(to="gold")`` (see `loyalty.triggers`).
        entry: ``Entry.EVERY_TIME`` (default), ``Entry.ONCE_PER_MEMBER`` or
            ``Entry.once_per(period)``.
        name: the flow's name; default: the workflow's name.
        program: a program name or several; default: every program of the app.

    Raises:
        ConfigurationError: a parameter of the wrong kind, naming the class.
    """

    def decorate(cls: C) -> C:
        label = getattr(cls, "__name__", repr(cls))
        if not isinstance(cls, type):
            raise ConfigurationError(f"@flow on {label}: only a workflow class can be a flow")
        if not isinstance(trigger, Trigger):
            raise ConfigurationError(
                f"flow {label!r}: trigger must be a trigger such as NewStage(to='gold'), "
                f"got {trigger!r}"
            )
        if not isinstance(entry, Entry):
            raise ConfigurationError(
                f"flow {label!r}: entry must be Entry.EVERY_TIME, Entry.ONCE_PER_MEMBER "
                f"or Entry.once_per(period), got {entry!r}"
            )
        if name is not None and (not isinstance(name, str) or not name):
            raise ConfigurationError(f"flow {label!r}: name must be a non-empty string")
        programs = (program,) if isinstance(program, str) else program
        if programs is not None and (
            not programs or not all(isinstance(p, str) and p for p in programs)
        ):
            raise ConfigurationError(
                f"flow {label!r}: program must be a program name, a list of them, or None"
            )
        spec = FlowSpec(
            name=name or workflow_name(cls) or cls.__name__,
            trigger=trigger,
            entry=entry,
            programs=None if programs is None else tuple(programs),
            cls=cls,
        )
        setattr(cls, _FLOW_ATTRIBUTE, spec)
        return cls

    return decorate


def flow_spec(cls: object) -> FlowSpec | None:
    """The spec ``@flow`` recorded on this very class (not on a base class), if any."""
    spec = getattr(cls, _FLOW_ATTRIBUTE, None)
    return spec if isinstance(spec, FlowSpec) and spec.cls is cls else None


def check_app(app: LoyaltyApp) -> list[FlowSpec]:
    """The app's flow specs, in order, once every definition is right.

    Also parses the app's message templates (`loyalty.messages.templates.check_templates`).

    Raises:
        InvalidFlows: a `ConfigurationError` with one line per problem, naming the flow
            or the template file.
    """
    problems: list[str] = []
    specs: list[FlowSpec] = []
    known_types = INCOMING_TYPES + DERIVED_TYPES
    for item in app.flows:
        if not isinstance(item, type):
            problems.append(f"flows: {item!r} is not a class; list workflow classes with @flow")
            continue
        spec = flow_spec(item)
        if spec is None:
            problems.append(
                f"flow {item.__name__!r}: no trigger; decorate the class with "
                "@flow(trigger=...) above @workflow.defn"
            )
            continue
        specs.append(spec)
        label = f"flow {spec.name!r}"
        if workflow_name(item) is None:
            problems.append(
                f"{label}: {item.__name__} is not a Temporal workflow; "
                "decorate it with @workflow.defn below @flow"
            )
        if spec.name in RESERVED_NAMES:
            problems.append(f"{label}: the name is reserved for the engine's own workflows")
        for event_type in spec.trigger.event_types:
            if event_type not in known_types:
                problems.append(
                    f"{label}: trigger {spec.trigger} listens to unknown event type "
                    f"{event_type!r}; known types: {', '.join(known_types)}"
                )
        problems += _unknown_tiers(app, spec, label)
        problems += _recurring_problems(app, spec, label)  # recurring flows (issue 15)
        for program in spec.programs or ():
            if app.program(program) is None:
                problems.append(
                    f"{label}: program {program!r} is not defined by the app; "
                    f"programs: {', '.join(app.programs)}"
                )
    by_name: dict[str, list[type]] = {}
    for spec in specs:
        by_name.setdefault(spec.name, []).append(spec.cls)
    for flow_name, classes in by_name.items():
        if len(classes) > 1:
            listed = ", ".join(c.__name__ for c in classes)
            problems.append(
                f"flow {flow_name!r}: {len(classes)} flows have this name ({listed}); "
                "set name= on @flow to tell them apart"
            )
    if app.templates is not None:
        problems += check_templates(app.templates)
    if problems:
        raise InvalidFlows(problems)
    return specs


def _unknown_tiers(app: LoyaltyApp, spec: FlowSpec, label: str) -> list[str]:
    """A ``NewStage`` trigger naming a tier or scheme that no program it applies to has."""
    trigger = spec.trigger
    if not isinstance(trigger, NewStage):
        return []
    schemes = [
        scheme
        for program in app.programs.values()
        if spec.applies_to(program.name)
        for scheme in program.tier_schemes
        if trigger.scheme in (None, scheme.name)
    ]
    if not schemes:
        where = f"scheme {trigger.scheme!r}" if trigger.scheme else "tier scheme"
        return [f"{label}: trigger {trigger} needs a {where} in the programs it applies to"]
    known = {name for scheme in schemes for name in scheme.tier_names()}
    return [
        f"{label}: trigger {trigger}: {param} names unknown tier {tier!r}; "
        f"tiers: {', '.join(sorted(known))}"
        for param, tier in (("to", trigger.to), ("from_", trigger.from_))
        if tier is not None and tier not in known
    ]


# Recurring flows (issue 15): the segment check and the scheduled time in journey ids.
def _recurring_problems(app: LoyaltyApp, spec: FlowSpec, label: str) -> list[str]:
    """A ``Recurring`` trigger naming a segment that a program it applies to lacks; a
    ``recurring`` event listened to by any other trigger (only a schedule starts those)."""
    trigger = spec.trigger
    if not isinstance(trigger, Recurring):
        if Recurring.EVENT_TYPE in trigger.event_types:
            return [
                f"{label}: trigger {trigger}: only a Recurring(schedule=..., segment=...) "
                "trigger starts journeys on recurring events"
            ]
        return []
    return [
        f"{label}: trigger {trigger}: program {program!r} defines no segment "
        f"{trigger.segment!r}; segments: {', '.join(app.segments.get(program, {})) or 'none'}"
        for program in app.programs
        if spec.applies_to(program) and app.segment(program, trigger.segment) is None
    ]


def scheduled_part(at: datetime) -> str:
    """A scheduled time in journey ids: ISO 8601 basic format in UTC, ``20250303T080000Z``
    (microseconds only when there are any); the same instant always gives the same text."""
    utc = at.astimezone(UTC)
    fraction = f".{utc.microsecond:06d}" if utc.microsecond else ""
    return f"{utc:%Y%m%dT%H%M%S}{fraction}Z"


_INDEX: weakref.WeakKeyDictionary[LoyaltyApp, dict[str, list[FlowSpec]]] = (
    weakref.WeakKeyDictionary()
)


def flows_by_type(app: LoyaltyApp) -> dict[str, list[FlowSpec]]:
    """The app's flows indexed by the event types their triggers listen to.

    Checked (``check_app``) and built once per app: the router asks for every event.
    """
    index = _INDEX.get(app)
    if index is None:
        index = {}
        for spec in check_app(app):
            for event_type in spec.trigger.event_types:
                index.setdefault(event_type, []).append(spec)
        _INDEX[app] = index
    return index


def journey_id(
    spec: FlowSpec,
    member_id: str,
    trigger_event_id: str,
    occurred_at: datetime,
    *,
    program: str,
    task_queue: str,
    origin: Origin = "client",
) -> str:
    """The deterministic workflow id of the journey a trigger event starts.

    Every time: (flow, member, trigger event); once per member: (flow, member); once per
    period: (flow, member, period index since the epoch, with the period's length, so
    that changing the period does not reuse old indices). The program is in the id since
    member ids are per program, and the task queue, as in router ids, since it names the
    deployment. The trigger event is ``event/<id>`` for a client event and
    ``engine/<id>`` for a derived one (``origin``): the two have separate id spaces, so
    one id can name two events. A recurring flow's trigger is the scheduled time
    (``occurred_at``), every time: ``scheduled/<time>`` (`scheduled_part`), one journey
    per member and scheduled time. Parts are percent-encoded, so no two inputs give one
    id. Start journeys with `JOURNEY_ID_REUSE_POLICY`.
    """

    def part(text: str) -> str:
        return quote(text, safe="")

    base = f"journey/{part(program)}/{part(spec.name)}/{part(member_id)}"
    entry = spec.entry
    if entry.policy == "every_time" and isinstance(spec.trigger, Recurring):
        base = f"{base}/scheduled/{scheduled_part(occurred_at)}"
    elif entry.policy == "every_time":
        space = "engine" if origin == "engine" else "event"
        base = f"{base}/{space}/{part(trigger_event_id)}"
    elif entry.policy == "once_per_period":
        assert entry.period is not None
        seconds = int(entry.period.total_seconds())
        base = f"{base}/period/{seconds}s-{entry.period_index(occurred_at)}"
    return f"{base}@{task_queue}"
