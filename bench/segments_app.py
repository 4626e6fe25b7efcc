"""The apps of bench/segments.py (issue 15): a program with tiers and segments over it.

``ZETA_APP`` (phase 1, on its own PostgreSQL): program ``zeta`` with two currencies
(``points``, ``miles``) and one tier scheme, bronze 0 / silver 1,000 (retain 800) /
gold 5,000 (retain 4,000) over a rolling 365 days; two segments: Zeta's ``almost-gold``
(900 < available points < 1,000) and ``nudge-silver`` (silver, at most 100 qualifying
points from gold, consents to email).

``plain`` and ``segmented`` (phase 2, `loyalty dev --app`): the same programs, the
``warm`` program of the warm-ups and one program per ingest run (``shop_a1`` to
``shop_a2``, `PHASES`), each with the rules of `bench.ingest_app` (1 point
per EUR, 10 per ``web_login`` once a day, 25 for a newsletter sign-up) and bronze 0 /
silver 50 / gold 150 over a rolling 365 days. ``segmented`` adds five segments to every
program (`five`); ``plain`` has none.

``recurring`` (phase 3): program ``recur`` with Zeta's ``almost-gold`` segment and the
weekly recurring flow ``weekly-nudge`` over it (`bench.segments_flows`).
"""

from __future__ import annotations

from datetime import timedelta

from bench.ingest_app import RULES
from bench.segments_flows import NUDGE_SEGMENT, RECUR, WeeklyNudge
from loyalty.app import LoyaltyApp, Program
from loyalty.segments import (
    Segment,
    balance,
    consent,
    in_segment,
    points_to_next_tier,
    tier_in,
)
from loyalty.tiers import Tier, TierScheme

# --- phase 1: recompute over 1,000,000 members ------------------------------------------

ZETA = Program(
    name="zeta",
    currencies=("points", "miles"),
    tier_schemes=(
        TierScheme(
            tiers=(
                Tier(name="bronze", threshold=0),
                Tier(name="silver", threshold=1_000, retain=800),
                Tier(name="gold", threshold=5_000, retain=4_000),
            ),
            window=timedelta(days=365),
        ),
    ),
)
ALMOST_GOLD = Segment("almost-gold", program="zeta", where=balance().between(901, 999))
NUDGE_SILVER = Segment(
    "nudge-silver",
    program="zeta",
    where=tier_in("silver") & points_to_next_tier().at_most(100) & consent("email"),
)
ZETA_APP = LoyaltyApp(programs=[ZETA], segments=[ALMOST_GOLD, NUDGE_SILVER])

# --- phase 2: ingest with five segments and without -------------------------------------

_TIERS = TierScheme(
    tiers=(
        Tier(name="bronze", threshold=0),
        Tier(name="silver", threshold=50),
        Tier(name="gold", threshold=150),
    ),
    window=timedelta(days=365),
)
WARM = "warm"
PHASES = ("shop_a1", "shop_b1", "shop_b2", "shop_a2")
PROGRAMS = [Program(name=name, earn_rules=RULES, tier_schemes=(_TIERS,))
            for name in (WARM, *PHASES)]  # fmt: skip


def five(program: str) -> list[Segment]:
    """The five segments of a phase-2 program: balance range, tier, points to the next
    tier, consent with a balance, and one naming another segment."""
    return [
        Segment("mid-balance", program=program, where=balance().between(100, 300)),
        Segment("silver-up", program=program, where=tier_in("silver", "gold")),
        Segment("close-to-gold", program=program, where=points_to_next_tier().at_most(40)),
        Segment("reachable", program=program, where=consent("email") & balance().at_least(50)),
        Segment(
            "gold-nudge",
            program=program,
            where=in_segment("close-to-gold") & tier_in("silver") & consent("email"),
        ),
    ]


FIVE = len(five(WARM))
plain = LoyaltyApp(programs=PROGRAMS)
segmented = LoyaltyApp(programs=PROGRAMS, segments=[s for p in PROGRAMS for s in five(p.name)])

# --- phase 3: a recurring run over a segment --------------------------------------------

recurring = LoyaltyApp(
    programs=[Program(name=RECUR)],
    flows=[WeeklyNudge],
    segments=[Segment(NUDGE_SEGMENT, program=RECUR, where=balance().between(901, 999))],
)
