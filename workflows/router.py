"""EventRouter: a singleton workflow per program and partition that drives the inbox.

It runs the ``route_events`` activity session after session (each session applies
batches until its time is up) and continues-as-new before its history grows large. The
work itself, and its exactly-once guarantee, is in PostgreSQL; this workflow gives it
durability, retries and visibility in the Temporal Web UI.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.router import RouterActivities
    from loyalty.models import RouterInput, RouterProgress, RouteSession

# A session must heartbeat at least this often; a crashed worker's session is retried
# elsewhere after this long.
ROUTER_HEARTBEAT_TIMEOUT = timedelta(seconds=10)
# Infinite attempts: the router must never give up; the back-off caps at 30 s.
ROUTER_RETRY_POLICY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
)


def router_workflow_id(task_queue: str, program: str, partition: int, partitions: int) -> str:
    """The singleton id of a router: program and partition (of how many) in the id.

    The task queue names the deployment, so two deployments can share a namespace.
    """
    return f"router/{program}/{partition}-of-{partitions}@{task_queue}"


def router_summary(program: str, partition: int, partitions: int) -> str:
    """The router's one-line summary in the Web UI (partitions counted from 1)."""
    return f"Event router of program {program}, partition {partition + 1} of {partitions}"


@workflow.defn(name="EventRouter")
class EventRouter:
    """Routes inbox events of one program partition, forever."""

    def __init__(self) -> None:
        self._totals = RouterProgress()

    @workflow.run
    async def run(self, input: RouterInput) -> None:
        self._totals = input.totals
        # Temporal keeps the static summary on the first run only: every run shows it.
        summary = router_summary(input.program, input.partition, input.partitions)
        self._show(summary)
        session = RouteSession(
            program=input.program, partition=input.partition, partitions=input.partitions
        )
        for _ in range(input.sessions_per_run):
            done = await workflow.execute_activity_method(
                RouterActivities.route_events,
                session,
                # Generous: a session ends on its own after LOYALTY_ROUTER_SESSION_SECONDS;
                # the heartbeat timeout is what detects a dead worker.
                start_to_close_timeout=timedelta(hours=2),
                heartbeat_timeout=ROUTER_HEARTBEAT_TIMEOUT,
                retry_policy=ROUTER_RETRY_POLICY,
            )
            # What the partition committed so far, counted by the database: a session
            # attempt that timed out still committed its batches, and they count once.
            self._totals = done
            self._show(summary)
            if workflow.info().is_continue_as_new_suggested():
                break
        workflow.continue_as_new(input.model_copy(update={"totals": self._totals}))

    def _show(self, summary: str) -> None:
        totals = self._totals
        workflow.set_current_details(
            f"**{summary}**\n\n{totals.events} events in {totals.batches} batches: "
            f"{totals.applied} applied, {totals.no_effect} no effect, "
            f"{totals.rejected} rejected, {totals.dead} dead-lettered; "
            f"{totals.fast_path} on the fast path, {totals.one_by_one} one at a time"
        )

    @workflow.query
    def progress(self) -> RouterProgress:
        """What the partition's batches committed, as of the end of the latest session."""
        return self._totals
