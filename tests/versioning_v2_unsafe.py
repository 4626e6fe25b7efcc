"""Version 2 of ``VersionedWelcome`` without a patch guard: what must not be deployed.

A welcome message now comes before the first award, and a message replaces the award
after the timer, for every journey: a journey that version 1 began recorded an award as
its first command, so its replay does not match its history, and its workflow task
fails with a NondeterminismError (tests/test_versioning.py).
"""

from __future__ import annotations

from temporalio import workflow

from loyalty.app import LoyaltyApp, Program
from loyalty.flows import flow
from loyalty.journeys import award_points, send_message
from loyalty.triggers import Activity
from tests.versioning_v1 import LATER, NAME

with workflow.unsafe.imports_passed_through():
    from loyalty import events


@flow(trigger=Activity("signup"))
@workflow.defn(name=NAME)
class Welcome:
    """A message and 50 points now, a message after 30 days, for every journey."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> str:
        await send_message(trigger.member_id, "welcome", action="welcome-message")
        await award_points(trigger.member_id, 50, reason="welcome", action="welcome")
        await workflow.sleep(LATER)
        await send_message(trigger.member_id, "welcome_month_later", action="later-message")
        return "v2"


app = LoyaltyApp(programs=[Program(name="default")], flows=[Welcome])
