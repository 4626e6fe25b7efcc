"""Segments: named, composable conditions over a member's state, kept current in SQL.

Owns the definitions (`spec`: ``Segment`` and the condition builders, compiled to
set-based SQL) and their membership (`membership`: install at the worker's start-up,
full recomputes, listings). `spec` is a definition and imports only definitions;
`membership` is engine SQL and imports `spec`, `loyalty.app` and `loyalty.store`.

    from loyalty.segments import Segment, balance

    almost_gold = Segment("almost-gold", program="coffee", where=balance().between(901, 999))
"""

from loyalty.segments.spec import (
    Condition,
    Segment,
    balance,
    consent,
    enrolled,
    in_segment,
    last_activity,
    lifetime_earned,
    points_to_next_tier,
    profile,
    qualifying_points,
    tier_in,
    tier_not_in,
)

__all__ = [
    "Condition",
    "Segment",
    "balance",
    "consent",
    "enrolled",
    "in_segment",
    "last_activity",
    "lifetime_earned",
    "points_to_next_tier",
    "profile",
    "qualifying_points",
    "tier_in",
    "tier_not_in",
]
