"""The user's application: programs (and, from the flows issue on, flows).

A module exposes a ``LoyaltyApp``, loaded by ``--app module:attr`` or ``LOYALTY_APP``,
the way uvicorn loads an ASGI app.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from datetime import timedelta

from pydantic import BaseModel, ConfigDict, Field

from loyalty.errors import ConfigurationError
from loyalty.events import CurrencyName, ProgramName


class Program(BaseModel):
    """A loyalty program: its own members, currencies and ledger.

    Attributes:
        name: identifier used in events (``program`` field) and workflow ids.
        currencies: point currencies the ledger accepts, e.g. ``points`` and ``tier_points``.
        earned_waiting_period: how long ``earned`` points given through the API wait
            before they become available.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ProgramName
    currencies: tuple[CurrencyName, ...] = Field(("points",), min_length=1)
    earned_waiting_period: timedelta = timedelta(days=14)


class LoyaltyApp:
    """Programs and flows, checked when the app is created."""

    def __init__(self, programs: Sequence[Program] = (), flows: Sequence[type] = ()) -> None:
        self.programs: dict[str, Program] = {}
        for program in programs or [Program(name="default")]:
            if program.name in self.programs:
                raise ConfigurationError(f"program {program.name!r} is defined twice")
            self.programs[program.name] = program
        self.flows = list(flows)

    def program(self, name: str) -> Program | None:
        """The program of that name, if defined."""
        return self.programs.get(name)


def load_app(spec: str | None) -> LoyaltyApp:
    """Import ``module:attr`` and return the LoyaltyApp it names (default: one program).

    Raises:
        ConfigurationError: the module, attribute or type is wrong.
    """
    if not spec:
        return LoyaltyApp()
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"app {spec!r}: expected 'module:attribute'")
    # Like uvicorn: a module in the current folder is importable, as a user expects.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"app {spec!r}: cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr, None)
    if not isinstance(app, LoyaltyApp):
        raise ConfigurationError(f"app {spec!r}: {attr!r} is not a LoyaltyApp")
    return app
