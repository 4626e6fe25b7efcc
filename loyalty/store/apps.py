"""The app each deployment's worker runs, recorded for the other commands.

`loyalty worker` and `loyalty dev` load an app by ``module:attr`` (or the default app)
and, at start, record it with the folder its module imports from, under the task queue
(``worker_apps``, migration 0017). A command in another shell on the same home or
database that needs the app (`loyalty flows`, `maintenance`, `housekeeping run`,
`adjust`) reads it back when it is given neither ``--app`` nor ``LOYALTY_APP``. The
database, not a file under ``LOYALTY_HOME``, holds it, so a worker on another machine
against the same ``LOYALTY_DATABASE_URL`` is found as well.
"""

from __future__ import annotations

import asyncpg

from loyalty.app import AppSource
from loyalty.store.db import Conn


async def record_app(conn: Conn, task_queue: str, source: AppSource) -> None:
    """Record the app the worker of ``task_queue`` runs (the latest start wins)."""
    await conn.execute(
        """INSERT INTO worker_apps (task_queue, app, folder) VALUES ($1, $2, $3)
           ON CONFLICT (task_queue) DO UPDATE
           SET app = EXCLUDED.app, folder = EXCLUDED.folder, started_at = now()""",
        task_queue, source.spec, source.folder,
    )  # fmt: skip


async def recorded_app(conn: Conn, task_queue: str) -> AppSource | None:
    """The app last recorded for ``task_queue``; None if no worker recorded one.

    A database not migrated yet has recorded nothing.
    """
    try:
        row = await conn.fetchrow(
            "SELECT app, folder FROM worker_apps WHERE task_queue = $1", task_queue
        )
    except asyncpg.UndefinedTableError:
        return None
    if row is None:
        return None
    return AppSource(spec=row["app"], folder=row["folder"])
