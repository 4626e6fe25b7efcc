"""Apps with flows for the tests, importable by the CLI as ``tests.flows_app:app``.

``app`` is valid; ``bad_app`` has one of each mistake `check_app` refuses.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

from loyalty.app import LoyaltyApp, Program
from loyalty.events import NewStage as NewStageEvent
from loyalty.events import Purchase as PurchaseEvent
from loyalty.flows import Entry, flow
from loyalty.tiers import Tier, TierScheme
from loyalty.triggers import Activity, Custom, NewStage, Purchase

COFFEE_TIERS = TierScheme(
    tiers=(Tier(name="bronze", threshold=0), Tier(name="silver", threshold=100),
           Tier(name="gold", threshold=500))
)  # fmt: skip


@flow(trigger=NewStage(to="gold"), entry=Entry.ONCE_PER_MEMBER, program="coffee")
@workflow.defn
class GoldWelcome:
    """Ends as the trigger's ``outcome`` attribute says: done, fail or wait (forever)."""

    @workflow.run
    async def run(self, trigger: NewStageEvent) -> None:
        outcome = trigger.attributes.get("outcome", "done")
        if outcome == "fail":
            raise ApplicationError("failed on purpose", non_retryable=True)
        if outcome == "wait":
            await workflow.wait_condition(lambda: False)


@flow(
    trigger=Purchase(min_amount=100, paid_with_points=False),
    entry=Entry.once_per(timedelta(days=30)),
    name="big-spender",
)
@workflow.defn
class BigSpender:
    @workflow.run
    async def run(self, trigger: PurchaseEvent) -> None:
        pass


@flow(trigger=Activity("web_login"))
@workflow.defn(name="LoginThanks")
class LoginThanksWorkflow:
    @workflow.run
    async def run(self, trigger: object) -> None:
        pass


app = LoyaltyApp(
    programs=[Program(name="default"), Program(name="coffee", tier_schemes=(COFFEE_TIERS,))],
    flows=[GoldWelcome, BigSpender, LoginThanksWorkflow],
)


@workflow.defn
class NoTrigger:
    @workflow.run
    async def run(self) -> None:
        pass


@flow(trigger=Activity("a"), name="twin")
@workflow.defn
class TwinA:
    @workflow.run
    async def run(self) -> None:
        pass


@flow(trigger=Activity("b"), name="twin")
@workflow.defn
class TwinB:
    @workflow.run
    async def run(self) -> None:
        pass


def is_big(event: object) -> bool:
    return True


@flow(trigger=Custom("bonus", is_big))
@workflow.defn
class UnknownType:
    @workflow.run
    async def run(self) -> None:
        pass


@flow(trigger=NewStage(to="gold"), program=["coffee", "tea"])
@workflow.defn
class UnknownProgram:
    @workflow.run
    async def run(self) -> None:
        pass


@flow(trigger=NewStage(to="platinum", from_="silver"), program="coffee")
@workflow.defn
class UnknownTier:
    @workflow.run
    async def run(self) -> None:
        pass


@flow(trigger=NewStage(direction="up"), program="default")
@workflow.defn
class NoScheme:
    @workflow.run
    async def run(self) -> None:
        pass


@flow(trigger=Activity("web_login"))
class NotAWorkflow:
    async def run(self) -> None:
        pass


bad_app = LoyaltyApp(
    programs=[Program(name="default"), Program(name="coffee", tier_schemes=(COFFEE_TIERS,))],
    flows=[NoTrigger, TwinA, TwinB, UnknownType, UnknownProgram, UnknownTier, NoScheme,
           NotAWorkflow],
)  # fmt: skip
# The messages check_app gives for bad_app, in order.
BAD_APP_PROBLEMS = [
    "flow 'NoTrigger': no trigger; decorate the class with @flow(trigger=...) above @workflow.defn",
    "flow 'UnknownType': trigger Custom(bonus, is_big) listens to unknown event type 'bonus'; "
    "known types: purchase, return, activity, referral, referral_approved, points_deposit, "
    "points_withdrawal, member_updated, member_deleted, new_stage, points_above, "
    "bonus_expiring, points_matured, referral_friend_approved, segment_entered, segment_left, "
    "recurring",
    "flow 'UnknownProgram': program 'tea' is not defined by the app; programs: default, coffee",
    "flow 'UnknownTier': trigger NewStage(to=platinum, from_=silver): to names unknown tier "
    "'platinum'; tiers: bronze, gold, silver",
    "flow 'NoScheme': trigger NewStage(direction=up) needs a tier scheme in the programs it "
    "applies to",
    "flow 'NotAWorkflow': NotAWorkflow is not a Temporal workflow; decorate it with "
    "@workflow.defn below @flow",
    "flow 'twin': 2 flows have this name (TwinA, TwinB); set name= on @flow to tell them apart",
]
