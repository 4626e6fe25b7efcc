"""The demo's webhook receiver: a local stand-in for a marketing platform.

A small HTTP server on 127.0.0.1 that checks each request's ``X-Loyalty-Signature``
with the secret of the webhook provider (`loyalty.messages.verify_signature`), as a real
receiver would, and records what it accepted or refused.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from loyalty.messages import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, InvalidSignature
from loyalty.messages import verify_signature as check_signature


@dataclass(frozen=True)
class Received:
    """One request the webhook receiver accepted (``body``) or refused (``error``)."""

    body: dict[str, Any]
    idempotency_key: str | None
    error: str | None = None


class WebhookReceiver:
    """A local stand-in for the marketing platform: verifies and records webhook POSTs."""

    def __init__(self, port: int, secret: str) -> None:
        self.port = port
        self._secret = secret
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def received(self) -> list[Received]:
        """Every request so far, in arrival order."""
        with self._lock:
            return list(self._received)

    def _record(self, item: Received) -> None:
        with self._lock:
            self._received.append(item)

    def start(self) -> None:
        """Listen on 127.0.0.1; raises OSError when the port is taken."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get(IDEMPOTENCY_HEADER)
                try:
                    body = check_signature(
                        raw, self.headers.get(SIGNATURE_HEADER), receiver._secret
                    )
                except (InvalidSignature, ValueError) as exc:
                    receiver._record(Received({}, key, error=str(exc)))
                    self.send_response(401)
                    self.end_headers()
                    return
                receiver._record(Received(dict(body), key))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"ok":true}')

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the live table shows what arrived."""

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="demo-webhook", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop listening and wait for the server thread."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
