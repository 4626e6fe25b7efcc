"""Profile streams: definitions checked, changes captured in the writing transaction,
coalesced, diffed, delivered in order to a real HTTP list on 127.0.0.1 that refuses,
rejects and restarts; disable, enable, mapping changes, resync and deletes.

The delivery activity runs in `temporalio.testing.ActivityEnvironment` against real
PostgreSQL; a failed request is retried by calling it again, as Temporal would.
`tests/test_streams_worker.py` runs the same stream in a real worker on the dev server.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.streams import StreamActivities
from examples.marketing_list import MarketingList
from loyalty.app import LoyaltyApp, Program
from loyalty.errors import InvalidStreams
from loyalty.events import (
    AnyEvent,
    MemberDeleted,
    MemberUpdated,
    PointsDeposit,
    PointsWithdrawal,
    Purchase,
    Return,
)
from loyalty.ingest.inbox import insert_events
from loyalty.ledger.maturing import expire_due, mature_due
from loyalty.ledger.members import member_view
from loyalty.messages.providers import Secrets
from loyalty.models import StreamRunInput
from loyalty.policies import Rolling
from loyalty.router.processing import EventProcessor, process_batch
from loyalty.rules import PerAmount
from loyalty.segments import Segment, balance
from loyalty.segments.membership import install as install_segments
from loyalty.store.db import create_pool, prepare_database
from loyalty.streams import HttpDestination, ProfileStream, capture
from loyalty.tiers import Tier, TierScheme
from loyalty.tiers.maintenance import run_maintenance

SECRET = "list-secret"
NOW = datetime.now(UTC)
SHOP = Program(
    name="shop",
    earn_rules=(PerAmount(),),
    expiry={"points": Rolling(days=30)},
    tier_schemes=(
        TierScheme(
            window=timedelta(days=60),
            tiers=(
                Tier(name="bronze", threshold=0),
                Tier(name="silver", threshold=100),
                Tier(name="gold", threshold=300),
            ),
        ),
    ),
)
RICH = Segment("rich", "shop", where=balance().at_least(300))
FIELDS = {
    "TIER": "tier",
    "POINTS": "balances.points.available",
    "EARNED": "balances.points.earned",
    "NEXT_TIER_IN": "tiers.main.to_next",
    "EMAIL_OPTIN": "profile.consent.email",
    "RICH": "segments.rich",
}


def stream(url: str, **changes: Any) -> ProfileStream:
    """The test's stream to the list at ``url``."""
    return ProfileStream(
        "crm",
        programs=["shop"],
        destination=HttpDestination(url=url, secret_env="LIST_SECRET", batch_size=10),
        key=changes.pop("key", "profile.alt_id"),
        fields=changes.pop("fields", FIELDS),
        **changes,
    )


def app_with(crm: ProfileStream) -> LoyaltyApp:
    return LoyaltyApp(programs=[SHOP], segments=[RICH], streams=[crm])


