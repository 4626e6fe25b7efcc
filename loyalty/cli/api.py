"""`loyalty api` (the HTTP API alone) and `loyalty api-keys` (create, list, revoke)."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Annotated, Any

import asyncpg
import typer
from rich.table import Table

from loyalty.app import LoyaltyApp
from loyalty.cli.kit import console, on_database, problem, run, settings_of
from loyalty.settings import Settings

keys_cli = typer.Typer(
    name="api-keys",
    help="API keys of the HTTP API: one program each, with scopes; stored hashed.",
    no_args_is_help=True,
)


async def _serve(settings: Settings, app: LoyaltyApp) -> int:
    from loyalty.api.serve import serve_api
    from loyalty.metrics.endpoint import serving_metrics
    from loyalty.store.db import Database, prepare_database

    async with Database(settings) as database:
        await prepare_database(database.dsn, app)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        started: asyncio.Future[str] = loop.create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with serving_metrics(
            settings, port=settings.api_metrics_port, variable="LOYALTY_API_METRICS_PORT"
        ) as metrics_url:
            serving = asyncio.create_task(serve_api(settings, database.dsn, app, stop, started))
            waiting: set[asyncio.Future[Any]] = {serving, started}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if started.done():
                url = started.result()
                console.print(f"HTTP API on {url} (docs: {url}/docs); stop with Ctrl-C",
                              soft_wrap=True)  # fmt: skip
                if metrics_url:
                    console.print(f"metrics on {metrics_url}", soft_wrap=True)
            await serving
    console.print("stopped the HTTP API")
    return 0


def register(cli: typer.Typer) -> None:
    """Add `loyalty api` and `loyalty api-keys` to the command line."""

    @cli.command()
    def api(
        ctx: typer.Context,
        app: Annotated[str | None, typer.Option(help="The LoyaltyApp as module:attr.")] = None,
    ) -> None:
        """Serve the HTTP API on LOYALTY_API_HOST:LOYALTY_API_PORT (default 127.0.0.1:8000).

        Run several behind a load balancer to scale out; each holds one database pool.
        """
        from loyalty.cli.apps import app_for

        settings = settings_of(ctx)
        raise typer.Exit(run(_serve(settings, app_for(settings, app))))

    @keys_cli.command("create")
    def create(
        ctx: typer.Context,
        program: Annotated[str, typer.Option(help="The program the key may use.")],
        scope: Annotated[
            list[str],
            typer.Option(help="events:write, members:read or admin; repeat for several."),
        ],
        name: Annotated[str | None, typer.Option(help="A name to recognise it by.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Create a key and print it once, alone on the last line: it is stored hashed."""
        from loyalty.api.keys import create_key
        from loyalty.errors import InvalidInput

        async def go(conn: asyncpg.Connection) -> int:
            try:
                key, text = await create_key(conn, program, scope, name)
            except InvalidInput as invalid:
                for line in invalid.problems:
                    problem(line)
                return 2
            if as_json:
                print(json.dumps({**key.model_dump(mode="json"), "key": text}))
            else:
                console.print(
                    f"created key {key.id} ({key.name}) for program {key.program}, "
                    f"scopes {', '.join(key.scopes)}; it is shown only now:"
                )
                print(text)
            return 0

        raise typer.Exit(run(on_database(settings_of(ctx), go)))

    @keys_cli.command("list")
    def list_(
        ctx: typer.Context,
        program: Annotated[str | None, typer.Option(help="Only this program's keys.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    ) -> None:
        """List the keys (never their secrets), revoked ones marked."""
        from loyalty.api.keys import list_keys

        async def go(conn: asyncpg.Connection) -> int:
            keys = await list_keys(conn, program)
            if as_json:
                print(json.dumps([k.model_dump(mode="json") for k in keys], indent=2))
                return 0
            table = Table("id", "name", "program", "scopes", "created", "last used", "revoked",
                          title="API keys")  # fmt: skip
            for k in keys:
                table.add_row(
                    k.id, k.name, k.program, " ".join(k.scopes),
                    k.created_at.isoformat(timespec="seconds"),
                    k.last_used_at.isoformat(timespec="seconds") if k.last_used_at else "-",
                    k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-",
                )  # fmt: skip
            console.print(table)
            if not keys:
                console.print("no API keys")
            return 0

        raise typer.Exit(run(on_database(settings_of(ctx), go)))

    @keys_cli.command("revoke")
    def revoke(
        ctx: typer.Context,
        key_id: Annotated[str, typer.Argument(help="The key's id (or the whole key).")],
    ) -> None:
        """Revoke a key: every API process refuses it within LOYALTY_API_KEY_CACHE_SECONDS."""
        from loyalty.api.keys import revoke_key

        async def go(conn: asyncpg.Connection) -> int:
            key = await revoke_key(conn, key_id)
            if key is None:
                problem(f"key: no API key {key_id!r}")
                return 2
            console.print(f"revoked key {key.id} ({key.name}) of program {key.program}")
            return 0

        raise typer.Exit(run(on_database(settings_of(ctx), go)))

    cli.add_typer(keys_cli)
