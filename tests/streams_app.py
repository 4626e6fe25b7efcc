"""The app of `tests/test_streams_worker.py`: a program streamed to a test's list.

`loyalty worker` processes load it as ``tests.streams_app:app``; the list's URL comes
from ``STREAMS_TEST_LIST_URL``, set by the test that starts them.
"""

from __future__ import annotations

import os

from loyalty.app import LoyaltyApp, Program
from loyalty.rules import PerAmount
from loyalty.streams import HttpDestination, ProfileStream
from loyalty.tiers import Tier, TierScheme

SHOP = Program(
    name="shop",
    earn_rules=(PerAmount(),),
    tier_schemes=(
        TierScheme(tiers=(Tier(name="bronze", threshold=0), Tier(name="gold", threshold=500))),
    ),
)


def build(url: str) -> LoyaltyApp:
    """The app, streaming to the list at ``url``."""
    return LoyaltyApp(
        programs=[SHOP],
        streams=[
            ProfileStream(
                "crm",
                programs=["shop"],
                destination=HttpDestination(url=url, secret_env="LIST_SECRET", batch_size=100),
                key="profile.alt_id",
                fields={"TIER": "tier", "POINTS": "balances.points.available"},
            )
        ],
    )


app = build(os.environ.get("STREAMS_TEST_LIST_URL", "http://127.0.0.1:9/lists/loyalty"))
