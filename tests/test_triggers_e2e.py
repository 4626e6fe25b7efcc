"""Every trigger end to end: emit → router (earn rules, derived events) → journey → effects.

Each test runs the engine's worker with `tests.e2e_app.app` on the dev server, emits
events, and checks that the flow's journey started exactly once (its deterministic id
in ``journey_starts``, and Temporal's description of that workflow) and what it did:
the member's exact balance and the ``message_log`` rows of the ``log`` provider.

``NewStage`` runs in the ``coffee`` program, which has tiers: the SessionM case (a login
crossing the tier threshold promotes, and the tier is readable afterwards) and the Zeta
case (silver → gold congratulates once, even when the event is delivered twice).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from urllib.parse import quote

import asyncpg
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.journeys import JourneyActivities
from loyalty import events
from loyalty.events import any_event_adapter
from loyalty.ingest.derived import derived_id
from loyalty.ingest.inbox import insert_events
from starter.client import LoyaltyClient
from tests.conftest import StartWorker
from tests.e2e_app import REMINDER_AFTER, ReferralReminder, app

T0 = datetime(2025, 3, 3, 9, 0, tzinfo=UTC)
TIMEOUT = 30.0


def purchase(event_id: str, member: str, amount: int, **extra: Any) -> events.Purchase:
    return events.Purchase(
        event_id=event_id, member_id=member, order_id=f"order-{event_id}", amount=Decimal(amount),
        currency="EUR", occurred_at=T0, **extra,
    )  # fmt: skip


def deposit(
    event_id: str, member: str, points: int, kind: Literal["available", "earned"] = "available"
) -> events.PointsDeposit:
    return events.PointsDeposit(
        event_id=event_id, member_id=member, points=points, kind=kind, reason="api",
        occurred_at=T0,
    )  # fmt: skip


def activity(event_id: str, member: str, name: str, at: datetime = T0) -> events.Activity:
    return events.Activity(event_id=event_id, member_id=member, name=name, occurred_at=at)


def jid(
    queue: str,
    flow: str,
    member: str,
    event_id: str | None = None,
    program: str = "default",
    engine: bool = False,
) -> str:
    """A journey id as the router builds it (``:`` of derived event ids is encoded);
    ``engine`` for a journey triggered by an event the engine derived."""
    space = "engine" if engine else "event"
    tail = "" if event_id is None else f"/{space}/{event_id.replace(':', '%3A')}"
    return f"journey/{program}/{flow}/{member}{tail}@{queue}"


async def emit_and_wait(client: LoyaltyClient, *batch: events.BaseEvent) -> list[str]:
    """Emit each event in turn and wait for all; their outcomes (``duplicate`` for repeats)."""
    results = [await client.emit(e) for e in batch]  # type: ignore[arg-type]
    return [o.describe() for o in await client.wait(results, timeout=TIMEOUT)]


async def settled(conn: asyncpg.Connection) -> None:
    """Wait until the inbox holds no pending event (derived ones included) and every
    recorded journey is started: nothing can start another journey afterwards."""
    async with asyncio.timeout(TIMEOUT):
        while await conn.fetchval(
            "SELECT (SELECT count(*) FROM events WHERE status = 'pending')"
            " + (SELECT count(*) FROM journey_starts WHERE started_at IS NULL)"
        ):
            await asyncio.sleep(0.05)


async def journeys(conn: asyncpg.Connection, flow: str) -> list[str]:
    """The ids of the flow's recorded journeys, once everything has settled."""
    await settled(conn)
    rows = await conn.fetch(
        "SELECT workflow_id FROM journey_starts WHERE flow = $1 ORDER BY workflow_id", flow
    )
    return [r["workflow_id"] for r in rows]


async def completed(temporal: Client, workflow_id: str) -> Any:
    """The journey's result, after checking that Temporal ran it to completion."""
    handle = temporal.get_workflow_handle(workflow_id)
    async with asyncio.timeout(TIMEOUT):
        result = await handle.result()
    assert (await handle.describe()).status == WorkflowExecutionStatus.COMPLETED
    return result


