"""The baseline's activity and models: one workflow per event (`bench.ingest_flows`), one
activity that writes the award with ``loyalty.ledger.award``.

The login's daily cap becomes an idempotency key per member and day (calendar day, where
the rule has a sliding window: the same outcome for this benchmark's events, which share
one day). Not a workflow module: `bench.ingest_flows` imports it passed through.
"""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal
from typing import Literal

import asyncpg
from pydantic import AwareDatetime, BaseModel, ConfigDict
from temporalio import activity

from loyalty import ledger

LOGIN_POINTS = 10


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