class Harness:
    """The database, the list and the delivery activity of one test."""

    def __init__(self, pool: asyncpg.Pool, conn: asyncpg.Connection, shop: MarketingList) -> None:
        self.pool, self.conn, self.list = pool, conn, shop
        self.app = app_with(stream(shop.url))
        self.processor = EventProcessor(self.app)
        self.http = httpx.AsyncClient()
        self.failures = 0
        self._ids = iter(range(10**9))

    async def install(self, crm: ProfileStream) -> capture.Installed:
        self.app = app_with(crm)
        self.processor = EventProcessor(self.app)
        await install_segments(self.conn, self.app)
        return await capture.install(self.conn, list(self.app.streams.values()))

    def eid(self) -> str:
        return f"e{next(self._ids)}"

    async def apply(self, *events: AnyEvent) -> None:
        await insert_events(self.conn, list(events))
        while True:
            done = await process_batch(
                self.conn, self.processor, program="shop", partitions=1, partition=0,
                batch_size=500, max_attempts=3, task_queue="streams",
            )  # fmt: skip
            if done.events == 0:
                return

    async def deliver(self, seconds: float = 0.3) -> None:
        """One run of the activity; a failed request counts, as Temporal would retry it."""
        acts = StreamActivities(self.pool, self.app, self.http, Secrets({"LIST_SECRET": SECRET}))
        try:
            await ActivityEnvironment().run(
                acts.deliver, StreamRunInput(stream="crm", seconds=seconds)
            )
        except ApplicationError as exc:
            if exc.type != "DeliveryFailed":
                raise
            self.failures += 1

    async def drain(self) -> capture.StreamStatus:
        for _ in range(300):
            await self.deliver(0.05)
            status = await capture.status(self.conn, "crm")
            if status.pending == 0 and status.in_flight == 0:
                return status
        raise AssertionError(f"the stream did not drain: {status}")

    async def expected(self) -> dict[str, dict[str, Any]]:
        """The list as the member view says it should be, independently of the stream."""
        ids = [
            r["member_id"]
            for r in await self.conn.fetch("SELECT member_id FROM members WHERE program = 'shop'")
        ]
        found = {}
        for member_id in ids:
            view = await member_view(self.conn, "shop", member_id)
            alt = view.profile.get("alt_id")
            if view.erased_at is not None or not alt:
                continue
            points = view.balances.get("points")
            available = points.available if points else 0
            found[alt] = {
                "TIER": view.tier,
                "POINTS": available,
                "EARNED": points.earned if points else 0,
                "NEXT_TIER_IN": view.tiers[0].points_to_next,
                "EMAIL_OPTIN": (view.profile.get("consent") or {}).get("email"),
                "RICH": available >= 300,
            }
        return found


@pytest_asyncio.fixture
async def harness(database_url: str) -> Any:
    shop = MarketingList(SECRET)
    shop.start()
    pool = await create_pool(database_url, 4)
    conn = await pool.acquire()
    h = Harness(pool, conn, shop)
    await prepare_database(database_url, h.app)
    await h.install(stream(shop.url))
    try:
        yield h
    finally:
        shop.gate.set()
        shop.stop()
        await h.http.aclose()
        await pool.release(conn)
        await pool.close()


def profile(h: Harness, member: str, **fields: Any) -> MemberUpdated:
    return MemberUpdated(event_id=h.eid(), member_id=member, program="shop", profile=fields)


def buy(h: Harness, member: str, amount: int, days_ago: float = 0) -> Purchase:
    return Purchase(
        event_id=h.eid(), member_id=member, program="shop", order_id=f"o{h.eid()}",
        amount=Decimal(amount), currency="EUR", occurred_at=NOW - timedelta(days=days_ago),
    )  # fmt: skip


def test_definitions_are_checked_naming_the_stream_and_the_field() -> None:
    url = "http://127.0.0.1:9/list"
    with pytest.raises(InvalidStreams) as caught:
        LoyaltyApp(
            programs=[SHOP],
            segments=[RICH],
            streams=[
                stream(url, fields={"A": "balances.stars.available", "B": "tiers.vip.to_next",
                                    "C": "segments.poor", "D": "tier"}),
                ProfileStream("other", programs=["nowhere"], fields={"A": "tier"},
                              destination=HttpDestination(url=url, secret_env="S")),
            ],
        )  # fmt: skip
    assert caught.value.problems == [
        "stream 'crm': field 'A': 'balances.stars.available': no currency 'stars' in "
        "program 'shop'; currencies: points",
        "stream 'crm': field 'B': 'tiers.vip.to_next': no tier scheme 'vip' in program "
        "'shop'; schemes: main",
        "stream 'crm': field 'C': 'segments.poor': no segment 'poor' in program 'shop'; "
        "segments: rich",
        "stream 'other': program 'nowhere' is not defined by the app; programs: shop",
    ]
    with pytest.raises(ValueError, match=r"field 'X': 'balance\.points' is not a source path"):
        stream(url, fields={"X": "balance.points"})
    with pytest.raises(ValueError, match=r"the key is member_id or a profile\.<field> path"):
        stream(url, key="email")