async def messages(conn: asyncpg.Connection, template: str) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT member_id, data, workflow_id FROM message_log WHERE template = $1 ORDER BY id",
        template,
    )
    return [dict(r) for r in rows]


async def available(client: LoyaltyClient, member: str) -> int:
    return (await client.member(member)).balances["points"].available


async def test_purchase_with_min_amount_starts_one_journey_for_the_big_purchase_only(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    queue = (await start_worker(app=app)).task_queue
    outcomes = await emit_and_wait(client, purchase("small", "p1", 80), purchase("big", "p1", 120))
    assert outcomes == ["applied", "applied"]
    big = jid(queue, "BigPurchase", "p1", "big")
    assert await journeys(conn, "BigPurchase") == [big]
    # Not paid with points, not ordered in the app: those flows do not start.
    assert await journeys(conn, "PaidWithPoints") == []
    assert await journeys(conn, "AppOrder") == []
    await completed(dev_env.client, big)
    # 80 + 120 from the earn rule, 50 from the journey.
    assert await available(client, "p1") == 250
    assert await messages(conn, "big_purchase") == [
        {"member_id": "p1", "data": {"order_id": "order-big"}, "workflow_id": big}
    ]


async def test_purchase_paid_with_points_starts_its_flow(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    queue = (await start_worker(app=app)).task_queue
    outcomes = await emit_and_wait(
        client,
        deposit("d1", "p2", 300),
        purchase("cash", "p2", 20),
        purchase("redeem", "p2", 50, points_redeemed=100),
    )
    assert outcomes == ["applied"] * 3
    redeem = jid(queue, "PaidWithPoints", "p2", "redeem")
    assert await journeys(conn, "PaidWithPoints") == [redeem]
    await completed(dev_env.client, redeem)
    # 300 deposited + 20 earned - 100 paid + 49 earned (50 EUR less 1.00 paid in points).
    assert await available(client, "p2") == 269
    assert await messages(conn, "redeemed") == [
        {"member_id": "p2", "data": {"points": 100}, "workflow_id": redeem}
    ]


async def test_points_above_starts_when_an_earn_rule_award_crosses_the_threshold(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    queue = (await start_worker(app=app)).task_queue
    # 450, then 500 exactly (not above), then the purchase's 80 points cross: 580.
    outcomes = await emit_and_wait(
        client, deposit("d1", "a1", 450), deposit("d2", "a1", 50), purchase("buy", "a1", 80)
    )
    assert outcomes == ["applied"] * 3
    await settled(conn)
    derived = await conn.fetch(
        "SELECT event_id, status, caused_by = (SELECT id FROM events WHERE event_id = 'buy')"
        " AS by_buy FROM events WHERE type = 'points_above'"
    )
    assert [dict(r) for r in derived] == [
        {"event_id": "points_above:500:buy", "status": "processed", "by_buy": True}
    ]
    crossing = jid(queue, "AlmostGold", "a1", "points_above:500:buy", engine=True)
    assert await journeys(conn, "AlmostGold") == [crossing]
    assert await journeys(conn, "GoldCongratulation") == []
    await completed(dev_env.client, crossing)
    assert await available(client, "a1") == 580
    assert await messages(conn, "almost_gold") == [
        {"member_id": "a1", "data": {"balance": 580}, "workflow_id": crossing}
    ]


async def test_points_above_starts_when_a_journey_award_crosses_the_threshold(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    """380 deposited, a purchase of 100 earns 100 (480), then its BigPurchase journey
    awards 50: 530 crosses 500. A later deposit of 1 fires nothing more."""
    queue = (await start_worker(app=app)).task_queue
    outcomes = await emit_and_wait(client, deposit("d1", "j1", 380), purchase("buy", "j1", 100))
    assert outcomes == ["applied", "applied"]
    await settled(conn)
    await completed(dev_env.client, jid(queue, "BigPurchase", "j1", "buy"))
    await settled(conn)
    assert await emit_and_wait(client, deposit("d2", "j1", 1)) == ["applied"]
    await settled(conn)
    derived = await conn.fetch(
        "SELECT event_id, caused_by, payload FROM events WHERE type = 'points_above'"
    )
    key = f"journey:{jid(queue, 'BigPurchase', 'j1', 'buy')}:bonus"
    assert [(r["event_id"], r["caused_by"], r["payload"]["balance"]) for r in derived] == [
        (derived_id("points_above", key, 500), None, 530)
    ]
    crossing = jid(queue, "AlmostGold", "j1", quote(derived[0]["event_id"], safe=":"), engine=True)
    assert await journeys(conn, "AlmostGold") == [crossing]
    await completed(dev_env.client, crossing)
    assert await messages(conn, "almost_gold") == [
        {"member_id": "j1", "data": {"balance": 530}, "workflow_id": crossing}
    ]


async def test_referral_thanks_at_once_and_reminds_after_seven_days(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
    time_env: WorkflowEnvironment,
    pool: asyncpg.Pool,
) -> None:
    """The router starts the journey on the dev server, where its 7-day timer stays
    pending; the same journey (same id, the trigger as the router recorded it) then runs
    on the time-skipping server, which fires the timer."""
    queue = (await start_worker(app=app)).task_queue
    referral = events.Referral(event_id="ref1", member_id="r1", friend_id="f1", occurred_at=T0)
    assert await emit_and_wait(client, referral) == ["applied"]
    journey = jid(queue, "ReferralReminder", "r1", "ref1")
    assert await journeys(conn, "ReferralReminder") == [journey]
    assert await available(client, "r1") == 20
    thanks = {"member_id": "r1", "data": {"friend_id": "f1"}, "workflow_id": journey}
    async with asyncio.timeout(TIMEOUT):
        while not await messages(conn, "referral_thanks"):
            await asyncio.sleep(0.05)
    handle = dev_env.client.get_workflow_handle(journey)
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    assert await messages(conn, "referral_reminder") == []
    await handle.terminate("continued on the time-skipping server")

    payload = await conn.fetchval(
        "SELECT payload FROM journey_starts WHERE workflow_id = $1", journey
    )
    trigger = any_event_adapter.validate_python(payload)
    time_queue = f"{queue}-time"
    async with Worker(
        time_env.client,
        task_queue=time_queue,
        workflows=[ReferralReminder],
        activities=JourneyActivities(pool, app).all(),
    ):
        before = await time_env.get_current_time()
        again = await time_env.client.start_workflow(
            ReferralReminder.run, trigger, id=journey, task_queue=time_queue
        )
        # Skip time explicitly: the session's time-skipping server may hold an activity of
        # an earlier test's router, which stops it skipping time by itself.
        async with asyncio.timeout(TIMEOUT):
            while not await messages(conn, "referral_reminder"):
                await time_env.sleep(timedelta(days=1))
            await again.result()
        assert await time_env.get_current_time() - before >= REMINDER_AFTER
    # The thank-you has the same step key in both runs: sent once.
    assert await messages(conn, "referral_thanks") == [thanks]
    assert await messages(conn, "referral_reminder") == [thanks]


async def test_referral_approved_welcomes_the_friend(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    queue = (await start_worker(app=app)).task_queue
    approved = events.ReferralApproved(
        event_id="ok1", member_id="f1", referrer_id="r1", occurred_at=T0
    )
    assert await emit_and_wait(client, approved) == ["applied"]
    welcome = jid(queue, "FriendWelcome", "f1", "ok1")
    assert await journeys(conn, "FriendWelcome") == [welcome]
    await completed(dev_env.client, welcome)
    # 30 from the earn rule, 100 from the journey.
    assert await available(client, "f1") == 130
    assert await messages(conn, "friend_welcome") == [
        {"member_id": "f1", "data": {}, "workflow_id": welcome}
    ]


async def test_referral_friend_approved_gives_the_referrer_a_bonus(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    queue = (await start_worker(app=app)).task_queue
    outcomes = await emit_and_wait(
        client,
        events.Referral(event_id="ref1", member_id="r1", friend_id="f1", occurred_at=T0),
        events.ReferralApproved(event_id="ok1", member_id="f1", referrer_id="r1", occurred_at=T0),
    )
    assert outcomes == ["applied", "applied"]
    bonus = jid(queue, "ReferrerBonus", "r1", "referral_friend_approved:ok1", engine=True)
    assert await journeys(conn, "ReferrerBonus") == [bonus]
    # 20 for the referral (earn rule) and 200 from the journey.
    assert await completed(dev_env.client, bonus) == 220
    assert await available(client, "r1") == 220
    assert await messages(conn, "referrer_bonus") == [
        {"member_id": "r1", "data": {"friend": "f1"}, "workflow_id": bonus}
    ]
    await dev_env.client.get_workflow_handle(
        jid(queue, "ReferralReminder", "r1", "ref1")
    ).terminate("test finished")


async def test_a_client_event_with_the_id_the_engine_needs_takes_nothing_from_the_referrer(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    """A client event named like the referrer's derived event comes first: the referrer
    still gets the bonus, since client and engine events have separate id spaces."""
    queue = (await start_worker(app=app)).task_queue
    outcomes = await emit_and_wait(
        client,
        activity("referral_friend_approved:ok1", "someone", "noop"),
        events.Referral(event_id="ref1", member_id="r1", friend_id="f1", occurred_at=T0),
        events.ReferralApproved(event_id="ok1", member_id="f1", referrer_id="r1", occurred_at=T0),
    )
    assert outcomes == ["no_effect", "applied", "applied"]
    bonus = jid(queue, "ReferrerBonus", "r1", "referral_friend_approved:ok1", engine=True)
    assert await journeys(conn, "ReferrerBonus") == [bonus]
    assert await completed(dev_env.client, bonus) == 220
    rows = await conn.fetch(
        """SELECT type, member_id, status FROM events
           WHERE event_id = 'referral_friend_approved:ok1' ORDER BY id"""
    )
    assert [tuple(r) for r in rows] == [
        ("activity", "someone", "processed"),
        ("referral_friend_approved", "r1", "processed"),
    ]
    await dev_env.client.get_workflow_handle(
        jid(queue, "ReferralReminder", "r1", "ref1")
    ).terminate("test finished")


async def test_bonus_expiring_warns_seven_days_before(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    """The housekeeping loop that derives ``bonus_expiring`` is a later issue: the events
    are inserted into the inbox as the engine inserts derived events
    (`loyalty.ingest.inbox.insert_events`), the 7-day one twice."""
    queue = (await start_worker(app=app)).task_queue
    expires = T0 + timedelta(days=7)

    def warning(days_left: int) -> events.BonusExpiring:
        return events.BonusExpiring(
            event_id=f"bonus_expiring:{days_left}:x1", member_id="x1", points=120,
            expires_at=expires, days_left=days_left, occurred_at=T0,
        )  # fmt: skip

    inserted = await insert_events(conn, [warning(7), warning(3)])
    inserted += await insert_events(conn, [warning(7)])
    assert [r.accepted for r in inserted] == [True, True, False]
    assert [o.describe() for o in await client.wait(inserted, timeout=TIMEOUT)] == [
        "no_effect",
        "no_effect",
        "duplicate",
    ]
    journey = jid(queue, "ExpiryWarning", "x1", "bonus_expiring:7:x1", engine=True)
    assert await journeys(conn, "ExpiryWarning") == [journey]
    await completed(dev_env.client, journey)
    assert await messages(conn, "bonus_expiring") == [
        {"member_id": "x1", "data": {"points": 120, "days_left": 7}, "workflow_id": journey}
    ]


async def test_points_deposit_of_available_points_sends_a_receipt(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    queue = (await start_worker(app=app)).task_queue
    outcomes = await emit_and_wait(
        client, deposit("d1", "d1", 300), deposit("d2", "d1", 200, kind="earned")
    )
    assert outcomes == ["applied", "applied"]
    receipt = jid(queue, "DepositReceived", "d1", "d1")
    assert await journeys(conn, "DepositReceived") == [receipt]
    await completed(dev_env.client, receipt)
    balances = (await client.member("d1")).balances["points"]
    assert (balances.available, balances.earned) == (300, 200)
    assert await messages(conn, "deposit_received") == [
        {"member_id": "d1", "data": {"points": 300}, "workflow_id": receipt}
    ]


async def test_web_login_earns_ten_points_a_day_and_starts_a_journey_each_time(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    queue = (await start_worker(app=app)).task_queue
    outcomes = await emit_and_wait(
        client,
        activity("l1", "w1", "web_login", T0),
        activity("l2", "w1", "web_login", T0 + timedelta(hours=3)),
        activity("l3", "w1", "web_login", T0 + timedelta(days=1, minutes=1)),
    )
    # The second login is within a day of the first: capped by the earn rule.
    assert outcomes == ["applied", "no_effect", "applied"]
    ids = [jid(queue, "WelcomeBack", "w1", e) for e in ("l1", "l2", "l3")]
    assert await journeys(conn, "WelcomeBack") == ids
    for workflow_id in ids:
        await completed(dev_env.client, workflow_id)
    assert await available(client, "w1") == 20
    sent = await messages(conn, "welcome_back")
    assert sorted(m["workflow_id"] for m in sent) == ids


async def test_custom_predicate_starts_a_journey_for_app_orders_only(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    queue = (await start_worker(app=app)).task_queue
    outcomes = await emit_and_wait(
        client,
        purchase("web", "c1", 10, attributes={"channel": "web"}),
        purchase("app", "c1", 20, attributes={"channel": "app"}),
    )
    assert outcomes == ["applied", "applied"]
    order = jid(queue, "AppOrder", "c1", "app")
    assert await journeys(conn, "AppOrder") == [order]
    await completed(dev_env.client, order)
    assert await available(client, "c1") == 10 + 20 + 5
    assert await messages(conn, "app_order") == [
        {"member_id": "c1", "data": {"order_id": "order-app"}, "workflow_id": order}
    ]


async def test_the_same_event_delivered_twice_starts_one_journey(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    queue = (await start_worker(app=app)).task_queue
    big = purchase("big", "t1", 150)
    assert await emit_and_wait(client, big, big) == ["applied", "duplicate"]
    # Again after it was processed and its journey started.
    assert await emit_and_wait(client, big) == ["duplicate"]
    journey = jid(queue, "BigPurchase", "t1", "big")
    assert await journeys(conn, "BigPurchase") == [journey]
    await completed(dev_env.client, journey)
    assert await available(client, "t1") == 150 + 50
    assert len(await messages(conn, "big_purchase")) == 1


async def test_once_per_member_activity_congratulates_once(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    """The Zeta case (a congratulation sent once, even when the event is delivered twice)
    on an activity, since tier changes (NewStage) are a later issue."""
    queue = (await start_worker(app=app)).task_queue
    first = activity("a1", "z1", "app_login")
    outcomes = await emit_and_wait(client, first, first, activity("a2", "z1", "app_login"))
    assert outcomes == ["no_effect", "duplicate", "no_effect"]
    journey = jid(queue, "FirstAppLogin", "z1")
    assert await journeys(conn, "FirstAppLogin") == [journey]
    await completed(dev_env.client, journey)
    assert await available(client, "z1") == 75
    assert await messages(conn, "app_congratulation") == [
        {"member_id": "z1", "data": {}, "workflow_id": journey}
    ]


async def test_once_per_member_points_above_triggered_twice_congratulates_once(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    """The Zeta case on PointsAbove(1000) (standing in for a promotion to gold, a later
    issue): the crossing event delivered twice, then a second crossing after the balance
    fell back, still send one congratulation."""
    queue = (await start_worker(app=app)).task_queue
    cross = deposit("d1", "z2", 1100)
    withdraw = events.PointsWithdrawal(
        event_id="w1", member_id="z2", points=200, kind="available", reason="gift", occurred_at=T0
    )
    outcomes = await emit_and_wait(client, cross, cross, withdraw, deposit("d2", "z2", 200))
    assert outcomes == ["applied", "duplicate", "applied", "applied"]
    await settled(conn)
    crossings = await conn.fetch(
        "SELECT event_id FROM events WHERE type = 'points_above' ORDER BY id"
    )
    # 1000 was crossed twice (re-armed by the withdrawal); 500 once.
    assert [r["event_id"] for r in crossings] == [
        "points_above:500:d1",
        "points_above:1000:d1",
        "points_above:1000:d2",
    ]
    journey = jid(queue, "GoldCongratulation", "z2")
    assert await journeys(conn, "GoldCongratulation") == [journey]
    started_by = await conn.fetchval(
        "SELECT event_id FROM journey_starts WHERE workflow_id = $1", journey
    )
    assert started_by == "points_above:1000:d1"
    await completed(dev_env.client, journey)
    assert await messages(conn, "gold_congratulation") == [
        {"member_id": "z2", "data": {}, "workflow_id": journey}
    ]
    assert await available(client, "z2") == 1100


def in_coffee(event: events.BaseEvent) -> events.BaseEvent:
    return event.model_copy(update={"program": "coffee"})


async def test_sessionm_logins_cross_the_threshold_and_promote_with_a_new_stage_journey(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    """SessionM's case: web_login awards 10 points once a day; the third day's login
    crosses silver's 30 and promotes at once; the tier is readable afterwards."""
    queue = (await start_worker(app=app)).task_queue
    logins = [in_coffee(activity(f"login-{d}", "s1", "web_login", T0 + timedelta(days=d)))
              for d in range(3)]  # fmt: skip
    again = in_coffee(activity("login-2b", "s1", "web_login", T0 + timedelta(days=2, hours=1)))
    outcomes = await emit_and_wait(client, *logins, logins[2], again)
    assert outcomes == ["applied", "applied", "applied", "duplicate", "no_effect"]
    member = await client.member("s1", program="coffee")
    assert member.tier == "silver"
    status = member.tiers[0]
    assert (status.qualifying, status.next_tier, status.points_to_next) == (30, "gold", 30)
    assert member.balances["points"].available == 30
    stage = "new_stage:main:silver:login-2"
    journey = jid(queue, "TierUp", "s1", stage, program="coffee", engine=True)
    assert await journeys(conn, "TierUp") == [journey]
    await completed(dev_env.client, journey)
    assert await messages(conn, "tier_up") == [
        {"member_id": "s1", "data": {"from": "bronze", "to": "silver", "cause": "earn"},
         "workflow_id": journey}
    ]  # fmt: skip
    assert await journeys(conn, "SilverToGold") == []


async def test_zeta_silver_to_gold_congratulates_once_even_when_delivered_twice(
    client: LoyaltyClient,
    start_worker: StartWorker,
    conn: asyncpg.Connection,
    dev_env: WorkflowEnvironment,
) -> None:
    """Zeta's case: silver → gold starts one congratulation journey (once per member),
    though the purchase that promotes is delivered twice; a jump straight from bronze to
    gold is not silver → gold and starts none."""
    queue = (await start_worker(app=app)).task_queue
    to_gold = in_coffee(purchase("p2", "z1", 25))
    outcomes = await emit_and_wait(
        client, in_coffee(purchase("p1", "z1", 40)), to_gold, to_gold,
        in_coffee(purchase("p3", "z2", 70)),
    )  # fmt: skip
    assert outcomes == ["applied", "applied", "duplicate", "applied"]
    await settled(conn)
    moves = await conn.fetch(
        """SELECT member_id, payload->>'from_tier' AS f, payload->>'to_tier' AS t
           FROM events WHERE type = 'new_stage' ORDER BY id"""
    )
    assert [tuple(r) for r in moves] == [
        ("z1", "bronze", "silver"), ("z1", "silver", "gold"), ("z2", "bronze", "gold")
    ]  # fmt: skip
    journey = jid(queue, "SilverToGold", "z1", program="coffee")
    assert await journeys(conn, "SilverToGold") == [journey]
    await completed(dev_env.client, journey)
    assert await messages(conn, "gold_welcome") == [
        {"member_id": "z1", "data": {}, "workflow_id": journey}
    ]
    z1 = await client.member("z1", program="coffee")
    assert (z1.tier, z1.balances["points"].available) == ("gold", 40 + 25 + 100)
    assert len(await journeys(conn, "TierUp")) == 3
