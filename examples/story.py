"""The story that `loyalty demo` and `make run` play, and the outcomes it must reach.

Two brands side by side, as Salesforce Loyalty Management allows: ``coffee`` and ``tea``.

coffee (SessionM, Zeta, a return):
 0. ana and ben join with their marketing list ids (``alt_id``): from now on the profile
    stream keeps their loyalty fields in the demo's marketing list (Zeta's Loyalty
    Profile Stream to Selligent), whatever changes them.
 1. ana signs in to the coffee shop's website: 10 points (earn rule, at most once a day).
 2. She signs in again the same day: nothing.
 3. A "day" later (5 seconds in the demo program) she signs in again: 20 points, silver.
 4. She buys an 85 EUR subscription: 105 points, gold; the silver → gold flow sends one
    congratulation e-mail through the webhook to the demo's receiver (Zeta/Selligent).
 5. She spends 90 points on free drinks: 15 left.
 6. She returns the subscription: its 85 points are clawed back, 15 from her balance
    and 70 she already spent become debt. Tier maintenance (every "day") moves her back
    down to silver.
 7. Customer service gives ben 950 points: more than 900 and less than 1000, he enters
    the ``almost-gold`` segment (Zeta's example); at the next weekly run (a demo "week",
    35 seconds) the recurring journey sends him a nudge through the webhook.

tea (Heyloyalty's flows, one per trigger):
 8. dana buys 60 EUR of tea: 60 points (earn rule) and leaf tier; the new-purchase flow
    gives 10 earned points, the new-stage flow 20.
 9. ana buys 12 EUR of tea too: her tea points are apart from her coffee ones.
10. dana refers eli: the referral flow gives dana 25 earned points.
11. eli joins: the referral-approved flow welcomes eli with 50 points; the referral
    friend approved flow gives dana a bonus of 75.
12. Customer service gives dana 50 points through the API: the points-via-API flow adds
    10 earned points, and her balance above 200 turns 100 points into a voucher.
Meanwhile housekeeping (every "day") matures earned points, and, as tea points expire
after 7 days, the bonus-expires flow reminds each member 7 days before (and nudges with
5 earned points).
"""

from __future__ import annotations

from typing import Any

from examples.messaging import WEBHOOK_SECRET_ENV, list_port, webhook_port
from examples.programs import DAY
from examples.stories import Outcome, Snapshot, Step, Story

Event = dict[str, Any]
JOURNEYS_QUERY = (
    'LoyaltyMemberId IS NOT NULL AND (LoyaltyProgram = "coffee" OR LoyaltyProgram = "tea")'
)


