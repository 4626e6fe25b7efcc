"""The demo's programs: two brands side by side, with time made short.

Time is accelerated only through settings of these programs, never by faking the
clock: in the demo, 5 seconds stand for a day.

- ``coffee`` (SessionM's and Zeta's cases): 10 points per ``web_login``, at most one per
  "day" (``Limit(1, per=5 s)``), 1 point per EUR; tiers bronze 0, silver 20, gold 100
  (lifetime); tier maintenance and housekeeping every 5 seconds; e-mails through the
  webhook to the demo's receiver; returns put spent points in debt.
- ``tea`` (Heyloyalty's flows): 1 point per EUR; tiers sprout 0, leaf 50, blossom 150;
  earned points wait 5 seconds; points expire 7 days after they were earned
  (``Rolling(days=7)``), so the 7-day reminder is due at the first housekeeping run,
  every 5 seconds.
- ``default``: no rules, for the commands of the README's "Try it".

Segments (`segments`): ``almost-gold`` in coffee, Zeta's example, members with more than
900 and less than 1000 points; the ``almost-gold-weekly`` flow (`examples.flows`) nudges
them every demo "week" (7 demo days, 35 seconds).

The profile stream (`streams`): coffee's loyalty fields in the demo's marketing list
(Zeta's Loyalty Profile Stream to Selligent), keyed by the profile's ``alt_id``.
"""

from __future__ import annotations

from datetime import timedelta

from examples.messaging import WEBHOOK_SECRET_ENV, coffee_messages, list_url
from loyalty.app import Program
from loyalty.policies import Rolling
from loyalty.rules import Limit, OnActivity, PerAmount
from loyalty.segments import Segment, balance
from loyalty.streams import HttpDestination, ProfileStream
from loyalty.tiers import Schedule, Tier, TierScheme

DAY = timedelta(seconds=5)
"""What stands for a day in the demo's programs."""
WEEK = 7 * DAY
EVERY_DAY = Schedule(every=DAY)
EVERY_WEEK = Schedule(every=WEEK)

COFFEE_TIERS = TierScheme(
    tiers=(
        Tier(name="bronze", threshold=0),
        Tier(name="silver", threshold=20),
        Tier(name="gold", threshold=100),
    ),
    schedule=EVERY_DAY,
)
TEA_TIERS = TierScheme(
    tiers=(
        Tier(name="sprout", threshold=0),
        Tier(name="leaf", threshold=50),
        Tier(name="blossom", threshold=150),
    ),
    schedule=EVERY_DAY,
)


def programs() -> list[Program]:
    """The demo's programs (the coffee webhook's URL is read now: see `examples.messaging`)."""
    coffee = Program(
        name="coffee",
        earn_rules=(
            OnActivity("web_login", points=10, limit=Limit(1, per=DAY)),
            PerAmount(name="per_amount", points_per_unit=1, money_currency="EUR"),
        ),
        tier_schemes=(COFFEE_TIERS,),
        return_policy="debt",
        housekeeping=EVERY_DAY,
        messages=coffee_messages(),
    )
    tea = Program(
        name="tea",
        earn_rules=(PerAmount(name="per_amount", points_per_unit=1, money_currency="EUR"),),
        tier_schemes=(TEA_TIERS,),
        earned_waiting_period=DAY,
        expiry={"points": Rolling(days=7)},
        housekeeping=EVERY_DAY,
    )
    return [Program(name="default"), coffee, tea]


def segments() -> list[Segment]:
    """The demo's segments: Zeta's "more than 900 but less than 1000 points"."""
    return [Segment("almost-gold", "coffee", where=balance().between(901, 999))]


def streams() -> list[ProfileStream]:
    """The coffee program's members in the demo's marketing list (the URL is read now)."""
    return [
        ProfileStream(
            "selligent-list",
            programs=["coffee"],
            destination=HttpDestination(url=list_url(), secret_env=WEBHOOK_SECRET_ENV),
            key="profile.alt_id",
            fields={
                "LOYALTY_TIER": "tier",
                "POINTS": "balances.points.available",
                "DEBT": "balances.points.debt",
                "NEXT_TIER_IN": "tiers.main.to_next",
                "EMAIL_OPTIN": "profile.consent.email",
                "ALMOST_GOLD": "segments.almost-gold",
            },
        )
    ]