@pytest.mark.parametrize("seed", [11, 29])
async def test_a_random_load_converges_through_refusals_and_a_restart(
    harness: Harness, seed: int
) -> None:
    h, rng = harness, random.Random(seed)
    h.list.fail_rate = 0.2
    h.list.random.seed(seed)
    members = [f"m{i}" for i in range(24)]
    orders: list[Purchase] = []
    alt = {m: f"alt-{m}" for m in members}
    await h.apply(*(profile(h, m, alt_id=alt[m], consent={"email": True}) for m in members[:20]))
    for round_ in range(12):
        events: list[AnyEvent] = []
        for _ in range(30):
            m, roll = rng.choice(members), rng.random()
            if roll < 0.35:
                orders.append(buy(h, m, rng.randint(5, 160), days_ago=rng.uniform(0, 40)))
                events.append(orders[-1])
            elif roll < 0.45 and orders:
                order = rng.choice(orders)
                events.append(Return(event_id=h.eid(), member_id=order.member_id, program="shop",
                                     order_id=order.order_id, amount=order.amount / 2))  # fmt: skip
            elif roll < 0.6:
                events.append(PointsWithdrawal(
                    event_id=h.eid(), member_id=m, program="shop", points=rng.randint(1, 120),
                    kind="available", reason="spend",
                ))  # fmt: skip
            elif roll < 0.7:
                events.append(PointsDeposit(
                    event_id=h.eid(), member_id=m, program="shop", points=rng.randint(1, 90),
                    kind="earned", reason="bonus", occurred_at=NOW - timedelta(days=20),
                ))  # fmt: skip
            elif roll < 0.85:
                consent = {"email": rng.random() < 0.5}
                if rng.random() < 0.2:
                    alt[m] = f"alt-{m}-{round_}"
                events.append(profile(h, m, alt_id=alt[m], consent=consent))
            elif roll < 0.9:
                events.append(MemberDeleted(event_id=h.eid(), member_id=m, program="shop"))
        await h.apply(*events)
        if round_ % 4 == 3:
            await mature_due(h.conn, "shop", NOW)
            await expire_due(h.conn, SHOP, NOW)
        if round_ == 8:
            # Demotions: maintenance a month on, when part of the window has passed.
            await run_maintenance(h.conn, SHOP, SHOP.tier_schemes[0], NOW + timedelta(days=30))
        if round_ == 5:
            h.list.stop()
            await h.deliver()
            h.list.start()
        await h.deliver()
    status = await h.drain()
    assert h.list.snapshot() == await h.expected()
    assert h.failures > 0
    assert h.list.refused > 0
    assert h.list.errors == []  # a key was never sent again with other records
    assert h.list.duplicates == 0  # a refused or unreachable request applied nothing
    assert h.list.redundant == 0  # nor was a record sent again under another key
    for key, contact in h.list.contacts.items():
        assert contact.batches == sorted(contact.batches), key  # in order per contact
    assert status.rejected == 0
    assert status.failures == h.failures
    assert status.requests == h.list.requests + status.failures - h.list.refused


async def test_a_member_changed_fifty_times_is_sent_once_with_the_latest_values(
    harness: Harness,
) -> None:
    h = harness
    await h.apply(profile(h, "ann", alt_id="A1", consent={"email": True}))
    await h.drain()
    before = h.list.requests
    for _ in range(50):
        await h.apply(PointsDeposit(event_id=h.eid(), member_id="ann", program="shop",
                                    points=7, kind="available", reason="tick"))  # fmt: skip
    assert await h.conn.fetchval("SELECT version FROM stream_marks WHERE member_id = 'ann'") >= 50
    await h.drain()
    assert h.list.requests == before + 1
    # Deposits are not qualifying points: the tier stays, only two fields changed.
    assert h.list.bodies[-1]["upserts"] == [
        {"key": "A1", "program": "shop", "fields": {"POINTS": 350, "RICH": True}}
    ]
    assert h.list.snapshot() == await h.expected()


