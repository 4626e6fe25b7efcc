"""`loyalty flows`: the app's flows, with journey counts from Temporal visibility."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import typer
from rich.table import Table
from temporalio.service import RPCError

from loyalty.cli.apps import app_for
from loyalty.cli.kit import console, errors, settings_of
from loyalty.errors import ServiceUnavailable
from loyalty.flows import FlowSpec, check_app
from loyalty.settings import Settings
from loyalty.temporal import FLOW, connect_temporal

# Seconds to reach Temporal before listing the flows without counts.
CONNECT_TIMEOUT = 5.0
# Journey states as columns, each a visibility filter on ExecutionStatus.
STATES = {
    "running": 'ExecutionStatus = "Running"',
    "completed": 'ExecutionStatus = "Completed"',
    "failed": '(ExecutionStatus = "Failed" OR ExecutionStatus = "TimedOut")',
}


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def journey_counts(settings: Settings, specs: list[FlowSpec]) -> dict[str, list[int]]:
    """Journeys per flow name and state (in `STATES` order), on this deployment's queue.

    Raises:
        ServiceUnavailable, TimeoutError, RPCError: Temporal cannot be reached.
    """
    async with asyncio.timeout(CONNECT_TIMEOUT):
        client = await connect_temporal(settings)

    async def count(spec: FlowSpec, state: str) -> int:
        query = (
            f"{FLOW.name} = {_quoted(spec.name)} AND TaskQueue = {_quoted(settings.task_queue)}"
            f" AND {state}"
        )
        return (await client.count_workflows(query)).count

    async with asyncio.timeout(CONNECT_TIMEOUT * 2):
        found = await asyncio.gather(
            *(count(spec, state) for spec in specs for state in STATES.values())
        )
    width = len(STATES)
    return {spec.name: found[i * width : (i + 1) * width] for i, spec in enumerate(specs)}


def _as_json(
    specs: list[FlowSpec], programs: list[str], counts: dict[str, list[int]] | None
) -> str:
    """The flows as a JSON array; ``journeys`` is null when Temporal did not answer."""
    listed = [
        {
            "name": spec.name,
            "workflow": spec.cls.__name__,
            "trigger": str(spec.trigger),
            "entry": str(spec.entry),
            "programs": list(spec.programs) if spec.programs is not None else programs,
            "journeys": dict(zip(STATES, counts[spec.name], strict=True))
            if counts is not None
            else None,
        }
        for spec in specs
    ]
    return json.dumps(listed, indent=2)


def register(cli: typer.Typer) -> None:
    """Add `loyalty flows` to the command line."""

    @cli.command()
    def flows(
        ctx: typer.Context,
        app_spec: Annotated[
            str | None,
            typer.Option(
                "--app", help="The LoyaltyApp as module:attr (default: the worker's app)."
            ),
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    ) -> None:
        """List the app's flows: trigger, entry policy, programs and journey counts."""
        settings = settings_of(ctx)
        app = app_for(settings, app_spec)
        specs = check_app(app)
        counts: dict[str, list[int]] | None = None
        if specs:
            address = settings.effective_temporal_address
            try:
                # Not kit.run: Temporal unavailable is a warning here, not exit code 3.
                counts = asyncio.run(journey_counts(settings, specs))
            except (ServiceUnavailable, TimeoutError, RuntimeError, OSError, RPCError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                reason = reason.removeprefix(f"Temporal at {address} is unavailable: ")
                errors.print(
                    f"warning: journey counts unavailable, Temporal at "
                    f"{address} did not answer: {reason}",
                    markup=False,
                    highlight=False,
                )
        if as_json:
            print(_as_json(specs, list(app.programs), counts))
            return
        table = Table("flow", "trigger", "entry", "programs", *STATES, title="Flows")
        for spec in specs:
            shown = counts[spec.name] if counts is not None else None
            table.add_row(
                spec.name,
                str(spec.trigger),
                str(spec.entry),
                spec.describe_programs(),
                *(str(n) if shown is not None else "?" for n in (shown or [0] * len(STATES))),
            )
        console.print(table)
        if not specs:
            console.print("no flows defined")
