"""The recurring flow of bench/segments.py's phase 3, in a module of workflows only.

The sandbox imports this module again at every workflow run, so it builds nothing at
import (the programs and segments are in `bench.segments_app`) and imports the rest
passed through, as bench/ingest_flows.py does.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from loyalty import events
    from loyalty.flows import flow
    from loyalty.tiers.schemes import Schedule
    from loyalty.triggers import Recurring

RECUR = "recur"  # the program
NUDGE_SEGMENT = "almost-gold"
WEEKLY = Schedule(cron="0 9 * * MON", timezone="Europe/Copenhagen")


@flow(trigger=Recurring(schedule=WEEKLY, segment=NUDGE_SEGMENT), name="weekly-nudge",
      program=RECUR)  # fmt: skip
@workflow.defn(name="BenchWeeklyNudge")
class WeeklyNudge:
    """Zeta's weekly nudge of the almost-gold members; it does nothing, the benchmark
    counts its starts."""

    @workflow.run
    async def run(self, trigger: events.RecurringRun) -> None:
        workflow.logger.debug("nudged %s", trigger.member_id)
