"""Apps with a recurring flow, for tests/test_recurring.py and tests/test_schedules.py.

The seed's case: every Monday at 09:00 in Copenhagen, a nudge for each member of the
``almost-gold`` segment (more than 900 and less than 1000 points) of program ``coffee``.
The journey only says whom it nudged, so it changes no member state a segment reads.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from loyalty.app import LoyaltyApp, Program
from loyalty.flows import Entry, flow
from loyalty.segments import Segment, balance
from loyalty.tiers.schemes import Schedule
from loyalty.triggers import Recurring

with workflow.unsafe.imports_passed_through():
    from loyalty import events

WEEKLY = Schedule(cron="0 9 * * MON", timezone="Europe/Copenhagen")
DAILY = Schedule(cron="30 7 * * *", timezone="UTC")
HOURLY = Schedule(every=timedelta(hours=1))


@flow(trigger=Recurring(schedule=WEEKLY, segment="almost-gold"), name="weekly-nudge",
      program="coffee")  # fmt: skip
@workflow.defn(name="WeeklyNudge")
class WeeklyNudge:
    """The seed's weekly nudge."""

    @workflow.run
    async def run(self, trigger: events.RecurringRun) -> str:
        return f"nudged {trigger.member_id} at {trigger.scheduled_at:%Y-%m-%d %H:%M}"


@flow(trigger=Recurring(schedule=DAILY, segment="almost-gold"), name="weekly-nudge",
      program="coffee")  # fmt: skip
@workflow.defn(name="WeeklyNudge")
class DailyNudge:
    """The same flow, changed to run daily (a deployment that changes its schedule)."""

    @workflow.run
    async def run(self, trigger: events.RecurringRun) -> str:
        return f"nudged {trigger.member_id} at {trigger.scheduled_at:%Y-%m-%d %H:%M}"


@flow(trigger=Recurring(schedule=DAILY, segment="almost-silver"), name="weekly-nudge",
      program="coffee")  # fmt: skip
@workflow.defn(name="WeeklyNudge")
class SilverNudge:
    """The daily flow, changed to another segment."""

    @workflow.run
    async def run(self, trigger: events.RecurringRun) -> str:
        return f"nudged {trigger.member_id} at {trigger.scheduled_at:%Y-%m-%d %H:%M}"


@flow(trigger=Recurring(schedule=HOURLY, segment="almost-gold"), name="hourly-nudge",
      entry=Entry.ONCE_PER_MEMBER)  # fmt: skip
@workflow.defn(name="HourlyNudge")
class HourlyNudge:
    """Every hour, in every program, but once per member."""

    @workflow.run
    async def run(self, trigger: events.RecurringRun) -> str:
        return f"nudged {trigger.member_id} once"


PROGRAMS = [Program(name="coffee"), Program(name="tea")]
SEGMENTS = [
    Segment("almost-gold", program="coffee", where=balance().between(901, 999)),
    Segment("almost-silver", program="coffee", where=balance().between(401, 499)),
    Segment("almost-gold", program="tea", where=balance().between(901, 999)),
]


def make_app(*flows: type) -> LoyaltyApp:
    """Programs ``coffee`` and ``tea``, each with the ``almost-gold`` segment (and
    ``almost-silver`` in ``coffee``)."""
    return LoyaltyApp(programs=PROGRAMS, flows=list(flows), segments=SEGMENTS)


app = make_app(WeeklyNudge)
