"""Sending a journey's message through its channel's provider (`loyalty.messages`).

The first attempt of a step checks consent, renders the template and creates the step's
``message_log`` row; later attempts (Temporal activity retries) send what it rendered,
with the same ``Idempotency-Key``. Every attempt is a ``message_attempts`` row.

Webhook answers: 2xx is sent. 408, 429, 5xx, connection errors and timeouts raise a
retryable error, so Temporal retries with the step's exponential backoff, until the
attempt number reaches the provider's ``max_attempts``: then the step fails
(``MessageFailed``, non-retryable). Any other answer (4xx, a redirect) fails the step at
once (``MessageRejected``, non-retryable) with the status and the answer's first bytes.
A template problem is a non-retryable ``TemplateError``. Secrets never appear in errors,
rows or logs.
"""

from __future__ import annotations

import time

import asyncpg
import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from loyalty.app import LoyaltyApp, Program
from loyalty.errors import UnknownMember
from loyalty.ledger.members import member_view
from loyalty.messages import (
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    LogProvider,
    Secrets,
    WebhookProvider,
    history,
    sign,
    webhook_body,
)
from loyalty.messages.templates import TemplateProblem, context, environment, render
from loyalty.metrics.counters import MESSAGES
from loyalty.models import MemberView, MessageReceipt, SendMessageInput
from loyalty.store.db import Conn

NO_CONSENT = "no consent"
# Answers worth another attempt besides 5xx: the receiver asks to come back later.
RETRYABLE_4XX = frozenset({408, 429})


def _display_url(url: str) -> str:
    """The URL without credentials or query string, for errors."""
    parsed = httpx.URL(url)
    return str(parsed.copy_with(username=None, password=None, query=None, fragment=None))


def _attempt() -> int:
    """Temporal's attempt number; 1 when called outside an activity (a direct call)."""
    return activity.info().attempt if activity.in_activity() else 1


def _withdrew_consent(profile: object, channel: str) -> bool:
    """``profile["consent"][channel] is False``: only an explicit withdrawal counts."""
    if not isinstance(profile, dict):
        return False
    consent = profile.get("consent")
    return isinstance(consent, dict) and consent.get(channel) is False


