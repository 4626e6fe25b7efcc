"""`loyalty schedules`: the Temporal Schedules of recurring flows: list, pause, resume, trigger.

Each command maps onto Temporal's own schedule operations (describe, pause, unpause,
trigger), on the Schedules the worker of this task queue keeps (`loyalty.flows.schedules`).
A Schedule is named by its flow (and ``--program`` when the flow runs in several) or by
its id. An unknown flow or Schedule id exits 2; Temporal down exits 3, as does a flow of
the app whose Schedule no worker has created yet.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from temporalio.client import Client, ScheduleActionStartWorkflow, ScheduleOverlapPolicy
from temporalio.service import RPCError, RPCStatusCode

from loyalty.app import LoyaltyApp
from loyalty.cli.apps import app_for
from loyalty.cli.kit import console, problem, run, settings_of
from loyalty.errors import ServiceUnavailable
from loyalty.flows import check_app
from loyalty.flows.schedules import DEFINITION, PREFIX, decode_memo, of_task_queue, wanted_schedules
from loyalty.settings import Settings
from loyalty.triggers import Recurring
from workflows.recurring import recurring_id

AppOption = Annotated[
    str | None,
    typer.Option("--app", help="The LoyaltyApp as module:attr (default: the worker's app)."),
]
ProgramOption = Annotated[
    str | None, typer.Option(help="The program (needed when the flow runs in several).")
]
NameArgument = Annotated[str, typer.Argument(help="A recurring flow's name, or a Schedule id.")]
# Next run times shown per Schedule.
NEXT_RUNS = 3


def _time(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat().replace("+00:00", "Z")


def schedule_id_or_exit(settings: Settings, app: LoyaltyApp, name: str, program: str | None) -> str:
    """The Schedule id that ``name`` (a flow, or an id) and ``--program`` give; else exit 2."""
    if name.startswith(PREFIX):
        return name
    recurring = [s for s in check_app(app) if isinstance(s.trigger, Recurring)]
    spec = next((s for s in recurring if s.name == name), None)
    if spec is None:
        known = ", ".join(s.name for s in recurring) or "none"
        problem(f"flow: no recurring flow {name!r}; recurring flows: {known}")
        raise typer.Exit(2)
    programs = [p for p in app.programs if spec.applies_to(p)]
    if program is None and len(programs) == 1:
        program = programs[0]
    if program not in programs:
        given = f"program {program!r} is not one of" if program else "give --program, one of"
        problem(f"program: flow {name!r} runs in several programs; {given} {', '.join(programs)}")
        raise typer.Exit(2)
    assert program is not None
    return recurring_id(settings.task_queue, program, name)


async def describe_schedules(client: Client, ids: list[str]) -> list[dict[str, Any]]:
    """One row per Schedule that exists: flow, program, segment, schedule, state, runs."""
    rows = []
    for schedule_id in ids:
        try:
            described = await client.get_schedule_handle(schedule_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                continue
            raise
        memo = await described.memo()
        action = described.schedule.action
        definition = (
            (await decode_memo(client, action.memo)).get(DEFINITION) or {}
            if isinstance(action, ScheduleActionStartWorkflow)
            else {}
        )
        info = described.info
        last = info.recent_actions[-1] if info.recent_actions else None
        rows.append({
            "id": schedule_id,
            "flow": memo.get("flow"),
            "program": memo.get("program"),
            "segment": memo.get("segment"),
            "schedule": definition.get("schedule"),
            "paused": described.schedule.state.paused,
            "note": described.schedule.state.note,
            "next_runs": [_time(at) for at in info.next_action_times[:NEXT_RUNS]],
            "runs": info.num_actions,
            "last_run": None if last is None else {
                "scheduled_at": _time(last.scheduled_at),
                "started_at": _time(last.started_at),
                "workflow_id": getattr(last.action, "workflow_id", None),
            },
        })  # fmt: skip
    return rows


def _table(rows: list[dict[str, Any]], task_queue: str) -> Table:
    columns = (
        "flow",
        "program",
        "segment",
        "schedule",
        "state",
        "next runs (UTC)",
        "last run (UTC)",
    )
    table = Table(*columns, title=f"Recurring flows on task queue {task_queue}")
    for r in rows:
        last = r["last_run"]
        table.add_row(
            r["flow"], r["program"], r["segment"], r["schedule"] or "?",
            "paused" if r["paused"] else "active",
            "\n".join(at.replace("T", " ").removesuffix("Z") for at in r["next_runs"]) or "-",
            last["scheduled_at"].replace("T", " ").removesuffix("Z") if last else "-",
        )  # fmt: skip
    return table


async def _connect(settings: Settings) -> Client:
    from loyalty.temporal import connect_temporal

    return await connect_temporal(settings)


def register(cli: typer.Typer) -> None:
    """Add `loyalty schedules` to the command line."""
    schedules = typer.Typer(help="Temporal Schedules of recurring flows: list, pause, resume, "
                            "trigger.")  # fmt: skip
    cli.add_typer(schedules, name="schedules")

    @schedules.command("list")
    def list_(
        ctx: typer.Context,
        program: Annotated[str | None, typer.Option(help="Only this program's.")] = None,
        app_spec: AppOption = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    ) -> None:
        """The Schedules of this task queue: flow, segment, schedule, state, next and last runs."""
        settings = settings_of(ctx)
        app = app_for(settings, app_spec)
        if program is not None and app.program(program) is None:
            problem(f"program: unknown program {program!r}; known: {', '.join(app.programs)}")
            raise typer.Exit(2)

        async def go() -> int:
            client = await _connect(settings)
            # The app's, and any other of the task queue (a flow removed since the worker
            # started); the listing alone may lag behind a Schedule just created.
            ids = [w.id for w in wanted_schedules(app, settings.task_queue)]
            async for listed in await client.list_schedules():
                if of_task_queue(listed.id, settings.task_queue) and listed.id not in ids:
                    ids.append(listed.id)
            rows = [
                r for r in await describe_schedules(client, ids)
                if program in (None, r["program"])
            ]  # fmt: skip
            if as_json:
                print(json.dumps(rows, indent=2))
            elif rows:
                console.print(_table(rows, settings.task_queue))
            else:
                console.print(f"no recurring flow schedules on task queue {settings.task_queue!r}")
            return 0

        raise typer.Exit(run(go()))

    def _act(ctx: typer.Context, name: str, program: str | None, app_spec: str | None,
             action: str) -> None:  # fmt: skip
        settings = settings_of(ctx)
        given_id = name.startswith(PREFIX)
        app = LoyaltyApp() if given_id else app_for(settings, app_spec)
        schedule_id = schedule_id_or_exit(settings, app, name, program)

        async def go() -> int:
            handle = (await _connect(settings)).get_schedule_handle(schedule_id)
            try:
                if action == "paused":
                    await handle.pause(note="paused with loyalty schedules pause")
                elif action == "resumed":
                    await handle.unpause(note="resumed with loyalty schedules resume")
                else:
                    # A run for now, beside one that may still be starting journeys.
                    await handle.trigger(overlap=ScheduleOverlapPolicy.ALLOW_ALL)
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                if given_id:
                    problem(f"schedule: no Schedule {schedule_id!r}")
                    return 2
                raise ServiceUnavailable(
                    "worker",
                    f"no Schedule {schedule_id!r} yet: start a worker on task queue "
                    f"{settings.task_queue!r} (loyalty worker, loyalty dev)",
                ) from None
            console.print(f"schedule {schedule_id}: {action}", soft_wrap=True)
            return 0

        raise typer.Exit(run(go()))

    @schedules.command("pause")
    def pause(ctx: typer.Context, name: NameArgument, program: ProgramOption = None,
              app_spec: AppOption = None) -> None:  # fmt: skip
        """Pause the Schedule: no run starts until it is resumed."""
        _act(ctx, name, program, app_spec, "paused")

    @schedules.command("resume")
    def resume(ctx: typer.Context, name: NameArgument, program: ProgramOption = None,
               app_spec: AppOption = None) -> None:  # fmt: skip
        """Resume a paused Schedule: runs start again at its next times."""
        _act(ctx, name, program, app_spec, "resumed")

    @schedules.command("trigger")
    def trigger(ctx: typer.Context, name: NameArgument, program: ProgramOption = None,
                app_spec: AppOption = None) -> None:  # fmt: skip
        """Start a run now (its scheduled time is now), even while the Schedule is paused."""
        _act(ctx, name, program, app_spec, "triggered")
