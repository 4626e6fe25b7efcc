"""Where the engine's state lives: PostgreSQL connections, migrations, local servers.

Owns the connection helpers (`db`: one pool per process, JSON codecs, `Database` that
resolves ``LOYALTY_DATABASE_URL`` or the embedded server, `prepare_database`), the
versioned SQL migrations (`migrate`, ``migrations/``), the app each deployment's worker
runs, recorded for the other commands (`apps`), and the servers that `loyalty dev` and
the tests start on one machine (`embedded`: PostgreSQL and the Temporal dev server;
`pids`: which process runs and owns each, so that one left behind is found again).
May import only the definitions at the top of `loyalty` (settings, errors, app); every
other part of the engine imports it. Re-exports nothing: import its modules.
"""
