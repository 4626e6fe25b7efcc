"""An app whose journey waits for the member's purchase, for tests/test_wait_for_event.py."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from loyalty.app import LoyaltyApp, Program
from loyalty.flows import flow
from loyalty.journeys import wait_for_event
from loyalty.triggers import Activity

with workflow.unsafe.imports_passed_through():
    from loyalty import events


@flow(trigger=Activity("signup"))
@workflow.defn
class AwaitPurchase:
    """Waits up to 7 days for the new member's first purchase; returns it, or None."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> events.BaseEvent | None:
        event = await wait_for_event(
            trigger.member_id, "purchase", timedelta(days=7), program=trigger.program
        )
        # The received event is the very class journeys import (loyalty passes through
        # the sandbox), so isinstance holds.
        if event is not None and not isinstance(event, events.Purchase):
            raise ApplicationError(f"expected a Purchase, got {type(event)!r}", non_retryable=True)
        return event


app = LoyaltyApp(programs=[Program(name="default"), Program(name="coffee")], flows=[AwaitPurchase])
