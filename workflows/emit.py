"""EmitEvents: other services, in any language, put events in the inbox through Temporal.

Any Temporal client starts it by its type name with plain JSON,
``{"events": [...]}``, and gets ``{"results": [{"event_id", "program", "status"}]}``
back, ``status`` being ``accepted`` or ``duplicate``. The one activity validates every
event and inserts them all or none; a refused batch fails the workflow with a
non-retryable ``ApplicationError`` of type ``InvalidEvent`` or ``EventConflict`` whose
message holds one problem per line (``events[3].points: ...``) and whose one detail is
the same lines as a list of strings.

The input stays the raw payload the caller sent (`temporalio.common.RawValue`), passed
to the activity undecoded: the activity reads the JSON text itself, so an amount written
as a JSON number (``42.50``) keeps its digits instead of becoming a float. The workflow
decodes nothing, so it never depends on the data converter.

The caller's workflow id is the call's idempotency key: started with the id reuse
policy ``RejectDuplicate`` (or ``AllowDuplicateFailedOnly``), a second start of a
completed call returns the first run and its result. Whatever the policy, the inbox is
idempotent on (program, event_id): a second run inserts nothing and answers
``duplicate``.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.api.common.v1 import Payload
from temporalio.common import RawValue, RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.emit import EmitActivities
    from loyalty.models import EmitEventsResult

# The workflow type other SDKs and the temporal CLI start by name.
EMIT_EVENTS = "EmitEvents"
# The refusals that end the workflow; everything else is retried.
REFUSALS = ("InvalidEvent", "EventConflict")
# A database outage is retried until it ends (the caller bounds the wait with the
# workflow's execution timeout, if it wants one); refusals never are.
EMIT_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=list(REFUSALS),
)
# One statement of at most 1,000 events; the rest is waiting for a connection.
EMIT_TIMEOUT = timedelta(seconds=60)
# What the run receives when it is started without an argument.
NO_INPUT = RawValue(Payload(metadata={"encoding": b"binary/null"}))


@workflow.defn(name=EMIT_EVENTS)
class EmitEvents:
    """Validates and inserts a batch of events: ``{"events": [...]}``, all or nothing."""

    @workflow.run
    async def run(self, events: RawValue = NO_INPUT) -> EmitEventsResult:
        try:
            return await workflow.execute_activity_method(
                EmitActivities.emit_events,
                events,
                start_to_close_timeout=EMIT_TIMEOUT,
                retry_policy=EMIT_RETRY_POLICY,
            )
        except ActivityError as failure:
            cause = failure.cause
            if isinstance(cause, ApplicationError) and cause.type in REFUSALS:
                # The workflow fails with the activity's refusal itself, so that callers
                # read its type and problems at the top of the failure.
                raise ApplicationError(
                    cause.message, *cause.details, type=cause.type, non_retryable=True
                ) from None
            raise
