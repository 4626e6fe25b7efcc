"""Version 1 of the ``VersionedWelcome`` flow, for tests/test_versioning.py.

50 points at signup, 50 more after 30 days. Versions 2 (`tests.versioning_v2`) and the
unsafe one (`tests.versioning_v2_unsafe`) keep the workflow's name, so the journeys that
version 1 started are continued by their code after a deployment.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from loyalty.app import LoyaltyApp, Program
from loyalty.flows import flow
from loyalty.journeys import award_points
from loyalty.triggers import Activity

with workflow.unsafe.imports_passed_through():
    from loyalty import events

NAME = "VersionedWelcome"
LATER = timedelta(days=30)


@flow(trigger=Activity("signup"))
@workflow.defn(name=NAME)
class Welcome:
    """50 points now, 50 more after 30 days."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> str:
        await award_points(trigger.member_id, 50, reason="welcome", action="welcome")
        await workflow.sleep(LATER)
        await award_points(trigger.member_id, 50, reason="welcome, a month later", action="later")
        return "v1"


app = LoyaltyApp(programs=[Program(name="default")], flows=[Welcome])