class MessageSender:
    """Sends message steps; one per worker, with its pool, httpx client and secrets."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        app: LoyaltyApp,
        http: httpx.AsyncClient | None = None,
        secrets: Secrets | None = None,
    ) -> None:
        self.pool = pool
        self.app = app
        self.http = http
        self.secrets = secrets or Secrets({})
        self.templates = environment(app.templates) if app.templates is not None else None

    async def send(self, program: Program, message: SendMessageInput) -> MessageReceipt:
        """Send (or skip) the message once per idempotency key.

        Raises:
            ApplicationError: ``TemplateError``, ``MessageRejected``, ``MessageFailed``,
                ``MessageConfiguration`` (non-retryable) or ``MessageDeliveryError``
                (retryable).
        """
        provider = program.messages.provider(message.channel)
        key = message.idempotency_key
        async with self.pool.acquire() as conn:
            logged = await history.find(conn, key)
            if logged is None:
                logged = await self._first_attempt(conn, provider, message)
                if logged.created and logged.status in ("sent", "skipped"):
                    MESSAGES.labels(message.program, provider.kind, logged.status).inc()
        if logged.status in ("sent", "skipped"):
            return MessageReceipt(
                message_id=logged.id, idempotency_key=key, duplicate=not logged.created,
                status="skipped" if logged.status == "skipped" else "sent",
                provider=provider.kind,
                detail=NO_CONSENT if logged.status == "skipped" else None,
            )  # fmt: skip
        if logged.status == "failed" or not isinstance(provider, WebhookProvider):
            # The step failed for good earlier (e.g. before a workflow reset): its key
            # is spent; a journey that means to try again names a new action.
            raise ApplicationError(
                f"message {key} already failed: {logged.detail}", type="MessageFailed",
                non_retryable=True,
            )  # fmt: skip
        try:
            receipt = await self._deliver(provider, message, logged)
        except ApplicationError as exc:
            if exc.non_retryable:
                MESSAGES.labels(message.program, provider.kind, "failed").inc()
            raise
        MESSAGES.labels(message.program, provider.kind, "sent").inc()
        return receipt

    async def _member(self, conn: Conn, message: SendMessageInput) -> MemberView | None:
        try:
            return await member_view(conn, message.program, message.member_id)
        except UnknownMember:
            return None

    async def _first_attempt(
        self,
        conn: Conn,
        provider: LogProvider | WebhookProvider,
        message: SendMessageInput,
    ) -> history.LoggedMessage:
        """Consent, rendering and the step's row; a template problem fails the step."""
        kind = "webhook" if isinstance(provider, WebhookProvider) else "log"
        attempt = _attempt()
        profile = await conn.fetchval(
            "SELECT profile FROM members WHERE program = $1 AND member_id = $2",
            message.program, message.member_id,
        )  # fmt: skip
        if _withdrew_consent(profile, message.channel):
            return await history.open_message(
                conn, message, provider=kind, status="skipped", body=None,
                detail=f"skipped: {NO_CONSENT}",
            )  # fmt: skip
        body: str | None = None
        if self.templates is not None:
            view = await self._member(conn, message)
            event = message.event.model_dump(mode="json") if message.event is not None else None
            variables = context(
                view, event=event, data=message.data, program=message.program,
                channel=message.channel, template=message.template,
            )  # fmt: skip
            try:
                body = render(self.templates, message.template, variables)
            except TemplateProblem as exc:
                logged = await history.open_message(
                    conn, message, provider=kind, status="failed", body=None, detail=str(exc)
                )
                if logged.created:
                    await history.record_attempt(
                        conn, message.idempotency_key, attempt, status="failed", error=str(exc)
                    )
                    MESSAGES.labels(message.program, kind, "failed").inc()
                raise ApplicationError(str(exc), type="TemplateError", non_retryable=True) from None
        status = "sent" if kind == "log" else "pending"
        logged = await history.open_message(conn, message, provider=kind, status=status, body=body)
        if logged.created and kind == "log":
            await history.record_attempt(conn, message.idempotency_key, attempt, status="sent")
        return logged

    async def _deliver(
        self,
        provider: WebhookProvider,
        message: SendMessageInput,
        logged: history.LoggedMessage,
    ) -> MessageReceipt:
        key = message.idempotency_key
        attempt = _attempt()
        url = _display_url(provider.url)
        if self.http is None:
            raise ApplicationError(
                "the worker has no HTTP client for webhook messages",
                type="MessageConfiguration", non_retryable=True,
            )  # fmt: skip
        try:
            secret = self.secrets.get(provider.secret_env)
        except KeyError:
            raise ApplicationError(
                f"the worker did not load the secret variable {provider.secret_env} "
                f"of the webhook {url}",
                type="MessageConfiguration", non_retryable=True,
            ) from None  # fmt: skip
        sent_at = int(time.time())
        raw = webhook_body(
            program=message.program, member_id=message.member_id, channel=message.channel,
            template=message.template, body=logged.body, data=message.data,
            event=message.event.model_dump(mode="json") if message.event is not None else None,
            idempotency_key=key, sent_at=sent_at,
        )  # fmt: skip
        headers = {
            **provider.headers,
            "Content-Type": "application/json",
            IDEMPOTENCY_HEADER: key,
            TIMESTAMP_HEADER: str(sent_at),
            SIGNATURE_HEADER: sign(raw, secret),
        }
        http_status: int | None = None
        try:
            response = await self.http.post(
                provider.url, content=raw, headers=headers,
                timeout=httpx.Timeout(provider.timeout_seconds),
            )  # fmt: skip
        except httpx.TransportError as exc:
            error = f"{type(exc).__name__}: {exc}".rstrip(": ")
            retryable = True
        else:
            http_status = response.status_code
            if response.is_success:
                async with self.pool.acquire() as conn:
                    await history.record_attempt(
                        conn, key, attempt, status="sent", http_status=http_status
                    )
                return MessageReceipt(message_id=logged.id, idempotency_key=key, provider="webhook")
            excerpt = response.content[: history.EXCERPT_BYTES].decode(errors="replace")
            error = f"webhook {url} answered {http_status}: {excerpt}"
            retryable = http_status >= 500 or http_status in RETRYABLE_4XX
        final = not retryable or attempt >= provider.max_attempts
        async with self.pool.acquire() as conn:
            await history.record_attempt(
                conn, key, attempt, status="failed" if final else "pending",
                http_status=http_status, error=error,
            )  # fmt: skip
        if not retryable:
            raise ApplicationError(error, http_status, type="MessageRejected", non_retryable=True)
        if final:
            raise ApplicationError(
                f"{error} (attempt {attempt} of {provider.max_attempts}, giving up)",
                http_status, type="MessageFailed", non_retryable=True,
            )  # fmt: skip
        raise ApplicationError(
            f"{error} (attempt {attempt} of {provider.max_attempts})", http_status,
            type="MessageDeliveryError",
        )  # fmt: skip
