"""Activities of the journey toolkit (`loyalty.journeys`): ledger, member view, messages,
waits for events.

Messages go through `activities.messages.MessageSender` (providers, consent, templates).
Each ledger or message step carries the idempotency key its workflow derived from the
workflow id and step, so a retried activity returns the first result instead of applying
twice. Business refusals are non-retryable `ApplicationError`s with a ``type``
(``InsufficientPoints``, ``UnknownMember``, ``UnknownProgram``, ``UnknownCurrency``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.messages import MessageSender
from loyalty import ledger
from loyalty.app import LoyaltyApp, Program
from loyalty.errors import LedgerRefusal, UnknownMember, UnknownProgram
from loyalty.ledger.members import member_view
from loyalty.messages import Secrets
from loyalty.models import (
    AwardPointsInput,
    EndWaitInput,
    GetMemberInput,
    LedgerReceipt,
    MemberView,
    MessageReceipt,
    RegisterWaitInput,
    RemovePointsInput,
    SendMessageInput,
    WaitReceipt,
)


def _refusal(exc: LedgerRefusal) -> ApplicationError:
    kind = "".join(part.title() for part in exc.code.split("_"))
    return ApplicationError(str(exc), exc.code, type=kind, non_retryable=True)


class JourneyActivities:
    """The toolkit's activities; the worker registers the bound methods (`all`)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        app: LoyaltyApp,
        http: httpx.AsyncClient | None = None,
        secrets: Secrets | None = None,
    ) -> None:
        """Args: the worker's pool, app, httpx client and webhook secrets (`run_worker`)."""
        self.pool = pool
        self.app = app
        self.messages = MessageSender(pool, app, http, secrets)

    def all(self) -> list[Callable[..., Any]]:
        """Every activity of the toolkit, bound, for the worker."""
        return [
            self.award_points,
            self.remove_points,
            self.get_member,
            self.send_message,
            self.register_wait,
            self.end_wait,
        ]

    def _program(self, name: str, currency: str | None = None) -> Program:
        program = self.app.program(name)
        if program is None:
            raise ApplicationError(
                f"program {name!r} is not defined by the app",
                type="UnknownProgram",
                non_retryable=True,
            )
        if currency is not None and currency not in program.currencies:
            raise ApplicationError(
                f"program {name!r} has no currency {currency!r}; "
                f"it has {', '.join(program.currencies)}",
                type="UnknownCurrency",
                non_retryable=True,
            )
        return program

    @activity.defn(name="journey_award_points")
    async def award_points(self, step: AwardPointsInput) -> LedgerReceipt:
        """Give points; a key already used returns the first receipt (``duplicate``).

        A balance the award lifts over a ``PointsAbove`` threshold derives its
        ``points_above`` event in the same transaction (`loyalty.ledger.watching`).
        """
        program = self._program(step.program, step.currency)
        now = datetime.now(UTC)
        async with (
            self.pool.acquire() as conn,
            conn.transaction(),
            ledger.watching(
                conn,
                self.app,
                step.program,
                step.member_id,
                key=step.idempotency_key,
                occurred_at=now,
            ),
        ):
            return await ledger.award(
                conn, program=step.program, member_id=step.member_id, points=step.points,
                kind=step.kind, currency=step.currency, reason=step.reason,
                source=f"journey:{step.workflow_id}", key=step.idempotency_key,
                occurred_at=now,
                available_at=now + program.earned_waiting_period,
                expires_at=program.lot_expiry(step.currency, now),
            )  # fmt: skip

    @activity.defn(name="journey_remove_points")
    async def remove_points(self, step: RemovePointsInput) -> LedgerReceipt:
        """Take points from the available or earned balance.

        Raises:
            ApplicationError: ``InsufficientPoints`` or ``UnknownMember``, non-retryable.
        """
        self._program(step.program, step.currency)
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                return await ledger.spend(
                    conn, program=step.program, member_id=step.member_id, points=step.points,
                    kind=step.kind, currency=step.currency, reason=step.reason,
                    source=f"journey:{step.workflow_id}", key=step.idempotency_key,
                    occurred_at=datetime.now(UTC),
                )  # fmt: skip
        except LedgerRefusal as exc:
            raise _refusal(exc) from exc

    @activity.defn(name="journey_get_member")
    async def get_member(self, query: GetMemberInput) -> MemberView:
        """The member's tier, balances, expiries and latest entries; the profile if asked.

        The result goes into the journey's history: without ``query.profile`` its
        ``profile`` is empty, so that no name or e-mail address is kept there.

        Raises:
            ApplicationError: ``UnknownMember`` or ``UnknownProgram``, non-retryable.
        """
        try:
            async with self.pool.acquire() as conn:
                view = await member_view(conn, query.program, query.member_id)
        except (UnknownMember, UnknownProgram) as exc:
            kind = type(exc).__name__
            raise ApplicationError(str(exc), type=kind, non_retryable=True) from exc
        return view if query.profile else view.model_copy(update={"profile": {}})

    @activity.defn(name="journey_send_message")
    async def send_message(self, message: SendMessageInput) -> MessageReceipt:
        """Send the message through its channel's provider, once per key.

        See `activities.messages`: consent, templates, webhook retries and the log.
        """
        return await self.messages.send(self._program(message.program), message)

    @activity.defn(name="journey_register_wait")
    async def register_wait(self, wait: RegisterWaitInput) -> WaitReceipt:
        """Record that the journey waits for the member's event; a retry keeps the first row.

        Events that reach the inbox from ``registered_at`` on are signalled to the journey.
        """
        self._program(wait.program)
        async with self.pool.acquire() as conn:
            await conn.execute(
                """INSERT INTO journey_waits
                       (workflow_id, wait_key, program, member_id, event_type)
                   VALUES ($1, $2, $3, $4, $5)
                   ON CONFLICT (workflow_id, wait_key) DO NOTHING""",
                wait.workflow_id, wait.wait_key, wait.program, wait.member_id, wait.event_type,
            )  # fmt: skip
            registered_at = await conn.fetchval(
                "SELECT registered_at FROM journey_waits WHERE workflow_id = $1 AND wait_key = $2",
                wait.workflow_id, wait.wait_key,
            )  # fmt: skip
        return WaitReceipt(
            workflow_id=wait.workflow_id, wait_key=wait.wait_key, registered_at=registered_at
        )

    @activity.defn(name="journey_end_wait")
    async def end_wait(self, wait: EndWaitInput) -> WaitReceipt:
        """Delete the wait (event received or timed out); returns when it was registered."""
        async with self.pool.acquire() as conn:
            registered_at = await conn.fetchval(
                """DELETE FROM journey_waits WHERE workflow_id = $1 AND wait_key = $2
                   RETURNING registered_at""",
                wait.workflow_id, wait.wait_key,
            )  # fmt: skip
        return WaitReceipt(
            workflow_id=wait.workflow_id, wait_key=wait.wait_key, registered_at=registered_at
        )
