"""The demo's marketing list: a local stand-in for a marketing tool's profile list.

A small HTTP server on 127.0.0.1 that receives a profile stream's batches
(`loyalty.streams.delivery`) as a real list would: it checks the signature with the
stream's secret (`loyalty.messages.verify_signature`), acts once per signed idempotency
key (a retry of a batch it applied is answered 200 again), applies the deletes, then
merges each upsert's fields into the contact of its key. A delete removes the loyalty
fields, not the contact: the contact stays, with no fields.

For tests it can refuse a share of requests with a 503 (``fail_rate``, before applying
anything), refuse named keys record by record in a 207 (``reject``), and be stopped and
started again on the same port, keeping its list as a real service keeps its database.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from examples.messaging import LIST_PATH
from loyalty.messages import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, InvalidSignature
from loyalty.messages import verify_signature as check_signature


@dataclass
class Contact:
    """A contact of the list: its loyalty fields and the batches that changed it."""

    fields: dict[str, Any] = field(default_factory=dict)
    batches: list[int] = field(default_factory=list)


class MarketingList:
    """Receives a stream's batches and keeps the list (see the module).

    Attributes:
        port: where it listens on 127.0.0.1 (0: a free port, set by `start`).
        fail_rate: the share of requests refused with a 503 before anything is applied.
        reject: a function of (key, fields) returning a reason to refuse that record in a
            207 answer, or None to apply it.
    """

    def __init__(
        self,
        secret: str,
        port: int = 0,
        *,
        fail_rate: float = 0.0,
        seed: int = 0,
        reject: Callable[[str, dict[str, Any]], str | None] | None = None,
    ) -> None:
        self.port = port
        self.fail_rate = fail_rate
        self.reject = reject
        self._secret = secret
        self.random = random.Random(seed)
        self._lock = threading.Lock()
        self.contacts: dict[str, Contact] = {}
        # Signed key → the records it carried (a retry must carry the same ones).
        self.keys: dict[str, str] = {}
        self.requests = 0
        self.refused = 0
        self.duplicates = 0
        # Upserts that changed nothing the contact held: records sent again needlessly.
        self.redundant = 0
        self.errors: list[str] = []
        # The bodies applied, in order, and when (unix seconds).
        self.bodies: list[dict[str, Any]] = []
        self.applied_at: list[float] = []
        # Cleared, requests wait at it before being read (a test holds a batch in flight).
        self.gate = threading.Event()
        self.gate.set()
        self.arrived = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The URL a stream's destination posts to."""
        return f"http://127.0.0.1:{self.port}{LIST_PATH}"

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every contact that holds loyalty fields: key → fields."""
        with self._lock:
            return {k: dict(c.fields) for k, c in self.contacts.items() if c.fields}

    def _apply(
        self, raw: bytes, header_key: str | None, signature: str | None
    ) -> tuple[int, bytes]:
        with self._lock:
            self.arrived += 1
        self.gate.wait()
        try:
            body = check_signature(raw, signature, self._secret, idempotency_key=header_key)
        except (InvalidSignature, ValueError) as exc:
            with self._lock:
                self.errors.append(str(exc))
            return 401, json.dumps({"error": str(exc)}).encode()
        key = str(body["idempotency_key"])
        records = json.dumps([body.get("upserts"), body.get("deletes")], sort_keys=True)
        with self._lock:
            self.requests += 1
            if self.random.random() < self.fail_rate:
                self.refused += 1
                return 503, b'{"error":"try again"}'
            if key in self.keys:
                self.duplicates += 1
                if self.keys[key] != records:
                    self.errors.append(f"{key} was sent again with other records")
                return 200, b'{"duplicate":true}'
            self.keys[key] = records
            self.bodies.append(dict(body))
            self.applied_at.append(time.time())
            batch = int(body["batch"])  # type: ignore[call-overload]
            rejected = []
            for item in body.get("deletes") or []:  # type: ignore[attr-defined]
                contact = self.contacts.setdefault(item["key"], Contact())
                contact.fields = {}
                contact.batches.append(batch)
            for item in body.get("upserts") or []:  # type: ignore[attr-defined]
                reason = self.reject(item["key"], item["fields"]) if self.reject else None
                if reason is not None:
                    rejected.append({"key": item["key"], "reason": reason})
                    continue
                contact = self.contacts.setdefault(item["key"], Contact())
                if all(contact.fields.get(k, contact) == v for k, v in item["fields"].items()):
                    self.redundant += 1
                contact.fields.update(item["fields"])
                contact.batches.append(batch)
        if rejected:
            return 207, json.dumps({"rejected": rejected}).encode()
        return 200, b'{"ok":true}'

    def start(self) -> None:
        """Listen on 127.0.0.1 (again, after `stop`, on the same port)."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, answer = receiver._apply(
                    raw, self.headers.get(IDEMPOTENCY_HEADER), self.headers.get(SIGNATURE_HEADER)
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the demo's table shows the list."""

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="marketing-list", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and wait for the server thread; the list is kept."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
