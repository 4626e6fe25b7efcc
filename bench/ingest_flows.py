"""The workflows of bench/ingest.py and bench/loads.py: its flows and the baseline's.

A module of workflows only, as the README advises for an app: the sandbox imports it
again at every workflow run, so it builds nothing at import (the programs are in
`bench.ingest_app`) and imports the rest passed through.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from bench.ingest_naive import NaiveApplier, NaiveEvent, NaiveReceipt
    from loyalty import events
    from loyalty.flows import flow
    from loyalty.triggers import Activity, PointsAbove

JOURNEY_ACTIVITY = "store_visit"
THRESHOLD = 100  # of AlmostThere
APPLY_TIMEOUT = timedelta(seconds=60)


@flow(trigger=Activity(JOURNEY_ACTIVITY), program="default")
@workflow.defn
class StoreVisit:
    """A journey per store visit; it does nothing, the benchmark counts its starts."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> None:
        workflow.logger.debug("store visit of %s", trigger.member_id)


@flow(trigger=PointsAbove(THRESHOLD), program=("threshold", "threshold_ref"))
@workflow.defn
class AlmostThere:
    """A journey when the balance crosses 100; the benchmarks count its starts."""

    @workflow.run
    async def run(self, trigger: events.PointsAbove) -> None:
        workflow.logger.debug("%s crossed %s", trigger.member_id, trigger.threshold)


@workflow.defn
class ApplyEventWorkflow:
    """The naive design: a workflow per event, with one activity that applies it."""

    @workflow.run
    async def run(self, event: NaiveEvent) -> NaiveReceipt:
        return await workflow.execute_activity_method(
            NaiveApplier.apply_event, event, start_to_close_timeout=APPLY_TIMEOUT
        )
