"""Message providers per program and channel, and the webhook's signature.

A program says where each channel's messages go::

    Program(name="coffee", messages=Messages(
        channels={"email": WebhookProvider(url="https://…/journeys", secret_env="HOOK_SECRET")},
        default=LogProvider(),
    ))

Channels not listed use ``default``; ``Messages()`` sends everything to the ``log``
provider, which only records the rendered message in ``message_log``.

The webhook POSTs one JSON object (`webhook_body`) with the headers ``Idempotency-Key``
(the journey step's key: the same for every retry of the step), ``X-Loyalty-Timestamp``
(unix seconds, also inside the body as ``sent_at``) and ``X-Loyalty-Signature:
sha256=<hex>``, an HMAC-SHA256 of the raw body with the secret named by ``secret_env``.
The body repeats the key as ``idempotency_key``: only the body is signed, so receivers
deduplicate on that one. A receiver checks them with `verify_signature`. The secret is
read from the environment once, when the worker starts (`load_secrets`); it is never
stored in the database (`Program.config` leaves ``messages`` out), printed or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from loyalty.errors import ConfigurationError, LoyaltyError

IDEMPOTENCY_HEADER = "Idempotency-Key"
SIGNATURE_HEADER = "X-Loyalty-Signature"
TIMESTAMP_HEADER = "X-Loyalty-Timestamp"
# How old a signed request may be when the receiver checks it.
DEFAULT_TOLERANCE_SECONDS = 300
_RESERVED_HEADERS = frozenset(
    h.lower() for h in (IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, "Content-Type")
)


class LogProvider(BaseModel):
    """Development: the rendered message is recorded in ``message_log``, nothing is sent."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["log"] = "log"


class WebhookProvider(BaseModel):
    """POST the message as signed JSON to a URL, e.g. a marketing platform's journey API.

    Attributes:
        url: where to POST (http or https).
        secret_env: the environment variable holding the HMAC secret; read when the
            worker starts, which refuses to start without it.
        timeout_seconds: for each attempt (connect, write, read); at most 60.
        max_attempts: attempts for 5xx answers, connection errors and timeouts before the
            step fails; 4xx answers fail at once.
        headers: extra headers for every request (not the signature headers).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["webhook"] = "webhook"
    url: str = Field(pattern=r"^https?://\S+$")
    secret_env: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_seconds: float = Field(10.0, gt=0, le=60)
    max_attempts: int = Field(5, ge=1, le=100)
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("headers")
    @classmethod
    def _no_reserved(cls, headers: dict[str, str]) -> dict[str, str]:
        return unreserved_headers(headers)


def unreserved_headers(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` if none of them is one the engine sets on a signed request (a
    webhook message's or a profile stream's); `ValueError` naming those that are."""
    taken = sorted(h for h in headers if h.lower() in _RESERVED_HEADERS)
    if taken:
        raise ValueError(f"headers set by the engine cannot be overridden: {', '.join(taken)}")
    return headers


Provider = Annotated[LogProvider | WebhookProvider, Field(discriminator="kind")]


