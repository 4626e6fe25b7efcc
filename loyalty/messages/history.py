"""The message log: one ``message_log`` row per message step, one ``message_attempts``
row per delivery attempt (migrations 0005 and 0010).

A row is created at the step's first attempt, with the rendered body, and found again by
its idempotency key by every later attempt: retries send what the first attempt rendered,
and a step already ``sent`` or ``skipped`` is not sent again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from loyalty.models import MessageAttempt, MessageRecord, SendMessageInput
from loyalty.store.db import Conn, program_config

# Bytes of a receiver's answer kept with a failed attempt.
EXCERPT_BYTES = 200


@dataclass(frozen=True)
class LoggedMessage:
    """The row of a message step, as found or created."""

    id: int
    status: str
    body: str | None
    detail: str | None
    created: bool


async def open_message(
    conn: Conn,
    message: SendMessageInput,
    *,
    provider: str,
    status: str,
    body: str | None,
    detail: str | None = None,
) -> LoggedMessage:
    """The step's row: created with these values, or the existing one of its key."""
    event = message.event.model_dump(mode="json") if message.event is not None else None
    created = await conn.fetchval(
        """INSERT INTO message_log
               (program, member_id, template, channel, data, idempotency_key, workflow_id,
                status, provider, body, event, detail)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
           ON CONFLICT (idempotency_key) DO NOTHING
           RETURNING id""",
        message.program, message.member_id, message.template, message.channel,
        json.loads(json.dumps(message.data, default=str)), message.idempotency_key,
        message.workflow_id, status, provider, body, event, detail,
    )  # fmt: skip
    if created is not None:
        return LoggedMessage(id=created, status=status, body=body, detail=detail, created=True)
    return await find(conn, message.idempotency_key)  # type: ignore[return-value]


async def find(conn: Conn, key: str) -> LoggedMessage | None:
    """The row of a step's key, if any."""
    row = await conn.fetchrow(
        "SELECT id, status, body, detail FROM message_log WHERE idempotency_key = $1", key
    )
    if row is None:
        return None
    return LoggedMessage(
        id=row["id"], status=row["status"], body=row["body"], detail=row["detail"], created=False
    )


async def record_attempt(
    conn: Conn,
    key: str,
    attempt: int,
    *,
    status: str,
    http_status: int | None = None,
    error: str | None = None,
) -> None:
    """Record one attempt and the message's status after it, in one transaction."""
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO message_attempts (idempotency_key, attempt, http_status, error)
               VALUES ($1, $2, $3, $4)""",
            key, attempt, http_status, error,
        )  # fmt: skip
        await conn.execute(
            """UPDATE message_log SET status = $2, detail = $3, updated_at = now()
               WHERE idempotency_key = $1""",
            key, status, error,
        )  # fmt: skip


async def member_messages(
    conn: Conn, member_id: str, program: str | None = None, limit: int = 100
) -> list[MessageRecord]:
    """A member's latest messages, newest first, each with its attempts in order.

    Raises:
        UnknownProgram: ``program`` is given and the database knows no such program.
    """
    if program is not None:
        await program_config(conn, program)
    rows = await conn.fetch(
        """SELECT id, program, member_id, template, channel, provider, status, detail, body,
                  data, idempotency_key, workflow_id, created_at, erased_at
           FROM message_log
           WHERE member_id = $1 AND ($2::text IS NULL OR program = $2)
           ORDER BY id DESC
           LIMIT $3""",
        member_id, program, limit,
    )  # fmt: skip
    attempts = await conn.fetch(
        """SELECT idempotency_key, attempt, at, http_status, error FROM message_attempts
           WHERE idempotency_key = ANY($1::text[]) ORDER BY id""",
        [r["idempotency_key"] for r in rows],
    )
    by_key: dict[str, list[MessageAttempt]] = {}
    for a in attempts:
        by_key.setdefault(a["idempotency_key"], []).append(
            MessageAttempt(
                attempt=a["attempt"], at=a["at"], http_status=a["http_status"], error=a["error"]
            )
        )
    return [MessageRecord(**dict(r), attempts=by_key.get(r["idempotency_key"], [])) for r in rows]
