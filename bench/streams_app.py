"""The app of bench/streams.py (issue 16): a program with tiers, rules, a segment and a
profile stream of seven fields to the benchmark's marketing list.

Program ``crm``: the rules of `bench.ingest_app` (1 point per EUR, 10 per ``web_login``
once a day, 25 for a newsletter sign-up), bronze 0 / silver 50 / gold 150 over a rolling
365 days, Zeta's ``almost-gold`` segment (900 < available < 1,000). Stream ``list``, keyed
by ``profile.alt_id``, batches of 1,000: tier, available, earned, lifetime earned, points
to the next tier, e-mail consent, almost-gold. The list's URL is
``STREAMS_BENCH_LIST_URL``, its secret ``STREAMS_BENCH_SECRET`` (both set by the
benchmark before `loyalty dev` loads this module).
"""

from __future__ import annotations

import os
from datetime import timedelta

from bench.ingest_app import RULES
from loyalty.app import LoyaltyApp, Program
from loyalty.segments import Segment, balance
from loyalty.streams import HttpDestination, ProfileStream
from loyalty.tiers import Tier, TierScheme

CRM = Program(
    name="crm",
    earn_rules=RULES,
    tier_schemes=(
        TierScheme(
            tiers=(
                Tier(name="bronze", threshold=0),
                Tier(name="silver", threshold=50),
                Tier(name="gold", threshold=150),
            ),
            window=timedelta(days=365),
        ),
    ),
)
FIELDS = {
    "TIER": "tier",
    "POINTS": "balances.points.available",
    "EARNED": "balances.points.earned",
    "LIFETIME": "balances.points.lifetime_earned",
    "NEXT_TIER_IN": "tiers.main.to_next",
    "EMAIL_OPTIN": "profile.consent.email",
    "ALMOST_GOLD": "segments.almost-gold",
}
app = LoyaltyApp(
    programs=[CRM],
    segments=[Segment("almost-gold", "crm", where=balance().between(901, 999))],
    streams=[
        ProfileStream(
            "list",
            programs=["crm"],
            destination=HttpDestination(
                url=os.environ.get("STREAMS_BENCH_LIST_URL", "http://127.0.0.1:9/"),
                secret_env="STREAMS_BENCH_SECRET",
                batch_size=1000,
            ),
            key="profile.alt_id",
            fields=FIELDS,
        )
    ],
)
