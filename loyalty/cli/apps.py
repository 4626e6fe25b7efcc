"""The app of a command that needs one: ``--app``, ``LOYALTY_APP``, or the worker's.

A second shell should not have to repeat the ``--app`` that `loyalty dev` or `loyalty
worker` was started with: without ``--app`` and ``LOYALTY_APP``, the commands that need
the app (`flows`, `maintenance`, `housekeeping run`, `adjust`) load the one the worker
of the same task queue recorded in the database at its start (`loyalty.store.apps`),
from the folder it recorded; with no record, the default app (one program, `default`).
"""

from __future__ import annotations

import typer

from loyalty.app import AppSource, LoyaltyApp, load_app
from loyalty.cli.kit import app_or_exit, problem, run
from loyalty.errors import ConfigurationError
from loyalty.flows import check_app
from loyalty.settings import Settings


async def _recorded(settings: Settings) -> AppSource | None:
    from loyalty.store.apps import recorded_app
    from loyalty.store.db import Database, connect

    if settings.database_url is None and not (settings.home / "postgres").exists():
        return None  # no database here yet: no worker ever ran on this home
    async with Database(settings) as database:
        conn = await connect(database.dsn)
        try:
            return await recorded_app(conn, settings.task_queue)
        finally:
            await conn.close()


def app_for(settings: Settings, spec: str | None) -> LoyaltyApp:
    """The app named by ``--app`` or ``LOYALTY_APP``, else the one the worker runs.

    A recorded app that cannot be loaded here (its module is not importable from this
    machine) exits with code 2, naming it; so does a bad ``--app``.
    """
    if spec or settings.app:
        return app_or_exit(settings, spec)
    source = run(_recorded(settings))
    if source is None or source.spec is None:
        return app_or_exit(settings, None)
    try:
        app = load_app(source.spec, folder=source.folder)
        check_app(app)
    except ConfigurationError as exc:
        problem(
            f"app: the worker on task queue {settings.task_queue!r} runs {source.spec!r}, "
            f"which cannot be loaded here ({exc}); give --app or LOYALTY_APP"
        )
        raise typer.Exit(2) from None
    return app
