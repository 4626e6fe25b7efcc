"""Commands of the audit part of the command line (being written)."""

from __future__ import annotations

import typer


def register(cli: typer.Typer) -> None:
    """Add this module's commands to the command line."""