async def test_disabled_keeps_marking_and_a_mapping_change_sends_only_what_changed(
    harness: Harness,
) -> None:
    h = harness
    await h.apply(*(profile(h, m, alt_id=f"A-{m}", consent={"email": True}) for m in "abc"))
    await h.drain()
    assert await capture.set_enabled(h.conn, "crm", False)
    await h.apply(buy(h, "a", 120), buy(h, "a", 10))
    await h.deliver()
    status = await capture.status(h.conn, "crm")
    assert (status.enabled, status.pending, h.list.snapshot()["A-a"]["POINTS"]) == (False, 1, 0)
    assert await capture.set_enabled(h.conn, "crm", True)
    await h.drain()
    assert h.list.bodies[-1]["upserts"] == [
        {"key": "A-a", "program": "shop", "fields": {"TIER": "silver", "POINTS": 130,
                                                      "NEXT_TIER_IN": 170}}
    ]  # fmt: skip
    # A new field and a renamed one: every member gets those two only.
    fields = {
        **FIELDS,
        "LIFETIME": "balances.points.lifetime_earned",
        "OPTIN": "profile.consent.email",
    }
    del fields["EMAIL_OPTIN"]
    installed = await h.install(stream(h.list.url, fields=fields))
    assert installed.changed == ["crm"]
    await h.drain()
    sent = [u for b in h.list.bodies[-1:] for u in b["upserts"]]
    assert sorted(sent, key=lambda u: u["key"]) == [
        {"key": "A-a", "program": "shop", "fields": {"LIFETIME": 130, "OPTIN": True}},
        {"key": "A-b", "program": "shop", "fields": {"LIFETIME": 0, "OPTIN": True}},
        {"key": "A-c", "program": "shop", "fields": {"LIFETIME": 0, "OPTIN": True}},
    ]
    # The same definition again (a restart) marks nothing.
    assert (await h.install(stream(h.list.url, fields=fields))).changed == []
    assert (await capture.status(h.conn, "crm")).pending == 0


async def test_rejected_records_wait_for_the_next_change_or_a_resync(harness: Harness) -> None:
    h = harness
    h.list.reject = lambda key, fields: "no such contact" if key == "A-bad" else None
    await h.apply(profile(h, "ok", alt_id="A-ok"), profile(h, "bad", alt_id="A-bad"))
    status = await h.drain()
    assert (status.upserts, status.rejected, status.rejected_now) == (1, 1, 1)
    reason = await h.conn.fetchval("SELECT reason FROM stream_rejections WHERE key = 'A-bad'")
    assert reason == "no such contact"
    assert set(h.list.snapshot()) == {"A-ok"}
    h.list.reject = None
    await h.apply(buy(h, "bad", 40))
    await h.drain()
    # Sent again whole: the list never held it.
    assert h.list.snapshot() == await h.expected()
    assert (await capture.status(h.conn, "crm")).rejected_now == 0
    # A 4xx refuses the whole batch; a resync sends every full record again.
    h.list.reject = lambda key, fields: "refused"
    await h.apply(buy(h, "ok", 30))
    await h.drain()
    assert (await capture.status(h.conn, "crm")).rejected_now == 1
    h.list.reject = None
    assert await capture.resync(h.conn, "crm") == 2
    requests = h.list.requests
    await h.drain()
    assert h.list.requests == requests + 1
    assert {len(u["fields"]) for u in h.list.bodies[-1]["upserts"]} == {len(FIELDS)}
    assert h.list.snapshot() == await h.expected()


async def test_erasure_deletes_the_key_and_a_new_alt_id_moves_the_contact(
    harness: Harness,
) -> None:
    h = harness
    await h.apply(profile(h, "m1", alt_id="OLD"), profile(h, "m2", alt_id="GONE"), buy(h, "m1", 50))
    await h.drain()
    erase = MemberDeleted(event_id=h.eid(), member_id="m2", program="shop")
    await h.apply(profile(h, "m1", alt_id="NEW"), erase)
    await h.drain()
    body = h.list.bodies[-1]
    assert sorted(d["key"] for d in body["deletes"]) == ["GONE", "OLD"]
    assert [u["key"] for u in body["upserts"]] == ["NEW"]
    assert len(body["upserts"][0]["fields"]) == len(FIELDS)
    assert h.list.snapshot() == await h.expected() == {"NEW": h.list.snapshot()["NEW"]}
    assert h.list.contacts["GONE"].fields == {}  # the contact stays, without loyalty fields
    assert await h.conn.fetchval("SELECT count(*) FROM stream_records") == 1
