"""ProfileStream: one long-lived workflow per profile stream, delivering its changes.

Each iteration runs the delivery activity for `RUN_SECONDS` (it sends the batch in flight,
builds the next from the marks, polls while there are none; see `activities.streams`),
adds its counts to the totals and shows them with the backlog (members pending, lag of
the oldest change) as the workflow's current details in the Web UI, and in the
``status`` query. After `RUNS_PER_EXECUTION` iterations it continues-as-new with the
totals, so its history stays small. A failed request fails the activity, which Temporal
retries with back-off for ever (`STREAM_RETRY_POLICY`): the same batch, the same key.
Enabling and disabling live in the database (`loyalty streams enable|disable`), so they
work without Temporal; a disabled stream idles in its activity. A stream the app or the
database no longer has ends its workflow.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.streams import StreamActivities
    from loyalty.models import StreamLoopInput, StreamRunInput, StreamRunResult, StreamTotals

RUN_SECONDS = 20.0
RUNS_PER_EXECUTION = 100
RUN_TIMEOUT = timedelta(seconds=RUN_SECONDS + 120)
HEARTBEAT_TIMEOUT = timedelta(seconds=10)
# A stream must deliver: retry for ever, backing off to a minute, unless it is gone.
STREAM_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=["UnknownStream"],
)


def stream_workflow_id(task_queue: str, stream: str) -> str:
    """The singleton id of a stream's workflow (task queue: the deployment)."""
    return f"stream/{stream}@{task_queue}"


def stream_summary(stream: str) -> str:
    """The workflow's one-line summary in the Web UI."""
    return f"Profile stream {stream}"


def describe(totals: StreamTotals, last: StreamRunResult | None) -> str:
    """The totals and the backlog in one line, for the Web UI."""
    line = (
        f"{totals.upserts:,} upserts, {totals.deletes:,} deletes in {totals.batches:,} "
        f"batches, {totals.rejected:,} rejected"
    )
    if last is not None:
        state = "enabled" if last.enabled else "disabled"
        line += f"; {state}, {last.pending:,} pending, lag {last.lag_seconds:.1f} s"
    return line


def _add(a: StreamTotals, b: StreamTotals) -> StreamTotals:
    return StreamTotals(
        batches=a.batches + b.batches,
        upserts=a.upserts + b.upserts,
        deletes=a.deletes + b.deletes,
        rejected=a.rejected + b.rejected,
        unchanged=a.unchanged + b.unchanged,
    )


@workflow.defn(name="ProfileStream")
class ProfileStreamWorkflow:
    """Delivers one stream's changes, for ever (see the module)."""

    def __init__(self) -> None:
        self._totals = StreamTotals()
        self._last: StreamRunResult | None = None

    @workflow.run
    async def run(self, loop: StreamLoopInput) -> None:
        self._totals = loop.totals or StreamTotals()
        workflow.set_current_details(describe(self._totals, None))
        for _ in range(RUNS_PER_EXECUTION):
            try:
                result = await workflow.execute_activity_method(
                    StreamActivities.deliver,
                    StreamRunInput(stream=loop.stream, seconds=RUN_SECONDS),
                    start_to_close_timeout=RUN_TIMEOUT,
                    heartbeat_timeout=HEARTBEAT_TIMEOUT,
                    retry_policy=STREAM_RETRY_POLICY,
                )
            except ActivityError as exc:
                cause = exc.cause
                if isinstance(cause, ApplicationError) and cause.type == "UnknownStream":
                    workflow.logger.info("stream %s is gone: %s", loop.stream, cause.message)
                    return
                raise
            self._totals = _add(self._totals, result.delivered)
            self._last = result
            workflow.set_current_details(describe(self._totals, result))
        workflow.continue_as_new(StreamLoopInput(stream=loop.stream, totals=self._totals))

    @workflow.query
    def status(self) -> StreamRunResult | None:
        """The last run's result (counts of that run, backlog after it)."""
        return self._last

    @workflow.query
    def totals(self) -> StreamTotals:
        """What this workflow chain delivered so far."""
        return self._totals
