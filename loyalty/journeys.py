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

Waiting for an event: `wait_for_event` registers the wait (an activity: a
``journey_waits`` row), then waits for the ``loyalty_event`` signal that the event router
sends when it processes a matching event of the member (`loyalty.flows.signals`), or for the
timeout; either way an activity deletes the row. Each wait has the key ``<action>`` or
``wait-<n>`` (``n`` counts the unnamed waits of the run, apart from the ledger and
message steps), which the signal carries back, so a late signal for an earlier wait is
never taken for a later one.

Durable sleep is `temporalio.workflow.sleep` (or ``asyncio.sleep`` inside a workflow):
a Temporal timer, so a 30-day wait survives worker restarts and deployments.

This module runs inside the workflow sandbox: it does no I/O and imports activities and
models through ``workflow.unsafe.imports_passed_through()``.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Literal, TypeVar, get_args

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.journeys import JourneyActivities
    from loyalty.events import AnyEvent, BaseEvent
    from loyalty.flows.signals import SIGNAL_NAME
    from loyalty.models import (
        AwardPointsInput,
        EndWaitInput,
        GetMemberInput,
        LedgerReceipt,
        LoyaltyEventSignal,
        MemberView,
        MessageReceipt,
        PointsStep,
        RegisterWaitInput,
        RemovePointsInput,
        SendMessageInput,
    )
    from loyalty.temporal import PROGRAM

_Step = TypeVar("_Step", bound=PointsStep)

# Ledger and message steps are short database statements.
STEP_TIMEOUT = timedelta(seconds=30)
# Transient failures (database restarts, lost connections) retry for ever, backing off
# to a minute; business refusals are non-retryable ApplicationErrors.
STEP_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
)
# A message step: one webhook request (at most 60 seconds, `WebhookProvider`) and the
# message log's statements. Its retries end at the provider's max_attempts: the activity
# then raises a non-retryable error.
MESSAGE_TIMEOUT = timedelta(seconds=90)
_COUNTER = "_loyalty_journey_steps"
_WAIT_COUNTER = "_loyalty_journey_waits"
# {wait key: event or None}: the open waits of the instance and what each received.
_WAITS = "_loyalty_journey_open_waits"
EVENT_TYPES: frozenset[str] = frozenset(
    cls.model_fields["type"].default for cls in get_args(get_args(AnyEvent)[0])
)

