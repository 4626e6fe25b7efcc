"""An app whose flows use the journey toolkit, for tests/test_journeys.py."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

from loyalty.app import LoyaltyApp, Program
from loyalty.flows import Entry, flow
from loyalty.journeys import award_points, get_member, send_message
from loyalty.triggers import Activity

with workflow.unsafe.imports_passed_through():
    from loyalty import events


@flow(trigger=Activity("web_login"))
@workflow.defn
class LoginBonus:
    """25 points and a thank-you message for every login."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> int:
        await award_points(trigger.member_id, 25, reason="login bonus", action="login-bonus")
        await send_message(trigger.member_id, "thanks_for_visiting", data={"points": 25})
        member = await get_member(trigger.member_id)
        return member.balances["points"].available


@flow(trigger=Activity("web_login"), entry=Entry.ONCE_PER_MEMBER, name="first-login")
@workflow.defn
class FirstLogin:
    """100 points, once per member."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> None:
        await award_points(trigger.member_id, 100, reason="first login")


@flow(trigger=Activity("web_login"), program="coffee")
@workflow.defn
class CoffeeLogin:
    """Only for the coffee program's members."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> None:
        await award_points(trigger.member_id, 1, reason="coffee login")


@flow(trigger=Activity("signup"))
@workflow.defn
class Welcome:
    """50 points now, 50 more after 30 days (a durable timer)."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> None:
        await award_points(trigger.member_id, 50, reason="welcome", program=trigger.program)
        await workflow.sleep(timedelta(days=30))
        await award_points(
            trigger.member_id, 50, reason="welcome, a month later", program=trigger.program
        )


app = LoyaltyApp(
    programs=[Program(name="default"), Program(name="coffee")],
    flows=[LoginBonus, FirstLogin, CoffeeLogin, Welcome],
)
