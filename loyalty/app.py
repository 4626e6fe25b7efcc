"""The user's application: programs (and, from the flows issue on, flows).

A module exposes a ``LoyaltyApp``, loaded by ``--app module:attr`` or ``LOYALTY_APP``,
the way uvicorn loads an ASGI app.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from loyalty.errors import ConfigurationError, InvalidSegments, InvalidStreams
from loyalty.events import CurrencyName, ProgramName
from loyalty.messages.providers import Messages
from loyalty.policies import ExpiryPolicy, NoExpiry, ReturnPolicy, lot_expiry, zone_name
from loyalty.rules import EarnRule, check_rules
from loyalty.segments.spec import Segment, check_segments
from loyalty.streams.spec import ProfileStream, check_streams
from loyalty.tiers.schemes import Schedule, TierScheme, check_schemes


class PointValue(BaseModel):
    """What one point is worth in money: turns the liability into money in `loyalty report`.

    Attributes:
        amount: money per point, a `Decimal` greater than zero (``Decimal("0.01")``); a
            float is refused, as everywhere money is handled.
        currency: the money's ISO 4217 code, three capital letters (``EUR``).
        points: the program's point currency this values (default: its first currency);
            other point currencies (``tier_points``) are shown in points only.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: Decimal = Field(gt=0, max_digits=18, decimal_places=8)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    points: CurrencyName | None = None

    @field_validator("amount", mode="before")
    @classmethod
    def _no_float(cls, value: object) -> object:
        if isinstance(value, float):
            raise ValueError("give the amount as a Decimal or a string, not a float")
        return value


