"""The demo's webhook receiver: a local stand-in for a marketing platform.

A small HTTP server on 127.0.0.1 that checks each request as a real receiver should
(`loyalty.messages.verify_signature`): the ``X-Loyalty-Signature`` of the raw body with
the webhook provider's secret, the signed ``sent_at`` against a 5-minute window, and the
``Idempotency-Key`` header against the signed ``idempotency_key``. It acts once per
signed key: a retry or a replay within the window is answered 200 and recorded as a
duplicate. It records what it accepted or refused.
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
    """One request the webhook receiver accepted (``body``) or refused (``error``).

    ``idempotency_key`` is the signed key of an accepted request, the header of a refused
    one; ``duplicate`` marks a request whose signed key was already processed.
    """

    body: dict[str, Any]
    idempotency_key: str | None
    error: str | None = None
    duplicate: bool = False


class WebhookReceiver:
    """A local stand-in for the marketing platform: verifies and records webhook POSTs."""

    def __init__(self, port: int, secret: str) -> None:
        self.port = port
        self._secret = secret
        self._lock = threading.Lock()
        self._received: list[Received] = []
        # Signed keys processed. The demo runs for minutes; a real receiver keeps keys
        # for at least the signature's window (older requests are refused as stale).
        self._seen: set[str] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def received(self) -> list[Received]:
        """Every request so far, in arrival order."""
        with self._lock:
            return list(self._received)

    def _record(self, item: Received) -> None:
        with self._lock:
            self._received.append(item)

    def _accept(self, body: dict[str, Any]) -> bool:
        """Record an accepted request; False when its signed key was processed already."""
        key = str(body["idempotency_key"])
        with self._lock:
            duplicate = key in self._seen
            self._seen.add(key)
            self._received.append(Received(body, key, duplicate=duplicate))
        return not duplicate

    def start(self) -> None:
        """Listen on 127.0.0.1; raises OSError when the port is taken."""
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.headers.get(IDEMPOTENCY_HEADER)
                try:
                    body = check_signature(
                        raw, self.headers.get(SIGNATURE_HEADER), receiver._secret,
                        idempotency_key=key,
                    )  # fmt: skip
                except (InvalidSignature, ValueError) as exc:
                    receiver._record(Received({}, key, error=str(exc)))
                    self.send_response(401)
                    self.end_headers()
                    return
                # A duplicate gets the same answer: the sender must stop retrying.
                receiver._accept(dict(body))
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
