"""An app whose journeys read members and send messages, for tests/test_privacy.py."""

from __future__ import annotations

from typing import Any

from temporalio import workflow

from loyalty.app import LoyaltyApp, Program
from loyalty.flows import flow
from loyalty.journeys import get_member, send_message, wait_for_event
from loyalty.messages import LogProvider, Messages
from loyalty.triggers import Activity, Custom
from tests.messages_app import TEMPLATES

with workflow.unsafe.imports_passed_through():
    from loyalty import events


@flow(trigger=Activity("web_login"))
@workflow.defn
class ReadMember:
    """Reads the member without asking for the profile, and thanks them by name."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> dict[str, Any]:
        member = await get_member(trigger.member_id)
        await send_message(
            trigger.member_id, "thanks", data={"points": 25}, event=trigger, action="thanks"
        )
        return {"member_id": member.member_id, "profile": member.profile}


@flow(trigger=Activity("profile_check"))
@workflow.defn
class ReadProfile:
    """Asks for the profile: the flow needs the member's name."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> object:
        member = await get_member(trigger.member_id, profile=True)
        return member.profile.get("name")


def _always(event: object) -> bool:
    return True


@flow(trigger=Custom("member_updated", _always), name="on-profile")
@workflow.defn
class OnProfile:
    """Started by every profile change (its trigger is in the journey outbox)."""

    @workflow.run
    async def run(self, trigger: events.MemberUpdated) -> None:
        return None


@flow(trigger=Activity("wait_profile"), name="wait-profile")
@workflow.defn
class WaitProfile:
    """Waits for the member's next profile change (the signal outbox holds it)."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> bool:
        from datetime import timedelta

        got = await wait_for_event(trigger.member_id, "member_updated", timedelta(minutes=5))
        return got is not None


app = LoyaltyApp(
    programs=[Program(name="default", messages=Messages(default=LogProvider()))],
    flows=[ReadMember, ReadProfile, OnProfile, WaitProfile],
    templates=TEMPLATES,
)
