"""Flow definitions: triggers, entry policies, journey ids and the start-up checks."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from pydantic import TypeAdapter
from temporalio import workflow
from temporalio.client import WorkflowFailureError
from temporalio.common import SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from loyalty import events as ev
from loyalty import triggers as tr
from loyalty.app import LoyaltyApp, Program
from loyalty.errors import ConfigurationError, InvalidFlows
from loyalty.flows import Entry, FlowSpec, check_app, flow, flow_spec, journey_id
from loyalty.temporal import FLOW
from tests.conftest import StartWorker
from tests.flows_app import (
    BAD_APP_PROBLEMS,
    COFFEE_TIERS,
    BigSpender,
    GoldWelcome,
    app,
    bad_app,
)
from tests.test_cli import cli_env, loyalty

AT = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def event(type_: str, **fields: Any) -> ev.BaseEvent:
    """An event of any type, derived ones included, with test defaults."""
    base = {"type": type_, "event_id": f"e-{uuid.uuid4().hex[:8]}", "member_id": "m1"}
    return ev.any_event_adapter.validate_python({**base, **fields})  # type: ignore[return-value]


def purchase(amount: str = "50", points_redeemed: int = 0, discount: str = "0") -> ev.BaseEvent:
    return event(
        "purchase",
        order_id="o1",
        amount=amount,
        currency="EUR",
        points_redeemed=points_redeemed,
        discount=discount,
    )


def new_stage(
    to: str = "gold", from_: str | None = "silver", direction: str = "up"
) -> ev.BaseEvent:
    return event("new_stage", from_tier=from_, to_tier=to, direction=direction, cause="earn")


def deposit(kind: str = "available", account: str = "points") -> ev.BaseEvent:
    return event("points_deposit", points=10, kind=kind, account=account, reason="gift")


OTHER = event("activity", name="web_login")
# (trigger, events it matches, events it does not match)
MATCHING: dict[str, tuple[tr.Trigger, list[ev.BaseEvent], list[ev.BaseEvent]]] = {
    "Purchase()": (tr.Purchase(), [purchase(), purchase("0")], [OTHER]),
    "Purchase(min_amount)": (
        tr.Purchase(min_amount=Decimal("100")),
        [purchase("100"), purchase("250.5")],
        [purchase("99.99"), OTHER],
    ),
    "Purchase(paid_with_points=True)": (
        tr.Purchase(paid_with_points=True),
        [purchase(points_redeemed=5)],
        [purchase()],
    ),
    "Purchase(paid_with_points=False)": (
        tr.Purchase(paid_with_points=False),
        [purchase()],
        [purchase(points_redeemed=5)],
    ),
    "Purchase(with_discount=True)": (
        tr.Purchase(with_discount=True),
        [purchase(discount="2.5")],
        [purchase()],
    ),
    "Purchase(with_discount=False)": (
        tr.Purchase(with_discount=False),
        [purchase()],
        [purchase(discount="2.5")],
    ),
    "NewStage()": (tr.NewStage(), [new_stage(), new_stage("silver", "gold", "down")], [OTHER]),
    "NewStage(to)": (
        tr.NewStage(to="gold"),
        [new_stage(), new_stage(from_=None)],
        [new_stage("platinum", "gold")],
    ),
    "NewStage(from_)": (
        tr.NewStage(from_="silver"),
        [new_stage()],
        [new_stage(from_=None), new_stage("silver", "gold", "down")],
    ),
    "NewStage(direction)": (
        tr.NewStage(direction="down"),
        [new_stage("silver", "gold", "down")],
        [new_stage()],
    ),
    "PointsAbove": (
        tr.PointsAbove(200),
        [event("points_above", threshold=200, balance=230)],
        [event("points_above", threshold=100, balance=230), OTHER],
    ),
    "Referral": (tr.Referral(), [event("referral", friend_id="f1")], [OTHER]),
    "ReferralApproved": (
        tr.ReferralApproved(),
        [event("referral_approved", referrer_id="r1")],
        [event("referral_friend_approved", friend_id="f1")],
    ),
    "ReferralFriendApproved": (
        tr.ReferralFriendApproved(),
        [event("referral_friend_approved", friend_id="f1")],
        [event("referral_approved", referrer_id="r1")],
    ),
    "BonusExpiring": (
        tr.BonusExpiring(days_before=7),
        [event("bonus_expiring", points=30, expires_at=AT.isoformat(), days_left=7)],
        [event("bonus_expiring", points=30, expires_at=AT.isoformat(), days_left=6), OTHER],
    ),
    "PointsDeposit()": (tr.PointsDeposit(), [deposit(), deposit("earned")], [OTHER]),
    "PointsDeposit(kind, account)": (
        tr.PointsDeposit(kind="earned", account="stars"),
        [deposit("earned", "stars")],
        [deposit("available", "stars"), deposit("earned", "points")],
    ),
    "Activity": (
        tr.Activity("web_login"),
        [OTHER],
        [event("activity", name="newsletter_signup"), purchase()],
    ),
    "Custom": (
        tr.Custom("purchase", lambda e: e.amount >= 1000),
        [purchase("1000")],
        [purchase("999"), OTHER],
    ),
}


@pytest.mark.parametrize("case", list(MATCHING))
def test_trigger_matches_its_events_and_no_others(case: str) -> None:
    trigger, positive, negative = MATCHING[case]
    for e in positive:
        assert trigger.matches(e), (case, e)
        assert e.type in trigger.event_types  # type: ignore[attr-defined]
    for e in negative:
        assert not trigger.matches(e), (case, e)


def test_every_trigger_listens_to_a_known_event_type() -> None:
    known = set(ev.INCOMING_TYPES + ev.DERIVED_TYPES)
    for trigger, _, _ in MATCHING.values():
        assert len(trigger.event_types) == 1
        assert set(trigger.event_types) <= known


@pytest.mark.parametrize(
    ("trigger", "text"),
    [
        (tr.NewStage(to="gold"), "NewStage(to=gold)"),
        (tr.NewStage(from_="silver", direction="down"), "NewStage(from_=silver, direction=down)"),
        (tr.Purchase(), "Purchase()"),
        (
            tr.Purchase(min_amount=20, with_discount=False),
            "Purchase(min_amount=20, with_discount=False)",
        ),
        (tr.PointsAbove(200), "PointsAbove(200)"),
        (tr.BonusExpiring(days_before=7), "BonusExpiring(days_before=7)"),
        (tr.Activity("web_login"), "Activity(web_login)"),
        (tr.PointsDeposit(kind="earned"), "PointsDeposit(kind=earned)"),
        (tr.ReferralFriendApproved(), "ReferralFriendApproved()"),
    ],
)
def test_triggers_read_as_written(trigger: tr.Trigger, text: str) -> None:
    assert str(trigger) == text


def test_triggers_are_hashable_values_and_serialisable() -> None:
    assert tr.NewStage(to="gold") == tr.NewStage(to="gold")
    assert len({tr.PointsAbove(200), tr.PointsAbove(200), tr.PointsAbove(300)}) == 2
    assert tr.Purchase(min_amount=20).min_amount == Decimal(20)
    adapter = TypeAdapter(tr.Purchase)
    dumped = adapter.dump_json(tr.Purchase(min_amount=Decimal("9.5"), with_discount=True))
    assert adapter.validate_json(dumped) == tr.Purchase(
        min_amount=Decimal("9.5"), with_discount=True
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: tr.PointsAbove(-1), "PointsAbove: threshold must be an integer ≥ 0, got -1"),
        (lambda: tr.PointsAbove("200"), "PointsAbove: threshold must be an integer ≥ 0, got '200'"),
        (
            lambda: tr.BonusExpiring(days_before=True),
            "BonusExpiring: days_before must be an integer",
        ),
        (
            lambda: tr.NewStage(direction="sideways"),
            "NewStage: direction must be 'up', 'down' or None",
        ),
        (lambda: tr.NewStage(to=""), "NewStage: to must be a non-empty string"),
        (
            lambda: tr.Purchase(min_amount=9.5),
            "Purchase: min_amount must be a Decimal or an integer",
        ),
        (lambda: tr.Purchase(min_amount=-1), "Purchase: min_amount must be ≥ 0, got -1"),
        (
            lambda: tr.Purchase(with_discount="yes"),
            "Purchase: with_discount must be True, False or None",
        ),
        (
            lambda: tr.PointsDeposit(kind="bonus"),
            "PointsDeposit: kind must be 'available', 'earned'",
        ),
        (lambda: tr.Activity(""), "Activity: name must be a non-empty string"),
        (lambda: tr.Custom("purchase", "amount > 5"), "Custom: predicate must be callable"),
        (lambda: Entry.once_per(timedelta(0)), "Entry.once_per: period must be a whole number"),
        (lambda: Entry.once_per(timedelta(seconds=1.5)), "Entry.once_per: period must be a whole"),
    ],
)
def test_bad_trigger_and_entry_parameters_are_refused(make: Any, message: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        make()
    assert str(raised.value).startswith(message)


def test_entry_policies_read_as_written() -> None:
    assert str(Entry.EVERY_TIME) == "every time"
    assert str(Entry.ONCE_PER_MEMBER) == "once per member"
    assert str(Entry.once_per(timedelta(days=30))) == "once per 30 days"
    assert str(Entry.once_per(timedelta(hours=1))) == "once per 1 hour"
    assert str(Entry.once_per(timedelta(seconds=90))) == "once per 90 seconds"
    assert Entry.once_per(timedelta(days=1)) == Entry.once_per(timedelta(hours=24))


def test_flow_records_its_spec_with_defaults() -> None:
    spec = flow_spec(GoldWelcome)
    assert spec == FlowSpec(
        name="GoldWelcome",
        trigger=tr.NewStage(to="gold"),
        entry=Entry.ONCE_PER_MEMBER,
        programs=("coffee",),
        cls=GoldWelcome,
    )
    assert (spec.applies_to("coffee"), spec.applies_to("default")) == (True, False)
    assert [s.name for s in check_app(app)] == ["GoldWelcome", "big-spender", "LoginThanks"]
    login = check_app(app)[2]
    assert (login.entry, login.programs, login.applies_to("any")) == (Entry.EVERY_TIME, None, True)


def test_a_subclass_of_a_flow_is_not_a_flow_by_inheritance() -> None:
    class GoldWelcomeTwo(GoldWelcome):
        pass

    assert flow_spec(GoldWelcomeTwo) is None
    with pytest.raises(InvalidFlows, match="flow 'GoldWelcomeTwo': no trigger"):
        check_app(LoyaltyApp(flows=[GoldWelcomeTwo]))


def test_flow_refuses_parameters_of_the_wrong_kind() -> None:
    with pytest.raises(ConfigurationError, match="flow 'X': trigger must be a trigger such as"):

        @flow(trigger="new_stage")  # type: ignore[arg-type]
        class X:
            pass

    with pytest.raises(ConfigurationError, match=r"flow 'Y': entry must be Entry\.EVERY_TIME"):

        @flow(trigger=tr.Referral(), entry="once")  # type: ignore[arg-type]
        class Y:
            pass

    with pytest.raises(ConfigurationError, match="flow 'Z': program must be a program name"):

        @flow(trigger=tr.Referral(), program=[])
        class Z:
            pass


# --- journey ids ---------------------------------------------------------------------------


def spec_with(entry: Entry, name: str = "F") -> FlowSpec:
    return FlowSpec(name=name, trigger=tr.Referral(), entry=entry, programs=None, cls=object)


def jid(
    entry: Entry, member: str = "m1", event_id: str = "e1", at: datetime = AT, **kw: str
) -> str:
    options = {"program": "default", "task_queue": "q", **kw}
    return journey_id(spec_with(entry), member, event_id, at, **options)


def test_journey_ids_every_time_one_per_trigger_event() -> None:
    every = Entry.EVERY_TIME
    assert jid(every) == "journey/default/F/m1/event/e1@q"
    assert jid(every) == jid(every, at=AT + timedelta(days=9))  # a redelivery: same id
    assert jid(every, event_id="e2") != jid(every)
    assert jid(every, member="m2") != jid(every)


def test_journey_ids_of_a_client_and_an_engine_event_with_one_id_differ() -> None:
    every = Entry.EVERY_TIME
    assert jid(every, origin="engine") == "journey/default/F/m1/engine/e1@q"
    assert jid(every, origin="engine") != jid(every, origin="client") == jid(every)


def test_journey_ids_once_per_member_ignore_the_event() -> None:
    once = Entry.ONCE_PER_MEMBER
    assert jid(once) == "journey/default/F/m1@q"
    assert jid(once, event_id="e2", at=AT + timedelta(days=400)) == jid(once)
    assert jid(once, member="m2") != jid(once)


def test_journey_ids_once_per_period_change_at_period_boundaries() -> None:
    daily = Entry.once_per(timedelta(days=1))
    day = (AT - datetime(1970, 1, 1, tzinfo=UTC)).days
    assert jid(daily) == f"journey/default/F/m1/period/86400s-{day}@q"
    midnight = datetime(2026, 11, 22, tzinfo=UTC)
    assert jid(daily, event_id="e2", at=midnight) == jid(daily)
    assert jid(daily, at=midnight - timedelta(microseconds=1)) != jid(daily)
    assert jid(daily, at=midnight + timedelta(days=1)) != jid(daily)
    # A time in another zone falls in the UTC period of the same instant.
    later = AT.astimezone(datetime.now().astimezone().tzinfo)
    assert jid(daily, at=later) == jid(daily)
    # The same index of another period length is another id.
    assert jid(Entry.once_per(timedelta(hours=24 * 30))) != jid(Entry.once_per(timedelta(days=31)))


def test_journey_ids_are_distinct_across_policies_programs_and_deployments() -> None:
    ids = {
        jid(Entry.EVERY_TIME),
        jid(Entry.ONCE_PER_MEMBER),
        jid(Entry.once_per(timedelta(days=30))),
        jid(Entry.EVERY_TIME, program="coffee"),
        jid(Entry.EVERY_TIME, task_queue="other"),
    }
    assert len(ids) == 5


def test_journey_ids_escape_slashes_so_parts_cannot_run_together() -> None:
    every = Entry.EVERY_TIME
    assert jid(every, member="a/b", event_id="c") != jid(every, member="a", event_id="b/c")
    assert jid(every, member="a/b", event_id="c") == "journey/default/F/a%2Fb/event/c@q"


# --- start-up checks -----------------------------------------------------------------------


def test_a_valid_app_passes() -> None:
    assert len(check_app(app)) == 3
    assert check_app(LoyaltyApp()) == []


def test_every_refusal_is_listed_with_its_message() -> None:
    with pytest.raises(InvalidFlows) as raised:
        check_app(bad_app)
    assert raised.value.problems == BAD_APP_PROBLEMS
    assert isinstance(raised.value, ConfigurationError)


@pytest.mark.parametrize(
    ("flows", "problem"),
    [
        ([GoldWelcome, GoldWelcome], "flow 'GoldWelcome': 2 flows have this name (GoldWelcome, "
         "GoldWelcome); set name= on @flow to tell them apart"),
        ([GoldWelcome()], "flows: <tests.flows_app.GoldWelcome object"),
    ],
)  # fmt: skip
def test_a_class_listed_twice_and_an_instance_are_refused(flows: list[Any], problem: str) -> None:
    with pytest.raises(InvalidFlows) as raised:
        check_app(
            LoyaltyApp(programs=[Program(name="coffee", tier_schemes=(COFFEE_TIERS,))], flows=flows)
        )
    assert len(raised.value.problems) == 1
    assert raised.value.problems[0].startswith(problem)


@flow(trigger=tr.Referral(), name="event-router")
@workflow.defn
class Router:
    @workflow.run
    async def run(self) -> None:
        pass


def test_the_router_flow_name_is_reserved() -> None:
    with pytest.raises(InvalidFlows, match="flow 'event-router': the name is reserved"):
        check_app(LoyaltyApp(flows=[Router]))


async def test_the_worker_refuses_a_bad_app(start_worker: StartWorker) -> None:
    with pytest.raises(InvalidFlows) as raised:
        await start_worker(app=bad_app)
    assert raised.value.problems == BAD_APP_PROBLEMS


# --- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["worker", "dev"])
async def test_worker_and_dev_refuse_a_bad_app_with_one_line_per_problem(
    command: str, settings_env: dict[str, object]
) -> None:
    run = await loyalty(cli_env(settings_env), command, "--app", "tests.flows_app:bad_app")
    assert (run.code, run.out) == (2, ""), run.err
    assert run.problems == BAD_APP_PROBLEMS


async def test_flows_lists_flows_with_journey_counts(
    settings_env: dict[str, object], dev_env: WorkflowEnvironment
) -> None:
    """One journey completed, one failed, one running: `loyalty flows` counts them."""
    env = {**cli_env(settings_env), "COLUMNS": "200"}
    queue = str(settings_env["LOYALTY_TASK_QUEUE"])
    client = dev_env.client
    handles = []
    async with Worker(client, task_queue=queue, workflows=[GoldWelcome, BigSpender]):
        for outcome in ("done", "fail", "wait"):
            trigger = new_stage()
            trigger = trigger.model_copy(update={"attributes": {"outcome": outcome}})
            handles.append(
                await client.start_workflow(
                    GoldWelcome.run,
                    trigger,
                    id=f"journey-{uuid.uuid4().hex}",
                    task_queue=queue,
                    search_attributes=TypedSearchAttributes(
                        [SearchAttributePair(FLOW, "GoldWelcome")]
                    ),
                )
            )
        await handles[0].result()
        with pytest.raises(WorkflowFailureError):
            await handles[1].result()
    try:
        async with asyncio.timeout(30):
            while True:  # visibility is eventually consistent
                run = await loyalty(env, "flows", "--app", "tests.flows_app:app")
                assert run.code == 0, run.err
                rows = {line.split("│")[1].strip(): line for line in run.lines if "│" in line}
                cells = [c.strip() for c in rows["GoldWelcome"].split("│")[1:-1]]
                if cells[4:] == ["1", "1", "1"]:
                    break
                await asyncio.sleep(0.5)
    finally:
        with contextlib.suppress(RPCError):
            await handles[2].terminate("test finished")
    assert run.err == ""
    assert cells == ["GoldWelcome", "NewStage(to=gold)", "once per member", "coffee", "1", "1", "1"]
    big = [c.strip() for c in rows["big-spender"].split("│")[1:-1]]
    assert big == [
        "big-spender",
        "Purchase(min_amount=100, paid_with_points=False)",
        "once per 30 days",
        "all",
        "0",
        "0",
        "0",
    ]
    assert [c.strip() for c in rows["LoginThanks"].split("│")[1:5]] == [
        "LoginThanks",
        "Activity(web_login)",
        "every time",
        "all",
    ]


async def test_flows_without_temporal_lists_flows_with_unknown_counts(tmp_path: Any) -> None:
    env = {
        **cli_env({"LOYALTY_HOME": tmp_path, "TEMPORAL_ADDRESS": "127.0.0.1:1"}),
        "COLUMNS": "200",
    }
    run = await loyalty(env, "flows", "--app", "tests.flows_app:app")
    assert run.code == 0, run.err
    warning = run.err.splitlines()
    assert len(warning) == 1
    assert warning[0].startswith(
        "warning: journey counts unavailable, Temporal at 127.0.0.1:1 did not answer: "
    )
    rows = [line for line in run.lines if "│" in line]
    assert len(rows) == 3
    for row in rows:
        assert [c.strip() for c in row.split("│")[1:-1]][4:] == ["?", "?", "?"]


async def test_flows_refuses_a_bad_app(settings_env: dict[str, object]) -> None:
    run = await loyalty(cli_env(settings_env), "flows", "--app", "tests.flows_app:bad_app")
    assert (run.code, run.out) == (2, "")
    assert run.problems == BAD_APP_PROBLEMS
