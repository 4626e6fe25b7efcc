"""The demo's flows: the Zeta cases on coffee, Heyloyalty's flows on tea.

Every Heyloyalty flow assigns or removes points, available or earned, under an
``action=`` name (its idempotency key: a retried or replayed step applies once). The
earn rules of `examples.programs` give the points of purchases and logins; these flows
add what a marketer configures on top.
"""

from __future__ import annotations

from temporalio import workflow

from examples.programs import EVERY_WEEK
from loyalty.flows import Entry, flow
from loyalty.journeys import award_points, remove_points, send_message
from loyalty.triggers import (
    BonusExpiring,
    NewStage,
    PointsAbove,
    PointsDeposit,
    Purchase,
    Recurring,
    Referral,
    ReferralApproved,
    ReferralFriendApproved,
)

with workflow.unsafe.imports_passed_through():
    from loyalty import events

PURCHASE_BONUS = 10
STAGE_GIFT = 20
VOUCHER_THRESHOLD = 200
VOUCHER_POINTS = 100
REFERRAL_PENDING = 25
FRIEND_WELCOME = 50
REFERRER_BONUS = 75
EXPIRY_NUDGE = 5
API_BONUS = 10


@flow(trigger=NewStage(from_="silver", to="gold"), entry=Entry.ONCE_PER_MEMBER, program="coffee")
@workflow.defn
class GoldCongratulation:
    """Zeta with Selligent: silver → gold sends one congratulation, through the webhook."""

    @workflow.run
    async def run(self, trigger: events.NewStage) -> None:
        await send_message(
            trigger.member_id, "gold_welcome", event=trigger, action="congratulate",
            data={"from_tier": trigger.from_tier, "to_tier": trigger.to_tier},
        )  # fmt: skip


@flow(
    trigger=Recurring(schedule=EVERY_WEEK, segment="almost-gold"), program="coffee",
    name="almost-gold-weekly",
)  # fmt: skip
@workflow.defn
class AlmostGoldNudge:
    """Zeta's recurring journey: every week, each member with more than 900 and less than
    1000 points (the ``almost-gold`` segment then) gets a nudge, once per week."""

    @workflow.run
    async def run(self, trigger: events.RecurringRun) -> None:
        await send_message(
            trigger.member_id, "almost_gold", event=trigger, action="nudge",
            data={"goal": 1000, "week": trigger.scheduled_at.isoformat()},
        )  # fmt: skip


@flow(trigger=Purchase(), program="tea", name="new-purchase")
@workflow.defn
class NewPurchase:
    """New purchase: 10 earned points on top of the earn rule's, usable after a "day"."""

    @workflow.run
    async def run(self, trigger: events.Purchase) -> None:
        await award_points(
            trigger.member_id, PURCHASE_BONUS, kind="earned",
            reason=f"purchase bonus, order {trigger.order_id}", action="purchase-bonus",
        )  # fmt: skip


@flow(trigger=NewStage(direction="up"), program="tea", name="new-stage")
@workflow.defn
class NewStageGift:
    """New stage: 20 available points for every promotion."""

    @workflow.run
    async def run(self, trigger: events.NewStage) -> None:
        await award_points(
            trigger.member_id, STAGE_GIFT, kind="available",
            reason=f"welcome to {trigger.to_tier}", action="stage-gift",
        )  # fmt: skip


@flow(trigger=PointsAbove(VOUCHER_THRESHOLD), program="tea", name="points-above-200")
@workflow.defn
class PointsToVoucher:
    """Points higher than 200: 100 available points become a voucher (removed)."""

    @workflow.run
    async def run(self, trigger: events.PointsAbove) -> None:
        await remove_points(
            trigger.member_id, VOUCHER_POINTS, kind="available",
            reason="converted into a 10 EUR voucher", action="voucher",
        )  # fmt: skip
        await send_message(
            trigger.member_id, "voucher", event=trigger, action="voucher-mail",
            data={"points": VOUCHER_POINTS, "value": "10 EUR"},
        )  # fmt: skip


@flow(trigger=Referral(), program="tea", name="referral")
@workflow.defn
class ReferralSent:
    """Referral: the referrer earns 25 points, usable after a "day"."""

    @workflow.run
    async def run(self, trigger: events.Referral) -> None:
        await award_points(
            trigger.member_id, REFERRAL_PENDING, kind="earned",
            reason=f"referred {trigger.friend_id}", action="referral",
        )  # fmt: skip


@flow(trigger=ReferralApproved(), program="tea", name="referral-approved")
@workflow.defn
class FriendWelcome:
    """Referral approved: the friend who joined gets 50 available points."""

    @workflow.run
    async def run(self, trigger: events.ReferralApproved) -> None:
        await award_points(
            trigger.member_id, FRIEND_WELCOME, kind="available",
            reason=f"welcome, friend of {trigger.referrer_id}", action="friend-welcome",
        )  # fmt: skip


@flow(trigger=ReferralFriendApproved(), program="tea", name="referral-friend-approved")
@workflow.defn
class ReferrerBonus:
    """Referral friend approved: the referrer gets a bonus of 75 available points."""

    @workflow.run
    async def run(self, trigger: events.ReferralFriendApproved) -> None:
        await award_points(
            trigger.member_id, REFERRER_BONUS, kind="available",
            reason=f"{trigger.friend_id} joined", action="referrer-bonus",
        )  # fmt: skip


@flow(
    trigger=BonusExpiring(days_before=7), entry=Entry.ONCE_PER_MEMBER, program="tea",
    name="bonus-expires",
)  # fmt: skip
@workflow.defn
class ExpiryReminder:
    """Bonus expires: a reminder 7 days before points expire, and a 5-point nudge.

    Once per member: the nudge's own lot expires too, and must not remind again.
    """

    @workflow.run
    async def run(self, trigger: events.BonusExpiring) -> None:
        await send_message(
            trigger.member_id, "bonus_expiring", event=trigger, action="reminder",
            data={"points": trigger.points, "days_left": trigger.days_left},
        )  # fmt: skip
        await award_points(
            trigger.member_id, EXPIRY_NUDGE, kind="earned",
            reason="come back before your points expire", action="nudge",
        )  # fmt: skip


@flow(trigger=PointsDeposit(kind="available"), program="tea", name="points-via-api")
@workflow.defn
class ApiDepositBonus:
    """Points via API: 10 earned points on top of each available deposit."""

    @workflow.run
    async def run(self, trigger: events.PointsDeposit) -> None:
        await award_points(
            trigger.member_id, API_BONUS, kind="earned",
            reason=f"bonus on {trigger.reason}", action="api-bonus",
        )  # fmt: skip


FLOWS: list[type] = [
    GoldCongratulation,
    AlmostGoldNudge,
    NewPurchase,
    NewStageGift,
    PointsToVoucher,
    ReferralSent,
    FriendWelcome,
    ReferrerBonus,
    ExpiryReminder,
    ApiDepositBonus,
]