def story(run: int = 1) -> Story:
    """The story; a later ``run`` in the same data folder casts ``ana-2``, ``dana-2``…"""
    tag = "" if run == 1 else f"-{run}"
    ana, ben, dana, eli = f"ana{tag}", f"ben{tag}", f"dana{tag}", f"eli{tag}"

    def event(
        program: str, type_: str, event_id: str, member: str, **fields: Any
    ) -> dict[str, Any]:
        return {"type": type_, "program": program, "event_id": f"{event_id}{tag}",
                "member_id": member, **fields}  # fmt: skip

    def login(event_id: str) -> Event:
        return event("coffee", "activity", event_id, ana, name="web_login")

    def joins(member: str) -> Event:
        return event("coffee", "member_updated", f"join-{member}", member,
                     profile={"alt_id": f"SEL-{member}", "consent": {"email": True}})  # fmt: skip

    steps = (
        Step("coffee: ana and ben join, with their ids in the marketing list (profile stream)",
             (joins(ana), joins(ben))),
        Step("coffee: ana signs in to the coffee shop's website, 10 points (SessionM)",
             (login("login-1"),)),
        Step("coffee: ana signs in again the same day, no points: once a day",
             (login("login-2"),)),
        Step("coffee: a day later ana signs in again: 20 points cross 20, she is silver",
             (login("login-3"),), pause=DAY.total_seconds() + 1),
        Step("coffee: ana buys an 85 EUR subscription: gold, and one congratulation e-mail "
             "through the webhook (Zeta with Selligent)",
             (event("coffee", "purchase", "order-1", ana, order_id=f"o1{tag}", amount="85.00",
                    currency="EUR"),)),
        Step("coffee: ana spends 90 points on free drinks",
             (event("coffee", "points_withdrawal", "drinks-1", ana, points=90,
                    kind="available", reason="free drinks"),)),
        Step("coffee: ana returns the subscription: 85 points clawed back, 70 of them spent",
             (event("coffee", "return", "return-1", ana, order_id=f"o1{tag}",
                    amount="85.00"),)),
        Step("coffee: customer service gives ben 950 points: almost gold (900 < points < 1000, "
             "Zeta); the weekly journey nudges him at its next run",
             (event("coffee", "points_deposit", "gesture-ben", ben, points=950,
                    kind="available", reason="customer service gesture"),)),
        Step("tea: dana buys 60 EUR of tea: leaf tier (new purchase, new stage flows)",
             (event("tea", "purchase", "tea-order-1", dana, order_id=f"t1{tag}",
                    amount="60.00", currency="EUR"),)),
        Step("tea: ana buys 12 EUR of tea at the other brand: a separate balance",
             (event("tea", "purchase", "tea-order-2", ana, order_id=f"t2{tag}",
                    amount="12.00", currency="EUR"),)),
        Step("tea: dana refers her friend eli (referral flow)",
             (event("tea", "referral", "referral-1", dana, friend_id=eli),)),
        Step("tea: eli joins (referral approved); dana gets her referrer bonus "
             "(referral friend approved)",
             (event("tea", "referral_approved", "approved-1", eli, referrer_id=dana),)),
        Step("tea: customer service gives dana 50 points via the API: above 200, 100 points "
             "become a voucher (points via API, points higher than 200)",
             (event("tea", "points_deposit", "gesture-1", dana, points=50,
                    kind="available", reason="customer service gesture"),)),
    )  # fmt: skip
    return Story(
        title="loyalty-flows demo: coffee and tea side by side",
        members=(("coffee", ana), ("coffee", ben), ("tea", dana), ("tea", eli), ("tea", ana)),
        steps=steps,
        outcomes=outcomes(tag, ana, ben, dana, eli),
        journeys_query=JOURNEYS_QUERY,
        webhook_port=webhook_port(),
        webhook_secret_env=WEBHOOK_SECRET_ENV,
        list_port=list_port(),
        settle_note="waiting for housekeeping and tier maintenance (every 5 s, a demo "
        "'day'): earned points mature, 7-day expiry reminders, ana's tier is reviewed; and "
        "for the weekly almost-gold run (every 35 s, a demo 'week')",
    )


def _flows_ran(snap: Snapshot, program: str, names: set[str]) -> bool:
    ran = {j.flow for j in snap.journeys if j.program == program and j.status == "completed"}
    return names <= ran


def _journeys_done(snap: Snapshot) -> bool:
    return bool(snap.journeys) and all(j.status == "completed" for j in snap.journeys)