__all__ = [
    "MESSAGE_TIMEOUT",
    "STEP_RETRY_POLICY",
    "STEP_TIMEOUT",
    "award_points",
    "get_member",
    "remove_points",
    "send_message",
    "step_key",
    "wait_for_event",
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


def _points_step(
    model: type[_Step],
    member_id: str,
    points: int,
    kind: Literal["available", "earned"],
    currency: str,
    reason: str,
    action: str | None,
    program: str | None,
) -> _Step:
    """A points step, with its program and idempotency key resolved."""
    return model(
        program=_program(program), member_id=member_id, points=points, kind=kind,
        currency=currency, reason=reason, idempotency_key=step_key(action),
        workflow_id=workflow.info().workflow_id,
    )  # fmt: skip


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
    step = _points_step(
        AwardPointsInput, member_id, points, kind, currency, reason, action, program
    )
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
    step = _points_step(
        RemovePointsInput, member_id, points, kind, currency, reason, action, program
    )
    return await workflow.execute_activity_method(
        JourneyActivities.remove_points,
        step,
        start_to_close_timeout=STEP_TIMEOUT,
        retry_policy=STEP_RETRY_POLICY,
    )


async def get_member(
    member_id: str, *, profile: bool = False, program: str | None = None
) -> MemberView:
    """The member's tier, balances, upcoming expiries and latest entries (not a step).

    The view is the activity's result, so it is recorded in the journey's history, which
    the Temporal CLI and Web UI show and which a later ``member_deleted`` cannot erase.
    Its ``profile`` (name, e-mail, phone …) is therefore empty unless the journey asks
    for it; messages do not need it here, since templates read the profile when the
    message is rendered.

    Args:
        member_id: the member.
        profile: also return the member's profile.
        program: default: the journey's ``LoyaltyProgram`` search attribute.

    Raises:
        ActivityError: its cause an ApplicationError of type ``UnknownMember``.
    """
    return await workflow.execute_activity_method(
        JourneyActivities.get_member,
        GetMemberInput(program=_program(program), member_id=member_id, profile=profile),
        start_to_close_timeout=STEP_TIMEOUT,
        retry_policy=STEP_RETRY_POLICY,
    )


async def send_message(
    member_id: str,
    template: str,
    *,
    channel: str = "email",
    data: dict[str, object] | None = None,
    event: BaseEvent | None = None,
    action: str | None = None,
    program: str | None = None,
) -> MessageReceipt:
    """Send the member a message from a template, once, through the channel's provider.

    The program's `loyalty.messages.Messages` picks the provider: ``log`` (records the
    rendered message in ``message_log``) or ``webhook`` (a signed JSON POST; 5xx,
    timeouts and connection errors are retried with backoff up to the provider's
    ``max_attempts``). A member whose profile has ``consent: {<channel>: false}`` is not
    sent to: the receipt's status is ``skipped``.

    Args:
        member_id: the member.
        template: the template's name: the file ``<template>.j2`` of the app's templates
            folder (see `loyalty.messages.templates`), and the name the receiver gets.
        channel: e.g. ``email``, ``sms``, ``push``.
        data: extra template variables (``data``), also sent to the webhook; JSON values.
        event: the trigger event, for the template (``event``) and the webhook.
        action: the step's name in its idempotency key; default: the step counter.
        program: default: the journey's ``LoyaltyProgram`` search attribute.

    Raises:
        ActivityError: its cause an ApplicationError of type ``TemplateError``,
            ``MessageRejected`` (a 4xx answer) or ``MessageFailed`` (attempts used up).
    """
    message = SendMessageInput(
        program=_program(program), member_id=member_id, template=template, channel=channel,
        data=data or {}, idempotency_key=step_key(action),
        workflow_id=workflow.info().workflow_id, event=event,
    )  # fmt: skip
    return await workflow.execute_activity_method(
        JourneyActivities.send_message,
        message,
        start_to_close_timeout=MESSAGE_TIMEOUT,
        retry_policy=STEP_RETRY_POLICY,
    )


def _open_waits() -> dict[str, BaseEvent | None]:
    """The instance's open waits; sets the ``loyalty_event`` handler on first use.

    Signals that arrive before the handler is set are buffered by Temporal and delivered
    when it is set.
    """
    instance = workflow.instance()
    waits: dict[str, BaseEvent | None] | None = getattr(instance, _WAITS, None)
    if waits is None:
        waits = {}
        setattr(instance, _WAITS, waits)
        opened = waits

        def on_event(signal: LoyaltyEventSignal) -> None:
            # The first matching event wins; signals of ended waits are dropped.
            if signal.wait_key in opened and opened[signal.wait_key] is None:
                opened[signal.wait_key] = signal.event

        workflow.set_signal_handler(SIGNAL_NAME, on_event)
    return waits


def _wait_key(action: str | None) -> str:
    if action is not None:
        if not action:
            raise ApplicationError("action must be a non-empty string", non_retryable=True)
        return action
    instance = workflow.instance()
    count: int = getattr(instance, _WAIT_COUNTER, 0) + 1
    setattr(instance, _WAIT_COUNTER, count)
    return f"wait-{count}"


async def wait_for_event(
    member_id: str,
    event_type: str,
    timeout: timedelta,
    *,
    action: str | None = None,
    program: str | None = None,
) -> BaseEvent | None:
    """Wait for the member's next event of a type, e.g. a purchase within 7 days.

    Events that reach the inbox after the wait is registered count; earlier ones do not.
    The router delivers the first matching event as the ``loyalty_event`` signal.

    Args:
        member_id: the member.
        event_type: an event type, e.g. ``purchase`` or ``activity``.
        timeout: how long to wait (a durable timer).
        action: the wait's key; default ``wait-<n>``. Two open waits need two keys.
        program: default: the journey's ``LoyaltyProgram`` search attribute.

    Returns:
        The event (e.g. a `loyalty.events.Purchase`), or None when the timeout passed.
    """
    if event_type not in EVENT_TYPES:
        raise ApplicationError(
            f"unknown event type {event_type!r}; known: {', '.join(sorted(EVENT_TYPES))}",
            type="UnknownEventType",
            non_retryable=True,
        )
    key = _wait_key(action)
    waits = _open_waits()
    if key in waits:
        raise ApplicationError(
            f"a wait with key {key!r} is already open", type="DuplicateWait", non_retryable=True
        )
    workflow_id = workflow.info().workflow_id
    waits[key] = None
    try:
        await workflow.execute_activity_method(
            JourneyActivities.register_wait,
            RegisterWaitInput(
                program=_program(program), member_id=member_id, event_type=event_type,
                workflow_id=workflow_id, wait_key=key,
            ),
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=STEP_RETRY_POLICY,
        )  # fmt: skip
        with contextlib.suppress(TimeoutError):
            await workflow.wait_condition(lambda: waits[key] is not None, timeout=timeout)
        await workflow.execute_activity_method(
            JourneyActivities.end_wait,
            EndWaitInput(workflow_id=workflow_id, wait_key=key),
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=STEP_RETRY_POLICY,
        )
        # An event that came while the row was being deleted still counts.
        return waits[key]
    finally:
        del waits[key]
