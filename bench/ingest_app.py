"""The apps of bench/ingest.py and bench/loads.py.

Program ``default``: 1 point per EUR of a purchase (``PerAmount``), 10 points for a
``web_login`` at most once a day (``OnActivity`` with a ``Limit``). One flow,
``StoreVisit``, on the activity ``store_visit`` in that program, which only the journey
phase of bench/ingest.py emits.

``LOADS_APP`` holds the programs of the loads of issue 13 (`bench.workloads`): the same
rules plus a newsletter bonus once per member, in programs ``plain`` and ``deposits`` (no
tiers), ``tiered`` and ``mixed`` (bronze 0, silver 50, gold 150, lifetime) and
``threshold`` (those tiers and the flow ``AlmostThere`` on ``PointsAbove(100)``), one per
load; each has a ``<name>_ref`` twin that bench/loads.py --check applies one event at a
time. ``app``, which bench/ingest.py runs in its `loyalty dev`, has all of them.

The workflows are in `bench.ingest_flows` and the baseline's activity in
`bench.ingest_naive`, so that a journey's run does not build these programs again.
"""

from __future__ import annotations

from datetime import timedelta

from bench.ingest_flows import (
    JOURNEY_ACTIVITY,
    THRESHOLD,
    AlmostThere,
    ApplyEventWorkflow,
    StoreVisit,
)
from bench.ingest_naive import LOGIN_POINTS, NaiveApplier, NaiveEvent
from loyalty.app import LoyaltyApp, Program
from loyalty.rules import Limit, OnActivity, PerAmount
from loyalty.tiers import Tier, TierScheme

__all__ = [
    "JOURNEY_ACTIVITY", "LOADS_APP", "LOGIN_POINTS", "THRESHOLD", "ApplyEventWorkflow",
    "NaiveApplier", "NaiveEvent", "app",
]  # fmt: skip


RULES = (
    PerAmount(points_per_unit=1),
    OnActivity("web_login", points=LOGIN_POINTS, limit=Limit(1, per=timedelta(days=1))),
    OnActivity("newsletter_signup", points=25, max_per_member=1),
)
_TIERS = TierScheme(
    tiers=(
        Tier(name="bronze", threshold=0),
        Tier(name="silver", threshold=50),
        Tier(name="gold", threshold=150),
    ),
)
# The loads' programs (`bench.workloads.LOADS`): with the tier scheme or without.
LOAD_PROGRAMS = {
    "plain": False, "tiered": True, "deposits": False, "mixed": True, "threshold": True,
}  # fmt: skip
LOADS_APP = LoyaltyApp(
    programs=[
        Program(name=name, earn_rules=RULES, tier_schemes=(_TIERS,) if tiers else ())
        for base, tiers in LOAD_PROGRAMS.items()
        for name in (base, f"{base}_ref")
    ],
    flows=[AlmostThere],
)
app = LoyaltyApp(
    programs=[
        Program(name="default", earn_rules=RULES[:2]),  # per EUR and web_login
        *LOADS_APP.programs.values(),
    ],
    flows=[StoreVisit, *LOADS_APP.flows],
)