def outcomes(tag: str, ana: str, ben: str, dana: str, eli: str) -> tuple[Outcome, ...]:
    """What must have happened once the story is played."""

    def stage(program: str, member: str, old: str, new: str, cause: str) -> Any:
        return lambda s: (program, member, old, new, cause) in s.stages

    def balance(program: str, member: str, available: int, earned: int, debt: int) -> Any:
        return lambda s: s.balance(program, member) == (available, earned, debt)

    def tier(program: str, member: str, name: str) -> Any:
        return lambda s: s.member(program, member).tier == name

    def gold_mail(s: Snapshot) -> bool:
        mails = [r for r in s.received
                 if r.body.get("template") == "gold_welcome" and not r.duplicate]  # fmt: skip
        return (
            len(mails) == 1
            and mails[0].body.get("member_id") == ana
            and mails[0].error is None
            and not [r for r in s.received if r.error]
        )

    def nudged(s: Snapshot) -> bool:
        mails = [r for r in s.received
                 if r.body.get("template") == "almost_gold" and not r.duplicate]  # fmt: skip
        return bool(mails) and all(m.body.get("member_id") == ben for m in mails)

    def listed(s: Snapshot) -> bool:
        """The marketing list holds what the members' state says, field for field."""
        for member in (ana, ben):
            view = s.member("coffee", member)
            assert view is not None
            points = view.balances["points"]
            expected = {
                "LOYALTY_TIER": view.tier, "POINTS": points.available, "DEBT": points.debt,
                "NEXT_TIER_IN": view.tiers[0].points_to_next, "EMAIL_OPTIN": True,
                "ALMOST_GOLD": member in s.segments.get(("coffee", "almost-gold"), set()),
            }  # fmt: skip
            if s.contacts.get(f"SEL-{member}") != expected:
                return False
        return True

    def reminders(s: Snapshot) -> bool:
        reminded = {m for p, m, t, _ in s.messages if p == "tea" and t == "bonus_expiring"}
        return {dana, eli, ana} <= reminded

    heyloyalty = {
        "new-purchase", "new-stage", "points-above-200", "referral", "referral-approved",
        "referral-friend-approved", "bonus-expires", "points-via-api",
    }  # fmt: skip
    return (
        Outcome(f"coffee {ana}: 10 points for the first login, none for the second the same day",
                lambda s: [s.outcomes.get(("coffee", f"login-{n}{tag}")) for n in (1, 2)]
                == ["applied", "no_effect"]),
        Outcome(f"coffee {ana}: promoted bronze → silver by her logins",
                stage("coffee", ana, "bronze", "silver", "earn")),
        Outcome(f"coffee {ana}: promoted silver → gold by her purchase",
                stage("coffee", ana, "silver", "gold", "earn")),
        Outcome(f"coffee {ana}: exactly one gold_welcome e-mail received by the webhook "
                "receiver, signature verified", gold_mail),
        Outcome(f"coffee {ana}: the return clawed back 85 points: 0 available, 70 debt",
                balance("coffee", ana, 0, 0, 70)),
        Outcome(f"coffee {ana}: tier maintenance moved her back to silver after the return",
                lambda s: stage("coffee", ana, "gold", "silver", "maintenance")(s)
                and tier("coffee", ana, "silver")(s)),
        Outcome(f"coffee {ben}: 950 points, in the almost-gold segment",
                lambda s: ben in s.segments.get(("coffee", "almost-gold"), set())),
        Outcome(f"coffee {ben}: the weekly almost-gold journey nudged him by e-mail",
                nudged),
        Outcome(f"tea {dana}: leaf tier after her purchase",
                lambda s: stage("tea", dana, "sprout", "leaf", "earn")(s)
                and tier("tea", dana, "leaf")(s)),
        Outcome(f"tea {dana}: 100 points became a voucher when her balance went above 200",
                lambda s: _flows_ran(s, "tea", {"points-above-200"})),
        Outcome(f"tea {dana}: 155 available, earned points matured "
                "(60+20+10+25+75+50+10+5-100)", balance("tea", dana, 155, 0, 0)),
        Outcome(f"tea {eli}: 55 available (welcome 50, expiry nudge 5)",
                balance("tea", eli, 55, 0, 0)),
        Outcome(f"tea {ana}: 27 available (12+10+5), apart from her coffee balance",
                balance("tea", ana, 27, 0, 0)),
        Outcome(f"tea: a 7-day expiry reminder for {dana}, {eli} and {ana}", reminders),
        Outcome("tea: each Heyloyalty flow ran: " + ", ".join(sorted(heyloyalty)),
                lambda s: _flows_ran(s, "tea", heyloyalty)),
        Outcome("every journey completed, none failed or still running", _journeys_done),
        Outcome(f"coffee {ana} and {ben}: the marketing list holds their tier, points, debt, "
                "points to the next tier, consent and almost-gold, as the ledger does now",
                listed),
    )  # fmt: skip
