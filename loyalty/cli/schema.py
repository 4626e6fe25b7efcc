"""`loyalty schema events`: the JSON Schema of the events other services send."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from loyalty.cli.kit import INVALID, problem


def register(cli: typer.Typer) -> None:
    """Add `loyalty schema` to the command line."""
    schema = typer.Typer(help="JSON Schemas of what loyalty-flows accepts.")
    cli.add_typer(schema, name="schema")

    @schema.command()
    def events(
        output: Annotated[
            Path | None,
            typer.Option("--output", "-o", help="Write the schema to this file, not stdout."),
        ] = None,
    ) -> None:
        """Print the JSON Schema (draft 2020-12) of every event type a service may emit.

        One schema: a `oneOf` of the types, with `type` as the discriminator. Exits 2 if
        the output file cannot be written.
        """
        from loyalty.events import events_json_schema

        text = json.dumps(events_json_schema(), indent=2) + "\n"
        if output is None:
            print(text, end="")
            return
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            problem(f"--output: cannot write {output}: {exc.strerror or exc}")
            raise typer.Exit(INVALID) from None
