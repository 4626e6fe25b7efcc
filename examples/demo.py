"""The demo app: two programs (two brands) side by side.

Flows and the story played by `make run` grow with the flows, tiers and messages issues.
"""

from __future__ import annotations

from datetime import timedelta

from loyalty.app import LoyaltyApp, Program

app = LoyaltyApp(
    programs=[
        Program(name="default"),
        Program(
            name="coffee",
            currencies=("points", "tier_points"),
            earned_waiting_period=timedelta(minutes=2),
        ),
    ],
)