class Messages(BaseModel):
    """The providers of a program's message channels.

    Attributes:
        channels: provider per channel name (``email``, ``sms``, ``push``…).
        default: the provider of every channel not listed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    channels: dict[str, Provider] = Field(default_factory=dict)
    default: Provider = LogProvider()

    def provider(self, channel: str) -> LogProvider | WebhookProvider:
        """The provider that sends on ``channel``."""
        return self.channels.get(channel, self.default)

    def webhooks(self) -> list[WebhookProvider]:
        """Every webhook provider, the default included."""
        found = [*self.channels.values(), self.default]
        return [p for p in found if isinstance(p, WebhookProvider)]


class InvalidSignature(LoyaltyError):
    """A webhook request whose signature or timestamp does not check out."""


def sign(body: bytes, secret: str | bytes) -> str:
    """The ``X-Loyalty-Signature`` value of a raw body: ``sha256=<hex HMAC-SHA256>``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def verify_signature(
    body: bytes,
    signature: str | None,
    secret: str | bytes,
    *,
    idempotency_key: str | None = None,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> dict[str, object]:
    """What a receiver does with a webhook request; returns the parsed, signed body.

    Recomputes the HMAC over the raw body (before any JSON parsing), compares it in
    constant time, then refuses a body whose signed ``sent_at`` is more than
    ``tolerance_seconds`` away from ``now``, or that carries no signed
    ``idempotency_key``. Given the request's ``Idempotency-Key`` header as
    ``idempotency_key``, it also refuses a header that differs from the signed key.

    Headers are not signed: a captured request replayed with a changed
    ``Idempotency-Key`` header keeps its valid signature. So the receiver deduplicates on
    the **signed** key, ``payload["idempotency_key"]``, and remembers the keys it
    processed for at least ``tolerance_seconds`` (older requests are refused here as
    stale): within that window a replay or a retry finds its key seen, after it the
    replay is refused for its ``sent_at``.

    Raises:
        InvalidSignature: missing or wrong signature, a stale or missing timestamp, a
            missing signed key, or a header that differs from it.
    """
    if not signature or not hmac.compare_digest(sign(body, secret), signature):
        raise InvalidSignature("the signature does not match the body")
    payload = json.loads(body)
    if not isinstance(payload, dict):
        raise InvalidSignature("the body is not a JSON object")
    sent_at = payload.get("sent_at")
    if not isinstance(sent_at, int):
        raise InvalidSignature("the body has no sent_at timestamp")
    current = time.time() if now is None else now
    if abs(current - sent_at) > tolerance_seconds:
        raise InvalidSignature(f"the request is {int(current - sent_at)} seconds old")
    signed_key = payload.get("idempotency_key")
    if not isinstance(signed_key, str) or not signed_key:
        raise InvalidSignature("the body has no idempotency_key")
    if idempotency_key is not None and idempotency_key != signed_key:
        raise InvalidSignature(
            f"the {IDEMPOTENCY_HEADER} header differs from the signed idempotency_key"
        )
    result: dict[str, object] = payload
    return result


def webhook_body(
    *,
    program: str,
    member_id: str,
    channel: str,
    template: str,
    body: str | None,
    data: Mapping[str, object],
    event: Mapping[str, object] | None,
    idempotency_key: str,
    sent_at: int,
) -> bytes:
    """The raw JSON body of a webhook request, exactly as signed and sent."""
    payload = {
        "program": program, "member_id": member_id, "channel": channel,
        "template": template, "body": body, "data": data, "event": event,
        "idempotency_key": idempotency_key, "sent_at": sent_at,
    }  # fmt: skip
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


class Secrets:
    """The webhook secrets by environment variable name; never printed."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def get(self, name: str) -> bytes:
        """The secret of ``secret_env`` ``name``.

        Raises:
            KeyError: the worker did not load it.
        """
        return self._values[name].encode()

    def __repr__(self) -> str:
        return f"Secrets({', '.join(sorted(self._values))})"


def load_secrets(
    programs: Mapping[str, object], environ: Mapping[str, str] | None = None
) -> Secrets:
    """Read every webhook secret of the app's programs from the environment, once.

    Args:
        programs: the app's programs by name (`LoyaltyApp.programs`).
        environ: default: ``os.environ``.

    Raises:
        ConfigurationError: one line naming every missing variable and who needs it.
    """
    env = os.environ if environ is None else environ
    values: dict[str, str] = {}
    missing: dict[str, list[str]] = {}
    for name, program in programs.items():
        messages = getattr(program, "messages", None)
        if not isinstance(messages, Messages):
            continue
        for provider in messages.webhooks():
            value = env.get(provider.secret_env)
            if value:
                values[provider.secret_env] = value
            else:
                missing.setdefault(provider.secret_env, []).append(name)
    if missing:
        listed = "; ".join(
            f"{var} (program {', '.join(sorted(set(names)))})" for var, names in missing.items()
        )
        raise ConfigurationError(
            f"webhook message providers need their secret in the environment, missing: {listed}"
        )
    return Secrets(values)