class Program(BaseModel):
    """A loyalty program: its own members, currencies and ledger.

    Attributes:
        name: identifier used in events (``program`` field) and workflow ids.
        currencies: point currencies the ledger accepts, e.g. ``points`` and ``tier_points``.
        earned_waiting_period: how long ``earned`` points given through the API wait
            before they become available.
        expiry: expiry policy per currency (see `loyalty.policies`); a currency without
            one never expires.
        return_policy: what happens to points of a returned order that were already
            spent: ``debt`` or ``forgive``.
        earn_rules: points for purchases, activities and referrals (see `loyalty.rules`);
            names unique, currencies among ``currencies``.
        tier_schemes: ordered tiers on qualifying points (see `loyalty.tiers`); the
            first scheme is the one ``members.tier`` holds.
        housekeeping: when the program's housekeeping loop runs (maturing, expiry,
            ``bonus_expiring`` reminders, pruning; see `workflows.housekeeping`): every
            day by default; its ``anchor`` does not apply.
        messages: the provider of each message channel (see `loyalty.messages`); by
            default everything goes to the ``log`` provider. Not stored in the database.
        timezone: the program's IANA time zone (default ``UTC``): it defines the day of
            a ``bonus_expiring`` reminder (one per member, currency and expiry day) and
            where a `loyalty.policies.FixedDate` day ends.
        point_value: what a point of one currency is worth in money (`PointValue`), for
            `loyalty report` and ``--history``; none by default (points only).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ProgramName
    currencies: tuple[CurrencyName, ...] = Field(("points",), min_length=1)
    earned_waiting_period: timedelta = timedelta(days=14)
    expiry: dict[CurrencyName, ExpiryPolicy] = Field(default_factory=dict)
    return_policy: ReturnPolicy = "debt"
    earn_rules: tuple[EarnRule, ...] = ()
    tier_schemes: tuple[TierScheme, ...] = ()
    housekeeping: Schedule = Schedule()
    messages: Messages = Messages()
    timezone: str = "UTC"
    point_value: PointValue | None = None

    @field_validator("timezone")
    @classmethod
    def _iana_time_zone(cls, name: str) -> str:
        return zone_name(name, "timezone")

    @model_validator(mode="after")
    def _known_currencies(self) -> Program:
        unknown = sorted(set(self.expiry) - set(self.currencies))
        if unknown:
            raise ValueError(f"expiry names unknown currencies: {', '.join(unknown)}")
        valued = self.point_value.points if self.point_value else None
        if valued is not None and valued not in self.currencies:
            raise ValueError(f"point_value names an unknown currency: {valued}")
        problems = check_rules(self.earn_rules, self.currencies)
        problems += check_schemes(self.tier_schemes, self.currencies)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def expiry_for(self, currency: str) -> ExpiryPolicy:
        """The expiry policy of a currency (never, when none is set)."""
        return self.expiry.get(currency, NoExpiry())

    def lot_expiry(self, currency: str, earned_at: datetime) -> datetime | None:
        """When a lot of ``currency`` earned at ``earned_at`` expires (None: not by date),
        by the currency's policy in the program's time zone."""
        return lot_expiry(self.expiry_for(currency), earned_at, self.timezone)

    def config(self) -> dict[str, object]:
        """The settings stored with the program in the database (JSON).

        ``messages`` stays out: it is the worker's outbound configuration (URLs, names of
        secret variables, headers), not something the ledger's SQL needs.
        """
        return self.model_dump(mode="json", exclude={"name", "messages"})


@dataclass(frozen=True)
class AppSource:
    """Where `load_app` found an app: what a worker records for the other commands.

    Attributes:
        spec: ``module:attr``, or None for the default app (one program, ``default``).
        folder: the current folder when it was loaded, from which its module imports.
    """

    spec: str | None
    folder: str


class LoyaltyApp:
    """Programs, segments, profile streams, flows and the folder of message templates,
    checked when the app is created (segments: `loyalty.segments.spec.check_segments`;
    streams: `loyalty.streams.spec.check_streams`; flows when the worker starts,
    `loyalty.flows.check_app`).

    ``templates``: a folder of Jinja2 files ``<template>.j2`` (see `loyalty.messages.templates`),
    usually next to the flows: ``Path(__file__).parent / "templates"``. Without it,
    messages carry no rendered body.

    ``source`` is set by `load_app` (None for an app built in code and passed directly):
    the worker records it, so that other commands find the app it runs.
    """

    def __init__(
        self,
        programs: Sequence[Program] = (),
        flows: Sequence[type] = (),
        templates: Path | str | None = None,
        segments: Sequence[Segment] = (),
        streams: Sequence[ProfileStream] = (),
    ) -> None:
        self.templates = Path(templates) if templates is not None else None
        self.programs: dict[str, Program] = {}
        for program in programs or [Program(name="default")]:
            if program.name in self.programs:
                raise ConfigurationError(f"program {program.name!r} is defined twice")
            self.programs[program.name] = program
        problems = check_segments(segments, self.programs)  # type: ignore[arg-type]
        if problems:
            raise InvalidSegments(problems)
        self.segments: dict[str, dict[str, Segment]] = {name: {} for name in self.programs}
        for segment in segments:
            self.segments[segment.program][segment.name] = segment
        problems = check_streams(streams, self.programs, self.segments)
        if problems:
            raise InvalidStreams(problems)
        self.streams: dict[str, ProfileStream] = {s.name: s for s in streams}
        self.flows = list(flows)
        self.source: AppSource | None = None

    def program(self, name: str) -> Program | None:
        """The program of that name, if defined."""
        return self.programs.get(name)

    def segment(self, program: str, name: str) -> Segment | None:
        """The segment ``name`` of ``program``, if defined."""
        return self.segments.get(program, {}).get(name)


def load_app(spec: str | None, folder: str | None = None) -> LoyaltyApp:
    """Import ``module:attr`` and return the LoyaltyApp it names (default: one program).

    Args:
        spec: ``module:attr``; None or empty for the default app.
        folder: a folder to import the module from, besides the current one (the folder
            a worker recorded, `loyalty.store.apps`).

    Raises:
        ConfigurationError: the module, attribute or type is wrong.
    """
    here = os.getcwd()
    if not spec:
        app = LoyaltyApp()
        app.source = AppSource(spec=None, folder=here)
        return app
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"app {spec!r}: expected 'module:attribute'")
    # Like uvicorn: a module in the current folder is importable, as a user expects.
    for path in (here, folder):
        if path is not None and path not in sys.path:
            sys.path.insert(0, path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"app {spec!r}: cannot import {module_name!r}: {exc}") from exc
    found = getattr(module, attr, None)
    if not isinstance(found, LoyaltyApp):
        raise ConfigurationError(f"app {spec!r}: {attr!r} is not a LoyaltyApp")
    # The folder the module was found from: a second shell elsewhere imports it from there.
    found.source = AppSource(spec=spec, folder=folder or here)
    return found
