"""Which process runs a home's local server, and which process owns it, recorded by pid.

A server that `loyalty dev` starts outlives it when it is killed (SIGKILL, a crash): the
Temporal dev server runs in its own session and PostgreSQL as a daemon. A record file in
the home names the server's process and its owner's, each with its start time (a pid
alone can be reused by an unrelated process), so the next start tells a server left
behind (its owner is gone) from one another live process uses, and stops or adopts it.

psutil comes with the servers extra; it is imported where used, so a production install
without that extra still imports the connection helpers.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError


class Proc(BaseModel):
    """A process: its pid and start time (seconds since the epoch, as psutil reports)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    pid: int
    started: float

    @classmethod
    def of(cls, pid: int) -> Proc | None:
        """The process with this pid now, or None if there is none."""
        import psutil

        try:
            return cls(pid=pid, started=psutil.Process(pid).create_time())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    @classmethod
    def current(cls) -> Proc:
        """This process."""
        found = cls.of(os.getpid())
        assert found is not None
        return found

    def alive(self) -> bool:
        """Whether this very process still runs (not a later one with the same pid)."""
        import psutil

        now = Proc.of(self.pid)
        if now is None or now.started != self.started:
            return False
        with contextlib.suppress(psutil.NoSuchProcess):
            return bool(psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE)
        return False

    def is_current(self) -> bool:
        """Whether this is the calling process."""
        return self.pid == os.getpid() and self.alive()


class Record(BaseModel):
    """A home's record of one server: its process (when known) and its owner."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    owner: Proc
    server: Proc | None = None

    @classmethod
    def read(cls, path: Path) -> Record | None:
        """The record in the file, or None if there is none (or it is unreadable)."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return None

    def write(self, path: Path) -> None:
        """Replace the file at once (a reader never sees half a record)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(self.model_dump_json())
        temporary.replace(path)

    @staticmethod
    def remove(path: Path, owner: Proc) -> None:
        """Delete the record if it still names ``owner`` (another may have taken over)."""
        current = Record.read(path)
        if current is not None and current.owner == owner:
            path.unlink(missing_ok=True)
