"""Messages: providers per channel, the webhook's signature, templates, the message log.

Owns `providers` (``Messages``, ``WebhookProvider``, ``LogProvider``: definitions a
program declares, with signing and secrets), `templates` (sandboxed Jinja2, checked at
start-up) and `history` (the ``message_log`` and ``message_attempts`` tables). Sending
is an activity (`activities.messages`). `providers` and `templates` import only the
definitions; `history` also `loyalty.store`. Re-exports what apps, receivers and the
worker use of `providers`: ``from loyalty.messages import Messages, WebhookProvider``.
"""

from loyalty.messages.providers import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    InvalidSignature,
    LogProvider,
    Messages,
    Secrets,
    WebhookProvider,
    load_secrets,
    sign,
    verify_signature,
    webhook_body,
)

__all__ = [
    "IDEMPOTENCY_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "InvalidSignature",
    "LogProvider",
    "Messages",
    "Secrets",
    "WebhookProvider",
    "load_secrets",
    "sign",
    "verify_signature",
    "webhook_body",
]
