"""Version 2 of the ``VersionedWelcome`` flow: a message instead of the second award.

The change is guarded by `workflow.patched`, asked once at the start of the run, before
the journey's first command: a journey that version 1 began replays that point without
the patch marker and gets False, so it keeps version 1's path to the end; a journey that
begins under version 2 records the marker and gets True. Asked only at the point of the
change (after the sleep), it would be True for a journey that slept through the
deployment, which would then take the new path (deterministic, but not version 1's).
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

PATCH = "welcome-message-instead-of-second-award"


@flow(trigger=Activity("signup"))
@workflow.defn(name=NAME)
class Welcome:
    """50 points now; after 30 days a message (version 1's journeys: 50 more points)."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> str:
        v2 = workflow.patched(PATCH)
        await award_points(trigger.member_id, 50, reason="welcome", action="welcome")
        await workflow.sleep(LATER)
        if not v2:
            await award_points(
                trigger.member_id, 50, reason="welcome, a month later", action="later"
            )
            return "v1"
        await send_message(trigger.member_id, "welcome_month_later", action="later-message")
        return "v2"


app = LoyaltyApp(programs=[Program(name="default")], flows=[Welcome])
