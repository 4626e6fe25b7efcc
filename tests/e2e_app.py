"""An app with earn rules and one flow per trigger type, for tests/test_triggers_e2e.py.

Earn rules of the ``default`` program: 1 point per EUR of a purchase (the part paid with
points excluded), 10 points for a ``web_login`` at most once a day, 20 points to the
referrer of a referral, 30 points to the friend who approves one.

The ``coffee`` program has tiers (bronze 0, silver 30, gold 60 qualifying points, lifetime),
10 points per ``web_login`` at most once a day and 1 point per EUR; its flows react to
tier changes (``NewStage``).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from temporalio import workflow

from loyalty.app import LoyaltyApp, Program
from loyalty.flows import Entry, flow
from loyalty.journeys import award_points, get_member, send_message
from loyalty.rules import Limit, OnActivity, OnReferral, OnReferralApproved, PerAmount
from loyalty.tiers import Tier, TierScheme
from loyalty.triggers import (
    Activity,
    BonusExpiring,
    Custom,
    NewStage,
    PointsAbove,
    PointsDeposit,
    Purchase,
    Referral,
    ReferralApproved,
    ReferralFriendApproved,
)

with workflow.unsafe.imports_passed_through():
    from loyalty import events

BIG_PURCHASE = Decimal(100)
REMINDER_AFTER = timedelta(days=7)


@flow(trigger=Purchase(min_amount=BIG_PURCHASE))
@workflow.defn
class BigPurchase:
    """50 bonus points and a thank-you for a purchase of at least 100."""

    @workflow.run
    async def run(self, trigger: events.Purchase) -> None:
        await award_points(trigger.member_id, 50, reason="big purchase", action="bonus")
        await send_message(
            trigger.member_id, "big_purchase", data={"order_id": trigger.order_id}, action="thanks"
        )


@flow(trigger=Purchase(paid_with_points=True))
@workflow.defn
class PaidWithPoints:
    """A message when a member pays with points."""

    @workflow.run
    async def run(self, trigger: events.Purchase) -> None:
        await send_message(trigger.member_id, "redeemed", data={"points": trigger.points_redeemed})


@flow(trigger=PointsAbove(500))
@workflow.defn
class AlmostGold:
    """A message when the available balance goes above 500."""

    @workflow.run
    async def run(self, trigger: events.PointsAbove) -> None:
        await send_message(trigger.member_id, "almost_gold", data={"balance": trigger.balance})


@flow(trigger=PointsAbove(1000), entry=Entry.ONCE_PER_MEMBER)
@workflow.defn
class GoldCongratulation:
    """The Zeta case without tiers: congratulate once per member, however often triggered."""

    @workflow.run
    async def run(self, trigger: events.PointsAbove) -> None:
        await send_message(trigger.member_id, "gold_congratulation")


@flow(trigger=Referral())
@workflow.defn
class ReferralReminder:
    """Thank the referrer now; remind them after 7 days (a durable timer).

    The program is passed explicitly, so the journey also runs without search attributes
    on the time-skipping server.
    """

    @workflow.run
    async def run(self, trigger: events.Referral) -> None:
        data: dict[str, object] = {"friend_id": trigger.friend_id}
        await send_message(trigger.member_id, "referral_thanks", data=data, program=trigger.program)
        await workflow.sleep(REMINDER_AFTER)
        await send_message(
            trigger.member_id, "referral_reminder", data=data, program=trigger.program
        )


@flow(trigger=ReferralApproved())
@workflow.defn
class FriendWelcome:
    """100 points to the friend who accepted a referral."""

    @workflow.run
    async def run(self, trigger: events.ReferralApproved) -> None:
        await award_points(trigger.member_id, 100, reason="welcome, friend")
        await send_message(trigger.member_id, "friend_welcome")


@flow(trigger=ReferralFriendApproved())
@workflow.defn
class ReferrerBonus:
    """200 points to the referrer when the friend approves; returns the new balance."""

    @workflow.run
    async def run(self, trigger: events.ReferralFriendApproved) -> int:
        await award_points(trigger.member_id, 200, reason=f"friend {trigger.friend_id} joined")
        await send_message(trigger.member_id, "referrer_bonus", data={"friend": trigger.friend_id})
        return (await get_member(trigger.member_id)).balances["points"].available


@flow(trigger=BonusExpiring(days_before=7))
@workflow.defn
class ExpiryWarning:
    """A warning 7 days before points expire."""

    @workflow.run
    async def run(self, trigger: events.BonusExpiring) -> None:
        await send_message(
            trigger.member_id,
            "bonus_expiring",
            data={"points": trigger.points, "days_left": trigger.days_left},
        )


@flow(trigger=PointsDeposit(kind="available"))
@workflow.defn
class DepositReceived:
    """A receipt for available points given through the API."""

    @workflow.run
    async def run(self, trigger: events.PointsDeposit) -> None:
        await send_message(trigger.member_id, "deposit_received", data={"points": trigger.points})


@flow(trigger=Activity("web_login"))
@workflow.defn
class WelcomeBack:
    """A message for every login (the login's points come from the earn rule)."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> None:
        await send_message(trigger.member_id, "welcome_back")


@flow(trigger=Activity("app_login"), entry=Entry.ONCE_PER_MEMBER)
@workflow.defn
class FirstAppLogin:
    """The Zeta case on an activity: a congratulation once per member."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> None:
        await award_points(trigger.member_id, 75, reason="first app login")
        await send_message(trigger.member_id, "app_congratulation")


def ordered_in_app(event: events.Purchase) -> bool:
    """A purchase made in the mobile app."""
    return event.attributes.get("channel") == "app"


@flow(trigger=Custom("purchase", ordered_in_app))
@workflow.defn
class AppOrder:
    """5 points and a message for an order placed in the app."""

    @workflow.run
    async def run(self, trigger: events.Purchase) -> None:
        await award_points(trigger.member_id, 5, reason="app order")
        await send_message(trigger.member_id, "app_order", data={"order_id": trigger.order_id})


@flow(trigger=NewStage(direction="up"), program="coffee")
@workflow.defn
class TierUp:
    """A message at every promotion, with the tiers it moved between."""

    @workflow.run
    async def run(self, trigger: events.NewStage) -> None:
        await send_message(
            trigger.member_id, "tier_up", program=trigger.program,
            data={"from": trigger.from_tier, "to": trigger.to_tier, "cause": trigger.cause},
        )  # fmt: skip


@flow(trigger=NewStage(from_="silver", to="gold"), entry=Entry.ONCE_PER_MEMBER, program="coffee")
@workflow.defn
class SilverToGold:
    """The Zeta case: silver → gold congratulates once, with a welcome gift."""

    @workflow.run
    async def run(self, trigger: events.NewStage) -> None:
        await award_points(trigger.member_id, 100, reason="gold welcome", program=trigger.program)
        await send_message(trigger.member_id, "gold_welcome", program=trigger.program)


COFFEE_TIERS = TierScheme(
    tiers=(Tier(name="bronze", threshold=0), Tier(name="silver", threshold=30),
           Tier(name="gold", threshold=60)),
)  # fmt: skip

app = LoyaltyApp(
    programs=[
        Program(
            name="default",
            earn_rules=(
                PerAmount(points_per_unit=1),
                OnActivity("web_login", points=10, limit=Limit(1, per=timedelta(days=1))),
                OnReferral(points=20),
                OnReferralApproved(points=30),
            ),
        ),
        Program(
            name="coffee",
            earn_rules=(
                PerAmount(points_per_unit=1),
                OnActivity("web_login", points=10, limit=Limit(1, per=timedelta(days=1))),
            ),
            tier_schemes=(COFFEE_TIERS,),
        ),
    ],
    flows=[
        BigPurchase,
        PaidWithPoints,
        AlmostGold,
        GoldCongratulation,
        ReferralReminder,
        FriendWelcome,
        ReferrerBonus,
        ExpiryWarning,
        DepositReceived,
        WelcomeBack,
        FirstAppLogin,
        AppOrder,
        TierUp,
        SilverToGold,
    ],
)
