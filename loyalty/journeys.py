"""The journey toolkit: what a flow's workflow code calls.

Call these from inside a journey workflow (a class with ``@flow`` and ``@workflow.defn``)::

    await award_points(trigger.member_id, 500, reason="gold welcome")
    await send_message(trigger.member_id, "gold_welcome")
    await workflow.sleep(timedelta(days=30))  # durable: survives restarts, costs nothing

Idempotency: each ledger or message step sends the key
``journey:<workflow_id>:<action>`` when ``action=`` is given, else
``journey:<workflow_id>:step-<n>``, where ``n`` counts the unnamed steps of this workflow
run in order, on the workflow instance. Workflow code is deterministic, so a replay or an
activity retry sends the same key and the ledger (or the message log) returns the first
result instead of applying again. Name steps with ``action=`` when a later code change
could reorder them, and always in a journey that continues-as-new (the counter restarts
with each run, the workflow id does not).

Program: taken from the journey's ``LoyaltyProgram`` search attribute, which the router
sets when it starts the journey (it is the trigger event's program); ``program=``
overrides it, e.g. for a journey started by hand without search attributes.

Durable sleep is `temporalio.workflow.sleep` (or ``asyncio.sleep`` inside a workflow):
a Temporal timer, so a 30-day wait survives worker restarts and deployments.

This module runs inside the workflow sandbox: it does no I/O and imports activities and
models through ``workflow.unsafe.imports_passed_through()``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.journeys import JourneyActivities
    from loyalty.models import (
        AwardPointsInput,
        GetMemberInput,
        LedgerReceipt,
        MemberView,
        MessageReceipt,
        RemovePointsInput,
        SendMessageInput,
    )
    from loyalty.temporal import PROGRAM

# Ledger and message steps are short database statements.
STEP_TIMEOUT = timedelta(seconds=30)
# Transient failures (database restarts, lost connections) retry for ever, backing off
# to a minute; business refusals are non-retryable ApplicationErrors.
STEP_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)
_COUNTER = "_loyalty_journey_steps"

__all__ = [
    "STEP_RETRY_POLICY",
    "STEP_TIMEOUT",
    "award_points",
    "get_member",
    "remove_points",
    "send_message",
    "step_key",
]


def step_key(action: str | None = None) -> str:
    """The idempotency key of the next ledger or message step of this workflow.

    ``journey:<workflow_id>:<action>``, or ``journey:<workflow_id>:step-<n>`` for the n-th
    unnamed step (from 1), counted on the workflow instance.
    """
    workflow_id = workflow.info().workflow_id
    if action is not None:
        if not action:
            raise ApplicationError("action must be a non-empty string", non_retryable=True)
        return f"journey:{workflow_id}:{action}"
    instance = workflow.instance()
    count: int = getattr(instance, _COUNTER, 0) + 1
    setattr(instance, _COUNTER, count)
    return f"journey:{workflow_id}:step-{count}"


def _program(program: str | None) -> str:
    if program is not None:
        return program
    found = workflow.info().typed_search_attributes.get(PROGRAM)
    if found is None:
        raise ApplicationError(
            "the journey has no LoyaltyProgram search attribute; pass program=",
            type="UnknownProgram",
            non_retryable=True,
        )
    return found


async def award_points(
    member_id: str,
    points: int,
    *,
    kind: Literal["available", "earned"] = "available",
    currency: str = "points",
    reason: str,
    action: str | None = None,
    program: str | None = None,
) -> LedgerReceipt:
    """Give the member points, once, even when the step is retried or replayed.

    Args:
        member_id: the member.
        points: more than 0.
        kind: ``available`` (usable now) or ``earned`` (usable after the program's
            earned waiting period).
        currency: one of the program's currencies.
        reason: shown in the member's entries.
        action: the step's name in its idempotency key; default: the step counter.
        program: default: the journey's ``LoyaltyProgram`` search attribute.
    """
    step = AwardPointsInput(
        program=_program(program), member_id=member_id, points=points, kind=kind,
        currency=currency, reason=reason, idempotency_key=step_key(action),
        workflow_id=workflow.info().workflow_id,
    )  # fmt: skip
    return await workflow.execute_activity_method(
        JourneyActivities.award_points,
        step,
        start_to_close_timeout=STEP_TIMEOUT,
        retry_policy=STEP_RETRY_POLICY,
    )


async def remove_points(
    member_id: str,
    points: int,
    *,
    kind: Literal["available", "earned"] = "available",
    currency: str = "points",
    reason: str,
    action: str | None = None,
    program: str | None = None,
) -> LedgerReceipt:
    """Take points from the member's available or earned balance, once.

    Raises:
        ActivityError: its cause an ApplicationError of type ``InsufficientPoints`` (the
            balance is lower) or ``UnknownMember``; not retried.
    """
    step = RemovePointsInput(
        program=_program(program), member_id=member_id, points=points, kind=kind,
        currency=currency, reason=reason, idempotency_key=step_key(action),
        workflow_id=workflow.info().workflow_id,
    )  # fmt: skip
    return await workflow.execute_activity_method(
        JourneyActivities.remove_points,
        step,
        start_to_close_timeout=STEP_TIMEOUT,
        retry_policy=STEP_RETRY_POLICY,
    )


async def get_member(member_id: str, *, program: str | None = None) -> MemberView:
    """The member's tier, balances, upcoming expiries and latest entries (not a step).

    Raises:
        ActivityError: its cause an ApplicationError of type ``UnknownMember``.
    """
    return await workflow.execute_activity_method(
        JourneyActivities.get_member,
        GetMemberInput(program=_program(program), member_id=member_id),
        start_to_close_timeout=STEP_TIMEOUT,
        retry_policy=STEP_RETRY_POLICY,
    )


async def send_message(
    member_id: str,
    template: str,
    *,
    channel: str = "email",
    data: dict[str, object] | None = None,
    action: str | None = None,
    program: str | None = None,
) -> MessageReceipt:
    """Send the member a message from a template, once (here: the ``log`` provider).

    The ``log`` provider records the message in the ``message_log`` table.
    """
    message = SendMessageInput(
        program=_program(program), member_id=member_id, template=template, channel=channel,
        data=data or {}, idempotency_key=step_key(action),
        workflow_id=workflow.info().workflow_id,
    )  # fmt: skip
    return await workflow.execute_activity_method(
        JourneyActivities.send_message,
        message,
        start_to_close_timeout=STEP_TIMEOUT,
        retry_policy=STEP_RETRY_POLICY,
    )
