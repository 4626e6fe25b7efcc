"""The apps of bench/ingest.py and bench/loads.py, and the naive per-event workflow.

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

``ApplyEventWorkflow`` / ``NaiveApplier.apply_event`` are the baseline: one workflow per
event, one activity that writes the award with ``loyalty.ledger.award``. The login's
daily cap becomes an idempotency key per member and day (calendar day, where the rule has
a sliding window: the same outcome for this benchmark's events, which share one day)."""

from __future__ import annotations

from datetime import timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import Literal

from temporalio import activity, workflow

# Passed through: the sandbox must not re-import asyncpg or pydantic per workflow run.
with workflow.unsafe.imports_passed_through():
    import asyncpg
    from pydantic import AwareDatetime, BaseModel, ConfigDict

    from loyalty import events, ledger
    from loyalty.app import LoyaltyApp, Program
    from loyalty.flows import flow
    from loyalty.rules import Limit, OnActivity, PerAmount
    from loyalty.tiers import Tier, TierScheme
    from loyalty.triggers import Activity, PointsAbove

LOGIN_POINTS = 10
JOURNEY_ACTIVITY = "store_visit"
THRESHOLD = 100  # of AlmostThere
APPLY_TIMEOUT = timedelta(seconds=60)


@flow(trigger=Activity(JOURNEY_ACTIVITY), program="default")
@workflow.defn
class StoreVisit:
    """A journey per store visit; it does nothing, the benchmark counts its starts."""

    @workflow.run
    async def run(self, trigger: events.Activity) -> None:
        workflow.logger.debug("store visit of %s", trigger.member_id)


class NaiveEvent(BaseModel):
    """One event for the baseline: a purchase (with its amount) or a web_login."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_id: str
    member_id: str
    type: Literal["purchase", "web_login"]
    amount: Decimal = Decimal(0)
    occurred_at: AwareDatetime


class NaiveReceipt(BaseModel):
    """The ledger transaction the event produced (or found under its key)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    transaction_id: int


class NaiveApplier:
    """The baseline's one activity; holds the worker's pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @activity.defn
    async def apply_event(self, event: NaiveEvent) -> NaiveReceipt:
        """Award a purchase's points, or a login's once per member and day."""
        if event.type == "purchase":
            points = int(event.amount.to_integral_value(ROUND_FLOOR))
            key = f"naive:{event.event_id}"
        else:
            points = LOGIN_POINTS
            key = f"naive:login:{event.member_id}:{event.occurred_at.date()}"
        async with self._pool.acquire() as conn, conn.transaction():
            receipt = await ledger.award(
                conn, program="default", member_id=event.member_id, points=points,
                kind="available", currency="points", reason=f"naive {event.type}",
                source="bench", key=key, occurred_at=event.occurred_at, available_at=None,
            )  # fmt: skip
        return NaiveReceipt(transaction_id=receipt.transaction_id)


@workflow.defn
class ApplyEventWorkflow:
    """The naive design: a workflow per event, with one activity that applies it."""

    @workflow.run
    async def run(self, event: NaiveEvent) -> NaiveReceipt:
        return await workflow.execute_activity_method(
            NaiveApplier.apply_event, event, start_to_close_timeout=APPLY_TIMEOUT
        )


@flow(trigger=PointsAbove(THRESHOLD), program=("threshold", "threshold_ref"))
@workflow.defn
class AlmostThere:
    """A journey when the balance crosses 100; bench/loads.py only records its start."""

    @workflow.run
    async def run(self, trigger: events.PointsAbove) -> None:
        workflow.logger.debug("%s crossed %s", trigger.member_id, trigger.threshold)


_RULES = (
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
        Program(name=name, earn_rules=_RULES, tier_schemes=(_TIERS,) if tiers else ())
        for base, tiers in LOAD_PROGRAMS.items()
        for name in (base, f"{base}_ref")
    ],
    flows=[AlmostThere],
)
app = LoyaltyApp(
    programs=[
        Program(name="default", earn_rules=_RULES[:2]),  # per EUR and web_login
        *LOADS_APP.programs.values(),
    ],
    flows=[StoreVisit, *LOADS_APP.flows],
)
