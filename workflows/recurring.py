"""RecurringFlow: one scheduled time of a recurring flow, started by its Temporal Schedule.

The Schedule (`loyalty.flows.schedules`) starts a run for each time its spec gives, with
the program and the flow as input. The run's scheduled time is the schedule's
``TemporalScheduledStartTime`` search attribute (also for ``loyalty schedules trigger``
and a backfill, where it is the time the schedule acted for); a run started by hand
without the schedule gives ``scheduled_at`` in its input, or else takes its own start
time. The run snapshots the segment once (an activity), then starts the journeys in
slices, one activity per slice of a few seconds, each heartbeating, so the history stays
small whatever the size of the segment: no continue-as-new. The current details in the
Web UI show ``started N of M``; the ``progress`` query returns the same.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from activities.recurring import RecurringActivities
    from loyalty.flows.recurring import RecurringProgress, RecurringRunInput, RecurringWork

# Set by Temporal on every workflow a Schedule starts.
SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")
SNAPSHOT_TIMEOUT = timedelta(minutes=10)
SLICE_TIMEOUT = timedelta(minutes=5)
SLICE_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
# A run must finish: retry for ever, backing off to a minute, unless the flow is gone.
RECURRING_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=["UnknownFlow"],
)


def recurring_id(task_queue: str, program: str, flow: str) -> str:
    """The id of the flow's Schedule in the program, and of its runs (Temporal appends
    the scheduled time to a run's): ``recurring/<program>/<flow>@<task_queue>``, parts
    percent-encoded as in journey ids."""
    return f"recurring/{quote(program, safe='')}/{quote(flow, safe='')}@{task_queue}"


def recurring_summary(program: str, flow: str, segment: str) -> str:
    """A run's one-line summary in the Web UI."""
    return f"Recurring flow {flow} of program {program}: a journey per member of {segment}"


def describe(run: RecurringProgress) -> str:
    """The run's progress in one line, for the Web UI and the CLI."""
    return f"started {run.started:,} of {run.members:,}"


@workflow.defn(name="RecurringFlow")
class RecurringFlow:
    """Starts a recurring flow's journeys for one scheduled time (see the module)."""

    @workflow.init
    def __init__(self, input: RecurringRunInput) -> None:
        self._input = input
        self._progress: RecurringProgress | None = None

    @workflow.run
    async def run(self, input: RecurringRunInput) -> RecurringProgress:
        work = RecurringWork(
            program=input.program, flow=input.flow, scheduled_at=self._scheduled_at()
        )
        self._show(work.scheduled_at)
        run: RecurringProgress = await workflow.execute_activity_method(
            RecurringActivities.snapshot,
            work,
            start_to_close_timeout=SNAPSHOT_TIMEOUT,
            retry_policy=RECURRING_RETRY_POLICY,
        )
        self._progress = run
        self._show(work.scheduled_at)
        while not run.finished:
            run = await workflow.execute_activity_method(
                RecurringActivities.start_slice,
                work.model_copy(update={"after": run.after}),
                start_to_close_timeout=SLICE_TIMEOUT,
                heartbeat_timeout=SLICE_HEARTBEAT_TIMEOUT,
                retry_policy=RECURRING_RETRY_POLICY,
            )
            self._progress = run
            self._show(work.scheduled_at)
        return run

    def _scheduled_at(self) -> datetime:
        if self._input.scheduled_at is not None:
            return self._input.scheduled_at.astimezone(UTC)
        info = workflow.info()
        scheduled = info.typed_search_attributes.get(SCHEDULED_START)
        return (scheduled or info.workflow_start_time).astimezone(UTC)

    def _show(self, scheduled_at: datetime) -> None:
        run = self._progress
        lines = [
            f"**Recurring flow {self._input.flow} of program {self._input.program}**",
            f"Scheduled at {scheduled_at:%Y-%m-%d %H:%M:%S} UTC.",
        ]
        if run is None:
            lines.append("Taking the snapshot of the segment.")
        else:
            state = "Finished" if run.finished else "Running"
            lines.append(f"**{state}**: segment {run.segment}, {describe(run)} journeys.")
        workflow.set_current_details("\n\n".join(lines))

    @workflow.query
    def progress(self) -> RecurringProgress | None:
        """The snapshot's size and the journeys started so far; None before the snapshot."""
        return self._progress
