"""What every `loyalty` command shares: consoles, settings, running a coroutine."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import typer
from rich.console import Console

from loyalty.app import LoyaltyApp, load_app
from loyalty.errors import ConfigurationError
from loyalty.flows import check_app
from loyalty.settings import Settings

console = Console()
# Problems are one line each, whatever the width: scripts count and parse them.
errors = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


def problem(message: str) -> None:
    """Print one problem line on stderr, as ``error: <message>``."""
    errors.print(f"error: {message}", markup=False, highlight=False)


def report(exc: ConfigurationError) -> None:
    """Print a configuration error, one line per problem when it lists several."""
    for line in getattr(exc, "problems", None) or [str(exc)]:
        problem(line)


def settings_of(ctx: typer.Context) -> Settings:
    """The settings loaded once by the command line's callback."""
    settings: Settings = ctx.obj
    return settings


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine; a configuration problem exits with code 2."""
    try:
        return asyncio.run(coro)
    except ConfigurationError as exc:
        report(exc)
        raise typer.Exit(2) from None


def app_or_exit(settings: Settings, spec: str | None) -> LoyaltyApp:
    """The app named by ``--app`` or ``LOYALTY_APP``; a bad one exits with code 2.

    Its flows are checked here, before any server starts (`loyalty.flows.check_app`).
    """
    try:
        app = load_app(spec or settings.app)
        check_app(app)
        return app
    except ConfigurationError as exc:
        report(exc)
        raise typer.Exit(2) from None
